//! The command line. Every setting is a flag, an environment variable (`HERALD_*`) and a key in
//! `herald.toml`; a flag beats the environment, which beats the file.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "herald", version, about = "Herald: watch where creators publish, run workflows, publish everywhere.")]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by every command. Unset ones fall back to `herald.toml`, then to defaults.
#[derive(Args, Debug, Default, Clone)]
pub struct Settings {
    /// The configuration file [default: ./herald.toml when it exists].
    #[arg(long, env = "HERALD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address the HTTP server listens on [default: 127.0.0.1:8080]; port 0 picks a free one.
    #[arg(long, env = "HERALD_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Where Herald keeps its SQLite database, key file and media [default: ./herald-data].
    #[arg(long, env = "HERALD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://… [default: sqlite://$HERALD_DATA_DIR/herald.db].
    #[arg(long, env = "HERALD_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// The public base URL, for webhook callbacks and links.
    #[arg(long, env = "HERALD_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// 32 bytes as 64 hex characters, encrypting stored secrets [default: a generated key file].
    #[arg(long, env = "HERALD_SECRET_KEY", global = true, hide_env_values = true)]
    pub secret_key: Option<String>,
    /// The SMTP relay for mail (password resets): smtp://, smtp+starttls:// or smtps://, with
    /// user:password@ when it needs them [default: none; reset links come from the CLI].
    #[arg(long, env = "HERALD_SMTP_URL", global = true, hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The From address of Herald's mail [default: herald@ the public URL's host].
    #[arg(long, env = "HERALD_SMTP_FROM", global = true)]
    pub smtp_from: Option<String>,
    /// A dashboard session unused this long ends [default: 7d].
    #[arg(long, env = "HERALD_SESSION_IDLE", global = true)]
    pub session_idle: Option<String>,
    /// A dashboard session ends this long after sign-in [default: 30d].
    #[arg(long, env = "HERALD_SESSION_MAX", global = true)]
    pub session_max: Option<String>,
    /// The process role (all, api or worker): set by `herald serve --role` or HERALD_ROLE. It is not
    /// a global flag, since `herald token create --role` names an API key's role.
    #[arg(skip)]
    pub role: Option<String>,
    /// Jobs one process runs at once [default: 32].
    #[arg(long, env = "HERALD_WORKERS", global = true)]
    pub workers: Option<usize>,
    /// How long running jobs get to finish at shutdown [default: 30s].
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", global = true)]
    pub shutdown_grace: Option<String>,
    /// How long a claimed job stays leased without a heartbeat [default: 30s].
    #[arg(long, env = "HERALD_JOB_LEASE", global = true)]
    pub job_lease: Option<String>,
    /// Finished jobs older than this are pruned [default: 7d].
    #[arg(long, env = "HERALD_JOB_RETENTION", global = true)]
    pub job_retention: Option<String>,
    /// At most this many finished jobs are kept [default: 100000].
    #[arg(long, env = "HERALD_JOB_RETENTION_COUNT", global = true)]
    pub job_retention_count: Option<u64>,
    /// Published posts' engagement is collected until they are this old [default: 30d].
    #[arg(long, env = "HERALD_STATS_MAX_AGE", global = true)]
    pub stats_max_age: Option<String>,
    /// The sweep reports deliveries this far past their time as overdue [default: 5m].
    #[arg(long, env = "HERALD_OVERDUE_AFTER", global = true)]
    pub overdue_after: Option<String>,
    /// Database connections per process [default: 10].
    #[arg(long, env = "HERALD_DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<u32>,
    /// Comma-separated CIDRs the outgoing-request guard lets through [default: none].
    #[arg(long, env = "HERALD_ALLOW_PRIVATE_NETWORKS", global = true)]
    pub allow_private_networks: Option<String>,
    /// The largest media upload, e.g. 512MB or 2GB [default: 512MB].
    #[arg(long, env = "HERALD_MEDIA_MAX_BYTES", global = true)]
    pub media_max_bytes: Option<String>,
    /// How long the signed media URLs handed to platforms (Nostr) work [default: 24h].
    #[arg(long, env = "HERALD_MEDIA_URL_TTL", global = true)]
    pub media_url_ttl: Option<String>,
    /// Keep media in S3 or an S3-compatible service, `s3://bucket[/prefix]`, with the usual AWS_*
    /// variables (AWS_ENDPOINT_URL for other services) [default: $HERALD_DATA_DIR/media].
    #[arg(long, env = "HERALD_MEDIA_URL", global = true)]
    pub media_url: Option<String>,
    /// The WebSub hub YouTube sources subscribe at [default: https://pubsubhubbub.appspot.com/subscribe].
    #[arg(long, env = "HERALD_WEBSUB_HUB", global = true)]
    pub websub_hub: Option<String>,
    /// Where YouTube channel feeds and @handle pages are fetched [default: https://www.youtube.com].
    #[arg(long, env = "HERALD_YOUTUBE_BASE", global = true)]
    pub youtube_base: Option<String>,
    /// The largest feed read, e.g. 5MB [default: 5MB].
    #[arg(long, env = "HERALD_FEED_MAX_BYTES", global = true)]
    pub feed_max_bytes: Option<String>,
    /// Feed polls running at once per worker node [default: 64].
    #[arg(long, env = "HERALD_POLL_CONCURRENCY", global = true)]
    pub poll_concurrency: Option<usize>,
    /// The OpenAI-compatible endpoint for ai_rewrite steps, e.g. http://127.0.0.1:11434/v1 (Ollama)
    /// or https://api.openai.com/v1 [default: none; teams may set their own].
    #[arg(long, env = "HERALD_AI_BASE_URL", global = true)]
    pub ai_base_url: Option<String>,
    /// The model ai_rewrite steps use unless a team sets its own [default: gpt-4o-mini].
    #[arg(long, env = "HERALD_AI_MODEL", global = true)]
    pub ai_model: Option<String>,
    /// The key for HERALD_AI_BASE_URL (sent as a Bearer token; never logged).
    #[arg(long, env = "HERALD_AI_API_KEY", global = true, hide_env_values = true)]
    pub ai_api_key: Option<String>,
    /// Each team's daily AI budget in calls [default: 500].
    #[arg(long, env = "HERALD_AI_DAILY_CALLS", global = true)]
    pub ai_daily_calls: Option<i64>,
    /// Each team's daily AI budget in tokens [default: 1000000].
    #[arg(long, env = "HERALD_AI_DAILY_TOKENS", global = true)]
    pub ai_daily_tokens: Option<i64>,
    /// Comma-separated ports, besides 80 and 443, that user-chosen hosts may use [default: none].
    #[arg(long, env = "HERALD_ALLOW_PORTS", global = true)]
    pub allow_ports: Option<String>,
    /// Log filter, e.g. `info` or `herald=debug,sqlx=warn` [default: info].
    #[arg(long, env = "HERALD_LOG", global = true)]
    pub log: Option<String>,
    /// text or json [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the API, dashboard, job workers and schedulers.
    Serve {
        /// all, api or worker [default: all].
        #[arg(long, env = "HERALD_ROLE")]
        role: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage users: create (the first owner too), reset links, disable.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API keys.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage platform connections, on a running server (--server and HERALD_API_KEY) or on the
    /// local data dir (--team).
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Manage sources (feeds, YouTube channels, schedules, webhooks), on a running server
    /// (--server and HERALD_API_KEY) or on the local data dir (--team).
    Sources {
        #[command(subcommand)]
        command: SourcesCommand,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Manage workflows (apply YAML files like kubectl, export, run) and their runs and
    /// approvals, on a running server (--server and HERALD_API_KEY) or the local data dir (--team).
    Workflows {
        #[command(subcommand)]
        command: WorkflowsCommand,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Manage the master keys that encrypt stored secrets.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Inspect the job queue.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Diagnostics for operators.
    Diag {
        #[command(subcommand)]
        command: DiagCommand,
    },
    /// Benchmarks that print their result beside a ceiling measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) and where each value came from;
    /// exit 2 when it is invalid.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user and a team they own. The password is read from stdin (one line) or, on a
    /// terminal, from a prompt; never from the command line.
    Create {
        #[arg(long)]
        email: String,
        /// Shown in the dashboard [default: the part of the email before @].
        #[arg(long)]
        name: Option<String>,
        /// Also an instance admin (may set team quotas).
        #[arg(long)]
        admin: bool,
    },
    /// Print a one-hour, single-use password-reset link for a user (when no SMTP is configured).
    ResetLink {
        #[arg(long)]
        email: String,
    },
    /// Disable a user: every session ends and sign-in is refused.
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Re-enable a disabled user.
    Enable {
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API key for a team and print it (shown once).
    Create {
        /// The team's id.
        #[arg(long)]
        team: uuid::Uuid,
        /// admin, editor or viewer.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Expire after this long, e.g. 90d.
        #[arg(long)]
        expires_in: Option<String>,
    },
}

/// Where `herald connections` acts: a running server's API, or the local database.
#[derive(Args, Debug)]
pub struct ApiTarget {
    /// A running Herald's base URL, e.g. https://herald.example.com; the key comes from
    /// HERALD_API_KEY. Without it, the command opens the local database.
    #[arg(long, env = "HERALD_SERVER", global = true)]
    pub server: Option<String>,
    /// The API key for --server (prefer the HERALD_API_KEY variable: flags show in `ps`).
    #[arg(long, env = "HERALD_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// The team to act in, for the local database (a team id).
    #[arg(long, global = true)]
    pub team: Option<uuid::Uuid>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConnectionsCommand {
    /// Connect an account. The credentials are checked live first. They are read as JSON from
    /// stdin (never from the command line), e.g. `{"bot_token":"…"}`.
    Add {
        /// A platform id: telegram, discord, whop, mastodon, bluesky, matrix, nostr, vk, webhook, email.
        #[arg(long)]
        platform: String,
        #[arg(long)]
        name: Option<String>,
        /// Non-secret settings as JSON, e.g. '{"chat_id":"@mychannel"}'.
        #[arg(long, default_value = "{}")]
        settings: String,
    },
    /// List the team's connections and their status.
    List,
    /// Check a connection's stored credentials live again and print its status.
    Test { id: uuid::Uuid },
    /// Delete a connection.
    Remove { id: uuid::Uuid },
}

#[derive(Subcommand, Debug)]
pub enum WorkflowsCommand {
    /// Create or update workflows from YAML (or JSON) files, one workflow per file, matched by
    /// name: new ones are created, changed ones get a new version (the diff is printed),
    /// unchanged ones are left alone.
    Apply {
        /// A file, or a directory of .yaml, .yml and .json files.
        #[arg(short = 'f', long)]
        file: std::path::PathBuf,
        /// Print what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the workflows as YAML (to stdout, or one file each into --out).
    Export {
        #[arg(long)]
        name: Option<String>,
        #[arg(short = 'o', long)]
        out: Option<std::path::PathBuf>,
    },
    /// List the team's workflows.
    List,
    /// Run a workflow on a payload (the run's input, as an event's data would be).
    Run {
        id: uuid::Uuid,
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Run every step except publish and http and print what would be posted.
        #[arg(long)]
        dry_run: bool,
    },
    /// List runs, newest first.
    Runs {
        #[arg(long)]
        workflow: Option<uuid::Uuid>,
        /// pending, running, waiting, succeeded, failed, skipped or cancelled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Approve a waiting approval, optionally with a new text for every target.
    Approve {
        id: uuid::Uuid,
        #[arg(long)]
        text: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a waiting approval: its run ends and nothing is posted.
    Reject {
        id: uuid::Uuid,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SourcesCommand {
    /// Add a source, e.g. `--kind feed --settings '{"url":"https://example.com/feed.xml"}'`,
    /// `--kind youtube_channel --settings '{"channel":"@handle"}'` or
    /// `--kind schedule --settings '{"cron":"0 9 * * 1-5","timezone":"Europe/Berlin"}'`.
    Add {
        /// youtube_channel, feed, schedule, webhook or manual.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
        /// The kind's settings (the API's `config`) as JSON.
        #[arg(long, default_value = "{}")]
        settings: String,
    },
    /// List the team's sources and their status.
    List,
    /// Poll a feed or YouTube channel now and print what it found.
    Poll { id: uuid::Uuid },
    /// Delete a source and its events (a YouTube channel is unsubscribed at the hub).
    Remove { id: uuid::Uuid },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Add a new master key (key file) and re-encrypt every stored secret under it. Idempotent and
    /// resumable; with HERALD_SECRET_KEY, put the new key first in it and run this to re-encrypt.
    Rotate {
        /// Only re-encrypt under the current active key; add no key.
        #[arg(long)]
        resume: bool,
    },
    /// Drop from the key file every old key that no stored secret uses any more.
    Retire,
    /// How many stored secrets each key seals.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Job counts by queue and state, as JSON.
    Stats,
}

#[derive(Subcommand, Debug)]
pub enum DiagCommand {
    /// Enqueue `diag.ping` jobs: each POSTs {"job_id","attempt"} to URL with the job id as its
    /// Idempotency-Key. Checks the workers end to end.
    Ping {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Enqueue and drain no-op jobs on SQLite and PostgreSQL, beside the raw commit rate.
    Queue(BenchQueueArgs),
    /// Time `herald serve` from start to ready on a fresh data dir, and its idle memory.
    Serve,
    /// Posts × targets through the whole delivery pipeline against a local webhook receiver,
    /// beside a bare HTTP client sending the same requests.
    Deliveries(BenchDeliveriesArgs),
    /// Events through a workflow (filter, template, publish to webhook targets) against a local
    /// receiver: events/s, deliveries/s, event-to-first-request latency, CPU and memory, beside
    /// a bare HTTP client sending the same requests.
    Workflows(BenchWorkflowsArgs),
    /// Feeds polled on a cycle from a local fake feed server (a child process), for the polls/s,
    /// lateness, CPU and memory of one node, beside a bare HTTP client fetching the same feeds.
    Feeds(BenchFeedsArgs),
    /// The fake feed server `bench feeds` starts in a child process: prints its port, serves
    /// `GET /feed/{i}.xml` and `GET /stats` until stdin closes.
    #[command(hide = true)]
    FeedServer(BenchFeedServerArgs),
}

#[derive(Args, Debug)]
pub struct BenchFeedsArgs {
    /// Feed sources to poll, each its own URL on the fake server.
    #[arg(long, default_value_t = 10_000)]
    pub feeds: usize,
    /// Each feed's poll interval (its `interval_secs`); the first polls are spread over one cycle.
    #[arg(long, default_value = "300s", value_parser = herald_core::time::parse_duration)]
    pub cycle: std::time::Duration,
    /// How long the poller runs [default: one cycle plus a minute].
    #[arg(long, value_parser = herald_core::time::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Polls run at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Distinct feeds the bare client fetches for the ceiling (once to learn ETags, once measured).
    #[arg(long, default_value_t = 2_000)]
    pub ceiling_feeds: usize,
    /// sqlite, postgres or all.
    #[arg(long, default_value = "sqlite")]
    pub backend: String,
    /// A PostgreSQL server to create the bench database on.
    #[arg(long, env = "HERALD_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
}

#[derive(Args, Debug)]
pub struct BenchFeedServerArgs {
    /// Feeds served, `/feed/0.xml` to `/feed/{N-1}.xml`.
    #[arg(long, default_value_t = 10_000)]
    pub feeds: usize,
}

#[derive(Args, Debug)]
pub struct BenchDeliveriesArgs {
    /// Posts to create.
    #[arg(long, default_value_t = 2_000)]
    pub posts: usize,
    /// Targets (connections) per post.
    #[arg(long, default_value_t = 5)]
    pub targets: usize,
    /// Deliveries run at once.
    #[arg(long, default_value_t = 256)]
    pub workers: usize,
    /// Clients creating posts at once (as over the API); posts they create together are written
    /// together.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// sqlite, postgres or all.
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// Rounds of the ceiling followed by each backend's run; the summary gives each backend's
    /// median ratio over them (the host's speed drifts by a third within seconds here, so one
    /// ceiling measured a moment apart from its run is a poor yardstick).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// A PostgreSQL server to create the bench database on.
    #[arg(long, env = "HERALD_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
}

#[derive(Args, Debug)]
pub struct BenchWorkflowsArgs {
    /// Events to send as fast as the clients add them (the throughput run).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Webhook targets (connections) the workflow's publish step posts to.
    #[arg(long, default_value_t = 5)]
    pub targets: usize,
    /// Jobs run at once (event, run and delivery jobs share them).
    #[arg(long, default_value_t = 256)]
    pub workers: usize,
    /// Clients adding events at once in the throughput run, as through the API.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Events per second in the paced latency run.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Events in the paced latency run (0 skips it).
    #[arg(long, default_value_t = 500)]
    pub latency_events: usize,
    /// How long one run may take before it is reported as far as it got.
    #[arg(long, default_value = "10m", value_parser = herald_core::time::parse_duration)]
    pub timeout: std::time::Duration,
    /// sqlite, postgres or all (postgres only with a PostgreSQL URL).
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// A PostgreSQL server to create the bench database on; without it PostgreSQL is skipped.
    #[arg(long, env = "HERALD_BENCH_POSTGRES_URL")]
    pub postgres_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct BenchQueueArgs {
    /// Jobs to enqueue and drain.
    #[arg(long, default_value_t = 50_000)]
    pub jobs: usize,
    /// Jobs run at once (worker slots: cheap async tasks, not threads).
    #[arg(long, default_value_t = 256)]
    pub workers: usize,
    /// sqlite, postgres or all.
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// A PostgreSQL server to create the bench database on.
    #[arg(long, env = "HERALD_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
    /// Seconds to measure the raw commit ceiling.
    #[arg(long, default_value_t = 3)]
    pub ceiling_secs: u64,
}

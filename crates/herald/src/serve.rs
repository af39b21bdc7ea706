//! `herald serve`: prepare the data dir and key, open and migrate the database, bind, then run
//! the HTTP server and the job runner until SIGINT or SIGTERM.

use crate::Exit;
use crate::config::{Config, ConfigError};
use anyhow::Context;
use herald_accounts::{Accounts, AccountsConfig};
use herald_queue::{Queue, Runner, RunnerConfig};
use herald_server::{AppState, router};
use herald_store::{DatabaseUrl, Db, StoreOptions};
use herald_vault::{KeyFile, Vault};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const KEY_FILE: &str = "secret.key";

pub async fn open_database(config: &Config) -> Result<Db, Exit> {
    if let DatabaseUrl::Sqlite { path } = &config.database_url
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
    {
        ensure_writable_dir(dir, "the SQLite database's directory")?;
    }
    let opts = StoreOptions { max_connections: config.db_max_connections, ..StoreOptions::default() };
    Ok(Db::connect(&config.database_url, &opts).await?)
}

fn ensure_writable_dir(dir: &Path, what: &str) -> Result<(), ConfigError> {
    let fail = |e: std::io::Error| {
        ConfigError(format!(
            "{what} {} is not writable ({e}); choose a writable directory with HERALD_DATA_DIR or fix its permissions",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".herald-write-test");
    std::fs::write(&probe, b"ok").map_err(fail)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The master keys: HERALD_SECRET_KEY when set, else the key file in the data dir, created
/// (mode 0600, with a warning) on first use.
pub fn load_vault(config: &Config) -> Result<Vault, ConfigError> {
    if let Some(keys) = &config.secret_key {
        return Ok(Vault::new(keys));
    }
    let file = KeyFile::at(config.data_dir.join(KEY_FILE));
    if !file.exists() {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ConfigError(format!("cannot create the data dir {}: {e}", config.data_dir.display())))?;
        file.create().map_err(|e| ConfigError(e.to_string()))?;
        tracing::warn!(
            path = %file.path().display(),
            "generated a new secret key; back it up, since stored credentials cannot be read without it, or set HERALD_SECRET_KEY"
        );
    }
    Vault::from_file(&file).map_err(|e| ConfigError(e.to_string()))
}

pub fn accounts_for(config: &Config, db: Db, vault: Vault) -> Accounts {
    let accounts_config = AccountsConfig {
        session_idle: config.session_idle,
        session_max: config.session_max,
        public_url: config.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string()),
    };
    Accounts::new(db, vault, accounts_config)
}

/// The clients adapters talk through: the trusted one for operator-set API bases, and the
/// SSRF-guarded one (with HERALD_ALLOW_PRIVATE_NETWORKS and HERALD_ALLOW_PORTS) for user-chosen hosts.
pub fn net_for(config: &Config) -> Result<herald_platforms::Net, ConfigError> {
    use herald_http::guard::{Cidr, GuardConfig};
    let guard = GuardConfig {
        allow_networks: config.allow_private_networks.iter().filter_map(|c| Cidr::parse(c)).collect(),
        allow_ports: config.allow_ports.clone(),
    };
    let fail = |e: herald_http::BuildError| ConfigError(e.to_string());
    let mut net = herald_platforms::Net::new(
        herald_http::HttpClient::trusted().map_err(fail)?,
        herald_http::SafeClient::new(guard).map_err(fail)?,
    );
    for (platform, base) in &config.api_bases {
        net = net.with_base(platform, base.clone());
    }
    Ok(net)
}

/// Sources and triggers: feeds through the SSRF-guarded client, the hub and YouTube through the
/// trusted one (the operator chose them).
pub fn sources_for(config: &Config, db: Db, vault: Vault) -> Result<herald_triggers::Sources, ConfigError> {
    let net = net_for(config)?;
    let trigger_config = herald_triggers::TriggerConfig {
        public_url: config.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string()),
        websub_hub: config.websub_hub.clone(),
        youtube_base: config.youtube_base.clone(),
        feed_max_bytes: config.feed_max_bytes,
        ..Default::default()
    };
    Ok(herald_triggers::Sources::new(db, vault, net.safe, net.trusted, trigger_config))
}

/// Workflows: http steps and teams' own AI endpoints through the SSRF-guarded client; the
/// operator's AI endpoint through the trusted one.
pub fn workflows_for(
    config: &Config,
    db: Db,
    vault: Vault,
    posts: herald_posts::Posts,
    connections: herald_connections::Connections,
) -> Result<herald_workflows::Workflows, ConfigError> {
    let net = net_for(config)?;
    let wf_config = herald_workflows::WorkflowConfig {
        public_url: config.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string()),
        ai_base_url: config.ai_base_url.clone(),
        ai_model: config.ai_model.clone(),
        ai_api_key: config.ai_api_key.clone(),
        ai_daily_calls: config.ai_daily_calls,
        ai_daily_tokens: config.ai_daily_tokens,
    };
    Ok(herald_workflows::Workflows::new(db, posts, connections, net.safe, net.trusted, vault, wf_config))
}

/// `herald config check`: what can be checked without starting.
pub async fn check(config: &Config) -> Result<(), Exit> {
    ensure_writable_dir(&config.data_dir, "the data dir")?;
    if let DatabaseUrl::Postgres { .. } = config.database_url {
        open_database(config).await?.close().await;
    }
    if config.media_url.is_some() {
        media_store(config).await?;
    }
    Ok(())
}

/// The media library's storage: the data dir, or the object store `media_url` names, checked
/// now (a wrong bucket or key fails the start, not the first upload). Uploads to an object store
/// are staged in the data dir while they are checked.
pub async fn media_store(config: &Config) -> Result<herald_media::MediaStore, Exit> {
    let local = config.data_dir.join("media");
    let Some(url) = &config.media_url else { return Ok(herald_media::MediaStore::local(local)) };
    let store = herald_media::MediaStore::object(url, config.data_dir.join("media-staging"))
        .map_err(|e| Exit::Config(e.to_string()))?;
    store.check().await.map_err(|e| Exit::Config(e.to_string()))?;
    tracing::info!(media = %store.describe(), "media live in object storage");
    Ok(store)
}

fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "herald".to_string() } else { host };
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[24..])
}

pub async fn serve(config: Config) -> Result<(), Exit> {
    let started = Instant::now();
    ensure_writable_dir(&config.data_dir, "the data dir")?;
    let vault = load_vault(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrInUse { "is already in use" } else { "cannot be bound" };
        Exit::Config(format!(
            "listen address {} {why} ({e}); stop the other process or choose another with HERALD_LISTEN",
            config.listen
        ))
    })?;
    let db = open_database(&config).await?;
    db.migrate().await.context("applying database migrations")?;
    let queue = Queue::new(db.clone());
    let metrics = herald_server::metrics::install();
    let accounts = accounts_for(&config, db.clone(), vault.clone());
    let connections = herald_connections::Connections::new(accounts.clone(), net_for(&config)?);
    // Media URLs are signed with a key derived from the master keys, so every node agrees.
    let media_signer = herald_media::UrlSigner::new(vault.derive(herald_media::signing::LABEL));
    let mut posts =
        herald_posts::Posts::new(accounts.clone(), connections.clone(), queue.clone(), media_store(&config).await?);
    if let Some(public) = &accounts.config().public_url {
        posts =
            posts.with_public_media(herald_media::PublicMedia::new(public, media_signer.clone(), config.media_url_ttl));
    }
    // With SMTP, recording a notification also enqueues its e-mail (every role records them);
    // without it nothing is enqueued.
    herald_posts::notify_mail::enable(config.smtp.as_ref().map(|_| herald_posts::Pacing::default()));
    let sources = sources_for(&config, db.clone(), vault.clone())?;
    let workflows = workflows_for(&config, db.clone(), vault.clone(), posts.clone(), connections.clone())?;
    let state = AppState {
        db: db.clone(),
        accounts: accounts.clone(),
        connections,
        posts: posts.clone(),
        sources: sources.clone(),
        workflows: workflows.clone(),
        media_max_bytes: config.media_max_bytes,
        media_signer,
        public_url: accounts.config().public_url.clone(),
        mail_enabled: config.smtp.is_some(),
        queue: queue.clone(),
        metrics: metrics.clone(),
        role: config.role,
    };
    let app = router(state);
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        "herald listening on http://{addr} with database {} (role {}, ready in {} ms)",
        config.database_url,
        config.role.as_str(),
        started.elapsed().as_millis()
    );

    if config.role.serves_api() {
        announce_setup(&accounts, &config, addr).await?;
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    tokio::spawn({
        let stop = shutdown.clone();
        async move {
            // Picks up keys `herald secrets rotate` adds while this node runs.
            while tokio::time::timeout(Duration::from_secs(30), stop.cancelled()).await.is_err() {
                if vault.reload() {
                    tracing::info!(keys = ?vault.key_ids(), "reloaded the master keys");
                }
            }
        }
    });
    tokio::spawn({
        let stop = shutdown.clone();
        async move {
            // Histograms need periodic upkeep between scrapes.
            while tokio::time::timeout(Duration::from_secs(5), stop.cancelled()).await.is_err() {
                metrics.run_upkeep();
            }
        }
    });
    if config.role.runs_jobs() {
        tokio::spawn({
            let (stop, posts, overdue_after) = (shutdown.clone(), posts.clone(), config.overdue_after);
            async move {
                // Overdue deliveries show in the log and metrics; orphans get an outcome.
                while tokio::time::timeout(Duration::from_secs(60), stop.cancelled()).await.is_err() {
                    if let Err(e) = posts.sweep(overdue_after).await {
                        tracing::warn!("the delivery sweep failed: {e}");
                    }
                }
            }
        });
    }
    if config.role.runs_jobs() {
        tokio::spawn({
            let (stop, posts, max_age) = (shutdown.clone(), posts.clone(), config.stats_max_age);
            async move {
                // Engagement snapshots of published deliveries, each on its own thinning schedule;
                // nodes sharing a database claim different deliveries.
                while tokio::time::timeout(Duration::from_secs(60), stop.cancelled()).await.is_err() {
                    match posts.collect_stats(max_age).await {
                        Ok(r) if r.due == 0 => tracing::debug!("stats: nothing due"),
                        Ok(r) => tracing::info!(
                            due = r.due,
                            stored = r.stored,
                            unsupported = r.unsupported,
                            failed = r.failed,
                            rate_limited = r.rate_limited,
                            skipped = r.skipped,
                            "stats collected"
                        ),
                        Err(e) => tracing::warn!("the stats collector failed: {e}"),
                    }
                }
            }
        });
    }
    if config.role.runs_jobs() {
        if let Some(why) = sources.push_unavailable() {
            tracing::info!("YouTube sources are polled only: {why}");
        }
        // Feed polls and schedule firings; a lease per source keeps nodes from doubling up.
        tokio::spawn(herald_triggers::Poller::new(sources.clone(), config.poll_concurrency).run(shutdown.clone()));
    }
    let runner = config.role.runs_jobs().then(|| {
        let http = herald_http::HttpClient::trusted().expect("the HTTP client builds");
        let runner_config = RunnerConfig {
            worker_id: worker_id(),
            queues: vec![(herald_queue::NewJob::DEFAULT_QUEUE.into(), config.workers)],
            lease: config.job_lease,
            retention_age: Some(config.job_retention),
            retention_count: Some(config.job_retention_count),
            shutdown_grace: config.shutdown_grace,
            ..RunnerConfig::default()
        };
        let mut registry = crate::jobs::registry(http, accounts.clone(), config.smtp.clone(), posts.clone());
        registry
            .register(herald_triggers::WEBSUB_JOB, herald_triggers::WebSubHandler::new(sources.clone()))
            .register(
                herald_triggers::EVENT_JOB,
                herald_triggers::EventDispatcher::new(sources.clone(), herald_workflows::sink(&workflows)),
            )
            .register(herald_workflows::RUN_JOB, herald_workflows::RunHandler::new(workflows.clone()));
        if let Some(smtp) = &config.smtp {
            match herald_accounts::notify_mail::Mailer::new(smtp.url.clone(), &smtp.from) {
                Ok(mailer) => {
                    registry
                        .register(herald_posts::NOTIFY_MAIL_JOB, herald_posts::NotifyMailHandler::new(posts, mailer));
                }
                Err(e) => tracing::warn!("notification mail is off: HERALD_SMTP_FROM does not parse: {e}"),
            }
        }
        tokio::spawn(Runner::new(queue, registry, runner_config).run(shutdown.clone()))
    });
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let served = server.await;
    if let Some(r) = runner {
        let _ = r.await;
    }
    db.close().await;
    served.context("the HTTP server failed")?;
    tracing::info!("herald stopped");
    Ok(())
}

/// While no user exists, logs a one-time link (24 h) that creates the first owner.
async fn announce_setup(accounts: &Accounts, config: &Config, addr: std::net::SocketAddr) -> Result<(), Exit> {
    let token = accounts.issue_setup_token().await.map_err(|e| Exit::Failure(anyhow::anyhow!("{}", e.message)))?;
    if let Some(token) = token {
        let base = config
            .public_url
            .as_ref()
            .map_or_else(|| format!("http://{addr}"), |u| u.as_str().trim_end_matches('/').to_string());
        tracing::warn!(
            "no user exists yet: open {base}/setup?token={token} within 24 hours to create the first owner \
             (or POST /api/v1/session/setup with this token, or run `herald user create --email …`)"
        );
    }
    Ok(())
}

async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
    shutdown.cancel();
}

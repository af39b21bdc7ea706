//! The effective configuration: flags and environment (through clap), then `herald.toml`, then
//! defaults. Every problem is a [`ConfigError`], which stops Herald with exit code 2.

use crate::cli::Settings;
use herald_core::time::{format_duration, parse_duration};
use herald_server::Role;
use herald_store::DatabaseUrl;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// `herald.toml`: the same keys as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    public_url: Option<String>,
    secret_key: Option<String>,
    session_idle: Option<String>,
    session_max: Option<String>,
    smtp_url: Option<String>,
    smtp_from: Option<String>,
    role: Option<String>,
    workers: Option<usize>,
    shutdown_grace: Option<String>,
    job_lease: Option<String>,
    job_retention: Option<String>,
    job_retention_count: Option<u64>,
    stats_max_age: Option<String>,
    overdue_after: Option<String>,
    db_max_connections: Option<u32>,
    allow_private_networks: Option<Vec<String>>,
    allow_ports: Option<Vec<u16>>,
    media_max_bytes: Option<String>,
    media_url_ttl: Option<String>,
    media_url: Option<String>,
    websub_hub: Option<String>,
    youtube_base: Option<String>,
    feed_max_bytes: Option<String>,
    poll_concurrency: Option<usize>,
    ai_base_url: Option<String>,
    ai_model: Option<String>,
    ai_api_key: Option<String>,
    ai_daily_calls: Option<i64>,
    ai_daily_tokens: Option<i64>,
    /// `platform id -> API base`, like HERALD_<PLATFORM>_API_BASE.
    api_bases: Option<BTreeMap<String, String>>,
    log: Option<String>,
    log_format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    File,
    Default,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag or env",
            Source::File => "file",
            Source::Default => "default",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: DatabaseUrl,
    pub public_url: Option<url::Url>,
    /// Keys from HERALD_SECRET_KEY (the first seals); `None` means the key file in the data dir.
    pub secret_key: Option<Vec<herald_vault::MasterKey>>,
    pub session_idle: Duration,
    pub session_max: Duration,
    pub smtp: Option<Smtp>,
    pub role: Role,
    pub workers: usize,
    pub shutdown_grace: Duration,
    pub job_lease: Duration,
    pub job_retention: Duration,
    pub job_retention_count: u64,
    /// How long after publishing a delivery's engagement is still collected.
    pub stats_max_age: Duration,
    /// Deliveries this far past their time are reported as overdue by the sweep.
    pub overdue_after: Duration,
    pub db_max_connections: u32,
    pub allow_private_networks: Vec<String>,
    pub allow_ports: Vec<u16>,
    /// The largest media upload.
    pub media_max_bytes: u64,
    /// How long a signed media URL (made when public_url is set) works.
    pub media_url_ttl: Duration,
    /// Where media live: None for `$data_dir/media`, or `s3://bucket[/prefix]`.
    pub media_url: Option<String>,
    /// The WebSub hub YouTube channels subscribe at.
    pub websub_hub: String,
    /// Where YouTube channel feeds and handle pages are fetched (tests point it at a fake).
    pub youtube_base: String,
    /// The largest feed body read.
    pub feed_max_bytes: usize,
    /// Feed polls running at once on a worker node.
    pub poll_concurrency: usize,
    /// The operator's OpenAI-compatible endpoint for ai_rewrite steps.
    pub ai_base_url: Option<String>,
    pub ai_model: String,
    pub ai_api_key: Option<String>,
    /// Each team's default daily AI budget: calls and tokens.
    pub ai_daily_calls: i64,
    pub ai_daily_tokens: i64,
    /// Operator overrides of platform API bases (trusted configuration, not SSRF-guarded).
    pub api_bases: BTreeMap<String, String>,
    pub log: String,
    pub log_format: LogFormat,
    sources: Vec<(&'static str, Source)>,
}

/// Where Herald sends mail.
#[derive(Debug, Clone)]
pub struct Smtp {
    pub url: herald_mail::SmtpUrl,
    pub from: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

struct Merge<'a> {
    sources: &'a mut Vec<(&'static str, Source)>,
}

impl Merge<'_> {
    fn pick<T>(&mut self, key: &'static str, flag: Option<T>, file: Option<T>) -> Option<T> {
        let (v, s) = match (flag, file) {
            (Some(v), _) => (Some(v), Source::Flag),
            (None, Some(v)) => (Some(v), Source::File),
            (None, None) => (None, Source::Default),
        };
        self.sources.push((key, s));
        v
    }
}

fn duration(key: &str, v: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(&s).map_err(|e| bad(format!("{key}: {e}"))),
    }
}

impl Config {
    /// Resolves the configuration. Reads the file, but touches nothing else.
    pub fn load(flags: &Settings) -> Result<Config, ConfigError> {
        let (file_path, file) = read_file(flags.config.as_deref())?;
        let mut sources = Vec::new();
        let mut m = Merge { sources: &mut sources };
        let f = file;

        let listen_raw = m.pick("listen", flags.listen.clone(), f.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            bad(format!("listen: `{listen_raw}` is not an address; write it like 127.0.0.1:8080 or 0.0.0.0:8080"))
        })?;
        let data_dir = m.pick("data_dir", flags.data_dir.clone(), f.data_dir).unwrap_or_else(|| "herald-data".into());
        let database_url = match m.pick("database_url", flags.database_url.clone(), f.database_url) {
            Some(raw) => DatabaseUrl::parse(&raw).map_err(|e| bad(format!("database_url: {e}")))?,
            None => DatabaseUrl::sqlite(data_dir.join("herald.db")),
        };
        let public_url = m
            .pick("public_url", flags.public_url.clone(), f.public_url)
            .map(|raw| {
                let u = url::Url::parse(&raw).map_err(|e| bad(format!("public_url: `{raw}` is not a URL ({e})")))?;
                if !matches!(u.scheme(), "http" | "https") {
                    return Err(bad(format!("public_url: `{raw}` must start with http:// or https://")));
                }
                Ok(u)
            })
            .transpose()?;
        let secret_key = m
            .pick("secret_key", flags.secret_key.clone(), f.secret_key)
            .map(|s| {
                herald_vault::MasterKey::parse_list(&s).map_err(|_| {
                    bad("secret_key: HERALD_SECRET_KEY must be 64 hex characters (32 bytes), or several such keys separated by commas with the active one first; generate one with `openssl rand -hex 32`")
                })
            })
            .transpose()?;
        let session_idle = duration(
            "session_idle",
            m.pick("session_idle", flags.session_idle.clone(), f.session_idle),
            Duration::from_secs(7 * 86_400),
        )?;
        let session_max = duration(
            "session_max",
            m.pick("session_max", flags.session_max.clone(), f.session_max),
            Duration::from_secs(30 * 86_400),
        )?;
        let smtp_url = m.pick("smtp_url", flags.smtp_url.clone(), f.smtp_url);
        let smtp_from = m.pick("smtp_from", flags.smtp_from.clone(), f.smtp_from);
        let smtp = match smtp_url {
            None => None,
            Some(raw) => {
                let url = herald_mail::SmtpUrl::parse(&raw).map_err(|e| bad(format!("smtp_url: {e}")))?;
                let Some(public) = &public_url else {
                    return Err(bad(
                        "smtp_url needs public_url (HERALD_PUBLIC_URL): mailed links must point somewhere",
                    ));
                };
                let from = smtp_from.unwrap_or_else(|| format!("herald@{}", public.host_str().unwrap_or("localhost")));
                if !from.contains('@') || from.contains(['\r', '\n', '<', '>']) {
                    return Err(bad(format!("smtp_from: `{from}` is not an email address")));
                }
                Some(Smtp { url, from })
            }
        };
        if session_idle.is_zero() || session_max.is_zero() {
            return Err(bad("session_idle and session_max must be more than 0s"));
        }
        let role_raw = m.pick("role", flags.role.clone(), f.role).unwrap_or_else(|| "all".into());
        let role = Role::parse(&role_raw)
            .ok_or_else(|| bad(format!("role: `{role_raw}` is not a role; use all, api or worker")))?;
        let workers = m.pick("workers", flags.workers, f.workers).unwrap_or(32);
        if workers == 0 {
            return Err(bad("workers: must be at least 1"));
        }
        let shutdown_grace = duration(
            "shutdown_grace",
            m.pick("shutdown_grace", flags.shutdown_grace.clone(), f.shutdown_grace),
            Duration::from_secs(30),
        )?;
        let job_lease =
            duration("job_lease", m.pick("job_lease", flags.job_lease.clone(), f.job_lease), Duration::from_secs(30))?;
        if job_lease < Duration::from_secs(1) {
            return Err(bad("job_lease: must be at least 1s, or heartbeats cannot keep up"));
        }
        let job_retention = duration(
            "job_retention",
            m.pick("job_retention", flags.job_retention.clone(), f.job_retention),
            Duration::from_secs(7 * 86_400),
        )?;
        let job_retention_count =
            m.pick("job_retention_count", flags.job_retention_count, f.job_retention_count).unwrap_or(100_000);
        let stats_max_age = duration(
            "stats_max_age",
            m.pick("stats_max_age", flags.stats_max_age.clone(), f.stats_max_age),
            Duration::from_secs(30 * 86_400),
        )?;
        let overdue_after = duration(
            "overdue_after",
            m.pick("overdue_after", flags.overdue_after.clone(), f.overdue_after),
            Duration::from_secs(300),
        )?;
        let db_max_connections =
            m.pick("db_max_connections", flags.db_max_connections, f.db_max_connections).unwrap_or(10);
        let allow_private_networks = m
            .pick(
                "allow_private_networks",
                flags.allow_private_networks.clone().map(|s| s.split(',').map(|p| p.trim().to_string()).collect()),
                f.allow_private_networks,
            )
            .unwrap_or_default()
            .into_iter()
            .filter(|s: &String| !s.is_empty())
            .collect::<Vec<_>>();
        for cidr in &allow_private_networks {
            validate_cidr(cidr)?;
        }
        let allow_ports = match flags.allow_ports.as_deref() {
            Some(raw) => Some(
                raw.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(|| {
                            bad(format!(
                                "allow_ports: `{p}` is not a port; write a comma-separated list such as 8448,7000"
                            ))
                        })
                    })
                    .collect::<Result<Vec<u16>, _>>()?,
            ),
            None => None,
        };
        let allow_ports = m.pick("allow_ports", allow_ports, f.allow_ports).unwrap_or_default();
        let media_max_bytes = match m.pick("media_max_bytes", flags.media_max_bytes.clone(), f.media_max_bytes) {
            None => 512 << 20,
            Some(raw) => parse_size(&raw).ok_or_else(|| {
                bad(format!("media_max_bytes: `{raw}` is not a size; write it like 512MB, 2GB or 1048576"))
            })?,
        };
        let media_url_ttl = duration(
            "media_url_ttl",
            m.pick("media_url_ttl", flags.media_url_ttl.clone(), f.media_url_ttl),
            Duration::from_secs(86_400),
        )?;
        if media_url_ttl < Duration::from_secs(60) {
            return Err(bad("media_url_ttl: must be at least 1m, or platforms cannot fetch the file in time"));
        }
        let media_url = m.pick("media_url", flags.media_url.clone(), f.media_url).filter(|u| !u.trim().is_empty());
        let operator_url = |key: &'static str, raw: String| -> Result<String, ConfigError> {
            let u = url::Url::parse(raw.trim()).map_err(|e| bad(format!("{key}: `{raw}` is not a URL ({e})")))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(bad(format!("{key}: `{raw}` must be an http(s) URL")));
            }
            Ok(raw.trim().trim_end_matches('/').to_string())
        };
        let websub_hub = operator_url(
            "websub_hub",
            m.pick("websub_hub", flags.websub_hub.clone(), f.websub_hub)
                .unwrap_or_else(|| "https://pubsubhubbub.appspot.com/subscribe".into()),
        )?;
        let youtube_base = operator_url(
            "youtube_base",
            m.pick("youtube_base", flags.youtube_base.clone(), f.youtube_base)
                .unwrap_or_else(|| "https://www.youtube.com".into()),
        )?;
        let feed_max_bytes = match m.pick("feed_max_bytes", flags.feed_max_bytes.clone(), f.feed_max_bytes) {
            None => 5 << 20,
            Some(raw) => parse_size(&raw)
                .filter(|n| (1024..=64 << 20).contains(n))
                .ok_or_else(|| bad(format!("feed_max_bytes: `{raw}` is not a size between 1KB and 64MB, e.g. 5MB")))?
                as usize,
        };
        let poll_concurrency = m.pick("poll_concurrency", flags.poll_concurrency, f.poll_concurrency).unwrap_or(64);
        if poll_concurrency == 0 {
            return Err(bad("poll_concurrency: must be at least 1"));
        }
        let ai_base_url = match m.pick("ai_base_url", flags.ai_base_url.clone(), f.ai_base_url) {
            Some(raw) if !raw.trim().is_empty() => Some(operator_url("ai_base_url", raw)?),
            _ => None,
        };
        let ai_model = m.pick("ai_model", flags.ai_model.clone(), f.ai_model).unwrap_or_else(|| "gpt-4o-mini".into());
        let ai_api_key = m.pick("ai_api_key", flags.ai_api_key.clone(), f.ai_api_key).filter(|k| !k.trim().is_empty());
        let ai_daily_calls = m.pick("ai_daily_calls", flags.ai_daily_calls, f.ai_daily_calls).unwrap_or(500);
        let ai_daily_tokens = m.pick("ai_daily_tokens", flags.ai_daily_tokens, f.ai_daily_tokens).unwrap_or(1_000_000);
        if ai_daily_calls < 0 || ai_daily_tokens < 0 {
            return Err(bad("ai_daily_calls and ai_daily_tokens: must be 0 or more (0 turns AI off)"));
        }
        if let Some(u) = &media_url
            && !u.starts_with("s3://")
        {
            return Err(bad(format!(
                "media_url: `{u}` is not s3://bucket[/prefix]; leave it out to keep media in the data directory"
            )));
        }
        let mut api_bases = f.api_bases.unwrap_or_default();
        for p in herald_core::platforms::REGISTRY {
            let var = format!("HERALD_{}_API_BASE", p.id.to_uppercase());
            if let Ok(v) = std::env::var(&var)
                && !v.trim().is_empty()
            {
                api_bases.insert(p.id.to_string(), v.trim().to_string());
            }
        }
        for (platform, base) in &api_bases {
            if herald_core::platforms::platform(platform).is_none() {
                return Err(bad(format!("api_bases: `{platform}` is not a platform id")));
            }
            match url::Url::parse(base) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(bad(format!(
                        "the API base for {platform} (`{base}`) is not an http(s) URL; set HERALD_{}_API_BASE like https://api.example.com",
                        platform.to_uppercase()
                    )));
                }
            }
        }
        let log = m.pick("log", flags.log.clone(), f.log).unwrap_or_else(|| "info".into());
        let log_format = match m.pick("log_format", flags.log_format.clone(), f.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(format!("log_format: `{other}` is not a format; use text or json")));
            }
        };
        Ok(Config {
            file: file_path,
            listen,
            data_dir,
            database_url,
            public_url,
            secret_key,
            session_idle,
            session_max,
            smtp,
            role,
            workers,
            shutdown_grace,
            job_lease,
            job_retention,
            job_retention_count,
            stats_max_age,
            overdue_after,
            db_max_connections,
            allow_private_networks,
            allow_ports,
            media_max_bytes,
            media_url_ttl,
            media_url,
            websub_hub,
            youtube_base,
            feed_max_bytes,
            poll_concurrency,
            ai_base_url,
            ai_model,
            ai_api_key,
            ai_daily_calls,
            ai_daily_tokens,
            api_bases,
            log,
            log_format,
            sources,
        })
    }

    fn source(&self, key: &str) -> &'static str {
        self.sources.iter().find(|(k, _)| *k == key).map_or("default", |(_, s)| s.as_str())
    }

    /// The configuration as TOML, secrets redacted, each line noting where its value came from.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match &self.file {
            Some(p) => writeln!(out, "# configuration file: {}", p.display()),
            None => writeln!(out, "# configuration file: none"),
        }
        .ok();
        let mut line = |key: &str, value: String| {
            let _ = writeln!(out, "{key} = {value:<40} # {}", self.source(key));
        };
        let q = |s: &str| format!("{s:?}");
        line("listen", q(&self.listen.to_string()));
        line("data_dir", q(&self.data_dir.display().to_string()));
        line("database_url", q(&self.database_url.redacted()));
        line("public_url", self.public_url.as_ref().map_or("\"\"".into(), |u| q(u.as_str())));
        line(
            "secret_key",
            if self.secret_key.is_some() { q("***") } else { q("(key file in data_dir, generated on first serve)") },
        );
        line("smtp_url", self.smtp.as_ref().map_or("\"\"".into(), |s| q(&s.url.redacted())));
        line("smtp_from", self.smtp.as_ref().map_or("\"\"".into(), |s| q(&s.from)));
        line("session_idle", q(&format_duration(self.session_idle)));
        line("session_max", q(&format_duration(self.session_max)));
        line("role", q(self.role.as_str()));
        line("workers", self.workers.to_string());
        line("shutdown_grace", q(&format_duration(self.shutdown_grace)));
        line("job_lease", q(&format_duration(self.job_lease)));
        line("job_retention", q(&format_duration(self.job_retention)));
        line("job_retention_count", self.job_retention_count.to_string());
        line("stats_max_age", q(&format_duration(self.stats_max_age)));
        line("overdue_after", q(&format_duration(self.overdue_after)));
        line("db_max_connections", self.db_max_connections.to_string());
        line("allow_private_networks", format!("{:?}", self.allow_private_networks));
        line("allow_ports", format!("{:?}", self.allow_ports));
        line("media_max_bytes", self.media_max_bytes.to_string());
        line("media_url_ttl", q(&format_duration(self.media_url_ttl)));
        line("media_url", q(self.media_url.as_deref().unwrap_or("")));
        line("websub_hub", q(&self.websub_hub));
        line("youtube_base", q(&self.youtube_base));
        line("feed_max_bytes", self.feed_max_bytes.to_string());
        line("poll_concurrency", self.poll_concurrency.to_string());
        line("ai_base_url", q(self.ai_base_url.as_deref().unwrap_or("")));
        line("ai_model", q(&self.ai_model));
        line("ai_api_key", if self.ai_api_key.is_some() { q("***") } else { q("") });
        line("ai_daily_calls", self.ai_daily_calls.to_string());
        line("ai_daily_tokens", self.ai_daily_tokens.to_string());

        line("log", q(&self.log));
        line("log_format", q(if self.log_format == LogFormat::Json { "json" } else { "text" }));
        for (platform, base) in &self.api_bases {
            let _ = writeln!(
                out,
                "# api base for {platform}: {base} (HERALD_{}_API_BASE or api_bases)",
                platform.to_uppercase()
            );
        }
        out
    }
}

fn read_file(explicit: Option<&Path>) -> Result<(Option<PathBuf>, FileConfig), ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new("herald.toml").exists() => PathBuf::from("herald.toml"),
        None => return Ok((None, FileConfig::default())),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| bad(format!("cannot read the configuration file {}: {e}", path.display())))?;
    let file: FileConfig =
        toml::from_str(&text).map_err(|e| bad(format!("the configuration file {} is invalid: {e}", path.display())))?;
    Ok((Some(path), file))
}

/// `1048576`, `512KB`, `512MB`, `2GB` (binary multiples).
fn parse_size(raw: &str) -> Option<u64> {
    let s = raw.trim().to_ascii_uppercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let k = match unit.trim() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(k).filter(|v| *v > 0)
}

fn validate_cidr(cidr: &str) -> Result<(), ConfigError> {
    herald_http::guard::Cidr::parse(cidr)
        .map(|_| ())
        .ok_or_else(|| bad(format!("allow_private_networks: `{cidr}` is not a CIDR such as 10.0.0.0/8 or fd00::/8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("herald.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default() {
        let dir = herald_store::testing::scratch_dir("herald-config");
        let file = write(&dir, "listen = \"127.0.0.1:9000\"\nworkers = 4\njob_lease = \"1m\"\n");
        let flags = Settings { config: Some(file), listen: Some("127.0.0.1:9100".into()), ..Settings::default() };
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.workers, 4);
        assert_eq!(c.job_lease, Duration::from_secs(60));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.stats_max_age, Duration::from_secs(30 * 86_400));
        assert_eq!(c.overdue_after, Duration::from_secs(300));
        let shown = c.render();
        assert!(shown.contains("listen = \"127.0.0.1:9100\""), "{shown}");
        assert!(shown.contains("# flag or env"));
        assert!(shown.contains("workers = 4") && shown.contains("# file"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn secrets_never_show() {
        let key = "ab".repeat(32);
        let flags = Settings {
            secret_key: Some(key.clone()),
            database_url: Some("postgres://herald:hunter2@db/herald".into()),
            ..Settings::default()
        };
        let c = Config::load(&flags).unwrap();
        let shown = format!("{}{:?}", c.render(), c);
        assert!(!shown.contains(&key) && !shown.contains("hunter2"), "{shown}");
        assert_eq!(c.secret_key.unwrap()[0].to_hex(), key);
    }

    #[test]
    fn bad_values_say_what_to_do() {
        let cases = [
            (Settings { database_url: Some("mysql://x".into()), ..Default::default() }, "unknown database URL scheme"),
            (Settings { listen: Some("localhost".into()), ..Default::default() }, "is not an address"),
            (Settings { role: Some("boss".into()), ..Default::default() }, "use all, api or worker"),
            (Settings { secret_key: Some("short".into()), ..Default::default() }, "openssl rand -hex 32"),
            (Settings { job_lease: Some("5 weeks".into()), ..Default::default() }, "unknown unit"),
            (Settings { allow_private_networks: Some("10.0.0.0/33".into()), ..Default::default() }, "not a CIDR"),
            (Settings { config: Some("/nonexistent/herald.toml".into()), ..Default::default() }, "cannot read"),
        ];
        for (flags, want) in cases {
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let dir = herald_store::testing::scratch_dir("herald-config");
        let file = write(&dir, "lisen = \"typo\"\n");
        let err = Config::load(&Settings { config: Some(file), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("unknown field `lisen`"), "{err}");
        let err = Config::load(&Settings { allow_ports: Some("7000,http".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("`http` is not a port"), "{err}");
        let file = write(&dir, "[api_bases]\ntelegram = \"ftp://x\"\n");
        let err = Config::load(&Settings { config: Some(file), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("HERALD_TELEGRAM_API_BASE"), "{err}");
        let file = write(&dir, "stats_max_age = \"a week\"\n");
        let err = Config::load(&Settings { config: Some(file.clone()), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("stats_max_age"), "{err}");
        std::fs::write(&file, "stats_max_age = \"7d\"\n").unwrap();
        let config = Config::load(&Settings { config: Some(file), ..Default::default() }).unwrap();
        assert_eq!(config.stats_max_age, Duration::from_secs(7 * 86_400));
        assert!(config.render().contains("stats_max_age = \"7d\""), "{}", config.render());
        let file = write(&dir, "media_url_ttl = \"7d\"\n");
        let config = Config::load(&Settings { config: Some(file), ..Default::default() }).unwrap();
        assert_eq!(config.media_url_ttl, Duration::from_secs(7 * 86_400));
        assert!(config.render().contains("media_url_ttl = \"7d\""), "{}", config.render());
        let err = Config::load(&Settings { media_url_ttl: Some("5s".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("media_url_ttl"), "{err}");
        let file = write(&dir, "allow_ports = [8448]\n[api_bases]\nvk = \"http://127.0.0.1:9000\"\n");
        let config = Config::load(&Settings { config: Some(file), ..Default::default() }).unwrap();
        assert_eq!(config.allow_ports, vec![8448]);
        assert_eq!(config.api_bases["vk"], "http://127.0.0.1:9000");
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! Mastodon (and its forks), on an instance the user chose: every call goes through the
//! SSRF-guarded client. A status is posted once per `Idempotency-Key` (the server keeps keys for
//! an hour), media are uploaded first and attached only once processed, and the instance's own
//! limits (forks change them) are read at verify time and kept in the settings.

use crate::net::{retry_after_header, until_iso};
use crate::{
    Adapter, Connection, Idempotent, Metrics, Net, Outgoing, Pacing, Platform, PlatformError, Published, Reply,
    Verified,
};
use async_trait::async_trait;
use herald_core::platforms::{Counting, TextLimit};
use herald_http::{Method, multipart};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub struct Mastodon;

#[derive(Deserialize)]
struct Credentials {
    access_token: String,
}

#[derive(Deserialize)]
struct Settings {
    instance_url: String,
    visibility: Option<String>,
    language: Option<String>,
    account_id: Option<String>,
}

const VISIBILITIES: [&str; 4] = ["public", "unlisted", "private", "direct"];

/// The status family: 300 statuses per 3 hours per account.
const STATUSES_PER_WINDOW: f64 = 300.0;
const STATUS_WINDOW_SECS: f64 = 3.0 * 3600.0;

/// How long to wait for an uploaded file to finish processing before giving up for this attempt.
const MEDIA_WAIT: Duration = Duration::from_secs(120);
const FIRST_POLL: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_secs(5);

/// Defaults of a stock Mastodon, used when the instance does not say.
const DEFAULT_MAX_CHARACTERS: u64 = 500;
const DEFAULT_URL_WEIGHT: u64 = 23;

/// The text limit of the connection's instance, from the `limits` that verify stored in its
/// settings (stock Mastodon's 500 characters, links counting 23, when they are missing), so posts
/// are validated against the instance's own `max_characters`.
pub fn text_limit(settings: &Value) -> TextLimit {
    let limit = |key: &str, default: u64| settings["limits"][key].as_u64().filter(|n| *n > 0).unwrap_or(default);
    TextLimit {
        max: limit("max_characters", DEFAULT_MAX_CHARACTERS) as usize,
        counting: Counting::CharsUrlsFixed {
            url_weight: limit("characters_reserved_per_url", DEFAULT_URL_WEIGHT) as usize,
        },
        max_bytes: None,
        max_with_media: None,
    }
}

/// The registry entry with the instance's own limits (text, media count and sizes) in place of
/// the defaults, ready for `herald_core::platforms::validate`.
pub fn platform_for(settings: &Value) -> Platform {
    let mut p = *crate::registry("mastodon");
    p.text = Some(text_limit(settings));
    let limits = &settings["limits"];
    if let Some(n) = limits["max_media_attachments"].as_u64() {
        p.media.max_items = n as usize;
    }
    if let Some(n) = limits["image_size_limit"].as_u64().filter(|n| *n > 0) {
        p.media.max_image_bytes = n;
    }
    if let Some(n) = limits["video_size_limit"].as_u64().filter(|n| *n > 0) {
        p.media.max_video_bytes = n;
    }
    p
}

/// The instance's base URL (scheme, host, port) and its host for bucket keys.
struct Instance {
    base: String,
    host: String,
}

fn instance(raw: &str) -> Result<Instance, PlatformError> {
    let bad = |why: &str| PlatformError::invalid(format!("the Mastodon instance URL {why}")).code("bad_settings");
    let raw = raw.trim();
    // People paste `mastodon.social` as often as `https://mastodon.social/`.
    let with_scheme = if raw.contains("://") { raw.to_string() } else { format!("https://{raw}") };
    let url = url::Url::parse(&with_scheme).map_err(|_| bad("is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must start with https://"));
    }
    let host = url.host_str().ok_or_else(|| bad("has no host"))?;
    let host = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = url.path().trim_end_matches('/');
    Ok(Instance { base: format!("{}://{host}{path}", url.scheme()), host })
}

/// The platform's message: `error` (and `error_description` on OAuth endpoints), else the body.
fn message(reply: &Reply) -> String {
    let body = reply.json();
    match (body["error"].as_str(), body["error_description"].as_str()) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.to_string(),
        _ => reply.snippet(),
    }
}

/// Turns a failed answer into its class.
fn error(reply: &Reply) -> PlatformError {
    let msg = message(reply);
    match reply.status {
        401 => PlatformError::auth(msg),
        // "This action is outside the authorized scopes": the token needs re-authorising with the
        // right scopes. Other 403s (a suspended account, a blocked reply) are about this post.
        403 if msg.to_lowercase().contains("scope") => PlatformError::auth(msg),
        403 | 404 | 422 => PlatformError::invalid(msg),
        429 => {
            let wait = reply
                .header("x-ratelimit-reset")
                .and_then(until_iso)
                .or_else(|| retry_after_header(&reply.headers))
                .unwrap_or(Duration::from_secs(300));
            PlatformError::rate_limited(msg, Some(wait))
        }
        s => return PlatformError::from_status(s, msg, retry_after_header(&reply.headers)),
    }
    .status(reply.status)
}

fn checked(reply: Reply) -> Result<Reply, PlatformError> {
    if reply.is_success() { Ok(reply) } else { Err(error(&reply)) }
}

async fn get(net: &Net, url: &str, token: &str) -> Result<Reply, PlatformError> {
    let req = net.safe().request(Method::GET, url)?.bearer_auth(token);
    net.safe().send(req, Idempotent::Yes).await
}

/// The instance's limits, as stored in the settings under `limits`.
fn limits(instance: &Value) -> Value {
    let cfg = &instance["configuration"];
    let statuses = &cfg["statuses"];
    let media = &cfg["media_attachments"];
    let registry = crate::registry("mastodon");
    json!({
        "max_characters": statuses["max_characters"].as_u64()
            // Pleroma and older forks say it on /api/v1/instance as `max_toot_chars`.
            .or_else(|| instance["max_toot_chars"].as_u64())
            .unwrap_or(DEFAULT_MAX_CHARACTERS),
        "max_media_attachments": statuses["max_media_attachments"].as_u64().unwrap_or(registry.media.max_items as u64),
        "characters_reserved_per_url": statuses["characters_reserved_per_url"].as_u64().unwrap_or(DEFAULT_URL_WEIGHT),
        "image_size_limit": media["image_size_limit"].as_u64().unwrap_or(registry.media.max_image_bytes),
        "video_size_limit": media["video_size_limit"].as_u64().unwrap_or(registry.media.max_video_bytes),
    })
}

/// Uploads one file and waits until the instance has processed it; returns the media id.
async fn upload(net: &Net, base: &str, token: &str, media: &crate::Media) -> Result<String, PlatformError> {
    let part = multipart::Part::bytes(media.bytes.to_vec())
        .file_name(media.filename.clone())
        .mime_str(&media.mime)
        .map_err(|_| PlatformError::invalid(format!("the media type {} is not valid", media.mime)))?;
    let mut form = multipart::Form::new().part("file", part);
    if let Some(alt) = media.alt.as_deref().filter(|a| !a.is_empty()) {
        form = form.text("description", alt.to_string());
    }
    let req = net.safe().request(Method::POST, &format!("{base}/api/v2/media"))?.bearer_auth(token).multipart(form);
    // A repeated upload leaves at most an unattached file, which the instance removes on its own;
    // it is never a second post.
    let reply = checked(net.safe().send(req, Idempotent::Yes).await?)?;
    let body = reply.json();
    let id = string_id(&body)?;
    if reply.status == 200 && !body["url"].is_null() {
        return Ok(id);
    }
    // 202 (or a 200 without a URL): still processing. Poll with backoff, within a bound.
    let url = format!("{base}/api/v1/media/{id}");
    let started = Instant::now();
    let mut delay = FIRST_POLL;
    loop {
        tokio::time::sleep(delay).await;
        let reply = get(net, &url, token).await?;
        match reply.status {
            200 if !reply.json()["url"].is_null() => return Ok(id),
            200 | 206 => {}
            _ => return Err(error(&reply)),
        }
        if started.elapsed() + delay > MEDIA_WAIT {
            return Err(PlatformError::transient(format!(
                "the instance was still processing {} after {} s; the delivery will try again",
                media.filename,
                MEDIA_WAIT.as_secs()
            ))
            .code("media_processing"));
        }
        delay = (delay * 2).min(MAX_POLL);
    }
}

/// An entity's `id` (a string in Mastodon, a number in some forks).
fn string_id(body: &Value) -> Result<String, PlatformError> {
    match &body["id"] {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(PlatformError::transient("the instance answered without an id")),
    }
}

/// The status text: the post's text with its link appended when the text does not carry it.
fn status_text(post: &Outgoing) -> String {
    post.text_with_link()
}

fn visibility(v: &str) -> Result<String, PlatformError> {
    if VISIBILITIES.contains(&v) {
        Ok(v.to_string())
    } else {
        Err(PlatformError::invalid(format!(
            "Mastodon visibility must be one of {}; got `{v}`",
            VISIBILITIES.join(", ")
        ))
        .code("bad_settings"))
    }
}

#[async_trait]
impl Adapter for Mastodon {
    fn platform(&self) -> &'static Platform {
        crate::registry("mastodon")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let creds: Credentials = conn.credentials.parse("Mastodon")?;
        let settings: Settings = crate::settings(&conn.settings, "Mastodon")?;
        if let Some(v) = &settings.visibility {
            visibility(v)?;
        }
        let inst = instance(&settings.instance_url)?;
        let token = &creds.access_token;

        let account =
            checked(get(net, &format!("{}/api/v1/accounts/verify_credentials", inst.base), token).await?)?.json();
        let id = string_id(&account).map_err(|_| PlatformError::invalid("the instance did not name the account"))?;
        let acct = account["acct"].as_str().or(account["username"].as_str()).unwrap_or_default().to_string();

        let reply = get(net, &format!("{}/api/v2/instance", inst.base), token).await?;
        let info = if reply.status == 404 {
            // Servers before Mastodon 4.0 and some forks have only the v1 document.
            checked(get(net, &format!("{}/api/v1/instance", inst.base), token).await?)?.json()
        } else {
            checked(reply)?.json()
        };
        // The account's home domain can differ from the host serving the API (WEB_DOMAIN).
        let domain = info["domain"].as_str().or(info["uri"].as_str()).map(str::to_string).unwrap_or(inst.host);
        let account = if acct.contains('@') { format!("@{acct}") } else { format!("@{acct}@{domain}") };

        let mut out = conn.settings.clone();
        out["instance_url"] = json!(inst.base);
        out["account_id"] = json!(id);
        out["account"] = json!(account);
        out["limits"] = limits(&info);
        Ok(Verified { account, credentials: conn.credentials.clone(), settings: out })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let creds: Credentials = conn.credentials.parse("Mastodon")?;
        let settings: Settings = crate::settings(&conn.settings, "Mastodon")?;
        let inst = instance(&settings.instance_url)?;
        let token = &creds.access_token;

        let visibility = match post.option_str("visibility").or(settings.visibility.as_deref()) {
            Some(v) => Some(visibility(v)?),
            None => None,
        };
        let mut media_ids = Vec::with_capacity(post.media.len());
        for m in &post.media {
            media_ids.push(upload(net, &inst.base, token, m).await?);
        }

        let mut body = json!({ "status": status_text(post) });
        if !media_ids.is_empty() {
            body["media_ids"] = json!(media_ids);
        }
        if let Some(v) = visibility {
            body["visibility"] = json!(v);
        }
        if let Some(l) = post.option_str("language").or(settings.language.as_deref()) {
            body["language"] = json!(l);
        }
        if let Some(r) = &post.reply_to {
            body["in_reply_to_id"] = json!(r);
        }
        if let Some(s) = post.option_str("spoiler_text").filter(|s| !s.is_empty()) {
            body["spoiler_text"] = json!(s);
        }
        if let Some(s) = post.option_bool("sensitive") {
            body["sensitive"] = json!(s);
        }

        let req = net
            .safe()
            .request(Method::POST, &format!("{}/api/v1/statuses", inst.base))?
            .bearer_auth(token)
            .header("Idempotency-Key", &post.idempotency_key)
            .json(&body);
        let status = checked(net.safe().send(req, Idempotent::Yes).await?)?.json();
        let id =
            string_id(&status).map_err(|_| PlatformError::transient("the instance answered without a status id"))?;
        let url = status["url"].as_str().or(status["uri"].as_str()).map(str::to_string);
        Ok(Published { id, url, credentials: None })
    }

    async fn delete(&self, net: &Net, conn: &Connection, id: &str) -> Result<(), PlatformError> {
        let creds: Credentials = conn.credentials.parse("Mastodon")?;
        let settings: Settings = crate::settings(&conn.settings, "Mastodon")?;
        let inst = instance(&settings.instance_url)?;
        let req = net
            .safe()
            .request(Method::DELETE, &format!("{}/api/v1/statuses/{id}", inst.base))?
            .bearer_auth(&creds.access_token);
        let reply = net.safe().send(req, Idempotent::Yes).await?;
        // Already gone is what we wanted.
        if reply.is_success() || reply.status == 404 { Ok(()) } else { Err(error(&reply)) }
    }

    /// `favourites`, `reblogs` and `replies` from the status itself.
    async fn metrics(&self, net: &Net, conn: &Connection, id: &str) -> Result<Option<Metrics>, PlatformError> {
        let creds: Credentials = conn.credentials.parse("Mastodon")?;
        let settings: Settings = crate::settings(&conn.settings, "Mastodon")?;
        let inst = instance(&settings.instance_url)?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(PlatformError::invalid(format!("`{id}` is not a Mastodon status id")));
        }
        let url = format!("{}/api/v1/statuses/{id}", inst.base);
        let mut reply = get(net, &url, &creds.access_token).await?;
        // A token made only to post (no read scope) is refused here; a public or unlisted status
        // reads without one.
        if reply.status == 403 && message(&reply).to_lowercase().contains("scope") {
            let req = net.safe().request(Method::GET, &url)?;
            reply = net.safe().send(req, Idempotent::Yes).await?;
        }
        let status = checked(reply)?.json();
        Ok(Some(
            Metrics::default()
                .with("favourites", &status["favourites_count"])
                .with("reblogs", &status["reblogs_count"])
                .with("replies", &status["replies_count"]),
        ))
    }

    fn idempotency(&self, _conn: &Connection) -> crate::Idempotency {
        // Mastodon keeps an Idempotency-Key for an hour; 55 minutes leaves room for clocks.
        crate::Idempotency::Window(std::time::Duration::from_secs(55 * 60))
    }

    fn rules(&self, conn: &Connection) -> Platform {
        platform_for(&conn.settings)
    }

    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let settings: Settings = crate::settings(&conn.settings, "Mastodon").ok()?;
        let host = instance(&settings.instance_url).ok()?.host;
        let account = settings.account_id.unwrap_or_else(|| conn.id.to_string());
        Some(Pacing {
            bucket: format!("mastodon:{host}:{account}"),
            capacity: 30.0,
            per_second: STATUSES_PER_WINDOW / STATUS_WINDOW_SECS,
        })
    }
}

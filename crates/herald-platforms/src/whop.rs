//! Whop (`reference/platforms.md` §8): forum posts (`POST /forum_posts`) and chat messages
//! (`POST /messages`) with a company or app API key (`Authorization: Bearer`).
//!
//! Images go through Whop's upload flow: `POST /files` returns a file id and a presigned URL,
//! the bytes are `PUT` there, `GET /files/{id}` is polled until the file is `ready`, and the id
//! goes into `attachments: [{id}]`.
//!
//! What is verified and what is not (whopio/whopsdk-python, docs.whop.com):
//! - [V] the create endpoints and their fields; `GET /experiences/{id}` and
//!   `GET /chat_channels/{id}` (SDK `retrieve`); `POST /files` → `upload_url`/`upload_headers`,
//!   `GET /files/{id}` → `upload_status` (SDK types).
//! - [D] the PUT-then-poll upload flow and the `Api-Version-Date` the `/files` endpoints need
//!   (docs guide "direct file uploads"); the error body `{"error":{"type"|"code","message"}}` and
//!   the 429 message "Try again in N seconds." (docs troubleshooting page); 600 requests/min per
//!   operation and credential.
//! - [R] unverified: `GET /companies/{id}` for the public forum (the SDK's usual retrieve path);
//!   that reading an experience needs no permission beyond a valid key (so `verify` proves the key
//!   and the target, not `forum:post:create`); that Whop sends `retry-after-ms`/`retry-after`
//!   (the SDK honours them); that `/chat_channels/{id}` takes the same id as `channel_id`.
//!
//! Whop has no idempotency key for these endpoints: a lost answer is `unknown_outcome`.

use crate::net::Idempotent;
use crate::{
    Adapter, Connection, Media, MediaKind, Net, Outgoing, Pacing, Platform, PlatformError, Published, Reply, Verified,
};
use async_trait::async_trait;
use herald_http::Method;
use herald_http::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub const DEFAULT_BASE: &str = "https://api.whop.com/api/v1";
/// The `/files` endpoints need this API version or later [D].
const FILES_API_VERSION: &str = "2026-08-21-1";
/// How long Herald waits for Whop to process an uploaded image, poll by poll.
const POLL_DELAYS_MS: &[u64] = &[200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000, 2000];

pub struct Whop;

#[derive(Deserialize)]
struct Creds {
    api_key: String,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Target {
    Forum {
        experience_id: String,
        /// Needed when `experience_id` is `"public"` (the company's public forum).
        #[serde(default)]
        company_id: Option<String>,
    },
    Chat {
        channel_id: String,
        /// Stored by `verify`.
        #[serde(default)]
        ban_media: Option<bool>,
    },
}

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn target(conn: &Connection) -> Result<Target, PlatformError> {
    let t: Target = crate::settings(&conn.settings, "Whop")?;
    let bad =
        |what: &str| Err(PlatformError::invalid(format!("the Whop {what} is not a Whop id")).code("bad_settings"));
    match &t {
        Target::Forum { experience_id, company_id } => {
            if !id_ok(experience_id) {
                return bad("experience_id");
            }
            match company_id {
                Some(c) if !id_ok(c) => return bad("company_id"),
                None if experience_id == "public" => {
                    return Err(PlatformError::invalid(
                        "posting to the public forum (experience_id \"public\") needs the company_id (biz_…)",
                    )
                    .code("bad_settings"));
                }
                _ => {}
            }
        }
        Target::Chat { channel_id, .. } if !id_ok(channel_id) => return bad("channel_id"),
        Target::Chat { .. } => {}
    }
    Ok(t)
}

fn api_key(conn: &Connection) -> Result<String, PlatformError> {
    let c: Creds = conn.credentials.parse("Whop")?;
    Ok(c.api_key.trim().to_string())
}

fn base(net: &Net) -> String {
    net.base("whop", DEFAULT_BASE)
}

async fn call(
    net: &Net,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    idempotent: Idempotent,
) -> Result<Value, PlatformError> {
    let url = format!("{}{path}", base(net));
    let mut request = net.trusted().request(method, &url)?.header(AUTHORIZATION, format!("Bearer {key}"));
    if path.starts_with("/files") {
        request = request.header("Api-Version-Date", FILES_API_VERSION);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let reply = net.trusted().send(request, idempotent).await?;
    if reply.is_success() {
        return Ok(reply.json());
    }
    Err(error(&reply))
}

/// The wait a 429 asks for: `retry-after-ms`, then `retry-after` (as the SDK reads them), then
/// the "Try again in N seconds." of the body.
fn retry_after(reply: &Reply, message: &str) -> Option<Duration> {
    let ms = reply
        .header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0);
    ms.map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| crate::net::retry_after_header(&reply.headers))
        .or_else(|| {
            // "Try again in 12 seconds."
            let words: Vec<&str> = message.split_whitespace().collect();
            let n: f64 = words.windows(2).find(|w| w[0] == "in").and_then(|w| w[1].parse().ok())?;
            (n.is_finite() && n >= 0.0).then(|| Duration::from_secs_f64(n))
        })
}

fn error(reply: &Reply) -> PlatformError {
    let body = reply.json();
    let err = &body["error"];
    let message = err["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .or_else(|| err.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {}", reply.status));
    let kind = err["type"].as_str().or_else(|| err["code"].as_str()).map(str::to_string);
    let e = match reply.status {
        429 => PlatformError::rate_limited(message.clone(), retry_after(reply, &message)),
        401 => PlatformError::auth(format!("Whop refused the API key ({message}); create a new key and reconnect")),
        403 => PlatformError::auth(format!(
            "Whop refused the API key's access ({message}); give the key the forum:post:create or \
             chat:message:create permission and reconnect"
        )),
        500..=599 => PlatformError::transient(message),
        400..=499 => PlatformError::invalid(message),
        status => PlatformError::from_status(status, message, None),
    };
    let e = e.status(reply.status);
    match kind {
        Some(k) => e.code(k),
        None => e,
    }
}

/// Whether `url` is on the same origin as the trusted API base (then the trusted client may
/// reach it); any other upload host goes through the guarded client.
fn same_origin(url: &str, base: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// Uploads one image and returns its file id once Whop has processed it.
async fn upload(net: &Net, key: &str, media: &Media) -> Result<String, PlatformError> {
    if media.kind != MediaKind::Image {
        return Err(PlatformError::invalid("Whop posts made through Herald take images only, not videos"));
    }
    // A file record nobody attaches is harmless, so a lost answer here is safe to retry.
    let file = call(
        net,
        key,
        Method::POST,
        "/files",
        Some(json!({"filename": media.filename, "visibility": "public"})),
        Idempotent::Yes,
    )
    .await?;
    let (Some(id), Some(upload_url)) = (file["id"].as_str(), file["upload_url"].as_str()) else {
        return Err(PlatformError::transient("Whop did not return an upload URL for the image"));
    };
    if !id_ok(id) {
        return Err(PlatformError::transient("Whop returned an unexpected file id"));
    }
    let via = if same_origin(upload_url, &base(net)) { net.trusted() } else { net.safe() };
    let mut request = via.request(Method::PUT, upload_url)?;
    let mut has_type = false;
    for (name, value) in file["upload_headers"].as_object().into_iter().flatten() {
        if let Some(v) = value.as_str() {
            has_type |= name.eq_ignore_ascii_case("content-type");
            request = request.header(name.as_str(), v);
        }
    }
    if !has_type {
        request = request.header(CONTENT_TYPE, media.mime.as_str());
    }
    let reply = via.send(request.body(media.bytes.clone()), Idempotent::Yes).await?;
    if !reply.is_success() {
        // Never echo the storage answer: it can quote the presigned URL's signature.
        let message = format!("Whop's storage refused the image upload (HTTP {})", reply.status);
        return Err(match reply.status {
            403 | 408 | 429 | 500..=599 => PlatformError::transient(message),
            s => PlatformError::invalid(message).status(s),
        }
        .status(reply.status));
    }
    for delay in POLL_DELAYS_MS {
        let file = call(net, key, Method::GET, &format!("/files/{id}"), None, Idempotent::Yes).await?;
        match file["upload_status"].as_str() {
            Some("ready") => return Ok(id.to_string()),
            Some("failed") => {
                return Err(PlatformError::invalid(format!("Whop could not process the image {}", media.filename)));
            }
            _ => tokio::time::sleep(Duration::from_millis(*delay)).await,
        }
    }
    Err(PlatformError::transient("Whop is still processing the image; the delivery will retry"))
}

fn content(post: &Outgoing) -> String {
    post.text_with_link()
}

/// A stable, non-secret label for an API key: the first 16 hex digits of its SHA-256.
fn key_label(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

#[async_trait]
impl Adapter for Whop {
    fn platform(&self) -> &'static Platform {
        crate::registry("whop")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let key = api_key(conn)?;
        let mut settings = match &conn.settings {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        // A read of the target proves the key (401) and that the target exists (404) [V paths].
        let account = match target(conn)? {
            Target::Forum { experience_id, company_id } if experience_id == "public" => {
                let company_id = company_id.unwrap_or_default();
                let company =
                    call(net, &key, Method::GET, &format!("/companies/{company_id}"), None, Idempotent::Yes).await?;
                settings.insert("company_title".into(), company["title"].clone());
                company["title"].as_str().unwrap_or(&company_id).to_string()
            }
            Target::Forum { experience_id, .. } => {
                let exp = call(net, &key, Method::GET, &format!("/experiences/{experience_id}"), None, Idempotent::Yes)
                    .await?;
                settings.insert("experience_name".into(), exp["name"].clone());
                settings.insert("company_id".into(), exp["company"]["id"].clone());
                settings.insert("company_title".into(), exp["company"]["title"].clone());
                let company = exp["company"]["title"].as_str().unwrap_or("Whop");
                format!("{company} / {}", exp["name"].as_str().unwrap_or(&experience_id))
            }
            // POST /messages takes a chat experience id too; that one reads as an experience.
            Target::Chat { channel_id, .. } if channel_id.starts_with("exp_") => {
                let exp =
                    call(net, &key, Method::GET, &format!("/experiences/{channel_id}"), None, Idempotent::Yes).await?;
                settings.insert("experience_name".into(), exp["name"].clone());
                format!(
                    "{} / {}",
                    exp["company"]["title"].as_str().unwrap_or("Whop"),
                    exp["name"].as_str().unwrap_or(&channel_id)
                )
            }
            Target::Chat { channel_id, .. } => {
                let chat = call(net, &key, Method::GET, &format!("/chat_channels/{channel_id}"), None, Idempotent::Yes)
                    .await?;
                settings.insert("experience_name".into(), chat["experience"]["name"].clone());
                settings.insert("ban_media".into(), chat["ban_media"].clone());
                chat["experience"]["name"].as_str().unwrap_or(&channel_id).to_string()
            }
        };
        Ok(Verified { account, credentials: conn.credentials.clone(), settings: Value::Object(settings) })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let key = api_key(conn)?;
        let target = target(conn)?;
        if matches!(target, Target::Chat { ban_media: Some(true), .. }) && !post.media.is_empty() {
            return Err(PlatformError::invalid("this Whop chat bans media; post without images or allow media"));
        }
        let mut attachments = Vec::with_capacity(post.media.len());
        for m in &post.media {
            attachments.push(json!({"id": upload(net, &key, m).await?}));
        }
        let (path, mut body) = match &target {
            Target::Forum { experience_id, company_id } => {
                let mut body = json!({"experience_id": experience_id, "content": content(post)});
                if let Some(c) = company_id.as_ref().filter(|_| experience_id == "public") {
                    body["company_id"] = json!(c);
                }
                if let Some(t) = post.option_str("title").filter(|t| !t.trim().is_empty()) {
                    body["title"] = json!(t);
                }
                if let Some(parent) = &post.reply_to {
                    body["parent_id"] = json!(parent);
                }
                ("/forum_posts", body)
            }
            Target::Chat { channel_id, .. } => {
                let mut body = json!({"channel_id": channel_id, "content": content(post)});
                if let Some(parent) = &post.reply_to {
                    body["replying_to_message_id"] = json!(parent);
                }
                ("/messages", body)
            }
        };
        if !attachments.is_empty() {
            body["attachments"] = Value::Array(attachments);
        }
        let made = call(net, &key, Method::POST, path, Some(body), Idempotent::No).await?;
        let id = made["id"]
            .as_str()
            .ok_or_else(|| PlatformError::unknown_outcome("Whop accepted the post but returned no id"))?;
        Ok(Published { id: id.to_string(), url: None, credentials: None })
    }

    /// One bucket per API key (by hash, never the key): 1 post a second with bursts of 5, far
    /// under Whop's 600 requests a minute per operation.
    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let label = match api_key(conn) {
            Ok(k) if !k.is_empty() => format!("key:{}", key_label(&k)),
            _ => format!("connection:{}", conn.id),
        };
        Some(Pacing { bucket: format!("whop:{label}"), capacity: 5.0, per_second: 1.0 })
    }
}

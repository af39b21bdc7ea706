//! A generic webhook, signed the Standard Webhooks way (https://www.standardwebhooks.com/):
//! a JSON POST to a URL the user chose (so through the SSRF-guarded client), with `webhook-id`
//! (the delivery's idempotency key, which receivers deduplicate on), `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed with the
//! `whsec_` secret.
//!
//! A webhook URL often carries a secret of its own in the path, so errors name the host at most.

use crate::net::retry_after_header;
use crate::{
    Adapter, Connection, Credentials, Idempotent, Net, Outgoing, Pacing, Platform, PlatformError, Published, Verified,
};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, SecondsFormat, Utc};
use herald_http::Method;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub struct Webhook;

#[derive(Deserialize)]
struct Settings {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Requests per second the receiver takes (default 5, burst twice that): a user's own
    /// receiver may take far more.
    rate_per_second: Option<f64>,
}

#[derive(Deserialize)]
struct Secret {
    secret: Option<String>,
}

const PREFIX: &str = "whsec_";

/// Headers Herald sets itself.
const RESERVED: [&str; 6] =
    ["content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature"];

/// Header names that carry credentials: settings are not sealed, so secrets belong in the signing
/// secret instead.
fn secret_like(name: &str) -> bool {
    matches!(name, "authorization" | "proxy-authorization" | "cookie")
        || ["token", "secret", "password", "api-key", "apikey", "auth"].iter().any(|w| name.contains(w))
}

fn settings(raw: &Value) -> Result<Settings, PlatformError> {
    let s: Settings = crate::settings(raw, "webhook")?;
    for (name, value) in &s.headers {
        let lower = name.to_ascii_lowercase();
        let bad = |why: String| Err(PlatformError::invalid(why).code("bad_settings"));
        if RESERVED.contains(&lower.as_str()) {
            return bad(format!("the header {name} is set by Herald and cannot be configured"));
        }
        if secret_like(&lower) {
            return bad(format!(
                "the header {name} looks like a credential; settings are stored unencrypted, so use the \
                 signing secret to authenticate Herald instead"
            ));
        }
        if herald_http::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || herald_http::header::HeaderValue::from_str(value).is_err()
        {
            return bad(format!("the header {name} is not a valid HTTP header"));
        }
    }
    Ok(s)
}

/// A new signing secret: 32 random bytes, `whsec_`-prefixed base64.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", B64.encode(bytes))
}

/// The HMAC key of a secret (`whsec_<base64>`, or the bare base64 as the spec's libraries accept).
fn key(secret: &str) -> Result<Vec<u8>, PlatformError> {
    let b64 = secret.trim().strip_prefix(PREFIX).unwrap_or(secret.trim());
    match B64.decode(b64) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => {
            Err(PlatformError::invalid("the webhook secret must be whsec_ followed by base64").code("bad_credentials"))
        }
    }
}

/// The `webhook-signature` value for one message: `v1,<base64 HMAC-SHA256>` over
/// `{id}.{timestamp}.{body}`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, PlatformError> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key(secret)?)
        .map_err(|_| PlatformError::invalid("the webhook secret cannot key HMAC").code("bad_credentials"))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The receiver's host, the only part of the URL safe to show.
fn host(url: &str) -> Option<String> {
    let u = url::Url::parse(url.trim()).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// Signs and POSTs one Standard Webhooks message to a user-chosen `url` (through the SSRF guard);
/// answers only with a 2xx, else the failure in its class (410 is `auth` with the code `gone`).
/// Herald's own event webhooks send through this too.
pub async fn deliver(
    net: &Net,
    url: &str,
    headers: &BTreeMap<String, String>,
    secret: &str,
    id: &str,
    body: Vec<u8>,
) -> Result<Value, PlatformError> {
    let timestamp = Utc::now().timestamp();
    let signature = sign(secret, id, timestamp, &body)?;
    let mut req = net
        .safe()
        .request(Method::POST, url.trim())?
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    // Receivers deduplicate on webhook-id (the spec asks them to), so a lost answer can be resent.
    let reply = net.safe().send(req.body(body), Idempotent::Yes).await?;
    if reply.is_success() {
        return Ok(reply.json());
    }
    let said = reply.snippet();
    let err = match reply.status {
        410 => PlatformError::auth(format!("the receiver answered 410 Gone: it wants no more webhooks ({said})"))
            .code("gone"),
        401 | 403 => PlatformError::auth(format!(
            "the receiver refused the request ({said}); check that it has this connection's signing secret"
        )),
        429 => PlatformError::rate_limited(
            format!("the receiver asks to slow down ({said})"),
            retry_after_header(&reply.headers),
        ),
        300..=399 => PlatformError::invalid(format!(
            "the receiver answered with a redirect (HTTP {}); set the webhook URL to where it points",
            reply.status
        )),
        s => {
            return Err(PlatformError::from_status(
                s,
                format!("the receiver answered: {said}"),
                retry_after_header(&reply.headers),
            ));
        }
    };
    Err(err.status(reply.status))
}

fn secret_of(conn: &Connection) -> Result<Option<String>, PlatformError> {
    Ok(conn.credentials.parse::<Secret>("webhook")?.secret.filter(|s| !s.trim().is_empty()))
}

/// A webhook-id must not contain a full stop (it delimits the signed content).
fn message_id(key: &str) -> String {
    key.replace('.', "_")
}

#[async_trait]
impl Adapter for Webhook {
    fn platform(&self) -> &'static Platform {
        crate::registry("webhook")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let s = settings(&conn.settings)?;
        let (secret, credentials) = match secret_of(conn)? {
            Some(secret) => {
                key(&secret)?;
                (secret, conn.credentials.clone())
            }
            None => {
                let secret = generate_secret();
                (secret.clone(), Credentials(json!({ "secret": secret })))
            }
        };
        let id = format!("herald-ping-{}", uuid::Uuid::now_v7().simple());
        let body = json!({
            "type": "herald.ping",
            "timestamp": rfc3339(Utc::now()),
            "data": { "connection_id": conn.id },
        });
        deliver(net, &s.url, &s.headers, &secret, &id, serde_json::to_vec(&body).expect("JSON serialises")).await?;
        let account = host(&s.url).unwrap_or_else(|| "webhook".to_string());
        let mut out = conn.settings.clone();
        out["url"] = json!(s.url.trim());
        Ok(Verified { account, credentials, settings: out })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let s = settings(&conn.settings)?;
        let secret = secret_of(conn)?.ok_or_else(|| {
            PlatformError::invalid("the webhook has no signing secret; check the connection again to make one")
                .code("bad_credentials")
        })?;
        let id = message_id(&post.idempotency_key);
        let media: Vec<Value> = post
            .media
            .iter()
            .map(|m| json!({ "filename": m.filename, "mime": m.mime, "bytes": B64.encode(&m.bytes) }))
            .collect();
        // The event time is the post's creation time, so a retry sends the same body.
        let body = json!({
            "type": "post.published",
            "timestamp": rfc3339(post.created_at),
            "data": {
                "text": post.text,
                "link": post.link,
                "media": media,
                "reply_to": post.reply_to,
                "options": post.options,
                "idempotency_key": post.idempotency_key,
            },
        });
        let answer =
            deliver(net, &s.url, &s.headers, &secret, &id, serde_json::to_vec(&body).expect("JSON serialises")).await?;
        let their_id = match &answer["id"] {
            Value::String(v) if !v.is_empty() => Some(v.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Ok(Published { id: their_id.unwrap_or(id), url: answer["url"].as_str().map(str::to_string), credentials: None })
    }

    fn idempotency(&self, _conn: &Connection) -> crate::Idempotency {
        // Standard Webhooks receivers deduplicate on webhook-id; a day is a reasonable expectation.
        crate::Idempotency::Window(std::time::Duration::from_secs(24 * 3600))
    }

    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let s: Settings = crate::settings(&conn.settings, "webhook").ok()?;
        let host = host(&s.url).unwrap_or_else(|| conn.id.to_string());
        let rate = s.rate_per_second.filter(|r| r.is_finite() && *r > 0.0).unwrap_or(5.0);
        Some(Pacing { bucket: format!("webhook:{host}"), capacity: (rate * 2.0).max(1.0), per_second: rate })
    }
}

//! How adapters reach platforms: the trusted client for operator-configured API bases, the
//! SSRF-guarded client for hosts a user chose, and the shared request/response plumbing that turns
//! transport failures into error classes.

use crate::error::PlatformError;
use herald_http::{FetchError, HttpClient, SafeClient, header::HeaderMap};
use std::collections::HashMap;
use std::time::Duration;

/// The most of a platform's response an adapter reads.
pub const MAX_RESPONSE: usize = 4 << 20;

/// Everything an adapter needs to talk to the world.
#[derive(Clone)]
pub struct Net {
    /// For the operator's API bases (`HERALD_<PLATFORM>_API_BASE`, or the platform's own).
    pub trusted: HttpClient,
    /// For user-chosen hosts: instance URLs, relays, webhook targets, SMTP servers.
    pub safe: SafeClient,
    /// `platform id -> base URL` overrides from `HERALD_<PLATFORM>_API_BASE`.
    pub bases: HashMap<String, String>,
}

impl Net {
    pub fn new(trusted: HttpClient, safe: SafeClient) -> Net {
        Net { trusted, safe, bases: HashMap::new() }
    }

    pub fn with_base(mut self, platform: &str, base: impl Into<String>) -> Net {
        self.bases.insert(platform.to_string(), base.into().trim_end_matches('/').to_string());
        self
    }

    /// The API base for `platform`: the operator's override, or the platform's own.
    pub fn base(&self, platform: &str, default: &str) -> String {
        self.bases.get(platform).cloned().unwrap_or_else(|| default.to_string())
    }

    /// The client for a platform base: trusted (operator configuration).
    pub fn trusted(&self) -> Via<'_> {
        Via::Trusted(&self.trusted)
    }

    /// The client for a host the user chose.
    pub fn safe(&self) -> Via<'_> {
        Via::Safe(&self.safe)
    }
}

/// Which client a request goes through.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    Trusted(&'a HttpClient),
    Safe(&'a SafeClient),
}

/// Whether a retry after a lost answer could post twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotent {
    /// The platform deduplicates (an idempotency key, a nonce, a txn id): a lost answer is
    /// transient.
    Yes,
    /// No way to tell: a lost answer after the request left is `unknown_outcome`.
    No,
}

/// A platform's answer, read whole (up to [`MAX_RESPONSE`]).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, cut short for error messages.
    pub fn snippet(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let s: String = s.chars().take(300).collect();
        if s.trim().is_empty() { format!("HTTP {}", self.status) } else { s }
    }
}

impl<'a> Via<'a> {
    pub fn request(self, method: herald_http::Method, url: &str) -> Result<herald_http::RequestBuilder, PlatformError> {
        match self {
            Via::Trusted(c) => Ok(c.request(method, url)),
            Via::Safe(c) => c.request(method, url).map_err(fetch_error_before_send),
        }
    }

    /// Sends and reads the whole answer. Transport failures become error classes: nothing sent is
    /// transient; a lost answer is transient only when the platform deduplicates.
    pub async fn send(
        self,
        request: herald_http::RequestBuilder,
        idempotent: Idempotent,
    ) -> Result<Reply, PlatformError> {
        let response = match self {
            Via::Trusted(_) => request.send().await.map_err(|e| lost(&e, idempotent))?,
            Via::Safe(c) => c.send(request).await.map_err(|e| match e {
                FetchError::Http(e) => lost(&e, idempotent),
                other => fetch_error_before_send(other),
            })?,
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = herald_http::read_limited(response, MAX_RESPONSE).await.map_err(|e| match e {
            FetchError::Http(e) => lost(&e, idempotent),
            other => PlatformError::transient(other.to_string()),
        })?;
        Ok(Reply { status, headers, body })
    }
}

fn fetch_error_before_send(e: FetchError) -> PlatformError {
    match e {
        // A refused destination is the user's setting, not a passing failure.
        FetchError::Blocked(b) => PlatformError::invalid(b.to_string()).code("ssrf_blocked_destination"),
        other => PlatformError::transient(other.to_string()),
    }
}

/// A transport error: before the request left (connect, DNS, TLS) nothing happened; after it,
/// the platform may have acted.
fn lost(e: &herald_http::Error, idempotent: Idempotent) -> PlatformError {
    if let Some(b) = herald_http::guard::blocked_in(e) {
        return PlatformError::invalid(b.to_string()).code("ssrf_blocked_destination");
    }
    let what = e.to_string();
    let what = match e.url() {
        // Never echo a URL: Telegram's carries the bot token.
        Some(u) => what.replace(u.as_str(), "<url>"),
        None => what,
    };
    if e.is_connect() || e.is_builder() {
        return PlatformError::transient(format!("could not reach the platform: {what}"));
    }
    match idempotent {
        Idempotent::Yes => PlatformError::transient(format!("no answer from the platform: {what}")),
        Idempotent::No => PlatformError::unknown_outcome(format!(
            "the request was sent but no answer came back ({what}); it may have been posted. \
             Check the platform, then confirm or retry the delivery"
        )),
    }
}

/// Parses a `Retry-After` header: seconds (possibly fractional) or an HTTP date.
pub fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let d = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(d.to_std().unwrap_or(Duration::ZERO))
}

/// Seconds until an epoch timestamp (seconds, possibly fractional), as Bluesky's
/// `RateLimit-Reset` and Discord's `X-RateLimit-Reset` give it.
pub fn until_epoch(v: &str) -> Option<Duration> {
    let at: f64 = v.trim().parse().ok()?;
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    Some(Duration::from_secs_f64((at - now).max(0.0)))
}

/// Time until an ISO-8601 instant (Mastodon's `X-RateLimit-Reset`).
pub fn until_iso(v: &str) -> Option<Duration> {
    let at = chrono::DateTime::parse_from_rfc3339(v.trim()).ok()?;
    Some((at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// Seconds from a JSON number field.
pub fn secs(v: &serde_json::Value) -> Option<Duration> {
    let s = v.as_f64()?;
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s))
}

//! Herald's platform adapters. Each platform is one module behind the [`Adapter`] trait: it checks
//! credentials live ([`Adapter::verify`]), publishes ([`Adapter::publish`]) with the idempotency
//! the platform offers, reads a published post's engagement where the platform tells it
//! ([`Adapter::metrics`]), turns every failure into one of five [`ErrorClass`]es, and says how fast
//! the queue may call it ([`Adapter::pacing`]). The registry of capabilities and limits lives in
//! `herald_core::platforms`; this crate is the part that talks to the network, always through
//! `herald-http`.
#![forbid(unsafe_code)]

pub mod error;
pub mod net;
pub mod thread;

pub mod bluesky;
pub mod discord;
pub mod email;
pub mod mastodon;
pub mod matrix;
pub mod nostr;
pub mod telegram;
pub mod vk;
pub mod webhook;
pub mod whop;

pub use error::{ErrorClass, PlatformError};
pub use herald_core::platforms::{MediaKind, Platform};
pub use net::{Idempotent, Net, Reply, Via};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// A connection's secret part (tokens, passwords, keys), as JSON. Its `Debug` never shows it.
#[derive(Clone, PartialEq)]
pub struct Credentials(pub serde_json::Value);

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// The credentials as the adapter's own type; a missing or mistyped field is `invalid`, and the
    /// message names the field but never a value.
    pub fn parse<T: DeserializeOwned>(&self, platform: &str) -> Result<T, PlatformError> {
        serde_json::from_value(self.0.clone()).map_err(|e| {
            PlatformError::invalid(format!("the {platform} credentials are incomplete: {}", redact_serde(&e)))
                .code("bad_credentials")
        })
    }
}

/// Parses a connection's settings into the adapter's type.
pub fn settings<T: DeserializeOwned>(settings: &serde_json::Value, platform: &str) -> Result<T, PlatformError> {
    serde_json::from_value(settings.clone()).map_err(|e| {
        PlatformError::invalid(format!("the {platform} settings are not valid: {}", redact_serde(&e)))
            .code("bad_settings")
    })
}

/// serde's message without the offending value (it could be a token).
fn redact_serde(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find("invalid type: string \"").or_else(|| s.find("invalid value: string \"")) {
        Some(_) => "a field has the wrong type or value".to_string(),
        None => s.split(" at line ").next().unwrap_or(&s).to_string(),
    }
}

/// One connection as an adapter sees it: its settings (chat id, instance URL, room, relays) and
/// its decrypted credentials, in memory only for the call.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: Uuid,
    pub settings: serde_json::Value,
    pub credentials: Credentials,
}

/// One media file to publish.
#[derive(Debug, Clone)]
pub struct Media {
    pub kind: MediaKind,
    /// Sniffed from the content, not the client's claim.
    pub mime: String,
    pub filename: String,
    pub bytes: bytes::Bytes,
    pub alt: Option<String>,
    /// A public URL of the file, for platforms that link media instead of uploading it (Nostr).
    pub url: Option<String>,
}

/// What to publish to one connection.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub text: String,
    pub media: Vec<Media>,
    /// A link to show as a card where the platform has them.
    pub link: Option<String>,
    /// Derived from the delivery id and stored before the call, so a retry sends the same key.
    pub idempotency_key: String,
    /// Fixed when the delivery was created, so a retry rebuilds the same content-addressed event
    /// (Nostr) or record (Bluesky).
    pub created_at: DateTime<Utc>,
    /// The platform id of the post this one answers (threads).
    pub reply_to: Option<String>,
    /// Per-platform options (visibility, silent, title, parse mode, ...).
    pub options: serde_json::Value,
}

impl Outgoing {
    pub fn text(text: impl Into<String>, idempotency_key: impl Into<String>) -> Outgoing {
        Outgoing {
            text: text.into(),
            media: Vec::new(),
            link: None,
            idempotency_key: idempotency_key.into(),
            created_at: Utc::now(),
            reply_to: None,
            options: serde_json::json!({}),
        }
    }

    /// The text with the link on its own line after it, unless the text already carries the link
    /// (platforms that unfurl links, or have no link cards, get it this way).
    pub fn text_with_link(&self) -> String {
        let text = self.text.trim_end();
        match self.link.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            Some(l) if !text.contains(l) && text.trim().is_empty() => l.to_string(),
            Some(l) if !text.contains(l) => format!("{text}\n\n{l}"),
            _ => self.text.clone(),
        }
    }

    pub fn option_str(&self, key: &str) -> Option<&str> {
        self.options.get(key).and_then(|v| v.as_str())
    }

    pub fn option_bool(&self, key: &str) -> Option<bool> {
        self.options.get(key).and_then(|v| v.as_bool())
    }
}

/// The idempotency key of a delivery: stable across retries and restarts.
pub fn idempotency_key(delivery: Uuid) -> String {
    format!("herald-{}", delivery.simple())
}

/// A published post.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub id: String,
    pub url: Option<String>,
    /// Credentials the platform rotated during the call (a Bluesky session); the caller stores
    /// them sealed.
    pub credentials: Option<Credentials>,
}

/// The engagement of one published post at one moment, as the platform counts it: `likes`,
/// `reposts`, `replies`, `quotes` (Bluesky), `favourites`, `reblogs`, `replies` (Mastodon),
/// `reactions` and one `reactions:<key>` per reaction key (Matrix, Nostr), `views`. It serialises
/// as the bare map, so a stored snapshot is `{"likes": 3, "reposts": 1}`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Metrics {
    pub counts: BTreeMap<String, i64>,
    /// Credentials the platform rotated during the call (a refreshed Bluesky session, a Matrix
    /// re-login); the caller stores them sealed. Never serialised.
    #[serde(skip)]
    pub credentials: Option<Credentials>,
}

impl Metrics {
    /// Adds a count, taking a JSON number as the platform sends it; a missing or non-integer
    /// value is left out rather than shown as 0.
    pub fn with(mut self, key: &str, value: &serde_json::Value) -> Metrics {
        if let Some(n) = value.as_i64().or_else(|| value.as_u64().map(|n| n.min(i64::MAX as u64) as i64)) {
            self.counts.insert(key.to_string(), n);
        }
        self
    }

    /// Counts reactions by key: `reactions` is the total, `reactions:<key>` each key's share.
    pub fn reactions<'k>(mut self, keys: impl IntoIterator<Item = &'k str>) -> Metrics {
        let mut total = 0;
        for key in keys {
            total += 1;
            *self.counts.entry(format!("reactions:{key}")).or_insert(0) += 1;
        }
        self.counts.insert("reactions".to_string(), total);
        self
    }

    pub fn get(&self, key: &str) -> Option<i64> {
        self.counts.get(key).copied()
    }
}

/// Credentials that passed a live check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The account as the platform names it: `@bot`, `@user@instance`, a DID, an npub.
    pub account: String,
    /// What to store: the given credentials, possibly completed (a session, a device id).
    pub credentials: Credentials,
    /// Settings completed from the platform (instance limits, the resolved chat, the bot id).
    pub settings: serde_json::Value,
}

/// How long a platform recognises a repeated request as the same one. A retry after a lost
/// answer is safe only inside the window; after it, the delivery must be reconciled instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// No way to tell a retry from a new post (Telegram, Whop, Discord webhooks, email).
    None,
    /// Recognised for this long after the first attempt (Mastodon keeps keys for an hour).
    Window(std::time::Duration),
    /// The key is part of what is stored (Nostr event ids, Bluesky rkeys).
    Forever,
}

impl Idempotency {
    /// Whether a request first sent at `first` may be sent again now without risking a duplicate.
    pub fn covers(self, first: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        match self {
            Idempotency::None => false,
            Idempotency::Forever => true,
            Idempotency::Window(w) => (now - first).to_std().map(|age| age < w).unwrap_or(true),
        }
    }
}

/// A queue rate bucket that keeps deliveries under a platform's documented limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Pacing {
    /// The queue bucket key, e.g. `telegram:chat:-1001234`.
    pub bucket: String,
    /// Burst size.
    pub capacity: f64,
    /// Sustained rate.
    pub per_second: f64,
}

#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// The registry entry: id, name, auth kind, capabilities and limits.
    fn platform(&self) -> &'static Platform;

    /// Checks the credentials and settings live against the platform before anything is saved.
    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError>;

    /// Publishes one post and returns the platform's id and URL.
    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError>;

    /// Deletes a published post, where the platform allows it.
    async fn delete(&self, _net: &Net, _conn: &Connection, _id: &str) -> Result<(), PlatformError> {
        Err(PlatformError::invalid(format!("{} posts cannot be deleted through Herald", self.platform().name)))
    }

    /// The engagement of a published post (`id` is the [`Published::id`] publish returned), where
    /// the platform reports it. `Ok(None)`: this platform gives no counts for what Herald posts,
    /// so asking again is pointless.
    async fn metrics(&self, _net: &Net, _conn: &Connection, _id: &str) -> Result<Option<Metrics>, PlatformError> {
        Ok(None)
    }

    /// The bucket deliveries to this connection share.
    fn pacing(&self, conn: &Connection) -> Option<Pacing>;

    /// Whether, and for how long, a resent request is recognised as the same post.
    fn idempotency(&self, _conn: &Connection) -> Idempotency {
        Idempotency::None
    }

    /// The platform's rules for this connection: the registry entry, refined from what `verify`
    /// learned (a Mastodon instance's own `max_characters`).
    fn rules(&self, _conn: &Connection) -> Platform {
        *self.platform()
    }
}

/// The registry entry with this id; panics only if the core registry lost a platform (a bug).
pub(crate) fn registry(id: &str) -> &'static Platform {
    herald_core::platforms::platform(id).unwrap_or_else(|| panic!("platform {id} is missing from the core registry"))
}

static ADAPTERS: &[&dyn Adapter] = &[
    &telegram::Telegram,
    &discord::Discord,
    &whop::Whop,
    &mastodon::Mastodon,
    &bluesky::Bluesky,
    &matrix::Matrix,
    &nostr::Nostr,
    &vk::Vk,
    &webhook::Webhook,
    &email::Email,
];

/// The adapter for a platform id.
pub fn adapter(id: &str) -> Option<&'static dyn Adapter> {
    ADAPTERS.iter().copied().find(|a| a.platform().id == id)
}

pub fn adapters() -> &'static [&'static dyn Adapter] {
    ADAPTERS
}

/// Publishes `parts` as a thread: each part answers the one before, with the key `<key>-<n>` so
/// a retried thread reuses the parts that went out. Returns every part; the first is the post.
pub async fn publish_thread(
    adapter: &dyn Adapter,
    net: &Net,
    conn: &Connection,
    post: &Outgoing,
    parts: &[String],
) -> Result<Vec<Published>, PlatformError> {
    let mut out: Vec<Published> = Vec::with_capacity(parts.len());
    let mut conn = conn.clone();
    for (i, text) in parts.iter().enumerate() {
        let mut part = post.clone();
        part.text = text.clone();
        if i > 0 {
            // Media and the link card go with the first part only.
            part.media.clear();
            part.link = None;
            part.idempotency_key = format!("{}-{}", post.idempotency_key, i + 1);
            part.reply_to = out.last().map(|p| p.id.clone());
        }
        let published = adapter.publish(net, &conn, &part).await?;
        if let Some(c) = &published.credentials {
            conn.credentials = c.clone();
        }
        out.push(published);
    }
    Ok(out)
}

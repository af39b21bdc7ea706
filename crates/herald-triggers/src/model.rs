//! What the API takes and shows: sources, their settings per kind, their status, and events.

use chrono::{DateTime, Utc};
use herald_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

/// Where new content comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A YouTube channel: WebSub push when HERALD_PUBLIC_URL is reachable, and a slower poll of
    /// its public feed either way.
    YoutubeChannel,
    /// An RSS 0.9x/1.0/2.0, Atom or JSON Feed URL, polled.
    Feed,
    /// A cron expression in a timezone; each firing is an event.
    Schedule,
    /// `POST /hooks/in/{id}`, signed with the source's secret.
    Webhook,
    /// Only `POST /api/v1/sources/{id}/events`.
    Manual,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::YoutubeChannel => "youtube_channel",
            Kind::Feed => "feed",
            Kind::Schedule => "schedule",
            Kind::Webhook => "webhook",
            Kind::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::YoutubeChannel, Kind::Feed, Kind::Schedule, Kind::Webhook, Kind::Manual]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// Kinds the poller runs on a timer.
    pub fn is_timed(self) -> bool {
        matches!(self, Kind::YoutubeChannel | Kind::Feed | Kind::Schedule)
    }

    /// The settings this kind takes, for a clear error on the others.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::YoutubeChannel => &["channel", "channel_id", "interval_secs", "deleted_events", "max_new_per_poll"],
            Kind::Feed => &["url", "interval_secs", "backfill", "max_new_per_poll"],
            Kind::Schedule => &["cron", "timezone", "missed", "payload"],
            Kind::Webhook => &["verify", "signature_header", "max_bytes"],
            Kind::Manual => &[],
        }
    }
}

/// What a schedule does about a firing missed while Herald was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Fire once on start-up for everything missed (the latest missed time).
    #[default]
    RunOnce,
    /// Skip what was missed; fire next at the next time.
    Skip,
}

/// How an inbound webhook proves it comes from the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`
    /// (HMAC-SHA256 over `{id}.{timestamp}.{body}` with the `whsec_` secret).
    #[default]
    Standard,
    /// One header (`signature_header`, default `X-Hub-Signature-256`) holding `sha256=<hex>`
    /// (or `sha1=`, `sha512=`, or bare hex for SHA-256) of the raw body.
    Hmac,
}

/// A source's settings. Each kind takes its own fields; the others are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// youtube_channel: a channel id (`UC…`), a handle (`@name`) or a channel URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// youtube_channel: the resolved channel id (set by Herald).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// youtube_channel: also emit `video.deleted` events for tombstones (off: they are only recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_events: Option<bool>,
    /// feed: the feed URL (http or https).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// feed, youtube_channel: seconds between polls (60 to 86400). Feeds default to 900; a
    /// YouTube channel to 900 without push and 3600 with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// feed: on the first poll, trigger the newest N existing items instead of none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<u32>,
    /// feed, youtube_channel: at most this many new items trigger per poll (the newest); the
    /// rest are remembered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_per_poll: Option<u32>,
    /// schedule: a cron expression (5 fields, or 6 with seconds first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// schedule: an IANA timezone; the team's when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// schedule: what to do about firings missed while Herald was down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed: Option<Missed>,
    /// schedule: data every firing carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// webhook: how the sender signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// webhook with `verify: hmac`: the header that carries the signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// webhook: the largest body accepted (default and maximum 1 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl Settings {
    /// Refuses fields that do not belong to `kind`, naming them.
    pub(crate) fn check_fields(&self, kind: Kind) -> Result<(), Error> {
        let Value::Object(map) = serde_json::to_value(self).unwrap_or_default() else { return Ok(()) };
        for field in map.keys() {
            if !kind.fields().contains(&field.as_str()) {
                return Err(invalid(
                    &format!("config.{field}"),
                    format!("`{field}` does not apply to a {} source", kind.as_str()),
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::new(ErrorCode::ValidationFailed, message).with_details(json!({"field": field}))
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSource {
    pub kind: Kind,
    pub name: String,
    #[serde(default)]
    pub config: Settings,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// A partial update: absent fields keep their value. A new `config` replaces the old one.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceUpdate {
    pub name: Option<String>,
    pub config: Option<Settings>,
    pub active: Option<bool>,
}

/// The last failure of a source.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SourceError {
    pub code: String,
    pub message: String,
}

/// A YouTube source's push subscription.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebSubStatus {
    /// `off`, `unavailable` (no reachable HERALD_PUBLIC_URL: polling only), `pending` (asked, not
    /// yet verified), `subscribed`, `denied`, `failed` or `unsubscribing`.
    pub state: String,
    pub topic: Option<String>,
    pub callback: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Why push is unavailable, denied or failing.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SourceStatus {
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_ok_at: Option<DateTime<Utc>>,
    pub last_error: Option<SourceError>,
    /// Failed runs in a row; polls back off while it grows.
    pub failures: i64,
    pub event_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websub: Option<WebSubStatus>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SourceView {
    pub id: Uuid,
    pub kind: Kind,
    pub name: String,
    pub config: Settings,
    pub active: bool,
    pub status: SourceStatus,
    /// webhook: where the sender posts (`{HERALD_PUBLIC_URL}/hooks/in/{id}`, or the path alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_url: Option<String>,
    /// webhook: the signing secret, only in the answer to the create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One new thing from a source, stored once per (source, external id).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: Uuid,
    pub source_id: Uuid,
    /// `item.new`, `video.deleted`, `schedule.fired`, `webhook.received` or `manual`.
    pub kind: String,
    pub external_id: String,
    pub data: Value,
    pub received_at: DateTime<Utc>,
    /// When a later notification (a YouTube title edit) refreshed `data`.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A manual event.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// Deduplicates: a second event with the same id is refused with 409. A new id when absent.
    pub external_id: Option<String>,
    #[serde(default)]
    pub data: Value,
}

/// What one poll found.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct PollReport {
    /// `ok`, `not_modified`, `unchanged` (same body as last time) or `failed`.
    pub outcome: String,
    pub items: usize,
    pub new_events: usize,
    pub updated: usize,
    /// Items remembered without an event: the first poll's baseline, or past the per-poll cap.
    pub remembered: usize,
    pub error: Option<SourceError>,
    pub next_run_at: Option<DateTime<Utc>>,
}

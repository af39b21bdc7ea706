//! WebSub for YouTube channels (platforms.md section 1, security.md 9–13).
//!
//! - Subscribing is a `websub.request` job: it POSTs to the hub and the hub verifies by calling
//!   back. The verification GET is answered with the challenge only when mode, topic and our own
//!   state agree; the granted lease is stored and a renewal job is queued at 80 % of it.
//! - A notification's `X-Hub-Signature` (sha1/sha256/sha384/sha512) is checked over the raw body
//!   in constant time. A bad or missing one still gets 2xx (no oracle), but the body is dropped
//!   and a security event is written to the audit log.
//! - Deleting a source unsubscribes first; the row is removed when the hub confirms, or an hour
//!   later whatever happens.

use crate::apply::{Mode, apply};
use crate::feed;
use crate::store::{SOURCE_COLS, SourceRow, Sources, insert_event, store};
use chrono::{TimeDelta, Utc};
use herald_accounts::audit::{self, Actor, Event};
use herald_core::Error;
use herald_queue::{Handler, Job, JobError, NewJob};
use herald_store::{Ts, Tx, exec, on_read};
use hmac::{KeyInit, Mac};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

pub const WEBSUB_JOB: &str = "websub.request";
/// What we ask for; Google's hub grants at most 10 days (and 5 by default).
const LEASE_ASKED: u64 = 864_000;

pub(crate) async fn enqueue(tx: &mut Tx, source: Uuid, mode: &str, topic: Option<String>) -> Result<(), Error> {
    let job = NewJob::new(WEBSUB_JOB, json!({"source": source, "mode": mode, "topic": topic})).max_attempts(8);
    herald_queue::enqueue(tx, job).await.map_err(Error::from)?;
    Ok(())
}

async fn enqueue_at(tx: &mut Tx, source: Uuid, mode: &str, at: chrono::DateTime<Utc>) -> Result<(), Error> {
    let job = NewJob::new(WEBSUB_JOB, json!({"source": source, "mode": mode})).run_at(at).max_attempts(8);
    herald_queue::enqueue(tx, job).await.map_err(Error::from)?;
    Ok(())
}

/// What the callback answers a verification GET.
#[derive(Debug, PartialEq)]
pub enum Verification {
    /// 200 with exactly this body.
    Challenge(String),
    /// 200, empty (a denial noted).
    Noted,
    /// 404: we did not ask for this.
    Refused,
}

/// What a notification did (the answer is 2xx in every case but an unknown source).
#[derive(Debug, PartialEq)]
pub enum Notified {
    Accepted {
        new_events: usize,
        updated: usize,
        deleted: usize,
    },
    /// Bad or missing signature: dropped, logged.
    Dropped,
    /// Not a YouTube payload we could read: recorded as the source's error.
    Unreadable,
    /// No such subscription: 410 tells the hub to stop.
    Gone,
}

/// Checks `X-Hub-Signature: <algo>=<hex>` over `body`, in constant time. Unknown algorithms fail.
pub fn signature_ok(secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some((algo, hex_sig)) = header.and_then(|h| h.trim().split_once('=')) else { return false };
    let Ok(sig) = hex::decode(hex_sig.trim()) else { return false };
    macro_rules! check {
        ($d:ty) => {{
            let Ok(mut mac) = hmac::Hmac::<$d>::new_from_slice(secret) else { return false };
            mac.update(body);
            mac.verify_slice(&sig).is_ok()
        }};
    }
    match algo.to_ascii_lowercase().as_str() {
        "sha1" => check!(sha1::Sha1),
        "sha256" => check!(sha2::Sha256),
        "sha384" => check!(sha2::Sha384),
        "sha512" => check!(sha2::Sha512),
        _ => false,
    }
}

fn same_topic(a: &str, b: &str) -> bool {
    // The hub may echo either form of YouTube's topic (platforms.md 1.1).
    let norm = |t: &str| t.trim().replacen("/xml/feeds/", "/feeds/", 1).replacen("http://", "https://", 1);
    norm(a) == norm(b)
}

impl Sources {
    /// Any row, deleted or not (the hub talks to rows the API no longer shows).
    async fn any_row(&self, id: Uuid) -> Result<Option<(SourceRow, bool)>, Error> {
        let sql = format!("SELECT {SOURCE_COLS}, deleted FROM sources WHERE id = $1");
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            row: SourceRow,
            deleted: bool,
        }
        let r: Option<Row> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await)
                .map_err(store)?;
        Ok(r.map(|r| (r.row, r.deleted)))
    }

    /// The hub's verification GET (`hub.mode`, `hub.topic`, `hub.challenge`, `hub.lease_seconds`).
    pub async fn websub_verify(
        &self,
        id: Uuid,
        mode: Option<&str>,
        topic: Option<&str>,
        challenge: Option<&str>,
        lease_seconds: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Verification, Error> {
        let Some((row, _deleted)) = self.any_row(id).await? else { return Ok(Verification::Refused) };
        let (Some(mode), Some(topic)) = (mode, topic) else { return Ok(Verification::Refused) };
        let Some(ours) = row.websub_topic.as_deref() else { return Ok(Verification::Refused) };
        if !same_topic(topic, ours) {
            tracing::warn!(target: "herald::security", source = %id, "a WebSub verification named another topic; refused");
            return Ok(Verification::Refused);
        }
        let state = row.websub_state.as_str();
        let now = Utc::now();
        match (mode, state) {
            ("subscribe", "pending" | "subscribed") => {
                let Some(challenge) = challenge.filter(|c| !c.is_empty() && c.len() <= 1000) else {
                    return Ok(Verification::Refused);
                };
                // Hubs must send a lease; Google's default is 5 days when none was asked.
                let lease: u64 =
                    lease_seconds.and_then(|l| l.trim().parse().ok()).filter(|l| *l > 0).unwrap_or(432_000);
                let lease = lease.min(365 * 86_400);
                let until = now + TimeDelta::seconds(lease as i64);
                let renew = now + TimeDelta::seconds((lease as f64 * 0.8) as i64);
                let mut tx = self.db.begin().await?;
                exec!(tx, "UPDATE sources SET websub_state = $2, websub_lease_until = $3, websub_error = NULL, updated_at = $4 WHERE id = $1",
                      id, "subscribed", Ts(until), Ts::now()).map_err(store)?;
                enqueue_at(&mut tx, id, "renew", renew).await?;
                tx.commit().await?;
                tracing::info!(source = %id, lease, "WebSub subscription verified");
                Ok(Verification::Challenge(challenge.to_string()))
            }
            ("unsubscribe", "unsubscribing" | "off") => {
                let Some(challenge) = challenge.filter(|c| !c.is_empty() && c.len() <= 1000) else {
                    return Ok(Verification::Refused);
                };
                let mut tx = self.db.begin().await?;
                // A deleted source goes for good now; a paused one stays, unsubscribed.
                exec!(tx, "DELETE FROM sources WHERE id = $1 AND deleted = $2", id, true).map_err(store)?;
                exec!(tx, "UPDATE sources SET websub_state = $2, websub_lease_until = NULL WHERE id = $1", id, "off")
                    .map_err(store)?;
                tx.commit().await?;
                Ok(Verification::Challenge(challenge.to_string()))
            }
            ("denied", "pending" | "subscribed") => {
                let reason = reason.unwrap_or("the hub gave no reason").chars().take(500).collect::<String>();
                let mut tx = self.db.begin().await?;
                exec!(
                    tx,
                    "UPDATE sources SET websub_state = $2, websub_error = $3 WHERE id = $1",
                    id,
                    "denied",
                    format!("the hub denied the subscription: {reason}; the channel is polled only")
                )
                .map_err(store)?;
                tx.commit().await?;
                Ok(Verification::Noted)
            }
            _ => Ok(Verification::Refused),
        }
    }

    /// A notification POST. `body` is at most 1 MiB (the route answers 413 before this).
    pub async fn websub_notify(&self, id: Uuid, signature: Option<&str>, body: &[u8]) -> Result<Notified, Error> {
        let Some((row, deleted)) = self.any_row(id).await? else { return Ok(Notified::Gone) };
        if deleted || !row.active || row.kind() != crate::model::Kind::YoutubeChannel {
            return Ok(Notified::Gone);
        }
        let secret = match &row.secret {
            Some(sealed) => {
                Some(self.vault.open(sealed, &row.secret_binding()).map_err(|e| Error::internal(e.to_string()))?)
            }
            None => None,
        };
        if let Some(secret) = &secret
            && !signature_ok(secret.expose().as_bytes(), signature, body)
        {
            let why = if signature.is_none() { "missing" } else { "does not match" };
            let mut tx = self.db.begin().await?;
            audit::record(
                &mut tx,
                &Actor::system(),
                Event::new(Some(row.team_id), "websub.signature_rejected")
                    .target("source", id)
                    .details(json!({"reason": why, "bytes": body.len()})),
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(target: "herald::security", source = %id, "a WebSub notification's signature {why}; dropped");
            return Ok(Notified::Dropped);
        }
        let push = match feed::parse_push(body) {
            Ok(p) => p,
            Err(e) => {
                let mut tx = self.db.begin().await?;
                exec!(
                    tx,
                    "UPDATE sources SET last_error = $2, last_error_code = $3 WHERE id = $1",
                    id,
                    format!("a push notification could not be read: {e}"),
                    e.code()
                )
                .map_err(store)?;
                tx.commit().await?;
                return Ok(Notified::Unreadable);
            }
        };
        let channel = row.settings().channel_id;
        let mut tx = self.db.begin().await?;
        // Entries for another channel (a misrouted push) are not this source's.
        let entries: Vec<_> = push
            .entries
            .into_iter()
            .filter(|e| e.youtube.as_ref().is_some_and(|y| y.channel_id.is_none() || y.channel_id == channel))
            .collect();
        let applied = apply(&mut tx, &row, entries, Mode::Push).await?;
        let notify_deleted = row.settings().deleted_events.unwrap_or(false);
        let mut deleted_n = 0;
        for d in push.deleted.iter().filter(|d| d.channel_id.is_none() || d.channel_id == channel) {
            let data = json!({"video": {"id": d.video_id, "url": d.url, "deleted_at": d.when}, "channel": {"id": d.channel_id}});
            if insert_event(
                &mut tx,
                &row,
                "video.deleted",
                &format!("deleted:yt:{}", d.video_id),
                &data,
                notify_deleted,
            )
            .await?
            .is_some()
            {
                deleted_n += 1;
            }
        }
        exec!(tx, "UPDATE sources SET last_run_at = $2 WHERE id = $1", id, Ts::now()).map_err(store)?;
        tx.commit().await?;
        Ok(Notified::Accepted { new_events: applied.new_events, updated: applied.updated, deleted: deleted_n })
    }

    /// Asks the hub to (un)subscribe. The hub's answer is only "accepted"; the outcome arrives
    /// as the verification GET.
    async fn hub_request(&self, row: &SourceRow, mode: &str, topic: &str) -> Result<(), JobError> {
        let callback = self.callback(row.id).ok_or_else(|| JobError::permanent("HERALD_PUBLIC_URL is not set"))?;
        let mut form = vec![
            ("hub.callback", callback),
            ("hub.mode", mode.to_string()),
            ("hub.topic", topic.to_string()),
            ("hub.verify", "async".to_string()),
        ];
        if mode == "subscribe" {
            form.push(("hub.lease_seconds", LEASE_ASKED.to_string()));
            if let Some(sealed) = &row.secret {
                let secret =
                    self.vault.open(sealed, &row.secret_binding()).map_err(|e| JobError::permanent(e.to_string()))?;
                form.push(("hub.secret", secret.expose().to_string()));
            }
        }
        let response = self
            .trusted
            .post(&self.config.websub_hub)
            .form(&form)
            .send()
            .await
            .map_err(|e| JobError::retry(format!("the hub is unreachable: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default().chars().take(300).collect::<String>();
        let message = format!("the hub answered {status} to the {mode} request: {}", text.trim());
        let mut tx = self.db.begin().await.map_err(JobError::retry)?;
        exec!(tx, "UPDATE sources SET websub_error = $2 WHERE id = $1", row.id, &message).map_err(JobError::retry)?;
        tx.commit().await.map_err(JobError::retry)?;
        if status.is_client_error() && status != 429 {
            return Err(JobError::permanent(message));
        }
        Err(JobError::retry(message))
    }
}

/// Runs `websub.request` jobs: subscribe, renew, unsubscribe, forget.
pub struct WebSubHandler {
    sources: Sources,
}

impl WebSubHandler {
    pub fn new(sources: Sources) -> WebSubHandler {
        WebSubHandler { sources }
    }
}

#[async_trait::async_trait]
impl Handler for WebSubHandler {
    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let id: Uuid = serde_json::from_value(job.payload["source"].clone()).map_err(JobError::permanent)?;
        let mode = job.payload["mode"].as_str().unwrap_or("subscribe");
        let s = &self.sources;
        // Deleted rows too: unsubscribing and forgetting act on them.
        let row = s.any_row(id).await.map_err(|e| JobError::retry(e.message))?.map(|(row, _)| row);
        let Some(row) = row else { return Ok(()) };
        let topic = job.payload["topic"].as_str().map(str::to_string).or(row.websub_topic.clone());
        let Some(topic) = topic else { return Ok(()) };
        match mode {
            "subscribe" | "renew" => {
                // A renewal made stale by a newer lease, a paused or deleted source: nothing to do.
                if !row.active || !matches!(row.websub_state.as_str(), "pending" | "subscribed") {
                    return Ok(());
                }
                // Renewals come at 80 % of a 5–10 day lease, leaving 1–2 days; more than 3 left
                // means a newer verification already renewed it.
                if mode == "renew" && row.websub_lease_until.is_some_and(|t| t.0 - Utc::now() > TimeDelta::days(3)) {
                    return Ok(());
                }
                s.hub_request(&row, "subscribe", &topic).await
            }
            "unsubscribe" => {
                s.hub_request(&row, "unsubscribe", &topic).await?;
                let mut tx = s.db.begin().await.map_err(JobError::retry)?;
                let forget = NewJob::new(WEBSUB_JOB, json!({"source": id, "mode": "forget"}))
                    .run_at(Utc::now() + TimeDelta::hours(1));
                herald_queue::enqueue(&mut tx, forget).await.map_err(JobError::retry)?;
                tx.commit().await.map_err(JobError::retry)?;
                Ok(())
            }
            "forget" => {
                let mut tx = s.db.begin().await.map_err(JobError::retry)?;
                exec!(tx, "DELETE FROM sources WHERE id = $1 AND deleted = $2", id, true).map_err(JobError::retry)?;
                tx.commit().await.map_err(JobError::retry)?;
                Ok(())
            }
            other => Err(JobError::permanent(format!("unknown WebSub job mode `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_per_algorithm() {
        let body = b"<feed/>";
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let good = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_ok(b"s3cret", Some(&good), body));
        assert!(!signature_ok(b"other", Some(&good), body));
        assert!(!signature_ok(b"s3cret", Some(&good), b"<feed/> "));
        assert!(!signature_ok(b"s3cret", Some(&good.replace("sha1", "md5")), body));
        assert!(!signature_ok(b"s3cret", None, body));
        assert!(!signature_ok(b"s3cret", Some("sha1=zz"), body));
        let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        assert!(signature_ok(b"s3cret", Some(&format!("sha512={}", hex::encode(mac.finalize().into_bytes()))), body));
    }

    #[test]
    fn topics_match_in_either_form() {
        let a = "https://www.youtube.com/xml/feeds/videos.xml?channel_id=UC1";
        assert!(same_topic(a, "https://www.youtube.com/feeds/videos.xml?channel_id=UC1"));
        assert!(!same_topic(a, "https://www.youtube.com/xml/feeds/videos.xml?channel_id=UC2"));
    }
}

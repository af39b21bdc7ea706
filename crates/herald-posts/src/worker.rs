//! The delivery job: one post to one connection.
//!
//! 1. Load the delivery; a final one (published, failed, unconfirmed, cancelled) is done.
//! 2. A call left in flight by an earlier run (the process died between the platform's answer and
//!    the commit) is sent again only where the platform still recognises the key; elsewhere the
//!    delivery becomes `unconfirmed` and is never resent blindly.
//! 3. Load the connection and open its credentials in memory; a connection that needs
//!    re-authorising parks the job (no attempt spent) until it is fixed.
//! 4. Mark the call in flight, committed, then call the adapter with the stored idempotency key.
//! 5. Record the attempt and the outcome in one transaction, with the post's new state.
//!
//! Threads publish part by part; each published part is committed before the next, so a retry
//! continues from the part that failed.

use crate::batch::{Batcher, Ready, Start, Success};
use crate::model::{Content, DeliveryState};
use crate::store::{DELIVERY_COLS, DeliveryRow, Posts, refresh_post, store};
use chrono::{DateTime, Utc};
use herald_connections::Status;
use herald_connections::delivery::{REAUTH_RECHECK, job_error};
use herald_core::Error;
use herald_platforms::{ErrorClass, Idempotency, Outgoing, PlatformError};
use herald_queue::{Job, JobError};
use herald_store::{Ts, exec, on_read};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use uuid::Uuid;

pub const DELIVERY_JOB: &str = "delivery.publish";

/// The queue handler for [`DELIVERY_JOB`].
#[derive(Clone)]
pub struct DeliveryHandler {
    posts: Posts,
    /// The first retry's wait; each one after doubles it (up to an hour), ±20 %.
    backoff_base: std::time::Duration,
    /// Test hook: abort the process right after the platform accepted a call, before the commit.
    /// `HERALD_FAILPOINT=delivery.after_call[:platform]`: the platform it crashes after ("" for any).
    crash_after_call: Option<String>,
    /// Group commit for the usual case, started with the first job.
    batch: Arc<OnceLock<Batcher>>,
}

impl DeliveryHandler {
    pub fn new(posts: Posts) -> DeliveryHandler {
        // Only the crash tests set this; it makes the worker die at the worst moment.
        let crash_after_call = std::env::var("HERALD_FAILPOINT")
            .ok()
            .and_then(|v| v.strip_prefix("delivery.after_call").map(|rest| rest.trim_start_matches(':').to_string()));
        DeliveryHandler {
            posts,
            crash_after_call,
            backoff_base: std::time::Duration::from_secs(5),
            batch: Arc::default(),
        }
    }

    /// Retries sooner or later than the default 5 s, 10 s, 20 s, … (tests make storms quick).
    pub fn with_backoff(mut self, base: std::time::Duration) -> DeliveryHandler {
        self.backoff_base = base;
        self
    }
}

#[async_trait::async_trait]
impl herald_queue::Handler for DeliveryHandler {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let id: Uuid = job.payload["delivery"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| JobError::Permanent("the job has no delivery id".into()))?;
        self.deliver(job, id).await
    }

    fn backoff(&self, attempt: i32) -> std::time::Duration {
        let secs = self.backoff_base.as_secs_f64() * 2f64.powi((attempt - 1).clamp(0, 20));
        let jitter = 0.8 + 0.4 * (uuid::Uuid::now_v7().as_u128() % 1000) as f64 / 1000.0;
        std::time::Duration::from_secs_f64(secs.min(3600.0) * jitter)
    }

    fn timeout(&self) -> std::time::Duration {
        // Media processing and long threads take a while; each call has its own timeout too.
        std::time::Duration::from_secs(600)
    }
}

fn transient(e: Error) -> JobError {
    JobError::retry(e)
}

impl DeliveryHandler {
    async fn row(&self, id: Uuid) -> Result<Option<DeliveryRow>, JobError> {
        let sql = format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE id = $1");
        on_read!(self.posts.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await)
            .map_err(|e| transient(store(e)))
    }

    fn batch(&self) -> &Batcher {
        self.batch.get_or_init(|| Batcher::spawn(self.posts.clone()))
    }

    async fn deliver(&self, job: &Job, id: Uuid) -> Result<(), JobError> {
        let ready = match self.batch().start(id).await {
            Start::Go(ready) => *ready,
            Start::Done => return Ok(()),
            Start::Slow => match self.prepare(id).await? {
                Some(ready) => ready,
                None => return Ok(()),
            },
        };
        self.call(ready, job).await
    }

    /// The one-by-one start: every check, each explained when it stops the delivery, then the
    /// in-flight mark. `None` when there is nothing to do.
    async fn prepare(&self, id: Uuid) -> Result<Option<Ready>, JobError> {
        let Some(d) = self.row(id).await? else { return Ok(None) }; // the post was deleted
        if d.state().is_final() {
            return Ok(None);
        }
        let post = self.posts.post_row(d.team_id, d.post_id).await.map_err(transient)?;
        let loaded = match self.posts.connections.load(d.team_id, d.connection_id).await {
            Ok(l) => l,
            Err(e) if e.code == herald_core::ErrorCode::NotFound => {
                self.finish(
                    &d,
                    DeliveryState::Failed,
                    None,
                    Some(&PlatformError::invalid("the connection was deleted")),
                    0,
                    Utc::now(),
                    0,
                )
                .await?;
                return Err(JobError::Permanent("the connection was deleted".into()));
            }
            Err(e) => return Err(transient(e)),
        };
        let adapter = herald_platforms::adapter(&d.platform)
            .ok_or_else(|| JobError::Permanent(format!("no adapter for {}", d.platform)))?;
        let idempotency = adapter.idempotency(&loaded.connection);
        let now = Utc::now();

        // An earlier run may have reached the platform without recording what happened.
        if let Some(started) = d.call_started_at.map(|t| t.0) {
            let first = d.first_attempt_at.map(|t| t.0).unwrap_or(started);
            if !idempotency.covers(first, now) {
                let e = PlatformError::unknown_outcome(format!(
                    "the worker stopped while {} was being called at {}; the post may be there. It is not sent again: \
                     check the platform, then resolve or retry the delivery",
                    d.platform,
                    started.to_rfc3339()
                ));
                self.finish(&d, DeliveryState::Unconfirmed, None, Some(&e), d.parts().len() as i64, now, 0).await?;
                return Err(JobError::Permanent(e.to_string()));
            }
        } else if let (Idempotency::Window(_), Some(first)) = (idempotency, d.first_attempt_at.map(|t| t.0))
            && !idempotency.covers(first, now)
            && matches!(d.last_error_class.as_deref(), Some("transient"))
        {
            // A lost answer long ago: the platform has forgotten the key (Mastodon keeps it an hour).
            let e = PlatformError::unknown_outcome(format!(
                "the first attempt was at {} and the platform no longer recognises its idempotency key; \
                 check the platform, then resolve or retry the delivery",
                first.to_rfc3339()
            ));
            self.finish(&d, DeliveryState::Unconfirmed, None, Some(&e), d.parts().len() as i64, now, 0).await?;
            return Err(JobError::Permanent(e.to_string()));
        }

        // The team's policy for deliveries that come due long after their time (a node was down).
        if d.attempts == 0 && d.call_started_at.is_none() {
            let limit: Option<i64> = on_read!(self.posts.db, c => sqlx::query_scalar(
                "SELECT late_limit_secs FROM teams WHERE id = $1").bind(d.team_id).fetch_one(c).await)
            .map_err(|e| transient(store(e)))?;
            let due = d.run_at.map(|t| t.0).unwrap_or(post.created_at.0);
            if let Some(limit) = limit
                && (now - due).num_seconds() > limit
            {
                let e = PlatformError::invalid(format!(
                    "not sent: it came due at {} and is {} minutes late, past the team's limit of {} minutes",
                    due.to_rfc3339(),
                    (now - due).num_minutes(),
                    limit / 60
                ))
                .code("too_late");
                self.finish(&d, DeliveryState::Failed, None, Some(&e), 0, now, 0).await?;
                return Err(JobError::Permanent(e.message));
            }
        }

        if loaded.view.status == Status::NeedsReauth {
            return Err(JobError::RateLimited {
                reason: format!(
                    "connection {} needs re-authorising; this delivery continues once it is fixed",
                    d.connection_id
                ),
                retry_after: REAUTH_RECHECK,
            });
        }

        // The call is in flight from here until an outcome is recorded.
        let mut tx = self.posts.db.begin().await.map_err(|e| transient(e.into()))?;
        let claimed = exec!(
            tx,
            "UPDATE deliveries SET state = 'publishing', call_started_at = $2, first_attempt_at = COALESCE(first_attempt_at, $2), \
             attempts = attempts + 1, updated_at = $2 WHERE id = $1 AND state IN ('pending', 'scheduled', 'publishing')",
            d.id,
            Ts(now)
        )
        .map_err(|e| transient(store(e)))?;
        if claimed == 0 {
            return Ok(None); // cancelled meanwhile
        }
        // The only change a claim makes to the post: a scheduled post starts publishing.
        exec!(
            tx,
            "UPDATE posts SET state = 'publishing', updated_at = $2 WHERE id = $1 AND state = 'scheduled'",
            d.post_id,
            Ts(now)
        )
        .map_err(|e| transient(store(e)))?;
        tx.commit().await.map_err(|e| transient(e.into()))?;
        Ok(Some(Ready { d, post, loaded, marked_at: now }))
    }

    /// Makes the calls of a delivery marked in flight, part by part, and records what happened.
    async fn call(&self, ready: Ready, job: &Job) -> Result<(), JobError> {
        let Ready { d, post, loaded, marked_at: now } = ready;
        let last_try = job.attempt >= job.max_attempts;
        let adapter = herald_platforms::adapter(&d.platform)
            .ok_or_else(|| JobError::Permanent(format!("no adapter for {}", d.platform)))?;

        // Fixed at the first attempt, so a retry rebuilds the same content-addressed event (Nostr)
        // or record key (Bluesky), and a scheduled post carries its publishing time.
        let created_at = d.first_attempt_at.map(|t| t.0).unwrap_or(now);
        let content = d.overrides().resolve(&post.content());
        let parts = thread_parts(adapter.rules(&loaded.connection), &content);
        let mut done = d.parts();
        let mut conn = loaded.connection.clone();
        while done.len() < parts.len() {
            let i = done.len();
            let mut out = outgoing(&d, &content, &parts, i, &done, created_at);
            if i == 0 && !content.media.is_empty() {
                out.media = self.posts.load_media(d.team_id, &content.media, created_at).await.map_err(transient)?;
            }
            let started = Utc::now();
            let clock = Instant::now();
            let result = adapter.publish(self.posts.connections.net(), &conn, &out).await;
            let ms = clock.elapsed().as_millis() as i64;
            if result.is_ok() && self.crash_after_call.as_ref().is_some_and(|p| p.is_empty() || *p == d.platform) {
                tracing::error!("failpoint delivery.after_call: aborting before the commit");
                std::process::abort();
            }
            match result {
                Ok(p) => {
                    if let Some(c) = &p.credentials {
                        self.posts
                            .connections
                            .store_credentials(d.team_id, d.connection_id, c)
                            .await
                            .map_err(transient)?;
                        conn.credentials = c.clone();
                    }
                    done.push(json!({"id": p.id, "url": p.url}));
                    if done.len() < parts.len() {
                        self.record_part(&d, &done, i as i64, started, ms).await?;
                    } else {
                        self.published(&d, &done, i as i64, started, ms, job).await?;
                    }
                }
                Err(e) => {
                    let next = match e.class {
                        ErrorClass::Invalid => DeliveryState::Failed,
                        ErrorClass::UnknownOutcome => DeliveryState::Unconfirmed,
                        ErrorClass::Transient if last_try => DeliveryState::Failed,
                        ErrorClass::Auth | ErrorClass::Transient | ErrorClass::RateLimited => DeliveryState::Pending,
                    };
                    // Keep the parts that went out, so a retry continues after them.
                    self.save_parts(&d, &done).await?;
                    // The connection's status changes before the attempt shows, so whoever reads
                    // the attempt sees why the delivery waits.
                    if e.class == ErrorClass::Auth {
                        let _ = self.posts.connections.record_failure(d.team_id, d.connection_id, &e).await;
                        if loaded.view.status != Status::NeedsReauth {
                            let _ = self
                                .posts
                                .connection_needs_reauth(d.team_id, d.connection_id, &d.platform, &e.message)
                                .await;
                        }
                    }
                    self.finish(&d, next, None, Some(&e), i as i64, started, ms).await?;
                    if e.class == ErrorClass::Auth {
                        return Err(JobError::RateLimited {
                            reason: format!("{e}; the connection needs re-authorising, and this delivery waits for it"),
                            retry_after: REAUTH_RECHECK,
                        });
                    }
                    return Err(job_error(&e));
                }
            }
        }
        Ok(())
    }

    /// Records a success, and the job's, with others that finished at the same moment; or the
    /// success alone if that fails (and the runner records the job).
    async fn published(
        &self,
        d: &DeliveryRow,
        done: &[Value],
        part: i64,
        started: DateTime<Utc>,
        ms: i64,
        job: &Job,
    ) -> Result<(), JobError> {
        let success = Success {
            delivery: d.id,
            post: d.post_id,
            team: d.team_id,
            parts: Value::Array(done.to_vec()).to_string(),
            platform_post_id: done[0]["id"].as_str().map(str::to_string),
            platform_url: done[0]["url"].as_str().map(str::to_string),
            part,
            started,
            ms,
            job: job.succeeded().logged_by_handler(),
        };
        match self.batch().published(success).await {
            Ok(()) => Ok(()),
            Err(_) => self.finish(d, DeliveryState::Published, Some(done), None, part, started, ms).await,
        }
    }

    async fn save_parts(&self, d: &DeliveryRow, done: &[Value]) -> Result<(), JobError> {
        let mut tx = self.posts.db.begin().await.map_err(|e| transient(e.into()))?;
        exec!(tx, "UPDATE deliveries SET parts = $2 WHERE id = $1", d.id, Value::Array(done.to_vec()).to_string())
            .map_err(|e| transient(store(e)))?;
        tx.commit().await.map_err(|e| transient(e.into()))
    }

    /// A thread part went out: store it with its attempt, and keep the call marked in flight.
    async fn record_part(
        &self,
        d: &DeliveryRow,
        done: &[Value],
        part: i64,
        started: DateTime<Utc>,
        ms: i64,
    ) -> Result<(), JobError> {
        let mut tx = self.posts.db.begin().await.map_err(|e| transient(e.into()))?;
        exec!(
            tx,
            "UPDATE deliveries SET parts = $2, call_started_at = $3 WHERE id = $1",
            d.id,
            Value::Array(done.to_vec()).to_string(),
            Ts::now()
        )
        .map_err(|e| transient(store(e)))?;
        attempt(&mut tx, d.id, part, started, ms, "published", None).await?;
        tx.commit().await.map_err(|e| transient(e.into()))
    }

    /// Records the attempt and the delivery's outcome, and the post's new state, in one commit.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        d: &DeliveryRow,
        state: DeliveryState,
        published: Option<&[Value]>,
        error: Option<&PlatformError>,
        part: i64,
        started: DateTime<Utc>,
        ms: i64,
    ) -> Result<(), JobError> {
        let now = Ts::now();
        let mut tx = self.posts.db.begin().await.map_err(|e| transient(e.into()))?;
        match published {
            Some(parts) => {
                let first = &parts[0];
                exec!(
                    tx,
                    "UPDATE deliveries SET state = 'published', parts = $2, platform_post_id = $3, platform_url = $4, \
                     call_started_at = NULL, last_error = NULL, last_error_class = NULL, published_at = $5, updated_at = $5 \
                     WHERE id = $1",
                    d.id,
                    Value::Array(parts.to_vec()).to_string(),
                    first["id"].as_str(),
                    first["url"].as_str(),
                    now
                )
                .map_err(|e| transient(store(e)))?;
                attempt(&mut tx, d.id, part, started, ms, "published", None).await?;
            }
            None => {
                let e = error.expect("an outcome without a result has an error");
                let message: String = e.message.chars().take(2000).collect();
                exec!(
                    tx,
                    "UPDATE deliveries SET state = $2, call_started_at = NULL, last_error = $3, last_error_class = $4, \
                     updated_at = $5 WHERE id = $1",
                    d.id,
                    state.as_str(),
                    &message,
                    e.class.as_str(),
                    now
                )
                .map_err(|e| transient(store(e)))?;
                attempt(&mut tx, d.id, part, started, ms, e.class.as_str(), Some(e)).await?;
            }
        }
        if matches!(state, DeliveryState::Failed | DeliveryState::Unconfirmed) {
            let kind = format!("delivery.{}", state.as_str());
            let why = error.map(|e| e.message.as_str()).unwrap_or("");
            let message = format!("the delivery to {} is {}: {why}", d.platform, state.as_str());
            let data = json!({"post": d.post_id, "delivery": d.id, "connection": d.connection_id, "platform": d.platform,
                "state": state, "error": why, "class": error.map(|e| e.class)});
            crate::events::emit(&mut tx, d.team_id, &kind, ("delivery", d.id), &message, data)
                .await
                .map_err(transient)?;
        }
        refresh_post(&mut tx, d.post_id).await.map_err(transient)?;
        tx.commit().await.map_err(|e| transient(e.into()))?;
        if matches!(state, DeliveryState::Failed | DeliveryState::Unconfirmed) {
            tracing::warn!(delivery = %d.id, post = %d.post_id, platform = %d.platform, state = state.as_str(),
                "delivery needs attention: {}", error.map(|e| e.message.as_str()).unwrap_or(""));
        }
        Ok(())
    }
}

async fn attempt(
    tx: &mut herald_store::Tx,
    delivery: Uuid,
    part: i64,
    started: DateTime<Utc>,
    ms: i64,
    outcome: &str,
    e: Option<&PlatformError>,
) -> Result<(), JobError> {
    exec!(
        tx,
        "INSERT INTO delivery_attempts (id, delivery_id, part, started_at, duration_ms, outcome, http_status, code, message) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        Uuid::now_v7(),
        delivery,
        part,
        Ts(started),
        ms,
        outcome,
        e.and_then(|e| e.status).map(i64::from),
        e.and_then(|e| e.code.clone()),
        e.map(|e| e.message.chars().take(2000).collect::<String>())
    )
    .map(|_| ())
    .map_err(|e| transient(store(e)))
}

/// The text of each part: one part, unless the text is over the platform's limit, splitting is
/// asked for, and the platform takes replies.
fn thread_parts(rules: herald_core::platforms::Platform, c: &Content) -> Vec<String> {
    match rules.text {
        Some(limit) if c.thread.split && rules.capabilities.thread && limit.counting.count(&c.text) > limit.max => {
            herald_platforms::thread::split(&c.text, limit.max, limit.counting, c.thread.numbering)
        }
        _ => vec![c.text.clone()],
    }
}

/// Part `i` as the adapter sees it: the first carries the link and options; later ones answer the
/// part before, under the key `<key>-<n>`.
fn outgoing(
    d: &DeliveryRow,
    c: &Content,
    parts: &[String],
    i: usize,
    done: &[Value],
    created_at: DateTime<Utc>,
) -> Outgoing {
    let mut out = Outgoing::text(parts[i].clone(), d.idempotency_key.clone());
    out.created_at = created_at;
    out.options = c.options.clone();
    if i == 0 {
        out.link = c.link.clone();
        out.reply_to = c.options.get("reply_to").and_then(|v| v.as_str()).map(str::to_string);
    } else {
        out.idempotency_key = format!("{}-{}", d.idempotency_key, i + 1);
        out.reply_to = done.last().and_then(|p| p["id"].as_str()).map(str::to_string);
    }
    out
}

/// Deliveries not sent yet whose time passed before the cutoff. `d.state IN (…'publishing')`
/// repeats the `deliveries_live` index's term (SQLite uses a partial index only then), so the
/// sweep reads live deliveries instead of every delivery ever made.
const OVERDUE: &str = "SELECT COUNT(*) FROM deliveries d JOIN posts p ON p.id = d.post_id \
     WHERE d.state IN ('pending', 'scheduled', 'publishing') AND d.state <> 'publishing' \
     AND p.state <> 'draft' AND COALESCE(d.run_at, p.created_at) < $1";

/// Live deliveries whose job is gone, dead or cancelled (through `deliveries_live` too).
fn stuck_sql() -> String {
    format!(
        "SELECT {} FROM deliveries d JOIN posts p ON p.id = d.post_id LEFT JOIN jobs j ON j.id = d.job_id \
         WHERE d.state IN ('pending', 'scheduled', 'publishing') AND p.state <> 'draft' \
         AND (j.id IS NULL OR j.state IN ('dead', 'cancelled')) LIMIT 500",
        DELIVERY_COLS.split(", ").map(|c| format!("d.{c}")).collect::<Vec<_>>().join(", ")
    )
}

/// What one sweep found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Deliveries past their time by more than the threshold and not yet sent.
    pub overdue: i64,
    /// Deliveries whose job ended without an outcome (it kept timing out until it was dead, or it
    /// was cancelled under them): now `unconfirmed` or `failed`.
    pub settled: usize,
}

impl Posts {
    /// Finds deliveries overdue by more than `after` (reported in the log and the
    /// `herald_deliveries_overdue` gauge; they run as soon as a worker is free, or are skipped by
    /// the team's late limit), and settles deliveries whose job ended without recording anything.
    pub async fn sweep(&self, after: std::time::Duration) -> Result<Sweep, Error> {
        let cutoff = Utc::now() - chrono::Duration::from_std(after).unwrap_or_default();
        let overdue: i64 =
            on_read!(self.db, c => sqlx::query_scalar(OVERDUE).bind(Ts(cutoff)).fetch_one(c).await).map_err(store)?;
        metrics::gauge!("herald_deliveries_overdue").set(overdue as f64);
        if overdue > 0 {
            tracing::warn!(
                overdue,
                "deliveries are overdue by more than {}s; are the workers running?",
                after.as_secs()
            );
        }
        let sql = stuck_sql();
        let stuck: Vec<DeliveryRow> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(c).await)
                .map_err(store)?;
        let handler = DeliveryHandler::new(self.clone());
        for d in &stuck {
            let (state, e) = if d.call_started_at.is_some() {
                (
                    DeliveryState::Unconfirmed,
                    PlatformError::unknown_outcome(
                        "the delivery's job ended while a platform call may have been in flight; check the platform, then resolve or retry",
                    ),
                )
            } else {
                (
                    DeliveryState::Failed,
                    PlatformError::transient("the delivery's job ended without an outcome; retry it"),
                )
            };
            handler.finish(d, state, None, Some(&e), d.parts().len() as i64, Utc::now(), 0).await.map_err(
                |e| match e {
                    JobError::Retry(m) | JobError::Permanent(m) => Error::internal(m),
                    other => Error::internal(other.to_string()),
                },
            )?;
        }
        Ok(Sweep { overdue, settled: stuck.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_store::testing::TestDb;

    /// The sweep runs every minute over a table that keeps every delivery ever made: both of its
    /// queries must read the small `deliveries_live` index, not scan the table.
    #[tokio::test]
    async fn the_sweep_reads_only_live_deliveries() {
        let t = TestDb::sqlite().await;
        for sql in [OVERDUE.to_string(), stuck_sql()] {
            let plan: Vec<(i64, i64, i64, String)> = on_read!(t.db, c => sqlx::query_as(
                sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))).bind(0_i64).fetch_all(c).await)
            .unwrap();
            let plan: Vec<&str> = plan.iter().map(|r| r.3.as_str()).collect();
            assert!(plan.iter().any(|s| s.contains("d USING INDEX deliveries_live")), "{sql}\n{plan:#?}");
            assert!(!plan.iter().any(|s| s.starts_with("SCAN d") && !s.contains("INDEX")), "{plan:#?}");
        }
        t.destroy().await;
    }
}

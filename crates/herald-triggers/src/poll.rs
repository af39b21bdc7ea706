//! Polling feeds and YouTube channels, and firing schedules. A node claims due sources by
//! setting a lease on their rows (one statement; `SKIP LOCKED` on PostgreSQL), so no source is
//! polled twice at once, and each poll ends by writing the source's next time and clearing the
//! lease. Polls run concurrently up to a limit, so a slow feed never holds up the others.

use crate::apply::{Mode, apply};
use crate::model::{Kind, PollReport, SourceError};
use crate::store::{SOURCE_COLS, SourceRow, Sources, insert_event, store};
use crate::{feed, schedule, youtube};
use chrono::{DateTime, TimeDelta, Utc};
use herald_accounts::{Principal, authorize};
use herald_core::{Action, Error, ErrorCode};
use herald_http::{FetchError, Method, StatusCode, header};
use herald_store::{Backend, Ts, exec, on_tx};
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Rung when a source is created or changed, so the poller looks again at once.
pub(crate) const WAKE: &str = "herald_sources";
const DEFAULT_INTERVAL: u64 = 900;
/// A YouTube channel with working push is polled only as a safety net.
const PUSHED_INTERVAL: u64 = 3600;
const MAX_BACKOFF: u64 = 86_400;
const ACCEPT: &str = "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, \
    application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5";

/// One failure of a run, as the status shows it.
struct Failure {
    code: String,
    message: String,
    /// The far side asked for this wait (Retry-After).
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(code: &str, message: impl Into<String>) -> Failure {
        Failure { code: code.into(), message: message.into(), retry_after: None }
    }
}

/// What a fetch brought back.
enum Fetched {
    NotModified {
        max_age: Option<Duration>,
    },
    Body {
        body: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
        max_age: Option<Duration>,
        url: url::Url,
    },
}

fn header_str(h: &header::HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string).filter(|v| v.len() <= 1000)
}

/// `Cache-Control: max-age=N` (a shared cache's s-maxage is not ours).
fn max_age(h: &header::HeaderMap) -> Option<Duration> {
    let cc = header_str(h, header::CACHE_CONTROL)?;
    cc.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.trim().parse().ok()).map(Duration::from_secs)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &header::HeaderMap) -> Option<Duration> {
    let v = header_str(h, header::RETRY_AFTER)?;
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v.trim()).ok()?.with_timezone(&Utc);
    (at - Utc::now()).to_std().ok()
}

impl Sources {
    /// The URL a feed or channel source polls.
    fn poll_url(&self, row: &SourceRow) -> Option<String> {
        let s = row.settings();
        match row.kind() {
            Kind::Feed => s.url,
            Kind::YoutubeChannel => s.channel_id.map(|c| youtube::feed_url(&self.config.youtube_base, &c)),
            _ => None,
        }
    }

    async fn fetch(&self, row: &SourceRow, url: &str) -> Result<Fetched, Failure> {
        let user_chosen = row.kind() == Kind::Feed;
        let mut request = if user_chosen {
            self.safe.request(Method::GET, url).map_err(|e| Failure::new("ssrf_blocked_destination", e.to_string()))?
        } else {
            self.trusted.get(url)
        };
        request = request.header(header::ACCEPT, ACCEPT);
        if let Some(etag) = &row.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &row.last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, lm);
        }
        let sent = if user_chosen {
            self.safe.send(request).await
        } else {
            request.send().await.map_err(|e| FetchError::Http(e.without_url()))
        };
        let response = sent.map_err(|e| match e {
            FetchError::Blocked(b) => Failure::new("ssrf_blocked_destination", b.to_string()),
            e => Failure::new("feed_unreachable", format!("cannot fetch the feed: {e}")),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified { max_age: max_age(&headers) });
        }
        if !status.is_success() {
            let mut f = Failure::new(
                &format!("http_{}", status.as_u16()),
                match status.as_u16() {
                    404 | 410 => format!("the feed answered {status}; check the URL"),
                    401 | 403 => format!("the feed answered {status}; it is not public"),
                    429 => format!("the feed answered {status}; polls slow down"),
                    _ => format!("the feed answered {status}"),
                },
            );
            if matches!(status.as_u16(), 429 | 503) {
                f.retry_after = retry_after(&headers);
            }
            return Err(f);
        }
        let final_url = response.url().clone();
        let body = herald_http::read_limited(response, self.config.feed_max_bytes).await.map_err(|e| match e {
            FetchError::TooLarge { limit } => {
                Failure::new("feed_too_large", format!("the feed is larger than {limit} bytes (HERALD_FEED_MAX_BYTES)"))
            }
            e => Failure::new("feed_unreachable", format!("reading the feed failed: {e}")),
        })?;
        Ok(Fetched::Body {
            body,
            etag: header_str(&headers, header::ETAG),
            last_modified: header_str(&headers, header::LAST_MODIFIED),
            max_age: max_age(&headers),
            url: final_url,
        })
    }

    fn interval(&self, row: &SourceRow) -> u64 {
        let s = row.settings();
        let default = if row.kind() == Kind::YoutubeChannel && row.websub_state == "subscribed" {
            PUSHED_INTERVAL
        } else {
            DEFAULT_INTERVAL
        };
        s.interval_secs.unwrap_or(default)
    }

    /// The next poll: the interval ±10 % (so feeds added together drift apart), at least the
    /// server's max-age; after failures, doubling up to a day, and at least its Retry-After.
    fn next_poll(
        &self,
        row: &SourceRow,
        failures: i64,
        max_age: Option<Duration>,
        wait: Option<Duration>,
    ) -> DateTime<Utc> {
        let interval = self.interval(row) as f64;
        let mut secs = if failures > 0 {
            (interval * 2f64.powi(failures.min(12) as i32)).min(MAX_BACKOFF as f64)
        } else {
            interval
        };
        secs *= rand::rng().random_range(0.9..1.1);
        if let Some(age) = max_age {
            secs = secs.max((age.as_secs() as f64).min(MAX_BACKOFF as f64));
        }
        if let Some(w) = wait {
            secs = secs.max((w.as_secs() as f64).min(MAX_BACKOFF as f64));
        }
        Utc::now() + TimeDelta::milliseconds((secs * 1000.0) as i64)
    }

    /// Polls a feed or channel once; the caller holds its lease. An outcome with items is written
    /// here (events and the source together); the usual outcomes (304, an unchanged body, a
    /// failure) touch only the source row and come back as a [`Done`] for the caller to write,
    /// so the poller can write many in one statement.
    pub(crate) async fn poll_row(&self, row: &SourceRow) -> Result<(PollReport, Option<Done>), Error> {
        let Some(url) = self.poll_url(row) else {
            return Err(Error::new(ErrorCode::ValidationFailed, "only feed and youtube_channel sources are polled"));
        };
        let fetched = self.fetch(row, &url).await;
        let now = Ts::now();
        let mut report = PollReport::default();
        let fresh = |report: &mut PollReport, outcome: &str, next: DateTime<Utc>, validators| {
            report.outcome = outcome.into();
            report.next_run_at = Some(next);
            metrics::counter!("herald_source_polls_total", "outcome" => outcome.to_string()).increment(1);
            Done { id: row.id, next, at: now, kind: DoneKind::Fresh { validators } }
        };
        let failure = match fetched {
            Err(f) => f,
            Ok(Fetched::NotModified { max_age }) => {
                let next = self.next_poll(row, 0, max_age, None);
                let done = fresh(&mut report, "not_modified", next, None);
                return Ok((report, Some(done)));
            }
            Ok(Fetched::Body { body, etag, last_modified, max_age, url }) => {
                let hash = hex::encode(Sha256::digest(&body));
                if row.body_hash.as_deref() == Some(hash.as_str()) && row.baselined {
                    let next = self.next_poll(row, 0, max_age, None);
                    let done = fresh(&mut report, "unchanged", next, Some((etag, last_modified)));
                    return Ok((report, Some(done)));
                }
                match parse_off_the_runtime(body, url).await {
                    Err(e) => Failure::new(e.code(), e.to_string()),
                    Ok(parsed) => {
                        report.outcome = "ok".into();
                        report.items = parsed.items.len();
                        let next = self.next_poll(row, 0, max_age, None);
                        let mut tx = self.db.begin().await?;
                        let applied =
                            apply(&mut tx, row, parsed.items, Mode::Poll { baseline: !row.baselined }).await?;
                        exec!(tx, "UPDATE sources SET etag = $2, last_modified = $3, body_hash = $4, baselined = $5, lease_until = NULL, \
                                   next_run_at = $6, last_run_at = $7, last_ok_at = $7, failures = 0, last_error = NULL, \
                                   last_error_code = NULL WHERE id = $1",
                              row.id, &etag, &last_modified, &hash, true, Ts(next), now).map_err(store)?;
                        tx.commit().await?;
                        report.new_events = applied.new_events;
                        report.updated = applied.updated;
                        report.remembered = applied.remembered;
                        report.next_run_at = Some(next);
                        metrics::counter!("herald_source_polls_total", "outcome" => "ok").increment(1);
                        return Ok((report, None));
                    }
                }
            }
        };
        let failures = row.failures + 1;
        let next = self.next_poll(row, failures, None, failure.retry_after);
        tracing::info!(source = %row.id, code = %failure.code, failures, "poll failed: {}", failure.message);
        metrics::counter!("herald_source_polls_total", "outcome" => "failed").increment(1);
        report.outcome = "failed".into();
        report.error = Some(SourceError { code: failure.code.clone(), message: failure.message.clone() });
        report.next_run_at = Some(next);
        let kind = DoneKind::Failed { failures, code: failure.code, message: failure.message };
        Ok((report, Some(Done { id: row.id, next, at: now, kind })))
    }

    /// Writes the outcomes of finished polls: one statement for the fresh ones and one for the
    /// failed ones (per 100), each clearing its source's lease.
    pub(crate) async fn write_done(&self, done: &[Done]) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        for chunk in done.chunks(100) {
            let (fresh, failed): (Vec<&Done>, Vec<&Done>) =
                chunk.iter().partition(|d| matches!(d.kind, DoneKind::Fresh { .. }));
            if !fresh.is_empty() {
                // Per row: $a id, $a+1 next, $a+2 replace the validators?, $a+3 etag, $a+4 last-modified.
                let arm = |col: &str, k: usize| -> String {
                    let whens: String =
                        (0..fresh.len()).map(|i| format!(" WHEN ${} THEN ${}", 2 + i * 5, 2 + i * 5 + k)).collect();
                    match col {
                        "next_run_at" => format!("next_run_at = CASE id{whens} END"),
                        c => {
                            let whens: String = (0..fresh.len())
                                .map(|i| {
                                    format!(
                                        " WHEN ${} THEN CASE WHEN ${} THEN ${} ELSE {c} END",
                                        2 + i * 5,
                                        4 + i * 5,
                                        2 + i * 5 + k
                                    )
                                })
                                .collect();
                            format!("{c} = CASE id{whens} END")
                        }
                    }
                };
                let ids: Vec<String> = (0..fresh.len()).map(|i| format!("${}", 2 + i * 5)).collect();
                let sql = format!(
                    "UPDATE sources SET lease_until = NULL, last_run_at = $1, last_ok_at = $1, failures = 0, last_error = NULL, \
                     last_error_code = NULL, {}, {}, {} WHERE id IN ({})",
                    arm("next_run_at", 1),
                    arm("etag", 3),
                    arm("last_modified", 4),
                    ids.join(", ")
                );
                on_tx!(tx, c => {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(fresh[0].at);
                    for d in &fresh {
                        let DoneKind::Fresh { validators } = &d.kind else { unreachable!("partitioned") };
                        let (etag, lm) = validators.clone().unwrap_or((None, None));
                        q = q.bind(d.id).bind(Ts(d.next)).bind(validators.is_some()).bind(etag).bind(lm);
                    }
                    q.execute(&mut *c).await.map(|_| ())
                })
                .map_err(store)?;
            }
            if !failed.is_empty() {
                // Per row: $a id, then next, failures, message, code.
                let arm = |col: &str, k: usize| -> String {
                    let whens: String =
                        (0..failed.len()).map(|i| format!(" WHEN ${} THEN ${}", 2 + i * 5, 2 + i * 5 + k)).collect();
                    format!("{col} = CASE id{whens} END")
                };
                let ids: Vec<String> = (0..failed.len()).map(|i| format!("${}", 2 + i * 5)).collect();
                let sql = format!(
                    "UPDATE sources SET lease_until = NULL, last_run_at = $1, {}, {}, {}, {} WHERE id IN ({})",
                    arm("next_run_at", 1),
                    arm("failures", 2),
                    arm("last_error", 3),
                    arm("last_error_code", 4),
                    ids.join(", ")
                );
                on_tx!(tx, c => {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(failed[0].at);
                    for d in &failed {
                        let DoneKind::Failed { failures, code, message } = &d.kind else { unreachable!("partitioned") };
                        q = q.bind(d.id).bind(Ts(d.next)).bind(*failures).bind(message.clone()).bind(code.clone());
                    }
                    q.execute(&mut *c).await.map(|_| ())
                })
                .map_err(store)?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Fires a due schedule (or skips what was missed), and sets its next time.
    pub(crate) async fn fire_row(&self, row: &SourceRow) -> Result<PollReport, Error> {
        let s = row.settings();
        let now = Utc::now();
        let due = row.next_run_at.map(|t| t.0).unwrap_or(now);
        let decision = schedule::decide(&s, due, now);
        let mut tx = self.db.begin().await?;
        let mut report = PollReport { outcome: "ok".into(), ..PollReport::default() };
        if let Some(at) = decision.fire {
            let tz = s.timezone.clone().unwrap_or_else(|| "UTC".into());
            let local = at.with_timezone(&tz.parse::<chrono_tz::Tz>().unwrap_or(chrono_tz::UTC));
            let data = json!({
                "scheduled_for": at,
                "local_time": local.to_rfc3339(),
                "timezone": tz,
                "late_by_secs": (now - at).num_seconds().max(0),
                "missed": decision.skipped,
                "payload": s.payload.clone().unwrap_or(serde_json::Value::Null),
            });
            let external = format!("fire:{}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            if insert_event(&mut tx, row, "schedule.fired", &external, &data, true).await?.is_some() {
                crate::store::bump_count(&mut tx, row.id, 1);
                report.new_events = 1;
            }
        }
        if decision.skipped > 0 {
            tracing::info!(source = %row.id, skipped = decision.skipped, "a schedule missed firings while Herald was down");
        }
        report.remembered = decision.skipped as usize;
        exec!(tx, "UPDATE sources SET lease_until = NULL, next_run_at = $2, last_run_at = $3, last_ok_at = $3, last_fired_at = $4 WHERE id = $1",
              row.id, decision.next.map(Ts), Ts(now), decision.fire.map(Ts)).map_err(store)?;
        tx.commit().await?;
        report.next_run_at = decision.next;
        Ok(report)
    }

    /// Runs one claimed source; what is left to write about it comes back.
    async fn run_claimed(&self, row: &SourceRow) -> Result<(PollReport, Option<Done>), Error> {
        match row.kind() {
            Kind::Schedule => self.fire_row(row).await.map(|r| (r, None)),
            _ => self.poll_row(row).await,
        }
    }

    /// `POST /sources/{id}/poll`: polls a feed or channel now, whatever its schedule. A source
    /// being polled by a node at this moment is a 409.
    pub async fn poll_now(&self, p: &Principal, id: Uuid) -> Result<PollReport, Error> {
        let (team, _) = authorize(p, Action::WriteContent)?;
        let row = self.team_row(team, id).await?;
        if !matches!(row.kind(), Kind::Feed | Kind::YoutubeChannel) {
            return Err(Error::new(
                ErrorCode::ValidationFailed,
                "only feed and youtube_channel sources poll; a schedule fires on its own time",
            ));
        }
        let claimed = self.claim(Some(id), 1, Duration::ZERO).await?;
        let Some(row) = claimed.into_iter().next() else {
            return Err(Error::new(
                ErrorCode::Conflict,
                "this source is being polled right now; try again in a moment",
            ));
        };
        let (report, done) = self.run_claimed(&row).await?;
        if let Some(done) = done {
            self.write_done(&[done]).await?;
        }
        Ok(report)
    }

    /// Claims up to `limit` sources due within `ahead` (or the one `only`, due or not) under a
    /// lease.
    pub(crate) async fn claim(
        &self,
        only: Option<Uuid>,
        limit: usize,
        ahead: Duration,
    ) -> Result<Vec<SourceRow>, Error> {
        let now = Ts::now();
        let horizon = Ts(now.0 + TimeDelta::from_std(ahead).unwrap_or_default());
        let lease = Ts(now.0 + TimeDelta::from_std(self.config.poll_lease).unwrap_or(TimeDelta::seconds(120)));
        let kinds = "kind IN ('feed', 'youtube_channel', 'schedule')";
        let which = if only.is_some() { "id = $4" } else { "next_run_at <= $7" };
        let skip = if self.db.backend() == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE sources SET lease_until = $2 WHERE id IN (SELECT id FROM sources WHERE {which} AND active = $5 AND deleted = $6 \
             AND {kinds} AND (lease_until IS NULL OR lease_until < $1) ORDER BY next_run_at LIMIT $3{skip}) RETURNING {SOURCE_COLS}"
        );
        let mut tx = self.db.begin().await?;
        let rows: Vec<SourceRow> =
            on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(now).bind(lease).bind(limit as i64)
            .bind(only.unwrap_or_default()).bind(true).bind(false).bind(horizon).fetch_all(&mut *c).await)
            .map_err(store)?;
        tx.commit().await?;
        Ok(rows)
    }

    /// When the earliest active timed source is due.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        // Sources under a lease are being run; a lapsed lease is seen within the loop's second.
        let sql = "SELECT MIN(next_run_at) FROM sources WHERE active = $1 AND deleted = $2 \
                   AND kind IN ('feed', 'youtube_channel', 'schedule') AND (lease_until IS NULL OR lease_until < $3)";
        let row: (Option<Ts>,) =
            herald_store::on_read!(self.db, c => sqlx::query_as(sql).bind(true).bind(false).bind(Ts::now())
            .fetch_one(c).await)
            .map_err(store)?;
        Ok(row.0.map(|t| t.0))
    }
}

/// What a finished poll leaves to write about its source.
pub(crate) struct Done {
    id: Uuid,
    next: DateTime<Utc>,
    at: Ts,
    kind: DoneKind,
}

pub(crate) enum DoneKind {
    /// A 304 or an unchanged body; `validators` (ETag, Last-Modified) replace the stored ones
    /// when the answer was a 200.
    Fresh {
        validators: Option<(Option<String>, Option<String>)>,
    },
    Failed {
        failures: i64,
        code: String,
        message: String,
    },
}

/// Claims reach this far ahead, and the claimed polls start together: one claim and one burst
/// of work a second instead of a claim and a wake-up per poll. A poll is never late for it, at
/// most this early.
const CLAIM_AHEAD: Duration = Duration::from_secs(1);
/// Finished polls are written together once this much has gathered (or at most this late).
const WRITE_EVERY: Duration = Duration::from_millis(200);

/// Parses a feed; a large one on the blocking pool, since sanitising a few megabytes of HTML can
/// take a while and would hold up every other task on this runtime thread.
async fn parse_off_the_runtime(body: Vec<u8>, url: url::Url) -> Result<feed::ParsedFeed, feed::FeedError> {
    if body.len() < 256 << 10 {
        return feed::parse(&body, Some(&url));
    }
    match tokio::task::spawn_blocking(move || feed::parse(&body, Some(&url))).await {
        Ok(parsed) => parsed,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The loop that runs due sources on a worker node.
pub struct Poller {
    sources: Sources,
    /// Polls running at once.
    concurrency: usize,
    /// Told each run's lateness (`herald bench feeds` watches the schedule with it).
    observe: Option<Arc<dyn Fn(Duration) + Send + Sync>>,
}

impl Poller {
    pub fn new(sources: Sources, concurrency: usize) -> Poller {
        Poller { sources, concurrency: concurrency.max(1), observe: None }
    }

    /// Calls `f` as each run starts with its lateness: the time from its `next_run_at` to now.
    pub fn observe(mut self, f: Arc<dyn Fn(Duration) + Send + Sync>) -> Poller {
        self.observe = Some(f);
        self
    }

    /// Runs until `shutdown`; polls in flight finish (or their lease lapses and another node
    /// takes them).
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let wake = self.sources.db.wakeups().channel(WAKE);
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
        let writer = tokio::spawn(write_batches(self.sources.clone(), done_rx));
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let free = permits.available_permits();
            if free == 0 {
                // Every slot is busy (slow feeds): wait for one to free up.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = permits.clone().acquire_owned() => drop(p),
                }
                continue;
            }
            let claimed = self.sources.claim(None, free, CLAIM_AHEAD).await;
            let n = match claimed {
                Ok(rows) => {
                    let n = rows.len();
                    for row in rows {
                        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
                        let (sources, observe, done_tx) = (self.sources.clone(), self.observe.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            // Claimed up to CLAIM_AHEAD early, and started at once: a burst of
                            // polls a second costs far fewer wake-ups than one timer per poll.
                            let due = row.next_run_at.map_or(Utc::now(), |t| t.0);
                            // A schedule fires on its time, never early.
                            if row.kind() == Kind::Schedule
                                && let Ok(wait) = (due - Utc::now()).to_std()
                            {
                                tokio::time::sleep(wait).await;
                            }
                            let late = (Utc::now() - due).num_milliseconds().max(0);
                            metrics::histogram!("herald_source_poll_lateness_seconds").record(late as f64 / 1000.0);
                            if let Some(f) = observe {
                                f(Duration::from_millis(late as u64));
                            }
                            match sources.run_claimed(&row).await {
                                Ok((_, Some(done))) => {
                                    let _ = done_tx.send(done);
                                }
                                Ok((_, None)) => {}
                                // The lease lapses and the source is retried; say why.
                                Err(e) => tracing::warn!(source = %row.id, "a source run failed: {e}"),
                            }
                            drop(permit);
                        });
                    }
                    n
                }
                Err(e) => {
                    tracing::warn!("claiming due sources failed: {e}");
                    0
                }
            };
            if n > 0 && n == free {
                continue;
            }
            // Everything due within the horizon is claimed (or every slot is busy), so sleeping
            // half the horizon still claims each source before its time: at most two claims a
            // second, however many sources. Longer when nothing is near; a change wakes it.
            let until_due = match self.sources.next_due().await {
                Ok(Some(t)) => (t - Utc::now()).to_std().unwrap_or(Duration::ZERO).saturating_sub(CLAIM_AHEAD),
                _ => Duration::from_secs(1),
            };
            let nap = until_due.clamp(CLAIM_AHEAD / 2, Duration::from_secs(1));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(nap) => {}
                _ = wake.notified() => {}
            }
        }
        // Polls still running hold the sender; wait a little for their outcomes, or let their
        // leases lapse (they are polled again, which is harmless).
        drop(done_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
}

/// Writes finished polls in batches: whatever arrived within [`WRITE_EVERY`] of the first.
async fn write_batches(sources: Sources, mut rx: tokio::sync::mpsc::UnboundedReceiver<Done>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + WRITE_EVERY;
        while batch.len() < 500 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(d)) => batch.push(d),
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = sources.write_done(&batch).await {
            // Their leases lapse and they are polled again.
            tracing::warn!(n = batch.len(), "writing poll outcomes failed: {e}");
        }
    }
}

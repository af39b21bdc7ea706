//! The stats collector: engagement snapshots of published deliveries, on a schedule that thins out
//! with age, and the time series `GET /api/v1/posts/{id}/stats` shows.
//!
//! Each round claims the deliveries that are due (published within the maximum age, never fetched
//! or past their `stats_next_at`) in one statement, so nodes sharing a database split the work
//! instead of repeating it. Deliveries are grouped by connection: each connection's are fetched one
//! after another (a rotated session carries on to the next call, and a rate limit stops the rest),
//! up to [`CONCURRENCY`] connections at once. Every fetch is stored as a timestamped snapshot.

use crate::model::DeliveryState;
use crate::store::{Posts, store};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use herald_accounts::{Principal, authorize};
use herald_connections::Status;
use herald_core::{Action, Error, ErrorCode};
use herald_platforms::{ErrorClass, Metrics};
use herald_store::{Ts, exec, on_read, on_tx};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// Deliveries claimed per round; the rest wait for the next round a minute later.
pub const BATCH: i64 = 200;
/// Connections fetched from at once.
pub const CONCURRENCY: usize = 8;
/// A claimed delivery is due again after this long if its node dies before recording the fetch.
const CLAIM: Duration = Duration::from_secs(600);

/// How often a delivery is fetched, by its age: every 15 minutes for the first 6 hours, every
/// 6 hours until 2 days, then daily, until the maximum age.
pub const SCHEDULE: [(Duration, Duration); 3] = [
    (Duration::from_secs(6 * 3600), Duration::from_secs(15 * 60)),
    (Duration::from_secs(48 * 3600), Duration::from_secs(6 * 3600)),
    (Duration::MAX, Duration::from_secs(24 * 3600)),
];

/// The `stats_next_at` of a delivery that is never fetched again: past its maximum age, or on a
/// platform that gives no counts. A time rather than NULL, since NULL means "never fetched, due
/// now"; far enough ahead that no schedule reaches it.
pub fn never() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 1, 1, 0, 0, 0).single().expect("a valid date")
}

/// When a delivery published at `published` and fetched at `now` is next due, or `None` once the
/// next fetch would be past `max_age`.
pub fn next_fetch(published: DateTime<Utc>, now: DateTime<Utc>, max_age: Duration) -> Option<DateTime<Utc>> {
    let age = (now - published).to_std().unwrap_or_default();
    let every = SCHEDULE.iter().find(|(until, _)| age < *until).map_or(SCHEDULE[2].1, |(_, every)| *every);
    let next = now + chrono::Duration::from_std(every).ok()?;
    ((next - published).to_std().unwrap_or_default() <= max_age).then_some(next)
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Deliveries that were due and claimed.
    pub due: usize,
    /// Snapshots stored.
    pub stored: usize,
    /// Deliveries on platforms (or connections) that give no counts: never fetched again.
    pub unsupported: usize,
    /// Fetches that failed; they are tried again at their next time.
    pub failed: usize,
    /// Fetches put off by a platform's rate limit, until the time it asked for.
    pub rate_limited: usize,
    /// Deliveries of connections that need re-authorising, left for their next time.
    pub skipped: usize,
}

impl CollectReport {
    fn add(&mut self, o: &CollectReport) {
        self.due += o.due;
        self.stored += o.stored;
        self.unsupported += o.unsupported;
        self.failed += o.failed;
        self.rate_limited += o.rate_limited;
        self.skipped += o.skipped;
    }
}

/// One snapshot of a delivery's engagement.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Snapshot {
    pub fetched_at: DateTime<Utc>,
    /// The platform's counts: `likes`, `reposts`, `replies`, `quotes` (Bluesky); `favourites`,
    /// `reblogs`, `replies` (Mastodon); `reactions` and `reactions:<emoji>` (Matrix, Nostr).
    pub metrics: BTreeMap<String, i64>,
}

/// The series of one delivery, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryStats {
    pub delivery_id: Uuid,
    pub platform: String,
    pub connection_id: Uuid,
    pub state: DeliveryState,
    pub snapshots: Vec<Snapshot>,
}

/// `GET /api/v1/posts/{id}/stats`: every delivery of the post with its snapshots.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostStats {
    pub post_id: Uuid,
    pub deliveries: Vec<DeliveryStats>,
}

#[derive(sqlx::FromRow, Clone)]
struct Due {
    id: Uuid,
    team_id: Uuid,
    connection_id: Uuid,
    platform: String,
    platform_post_id: String,
    published_at: Ts,
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    delivery_id: Uuid,
    fetched_at: Ts,
    metrics: String,
}

/// What became of one delivery in a round.
enum Outcome {
    Stored(Metrics),
    Unsupported,
    Failed,
    /// Put off until this time (a rate limit).
    Later(DateTime<Utc>),
    Skipped,
}

impl Posts {
    /// One round of the collector: claims up to [`BATCH`] due deliveries, fetches their metrics,
    /// stores a snapshot of each, and sets when each is next due.
    pub async fn collect_stats(&self, max_age: Duration) -> Result<CollectReport, Error> {
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let claim = now + chrono::Duration::from_std(CLAIM).unwrap_or_default();
        // The outer condition is checked again on rows another node changed meanwhile
        // (PostgreSQL re-reads a locked row), so a delivery is claimed by one node only.
        let sql = format!(
            "UPDATE deliveries SET stats_next_at = $1 WHERE id IN (\
               SELECT id FROM deliveries WHERE state = 'published' AND platform_post_id IS NOT NULL \
               AND published_at >= $2 AND (stats_next_at IS NULL OR stats_next_at <= $3) \
               ORDER BY COALESCE(stats_next_at, published_at) LIMIT {BATCH}) \
             AND (stats_next_at IS NULL OR stats_next_at <= $3) \
             RETURNING id, team_id, connection_id, platform, platform_post_id, published_at"
        );
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let due: Vec<Due> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(Ts(claim)).bind(Ts(cutoff)).bind(Ts(now)).fetch_all(&mut *c).await)
        .map_err(store)?;
        tx.commit().await.map_err(Error::from)?;

        let mut groups: HashMap<(Uuid, Uuid), Vec<Due>> = HashMap::new();
        for d in due {
            groups.entry((d.team_id, d.connection_id)).or_default().push(d);
        }
        let results: Vec<Result<CollectReport, Error>> = futures::stream::iter(groups.into_values())
            .map(|group| self.collect_connection(group, max_age))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut report = CollectReport::default();
        for r in results {
            report.add(&r?);
        }
        Ok(report)
    }

    /// Fetches the deliveries of one connection, one after another.
    async fn collect_connection(&self, group: Vec<Due>, max_age: Duration) -> Result<CollectReport, Error> {
        let (team, connection) = (group[0].team_id, group[0].connection_id);
        let mut report = CollectReport { due: group.len(), ..CollectReport::default() };
        let loaded = match self.connections.load(team, connection).await {
            Ok(l) => Some(l),
            // The connection is gone: nothing can be read with it again.
            Err(e) if e.code == ErrorCode::NotFound => None,
            Err(e) => {
                tracing::warn!(%connection, "stats: the connection cannot be loaded: {e}");
                for d in &group {
                    self.record(d, Outcome::Failed, max_age).await?;
                }
                report.failed += group.len();
                return Ok(report);
            }
        };
        let adapter = herald_platforms::adapter(&group[0].platform);
        let (Some(loaded), Some(adapter)) = (loaded, adapter) else {
            for d in &group {
                self.record(d, Outcome::Unsupported, max_age).await?;
            }
            report.unsupported += group.len();
            return Ok(report);
        };
        if loaded.view.status == Status::NeedsReauth {
            for d in &group {
                self.record(d, Outcome::Skipped, max_age).await?;
            }
            report.skipped += group.len();
            return Ok(report);
        }

        let mut conn = loaded.connection;
        // Set once the platform refuses this connection for the round (a rate limit, or the
        // credentials): the deliveries left are not asked about.
        let mut stop: Option<Outcome> = None;
        for d in &group {
            let outcome = match &stop {
                Some(Outcome::Later(at)) => Outcome::Later(*at),
                Some(_) => Outcome::Skipped,
                None => {
                    // Each call is bounded by its client's timeouts (Nostr: its wait per relay).
                    match adapter.metrics(self.connections.net(), &conn, &d.platform_post_id).await {
                        Ok(Some(m)) => {
                            if let Some(c) = &m.credentials {
                                self.connections.store_credentials(team, connection, c).await?;
                                conn.credentials = c.clone();
                            }
                            Outcome::Stored(m)
                        }
                        Ok(None) => Outcome::Unsupported,
                        Err(e) if e.class == ErrorClass::RateLimited => {
                            let wait = e.retry_after.unwrap_or(Duration::from_secs(60));
                            let at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                            tracing::info!(delivery = %d.id, platform = %d.platform, "stats: rate limited for {}s: {e}", wait.as_secs());
                            stop = Some(Outcome::Later(at));
                            Outcome::Later(at)
                        }
                        Err(e) => {
                            tracing::info!(delivery = %d.id, platform = %d.platform, "stats: the fetch failed: {e}");
                            if e.class == ErrorClass::Auth {
                                stop = Some(Outcome::Skipped);
                            }
                            Outcome::Failed
                        }
                    }
                }
            };
            match &outcome {
                Outcome::Stored(_) => report.stored += 1,
                Outcome::Unsupported => report.unsupported += 1,
                Outcome::Failed => report.failed += 1,
                Outcome::Later(_) => report.rate_limited += 1,
                Outcome::Skipped => report.skipped += 1,
            }
            self.record(d, outcome, max_age).await?;
        }
        Ok(report)
    }

    /// Stores the snapshot, if there is one, and when the delivery is next due, in one commit.
    async fn record(&self, d: &Due, outcome: Outcome, max_age: Duration) -> Result<(), Error> {
        let now = Utc::now();
        let scheduled = next_fetch(d.published_at.0, now, max_age).unwrap_or_else(never);
        let next = match &outcome {
            Outcome::Unsupported => never(),
            Outcome::Later(at) => *at,
            Outcome::Stored(_) | Outcome::Failed | Outcome::Skipped => scheduled,
        };
        metrics::counter!("herald_stats_fetches_total", "outcome" => match outcome {
            Outcome::Stored(_) => "stored",
            Outcome::Unsupported => "unsupported",
            Outcome::Failed => "failed",
            Outcome::Later(_) => "rate_limited",
            Outcome::Skipped => "skipped",
        })
        .increment(1);
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        if let Outcome::Stored(m) = &outcome {
            exec!(
                tx,
                "INSERT INTO delivery_stats (id, team_id, delivery_id, fetched_at, metrics) VALUES ($1, $2, $3, $4, $5)",
                Uuid::now_v7(),
                d.team_id,
                d.id,
                Ts(now),
                serde_json::to_string(m).unwrap_or_else(|_| "{}".into())
            )
            .map_err(store)?;
        }
        exec!(tx, "UPDATE deliveries SET stats_next_at = $2 WHERE id = $1", d.id, Ts(next)).map_err(store)?;
        tx.commit().await.map_err(Error::from)
    }

    /// The engagement series of every delivery of a post, for anyone who may read the team's posts.
    pub async fn stats(&self, p: &Principal, post: Uuid) -> Result<PostStats, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        self.post_row(team, post).await?;
        let deliveries = self.delivery_rows(post).await?;
        let rows: Vec<SnapshotRow> = on_read!(self.db, c => sqlx::query_as(
            "SELECT s.delivery_id, s.fetched_at, s.metrics FROM delivery_stats s JOIN deliveries d ON d.id = s.delivery_id \
             WHERE d.post_id = $1 AND s.team_id = $2 ORDER BY s.fetched_at, s.id")
            .bind(post).bind(team).fetch_all(c).await)
        .map_err(store)?;
        let mut series: HashMap<Uuid, Vec<Snapshot>> = HashMap::new();
        for r in rows {
            let metrics = serde_json::from_str(&r.metrics).unwrap_or_default();
            series.entry(r.delivery_id).or_default().push(Snapshot { fetched_at: r.fetched_at.0, metrics });
        }
        let deliveries = deliveries
            .iter()
            .map(|d| DeliveryStats {
                delivery_id: d.id,
                platform: d.platform.clone(),
                connection_id: d.connection_id,
                state: d.state(),
                snapshots: series.remove(&d.id).unwrap_or_default(),
            })
            .collect();
        Ok(PostStats { post_id: post, deliveries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30 * 86_400);

    fn at(published: DateTime<Utc>, hours: f64) -> DateTime<Utc> {
        published + chrono::Duration::seconds((hours * 3600.0) as i64)
    }

    #[test]
    fn the_schedule_thins_out_with_age_and_stops_at_the_maximum() {
        let p = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let gap = |hours: f64| next_fetch(p, at(p, hours), MAX).map(|n| (n - at(p, hours)).num_minutes());
        // Every 15 minutes in the first 6 hours.
        assert_eq!(gap(0.0), Some(15));
        assert_eq!(gap(5.9), Some(15));
        // Every 6 hours until 2 days.
        assert_eq!(gap(6.0), Some(360));
        assert_eq!(gap(47.0), Some(360));
        // Daily after that.
        assert_eq!(gap(48.0), Some(1440));
        assert_eq!(gap(28.0 * 24.0), Some(1440));
        // Never past the maximum age.
        assert_eq!(gap(29.0 * 24.0), Some(1440), "the last fetch lands exactly on 30 days");
        assert_eq!(gap(29.5 * 24.0), None);
        assert_eq!(gap(40.0 * 24.0), None);
        // A short maximum cuts the frequent phase too.
        assert_eq!(next_fetch(p, at(p, 1.0), Duration::from_secs(3600)), None);
        assert!(next_fetch(p, p, Duration::from_secs(3600)).is_some());
        // A clock behind the publish time counts as age zero.
        assert_eq!(next_fetch(p, at(p, -1.0), MAX).map(|n| (n - at(p, -1.0)).num_minutes()), Some(15));
    }

    #[test]
    fn a_whole_life_is_a_bounded_number_of_fetches() {
        let p = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let (mut now, mut n) = (p, 0);
        while let Some(next) = next_fetch(p, now, MAX) {
            now = next;
            n += 1;
        }
        // After the first fetch: 24 more in the first 6 h, 7 until 2 days, then one a day until 30 days.
        assert_eq!(n, 24 + 7 + 28);
        assert!(now - p <= chrono::Duration::days(30));
        assert!(never() > p + chrono::Duration::days(365 * 1000));
    }
}

//! Group commit for the delivery hot path.
//!
//! Hundreds of delivery jobs run at once. One by one, each would spend a dozen statements and two
//! commits of its own on the database (on SQLite, all through its single writer). Instead, each
//! job hands its start (load, then mark the call in flight) and its success (the outcome, the
//! attempt, the post's new state) to a task that does whatever has gathered in one transaction of
//! a few statements. The guarantees are those of the one-by-one path: a call is marked in flight,
//! committed, before it is made, and a job reports success only after its outcome is committed.
//! Anything out of the ordinary (a retry, a call left in flight, a late delivery, a connection to
//! re-authorise, a failure) takes the one-by-one path in `worker.rs`, which explains itself.

use crate::store::{DELIVERY_COLS, DeliveryRow, POST_COLS, PostRow, Posts, refresh_posts, store};
use chrono::{DateTime, Utc};
use herald_connections::{Loaded, Status};
use herald_core::Error;
use herald_store::placeholders;
use herald_store::{Ts, on_read, on_tx};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The most jobs one transaction serves; whatever arrives meanwhile waits for the next.
const MAX_BATCH: usize = 200;

/// A delivery marked in flight, with what its call needs.
pub(crate) struct Ready {
    pub d: DeliveryRow,
    pub post: PostRow,
    pub loaded: Loaded,
    pub marked_at: DateTime<Utc>,
}

pub(crate) enum Start {
    /// Marked in flight and committed: make the call.
    Go(Box<Ready>),
    /// Take the one-by-one path; nothing was written.
    Slow,
    /// Nothing to do: the delivery is gone, finished, or was cancelled meanwhile.
    Done,
}

/// A delivery whose last part the platform accepted.
pub(crate) struct Success {
    pub delivery: Uuid,
    pub post: Uuid,
    /// JSON array of the published parts; the first names the post.
    pub parts: String,
    pub platform_post_id: Option<String>,
    pub platform_url: Option<String>,
    pub part: i64,
    pub started: DateTime<Utc>,
    pub ms: i64,
}

type Reply<T> = oneshot::Sender<T>;

pub(crate) struct Batcher {
    starts: mpsc::UnboundedSender<(Uuid, Reply<Start>)>,
    successes: mpsc::UnboundedSender<(Success, Reply<Result<(), Error>>)>,
}

impl Batcher {
    /// Starts the two tasks; they end when the batcher is dropped.
    pub fn spawn(posts: Posts) -> Batcher {
        let (starts, start_rx) = mpsc::unbounded_channel();
        let (successes, success_rx) = mpsc::unbounded_channel();
        tokio::spawn(start_loop(posts.clone(), start_rx));
        tokio::spawn(success_loop(posts, success_rx));
        Batcher { starts, successes }
    }

    pub async fn start(&self, delivery: Uuid) -> Start {
        let (tx, rx) = oneshot::channel();
        if self.starts.send((delivery, tx)).is_err() {
            return Start::Slow;
        }
        rx.await.unwrap_or(Start::Slow)
    }

    /// Records a success; an error means it may not be recorded, and the caller records it alone.
    pub async fn published(&self, s: Success) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.successes.send((s, tx)).map_err(|_| Error::internal("the delivery batcher stopped"))?;
        rx.await.map_err(|_| Error::internal("the delivery batcher stopped"))?
    }
}

/// Waits for one item, then takes whatever else is already waiting, up to [`MAX_BATCH`].
async fn gather<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(x) => batch.push(x),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn start_loop(posts: Posts, mut rx: mpsc::UnboundedReceiver<(Uuid, Reply<Start>)>) {
    while let Some(batch) = gather(&mut rx).await {
        let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
        match start_batch(&posts, &ids).await {
            Ok(mut started) => {
                for (id, reply) in batch {
                    let _ = reply.send(started.remove(&id).unwrap_or(Start::Slow));
                }
            }
            Err(e) => {
                // Nothing was marked; each job finds its own way, and reports its own error.
                tracing::warn!(error = %e, jobs = batch.len(), "starting deliveries together failed; starting them one by one");
                for (_, reply) in batch {
                    let _ = reply.send(Start::Slow);
                }
            }
        }
    }
}

async fn success_loop(posts: Posts, mut rx: mpsc::UnboundedReceiver<(Success, Reply<Result<(), Error>>)>) {
    while let Some(batch) = gather(&mut rx).await {
        let (items, replies): (Vec<Success>, Vec<_>) = batch.into_iter().unzip();
        let result = success_batch(&posts, &items).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, jobs = items.len(), "recording deliveries together failed; recording them one by one");
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

#[derive(sqlx::FromRow)]
struct PostWithPolicy {
    #[sqlx(flatten)]
    post: PostRow,
    late_limit_secs: Option<i64>,
}

/// Loads the deliveries, their posts and connections in three reads, and marks those that can go
/// the usual way in flight in one transaction.
async fn start_batch(posts: &Posts, ids: &[Uuid]) -> Result<HashMap<Uuid, Start>, Error> {
    let sql = format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE id IN ({})", placeholders(1, ids.len()));
    let rows: Vec<DeliveryRow> = on_read!(posts.db, c => {
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
        for id in ids { q = q.bind(*id); }
        q.fetch_all(c).await
    })
    .map_err(store)?;
    let mut out: HashMap<Uuid, Start> = ids.iter().map(|id| (*id, Start::Done)).collect();
    let live: Vec<DeliveryRow> = rows.into_iter().filter(|d| !d.state().is_final()).collect();
    if live.is_empty() {
        return Ok(out);
    }

    let mut post_ids: Vec<Uuid> = live.iter().map(|d| d.post_id).collect();
    post_ids.sort_unstable();
    post_ids.dedup();
    let cols = POST_COLS.split(", ").map(|c| format!("p.{c}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {cols}, t.late_limit_secs FROM posts p JOIN teams t ON t.id = p.team_id WHERE p.id IN ({})",
        placeholders(1, post_ids.len())
    );
    let post_rows: Vec<PostWithPolicy> = on_read!(posts.db, c => {
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
        for id in &post_ids { q = q.bind(*id); }
        q.fetch_all(c).await
    })
    .map_err(store)?;
    let by_post: HashMap<Uuid, PostWithPolicy> = post_rows.into_iter().map(|p| (p.post.id, p)).collect();

    let mut by_team: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for d in &live {
        by_team.entry(d.team_id).or_default().push(d.connection_id);
    }
    let mut connections: HashMap<Uuid, Loaded> = HashMap::new();
    for (team, conns) in by_team {
        connections.extend(posts.connections.load_many(team, &conns).await?);
    }

    // The usual way: a first try, due within the team's late limit, to a healthy connection.
    let now = Utc::now();
    let usual = |d: &DeliveryRow| -> bool {
        let Some(p) = by_post.get(&d.post_id) else { return false };
        let due = d.run_at.map(|t| t.0).unwrap_or(p.post.created_at.0);
        d.attempts == 0
            && d.call_started_at.is_none()
            && d.first_attempt_at.is_none()
            && p.late_limit_secs.is_none_or(|limit| (now - due).num_seconds() <= limit)
            && connections.get(&d.connection_id).is_some_and(|l| l.view.status != Status::NeedsReauth)
            && herald_platforms::adapter(&d.platform).is_some()
    };
    let (go, slow): (Vec<DeliveryRow>, Vec<DeliveryRow>) = live.into_iter().partition(|d| usual(d));
    for d in slow {
        out.insert(d.id, Start::Slow);
    }
    if go.is_empty() {
        return Ok(out);
    }

    let mut tx = posts.db.begin().await.map_err(Error::from)?;
    let sql = format!(
        "UPDATE deliveries SET state = 'publishing', call_started_at = $1, first_attempt_at = COALESCE(first_attempt_at, $1), \
         attempts = attempts + 1, updated_at = $1 \
         WHERE state IN ('pending', 'scheduled', 'publishing') AND call_started_at IS NULL AND id IN ({}) RETURNING id",
        placeholders(2, go.len())
    );
    let marked: Vec<Uuid> = on_tx!(tx, c => {
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).bind(Ts(now));
        for d in &go { q = q.bind(d.id); }
        q.fetch_all(&mut *c).await
    })
    .map_err(store)?;
    // The only change a start makes to a post: a scheduled one starts publishing.
    let mut started_posts: Vec<Uuid> = go.iter().filter(|d| marked.contains(&d.id)).map(|d| d.post_id).collect();
    started_posts.sort_unstable();
    started_posts.dedup();
    if !started_posts.is_empty() {
        let sql = format!(
            "UPDATE posts SET state = 'publishing', updated_at = $1 WHERE state = 'scheduled' AND id IN ({})",
            placeholders(2, started_posts.len())
        );
        on_tx!(tx, c => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(Ts(now));
            for id in &started_posts { q = q.bind(*id); }
            q.execute(&mut *c).await.map(|r| r.rows_affected())
        })
        .map_err(store)?;
    }
    tx.commit().await.map_err(Error::from)?;

    for d in go {
        if !marked.contains(&d.id) {
            continue; // cancelled meanwhile: stays Done
        }
        let (Some(p), Some(loaded)) = (by_post.get(&d.post_id), connections.get(&d.connection_id)) else {
            continue; // unreachable: `usual` checked both
        };
        let ready = Ready { post: p.post.clone(), loaded: loaded.clone(), marked_at: now, d };
        out.insert(ready.d.id, Start::Go(Box::new(ready)));
    }
    Ok(out)
}

/// Records the outcomes, the attempts and the posts' new states in one transaction.
async fn success_batch(posts: &Posts, items: &[Success]) -> Result<(), Error> {
    let now = Ts::now();
    let mut tx = posts.db.begin().await.map_err(Error::from)?;
    // $1 is the time; then four per delivery: id, parts, platform id, URL.
    let case = |value: usize| {
        let whens: String =
            (0..items.len()).map(|i| format!(" WHEN ${} THEN ${}", 2 + 4 * i, 2 + 4 * i + value)).collect();
        format!("CASE id{whens} END")
    };
    let ids = (0..items.len()).map(|i| format!("${}", 2 + 4 * i)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "UPDATE deliveries SET state = 'published', parts = {}, platform_post_id = {}, platform_url = {}, \
         call_started_at = NULL, last_error = NULL, last_error_class = NULL, published_at = $1, updated_at = $1 \
         WHERE id IN ({ids})",
        case(1),
        case(2),
        case(3)
    );
    on_tx!(tx, c => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(now);
        for s in items {
            q = q.bind(s.delivery).bind(&s.parts).bind(&s.platform_post_id).bind(&s.platform_url);
        }
        q.execute(&mut *c).await.map(|r| r.rows_affected())
    })
    .map_err(store)?;

    let values = (0..items.len())
        .map(|i| {
            let b = 5 * i;
            format!("(${}, ${}, ${}, ${}, ${}, 'published')", b + 1, b + 2, b + 3, b + 4, b + 5)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO delivery_attempts (id, delivery_id, part, started_at, duration_ms, outcome) VALUES {values}"
    );
    on_tx!(tx, c => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for s in items {
            q = q.bind(Uuid::now_v7()).bind(s.delivery).bind(s.part).bind(Ts(s.started)).bind(s.ms);
        }
        q.execute(&mut *c).await.map(|r| r.rows_affected())
    })
    .map_err(store)?;

    let post_ids: Vec<Uuid> = items.iter().map(|s| s.post).collect();
    refresh_posts(&mut tx, &post_ids).await?;
    tx.commit().await.map_err(Error::from)
}

//! Group commit for the delivery hot path.
//!
//! Hundreds of delivery jobs run at once. One by one, each would spend a dozen statements and
//! three commits of its own on the database (on SQLite, all through its single writer). Instead,
//! each job hands its start (load, then mark the call in flight) and its success (the outcome, the
//! attempt, the post's new state, the job's success) to one task, which writes whatever has
//! gathered in one transaction of a few statements. The guarantees are those of the one-by-one
//! path: a call is marked in flight, committed, before it is made, and a job reports success only
//! after its outcome is committed (here with the job's own success, so the runner writes nothing
//! more).
//! Anything out of the ordinary (a retry, a call left in flight, a late delivery, a connection to
//! re-authorise, a failure) takes the one-by-one path in `worker.rs`, which explains itself.

use crate::events::Endpoints;
use crate::model::PostState;
use crate::store::{DELIVERY_COLS, DeliveryRow, POST_COLS, PostRow, Posts, refresh_posts, store};
use chrono::{DateTime, TimeDelta, Utc};
use herald_connections::{Loaded, Status};
use herald_core::Error;
use herald_queue::{Finished, Queue};
use herald_store::{Backend, Pools, Ts, Tx, on_read};
use herald_store::{Ids, column};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use uuid::Uuid;

/// The most jobs one transaction serves; whatever arrives meanwhile waits for the next.
const MAX_BATCH: usize = 200;

/// Deliveries due now that this process has just written, as it wrote them, with their posts:
/// their start takes them from here instead of reading them back. On PostgreSQL, between a
/// post's commit and its first request, that leaves two waits of three (the connection's read
/// and the mark; the deliveries' read went, and the posts' read beside the connections'). One per
/// database in the process ([`herald_store::Tx::local`]); filled when the post's transaction
/// commits.
///
/// A row kept here is only what was written. Should the delivery change before its start (an
/// edit, a cancel), the start's mark finds its `updated_at` moved from its `created_at` and leaves
/// it to the one-by-one path, which reads it afresh. A row whose post was made longer than
/// [`WRITTEN_FOR`] ago is read instead, so the team's late limit (whole seconds, read with the
/// post) still holds.
#[derive(Default)]
pub(crate) struct Written(Mutex<Kept>);

#[derive(Default)]
struct Kept {
    rows: HashMap<Uuid, WrittenRow>,
    /// When the rows were last swept for old ones. Full of young rows (posts come faster than
    /// their jobs start), every post's commit swept all of them and freed none: a twentieth of
    /// the writer's thread in `herald bench deliveries`. So a sweep waits a while after the last.
    swept: Option<DateTime<Utc>>,
}

/// A delivery as written, with its post.
pub(crate) type WrittenRow = (DeliveryRow, Arc<PostRow>);

/// How long after its post was made a written row stands in for reading it.
const WRITTEN_FOR: TimeDelta = TimeDelta::seconds(1);
/// The most rows kept; past it, old ones go, and new ones are not kept until there is room.
const WRITTEN_MOST: usize = 4_096;

/// Whether a row written for `post` may still stand in for reading it.
fn young(post: &PostRow, now: DateTime<Utc>) -> bool {
    now - post.created_at.0 < WRITTEN_FOR
}

impl Written {
    /// Keeps `rows` (call once their transaction has committed).
    pub(crate) fn keep(&self, rows: Vec<WrittenRow>) {
        let mut kept = self.0.lock().expect("written lock");
        let now = Utc::now();
        if kept.rows.len() + rows.len() > WRITTEN_MOST && kept.swept.is_none_or(|t| now - t >= WRITTEN_FOR / 4) {
            // Rows whose job started on another node, or never did (a cancel): never taken.
            kept.rows.retain(|_, (_, post)| young(post, now));
            kept.swept = Some(now);
        }
        for (d, post) in rows {
            if kept.rows.len() >= WRITTEN_MOST {
                break;
            }
            kept.rows.insert(d.id, (d, post));
        }
    }

    /// Takes the rows of `ids` kept, those still young enough to stand in for a read.
    fn take(&self, ids: &[Uuid]) -> Vec<WrittenRow> {
        let mut kept = self.0.lock().expect("written lock");
        if kept.rows.is_empty() {
            return Vec::new();
        }
        let now = Utc::now();
        ids.iter().filter_map(|id| kept.rows.remove(id)).filter(|(_, post)| young(post, now)).collect()
    }
}

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
    pub team: Uuid,
    /// JSON array of the published parts; the first names the post.
    pub parts: String,
    pub platform_post_id: Option<String>,
    pub platform_url: Option<String>,
    pub part: i64,
    pub started: DateTime<Utc>,
    pub ms: i64,
    /// The delivery's job, recorded as succeeded with it.
    pub job: Finished,
}

type Reply<T> = oneshot::Sender<T>;

enum Ask {
    Start(Uuid, Reply<Start>),
    Published(Box<Success>, Reply<Result<(), Error>>),
}

pub(crate) struct Batcher {
    asks: mpsc::UnboundedSender<Ask>,
}

impl Batcher {
    /// Starts the writing task; it ends when the batcher is dropped.
    pub fn spawn(posts: Posts) -> Batcher {
        let (asks, rx) = mpsc::unbounded_channel();
        posts.db.clone().spawn_writing(write_loop(posts, rx));
        Batcher { asks }
    }

    pub async fn start(&self, delivery: Uuid) -> Start {
        let (tx, rx) = oneshot::channel();
        if self.asks.send(Ask::Start(delivery, tx)).is_err() {
            return Start::Slow;
        }
        rx.await.unwrap_or(Start::Slow)
    }

    /// Records a success; an error means it may not be recorded, and the caller records it alone.
    pub async fn published(&self, s: Success) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.asks.send(Ask::Published(Box::new(s), tx)).map_err(|_| Error::internal("the delivery batcher stopped"))?;
        rx.await.map_err(|_| Error::internal("the delivery batcher stopped"))?
    }
}

/// Each round takes whatever has gathered (up to [`MAX_BATCH`]): it reads what the starts need,
/// then marks the starts and records the successes in one transaction. If that transaction fails,
/// nothing of it was written: the starts go the one-by-one way, and the successes are recorded
/// alone by their jobs. On PostgreSQL a few rounds run at once, side by side on their own
/// connections. On SQLite one does: with a single writer, a second round only splits the work
/// into more, smaller transactions (measured: 5–15% fewer deliveries/s). A round gathers only
/// once it may run, so whatever waited meanwhile goes together.
///
/// Side by side, a post's deliveries finishing a moment apart would each take a round of their
/// own (seven statements each, queued on the post's row lock). So on PostgreSQL a round of
/// successes alone waits while another round is being written, unless a start joins it (a call
/// waits on that) or enough have gathered to fill a round ([`GATHER`]).
async fn write_loop(posts: Posts, mut rx: mpsc::UnboundedReceiver<Ask>) {
    let most = match posts.db.backend() {
        Backend::Sqlite => 1,
        Backend::Postgres => 4,
    };
    let rounds = Arc::new(Semaphore::new(most));
    let ended = Arc::new(Notify::new());
    while let Some(first) = rx.recv().await {
        let mut asks = vec![first];
        if most > 1 {
            // The jobs of one claim start a moment apart, on the same runtime as this task: let
            // them run first, and their starts go in this round rather than each in its own.
            tokio::task::yield_now().await;
        }
        take_waiting(&mut rx, &mut asks);
        // (On SQLite the one round's permit is the wait: no need to wake for each ask meanwhile.)
        while most > 1
            && rounds.available_permits() < most
            && asks.len() < GATHER
            && !asks.iter().any(|a| matches!(a, Ask::Start(..)))
        {
            tokio::select! {
                // A stored wake-up from a round that ended before this wait only means one
                // more look at the condition.
                _ = ended.notified() => {}
                more = rx.recv() => match more {
                    Some(a) => {
                        asks.push(a);
                        take_waiting(&mut rx, &mut asks);
                    }
                    None => break,
                },
            }
        }
        let Ok(permit) = rounds.clone().acquire_owned().await else { return };
        take_waiting(&mut rx, &mut asks);
        let (posts, ended) = (posts.clone(), ended.clone());
        posts.db.clone().spawn_writing(async move {
            round(&posts, asks).await;
            drop(permit);
            ended.notify_one();
        });
    }
}

/// On PostgreSQL, how many successes go in a round of their own while another is written.
const GATHER: usize = MAX_BATCH / 4;

/// Adds whatever asks are waiting, up to [`MAX_BATCH`].
fn take_waiting(rx: &mut mpsc::UnboundedReceiver<Ask>, asks: &mut Vec<Ask>) {
    while asks.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(a) => asks.push(a),
            Err(_) => break,
        }
    }
}

async fn round(posts: &Posts, asks: Vec<Ask>) {
    let (mut starts, mut items, mut replies) = (Vec::new(), Vec::new(), Vec::new());
    for a in asks {
        match a {
            Ask::Start(id, reply) => starts.push((id, reply)),
            Ask::Published(s, reply) => {
                items.push(*s);
                replies.push(reply);
            }
        }
    }
    let ids: Vec<Uuid> = starts.iter().map(|(id, _)| *id).collect();
    let result = match (load_starts(posts, &ids).await, endpoints(posts, &items).await) {
        (Ok(starting), Ok(endpoints)) => write_round(posts, starting, &items, &endpoints).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let (mut started, recorded) = match result {
        Ok(started) => (started, Ok(())),
        Err(e) => {
            tracing::warn!(error = %e, starts = ids.len(), successes = items.len(), "writing deliveries together failed; writing them one by one");
            (HashMap::new(), Err(e))
        }
    };
    for (id, reply) in starts {
        let _ = reply.send(started.remove(&id).unwrap_or(Start::Slow));
    }
    for reply in replies {
        let _ = reply.send(recorded.clone());
    }
}

#[derive(sqlx::FromRow)]
struct PostWithPolicy {
    #[sqlx(flatten)]
    post: PostRow,
    late_limit_secs: Option<i64>,
}

/// Starts, read: what each will be unless its mark fails, and what those going the usual way need.
#[derive(Default)]
struct Starting {
    out: HashMap<Uuid, Start>,
    go: Vec<DeliveryRow>,
    posts: HashMap<Uuid, PostWithPolicy>,
    connections: HashMap<Uuid, Loaded>,
    /// Those of `go` taken from [`Written`] rather than read.
    written: HashSet<Uuid>,
}

/// Loads the deliveries (those just written by this process from [`Written`]), their posts and
/// connections in up to three reads, and picks those that can go the usual way.
async fn load_starts(posts: &Posts, ids: &[Uuid]) -> Result<Starting, Error> {
    if ids.is_empty() {
        return Ok(Starting::default());
    }
    let mut out: HashMap<Uuid, Start> = ids.iter().map(|id| (*id, Start::Done)).collect();
    let mut live = Vec::new();
    let mut by_post: HashMap<Uuid, PostWithPolicy> = HashMap::new();
    for (d, post) in posts.db.wakeups().local::<Written>().take(ids) {
        // Made a moment ago (see `young`): within any late limit.
        by_post.entry(post.id).or_insert_with(|| PostWithPolicy { post: (*post).clone(), late_limit_secs: None });
        live.push(d);
    }
    let written: HashSet<Uuid> = live.iter().map(|d| d.id).collect();
    let unread: Vec<Uuid> = ids.iter().filter(|id| !written.contains(id)).copied().collect();
    let backend = posts.db.backend();
    if !unread.is_empty() {
        let sql = backend.sql(format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE id {}", backend.in_ids(1)));
        let rows: Vec<DeliveryRow> = on_read!(posts.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(Ids(&unread)).fetch_all(c).await)
        .map_err(store)?;
        live.extend(rows.into_iter().filter(|d| !d.state().is_final()));
    }
    if live.is_empty() {
        return Ok(Starting { out, ..Starting::default() });
    }

    // The posts and the connections side by side: each is a round trip (to PostgreSQL, or to a
    // reader's thread), and the calls wait for both.
    let read_posts = async {
        let post_ids = posts_of(live.iter().filter(|d| !by_post.contains_key(&d.post_id)));
        if post_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let cols = POST_COLS.split(", ").map(|c| format!("p.{c}")).collect::<Vec<_>>().join(", ");
        let sql = backend.sql(format!(
            "SELECT {cols}, t.late_limit_secs FROM posts p JOIN teams t ON t.id = p.team_id WHERE p.id {}",
            backend.in_ids(1)
        ));
        let rows: Vec<PostWithPolicy> = on_read!(posts.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(Ids(&post_ids)).fetch_all(c).await)
        .map_err(store)?;
        Ok::<_, Error>(rows.into_iter().map(|p| (p.post.id, p)).collect::<HashMap<Uuid, PostWithPolicy>>())
    };
    let read_connections = async {
        let mut by_team: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for d in &live {
            by_team.entry(d.team_id).or_default().push(d.connection_id);
        }
        let mut connections: HashMap<Uuid, Loaded> = HashMap::new();
        for (team, conns) in by_team {
            connections.extend(posts.connections.load_many(team, &conns).await?);
        }
        Ok::<_, Error>(connections)
    };
    let (read, connections) = tokio::try_join!(read_posts, read_connections)?;
    by_post.extend(read);

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
    Ok(Starting { out, go, posts: by_post, connections, written })
}

/// The event endpoints of the successes' teams, read before the transaction (kept a second: see
/// [`crate::events::endpoints_now`]), so a post that reaches its end state costs the writer no read.
async fn endpoints(posts: &Posts, items: &[Success]) -> Result<HashMap<Uuid, Endpoints>, Error> {
    let mut out = HashMap::new();
    for s in items {
        if let std::collections::hash_map::Entry::Vacant(e) = out.entry(s.team) {
            e.insert(crate::events::endpoints_now(posts, s.team).await?);
        }
    }
    Ok(out)
}

/// Marks the starts in flight and records the successes, in one transaction.
async fn write_round(
    posts: &Posts,
    starting: Starting,
    items: &[Success],
    endpoints: &HashMap<Uuid, Endpoints>,
) -> Result<HashMap<Uuid, Start>, Error> {
    let Starting { mut out, go, posts: by_post, connections, written } = starting;
    if go.is_empty() && items.is_empty() {
        return Ok(out);
    }
    let now = Utc::now();
    let scheduled = |post: &Uuid| by_post.get(post).is_some_and(|p| p.post.state == PostState::Scheduled.as_str());
    let marked = match posts.db.pools() {
        Pools::Postgres(pool) if items.is_empty() => mark_alone(pool, &go, &written, scheduled, now).await?,
        // The deliveries' row locks before the posts', as the one-by-one path takes them.
        Pools::Postgres(_) => {
            let mut tx = posts.db.begin().await.map_err(Error::from)?;
            let marked = mark(&mut tx, &go, &written, scheduled, now).await?;
            record(&mut tx, items, endpoints).await?;
            tx.commit().await.map_err(Error::from)?;
            marked
        }
        // SQLite's writer is held from the first trip to the commit, and no row is locked: the
        // mark goes last, with the commit when nothing follows it (see `mark_and_commit`). A
        // round is then one trip (starts alone) or two (BEGIN with the outcomes, the attempts
        // and the posts' read; the posts' states, the jobs' success, the mark and the COMMIT),
        // where it was two to four. A post whose delivery starts now reads it as pending rather
        // than publishing, which rolls up the same.
        Pools::Sqlite { .. } => {
            let mut tx = posts.db.begin().await.map_err(Error::from)?;
            record(&mut tx, items, endpoints).await?;
            mark_and_commit(tx, &go, &written, scheduled, now).await?
        }
    };

    for d in go {
        if !marked.contains(&d.id) {
            if written.contains(&d.id) {
                out.insert(d.id, Start::Slow); // changed since it was written: read it afresh
            }
            continue; // read, and cancelled meanwhile: stays Done
        }
        let (Some(p), Some(loaded)) = (by_post.get(&d.post_id), connections.get(&d.connection_id)) else {
            continue; // unreachable: `usual` checked both
        };
        let ready = Ready { post: p.post.clone(), loaded: loaded.clone(), marked_at: now, d };
        out.insert(ready.d.id, Start::Go(Box::new(ready)));
    }
    Ok(out)
}

/// The deliveries a start may mark in flight: not finished, and no call of theirs in flight.
const MARKABLE: &str = "state IN ('pending', 'scheduled', 'publishing') AND call_started_at IS NULL";

/// A delivery unchanged since it was written: every later write to it moves `updated_at`, which
/// its insert set to its `created_at`. The mark of a row taken from [`Written`] holds to it.
const UNCHANGED: &str = "updated_at = created_at";

/// The ids of `go`: those read, and those `written` (see [`Written`]).
fn read_and_written(go: &[DeliveryRow], written: &HashSet<Uuid>) -> (Vec<Uuid>, Vec<Uuid>) {
    go.iter().map(|d| d.id).partition(|id| !written.contains(id))
}

/// Marks deliveries in flight (and a scheduled post publishing); returns those it marked.
/// `scheduled` tells the posts read as scheduled: only those can need the change, and a post
/// published now (never scheduled) costs no statement.
async fn mark(
    tx: &mut Tx,
    go: &[DeliveryRow],
    written: &HashSet<Uuid>,
    scheduled: impl Fn(&Uuid) -> bool,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, Error> {
    if go.is_empty() {
        return Ok(Vec::new());
    }
    defer_mark(tx, go, written, now);
    let marked = ids(tx.fetch_read().await.map_err(store)?);
    // The only change a start makes to a post: a scheduled one starts publishing.
    let started_posts = posts_of(go.iter().filter(|d| marked.contains(&d.id) && scheduled(&d.post_id)));
    if !started_posts.is_empty() {
        let sql = format!(
            "UPDATE posts SET state = 'publishing', updated_at = $1 WHERE state = 'scheduled' AND id {}",
            tx.backend().in_ids(2)
        );
        tx.defer(&sql).bind(Ts(now)).bind(Ids(&started_posts));
    }
    Ok(marked)
}

/// [`mark`], then the commit. When none of the posts was read as scheduled, nothing depends on
/// which deliveries the mark took, so it goes with the commit: on SQLite one trip.
async fn mark_and_commit(
    mut tx: Tx,
    go: &[DeliveryRow],
    written: &HashSet<Uuid>,
    scheduled: impl Fn(&Uuid) -> bool,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, Error> {
    if go.is_empty() || go.iter().any(|d| scheduled(&d.post_id)) {
        let marked = mark(&mut tx, go, written, scheduled, now).await?;
        tx.commit().await.map_err(Error::from)?;
        return Ok(marked);
    }
    defer_mark(&mut tx, go, written, now);
    Ok(ids(tx.commit_read().await.map_err(Error::from)?))
}

/// Queues the mark of `go` ([`Tx::defer_read`]); its rows are the ids of those it marked.
fn defer_mark(tx: &mut Tx, go: &[DeliveryRow], written: &HashSet<Uuid>, now: DateTime<Utc>) {
    let backend = tx.backend();
    let sql = backend.sql(format!(
        "UPDATE deliveries SET state = 'publishing', call_started_at = $1, first_attempt_at = COALESCE(first_attempt_at, $2), \
         attempts = attempts + 1, updated_at = $3 \
         WHERE {MARKABLE} AND (id {} OR id {} AND {UNCHANGED}) RETURNING id",
        backend.in_ids(4),
        backend.in_ids(5)
    ));
    let (read, written) = read_and_written(go, written);
    tx.defer_read(&sql).bind(Ts(now)).bind(Ts(now)).bind(Ts(now)).bind(Ids(&read)).bind(Ids(&written));
}

/// The ids of rows of one id each.
fn ids(rows: Vec<(Uuid,)>) -> Vec<Uuid> {
    rows.into_iter().map(|(id,)| id).collect()
}

/// [`mark`] for a round of starts alone on PostgreSQL: one statement, which the server runs as a
/// transaction of its own, where `BEGIN`, the mark and `COMMIT` were three round trips before
/// every call could go.
async fn mark_alone(
    pool: &sqlx::PgPool,
    go: &[DeliveryRow],
    written: &HashSet<Uuid>,
    scheduled: impl Fn(&Uuid) -> bool,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, Error> {
    if go.is_empty() {
        return Ok(Vec::new());
    }
    let (read, written) = read_and_written(go, written);
    let started = posts_of(go.iter().filter(|d| scheduled(&d.post_id)));
    static MARK_ALONE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH marked AS ( \
               UPDATE deliveries SET state = 'publishing', call_started_at = $1, \
                      first_attempt_at = COALESCE(first_attempt_at, $1), attempts = attempts + 1, updated_at = $1 \
               WHERE {MARKABLE} AND (id = ANY($2) OR id = ANY($4) AND {UNCHANGED}) \
               RETURNING id, post_id), \
             started AS ( \
               UPDATE posts SET state = 'publishing', updated_at = $1 \
               WHERE state = 'scheduled' AND id = ANY($3) AND id IN (SELECT post_id FROM marked)) \
             SELECT id FROM marked"
        )
    });
    sqlx::query_scalar(sqlx::AssertSqlSafe(MARK_ALONE.as_str()))
        .bind(now)
        .bind(&read)
        .bind(&started)
        .bind(&written)
        .fetch_all(pool)
        .await
        .map_err(store)
}

/// The posts of `deliveries`, each once.
fn posts_of<'a>(deliveries: impl Iterator<Item = &'a DeliveryRow>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = deliveries.map(|d| d.post_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Records the outcomes, the attempts, the posts' new states and the jobs' successes.
async fn record(tx: &mut Tx, items: &[Success], endpoints: &HashMap<Uuid, Endpoints>) -> Result<(), Error> {
    if items.is_empty() {
        return Ok(());
    }
    let now = Ts::now();
    if tx.backend() == Backend::Sqlite {
        defer_record_sqlite(tx, items, now);
    } else {
        defer_record_pg(tx, items, now);
    }
    let post_ids: Vec<Uuid> = items.iter().map(|s| s.post).collect();
    refresh_posts(tx, &post_ids, endpoints).await?;
    let jobs: Vec<Finished> = items.iter().map(|s| s.job.clone()).collect();
    Queue::complete_in(tx, &jobs).await.map_err(Error::from)?;
    Ok(())
}

/// The outcomes and attempts as two statements whose text is the same whatever their number (the
/// rows go as one JSONB parameter, see [`herald_store::jsonb`]): SQLite's writer compiles them
/// once and keeps them.
fn defer_record_sqlite(tx: &mut Tx, items: &[Success], now: Ts) {
    // Per row: the delivery, the attempt's id, parts, platform id, URL, part, started, duration.
    let mut rows = herald_store::jsonb::Rows::default();
    for s in items {
        rows.id(s.delivery)
            .id(Uuid::now_v7())
            .text(&s.parts)
            .opt_text(s.platform_post_id.as_deref())
            .opt_text(s.platform_url.as_deref())
            .int(s.part)
            .int(herald_store::to_micros(s.started))
            .int(s.ms)
            .end_row();
    }
    let input = rows.finish();
    tx.defer(
        "UPDATE deliveries SET state = 'published', parts = v.value ->> 2, platform_post_id = v.value ->> 3, \
         platform_url = v.value ->> 4, call_started_at = NULL, last_error = NULL, last_error_class = NULL, \
         published_at = $1, updated_at = $2 FROM jsonb_each($3) AS v WHERE deliveries.id = unhex(v.value ->> 0)",
    )
    .bind(now)
    .bind(now)
    .bind(input.clone());
    tx.defer(
        "INSERT INTO delivery_attempts (id, delivery_id, part, started_at, duration_ms, outcome) \
         SELECT unhex(value ->> 1), unhex(value ->> 0), value ->> 5, value ->> 6, value ->> 7, 'published' \
         FROM jsonb_each($1)",
    )
    .bind(input);
}

/// The outcomes and attempts as arrays ([`herald_store::column`]): two statement texts whatever
/// their number.
fn defer_record_pg(tx: &mut Tx, items: &[Success], now: Ts) {
    // Nothing here reads a result: the statements go with the next read (or the commit).
    tx.defer(
        "UPDATE deliveries SET state = 'published', parts = v.parts, platform_post_id = v.platform_post_id, \
         platform_url = v.platform_url, call_started_at = NULL, last_error = NULL, last_error_class = NULL, \
         published_at = $1, updated_at = $2 \
         FROM UNNEST($3::uuid[], $4::text[], $5::text[], $6::text[]) AS v(id, parts, platform_post_id, platform_url) \
         WHERE deliveries.id = v.id",
    )
    .bind(now)
    .bind(now)
    .bind_pg(column(items, |s| s.delivery))
    .bind_pg(column(items, |s| s.parts.as_str()))
    .bind_pg(column(items, |s| s.platform_post_id.as_deref()))
    .bind_pg(column(items, |s| s.platform_url.as_deref()));
    tx.defer(
        "INSERT INTO delivery_attempts (id, delivery_id, part, started_at, duration_ms, outcome) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::timestamptz[], $5::int8[], $6::text[])",
    )
    .bind_pg(column(items, |_| Uuid::now_v7()))
    .bind_pg(column(items, |s| s.delivery))
    .bind_pg(column(items, |s| s.part))
    .bind_pg(column(items, |s| s.started))
    .bind_pg(column(items, |s| s.ms))
    .bind_pg(vec!["published"; items.len()]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_accounts::{Accounts, AccountsConfig};

    fn written_row(made: DateTime<Utc>) -> WrittenRow {
        let post = PostRow {
            id: Uuid::now_v7(),
            author_user: None,
            state: "publishing".into(),
            content: "{}".into(),
            schedule_at: None,
            timezone: None,
            campaign: None,
            tags: "[]".into(),
            repeat_days: None,
            series_id: None,
            created_at: Ts(made),
            updated_at: Ts(made),
        };
        let d = DeliveryRow::fresh(
            post.id,
            Uuid::now_v7(),
            Uuid::now_v7(),
            "webhook",
            crate::model::DeliveryState::Pending,
            "{}".into(),
            None,
        );
        (d, Arc::new(post))
    }

    /// Full, the rows kept are swept for those too old to stand in for a read, but not at every
    /// post's commit: a quarter of [`WRITTEN_FOR`] after the last sweep at the soonest.
    #[test]
    fn written_rows_are_swept_when_full_but_not_at_every_commit() {
        let written = Written::default();
        let now = Utc::now();
        let old: Vec<WrittenRow> = (0..WRITTEN_MOST / 2).map(|_| written_row(now - TimeDelta::seconds(5))).collect();
        let old_ids: Vec<Uuid> = old.iter().map(|(d, _)| d.id).collect();
        written.keep(old);
        written.keep((0..WRITTEN_MOST / 2).map(|_| written_row(now)).collect());
        assert_eq!(written.0.lock().unwrap().rows.len(), WRITTEN_MOST, "full");

        // The next rows find it full: the old half goes, and they are kept.
        let next = written_row(now);
        let next_id = next.0.id;
        written.keep(vec![next]);
        assert_eq!(written.0.lock().unwrap().rows.len(), WRITTEN_MOST / 2 + 1);
        assert_eq!(written.take(&[next_id]).len(), 1, "taken, as written");
        assert!(written.take(&old_ids).is_empty(), "the old rows were swept");

        // Full again of young rows at once: no sweep so soon after the last, and nothing more kept.
        written.keep((0..WRITTEN_MOST / 2).map(|_| written_row(now)).collect());
        let swept = written.0.lock().unwrap().swept;
        let late = written_row(now);
        let late_id = late.0.id;
        written.keep(vec![late]);
        assert_eq!(written.0.lock().unwrap().swept, swept, "not swept again within a quarter second");
        assert!(written.take(&[late_id]).is_empty(), "not kept: its start reads it instead");
    }

    /// A round of starts alone on PostgreSQL is one statement: it marks only deliveries not in
    /// flight, and moves to `publishing` only a post read as scheduled whose delivery it marked.
    #[tokio::test]
    async fn a_round_of_starts_alone_on_postgresql_marks_in_one_statement() {
        let Some(t) = herald_store::testing::TestDb::postgres().await else { return };
        let accounts = Accounts::new(
            t.db.clone(),
            herald_vault::Vault::new(&[herald_vault::MasterKey::generate()]),
            AccountsConfig::default(),
        );
        let mut tx = t.db.begin().await.unwrap();
        let (_, team) = accounts.create_user(&mut tx, "m@example.com", "M", "pw-123456789", false).await.unwrap();
        tx.commit().await.unwrap();
        let Pools::Postgres(pool) = t.db.pools() else { unreachable!("a PostgreSQL test database") };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for post in [a, b] {
            sqlx::query(
                "INSERT INTO posts (id, team_id, state, content, created_at, updated_at) \
                 VALUES ($1, $2, 'scheduled', '{}', now(), now())",
            )
            .bind(post)
            .bind(team)
            .execute(pool)
            .await
            .unwrap();
        }
        // a1 is due, a2's call is already in flight, b1 is due but its post was not read as scheduled.
        let (a1, a2, b1) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        for (id, post, in_flight) in [(a1, a, false), (a2, a, true), (b1, b, false)] {
            sqlx::query(
                "INSERT INTO deliveries (id, post_id, team_id, connection_id, platform, state, content, \
                 idempotency_key, call_started_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'webhook', 'pending', '{}', $5, CASE WHEN $6 THEN now() END, now(), now())",
            )
            .bind(id)
            .bind(post)
            .bind(team)
            .bind(Uuid::now_v7())
            .bind(id.to_string())
            .bind(in_flight)
            .execute(pool)
            .await
            .unwrap();
        }
        // w1 and w2 were kept as written (see `Written`); w2 has been edited since.
        let (w1, w2) = (Uuid::now_v7(), Uuid::now_v7());
        for id in [w1, w2] {
            sqlx::query(
                "INSERT INTO deliveries (id, post_id, team_id, connection_id, platform, state, content, \
                 idempotency_key, created_at, updated_at) VALUES ($1, $2, $3, $4, 'webhook', 'pending', '{}', $5, now(), now())",
            )
            .bind(id)
            .bind(b)
            .bind(team)
            .bind(Uuid::now_v7())
            .bind(id.to_string())
            .execute(pool)
            .await
            .unwrap();
        }
        sqlx::query("UPDATE deliveries SET content = '{\"text\":\"edited\"}', updated_at = now() + interval '1 ms' WHERE id = $1")
            .bind(w2)
            .execute(pool)
            .await
            .unwrap();
        let rows: Vec<DeliveryRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {DELIVERY_COLS} FROM deliveries ORDER BY id")))
                .fetch_all(pool)
                .await
                .unwrap();
        let now = Utc::now();
        let mut marked = mark_alone(pool, &rows, &HashSet::from([w1, w2]), |p| *p == a, now).await.unwrap();
        marked.sort_unstable();
        assert_eq!(marked, [a1, b1, w1], "ids are v7: made in this order; w2 changed since it was written");

        let state = |sql: &'static str, id: Uuid| async move {
            sqlx::query_scalar::<_, String>(sql).bind(id).fetch_one(pool).await.unwrap()
        };
        let delivery =
            "SELECT state || '/' || attempts || '/' || (call_started_at IS NOT NULL) FROM deliveries WHERE id = $1";
        assert_eq!(state(delivery, a1).await, "publishing/1/true");
        assert_eq!(state(delivery, a2).await, "pending/0/true", "a call in flight is not marked again");
        assert_eq!(state(delivery, b1).await, "publishing/1/true");
        let post = "SELECT state FROM posts WHERE id = $1";
        assert_eq!(state(post, a).await, "publishing");
        assert_eq!(state(post, b).await, "scheduled", "only posts read as scheduled are moved");
        // Marked once: a second round finds nothing to mark.
        assert!(mark_alone(pool, &rows, &HashSet::from([w1, w2]), |p| *p == a, now).await.unwrap().is_empty());
        t.destroy().await;
    }

    /// A start marks a delivery taken from [`Written`] only while it is as written, on both
    /// backends, and a round in a transaction (with successes) holds to it as one alone does.
    #[tokio::test]
    async fn a_written_delivery_is_marked_only_while_unchanged() {
        herald_store::testing::each_backend(|db| async move {
            let accounts = Accounts::new(
                db.clone(),
                herald_vault::Vault::new(&[herald_vault::MasterKey::generate()]),
                AccountsConfig::default(),
            );
            let mut tx = db.begin().await.unwrap();
            let (_, team) = accounts.create_user(&mut tx, "w@example.com", "W", "pw-123456789", false).await.unwrap();
            let post = Uuid::now_v7();
            let at = Ts::now();
            herald_store::exec!(
                tx,
                "INSERT INTO posts (id, team_id, state, content, created_at, updated_at) \
                 VALUES ($1, $2, 'publishing', '{}', $3, $4)",
                post,
                team,
                at,
                at
            )
            .unwrap();
            let (read, kept, edited) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
            for id in [read, kept, edited] {
                herald_store::exec!(
                    tx,
                    "INSERT INTO deliveries (id, post_id, team_id, connection_id, platform, state, content, \
                     idempotency_key, created_at, updated_at) VALUES ($1, $2, $3, $4, 'webhook', 'pending', '{}', $5, $6, $7)",
                    id,
                    post,
                    team,
                    Uuid::now_v7(),
                    id.to_string(),
                    at,
                    at
                )
                .unwrap();
            }
            tx.commit().await.unwrap();

            // Read: its row as of now; kept and edited as written. Then `edited` changes.
            let sql = db.backend().sql(format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE id {}", db.backend().in_ids(1)));
            let ids = [read, kept, edited];
            let rows: Vec<DeliveryRow> = herald_store::on_read!(db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(herald_store::Ids(&ids)).fetch_all(c).await)
            .unwrap();
            let mut tx = db.begin().await.unwrap();
            herald_store::exec!(tx, "UPDATE deliveries SET updated_at = $1 WHERE id = $2", Ts::now(), edited).unwrap();
            tx.commit().await.unwrap();

            let mut tx = db.begin().await.unwrap();
            let mut marked = mark(&mut tx, &rows, &HashSet::from([kept, edited]), |_| false, Utc::now()).await.unwrap();
            tx.commit().await.unwrap();
            marked.sort_unstable();
            assert_eq!(marked, [read, kept], "{}: the edited one is left to be read afresh", db.backend().as_str());
        })
        .await;
    }
}

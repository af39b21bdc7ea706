//! Creating, reading and changing posts. Every change to a post and its deliveries commits in one
//! transaction with the jobs it creates, and the post's state is recomputed from its deliveries in
//! the same transaction.

use crate::create::{self, Creates, Prepared, WriteError};
use crate::model::*;
use crate::worker::DELIVERY_JOB;
use chrono::{DateTime, Utc};
use herald_accounts::audit::{self, Actor, Event};
use herald_accounts::{Accounts, Principal, Quota, authorize};
use herald_connections::{Connections, Loaded};
use herald_core::platforms::{Content as Checked, MediaItem, Violation, validate};
use herald_core::{Action, Error, ErrorCode};
use herald_queue::{JobId, NewJob, Queue};
use herald_store::{Backend, Db, Ids, ReadCache, StoreError, Ts, Tx, column, exec, on_read, on_tx};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;

/// Tries a delivery gets for transient failures before it is `failed`.
pub const MAX_ATTEMPTS: i32 = 12;
const MAX_TARGETS: usize = 50;
const MAX_TEXT_BYTES: usize = 100_000;

#[derive(Clone)]
pub struct Posts {
    pub(crate) db: Db,
    pub(crate) accounts: Accounts,
    pub(crate) connections: Connections,
    pub(crate) queue: Queue,
    pub(crate) media: herald_media::MediaStore,
    /// Signed URLs for the media of deliveries, when HERALD_PUBLIC_URL is set.
    pub(crate) public_media: Option<herald_media::PublicMedia>,
    /// Group commit for new posts, started with the first.
    creates: Arc<OnceLock<Creates>>,
    /// Each team's active event endpoints, read once a second rather than once a post (see
    /// [`herald_store::cache`]); every write to them marks [`crate::events::CHANGED`].
    pub(crate) endpoints: ReadCache<Uuid, crate::events::Endpoints>,
}

pub(crate) fn store(e: sqlx::Error) -> Error {
    StoreError::Sqlx(e).into()
}

fn invalid(field: &str, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ValidationFailed, msg).with_details(json!({"field": field}))
}

fn conflict(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::Conflict, msg)
}

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct PostRow {
    pub id: Uuid,
    pub author_user: Option<Uuid>,
    pub state: String,
    pub content: String,
    pub schedule_at: Option<Ts>,
    pub timezone: Option<String>,
    pub campaign: Option<String>,
    pub tags: String,
    pub repeat_days: Option<i64>,
    pub series_id: Option<Uuid>,
    pub created_at: Ts,
    pub updated_at: Ts,
}

pub(crate) const POST_COLS: &str = "id, author_user, state, content, schedule_at, timezone, campaign, tags, repeat_days, series_id, created_at, updated_at";

impl PostRow {
    pub fn content(&self) -> Content {
        serde_json::from_str(&self.content).unwrap_or_default()
    }
}

/// A target's own text and options, over the post's.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Override {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
}

impl Override {
    pub fn resolve(&self, post: &Content) -> Content {
        let mut c = post.clone();
        if let Some(t) = &self.text {
            c.text = t.clone();
        }
        if let (Some(Value::Object(extra)), Value::Object(base)) = (&self.options, &mut c.options) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        c
    }
}

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct DeliveryRow {
    pub id: Uuid,
    pub post_id: Uuid,
    pub team_id: Uuid,
    pub connection_id: Uuid,
    pub platform: String,
    pub state: String,
    pub content: String,
    pub idempotency_key: String,
    pub job_id: Option<Uuid>,
    pub run_at: Option<Ts>,
    pub parts: String,
    pub platform_post_id: Option<String>,
    pub platform_url: Option<String>,
    pub attempts: i64,
    pub first_attempt_at: Option<Ts>,
    pub call_started_at: Option<Ts>,
    pub last_error: Option<String>,
    pub last_error_class: Option<String>,
    pub published_at: Option<Ts>,
}

pub(crate) const DELIVERY_COLS: &str = "id, post_id, team_id, connection_id, platform, state, content, idempotency_key, \
    job_id, run_at, parts, platform_post_id, platform_url, attempts, first_attempt_at, call_started_at, last_error, \
    last_error_class, published_at";

/// What [`Posts::stage`] found: the post an idempotency key made already, or a new one, checked
/// and ready to write.
pub enum Staged {
    Existing(Box<PostView>),
    Ready(Box<StagedPost>),
}

/// A new post, checked and not written yet (see [`Posts::stage`]).
pub struct StagedPost {
    prepared: Prepared,
    content: Content,
    /// Set when the post takes its connections' next free slots, which are read in the
    /// transaction that writes it, so only [`Posts::write_staged`] can write it.
    slot_zone: Option<herald_core::time::Tz>,
}

impl StagedPost {
    /// The post as it will be once written.
    pub fn view(&self) -> PostView {
        written_view(&self.prepared, &self.content)
    }

    /// How many deliveries it makes.
    pub fn targets(&self) -> usize {
        self.prepared.deliveries.len()
    }

    /// Whether a caller's transaction may write it ([`Posts::write_in`]).
    pub fn writes_with_caller(&self) -> bool {
        self.slot_zone.is_none()
    }
}

/// A post as its write leaves it (nothing attempted yet), without reading it back.
fn written_view(prepared: &Prepared, content: &Content) -> PostView {
    let deliveries = prepared.deliveries.iter().map(|d| d.view(content, Vec::new())).collect();
    Posts::view(&prepared.row, deliveries)
}

impl DeliveryRow {
    /// A new delivery of `post` to `connection`, not yet sent and without a job.
    pub(crate) fn fresh(
        post: Uuid,
        team: Uuid,
        connection: Uuid,
        platform: &str,
        state: DeliveryState,
        overrides: String,
        run_at: Option<DateTime<Utc>>,
    ) -> DeliveryRow {
        let id = Uuid::now_v7();
        DeliveryRow {
            id,
            post_id: post,
            team_id: team,
            connection_id: connection,
            platform: platform.to_string(),
            state: state.as_str().to_string(),
            content: overrides,
            idempotency_key: herald_platforms::idempotency_key(id),
            job_id: None,
            run_at: run_at.map(Ts),
            parts: "[]".into(),
            platform_post_id: None,
            platform_url: None,
            attempts: 0,
            first_attempt_at: None,
            call_started_at: None,
            last_error: None,
            last_error_class: None,
            published_at: None,
        }
    }

    pub fn state(&self) -> DeliveryState {
        DeliveryState::parse(&self.state)
    }

    pub fn overrides(&self) -> Override {
        serde_json::from_str(&self.content).unwrap_or_default()
    }

    pub fn parts(&self) -> Vec<Value> {
        serde_json::from_str(&self.parts).unwrap_or_default()
    }

    fn view(&self, post: &Content, attempt_log: Vec<AttemptView>) -> DeliveryView {
        DeliveryView {
            id: self.id,
            connection_id: self.connection_id,
            platform: self.platform.clone(),
            state: self.state(),
            content: self.overrides().resolve(post),
            run_at: self.run_at.map(|t| t.0),
            platform_post_id: self.platform_post_id.clone(),
            platform_url: self.platform_url.clone(),
            parts: Value::Array(self.parts()),
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            last_error_class: self.last_error_class.clone(),
            published_at: self.published_at.map(|t| t.0),
            attempt_log,
        }
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    delivery_id: Uuid,
    part: i64,
    started_at: Ts,
    duration_ms: i64,
    outcome: String,
    http_status: Option<i64>,
    code: Option<String>,
    message: Option<String>,
}

/// Filters for `GET /api/v1/posts`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct PostQuery {
    pub state: Option<String>,
    /// Posts created (or scheduled, when they are) at or after this instant.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Posts with a delivery to this connection.
    pub connection: Option<Uuid>,
    pub campaign: Option<String>,
    pub tag: Option<String>,
    /// The `next` of the previous page.
    pub before: Option<Uuid>,
    /// 1 to 200; 50 by default.
    pub limit: Option<i64>,
}

/// The state a post is in, given its deliveries'. It depends only on which states are present,
/// not on how many deliveries are in each ([`refresh_posts`] reads each state once).
pub(crate) fn rollup(
    current: PostState,
    schedule_at: Option<DateTime<Utc>>,
    deliveries: &[DeliveryState],
) -> PostState {
    use DeliveryState as D;
    if current == PostState::Draft || deliveries.is_empty() {
        return current;
    }
    let all = |f: &dyn Fn(&D) -> bool| deliveries.iter().all(f);
    let any = |s: D| deliveries.contains(&s);
    if all(&|d| *d == D::Published) {
        PostState::Published
    } else if all(&|d| *d == D::Cancelled) {
        PostState::Cancelled
    } else if all(&|d| d.is_final()) {
        if any(D::Published) { PostState::PartiallyPublished } else { PostState::Failed }
    } else if deliveries.iter().any(|d| matches!(d, D::Publishing | D::Published | D::Failed | D::Unconfirmed))
        || schedule_at.is_none_or(|t| t <= Utc::now())
    {
        PostState::Publishing
    } else {
        PostState::Scheduled
    }
}

/// Recomputes and stores the post's state inside `tx`.
pub(crate) async fn refresh_post(tx: &mut Tx, post: Uuid) -> Result<PostState, Error> {
    let states = refresh_posts(tx, &[post], &Default::default()).await?;
    states.get(&post).copied().ok_or_else(|| Error::not_found("post"))
}

/// Each post of `$1` with the states its deliveries are in: a row per (post, state), not per
/// delivery, since the rollup only asks which states are present (each row is a message from
/// SQLite's connection thread, on the writer's path). On PostgreSQL the ids bound the deliveries'
/// side too: its generic plan for the bare join hashed a sequential scan of every delivery ever
/// made, once per round. SQLite's plan looks each post's deliveries up by `deliveries_post` as it
/// is.
fn rollup_sql(backend: Backend) -> String {
    let in_ids = backend.in_ids(1);
    let deliveries_too = match backend {
        Backend::Postgres => format!(" AND d.post_id {in_ids}"),
        Backend::Sqlite => String::new(),
    };
    backend.sql(format!(
        "SELECT DISTINCT p.id, p.team_id, p.state, p.schedule_at, p.repeat_days, d.state AS delivery_state \
         FROM posts p LEFT JOIN deliveries d ON d.post_id = p.id{deliveries_too} WHERE p.id {in_ids}"
    ))
}

/// Recomputes and stores the states of several posts inside `tx`, emitting an event for each post
/// that reached an end state: to the team's endpoints in `endpoints` (read before the transaction,
/// [`crate::events::endpoints_now`]), else as read in `tx`.
pub(crate) async fn refresh_posts(
    tx: &mut Tx,
    ids: &[Uuid],
    endpoints: &std::collections::HashMap<Uuid, crate::events::Endpoints>,
) -> Result<std::collections::HashMap<Uuid, PostState>, Error> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let in_ids = tx.backend().in_ids(1);
    #[derive(sqlx::FromRow)]
    struct P {
        id: Uuid,
        team_id: Uuid,
        state: String,
        schedule_at: Option<Ts>,
        repeat_days: Option<i64>,
        /// One row per state its deliveries are in (none for a post without any).
        delivery_state: Option<String>,
    }
    // On PostgreSQL the posts' row locks come first, taken in one order: deliveries finishing
    // at once then recompute one after the other, and the read that follows (a statement of its
    // own, so a snapshot taken after the lock) sees the others' committed states. A SQLite
    // transaction holds the database's one write lock from its BEGIN IMMEDIATE.
    if tx.backend() == Backend::Postgres {
        let sql = format!("SELECT id FROM posts WHERE id {in_ids} ORDER BY id FOR UPDATE");
        on_tx!(tx, c => sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(Ids(&ids)).execute(&mut *c).await
            .map(|r| r.rows_affected()))
        .map_err(store)?;
    }
    // With what is deferred before it (a round's outcomes and attempts): on SQLite one trip.
    tx.defer_read(&rollup_sql(tx.backend())).bind(Ids(&ids));
    let rows: Vec<P> = tx.fetch_read().await.map_err(store)?;
    let mut states: std::collections::HashMap<Uuid, Vec<DeliveryState>> = Default::default();
    let mut posts: Vec<P> = Vec::new();
    for mut row in rows {
        let delivery = row.delivery_state.take();
        let seen = states.contains_key(&row.id);
        let of_post = states.entry(row.id).or_default();
        if let Some(s) = delivery {
            of_post.push(DeliveryState::parse(&s));
        }
        if !seen {
            posts.push(row);
        }
    }
    let mut out = std::collections::HashMap::with_capacity(posts.len());
    let mut changed: Vec<(&P, PostState)> = Vec::new();
    for p in &posts {
        let current = PostState::parse(&p.state).unwrap_or(PostState::Publishing);
        let next = rollup(current, p.schedule_at.map(|t| t.0), states.get(&p.id).map_or(&[][..], |v| v));
        out.insert(p.id, next);
        if next != current {
            changed.push((p, next));
        }
    }
    // One statement per new state, not one per post.
    let now = Ts::now();
    let mut by_state: std::collections::BTreeMap<&'static str, Vec<Uuid>> = Default::default();
    for (p, next) in &changed {
        by_state.entry(next.as_str()).or_default().push(p.id);
    }
    for (state, ids) in by_state {
        let sql = format!("UPDATE posts SET state = $1, updated_at = $2 WHERE id {}", tx.backend().in_ids(3));
        tx.defer(&sql).bind(state).bind(now).bind(Ids(&ids));
    }
    let mut read: std::collections::HashMap<Uuid, crate::events::Endpoints> = Default::default();
    for (p, next) in changed {
        if matches!(
            next,
            PostState::Published | PostState::PartiallyPublished | PostState::Failed | PostState::Cancelled
        ) {
            let to = match endpoints.get(&p.team_id).or(read.get(&p.team_id)) {
                Some(known) => known.clone(),
                None => {
                    let now_read = Arc::new(crate::events::endpoints(tx, p.team_id).await?);
                    read.insert(p.team_id, now_read.clone());
                    now_read
                }
            };
            let kind = format!("post.{}", next.as_str());
            let message = format!("post {} is {}", p.id, next.as_str().replace('_', " "));
            let data = json!({"post": p.id, "state": next});
            crate::events::emit_to(tx, &to, p.team_id, &kind, ("post", p.id), &message, data).await?;
            if next != PostState::Cancelled && p.repeat_days.is_some_and(|d| d > 0) {
                crate::slots::schedule_repeat(tx, p.id).await?;
            }
        }
    }
    Ok(out)
}

/// Inserts a post's new deliveries in one statement, with their jobs (one per bucket given; none
/// for a draft) in one more, inside `tx`.
pub(crate) async fn insert_deliveries(
    tx: &mut Tx,
    now: Ts,
    rows: &mut [DeliveryRow],
    buckets: Option<&[Option<String>]>,
) -> Result<(), Error> {
    // As a post's create orders them (see `create::write`): on PostgreSQL the jobs' insert
    // carries the deliveries; on SQLite it goes first, and the deliveries with the commit.
    let jobs_first = tx.backend() == Backend::Sqlite;
    let Some(buckets) = buckets else {
        defer_insert_deliveries(tx, now, &rows.iter().collect::<Vec<_>>());
        return Ok(());
    };
    give_job_ids(rows.iter_mut());
    let rows: Vec<&DeliveryRow> = rows.iter().collect();
    if jobs_first {
        enqueue_delivery_jobs(tx, &rows, buckets).await?;
    }
    defer_insert_deliveries(tx, now, &rows);
    if !jobs_first {
        enqueue_delivery_jobs(tx, &rows, buckets).await?;
    }
    Ok(())
}

/// Makes the id of each new delivery's job, so the delivery can be written before its job.
pub(crate) fn give_job_ids<'a>(rows: impl IntoIterator<Item = &'a mut DeliveryRow>) {
    for d in rows {
        d.job_id = Some(JobId::new().0);
    }
}

/// Enqueues a job for each of new deliveries `rows` (with its rate bucket), in one statement,
/// with the ids [`give_job_ids`] made.
pub(crate) async fn enqueue_delivery_jobs(
    tx: &mut Tx,
    rows: &[&DeliveryRow],
    buckets: &[Option<String>],
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // Deliveries made in this transaction: no job can hold their keys yet, so the jobs go
    // without them, in one statement.
    let jobs = rows
        .iter()
        .zip(buckets)
        .map(|(d, b)| {
            let job = NewJob { unique_key: None, ..delivery_job(d.id, 0, d.run_at.map(|t| t.0), b.clone()) };
            job.id(JobId(d.job_id.expect("give_job_ids made it")))
        })
        .collect();
    herald_queue::enqueue_many(tx, jobs).await.map_err(|e| match e {
        // On PostgreSQL the insert carries the posts' rows (see `create::write`) and a deferred
        // monthly count, so a count over its limit fails here, and so does a post whose
        // Idempotency-Key another request took meanwhile, not at the commit.
        herald_queue::QueueError::Store(s) => match herald_accounts::quota_error(&s) {
            Some(quota) => quota,
            None if s.is_unique_violation() => {
                conflict("another request made a post with this Idempotency-Key first; retry")
            }
            None => Error::from(herald_queue::QueueError::Store(s)),
        },
        e => Error::from(e),
    })?;
    Ok(())
}

/// Inserts deliveries in one statement, deferred ([`Tx::defer`]): the ids are made here, so
/// nothing waits for its result.
pub(crate) fn defer_insert_deliveries(tx: &mut Tx, now: Ts, rows: &[&DeliveryRow]) {
    if rows.is_empty() {
        return;
    }
    if tx.backend() == Backend::Sqlite {
        defer_insert_deliveries_sqlite(tx, now, rows);
        return;
    }
    // Arrays ([`herald_store::column`]): one statement text whatever the number of rows.
    tx.defer(
        "INSERT INTO deliveries (id, post_id, team_id, connection_id, platform, state, content, idempotency_key, \
         job_id, run_at, parts, attempts, created_at, updated_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], \
           $8::text[], $9::uuid[], $10::timestamptz[], $11::text[], $12::int8[], $13::timestamptz[], $14::timestamptz[])",
    )
    .bind_pg(column(rows, |d| d.id))
    .bind_pg(column(rows, |d| d.post_id))
    .bind_pg(column(rows, |d| d.team_id))
    .bind_pg(column(rows, |d| d.connection_id))
    .bind_pg(column(rows, |d| d.platform.as_str()))
    .bind_pg(column(rows, |d| d.state.as_str()))
    .bind_pg(column(rows, |d| d.content.as_str()))
    .bind_pg(column(rows, |d| d.idempotency_key.as_str()))
    .bind_pg(column(rows, |d| d.job_id))
    .bind_pg(column(rows, |d| d.run_at.map(|t| t.0)))
    .bind_pg(column(rows, |d| d.parts.as_str()))
    .bind_pg(column(rows, |d| d.attempts))
    .bind_pg(vec![now.0; rows.len()])
    .bind_pg(vec![now.0; rows.len()]);
}

/// [`defer_insert_deliveries`] on SQLite: the rows go as one JSONB parameter ([`herald_store::jsonb`]),
/// so the statement's text is the same whatever their number. SQLite's writer then compiles it
/// once and keeps it, where a `VALUES` list of fourteen parameters a row was parsed again for
/// every batch (statement compiling was 8% of the writer thread's samples in `herald bench
/// workflows`).
fn defer_insert_deliveries_sqlite(tx: &mut Tx, now: Ts, rows: &[&DeliveryRow]) {
    let mut input = herald_store::jsonb::Rows::default();
    for d in rows {
        input
            .id(d.id)
            .id(d.post_id)
            .id(d.team_id)
            .id(d.connection_id)
            .text(&d.platform)
            .text(&d.state)
            .text(&d.content)
            .text(&d.idempotency_key)
            .opt_id(d.job_id)
            .opt_int(d.run_at.map(|t| herald_store::to_micros(t.0)))
            .text(&d.parts)
            .int(d.attempts)
            .end_row();
    }
    tx.defer(
        "INSERT INTO deliveries (id, post_id, team_id, connection_id, platform, state, content, idempotency_key, \
         job_id, run_at, parts, attempts, created_at, updated_at) \
         SELECT unhex(value ->> 0), unhex(value ->> 1), unhex(value ->> 2), unhex(value ->> 3), value ->> 4, \
                value ->> 5, value ->> 6, value ->> 7, unhex(value ->> 8), value ->> 9, value ->> 10, value ->> 11, $1, $2 \
         FROM jsonb_each($3)",
    )
    .bind(now)
    .bind(now)
    .bind(input.finish());
}

/// `schedule_at` asking for each target's next free posting slot.
pub const NEXT_SLOT: &str = "next_slot";

/// A repeat interval: 1 to 365 days; 0 (stop repeating) only where `stop` is allowed.
fn check_repeat(days: Option<i64>, stop: bool) -> Result<Option<i64>, Error> {
    match days {
        None => Ok(None),
        Some(0) if stop => Ok(Some(0)),
        Some(d) if (1..=365).contains(&d) => Ok(Some(d)),
        Some(_) => Err(invalid(
            "repeat_every_days",
            if stop {
                "repeat_every_days is 1 to 365, or 0 to stop repeating"
            } else {
                "repeat_every_days is 1 to 365"
            },
        )),
    }
}

/// Round `round` of a delivery's job; the unique key stops a round being enqueued twice.
pub(crate) fn delivery_job(delivery: Uuid, round: i64, at: Option<DateTime<Utc>>, bucket: Option<String>) -> NewJob {
    let mut job = NewJob::new(DELIVERY_JOB, json!({ "delivery": delivery }))
        .unique_key(format!("delivery:{delivery}:{round}"))
        .max_attempts(MAX_ATTEMPTS);
    if let Some(at) = at {
        job = job.run_at(at);
    }
    if let Some(b) = bucket {
        job = job.bucket(b);
    }
    job
}

/// The text a platform will count: the link is appended where the platform has no link cards.
fn checked(platform: &herald_core::platforms::Platform, c: &Content, media: &[MediaItem]) -> Checked {
    let link = c.link.as_deref().filter(|l| !l.is_empty() && !c.text.contains(*l));
    let text = match link {
        Some(l) if !platform.capabilities.link_card => format!("{}\n\n{l}", c.text.trim_end()),
        _ => c.text.clone(),
    };
    Checked { text, media: media.to_vec() }
}

/// The rules `content` breaks on this connection (with its instance's own limits). With thread
/// splitting on and a platform that takes replies, over-long text is not a violation.
pub(crate) fn violations(loaded: &Loaded, content: &Content, media: &[MediaItem]) -> Vec<Violation> {
    let Some(adapter) = herald_platforms::adapter(&loaded.view.platform) else { return Vec::new() };
    let rules = adapter.rules(&loaded.connection);
    let mut v = validate(&rules, &checked(&rules, content, media));
    if content.thread.split && rules.capabilities.thread {
        v.retain(|x| !matches!(x.rule, "text_length" | "text_bytes"));
    }
    v
}

fn check_tags(tags: &[String]) -> Result<Vec<String>, Error> {
    if tags.len() > 20 {
        return Err(invalid("tags", "at most 20 tags"));
    }
    tags.iter()
        .map(|t| {
            let t = t.trim();
            if t.is_empty() || t.chars().count() > 50 || t.contains(['"', '\\']) || t.chars().any(char::is_control) {
                Err(invalid("tags", format!("`{t}`: a tag is 1 to 50 characters, without quotes or backslashes")))
            } else {
                Ok(t.to_string())
            }
        })
        .collect()
}

fn check_content(c: &Content) -> Result<(), Error> {
    if c.text.len() > MAX_TEXT_BYTES {
        return Err(invalid("text", format!("the text is longer than {MAX_TEXT_BYTES} bytes")));
    }
    if !c.options.is_object() {
        return Err(invalid("options", "options must be a JSON object"));
    }
    if let Some(l) = &c.link {
        match url::Url::parse(l) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(invalid("link", format!("`{l}` is not an http(s) URL"))),
        }
    }
    Ok(())
}

impl Posts {
    pub fn new(accounts: Accounts, connections: Connections, queue: Queue, media: herald_media::MediaStore) -> Posts {
        Posts {
            db: accounts.db().clone(),
            endpoints: ReadCache::new(accounts.db(), crate::events::CHANGED),
            accounts,
            connections,
            queue,
            media,
            public_media: None,
            creates: Arc::default(),
        }
    }

    /// Deliveries carry a signed, expiring URL for each file (platforms that fetch by URL, like
    /// Nostr, need one), served by the public route `GET /api/v1/media/{id}/file`.
    pub fn with_public_media(mut self, public: herald_media::PublicMedia) -> Posts {
        self.public_media = Some(public);
        self
    }

    /// `given`, or the team's own timezone.
    pub async fn team_timezone(&self, team: Uuid, given: Option<&str>) -> Result<herald_core::time::Tz, Error> {
        let name = match given {
            Some(z) => z.to_string(),
            None => on_read!(self.db, c => sqlx::query_scalar::<_, String>("SELECT timezone FROM teams WHERE id = $1")
                .bind(team).fetch_one(c).await)
            .map_err(store)?,
        };
        herald_core::time::parse_timezone(&name).map_err(|e| invalid("timezone", e))
    }

    async fn schedule(&self, team: Uuid, at: Option<&str>, zone: Option<&str>) -> Result<Option<DateTime<Utc>>, Error> {
        let Some(at) = at else { return Ok(None) };
        let tz = self.team_timezone(team, zone).await?;
        let t = herald_core::time::parse_schedule(at, tz).map_err(|e| invalid("schedule_at", e))?;
        if t < Utc::now() - chrono::Duration::seconds(60) {
            return Err(invalid(
                "schedule_at",
                format!("{} is in the past; leave schedule_at out to publish now", t.to_rfc3339()),
            ));
        }
        Ok(Some(t))
    }

    /// Loads every target (but those in `known`, loaded already) and checks the content against
    /// each platform's rules; one 422 lists every broken rule of every target. The rows come from
    /// the team's kept for a second ([`Connections::load_many_kept`]): the delivery loads its
    /// connection afresh before it calls the platform.
    ///
    /// [`Connections::load_many_kept`]: herald_connections::Connections::load_many_kept
    async fn check_targets(
        &self,
        team: Uuid,
        post: &Content,
        targets: &[(Uuid, Override)],
        known: Option<&HashMap<Uuid, Loaded>>,
    ) -> Result<Vec<Loaded>, Error> {
        if post.media.len() > 20 {
            return Err(invalid("media", "at most 20 media per post"));
        }
        let media: Vec<MediaItem> = self.media_items(team, &post.media).await?.into_iter().map(|(_, m)| m).collect();
        let mut loaded = Vec::with_capacity(targets.len());
        let mut report = Vec::new();
        let mut opened: HashMap<Uuid, Loaded> = HashMap::new();
        let mut ids = Vec::new();
        for (id, _) in targets {
            match known.and_then(|k| k.get(id)).filter(|l| l.team == team) {
                Some(l) => drop(opened.insert(*id, l.clone())),
                None => ids.push(*id),
            }
        }
        if !ids.is_empty() {
            opened.extend(self.connections.load_many_kept(team, &ids).await?);
        }
        for (i, (id, o)) in targets.iter().enumerate() {
            let l = match opened.remove(id) {
                Some(l) => l,
                // Gone, or its credentials do not open: the one-by-one load says which.
                None => self.connections.load(team, *id).await.map_err(|e| match e.code {
                    ErrorCode::NotFound => {
                        invalid(&format!("targets[{i}].connection_id"), format!("no connection {id} in this team"))
                    }
                    _ => e,
                })?,
            };
            let v = violations(&l, &o.resolve(post), &media);
            if !v.is_empty() {
                report.push(TargetViolations {
                    index: i,
                    connection_id: *id,
                    platform: l.view.platform.clone(),
                    violations: v,
                });
            }
            loaded.push(l);
        }
        if !report.is_empty() {
            let n: usize = report.iter().map(|r| r.violations.len()).sum();
            return Err(Error::new(
                ErrorCode::ValidationFailed,
                format!("the post breaks {n} platform rule(s); see details.targets"),
            )
            .with_details(json!({ "targets": report })));
        }
        Ok(loaded)
    }

    /// Creates a post: a draft, now, or scheduled. With an idempotency key, a repeat of the same
    /// request answers the post it made (`true`), and a different request with the key is a
    /// conflict.
    pub async fn create(&self, p: &Principal, new: NewPost, key: Option<&str>) -> Result<(PostView, bool), Error> {
        self.create_with(p, new, key, None).await
    }

    /// [`Posts::create`] with targets the caller has loaded already (a workflow's publish step
    /// loads them to resolve its targets), so they are not read again.
    pub async fn create_with(
        &self,
        p: &Principal,
        new: NewPost,
        key: Option<&str>,
        known: Option<&HashMap<Uuid, Loaded>>,
    ) -> Result<(PostView, bool), Error> {
        match self.stage(p, new, key, known).await? {
            Staged::Existing(view) => Ok((*view, true)),
            Staged::Ready(post) => self.write_staged(*post).await,
        }
    }

    /// Checks a new post as [`Posts::create_with`] does, and stops short of writing it: the post
    /// this key made already, or the post ready to write, with [`Posts::write_staged`] or in the
    /// caller's transaction with [`Posts::write_in`] (a workflow's publish step writes its post
    /// with the run's commit).
    pub async fn stage(
        &self,
        p: &Principal,
        new: NewPost,
        key: Option<&str>,
        known: Option<&HashMap<Uuid, Loaded>>,
    ) -> Result<Staged, Error> {
        self.stage_keyed(p, new, key, true, known).await
    }

    /// [`Posts::stage`] for a key the caller knows no post holds yet, so it is not looked up:
    /// always [`Staged::Ready`]. Should a post hold it after all, its write fails with a
    /// conflict (the key is unique in its team), and nothing is written twice.
    pub async fn stage_new(
        &self,
        p: &Principal,
        new: NewPost,
        key: &str,
        known: Option<&HashMap<Uuid, Loaded>>,
    ) -> Result<Staged, Error> {
        self.stage_keyed(p, new, Some(key), false, known).await
    }

    async fn stage_keyed(
        &self,
        p: &Principal,
        new: NewPost,
        key: Option<&str>,
        look_up: bool,
        known: Option<&HashMap<Uuid, Loaded>>,
    ) -> Result<Staged, Error> {
        let (team, _) = authorize(p, if new.draft { Action::WriteContent } else { Action::Publish })?;
        let hash = hex::encode(Sha256::digest(format!("{new:?}").as_bytes()));
        if let Some(key) = key {
            if key.is_empty() || key.len() > 255 {
                return Err(invalid("Idempotency-Key", "the Idempotency-Key header must be 1 to 255 characters"));
            }
            if look_up && let Some(existing) = self.by_key(team, key, &hash).await? {
                return Ok(Staged::Existing(Box::new(existing)));
            }
        }
        let content = Content {
            text: new.text.clone(),
            link: new.link.clone().filter(|l| !l.trim().is_empty()),
            options: new.options.clone().unwrap_or_else(empty),
            thread: new.thread,
            media: new.media.clone(),
        };
        check_content(&content)?;
        let tags = check_tags(&new.tags)?;
        if new.targets.is_empty() && !new.draft {
            return Err(invalid("targets", "a post needs at least one target connection (or save it as a draft)"));
        }
        if new.targets.len() > MAX_TARGETS {
            return Err(invalid("targets", format!("at most {MAX_TARGETS} targets")));
        }
        let mut targets = Vec::new();
        for (i, t) in new.targets.iter().enumerate() {
            if targets.iter().any(|(id, _)| *id == t.connection_id) {
                return Err(invalid(&format!("targets[{i}]"), "the same connection twice"));
            }
            if t.options.as_ref().is_some_and(|o| !o.is_object()) {
                return Err(invalid(&format!("targets[{i}].options"), "options must be a JSON object"));
            }
            targets.push((t.connection_id, Override { text: t.text.clone(), options: t.options.clone() }));
        }
        let next_slot = new.schedule_at.as_deref() == Some(NEXT_SLOT);
        if next_slot && new.draft {
            return Err(invalid("schedule_at", "next_slot schedules a post to publish; a draft has no time yet"));
        }
        let repeat = check_repeat(new.repeat_every_days, false)?;
        let schedule = match next_slot {
            true => None,
            false => self.schedule(team, new.schedule_at.as_deref(), new.timezone.as_deref()).await?,
        };
        let slot_zone = match next_slot {
            true => Some(self.team_timezone(team, new.timezone.as_deref()).await?),
            false => None,
        };
        let zone = match (&new.schedule_at, &new.timezone) {
            (Some(_), Some(z)) => Some(self.team_timezone(team, Some(z)).await?.name().to_string()),
            _ => None,
        };
        let loaded = self.check_targets(team, &content, &targets, known).await?;
        let endpoints = crate::events::endpoints_now(self, team).await?;
        let mut buckets = Vec::with_capacity(loaded.len());
        if !new.draft {
            for l in &loaded {
                buckets.push(self.connections.pace(&self.queue, l).await?);
            }
        }

        let id = Uuid::now_v7();
        let now = Ts::now();
        let state = PostState::initial(new.draft, schedule);
        let content_json = serde_json::to_string(&content).unwrap_or_default();
        let deliveries = targets
            .iter()
            .zip(&loaded)
            .map(|((conn, o), l)| {
                let overrides = serde_json::to_string(o).unwrap_or_default();
                DeliveryRow::fresh(id, team, *conn, &l.view.platform, state.delivery_state(), overrides, schedule)
            })
            .collect();
        let prepared = Prepared {
            row: PostRow {
                id,
                author_user: p.user_id,
                state: state.as_str().to_string(),
                content: content_json,
                schedule_at: schedule.map(Ts),
                timezone: zone,
                campaign: new.campaign,
                tags: serde_json::to_string(&tags).unwrap_or_default(),
                repeat_days: repeat,
                series_id: repeat.map(|_| id),
                created_at: now,
                updated_at: now,
            },
            team,
            author_key: p.key_id,
            key: key.map(str::to_string),
            hash: hash.clone(),
            deliveries,
            buckets: (!new.draft).then_some(buckets),
            actor: Actor::of(p),
            endpoints,
        };
        Ok(Staged::Ready(Box::new(StagedPost { prepared, content, slot_zone })))
    }

    /// Writes a staged post in a transaction of its own (with other posts checked at the same
    /// moment); `true` when another request with its key made the post first, which it answers.
    pub async fn write_staged(&self, staged: StagedPost) -> Result<(PostView, bool), Error> {
        let StagedPost { mut prepared, content, slot_zone } = staged;
        let (team, key, hash) = (prepared.team, prepared.key.clone(), prepared.hash.clone());
        let written = match slot_zone {
            // Posts checked together are written together.
            None => self.creates().write(prepared).await,
            Some(tz) => {
                // The monthly counter is one row per team: updating it locks that row (PostgreSQL)
                // until the commit. Slots must be read after a first write (SQLite's write lock),
                // so that no other post takes them meanwhile, and the counter is that write.
                let mut tx = self.db.begin().await.map_err(Error::from)?;
                self.accounts.consume_monthly(&mut tx, team, Quota::PostsPerMonth, 1).await?;
                // The deliveries are in target order.
                let conns: Vec<Uuid> = prepared.deliveries.iter().map(|d| d.connection_id).collect();
                let mut run_ats = Vec::with_capacity(conns.len());
                for (i, conn) in conns.iter().enumerate() {
                    let at = crate::slots::next_free(&mut tx, *conn, tz).await?.ok_or_else(|| {
                        invalid(
                            &format!("targets[{i}].connection_id"),
                            format!(
                                "connection {conn} has no free posting slot in the next 12 weeks; \
                                 add some with PUT /api/v1/connections/{conn}/slots"
                            ),
                        )
                    })?;
                    run_ats.push(at);
                }
                prepared.slotted(&run_ats);
                match create::write(&mut tx, std::slice::from_mut(&mut prepared), false).await {
                    Ok(()) => match tx.commit().await {
                        Ok(()) => Ok(prepared),
                        Err(e) => Err(create::taken(e, std::slice::from_ref(&prepared))),
                    },
                    Err(e) => Err(WriteError::Other(e)),
                }
            }
        };
        let prepared = match written {
            Ok(p) => p,
            // A write that failed as another request made the post with this key (its insert is
            // deferred, so a later statement of the transaction may report it): that post answers.
            Err(WriteError::Other(e)) => {
                if let Some(key) = key.as_deref()
                    && let Ok(Some(existing)) = self.by_key(team, key, &hash).await
                {
                    return Ok((existing, true));
                }
                return Err(e);
            }
            // Two requests with one key raced: the other one made the post.
            Err(WriteError::KeyTaken) => {
                return match key.as_deref() {
                    Some(key) => match self.by_key(team, key, &hash).await? {
                        Some(existing) => Ok((existing, true)),
                        None => Err(conflict("another request with this Idempotency-Key is being made; retry")),
                    },
                    None => Err(Error::internal("a post id was taken twice")),
                };
            }
        };
        // The post as committed; no need to read it back.
        Ok((written_view(&prepared, &content), false))
    }

    /// Writes staged posts in the caller's transaction, counted against their teams' monthly
    /// quotas. Each must be one [`StagedPost::writes_with_caller`] says can. A post whose key was
    /// taken meanwhile fails the transaction with a conflict: retried, [`Posts::stage`] finds it.
    pub async fn write_in(tx: &mut Tx, posts: &[&StagedPost]) -> Result<(), Error> {
        debug_assert!(posts.iter().all(|p| p.writes_with_caller()));
        let mut prepared: Vec<Prepared> = posts.iter().map(|p| p.prepared.clone()).collect();
        create::write(tx, &mut prepared, true).await
    }

    fn creates(&self) -> &Creates {
        // The group's task gets a handle without the group: holding its own sender, the task
        // would never see it dropped, and it and this `Posts` would outlive every other handle.
        self.creates.get_or_init(|| create::spawn(Posts { creates: Arc::default(), ..self.clone() }))
    }

    /// Enqueues a delivery's job in the caller's transaction.
    pub(crate) async fn enqueue(
        &self,
        tx: &mut Tx,
        delivery: Uuid,
        round: i64,
        at: Option<DateTime<Utc>>,
        bucket: Option<String>,
    ) -> Result<Uuid, Error> {
        let job = delivery_job(delivery, round, at, bucket);
        Ok(herald_queue::enqueue(tx, job).await.map_err(Error::from)?.id().0)
    }

    /// The post made with this idempotency key, whatever its request: a workflow's publish step
    /// finds the post it made before a crash with it.
    pub async fn by_idempotency_key(&self, team: Uuid, key: &str) -> Result<Option<PostView>, Error> {
        let found: Option<(Uuid,)> = on_read!(self.db, c => sqlx::query_as(
            "SELECT id FROM posts WHERE team_id = $1 AND idempotency_key = $2")
            .bind(team).bind(key).fetch_optional(c).await)
        .map_err(store)?;
        match found {
            Some((id,)) => Ok(Some(self.get(team, id).await?)),
            None => Ok(None),
        }
    }

    async fn by_key(&self, team: Uuid, key: &str, hash: &str) -> Result<Option<PostView>, Error> {
        let found: Option<(Uuid, Option<String>)> = on_read!(self.db, c => sqlx::query_as(
            "SELECT id, request_hash FROM posts WHERE team_id = $1 AND idempotency_key = $2")
            .bind(team).bind(key).fetch_optional(c).await)
        .map_err(store)?;
        match found {
            None => Ok(None),
            Some((id, h)) if h.as_deref() == Some(hash) => Ok(Some(self.get(team, id).await?)),
            Some(_) => {
                Err(conflict("this Idempotency-Key was used for a different request; use a new key for a new post"))
            }
        }
    }

    pub(crate) async fn post_row(&self, team: Uuid, id: Uuid) -> Result<PostRow, Error> {
        let sql = format!("SELECT {POST_COLS} FROM posts WHERE team_id = $1 AND id = $2");
        let row: Option<PostRow> = on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(id).fetch_optional(c).await)
        .map_err(store)?;
        row.ok_or_else(|| Error::not_found("post"))
    }

    pub(crate) async fn delivery_rows(&self, post: Uuid) -> Result<Vec<DeliveryRow>, Error> {
        let sql = format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE post_id = $1 ORDER BY id");
        on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(post).fetch_all(c).await)
            .map_err(store)
    }

    pub(crate) async fn delivery_row(&self, team: Uuid, id: Uuid) -> Result<DeliveryRow, Error> {
        let sql = format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE team_id = $1 AND id = $2");
        let row: Option<DeliveryRow> = on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(id).fetch_optional(c).await)
        .map_err(store)?;
        row.ok_or_else(|| Error::not_found("delivery"))
    }

    fn view(row: &PostRow, deliveries: Vec<DeliveryView>) -> PostView {
        PostView {
            id: row.id,
            state: PostState::parse(&row.state).unwrap_or(PostState::Failed),
            content: row.content(),
            schedule_at: row.schedule_at.map(|t| t.0),
            timezone: row.timezone.clone(),
            campaign: row.campaign.clone(),
            tags: serde_json::from_str(&row.tags).unwrap_or_default(),
            repeat_every_days: row.repeat_days,
            series_id: row.series_id,
            author_user: row.author_user,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
            deliveries,
        }
    }

    /// The post with its deliveries and every attempt.
    pub async fn get(&self, team: Uuid, id: Uuid) -> Result<PostView, Error> {
        // One snapshot, so the post's state, its deliveries and their attempts agree.
        let mut snap = self.db.snapshot().await.map_err(Error::from)?;
        let sql = format!("SELECT {POST_COLS} FROM posts WHERE team_id = $1 AND id = $2");
        let row: Option<PostRow> = on_tx!(snap, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(id).fetch_optional(&mut *c).await)
        .map_err(store)?;
        let row = row.ok_or_else(|| Error::not_found("post"))?;
        let sql = format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE post_id = $1 ORDER BY id");
        let deliveries: Vec<DeliveryRow> =
            on_tx!(snap, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_all(&mut *c).await)
                .map_err(store)?;
        let content = row.content();
        let attempts: Vec<AttemptRow> = on_tx!(snap, c => sqlx::query_as(
            "SELECT a.delivery_id, a.part, a.started_at, a.duration_ms, a.outcome, a.http_status, a.code, a.message \
             FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.post_id = $1 \
             ORDER BY a.started_at, a.id")
            .bind(id).fetch_all(&mut *c).await)
        .map_err(store)?;
        drop(snap);
        let views = deliveries
            .iter()
            .map(|d| {
                let log = attempts
                    .iter()
                    .filter(|a| a.delivery_id == d.id)
                    .map(|a| AttemptView {
                        part: a.part,
                        started_at: a.started_at.0,
                        duration_ms: a.duration_ms,
                        outcome: a.outcome.clone(),
                        http_status: a.http_status,
                        code: a.code.clone(),
                        message: a.message.clone(),
                    })
                    .collect();
                d.view(&content, log)
            })
            .collect();
        Ok(Self::view(&row, views))
    }

    /// Posts, newest first, with their deliveries (without attempt logs).
    pub async fn list(&self, team: Uuid, q: &PostQuery) -> Result<(Vec<PostView>, Option<Uuid>), Error> {
        if let Some(s) = &q.state
            && PostState::parse(s).is_none()
        {
            return Err(invalid("state", format!("`{s}` is not a post state")));
        }
        let limit = q.limit.unwrap_or(50).clamp(1, 200);
        let tag = q.tag.as_ref().map(|t| format!("%\"{}\"%", t.replace(['%', '_', '"', '\\'], "")));
        let sql = format!(
            "SELECT {POST_COLS} FROM posts p WHERE team_id = $1 AND ($2 IS NULL OR state = $2) \
             AND ($3 IS NULL OR COALESCE(schedule_at, created_at) >= $3) AND ($4 IS NULL OR COALESCE(schedule_at, created_at) < $4) \
             AND ($5 IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE d.post_id = p.id AND d.connection_id = $5)) \
             AND ($6 IS NULL OR campaign = $6) AND ($7 IS NULL OR tags LIKE $7) AND ($8 IS NULL OR id < $8) \
             ORDER BY id DESC LIMIT $9"
        );
        let rows: Vec<PostRow> = on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(&q.state).bind(q.from.map(Ts)).bind(q.to.map(Ts)).bind(q.connection)
            .bind(&q.campaign).bind(&tag).bind(q.before).bind(limit).fetch_all(c).await)
        .map_err(store)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let content = row.content();
            let deliveries = self.delivery_rows(row.id).await?.iter().map(|d| d.view(&content, Vec::new())).collect();
            out.push(Self::view(row, deliveries));
        }
        let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
        Ok((out, next))
    }

    /// Changes a post while nothing of it has gone out; a new time moves its jobs, and
    /// `draft: false` publishes a draft.
    pub async fn update(&self, p: &Principal, id: Uuid, u: PostUpdate) -> Result<PostView, Error> {
        let publishing = u.draft == Some(false);
        let (team, _) = authorize(p, if publishing { Action::Publish } else { Action::WriteContent })?;
        let row = self.post_row(team, id).await?;
        let deliveries = self.delivery_rows(id).await?;
        if deliveries.iter().any(|d| d.state() != DeliveryState::Pending && d.state() != DeliveryState::Scheduled)
            || PostState::parse(&row.state) == Some(PostState::Cancelled)
        {
            return Err(conflict("the post has started publishing, or was cancelled; it can no longer be changed"));
        }
        let was_draft = row.state == PostState::Draft.as_str();
        let mut content = row.content();
        if let Some(t) = u.text {
            content.text = t;
        }
        if let Some(l) = u.link {
            content.link = Some(l).filter(|l| !l.trim().is_empty());
        }
        if let Some(o) = u.options {
            content.options = o;
        }
        if let Some(t) = u.thread {
            content.thread = t;
        }
        if let Some(m) = u.media {
            content.media = m;
        }
        check_content(&content)?;
        let tags = u.tags.as_deref().map(check_tags).transpose()?;
        let repeat = check_repeat(u.repeat_every_days, true)?;
        let schedule = match &u.schedule_at {
            Some(s) if s.is_empty() => None,
            Some(s) if s == NEXT_SLOT => {
                return Err(invalid("schedule_at", "next_slot is for new posts; give a time to move this one"));
            }
            Some(s) => self.schedule(team, Some(s), u.timezone.as_deref()).await?,
            None => row.schedule_at.map(|t| t.0).filter(|t| *t > Utc::now()),
        };
        let targets: Vec<(Uuid, Override)> = deliveries.iter().map(|d| (d.connection_id, d.overrides())).collect();
        let loaded = self.check_targets(team, &content, &targets, None).await?;
        let draft = if was_draft { !publishing } else { false };
        let state = PostState::initial(draft, schedule);
        let mut buckets = Vec::new();
        if was_draft && !draft {
            for l in &loaded {
                buckets.push(self.connections.pace(&self.queue, l).await?);
            }
        }
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        if was_draft && !draft {
            self.accounts.consume_monthly(&mut tx, team, Quota::PostsPerMonth, 1).await?;
        }
        exec!(
            tx,
            "UPDATE posts SET content = $3, schedule_at = $4, state = $5, campaign = COALESCE($6, campaign), \
             tags = COALESCE($7, tags), timezone = COALESCE($8, timezone), updated_at = $9, \
             repeat_days = CASE WHEN $10 IS NULL THEN repeat_days WHEN $10 = 0 THEN NULL ELSE $10 END, \
             series_id = CASE WHEN $10 > 0 THEN COALESCE(series_id, id) ELSE series_id END \
             WHERE team_id = $1 AND id = $2",
            team,
            id,
            serde_json::to_string(&content).unwrap_or_default(),
            schedule.map(Ts),
            state.as_str(),
            &u.campaign,
            tags.map(|t| serde_json::to_string(&t).unwrap_or_default()),
            &u.timezone,
            Ts::now(),
            repeat
        )
        .map_err(store)?;
        let dstate = if state == PostState::Scheduled { DeliveryState::Scheduled } else { DeliveryState::Pending };
        let mut moved = Vec::new();
        for (i, d) in deliveries.iter().enumerate() {
            let job = if was_draft && !draft {
                Some(self.enqueue(&mut tx, d.id, 0, schedule, buckets[i].clone()).await?)
            } else {
                if let Some(j) = d.job_id {
                    moved.push(j);
                }
                d.job_id
            };
            exec!(
                tx,
                "UPDATE deliveries SET state = $2, run_at = $3, job_id = $4, updated_at = $5 WHERE id = $1",
                d.id,
                dstate.as_str(),
                schedule.map(Ts),
                job,
                Ts::now()
            )
            .map_err(store)?;
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "post.updated")
                .target("post", id)
                .details(json!({"state": state.as_str(), "schedule_at": schedule})),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        // Moving a pending job is safe after the commit: the worker reads the delivery's own state.
        let at = schedule.unwrap_or_else(Utc::now);
        for j in moved {
            self.queue.reschedule(herald_queue::JobId(j), at).await.map_err(Error::from)?;
        }
        self.get(team, id).await
    }

    /// Cancels every delivery that has not started. One already publishing finishes.
    pub async fn cancel(&self, p: &Principal, id: Uuid) -> Result<PostView, Error> {
        let (team, _) = authorize(p, Action::Publish)?;
        self.post_row(team, id).await?;
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let jobs: Vec<Option<Uuid>> = on_tx!(tx, c => sqlx::query_scalar(
            "SELECT job_id FROM deliveries WHERE post_id = $1 AND state IN ('pending', 'scheduled')")
            .bind(id).fetch_all(&mut *c).await)
        .map_err(store)?;
        exec!(
            tx,
            "UPDATE deliveries SET state = 'cancelled', updated_at = $2 WHERE post_id = $1 AND state IN ('pending', 'scheduled')",
            id,
            Ts::now()
        )
        .map_err(store)?;
        let any_left: i64 = on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE post_id = $1")
            .bind(id).fetch_one(&mut *c).await)
        .map_err(store)?;
        if any_left == 0 {
            // A draft without targets.
            exec!(tx, "UPDATE posts SET state = 'cancelled', updated_at = $2 WHERE id = $1", id, Ts::now())
                .map_err(store)?;
        } else {
            exec!(
                tx,
                "UPDATE posts SET state = CASE WHEN state = 'draft' THEN 'scheduled' ELSE state END WHERE id = $1",
                id
            )
            .map_err(store)?;
            refresh_post(&mut tx, id).await?;
        }
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(team), "post.cancelled").target("post", id)).await?;
        tx.commit().await.map_err(Error::from)?;
        for j in jobs.into_iter().flatten() {
            let _ = self.queue.cancel(herald_queue::JobId(j), "the post was cancelled").await;
        }
        self.get(team, id).await
    }

    /// Sends a failed or unconfirmed delivery again. An unconfirmed one needs the caller to confirm
    /// it did not go out, since sending it again may post it twice.
    pub async fn retry(&self, p: &Principal, delivery: Uuid, confirm_not_posted: bool) -> Result<PostView, Error> {
        let (team, _) = authorize(p, Action::Publish)?;
        let d = self.delivery_row(team, delivery).await?;
        match d.state() {
            DeliveryState::Failed => {}
            DeliveryState::Unconfirmed if confirm_not_posted => {}
            DeliveryState::Unconfirmed => {
                return Err(invalid(
                    "confirm_not_posted",
                    "this delivery may already be on the platform; check, then retry with {\"confirm_not_posted\": true} or resolve it",
                ));
            }
            other => {
                return Err(conflict(format!(
                    "only failed or unconfirmed deliveries can be retried; this one is {}",
                    other.as_str()
                )));
            }
        }
        let loaded = self.connections.load(team, d.connection_id).await?;
        let bucket = self.connections.pace(&self.queue, &loaded).await?;
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let job = self.enqueue(&mut tx, d.id, d.attempts + 1, None, bucket).await?;
        exec!(
            tx,
            "UPDATE deliveries SET state = 'pending', job_id = $2, call_started_at = NULL, first_attempt_at = NULL, \
             run_at = NULL, updated_at = $3 WHERE id = $1",
            d.id,
            job,
            Ts::now()
        )
        .map_err(store)?;
        refresh_post(&mut tx, d.post_id).await?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "delivery.retried").target("delivery", d.id).details(json!({"was": d.state})),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        self.get(team, d.post_id).await
    }

    /// Settles an unconfirmed delivery: it did go out (with its URL, if known), or it did not.
    pub async fn resolve(
        &self,
        p: &Principal,
        delivery: Uuid,
        published: bool,
        url: Option<String>,
    ) -> Result<PostView, Error> {
        let (team, _) = authorize(p, Action::Publish)?;
        let d = self.delivery_row(team, delivery).await?;
        if d.state() != DeliveryState::Unconfirmed {
            return Err(conflict(format!("only unconfirmed deliveries can be resolved; this one is {}", d.state)));
        }
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        if published {
            exec!(
                tx,
                "UPDATE deliveries SET state = 'published', platform_url = COALESCE($2, platform_url), published_at = $3, \
                 updated_at = $3 WHERE id = $1",
                d.id,
                &url,
                Ts::now()
            )
            .map_err(store)?;
        } else {
            exec!(
                tx,
                "UPDATE deliveries SET state = 'failed', last_error = $2, updated_at = $3 WHERE id = $1",
                d.id,
                format!("not published, as {} confirmed", p.label),
                Ts::now()
            )
            .map_err(store)?;
        }
        refresh_post(&mut tx, d.post_id).await?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "delivery.resolved")
                .target("delivery", d.id)
                .details(json!({"published": published, "url": url})),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        self.get(team, d.post_id).await
    }

    /// Deletes a post, its deliveries and pending jobs; with `from_platforms`, first deletes what
    /// was published where the platform allows it. Answers what happened on each platform.
    pub async fn delete(&self, p: &Principal, id: Uuid, from_platforms: bool) -> Result<Value, Error> {
        let (team, _) = authorize(p, Action::DeleteContent)?;
        self.post_row(team, id).await?;
        let deliveries = self.delivery_rows(id).await?;
        let mut report = Vec::new();
        if from_platforms {
            for d in deliveries.iter().filter(|d| d.state() == DeliveryState::Published) {
                let mut ids: Vec<String> =
                    d.parts().iter().rev().filter_map(|p| p["id"].as_str().map(str::to_string)).collect();
                if ids.is_empty() {
                    ids.extend(d.platform_post_id.clone());
                }
                let result = match (
                    herald_platforms::adapter(&d.platform),
                    self.connections.load(team, d.connection_id).await,
                ) {
                    (Some(a), Ok(l)) => {
                        let mut r = Ok(());
                        for pid in &ids {
                            if let Err(e) = a.delete(self.connections.net(), &l.connection, pid).await {
                                r = Err(e.to_string());
                                break;
                            }
                        }
                        r
                    }
                    (_, Err(e)) => Err(e.message),
                    (None, _) => Err(format!("unknown platform {}", d.platform)),
                };
                report.push(
                    json!({"delivery": d.id, "platform": d.platform, "deleted": result.is_ok(), "error": result.err()}),
                );
            }
        }
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        exec!(tx, "DELETE FROM posts WHERE team_id = $1 AND id = $2", team, id).map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "post.deleted").target("post", id).details(json!({"from_platforms": report})),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        for j in deliveries.iter().filter(|d| !d.state().is_final()).filter_map(|d| d.job_id) {
            let _ = self.queue.cancel(herald_queue::JobId(j), "the post was deleted").await;
        }
        Ok(json!({ "id": id, "deleted": true, "platforms": report }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryState as D;

    #[test]
    fn the_post_state_follows_its_deliveries() {
        let later = Some(Utc::now() + chrono::Duration::hours(1));
        assert_eq!(rollup(PostState::Scheduled, later, &[D::Scheduled, D::Scheduled]), PostState::Scheduled);
        assert_eq!(rollup(PostState::Scheduled, None, &[D::Pending]), PostState::Publishing);
        assert_eq!(rollup(PostState::Publishing, None, &[D::Published, D::Publishing]), PostState::Publishing);
        assert_eq!(rollup(PostState::Publishing, None, &[D::Published, D::Published]), PostState::Published);
        assert_eq!(rollup(PostState::Publishing, None, &[D::Published, D::Failed]), PostState::PartiallyPublished);
        assert_eq!(rollup(PostState::Publishing, None, &[D::Unconfirmed, D::Failed]), PostState::Failed);
        assert_eq!(rollup(PostState::Scheduled, later, &[D::Cancelled, D::Cancelled]), PostState::Cancelled);
        assert_eq!(rollup(PostState::Draft, None, &[D::Pending]), PostState::Draft);
    }

    /// The group-commit task of new posts ends with the last handle of its `Posts`: its own
    /// handle must not hold the group's sender (it did, and every `Posts` a test or a bench made
    /// lived on, with its task, its caches and its database handle).
    #[tokio::test]
    async fn the_posts_group_ends_with_the_last_posts_handle() {
        use herald_accounts::{Accounts, AccountsConfig, Actor, Principal};
        use herald_http::guard::{Cidr, GuardConfig};
        let t = herald_store::testing::TestDb::sqlite().await;
        let accounts = Accounts::new(
            t.db.clone(),
            herald_vault::Vault::new(&[herald_vault::MasterKey::generate()]),
            AccountsConfig::default(),
        );
        let mut tx = t.db.begin().await.unwrap();
        let (user, team) = accounts.create_user(&mut tx, "g@example.com", "G", "pw-123456789", false).await.unwrap();
        tx.commit().await.unwrap();
        let tg = herald_testkit::telegram::start().await;
        let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").unwrap()], allow_ports: vec![] };
        let net = herald_platforms::Net::new(
            herald_http::HttpClient::trusted().unwrap(),
            herald_http::SafeClient::new(guard).unwrap(),
        )
        .with_base("telegram", tg.url.clone());
        let connections = Connections::new(accounts.clone(), net);
        let new = herald_connections::NewConnection {
            platform: "telegram".into(),
            name: None,
            credentials: json!({"bot_token": herald_testkit::telegram::TOKEN}),
            settings: json!({"chat_id": herald_testkit::telegram::CHANNEL}),
        };
        let conn = connections.create_in(team, &Actor::system(), new).await.unwrap().id;
        let posts = Posts::new(
            accounts,
            connections,
            Queue::new(t.db.clone()),
            herald_media::MediaStore::local(herald_store::testing::scratch_dir("herald-media")),
        );
        let owner = Principal::acting(Some(user.id), team, herald_core::TeamRole::Owner, "g@example.com");
        let draft = crate::NewPost { draft: true, ..crate::NewPost::now("a draft", &[conn]) };
        posts.create(&owner, draft, None).await.unwrap();
        assert!(posts.creates.get().is_some(), "the create went through the group");
        let group = Arc::downgrade(&posts.creates);
        drop(posts);
        for _ in 0..100 {
            if group.upgrade().is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(group.upgrade().is_none(), "the group's task still holds the group");
        t.destroy().await;
    }

    /// Every round of deliveries runs the rollup. PostgreSQL plans a prepared statement once for
    /// any ids (a generic plan); that plan must look the posts' deliveries up by index, never
    /// scan every delivery ever made. (Without the ids on the deliveries' side it hashed a
    /// sequential scan of them.)
    #[tokio::test]
    async fn the_rollups_generic_plan_on_postgresql_reads_deliveries_by_index() {
        let Some(t) = herald_store::testing::TestDb::postgres().await else { return };
        let herald_store::Pools::Postgres(pool) = t.db.pools() else { unreachable!("a PostgreSQL test database") };
        let mut c = pool.acquire().await.unwrap();
        // Rows as a busy server has them, unanalysed; their teams and connections need not exist.
        for sql in [
            "SET session_replication_role = replica",
            "INSERT INTO posts (id, team_id, state, content, created_at, updated_at) \
             SELECT gen_random_uuid(), gen_random_uuid(), 'published', '{}', now(), now() FROM generate_series(1, 1000)",
            "INSERT INTO deliveries (id, post_id, team_id, connection_id, platform, state, content, idempotency_key, \
             created_at, updated_at) SELECT gen_random_uuid(), p.id, p.team_id, gen_random_uuid(), 'webhook', \
             'published', '{}', gen_random_uuid()::text, now(), now() FROM posts p, generate_series(1, 5)",
            "SET plan_cache_mode = force_generic_plan",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *c).await.unwrap();
        }
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM posts ORDER BY id LIMIT 3").fetch_all(&mut *c).await.unwrap();
        let prepare = format!("PREPARE rollup(uuid[]) AS {}", rollup_sql(Backend::Postgres));
        sqlx::query(sqlx::AssertSqlSafe(prepare)).execute(&mut *c).await.unwrap();
        let list = ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(", ");
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE rollup(ARRAY[{list}]::uuid[])")))
                .fetch_all(&mut *c)
                .await
                .unwrap();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan on deliveries"), "{plan}");
        assert!(plan.contains("deliveries_post"), "{plan}");
        drop(c);
        t.destroy().await;
    }
}

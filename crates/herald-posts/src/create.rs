//! Writing new posts, together.
//!
//! A post's create checks everything first (rules, targets, schedule) and only then writes: the
//! post, its deliveries, their jobs, its events, an audit line and the monthly count. Posts that
//! are checked at the same moment are written in one transaction of a few multi-row statements
//! instead of one transaction each, so the database's single writer (SQLite) spends one commit
//! on many posts. No post is answered before its transaction commits. If the shared transaction
//! fails (a team over its monthly quota, an `Idempotency-Key` raced by another request), each
//! post is written again on its own, so one post's problem is only that post's answer.

use crate::batch::{Written, WrittenRow};
use crate::model::PostState;
use crate::store::{DeliveryRow, PostRow, Posts, defer_insert_deliveries, enqueue_delivery_jobs, give_job_ids};
use chrono::{DateTime, Utc};
use herald_accounts::Quota;
use herald_accounts::audit::{self, Actor, Event};
use herald_core::{Error, ErrorCode};
use herald_store::group::{Group, GroupConfig};
use herald_store::{Backend, Ts, Tx, column};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// The most posts, and deliveries, one shared transaction writes (SQLite binds at most 32,766
/// values in a statement; a delivery takes 12).
const MAX_POSTS: usize = 100;
const MAX_DELIVERIES: usize = 1_000;

/// A checked post, ready to write.
#[derive(Clone)]
pub(crate) struct Prepared {
    pub row: PostRow,
    pub team: Uuid,
    pub author_key: Option<Uuid>,
    pub key: Option<String>,
    pub hash: String,
    pub deliveries: Vec<DeliveryRow>,
    /// Each delivery's rate bucket; `None` for a draft, which has no jobs.
    pub buckets: Option<Vec<Option<String>>>,
    pub actor: Actor,
    /// The team's active event endpoints, read before the write (see [`crate::events::endpoints_now`]).
    pub endpoints: crate::events::Endpoints,
}

impl Prepared {
    fn state(&self) -> PostState {
        PostState::parse(&self.row.state).unwrap_or(PostState::Publishing)
    }

    /// Each delivery goes at its connection's next free slot (`at`, in target order); the post is
    /// due at the first of them.
    pub fn slotted(&mut self, at: &[DateTime<Utc>]) {
        let schedule = at.iter().min().copied();
        let state = PostState::initial(false, schedule);
        self.row.state = state.as_str().to_string();
        self.row.schedule_at = schedule.map(Ts);
        for (d, at) in self.deliveries.iter_mut().zip(at) {
            d.run_at = Some(Ts(*at));
            d.state = state.delivery_state().as_str().to_string();
        }
    }
}

/// Why a write failed.
pub(crate) enum WriteError {
    /// Another request made a post with this `Idempotency-Key` first.
    KeyTaken,
    Other(Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::KeyTaken => f.write_str("another request made a post with this Idempotency-Key first"),
            WriteError::Other(e) => e.fmt(f),
        }
    }
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Other(e)
    }
}

/// Writes `posts` in the caller's transaction; `quota` counts them against their teams' monthly
/// limits (the slot path counts first, itself).
pub(crate) async fn write(tx: &mut Tx, posts: &mut [Prepared], quota: bool) -> Result<(), Error> {
    if posts.is_empty() {
        return Ok(());
    }
    // On SQLite only the monthly count's result is read (its first statement carries the transaction's
    // BEGIN); everything else is deferred and goes with the COMMIT, in one trip (on SQLite's
    // writer each trip is two thread wake-ups while the writer is held). A post whose
    // Idempotency-Key another request took meanwhile fails the commit (see `commit`), or on
    // PostgreSQL the jobs' insert that carries the posts' rows, as a conflict.
    if quota {
        for (team, sent) in sent_per_team(posts) {
            herald_accounts::consume_monthly(tx, team, Quota::PostsPerMonth, sent).await?;
        }
    }
    // The jobs' ids are made here, so the deliveries can be written before their jobs. On
    // PostgreSQL they are: the jobs' insert, which answers which were handed over, goes last and
    // carries the rows deferred before it (see `Tx::carry`), one trip for all of them, the last
    // before the commit, so the rate buckets its jobs take tokens from are held the shortest
    // time. On SQLite the jobs go first: their only read (the buckets' tokens) goes alone, and
    // all that is deferred goes with the commit.
    let now = posts[0].row.created_at;
    give_job_ids(posts.iter_mut().filter(|p| p.buckets.is_some()).flat_map(|p| p.deliveries.iter_mut()));
    let jobs_first = tx.backend() == Backend::Sqlite;
    if jobs_first {
        enqueue_jobs(tx, posts).await?;
    }
    // The rows due now are kept for their starts (see `batch::Written`) as the transaction
    // commits, before any of their jobs starts: the jobs' hand-over, registered by the enqueue
    // below, runs after this.
    let due: Vec<WrittenRow> = posts
        .iter()
        .filter(|p| p.buckets.is_some())
        .flat_map(|p| {
            let post = Arc::new(p.row.clone());
            p.deliveries.iter().filter(|d| d.run_at.is_none()).map(move |d| (d.clone(), post.clone()))
        })
        .collect();
    let written = tx.local::<Written>();
    tx.after_commit(move || written.keep(due));
    if tx.backend() == Backend::Sqlite {
        defer_insert_posts_sqlite(tx, posts);
    } else {
        defer_insert_posts_pg(tx, posts);
    }
    let rows: Vec<&DeliveryRow> = posts.iter().flat_map(|p| &p.deliveries).collect();
    defer_insert_deliveries(tx, now, &rows);

    // Events, once per team for its endpoints.
    let mut by_team: BTreeMap<Uuid, Vec<&Prepared>> = BTreeMap::new();
    for p in posts.iter() {
        by_team.entry(p.team).or_default().push(p);
    }
    for (team, group) in &by_team {
        let endpoints = &group[0].endpoints;
        for p in group {
            let data = json!({"post": p.row.id, "state": p.state(), "schedule_at": p.row.schedule_at.map(|t| t.0),
                "targets": p.deliveries.len()});
            let mut kinds = vec![("post.created", "post created")];
            if p.state() == PostState::Scheduled {
                kinds.push(("post.scheduled", "post scheduled"));
            }
            for (kind, message) in kinds {
                crate::events::emit_to(tx, endpoints, *team, kind, ("post", p.row.id), message, data.clone()).await?;
            }
        }
    }
    let lines: Vec<(&Actor, Event<'_>)> = posts
        .iter()
        .map(|p| {
            let details = json!({"state": p.row.state, "targets": p.deliveries.len(),
                "schedule_at": p.row.schedule_at.map(|t| t.0)});
            (&p.actor, Event::new(Some(p.team), "post.created").target("post", p.row.id).details(details))
        })
        .collect();
    audit::record_many(tx, &lines).await?;
    if !jobs_first {
        enqueue_jobs(tx, posts).await?;
    }
    Ok(())
}

/// How many of `posts` each team sends (drafts are not counted), for its monthly quota.
fn sent_per_team(posts: &[Prepared]) -> BTreeMap<Uuid, i64> {
    let mut teams: BTreeMap<Uuid, i64> = BTreeMap::new();
    for p in posts.iter().filter(|p| p.buckets.is_some()) {
        *teams.entry(p.team).or_default() += 1;
    }
    teams
}

/// The jobs of the posts' deliveries (drafts have none).
async fn enqueue_jobs(tx: &mut Tx, posts: &[Prepared]) -> Result<(), Error> {
    let sent: Vec<&Prepared> = posts.iter().filter(|p| p.buckets.is_some()).collect();
    let rows: Vec<&DeliveryRow> = sent.iter().flat_map(|p| &p.deliveries).collect();
    let buckets: Vec<Option<String>> = sent.iter().flat_map(|p| p.buckets.iter().flatten().cloned()).collect();
    enqueue_delivery_jobs(tx, &rows, &buckets).await
}

/// The posts as one JSONB parameter ([`herald_store::jsonb`]): the statement's text is the same
/// whatever their number, so SQLite's writer compiles it once and keeps it.
fn defer_insert_posts_sqlite(tx: &mut Tx, posts: &[Prepared]) {
    let mut input = herald_store::jsonb::Rows::default();
    for p in posts {
        let r = &p.row;
        input
            .id(r.id)
            .id(p.team)
            .opt_id(r.author_user)
            .opt_id(p.author_key)
            .text(&r.state)
            .text(&r.content)
            .opt_int(r.schedule_at.map(|t| herald_store::to_micros(t.0)))
            .opt_text(r.timezone.as_deref())
            .opt_text(r.campaign.as_deref())
            .text(&r.tags)
            .opt_text(p.key.as_deref())
            .text(&p.hash)
            .opt_int(r.repeat_days)
            .opt_id(r.series_id)
            .int(herald_store::to_micros(r.created_at.0))
            .int(herald_store::to_micros(r.updated_at.0))
            .end_row();
    }
    tx.defer(
        "INSERT INTO posts (id, team_id, author_user, author_key, state, content, schedule_at, timezone, campaign, tags, \
         idempotency_key, request_hash, repeat_days, series_id, created_at, updated_at) \
         SELECT unhex(value ->> 0), unhex(value ->> 1), unhex(value ->> 2), unhex(value ->> 3), value ->> 4, value ->> 5, \
                value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, value ->> 12, \
                unhex(value ->> 13), value ->> 14, value ->> 15 \
         FROM jsonb_each($1)",
    )
    .bind(input.finish());
}

/// The posts as arrays ([`herald_store::column`]): one statement text whatever their number.
fn defer_insert_posts_pg(tx: &mut Tx, posts: &[Prepared]) {
    tx.defer(
        "INSERT INTO posts (id, team_id, author_user, author_key, state, content, schedule_at, timezone, campaign, tags, \
         idempotency_key, request_hash, repeat_days, series_id, created_at, updated_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], \
           $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int8[], $14::uuid[], \
           $15::timestamptz[], $16::timestamptz[])",
    )
    .bind_pg(column(posts, |p| p.row.id))
    .bind_pg(column(posts, |p| p.team))
    .bind_pg(column(posts, |p| p.row.author_user))
    .bind_pg(column(posts, |p| p.author_key))
    .bind_pg(column(posts, |p| p.row.state.as_str()))
    .bind_pg(column(posts, |p| p.row.content.as_str()))
    .bind_pg(column(posts, |p| p.row.schedule_at.map(|t| t.0)))
    .bind_pg(column(posts, |p| p.row.timezone.as_deref()))
    .bind_pg(column(posts, |p| p.row.campaign.as_deref()))
    .bind_pg(column(posts, |p| p.row.tags.as_str()))
    .bind_pg(column(posts, |p| p.key.as_deref()))
    .bind_pg(column(posts, |p| p.hash.as_str()))
    .bind_pg(column(posts, |p| p.row.repeat_days))
    .bind_pg(column(posts, |p| p.row.series_id))
    .bind_pg(column(posts, |p| p.row.created_at.0))
    .bind_pg(column(posts, |p| p.row.updated_at.0));
}

/// Writes posts checked at the same moment in one transaction (see the module comment).
pub(crate) type Creates = Group<Prepared, Prepared, WriteError>;

pub(crate) fn spawn(posts: Posts) -> Creates {
    let config = GroupConfig {
        max_items: MAX_POSTS,
        max_weight: MAX_DELIVERIES,
        weight: |p: &Prepared| p.deliveries.len(),
        // The client's retry with its Idempotency-Key finds the post if it committed.
        stopped: || {
            WriteError::Other(Error::new(
                ErrorCode::Unavailable,
                "the server is stopping; retry the request with its Idempotency-Key",
            ))
        },
        what: "posts",
    };
    Group::spawn_writing(&posts.db.clone(), config, move |mut items: Vec<Prepared>| {
        let posts = posts.clone();
        Box::pin(async move {
            match commit(&posts, &mut items).await {
                Ok(()) => (Vec::new(), Ok(items)),
                Err(e) => (items, Err(e)),
            }
        })
    })
}

/// Writes `items` in a transaction of their own. Nothing else happens in it, so the monthly count
/// may fail it late: it is deferred (on PostgreSQL it goes in the statement that writes the posts'
/// rows and jobs, see `write`), and over the limit the jobs' insert or the commit fails with it.
async fn commit(posts: &Posts, items: &mut [Prepared]) -> Result<(), WriteError> {
    let mut tx = posts.db.begin().await.map_err(Error::from)?;
    for (team, sent) in sent_per_team(items) {
        herald_accounts::consume_monthly_deferred(&mut tx, team, Quota::PostsPerMonth, sent).await?;
    }
    write(&mut tx, items, false).await?;
    tx.commit().await.map_err(|e| taken(e, items))
}

/// A failed commit of `posts`: a unique violation is a post's Idempotency-Key taken by another
/// request meanwhile (every other row they write has an id made here); a deferred monthly count
/// over its limit is that quota's error.
pub(crate) fn taken(e: herald_store::StoreError, posts: &[Prepared]) -> WriteError {
    if let Some(quota) = herald_accounts::quota_error(&e) {
        return WriteError::Other(quota);
    }
    match e.is_unique_violation() && posts.iter().any(|p| p.key.is_some()) {
        true => WriteError::KeyTaken,
        false => WriteError::Other(e.into()),
    }
}

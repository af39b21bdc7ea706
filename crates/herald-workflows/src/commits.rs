//! Writing runs' first commits, together.
//!
//! A run whose steps are all quick is stored by its first commit, which is usually its last too
//! (filter, template and publish, then `succeeded`). One by one, each would be a transaction of
//! its own on the database's single writer (SQLite), which sits idle between the statements of
//! each while its task waits its turn to run. Instead, runs committing at the same moment hand
//! their first commit to one task, which writes whatever has gathered in one transaction of two
//! statements: the runs (each unless another executor of its event stored it first), then the
//! step runs of those it stored, and the posts of their publish steps. No run goes on before its
//! commit is written. If the shared
//! transaction fails, each is written again on its own, so one run's problem is only its own.
//!
//! Only first commits that schedule nothing and start nothing take this way; a commit that
//! enqueues a wake-up or fails the run (an event to emit, an error workflow to start) is written
//! by the run alone.

use crate::engine::{Record, insert_step_runs};
use crate::store::{RunRow, Workflows};
use chrono::Utc;
use herald_core::{Error, ErrorCode};
use herald_posts::{Posts, StagedPost};
use herald_queue::{Finished, Queue};
use herald_store::Db;
use herald_store::group::{Group, GroupConfig};
use uuid::Uuid;

/// The most runs one shared transaction writes (18 values each; SQLite binds at most 32,766 in
/// a statement).
const MAX_RUNS: usize = 200;
/// And the most step runs (13 values each) and posts' deliveries (14 each), counted together.
const MAX_ROWS: usize = 2_000;

/// A run not stored yet, as its first commit leaves it, with the step runs that commit writes.
pub(crate) struct FirstCommit {
    pub run: RunRow,
    pub records: Vec<Record>,
    /// The `source.event` job that started a run this commit ends: recorded as succeeded with
    /// it, so the runner writes nothing more.
    pub job: Option<Finished>,
    /// The post of the publish step this commit records, written with the run.
    pub post: Option<Box<StagedPost>>,
}

/// Writes first commits arriving together; each answer is `false` when the run was already
/// stored (another executor of its event was first), and nothing of that commit was written.
pub(crate) type Commits = Group<FirstCommit, bool, Error>;

pub(crate) fn spawn(db: Db) -> Commits {
    let config = GroupConfig {
        max_items: MAX_RUNS,
        max_weight: MAX_ROWS,
        weight: |c: &FirstCommit| (c.records.len() + c.post.as_ref().map_or(0, |p| p.targets())).max(1),
        stopped: || Error::new(ErrorCode::Unavailable, "the server is stopping"),
        what: "runs",
    };
    Group::spawn_writing(&db.clone(), config, move |items: Vec<FirstCommit>| {
        let db = db.clone();
        Box::pin(async move {
            let written = commit(&db, &items).await;
            (items, written)
        })
    })
}

/// Writes `items` in one transaction; answers, in order, whether each run was stored by it.
async fn commit(db: &Db, items: &[FirstCommit]) -> Result<Vec<bool>, Error> {
    let mut tx = db.begin().await?;
    let runs: Vec<&RunRow> = items.iter().map(|c| &c.run).collect();
    let stored: Vec<Uuid> = Workflows::store_runs(&mut tx, &runs).await?;
    let answers: Vec<bool> = items.iter().map(|c| stored.contains(&c.run.id)).collect();
    let steps: Vec<(Uuid, &[Record])> =
        items.iter().filter(|c| stored.contains(&c.run.id)).map(|c| (c.run.id, c.records.as_slice())).collect();
    insert_step_runs(&mut tx, &steps, Utc::now()).await?;
    let posts: Vec<&StagedPost> =
        items.iter().filter(|c| stored.contains(&c.run.id)).filter_map(|c| c.post.as_deref()).collect();
    if !posts.is_empty() {
        Posts::write_in(&mut tx, &posts).await?;
    }
    let jobs: Vec<Finished> =
        items.iter().filter(|c| stored.contains(&c.run.id)).filter_map(|c| c.job.clone()).collect();
    if !jobs.is_empty() {
        Queue::complete_in(&mut tx, &jobs).await.map_err(Error::from)?;
    }
    tx.commit().await?;
    Ok(answers)
}

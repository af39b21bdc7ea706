use crate::backend::{self, CompletionRow, postgres, sqlite};
use crate::job::{Attempt, Job, JobId, JobState, Recorded};
use crate::{QueueError, metrics};
use chrono::{DateTime, Utc};
use herald_store::{Backend, Db, Pools, Tx, TxConn};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

type Result<T> = std::result::Result<T, QueueError>;

const PRUNE_CHUNK: usize = 2000;

/// Writes finished runs in `tx`; returns how many still held their lease.
async fn complete_rows(tx: &mut Tx, worker: &str, rows: &[CompletionRow]) -> Result<usize> {
    Ok(match tx.conn().await? {
        TxConn::Sqlite(c) => sqlite::complete(c, worker, rows, Utc::now()).await?,
        TxConn::Postgres(c) => postgres::complete(c, worker, rows).await?,
    })
}

/// The queue's operations on one database. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    db: Db,
}

/// What a run of a job came to, as the runner reports it.
#[derive(Debug, Clone)]
pub enum RunResult {
    Succeeded,
    /// Back to pending, to run again after `delay`.
    Retry {
        error: String,
        delay: Duration,
    },
    Dead {
        error: String,
    },
    /// Back to pending after `delay`, without spending the attempt.
    RateLimited {
        error: String,
        delay: Duration,
    },
    Cancelled {
        reason: String,
    },
}

impl RunResult {
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            RunResult::Succeeded => "succeeded",
            RunResult::Retry { .. } => "retried",
            RunResult::Dead { .. } => "dead",
            RunResult::RateLimited { .. } => "rate_limited",
            RunResult::Cancelled { .. } => "cancelled",
        }
    }
}

/// One finished run, sent to [`Queue::complete`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub job_id: JobId,
    /// The attempt number the job had when claimed; a stale completion is ignored.
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub run_time: Duration,
    pub bucket_key: Option<String>,
    pub result: RunResult,
}

impl Completion {
    fn row(&self) -> CompletionRow {
        let (state, refund, delay, error, outcome) = match &self.result {
            RunResult::Succeeded => ("succeeded", 0, None, None, "succeeded"),
            RunResult::Retry { error, delay } => {
                ("pending", 0, Some(delay.as_secs_f64()), Some(error.clone()), "failed")
            }
            RunResult::Dead { error } => ("dead", 0, None, Some(error.clone()), "dead"),
            RunResult::RateLimited { error, delay } => {
                ("pending", 1, Some(delay.as_secs_f64()), Some(error.clone()), "rate_limited")
            }
            RunResult::Cancelled { reason } => ("cancelled", 0, None, Some(reason.clone()), "cancelled"),
        };
        let finished_at = self.started_at + chrono::Duration::from_std(self.run_time).unwrap_or_default();
        CompletionRow {
            id: self.job_id,
            attempt: self.attempt,
            state,
            attempt_refund: refund,
            delay_secs: delay,
            finished: JobState::parse(state).is_some_and(JobState::is_finished),
            error,
            started_at: self.started_at,
            finished_at,
            outcome,
            block_bucket: if outcome == "rate_limited" { self.bucket_key.clone() } else { None },
            log: true,
        }
    }
}

/// A successful run that its handler records itself, in the transaction that records the job's
/// work, with [`Queue::complete_in`]: the work and the job's success commit together, and the
/// runner does not write the run again.
#[derive(Debug, Clone)]
pub struct Finished {
    completion: Completion,
    worker: String,
    recorded: Recorded,
    log: bool,
}

impl Finished {
    /// Records the success without a `job_attempts` row, for a handler whose own table logs
    /// every run in more detail (a delivery's attempts: status, error class, the platform's
    /// message), in the same transaction. The job's row still says it succeeded, and when; runs
    /// that fail are logged as usual. (For deliveries, skipping the row took 2% off the
    /// instructions and 8–10% off SQLite's writer thread: `herald bench deliveries`.)
    pub fn logged_by_handler(mut self) -> Self {
        self.log = false;
        self
    }
}

impl Job {
    /// This run, succeeded now.
    pub fn succeeded(&self) -> Finished {
        let started_at = self.started_at.unwrap_or_else(Utc::now);
        Finished {
            completion: Completion {
                job_id: self.id,
                attempt: self.attempt,
                started_at,
                run_time: (Utc::now() - started_at).to_std().unwrap_or_default(),
                bucket_key: self.bucket_key.clone(),
                result: RunResult::Succeeded,
            },
            worker: self.locked_by.clone().unwrap_or_default(),
            recorded: self.recorded.clone(),
            log: true,
        }
    }
}

/// What [`Queue::claim_and_look_ahead`] took.
pub(crate) struct Claimed {
    pub jobs: Vec<Job>,
    /// When the queue's next job not yet due comes due (`Some(None)`: none is waiting); `None`
    /// when the claim could not tell (SQLite, where [`Queue::next_due`] reads it from a reader
    /// connection instead of holding the writer).
    pub next_due: Option<Option<DateTime<Utc>>>,
}

/// A rate bucket: `capacity` tokens, refilled at `refill_per_sec`; each claim of a job tagged
/// with the bucket takes one. `None` capacity means unlimited, though it can still be blocked.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub key: String,
    pub capacity: Option<f64>,
    pub refill_per_sec: Option<f64>,
    pub tokens: f64,
    pub updated_at: DateTime<Utc>,
    pub blocked_until: Option<DateTime<Utc>>,
}

impl Bucket {
    /// Tokens available at `now`, after refill.
    pub fn level(&self, now: DateTime<Utc>) -> f64 {
        match self.capacity {
            None => f64::INFINITY,
            Some(cap) => {
                let elapsed = (now - self.updated_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                (self.tokens + elapsed * self.refill_per_sec.unwrap_or(0.0)).min(cap)
            }
        }
    }
}

/// Takes from each bucket in `want` up to as many tokens as wanted, inside `tx`, as a claim
/// takes them: a bucket blocked now gives none, a key with no bucket (or one with no capacity)
/// gives all. Answers what each key gave.
pub(crate) async fn grant_tokens(
    tx: &mut Tx,
    want: &BTreeMap<String, usize>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, usize>> {
    if want.is_empty() {
        return Ok(HashMap::new());
    }
    let buckets = match tx.conn().await? {
        TxConn::Postgres(c) => return postgres::grant_tokens(c, want).await,
        TxConn::Sqlite(c) => sqlite::buckets(c, &want.keys().cloned().collect::<Vec<_>>()).await?,
    };
    Ok(grant_from(tx, want, buckets, now))
}

/// [`grant_tokens`] from `buckets` read in `tx` on SQLite; their new levels are deferred.
fn grant_from(
    tx: &mut Tx,
    want: &BTreeMap<String, usize>,
    buckets: Vec<Bucket>,
    now: DateTime<Utc>,
) -> HashMap<String, usize> {
    let mut granted: HashMap<String, usize> = want.iter().map(|(k, n)| (k.clone(), *n)).collect();
    let mut levels = Vec::new();
    for b in buckets {
        let n = want.get(&b.key).copied().unwrap_or(0);
        let given = if b.blocked_until.is_some_and(|t| t > now) {
            0
        } else if b.capacity.is_none() {
            n
        } else {
            let level = b.level(now);
            let given = (level.max(0.0).floor() as usize).min(n);
            if given > 0 {
                levels.push((b.key.clone(), level - given as f64));
            }
            given
        };
        granted.insert(b.key, given);
    }
    // One statement, sent with the COMMIT: a claim of deliveries to five connections was
    // five more trips to SQLite's writer thread, each holding the writer.
    sqlite::defer_store_tokens(tx, &levels, now);
    granted
}

/// How many tokens each bucket is asked for: one per job drawing on it (`None`: no bucket).
pub(crate) fn tokens_wanted<'a>(keys: impl Iterator<Item = Option<&'a str>>) -> BTreeMap<String, usize> {
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for key in keys.flatten() {
        *want.entry(key.to_string()).or_default() += 1;
    }
    want
}

/// Counts one job against what its bucket gave; `false` when the bucket has nothing left.
pub(crate) fn take_one(left: &mut HashMap<String, usize>, key: Option<&str>) -> bool {
    match key.and_then(|k| left.get_mut(k)) {
        Some(0) => false,
        Some(n) => {
            *n -= 1;
            true
        }
        None => true,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Depth {
    pub queue: String,
    pub state: String,
    pub count: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelResult {
    Cancelled,
    /// The job exists but is past cancelling (running or finished).
    NotCancellable(JobState),
    NotFound,
}

impl Queue {
    pub fn new(db: Db) -> Self {
        Queue { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Claims up to `limit` due jobs of `queue` for `worker`, leased for `lease`, honouring rate
    /// buckets. Highest priority (lowest number) first, then oldest `run_at`.
    pub async fn claim(&self, queue: &str, limit: usize, worker: &str, lease: Duration) -> Result<Vec<Job>> {
        Ok(self.claim_and_look_ahead(queue, limit, worker, lease).await?.jobs)
    }

    /// As [`Queue::claim`], and on PostgreSQL also when the queue's next job not yet due comes
    /// due, found by the claim's own statement (see [`Claimed::next_due`]).
    pub(crate) async fn claim_and_look_ahead(
        &self,
        queue: &str,
        limit: usize,
        worker: &str,
        lease: Duration,
    ) -> Result<Claimed> {
        let (jobs, next_due) = match self.db.pools() {
            // One statement, tokens and all (see `postgres::claim`).
            Pools::Postgres(pool) => {
                let (mut jobs, next) = postgres::claim(pool, queue, limit, worker, lease.as_secs_f64()).await?;
                jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
                (jobs, Some(next))
            }
            Pools::Sqlite { .. } => {
                let mut tx = self.db.begin().await?;
                let now = Utc::now();
                let (mut jobs, buckets) = match tx.conn().await? {
                    TxConn::Sqlite(c) => sqlite::claim(c, queue, limit, worker, now + lease, now).await?,
                    TxConn::Postgres(_) => unreachable!("a SQLite database's transaction"),
                };
                jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
                if jobs.iter().any(|j| j.bucket_key.is_some()) {
                    self.take_tokens(&mut tx, &mut jobs, buckets, now).await?;
                }
                tx.commit().await?;
                (jobs, None)
            }
        };
        for job in &jobs {
            let due = job.run_at.max(job.created_at);
            let wait = job.started_at.map(|s| (s - due).to_std().unwrap_or_default()).unwrap_or_default();
            metrics::claimed(&job.kind, wait);
        }
        Ok(Claimed { jobs, next_due })
    }

    /// Takes one token per claimed job from its bucket (`buckets`, read with the claim); jobs
    /// beyond the tokens go back unclaimed. (SQLite's claim; PostgreSQL's does this in its one
    /// statement.)
    async fn take_tokens(
        &self,
        tx: &mut herald_store::Tx,
        jobs: &mut Vec<Job>,
        buckets: Vec<Bucket>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let want = tokens_wanted(jobs.iter().map(|j| j.bucket_key.as_deref()));
        let mut left = grant_from(tx, &want, buckets, now);
        let mut keep = Vec::with_capacity(jobs.len());
        let mut put_back = Vec::new();
        for job in jobs.drain(..) {
            if take_one(&mut left, job.bucket_key.as_deref()) { keep.push(job) } else { put_back.push(job.id) }
        }
        *jobs = keep;
        for id in put_back {
            let TxConn::Sqlite(c) = tx.conn().await? else { unreachable!("a SQLite database's transaction") };
            sqlite::unclaim(c, id).await?;
        }
        Ok(())
    }

    /// Records a batch of finished runs in one transaction. Returns how many still held their
    /// lease; the others were reaped or cancelled meanwhile and are left as they are.
    pub async fn complete(&self, worker: &str, batch: &[Completion]) -> Result<usize> {
        let mut tx = self.db.begin().await?;
        let rows: Vec<CompletionRow> = batch.iter().map(Completion::row).collect();
        let applied = complete_rows(&mut tx, worker, &rows).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Records runs as succeeded inside the caller's transaction (see [`Finished`]). Once it
    /// commits, the runner leaves these runs alone; if it rolls back, the runner records them
    /// as usual from what their handlers return.
    ///
    /// On SQLite the statements are deferred ([`Tx::defer`]) and go with the commit.
    pub async fn complete_in(tx: &mut Tx, finished: &[Finished]) -> Result<()> {
        let mut workers: Vec<&str> = finished.iter().map(|f| f.worker.as_str()).collect();
        workers.sort_unstable();
        workers.dedup();
        for worker in workers {
            let rows: Vec<CompletionRow> = finished
                .iter()
                .filter(|f| f.worker == worker)
                .map(|f| CompletionRow { log: f.log, ..f.completion.row() })
                .collect();
            if tx.backend() == Backend::Sqlite && rows.iter().all(|r| r.block_bucket.is_none()) {
                sqlite::defer_complete(tx, worker, &rows, Utc::now());
            } else {
                complete_rows(tx, worker, &rows).await?;
            }
        }
        let marks: Vec<Recorded> = finished.iter().map(|f| f.recorded.clone()).collect();
        tx.after_commit(move || marks.iter().for_each(Recorded::set));
        Ok(())
    }

    /// Extends the lease of every job `worker` is running.
    pub async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        let n = match tx.conn().await? {
            TxConn::Sqlite(c) => sqlite::heartbeat(c, worker, Utc::now() + lease).await?,
            TxConn::Postgres(c) => postgres::heartbeat(c, worker, lease.as_secs_f64()).await?,
        };
        tx.commit().await?;
        Ok(n)
    }

    /// Puts back running jobs whose lease expired (their worker died), or marks them dead if that
    /// was their last attempt. Returns how many it found.
    pub async fn reap(&self) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        let expired = match tx.conn().await? {
            TxConn::Sqlite(c) => sqlite::reap(c, 1000, Utc::now()).await?,
            TxConn::Postgres(c) => postgres::reap(c, 1000).await?,
        };
        tx.commit().await?;
        for e in &expired {
            tracing::warn!(job = %e.id, attempt = e.attempt, worker = %e.worker, "job lease expired; requeued");
        }
        metrics::reaped(expired.len() as u64);
        Ok(expired.len() as u64)
    }

    /// Returns running jobs to pending without spending their attempt (graceful shutdown).
    pub async fn release(&self, worker: &str, jobs: &[(JobId, i32, DateTime<Utc>)]) -> Result<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin().await?;
        let n = match tx.conn().await? {
            TxConn::Sqlite(c) => sqlite::release(c, worker, jobs, Utc::now()).await?,
            TxConn::Postgres(c) => postgres::release(c, worker, jobs).await?,
        };
        tx.commit().await?;
        Ok(n)
    }

    /// Deletes finished jobs (and their attempts) that finished more than `max_age` ago, and
    /// beyond the newest `keep` finished ones. Works in small transactions so writers never wait long.
    pub async fn prune(&self, max_age: Option<Duration>, keep: Option<u64>) -> Result<u64> {
        let mut total = 0;
        if let Some(age) = max_age {
            let cutoff = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
            total += self
                .prune_chunks(|tx| {
                    Box::pin(async move {
                        match tx.conn().await? {
                            TxConn::Sqlite(c) => sqlite::prune_before(c, cutoff, PRUNE_CHUNK).await,
                            TxConn::Postgres(c) => postgres::prune_before(c, cutoff, PRUNE_CHUNK).await,
                        }
                    })
                })
                .await?;
        }
        if let Some(keep) = keep {
            total += self
                .prune_chunks(|tx| {
                    Box::pin(async move {
                        match tx.conn().await? {
                            TxConn::Sqlite(c) => sqlite::prune_beyond(c, keep, PRUNE_CHUNK).await,
                            TxConn::Postgres(c) => postgres::prune_beyond(c, keep, PRUNE_CHUNK).await,
                        }
                    })
                })
                .await?;
        }
        Ok(total)
    }

    /// Repeats one pruning step, each in its own short transaction, until a step deletes less
    /// than a full chunk.
    async fn prune_chunks<F>(&self, step: F) -> Result<u64>
    where
        F: for<'a> Fn(&'a mut herald_store::Tx) -> futures::future::BoxFuture<'a, Result<u64>>,
    {
        let mut total = 0;
        loop {
            let mut tx = self.db.begin().await?;
            let n = step(&mut tx).await?;
            tx.commit().await?;
            total += n;
            if n < PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Cancels a pending job. Running and finished jobs are left alone.
    pub async fn cancel(&self, id: JobId, reason: &str) -> Result<CancelResult> {
        let mut tx = self.db.begin().await?;
        let reason = format!("cancelled: {reason}");
        let state = match tx.conn().await? {
            TxConn::Sqlite(c) => sqlite::cancel(c, id, &reason, Utc::now()).await?,
            TxConn::Postgres(c) => postgres::cancel(c, id, &reason).await?,
        };
        tx.commit().await?;
        Ok(match state {
            Some(JobState::Cancelled) => CancelResult::Cancelled,
            Some(other) => CancelResult::NotCancellable(other),
            None => CancelResult::NotFound,
        })
    }

    /// Moves a pending job to a new time; `false` if it is no longer pending.
    pub async fn reschedule(&self, id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        let moved = match tx.conn().await? {
            TxConn::Sqlite(c) => sqlite::reschedule(c, id, run_at).await?,
            TxConn::Postgres(c) => postgres::reschedule(c, id, run_at).await?,
        };
        tx.commit().await?;
        if moved {
            self.db.wakeups().ring(crate::WAKE_CHANNEL);
        }
        Ok(moved)
    }

    pub async fn get(&self, id: JobId) -> Result<Option<Job>> {
        match self.db.pools() {
            Pools::Sqlite { read, .. } => sqlite::get(read, id).await,
            Pools::Postgres(pool) => postgres::get(pool, id).await,
        }
    }

    /// Every recorded run of a job, oldest first.
    pub async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>> {
        match self.db.pools() {
            Pools::Sqlite { read, .. } => sqlite::attempts(read, id).await,
            Pools::Postgres(pool) => postgres::attempts(pool, id).await,
        }
    }

    /// Job counts by queue and state; also published as the `herald_queue_depth` gauge.
    pub async fn depth(&self) -> Result<Vec<Depth>> {
        let rows = match self.db.pools() {
            Pools::Sqlite { read, .. } => sqlite::depth(read).await?,
            Pools::Postgres(pool) => postgres::depth(pool).await?,
        };
        let mut queues: Vec<&str> = rows.iter().map(|d| d.queue.as_str()).collect();
        queues.sort();
        queues.dedup();
        for q in queues {
            for state in JobState::ALL {
                let n = rows.iter().find(|d| d.queue == q && d.state == state.as_str()).map_or(0, |d| d.count);
                metrics::depth(q, state.as_str(), n);
            }
        }
        Ok(rows)
    }

    /// The earliest `run_at` of a pending job in `queue`.
    pub async fn next_due(&self, queue: &str) -> Result<Option<DateTime<Utc>>> {
        match self.db.pools() {
            Pools::Sqlite { read, .. } => sqlite::next_due(read, queue).await,
            Pools::Postgres(pool) => postgres::next_due(pool, queue).await,
        }
    }

    /// Creates or reconfigures a bucket. A new bucket starts full; a smaller capacity trims it.
    pub async fn set_bucket(&self, key: &str, capacity: f64, refill_per_sec: f64) -> Result<()> {
        let mut tx = self.db.begin().await?;
        match tx.conn().await? {
            TxConn::Sqlite(c) => sqlite::set_bucket(c, key, Some(capacity), Some(refill_per_sec), Utc::now()).await?,
            TxConn::Postgres(c) => postgres::set_bucket(c, key, Some(capacity), Some(refill_per_sec)).await?,
        }
        tx.commit().await?;
        Ok(())
    }

    /// Blocks a bucket for `duration` (say, from a 429's Retry-After). Never shortens a block.
    pub async fn block_bucket(&self, key: &str, duration: Duration) -> Result<()> {
        let mut tx = self.db.begin().await?;
        match tx.conn().await? {
            TxConn::Sqlite(c) => {
                let now = Utc::now();
                sqlite::block_bucket(c, key, now + duration, now).await?
            }
            TxConn::Postgres(c) => postgres::block_bucket(c, key, duration.as_secs_f64()).await?,
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn bucket(&self, key: &str) -> Result<Option<Bucket>> {
        match self.db.pools() {
            Pools::Sqlite { read, .. } => sqlite::bucket(read, key).await,
            Pools::Postgres(pool) => postgres::bucket(pool, key).await,
        }
    }
}

// Keeps the constant visible to docs and tests that assert on error text.
pub const LEASE_EXPIRED_ERROR: &str = backend::LEASE_EXPIRED;

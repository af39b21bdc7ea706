use super::{CompletionRow, Expired, JOB_COLS, LEASE_EXPIRED, RELEASED};
use crate::QueueError;
use crate::handoff::Ticket;
use crate::job::{Attempt, Job, JobId, JobState, NewJob};
use crate::queue::{Bucket, Depth};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use herald_store::SqliteTx;
use herald_store::{Backend, Tx, from_micros, to_micros};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Either, Executor, Row, SqlitePool};
use std::sync::LazyLock;
use uuid::Uuid;

type Result<T> = std::result::Result<T, QueueError>;

fn opt_time(us: Option<i64>) -> Option<DateTime<Utc>> {
    us.map(from_micros)
}

fn job_from_row(row: &SqliteRow) -> Result<Job> {
    let payload: String = row.try_get(3)?;
    let state: String = row.try_get(5)?;
    Ok(Job {
        id: JobId(row.try_get::<Uuid, _>(0)?),
        queue: row.try_get(1)?,
        kind: row.try_get(2)?,
        payload: serde_json::from_str(&payload)?,
        priority: row.try_get(4)?,
        state: JobState::parse(&state).unwrap_or(JobState::Dead),
        attempt: row.try_get(6)?,
        max_attempts: row.try_get(7)?,
        run_at: from_micros(row.try_get(8)?),
        created_at: from_micros(row.try_get(9)?),
        started_at: opt_time(row.try_get(10)?),
        finished_at: opt_time(row.try_get(11)?),
        locked_by: row.try_get(12)?,
        locked_until: opt_time(row.try_get(13)?),
        bucket_key: row.try_get(14)?,
        unique_key: row.try_get(15)?,
        last_error: row.try_get(16)?,
        recorded: Default::default(),
    })
}

/// Inserts one job; `false` when a live job already holds its unique key. With a ticket it is
/// written claimed by the local runner (see `handoff`).
pub(crate) async fn insert(
    conn: &mut SqliteTx,
    id: JobId,
    job: &NewJob,
    now: DateTime<Utc>,
    ticket: Option<&Ticket>,
) -> Result<bool> {
    let run_at = job.run_at.unwrap_or(now);
    let (state, attempt) = if ticket.is_some() { ("running", 1) } else { ("pending", 0) };
    let done = sqlx::query(
        "INSERT INTO jobs (id, queue, kind, payload, priority, state, attempt, max_attempts, run_at, created_at, bucket_key, \
           unique_key, locked_by, locked_until, started_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running') DO NOTHING",
    )
    .bind(id.0)
    .bind(&job.queue)
    .bind(&job.kind)
    .bind(job.payload.to_string())
    .bind(job.priority)
    .bind(state)
    .bind(attempt)
    .bind(job.max_attempts)
    .bind(to_micros(run_at))
    .bind(to_micros(now))
    .bind(&job.bucket_key)
    .bind(&job.unique_key)
    .bind(ticket.map(Ticket::worker))
    .bind(ticket.map(|t| to_micros(t.lease_end())))
    .bind(ticket.map(|t| to_micros(t.now())))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn live_id_for_key(conn: &mut SqliteTx, key: &str) -> Result<Option<JobId>> {
    let id: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE unique_key = ?1 AND state IN ('pending', 'running')")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(id.map(JobId))
}

static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET state = 'running', attempt = attempt + 1, locked_by = ?1, locked_until = ?2, started_at = ?3 \
         WHERE id IN ( \
           SELECT j.id FROM jobs AS j \
           WHERE j.state = 'pending' AND j.queue = ?4 AND j.run_at <= ?3 \
             AND (j.bucket_key IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM rate_buckets AS b WHERE b.key = j.bucket_key AND ( \
                 (b.blocked_until IS NOT NULL AND b.blocked_until > ?3) \
                 OR (b.capacity IS NOT NULL \
                     AND MIN(b.capacity, b.tokens + (?3 - b.updated_at) / 1e6 * b.refill_per_sec) < 1)))) \
           ORDER BY j.priority, j.run_at \
           LIMIT ?5) \
         RETURNING {JOB_COLS}"
    )
});

/// [`CLAIM`], then the buckets the jobs it took draw on: those running with its lease (found by
/// `jobs_leases`). A job of another claim whose lease ends in the same microsecond only adds a
/// bucket nobody asks for.
static CLAIM_AND_BUCKETS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{};\nSELECT {BUCKET_COLS} FROM rate_buckets \
         WHERE key IN (SELECT bucket_key FROM jobs WHERE state = 'running' AND locked_until = ?2 AND locked_by = ?1)",
        *CLAIM
    )
});

/// Claims up to `limit` due jobs, and reads the buckets they draw on, in one trip to the
/// writer's thread (the buckets were a trip of their own, with the writer held).
pub(crate) async fn claim(
    conn: &mut SqliteTx,
    queue: &str,
    limit: usize,
    worker: &str,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(Vec<Job>, Vec<Bucket>)> {
    let query = sqlx::query(AssertSqlSafe(CLAIM_AND_BUCKETS.as_str()))
        .bind(worker)
        .bind(to_micros(lease_until))
        .bind(to_micros(now))
        .bind(queue)
        .bind(limit as i64);
    let mut steps = (&mut *conn).fetch_many(query);
    let (mut jobs, mut buckets, mut done) = (Vec::new(), Vec::new(), 0);
    while let Some(step) = steps.try_next().await? {
        match step {
            Either::Left(_) => done += 1, // a statement's end: the claim's, then the read's
            Either::Right(row) if done == 0 => jobs.push(job_from_row(&row)?),
            Either::Right(row) => buckets.push(bucket_from_row(&row)?),
        }
    }
    Ok((jobs, buckets))
}

fn bucket_from_row(row: &SqliteRow) -> Result<Bucket> {
    Ok(Bucket {
        key: row.try_get(0)?,
        capacity: row.try_get(1)?,
        refill_per_sec: row.try_get(2)?,
        tokens: row.try_get(3)?,
        updated_at: from_micros(row.try_get(4)?),
        blocked_until: opt_time(row.try_get(5)?),
    })
}

const BUCKET_COLS: &str = "key, capacity, refill_per_sec, tokens, updated_at, blocked_until";

pub(crate) async fn buckets(conn: &mut SqliteTx, keys: &[String]) -> Result<Vec<Bucket>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {BUCKET_COLS} FROM rate_buckets WHERE key IN (SELECT value FROM jsonb_each(?1))"
    )))
    .bind(serde_json::to_string(keys)?)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(bucket_from_row).collect()
}

pub(crate) async fn bucket(pool: &SqlitePool, key: &str) -> Result<Option<Bucket>> {
    let row = sqlx::query(AssertSqlSafe(format!("SELECT {BUCKET_COLS} FROM rate_buckets WHERE key = ?1")))
        .bind(key)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(bucket_from_row).transpose()
}

/// Stores buckets' new levels in one statement, deferred in `tx` ([`Tx::defer`]).
pub(crate) fn defer_store_tokens(tx: &mut Tx, levels: &[(String, f64)], at: DateTime<Utc>) {
    if levels.is_empty() {
        return;
    }
    let input: Vec<(&str, f64)> = levels.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    tx.defer(
        "UPDATE rate_buckets SET tokens = v.value ->> 1, updated_at = $1 \
         FROM jsonb_each($2) AS v WHERE rate_buckets.key = v.value ->> 0",
    )
    .bind(to_micros(at))
    .bind(serde_json::to_string(&input).unwrap_or_default());
}

/// Puts a just-claimed job back, as if the claim had not happened.
pub(crate) async fn unclaim(conn: &mut SqliteTx, id: JobId) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'pending', attempt = attempt - 1, locked_by = NULL, locked_until = NULL WHERE id = ?1",
    )
    .bind(id.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn set_bucket(
    conn: &mut SqliteTx,
    key: &str,
    capacity: Option<f64>,
    refill_per_sec: Option<f64>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO rate_buckets (key, capacity, refill_per_sec, tokens, updated_at) VALUES (?1, ?2, ?3, COALESCE(?2, 0), ?4) \
         ON CONFLICT (key) DO UPDATE SET capacity = excluded.capacity, refill_per_sec = excluded.refill_per_sec, \
           tokens = MIN(COALESCE(excluded.capacity, 0), rate_buckets.tokens), updated_at = rate_buckets.updated_at",
    )
    .bind(key)
    .bind(capacity)
    .bind(refill_per_sec)
    .bind(to_micros(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn block_bucket(
    conn: &mut SqliteTx,
    key: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO rate_buckets (key, tokens, updated_at, blocked_until) VALUES (?1, 0, ?2, ?3) \
         ON CONFLICT (key) DO UPDATE SET blocked_until = MAX(COALESCE(rate_buckets.blocked_until, 0), excluded.blocked_until)",
    )
    .bind(key)
    .bind(to_micros(now))
    .bind(to_micros(until))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Completions as one JSONB parameter ([`herald_store::jsonb`]): a batch of any size in one
/// statement. Per row, in [`COMPLETIONS`]' order.
fn completions_jsonb<'a>(rows: impl IntoIterator<Item = &'a CompletionRow>, now: DateTime<Utc>) -> Vec<u8> {
    let mut out = herald_store::jsonb::Rows::default();
    for c in rows {
        out.id(c.id.0)
            .int(c.attempt.into())
            .text(c.state)
            .int(c.attempt_refund.into())
            .opt_int(c.delay_secs.map(|s| to_micros(now) + (s * 1e6) as i64))
            .opt_int(c.finished.then(|| to_micros(c.finished_at)))
            .int(to_micros(c.started_at))
            .int(to_micros(c.finished_at))
            .text(c.outcome)
            .opt_text(c.error.as_deref())
            .end_row();
    }
    out.finish()
}

/// The columns of [`completions_jsonb`]'s rows, by name: the job's (`finished_at` is NULL while
/// it goes on) and its run's (`ran_from`, `ran_to`).
const COMPLETIONS: &str = "SELECT unhex(value ->> 0) AS id, value ->> 1 AS attempt, value ->> 2 AS state, \
     value ->> 3 AS refund, value ->> 4 AS run_at, value ->> 5 AS finished_at, value ->> 6 AS ran_from, \
     value ->> 7 AS ran_to, value ->> 8 AS outcome, value ->> 9 AS error";

/// Applies completions ($1) of `worker`'s runs ($2) that still hold their lease.
static APPLY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET state = i.state, attempt = jobs.attempt - i.refund, run_at = COALESCE(i.run_at, jobs.run_at), \
           finished_at = i.finished_at, last_error = COALESCE(i.error, jobs.last_error), locked_by = NULL, locked_until = NULL \
         FROM ({COMPLETIONS} FROM jsonb_each($1)) AS i \
         WHERE jobs.id = i.id AND jobs.state = 'running' AND jobs.locked_by = $2 AND jobs.attempt = i.attempt"
    )
});

/// Records the runs of completions ($2) as `worker`'s ($1) attempts.
static RECORD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at, outcome, error) \
         SELECT i.id, i.attempt, $1, i.ran_from, i.ran_to, i.outcome, i.error FROM ({COMPLETIONS} FROM jsonb_each($2)) AS i"
    )
});

/// [`RECORD`] for the runs that still hold their lease (of `worker`, $3).
static RECORD_IF_HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} JOIN jobs ON jobs.id = i.id WHERE jobs.state = 'running' AND jobs.locked_by = $3 AND jobs.attempt = i.attempt",
        RECORD.as_str()
    )
});

/// The statements above with SQLite's `?` parameters, for running without [`Tx::defer`].
static APPLY_RETURNING: LazyLock<String> =
    LazyLock::new(|| Backend::Sqlite.sql(format!("{} RETURNING jobs.id", APPLY.as_str())));
static RECORD_NOW: LazyLock<String> = LazyLock::new(|| Backend::Sqlite.sql(RECORD.clone()));

/// [`complete`] for runs with no bucket to block, queued in `tx` ([`Tx::defer`]) to go with
/// whatever follows: the attempts of the runs that still hold their lease, then the runs.
pub(crate) fn defer_complete(tx: &mut Tx, worker: &str, rows: &[CompletionRow], now: DateTime<Utc>) {
    debug_assert!(rows.iter().all(|c| c.block_bucket.is_none()));
    let input = completions_jsonb(rows, now);
    // The attempts first, while the lease still tells which runs are ours.
    if rows.iter().any(|c| c.log) {
        let logged = completions_jsonb(rows.iter().filter(|c| c.log), now);
        tx.defer(&RECORD_IF_HELD).bind(worker).bind(logged).bind(worker);
    }
    tx.defer(&APPLY).bind(input).bind(worker);
}

/// Applies a batch of completions in two statements, whatever its size: the batch travels as
/// one JSONB parameter, because each statement is a round trip to SQLite's connection thread.
pub(crate) async fn complete(
    conn: &mut SqliteTx,
    worker: &str,
    rows: &[CompletionRow],
    now: DateTime<Utc>,
) -> Result<usize> {
    let applied: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(APPLY_RETURNING.as_str()))
        .bind(completions_jsonb(rows, now))
        .bind(worker)
        .fetch_all(&mut *conn)
        .await?;
    // A completion that matched nothing lost its lease (reaped or cancelled); the reaper already
    // recorded that run.
    let applied: std::collections::HashSet<Uuid> = applied.into_iter().collect();
    let kept: Vec<&CompletionRow> = rows.iter().filter(|c| applied.contains(&c.id.0)).collect();
    if kept.iter().any(|c| c.log) {
        sqlx::query(AssertSqlSafe(RECORD_NOW.as_str()))
            .bind(worker)
            .bind(completions_jsonb(kept.iter().copied().filter(|c| c.log), now))
            .execute(&mut *conn)
            .await?;
    }
    for (key, secs) in super::blocks(kept.iter().copied()) {
        let until = now + chrono::Duration::microseconds((secs * 1e6) as i64);
        block_bucket(conn, key, until, now).await?;
    }
    Ok(kept.len())
}

/// Inserts jobs without unique keys in one statement, deferred in `tx` ([`Tx::defer`]); the rows
/// go as one JSONB parameter ([`herald_store::jsonb`]).
pub(crate) fn defer_insert_many(tx: &mut Tx, jobs: &[(JobId, &NewJob, Option<Ticket>)], now: DateTime<Utc>) {
    let mut rows = herald_store::jsonb::Rows::default();
    for (id, j, ticket) in jobs {
        rows.id(id.0)
            .text(&j.queue)
            .text(&j.kind)
            .text(&j.payload.to_string())
            .int(j.priority.into())
            .int(j.max_attempts.into())
            .int(to_micros(j.run_at.unwrap_or(now)))
            .opt_text(j.bucket_key.as_deref())
            .opt_text(ticket.as_ref().map(Ticket::worker))
            .opt_int(ticket.as_ref().map(|t| to_micros(t.lease_end())))
            .end_row();
    }
    // A row with a worker (8) and its lease's end (9) is a handed job (see `handoff`), claimed
    // and started as it is made.
    tx.defer(
        "INSERT INTO jobs (id, queue, kind, payload, priority, state, attempt, max_attempts, run_at, created_at, bucket_key, \
           locked_by, locked_until, started_at) \
         SELECT unhex(value ->> 0), value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
                iif(value ->> 8 IS NULL, 'pending', 'running'), value ->> 8 IS NOT NULL, value ->> 5, \
                value ->> 6, $1, value ->> 7, value ->> 8, value ->> 9, iif(value ->> 8 IS NULL, NULL, $2) \
         FROM jsonb_each($3)",
    )
    .bind(to_micros(now))
    .bind(to_micros(now))
    .bind(rows.finish());
}

#[allow(clippy::too_many_arguments)]
async fn insert_attempt(
    conn: &mut SqliteTx,
    id: JobId,
    attempt: i32,
    worker: &str,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    outcome: &str,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at, outcome, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(id.0)
    .bind(attempt)
    .bind(worker)
    .bind(to_micros(started_at))
    .bind(to_micros(finished_at))
    .bind(outcome)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn heartbeat(conn: &mut SqliteTx, worker: &str, lease_until: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query("UPDATE jobs SET locked_until = ?1 WHERE state = 'running' AND locked_by = ?2")
        .bind(to_micros(lease_until))
        .bind(worker)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

pub(crate) async fn reap(conn: &mut SqliteTx, limit: usize, now: DateTime<Utc>) -> Result<Vec<Expired>> {
    let rows = sqlx::query(
        "SELECT id, attempt, max_attempts, locked_by, started_at FROM jobs \
         WHERE state = 'running' AND locked_until < ?1 LIMIT ?2",
    )
    .bind(to_micros(now))
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await?;
    let mut expired = Vec::with_capacity(rows.len());
    for row in rows {
        let e = Expired {
            id: JobId(row.try_get(0)?),
            attempt: row.try_get(1)?,
            max_attempts: row.try_get(2)?,
            worker: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            started_at: opt_time(row.try_get(4)?).unwrap_or(now),
        };
        let dead = e.attempt >= e.max_attempts;
        sqlx::query(
            "UPDATE jobs SET state = ?1, finished_at = ?2, run_at = ?3, last_error = ?4, locked_by = NULL, locked_until = NULL \
             WHERE id = ?5 AND state = 'running' AND attempt = ?6",
        )
        .bind(if dead { "dead" } else { "pending" })
        .bind(dead.then(|| to_micros(now)))
        .bind(to_micros(now))
        .bind(LEASE_EXPIRED)
        .bind(e.id.0)
        .bind(e.attempt)
        .execute(&mut *conn)
        .await?;
        insert_attempt(conn, e.id, e.attempt, &e.worker, e.started_at, now, "lease_expired", Some(LEASE_EXPIRED))
            .await?;
        expired.push(e);
    }
    Ok(expired)
}

pub(crate) async fn release(
    conn: &mut SqliteTx,
    worker: &str,
    jobs: &[(JobId, i32, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> Result<u64> {
    let mut n = 0;
    for (id, attempt, started_at) in jobs {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'pending', attempt = attempt - 1, run_at = ?1, locked_by = NULL, locked_until = NULL \
             WHERE id = ?2 AND state = 'running' AND locked_by = ?3 AND attempt = ?4",
        )
        .bind(to_micros(now))
        .bind(id.0)
        .bind(worker)
        .bind(attempt)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            n += 1;
            insert_attempt(conn, *id, *attempt, worker, *started_at, now, "released", Some(RELEASED)).await?;
        }
    }
    Ok(n)
}

/// Deletes up to `limit` finished jobs that finished before `cutoff`.
pub(crate) async fn prune_before(conn: &mut SqliteTx, cutoff: DateTime<Utc>, limit: usize) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('succeeded', 'dead', 'cancelled') \
         AND finished_at < ?1 LIMIT ?2)",
    )
    .bind(to_micros(cutoff))
    .bind(limit as i64)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes up to `limit` finished jobs beyond the newest `keep`.
pub(crate) async fn prune_beyond(conn: &mut SqliteTx, keep: u64, limit: usize) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('succeeded', 'dead', 'cancelled') \
         ORDER BY finished_at DESC, id DESC LIMIT ?2 OFFSET ?1)",
    )
    .bind(keep as i64)
    .bind(limit as i64)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

pub(crate) async fn cancel(
    conn: &mut SqliteTx,
    id: JobId,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<JobState>> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?1, last_error = ?2 WHERE id = ?3 AND state = 'pending'",
    )
    .bind(to_micros(now))
    .bind(reason)
    .bind(id.0)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Some(JobState::Cancelled));
    }
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1").bind(id.0).fetch_optional(&mut *conn).await?;
    Ok(state.and_then(|s| JobState::parse(&s)))
}

pub(crate) async fn reschedule(conn: &mut SqliteTx, id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
    let done = sqlx::query("UPDATE jobs SET run_at = ?1 WHERE id = ?2 AND state = 'pending'")
        .bind(to_micros(run_at))
        .bind(id.0)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn get(pool: &SqlitePool, id: JobId) -> Result<Option<Job>> {
    let row = sqlx::query(AssertSqlSafe(format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1")))
        .bind(id.0)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

pub(crate) async fn attempts(pool: &SqlitePool, id: JobId) -> Result<Vec<Attempt>> {
    let rows = sqlx::query(
        "SELECT job_id, attempt, worker, started_at, finished_at, outcome, error FROM job_attempts WHERE job_id = ?1 ORDER BY id",
    )
    .bind(id.0)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Attempt {
                job_id: JobId(r.try_get(0)?),
                attempt: r.try_get(1)?,
                worker: r.try_get(2)?,
                started_at: from_micros(r.try_get(3)?),
                finished_at: from_micros(r.try_get(4)?),
                outcome: r.try_get(5)?,
                error: r.try_get(6)?,
            })
        })
        .collect()
}

pub(crate) async fn depth(pool: &SqlitePool) -> Result<Vec<Depth>> {
    let rows = sqlx::query("SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state").fetch_all(pool).await?;
    rows.iter().map(|r| Ok(Depth { queue: r.try_get(0)?, state: r.try_get(1)?, count: r.try_get(2)? })).collect()
}

pub(crate) async fn next_due(pool: &SqlitePool, queue: &str) -> Result<Option<DateTime<Utc>>> {
    let t: Option<i64> = sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE state = 'pending' AND queue = ?1")
        .bind(queue)
        .fetch_one(pool)
        .await?;
    Ok(t.map(from_micros))
}

use super::{CompletionRow, Expired, JOB_COLS, LEASE_EXPIRED, RELEASED};
use crate::QueueError;
use crate::handoff::Ticket;
use crate::job::{Attempt, Job, JobId, JobState, NewJob};
use crate::queue::{Bucket, Depth};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use std::sync::LazyLock;
use uuid::Uuid;

type Result<T> = std::result::Result<T, QueueError>;

fn job_from_row(row: &PgRow) -> Result<Job> {
    let state: String = row.try_get(5)?;
    Ok(Job {
        id: JobId(row.try_get::<Uuid, _>(0)?),
        queue: row.try_get(1)?,
        kind: row.try_get(2)?,
        payload: row.try_get::<Json<serde_json::Value>, _>(3)?.0,
        priority: row.try_get(4)?,
        state: JobState::parse(&state).unwrap_or(JobState::Dead),
        attempt: row.try_get(6)?,
        max_attempts: row.try_get(7)?,
        run_at: row.try_get(8)?,
        created_at: row.try_get(9)?,
        started_at: row.try_get(10)?,
        finished_at: row.try_get(11)?,
        locked_by: row.try_get(12)?,
        locked_until: row.try_get(13)?,
        bucket_key: row.try_get(14)?,
        unique_key: row.try_get(15)?,
        last_error: row.try_get(16)?,
        recorded: Default::default(),
    })
}

/// Inserts one job; `false` when a live job already holds its unique key. With a ticket it is
/// written claimed by the local runner (see `handoff`).
pub(crate) async fn insert(conn: &mut PgConnection, id: JobId, job: &NewJob, ticket: Option<&Ticket>) -> Result<bool> {
    // `$10` is the worker a handed job is claimed for (null for a pending one), `$11` its lease.
    let done = sqlx::query(
        "INSERT INTO jobs (id, queue, kind, payload, priority, max_attempts, run_at, bucket_key, unique_key, \
           state, attempt, locked_by, locked_until, started_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, now()), $8, $9, \
           CASE WHEN $10::text IS NULL THEN 'pending' ELSE 'running' END, CASE WHEN $10::text IS NULL THEN 0 ELSE 1 END, \
           $10, now() + make_interval(secs => $11::float8), CASE WHEN $10::text IS NULL THEN NULL ELSE now() END, now()) \
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running') DO NOTHING",
    )
    .bind(id.0)
    .bind(&job.queue)
    .bind(&job.kind)
    .bind(Json(&job.payload))
    .bind(job.priority)
    .bind(job.max_attempts)
    .bind(job.run_at)
    .bind(&job.bucket_key)
    .bind(&job.unique_key)
    .bind(ticket.map(Ticket::worker))
    .bind(ticket.map(|t| t.lease().as_secs_f64()))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) static INSERT_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int4[], \
                                $7::timestamptz[], $8::text[], $9::text[], $10::float8[]) WITH ORDINALITY \
             AS t(id, queue, kind, payload, priority, max_attempts, run_at, bucket_key, worker, lease, ord)), \
         want AS ( \
           SELECT bucket_key AS key, COUNT(*) AS n FROM input \
           WHERE worker IS NOT NULL AND bucket_key IS NOT NULL GROUP BY bucket_key), \
         {GRANT}, \
         handed AS ( \
           SELECT r.id FROM ( \
             SELECT id, bucket_key, row_number() OVER (PARTITION BY bucket_key ORDER BY ord) AS rank \
             FROM input WHERE worker IS NOT NULL) AS r \
           LEFT JOIN granted AS g ON g.key = r.bucket_key \
           WHERE r.bucket_key IS NULL OR r.rank <= g.n), \
         inserted AS ( \
           INSERT INTO jobs (id, queue, kind, payload, priority, state, attempt, max_attempts, run_at, created_at, \
             bucket_key, locked_by, locked_until, started_at) \
           SELECT t.id, t.queue, t.kind, t.payload::jsonb, t.priority, \
             CASE WHEN h.id IS NULL THEN 'pending' ELSE 'running' END, CASE WHEN h.id IS NULL THEN 0 ELSE 1 END, \
             t.max_attempts, COALESCE(t.run_at, now()), now(), t.bucket_key, \
             CASE WHEN h.id IS NULL THEN NULL ELSE t.worker END, \
             CASE WHEN h.id IS NULL THEN NULL ELSE now() + make_interval(secs => t.lease) END, \
             CASE WHEN h.id IS NULL THEN NULL ELSE now() END \
           FROM input AS t LEFT JOIN handed AS h ON h.id = t.id) \
         SELECT id FROM handed"
    )
});

/// Whether a batch statement over `UNNEST` arrays of `rows` rows is prepared once and kept.
/// A big batch goes unnamed, planned for its real size: a cached generic plan guesses UNNEST
/// yields 10 rows and picks a nested loop that is quadratic in the batch. A small one is kept:
/// planning these statements costs more than running them for a handful of rows (parse and plan
/// took 2–5 ms against 1 ms to run, for each post's five delivery jobs and each job's completion,
/// in the server's log of `herald bench workflows --backend postgres`).
pub(crate) fn prepared(rows: usize) -> bool {
    rows <= 32
}

/// Inserts many jobs without unique keys in one statement. Those with a ticket are written
/// claimed by the local runner (see `handoff`), if their rate bucket has a token for them, taken
/// by the same statement as `grant_tokens` takes it; the others are written pending. Answers the
/// ids of the jobs written claimed.
///
/// - `input`: the rows, numbered in the caller's order; `worker` is null for a job without a ticket.
/// - `want`, then [`GRANT`], for the ticketed jobs' buckets.
/// - `handed`: per bucket, the first ticketed jobs, as many as it granted; jobs without a
///   bucket all go.
pub(crate) async fn insert_many(
    conn: &mut PgConnection,
    jobs: &[(JobId, &NewJob, Option<Ticket>)],
    carried: Option<(String, PgArguments)>,
) -> Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(jobs.len());
    let mut queues = Vec::with_capacity(jobs.len());
    let mut kinds = Vec::with_capacity(jobs.len());
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut priorities = Vec::with_capacity(jobs.len());
    let mut max_attempts = Vec::with_capacity(jobs.len());
    let mut run_ats = Vec::with_capacity(jobs.len());
    let mut buckets = Vec::with_capacity(jobs.len());
    let mut workers = Vec::with_capacity(jobs.len());
    let mut leases = Vec::with_capacity(jobs.len());
    for (id, j, ticket) in jobs {
        ids.push(id.0);
        queues.push(j.queue.as_str());
        kinds.push(j.kind.as_str());
        payloads.push(j.payload.to_string());
        priorities.push(j.priority);
        max_attempts.push(j.max_attempts);
        run_ats.push(j.run_at);
        buckets.push(j.bucket_key.as_deref());
        workers.push(ticket.as_ref().map(Ticket::worker));
        leases.push(ticket.as_ref().map(|t| t.lease().as_secs_f64()));
    }
    // Carrying deferred inserts ([`herald_store::Tx::carry`]), it is [`INSERT_MANY`] with them
    // in front, and their arguments before its own.
    let query = match carried {
        Some((sql, args)) => sqlx::query_scalar_with(AssertSqlSafe(sql), args),
        None => sqlx::query_scalar(AssertSqlSafe(INSERT_MANY.as_str())),
    };
    let handed: Vec<Uuid> = query
        .persistent(prepared(jobs.len()))
        .bind(ids)
        .bind(queues)
        .bind(kinds)
        .bind(payloads)
        .bind(priorities)
        .bind(max_attempts)
        .bind(run_ats)
        .bind(buckets)
        .bind(workers)
        .bind(leases)
        .fetch_all(&mut *conn)
        .await?;
    Ok(handed)
}

pub(crate) async fn live_id_for_key(conn: &mut PgConnection, key: &str) -> Result<Option<JobId>> {
    let id: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE unique_key = $1 AND state IN ('pending', 'running')")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(id.map(JobId))
}

/// The CTEs that take tokens for a `want(key, n)` CTE, as the claim below takes them, shared by
/// [`grant_tokens`] and [`insert_many`]:
/// - `buckets`: the wanted buckets, locked in key order until the transaction ends, with their
///   level now;
/// - `granted`: what each key gives: none when blocked, all with no bucket or no capacity, else
///   at most its whole tokens;
/// - `taken`: the levels less what was given.
const GRANT: &str = "buckets AS ( \
       SELECT b.key, b.capacity, b.blocked_until, \
         LEAST(b.capacity, b.tokens + GREATEST(EXTRACT(EPOCH FROM now() - b.updated_at), 0) \
           * COALESCE(b.refill_per_sec, 0)) AS level \
       FROM rate_buckets AS b WHERE b.key IN (SELECT key FROM want) ORDER BY b.key FOR UPDATE OF b), \
     granted AS ( \
       SELECT w.key, k.capacity, k.level, \
         CASE WHEN k.blocked_until IS NOT NULL AND k.blocked_until > now() THEN 0 \
              WHEN k.key IS NULL OR k.capacity IS NULL THEN w.n \
              ELSE LEAST(w.n, GREATEST(floor(k.level), 0))::int8 END AS n \
       FROM want AS w LEFT JOIN buckets AS k ON k.key = w.key), \
     taken AS ( \
       UPDATE rate_buckets SET tokens = g.level - g.n, updated_at = now() \
       FROM granted AS g WHERE rate_buckets.key = g.key AND g.capacity IS NOT NULL AND g.n > 0)";

static GRANT_ALONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH want AS (SELECT * FROM UNNEST($1::text[], $2::int8[]) AS w(key, n)), {GRANT} SELECT key, n FROM granted"
    )
});

/// Takes up to the wanted number of tokens from each bucket (see [`GRANT`]). Answers what each
/// key gave.
pub(crate) async fn grant_tokens(
    conn: &mut PgConnection,
    want: &std::collections::BTreeMap<String, usize>,
) -> Result<std::collections::HashMap<String, usize>> {
    let keys: Vec<&str> = want.keys().map(String::as_str).collect();
    let counts: Vec<i64> = want.values().map(|n| *n as i64).collect();
    let rows: Vec<(String, i64)> =
        sqlx::query_as(AssertSqlSafe(GRANT_ALONE.as_str())).bind(keys).bind(counts).fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().map(|(k, n)| (k, n.max(0) as usize)).collect())
}

/// Claims due jobs, takes their rate buckets' tokens, and finds when the queue's next future job
/// comes due, all in one statement, which the server runs as a transaction of its own. Before, a
/// claim was `BEGIN`, the claim, the buckets' read, their new levels and `COMMIT`: five round
/// trips before a job could start. A claim that takes nothing still answers one row, with the job
/// columns NULL.
///
/// - `candidates`: due jobs in claim order, locked and skipped if another claimer holds them; a
///   job whose bucket is blocked or has less than a token left is not one.
/// - `buckets`: the candidates' limited buckets, locked in key order (so concurrent claimers never
///   deadlock), with their level now: refilled since their last update, at most their capacity.
///   Waiting for another claimer's lock, it reads the level that claimer left.
/// - `picked`: per bucket, as many candidates as it has whole tokens, in claim order; jobs without
///   a limited bucket all go. The others stay pending, as they were.
/// - `taken`: each bucket's level less what was taken. (A bucket nothing was taken from keeps its
///   row: its level reckons the same from there.)
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH candidates AS ( \
           SELECT j.id, j.bucket_key, j.priority, j.run_at FROM jobs AS j \
           WHERE j.state = 'pending' AND j.queue = $1 AND j.run_at <= now() \
             AND (j.bucket_key IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM rate_buckets AS b WHERE b.key = j.bucket_key AND ( \
                 (b.blocked_until IS NOT NULL AND b.blocked_until > now()) \
                 OR (b.capacity IS NOT NULL \
                     AND LEAST(b.capacity, b.tokens + EXTRACT(EPOCH FROM now() - b.updated_at) * b.refill_per_sec) < 1)))) \
           ORDER BY j.priority, j.run_at \
           LIMIT $2 \
           FOR UPDATE OF j SKIP LOCKED), \
         buckets AS ( \
           SELECT b.key, \
             LEAST(b.capacity, b.tokens + GREATEST(EXTRACT(EPOCH FROM now() - b.updated_at), 0) \
               * COALESCE(b.refill_per_sec, 0)) AS level \
           FROM rate_buckets AS b \
           WHERE b.capacity IS NOT NULL AND b.key IN (SELECT bucket_key FROM candidates) \
           ORDER BY b.key \
           FOR UPDATE OF b), \
         ranked AS ( \
           SELECT c.id, c.bucket_key, k.level, \
             row_number() OVER (PARTITION BY c.bucket_key ORDER BY c.priority, c.run_at, c.id) AS n \
           FROM candidates AS c LEFT JOIN buckets AS k ON k.key = c.bucket_key), \
         picked AS (SELECT id, bucket_key, level FROM ranked WHERE level IS NULL OR n <= level), \
         taken AS ( \
           UPDATE rate_buckets SET tokens = used.level - used.n, updated_at = now() \
           FROM (SELECT bucket_key, MIN(level) AS level, COUNT(*) AS n FROM picked \
                 WHERE level IS NOT NULL GROUP BY bucket_key) AS used \
           WHERE rate_buckets.key = used.bucket_key), \
         claimed AS ( \
           UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, locked_by = $3, \
             locked_until = now() + make_interval(secs => $4), started_at = now() \
           FROM picked WHERE jobs.id = picked.id \
           RETURNING {}), \
         upcoming AS (SELECT MIN(run_at) AS due FROM jobs WHERE state = 'pending' AND queue = $1 AND run_at > now()) \
         SELECT claimed.*, upcoming.due FROM upcoming LEFT JOIN claimed ON true",
        JOB_COLS.split(", ").map(|c| format!("jobs.{c}")).collect::<Vec<_>>().join(", ")
    )
});

/// The jobs claimed, and when the queue's next job not yet due comes due.
pub(crate) async fn claim(
    conn: &PgPool,
    queue: &str,
    limit: usize,
    worker: &str,
    lease_secs: f64,
) -> Result<(Vec<Job>, Option<DateTime<Utc>>)> {
    let rows = sqlx::query(AssertSqlSafe(CLAIM.as_str()))
        .bind(queue)
        .bind(limit as i64)
        .bind(worker)
        .bind(lease_secs)
        .fetch_all(conn)
        .await?;
    // The look-ahead is the last column of every row.
    let next = match rows.first() {
        Some(r) => r.try_get(r.len() - 1)?,
        None => None,
    };
    let mut jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<Uuid>, _>(0)?.is_some() {
            jobs.push(job_from_row(row)?);
        }
    }
    Ok((jobs, next))
}

const BUCKET_COLS: &str = "key, capacity, refill_per_sec, tokens, updated_at, blocked_until";

fn bucket_from_row(row: &PgRow) -> Result<Bucket> {
    Ok(Bucket {
        key: row.try_get(0)?,
        capacity: row.try_get(1)?,
        refill_per_sec: row.try_get(2)?,
        tokens: row.try_get(3)?,
        updated_at: row.try_get(4)?,
        blocked_until: row.try_get(5)?,
    })
}

pub(crate) async fn bucket(pool: &PgPool, key: &str) -> Result<Option<Bucket>> {
    let row = sqlx::query(AssertSqlSafe(format!("SELECT {BUCKET_COLS} FROM rate_buckets WHERE key = $1")))
        .bind(key)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(bucket_from_row).transpose()
}

pub(crate) async fn set_bucket(
    conn: &mut PgConnection,
    key: &str,
    capacity: Option<f64>,
    refill_per_sec: Option<f64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO rate_buckets (key, capacity, refill_per_sec, tokens, updated_at) VALUES ($1, $2, $3, COALESCE($2, 0), now()) \
         ON CONFLICT (key) DO UPDATE SET capacity = excluded.capacity, refill_per_sec = excluded.refill_per_sec, \
           tokens = LEAST(COALESCE(excluded.capacity, 0), rate_buckets.tokens)",
    )
    .bind(key)
    .bind(capacity)
    .bind(refill_per_sec)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn block_bucket(conn: &mut PgConnection, key: &str, secs: f64) -> Result<()> {
    sqlx::query(
        "INSERT INTO rate_buckets (key, tokens, updated_at, blocked_until) VALUES ($1, 0, now(), now() + make_interval(secs => $2)) \
         ON CONFLICT (key) DO UPDATE SET blocked_until = GREATEST(rate_buckets.blocked_until, excluded.blocked_until)",
    )
    .bind(key)
    .bind(secs)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies a batch of completions in two statements, whatever its size.
///
/// The guard is `locked_by` alone: it is set exactly while a job runs (every way out of
/// `running` clears it). Testing `state = 'running'` too would invite the planner onto the
/// `jobs_leases` partial index, which holds a dead entry for every job claimed since the last
/// vacuum, making each batch cost the whole recent history.
pub(crate) async fn complete(conn: &mut PgConnection, worker: &str, rows: &[CompletionRow]) -> Result<usize> {
    let n = rows.len();
    let (mut ids, mut attempts, mut states, mut refunds) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut delays, mut finished, mut errors, mut started, mut ended, mut outcomes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for c in rows {
        ids.push(c.id.0);
        attempts.push(c.attempt);
        states.push(c.state);
        refunds.push(c.attempt_refund);
        delays.push(c.delay_secs);
        finished.push(c.finished);
        errors.push(c.error.as_deref());
        started.push(c.started_at);
        ended.push(c.finished_at);
        outcomes.push(c.outcome);
    }
    let applied: Vec<Uuid> = sqlx::query_scalar(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::int4[], $5::float8[], $6::bool[], $7::text[], \
                                $8::timestamptz[], $9::timestamptz[], $10::text[], $12::bool[]) \
             AS t(id, attempt, state, refund, delay, finished, error, started_at, finished_at, outcome, log)), \
         done AS ( \
           UPDATE jobs AS j SET state = i.state, attempt = j.attempt - i.refund, \
             run_at = CASE WHEN i.delay IS NULL THEN j.run_at ELSE now() + make_interval(secs => i.delay) END, \
             finished_at = CASE WHEN i.finished THEN i.finished_at END, \
             last_error = COALESCE(i.error, j.last_error), locked_by = NULL, locked_until = NULL \
           FROM input AS i \
           WHERE j.id = ANY($1) AND j.id = i.id AND j.locked_by = $11 AND j.attempt = i.attempt \
           RETURNING j.id), \
         logged AS ( \
           INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at, outcome, error) \
           SELECT i.id, i.attempt, $11, i.started_at, i.finished_at, i.outcome, i.error FROM input AS i JOIN done USING (id) \
           WHERE i.log) \
         SELECT id FROM done",
    )
    .persistent(prepared(n))
    .bind(ids)
    .bind(attempts)
    .bind(states)
    .bind(refunds)
    .bind(delays)
    .bind(finished)
    .bind(errors)
    .bind(started)
    .bind(ended)
    .bind(outcomes)
    .bind(worker)
    .bind(rows.iter().map(|c| c.log).collect::<Vec<bool>>())
    .fetch_all(&mut *conn)
    .await?;
    for (key, secs) in super::blocks(rows.iter().filter(|c| applied.contains(&c.id.0))) {
        block_bucket(conn, key, secs).await?;
    }
    Ok(applied.len())
}

pub(crate) async fn heartbeat(conn: &mut PgConnection, worker: &str, lease_secs: f64) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE jobs SET locked_until = now() + make_interval(secs => $1) WHERE state = 'running' AND locked_by = $2",
    )
    .bind(lease_secs)
    .bind(worker)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

pub(crate) async fn reap(conn: &mut PgConnection, limit: usize) -> Result<Vec<Expired>> {
    let rows = sqlx::query(
        "WITH expired AS ( \
           SELECT id, attempt, max_attempts, locked_by, started_at FROM jobs \
           WHERE state = 'running' AND locked_until < now() LIMIT $1 FOR UPDATE SKIP LOCKED), \
         done AS ( \
           UPDATE jobs AS j SET state = CASE WHEN e.attempt >= e.max_attempts THEN 'dead' ELSE 'pending' END, \
             finished_at = CASE WHEN e.attempt >= e.max_attempts THEN now() END, run_at = now(), last_error = $2, \
             locked_by = NULL, locked_until = NULL \
           FROM expired AS e WHERE j.id = e.id RETURNING j.id), \
         logged AS ( \
           INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at, outcome, error) \
           SELECT e.id, e.attempt, COALESCE(e.locked_by, ''), COALESCE(e.started_at, now()), now(), 'lease_expired', $2 \
           FROM expired AS e) \
         SELECT e.id, e.attempt, e.max_attempts, COALESCE(e.locked_by, ''), COALESCE(e.started_at, now()) FROM expired AS e",
    )
    .bind(limit as i64)
    .bind(LEASE_EXPIRED)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Expired {
                id: JobId(r.try_get(0)?),
                attempt: r.try_get(1)?,
                max_attempts: r.try_get(2)?,
                worker: r.try_get(3)?,
                started_at: r.try_get(4)?,
            })
        })
        .collect()
}

pub(crate) async fn release(
    conn: &mut PgConnection,
    worker: &str,
    jobs: &[(JobId, i32, DateTime<Utc>)],
) -> Result<u64> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.0.0).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.1).collect();
    let started: Vec<DateTime<Utc>> = jobs.iter().map(|j| j.2).collect();
    let n: i64 = sqlx::query_scalar(
        "WITH input AS (SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[]) AS t(id, attempt, started_at)), \
         done AS ( \
           UPDATE jobs AS j SET state = 'pending', attempt = j.attempt - 1, run_at = now(), locked_by = NULL, locked_until = NULL \
           FROM input AS i WHERE j.id = ANY($1) AND j.id = i.id AND j.locked_by = $4 AND j.attempt = i.attempt \
           RETURNING j.id), \
         logged AS ( \
           INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at, outcome, error) \
           SELECT i.id, i.attempt, $4, i.started_at, now(), 'released', $5 FROM input AS i JOIN done USING (id)) \
         SELECT COUNT(*) FROM done",
    )
    .persistent(prepared(jobs.len()))
    .bind(ids)
    .bind(attempts)
    .bind(started)
    .bind(worker)
    .bind(RELEASED)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n as u64)
}

pub(crate) async fn prune_before(conn: &mut PgConnection, cutoff: DateTime<Utc>, limit: usize) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('succeeded', 'dead', 'cancelled') \
         AND finished_at < $1 LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit as i64)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes up to `limit` finished jobs beyond the newest `keep`.
pub(crate) async fn prune_beyond(conn: &mut PgConnection, keep: u64, limit: usize) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('succeeded', 'dead', 'cancelled') \
         ORDER BY finished_at DESC, id DESC LIMIT $2 OFFSET $1)",
    )
    .bind(keep as i64)
    .bind(limit as i64)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

pub(crate) async fn cancel(conn: &mut PgConnection, id: JobId, reason: &str) -> Result<Option<JobState>> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), last_error = $1 WHERE id = $2 AND state = 'pending'",
    )
    .bind(reason)
    .bind(id.0)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Some(JobState::Cancelled));
    }
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1").bind(id.0).fetch_optional(&mut *conn).await?;
    Ok(state.and_then(|s| JobState::parse(&s)))
}

pub(crate) async fn reschedule(conn: &mut PgConnection, id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
    let done = sqlx::query("UPDATE jobs SET run_at = $1 WHERE id = $2 AND state = 'pending'")
        .bind(run_at)
        .bind(id.0)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn get(pool: &PgPool, id: JobId) -> Result<Option<Job>> {
    let row = sqlx::query(AssertSqlSafe(format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1")))
        .bind(id.0)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

pub(crate) async fn attempts(pool: &PgPool, id: JobId) -> Result<Vec<Attempt>> {
    let rows = sqlx::query(
        "SELECT job_id, attempt, worker, started_at, finished_at, outcome, error FROM job_attempts WHERE job_id = $1 ORDER BY id",
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
                started_at: r.try_get(3)?,
                finished_at: r.try_get(4)?,
                outcome: r.try_get(5)?,
                error: r.try_get(6)?,
            })
        })
        .collect()
}

pub(crate) async fn depth(pool: &PgPool) -> Result<Vec<Depth>> {
    let rows = sqlx::query("SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state").fetch_all(pool).await?;
    rows.iter().map(|r| Ok(Depth { queue: r.try_get(0)?, state: r.try_get(1)?, count: r.try_get(2)? })).collect()
}

pub(crate) async fn next_due(pool: &PgPool, queue: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE state = 'pending' AND queue = $1")
        .bind(queue)
        .fetch_one(pool)
        .await?)
}

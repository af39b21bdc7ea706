//! The queue's SQL, once per backend. Both modules expose the same functions; `queue.rs` and
//! `enqueue.rs` pick one by the connection they hold. SQLite times are microseconds computed by
//! the caller; PostgreSQL uses the database clock (`now()`) so nodes with skewed clocks agree.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use crate::job::JobId;
use chrono::{DateTime, Utc};

/// Columns of `jobs`, in the order the row mappers read them.
pub(crate) const JOB_COLS: &str = "id, queue, kind, payload, priority, state, attempt, max_attempts, run_at, \
     created_at, started_at, finished_at, locked_by, locked_until, bucket_key, unique_key, last_error";

/// One completion, flattened into the values the UPDATE and the attempt row need.
#[derive(Debug, Clone)]
pub(crate) struct CompletionRow {
    pub id: JobId,
    pub attempt: i32,
    pub state: &'static str,
    /// 1 when the run must not count as an attempt (rate limited).
    pub attempt_refund: i32,
    /// Seconds from now to the next run, for jobs going back to pending.
    pub delay_secs: Option<f64>,
    /// Whether the job is finished, so `finished_at` is set.
    pub finished: bool,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: &'static str,
    /// Set for rate-limited runs of a job that has a bucket: block it for `delay_secs`.
    pub block_bucket: Option<String>,
}

/// A job a reaper found with an expired lease.
#[derive(Debug, Clone)]
pub(crate) struct Expired {
    pub id: JobId,
    pub attempt: i32,
    pub max_attempts: i32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
}

pub(crate) const LEASE_EXPIRED: &str =
    "lease expired: the worker stopped sending heartbeats (it crashed, was killed or lost the database)";
pub(crate) const RELEASED: &str = "the worker shut down before the job finished; released without spending an attempt";

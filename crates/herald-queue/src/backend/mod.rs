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
    /// Whether the run gets a `job_attempts` row: not when its handler logs its runs itself
    /// ([`crate::Finished::logged_by_handler`]).
    pub log: bool,
}

/// The buckets that rate-limited runs among `rows` block, each once with its longest delay in
/// seconds, in key order. On PostgreSQL each block locks its bucket's row until the commit, and
/// the other transactions that lock several buckets (a claim, a hand-off's grant) take them in
/// key order: blocking in the runs' order instead let a completion and a post's create each
/// hold a bucket the other wanted (a deadlock, which failed the create).
pub(crate) fn blocks<'a>(
    rows: impl IntoIterator<Item = &'a CompletionRow>,
) -> std::collections::BTreeMap<&'a str, f64> {
    let mut out = std::collections::BTreeMap::new();
    for c in rows {
        if let (Some(key), Some(secs)) = (&c.block_bucket, c.delay_secs) {
            let longest = out.entry(key.as_str()).or_insert(secs);
            *longest = longest.max(secs);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(key: &str, secs: f64) -> CompletionRow {
        CompletionRow {
            id: JobId(uuid::Uuid::now_v7()),
            attempt: 1,
            state: "pending",
            attempt_refund: 1,
            delay_secs: Some(secs),
            finished: false,
            error: Some("429".into()),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            outcome: "rate_limited",
            block_bucket: Some(key.into()),
            log: true,
        }
    }

    /// Blocks come in key order whatever the runs' order, each bucket once with its longest
    /// delay; runs with no bucket to block add none.
    #[test]
    fn blocks_are_in_key_order_once_each_with_the_longest_delay() {
        let mut plain = limited("x", 1.0);
        plain.block_bucket = None;
        let rows = [limited("webhook:b", 5.0), limited("webhook:a", 2.0), plain, limited("webhook:b", 9.0)];
        let got: Vec<(&str, f64)> = blocks(&rows).into_iter().collect();
        assert_eq!(got, vec![("webhook:a", 2.0), ("webhook:b", 9.0)]);
    }
}

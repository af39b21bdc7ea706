//! The queue's Prometheus metrics. Kinds are few and chosen by code, so they are safe labels.

use std::time::Duration;

pub(crate) fn enqueued(kind: &str, n: u64) {
    metrics::counter!("herald_jobs_enqueued_total", "kind" => kind.to_string()).increment(n);
}

pub(crate) fn claimed(kind: &str, wait: Duration) {
    metrics::counter!("herald_jobs_claimed_total", "kind" => kind.to_string()).increment(1);
    metrics::histogram!("herald_job_wait_seconds", "kind" => kind.to_string()).record(wait.as_secs_f64());
}

/// `outcome` is one of succeeded, failed, retried, dead, rate_limited, cancelled.
pub(crate) fn finished(kind: &str, outcome: &'static str, run: Duration) {
    let name = match outcome {
        "succeeded" => "herald_jobs_succeeded_total",
        "retried" => "herald_jobs_retried_total",
        "dead" => "herald_jobs_dead_total",
        "rate_limited" => "herald_jobs_rate_limited_total",
        _ => "herald_jobs_cancelled_total",
    };
    metrics::counter!(name, "kind" => kind.to_string()).increment(1);
    if matches!(outcome, "retried" | "dead") {
        metrics::counter!("herald_jobs_failed_total", "kind" => kind.to_string()).increment(1);
    }
    metrics::histogram!("herald_job_run_seconds", "kind" => kind.to_string()).record(run.as_secs_f64());
}

pub(crate) fn reaped(n: u64) {
    metrics::counter!("herald_jobs_reaped_total").increment(n);
}

pub(crate) fn depth(queue: &str, state: &str, n: i64) {
    metrics::gauge!("herald_queue_depth", "queue" => queue.to_string(), "state" => state.to_string()).set(n as f64);
}

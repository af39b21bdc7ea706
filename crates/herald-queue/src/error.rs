use herald_store::StoreError;
use std::time::Duration;

/// How a job handler reports failure. The variant decides what happens next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Try again after the usual backoff; `dead` once attempts run out.
    #[error("{0}")]
    Retry(String),
    /// Try again after this delay instead of the backoff; still spends an attempt.
    #[error("{0}")]
    RetryAfter(String, Duration),
    /// Will never succeed: straight to `dead`.
    #[error("{0}")]
    Permanent(String),
    /// The far side said "not yet" (a 429 with Retry-After). The job waits and the run does not
    /// count as an attempt; the job's rate bucket, if it has one, is blocked for the same time.
    #[error("rate limited: {reason}")]
    RateLimited { reason: String, retry_after: Duration },
    /// Stop: the work is no longer wanted.
    #[error("cancelled: {0}")]
    Cancel(String),
}

impl JobError {
    pub fn retry(e: impl std::fmt::Display) -> Self {
        JobError::Retry(e.to_string())
    }

    pub fn permanent(e: impl std::fmt::Display) -> Self {
        JobError::Permanent(e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job payload is not valid JSON: {0}")]
    Payload(#[from] serde_json::Error),
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        QueueError::Store(StoreError::Sqlx(e))
    }
}

impl From<QueueError> for herald_core::Error {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Store(s) => s.into(),
            QueueError::Payload(p) => herald_core::Error::internal(format!("stored job payload is corrupt: {p}")),
        }
    }
}

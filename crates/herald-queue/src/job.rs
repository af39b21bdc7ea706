use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at` and a free worker.
    Pending,
    /// Claimed by a worker under a lease.
    Running,
    Succeeded,
    /// Failed permanently or ran out of attempts; `last_error` says why.
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] =
        [JobState::Pending, JobState::Running, JobState::Succeeded, JobState::Dead, JobState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
    }
}

/// A job to enqueue. Build it with [`NewJob::new`] and the setters.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: serde_json::Value,
    pub queue: String,
    /// Lower runs first; 0 by default, negative allowed.
    pub priority: i16,
    /// When to run; now if `None`.
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
    /// While a job with this key is pending or running, enqueueing another returns it instead.
    pub unique_key: Option<String>,
    /// The rate bucket this job draws a token from when claimed.
    pub bucket_key: Option<String>,
    /// Its id, when the caller makes it first (to write it beside the job before the enqueue);
    /// made at the enqueue otherwise.
    pub id: Option<JobId>,
}

impl NewJob {
    pub const DEFAULT_QUEUE: &'static str = "default";
    pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;

    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        NewJob {
            kind: kind.into(),
            payload,
            queue: Self::DEFAULT_QUEUE.into(),
            priority: 0,
            run_at: None,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            bucket_key: None,
            id: None,
        }
    }

    pub fn id(mut self, id: JobId) -> Self {
        self.id = Some(id);
        self
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    pub fn bucket(mut self, key: impl Into<String>) -> Self {
        self.bucket_key = Some(key.into());
        self
    }
}

/// What [`crate::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    New(JobId),
    /// A live job with the same unique key already existed; this is its id.
    Existing(JobId),
}

impl Enqueued {
    pub fn id(self) -> JobId {
        match self {
            Enqueued::New(id) | Enqueued::Existing(id) => id,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    pub state: JobState,
    /// Attempts started so far, this one included while running.
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub bucket_key: Option<String>,
    pub unique_key: Option<String>,
    pub last_error: Option<String>,
    /// Set once a handler recorded this run's success in its own transaction.
    #[serde(skip)]
    pub(crate) recorded: Recorded,
}

/// Whether a run's outcome is already in the database, set after the commit that wrote it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorded(Arc<AtomicBool>);

impl Recorded {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One run of a job.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub job_id: JobId,
    pub attempt: i32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// succeeded, failed, dead, rate_limited, cancelled, lease_expired or released.
    pub outcome: String,
    pub error: Option<String>,
}

//! Herald's durable job queue, on the same database as everything else so that a job commits
//! with the work that made it.
//!
//! - [`enqueue`] inside the caller's [`Tx`]: a rolled-back transaction leaves no job.
//! - A [`Runner`] claims due jobs in batches under a lease, runs their [`Handler`], sends
//!   heartbeats while they run, and records every attempt. A job enqueued in this process for a
//!   queue its runner works, due now and with no rate bucket, is handed to a free slot instead:
//!   written claimed and started at commit, with no claim. Completions are written in batches,
//!   or by a handler in the transaction of its own work ([`Queue::complete_in`]).
//! - Failures retry with exponential backoff and jitter, then go `dead`; a rate-limited run waits
//!   for its not-before time without spending an attempt.
//! - [Rate buckets](Queue::set_bucket) shared by every node keep a claim from taking a job whose
//!   bucket is empty or blocked.
//! - A reaper puts back jobs whose worker vanished; retention prunes finished jobs.
//!
//! The queue does not know what jobs do: handlers are registered by kind.
#![forbid(unsafe_code)]

mod backend;
mod enqueue;
mod error;
mod handoff;
mod job;
mod metrics;
mod queue;
mod runner;

pub use enqueue::{enqueue, enqueue_many};
pub use error::{JobError, QueueError};
pub use job::{Attempt, Enqueued, Job, JobId, JobState, NewJob};
pub use queue::{Bucket, CancelResult, Completion, Depth, Finished, LEASE_EXPIRED_ERROR, Queue, RunResult};
pub use runner::{Handler, Registry, Runner, RunnerConfig};

pub use herald_store::Tx;

/// The notification channel rung when jobs are enqueued.
pub const WAKE_CHANNEL: &str = "herald_jobs";

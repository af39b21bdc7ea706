//! Handing new jobs to this node's runner as their transaction commits, without a claim.
//!
//! A job enqueued for a queue this process works, due now, is written already claimed by the
//! local runner whenever one of its slots is free (and its rate bucket, if it has one, a token,
//! taken in the same transaction as a claim takes it): `running`,
//! attempt 1, under the runner's name and lease. When the transaction commits the runner starts
//! it at once. Otherwise the commit would wake a worker to claim it: one more statement on the
//! database and, on PostgreSQL, one more commit between an event and its post. Everything after
//! the start is a claimed job's: heartbeats, completion, and, should the node die, the reaper
//! putting the job back when its lease runs out. A rolled-back transaction leaves no job and
//! gives the slot back.

use crate::job::{Job, JobId, JobState, NewJob};
use crate::runner::Starter;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The runner's open lanes by queue, one set per database in this process
/// (see [`herald_store::Tx::local`]).
#[derive(Default)]
pub(crate) struct Lanes(Mutex<HashMap<String, Arc<Lane>>>);

impl Lanes {
    pub(crate) fn open(&self, queue: &str, lane: Arc<Lane>) {
        self.0.lock().expect("lanes lock").insert(queue.to_string(), lane);
    }

    /// Closes `lane`, unless another runner has opened the queue's lane since.
    pub(crate) fn close(&self, queue: &str, lane: &Arc<Lane>) {
        let mut map = self.0.lock().expect("lanes lock");
        if map.get(queue).is_some_and(|open| Arc::ptr_eq(open, lane)) {
            map.remove(queue);
        }
    }

    /// A free slot for `job`, if it can be handed over: due now, and its queue worked here with
    /// a slot free. (Its bucket's token is the caller's to take. A job with a unique key as well
    /// is not handed over: were its insert to find the key taken, the token would be lost.)
    pub(crate) fn reserve(&self, job: &NewJob, now: DateTime<Utc>) -> Option<Ticket> {
        if job.run_at.is_some_and(|t| t > now) || job.unique_key.is_some() && job.bucket_key.is_some() {
            return None;
        }
        let lane = self.0.lock().expect("lanes lock").get(&job.queue)?.clone();
        let slot = lane.slots.clone().try_acquire_owned().ok()?;
        let unrecorded = lane.unrecorded.clone().try_acquire_owned().ok()?;
        Some(Ticket { lane, slot, unrecorded, now })
    }
}

/// A dispatcher's way in: its slots, its backlog of unrecorded results, and how it starts a job.
pub(crate) struct Lane {
    pub(crate) worker: String,
    pub(crate) lease: Duration,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) unrecorded: Arc<Semaphore>,
    pub(crate) start: Starter,
}

/// A slot held for one job until its transaction commits (then it starts) or ends otherwise
/// (then the slot is free again).
pub(crate) struct Ticket {
    lane: Arc<Lane>,
    slot: OwnedSemaphorePermit,
    unrecorded: OwnedSemaphorePermit,
    now: DateTime<Utc>,
}

impl Ticket {
    pub(crate) fn worker(&self) -> &str {
        &self.lane.worker
    }

    pub(crate) fn lease(&self) -> Duration {
        self.lane.lease
    }

    /// When the job starts, as written: its claim time and the start of its first attempt.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// When the job's first lease runs out, as written.
    pub(crate) fn lease_end(&self) -> DateTime<Utc> {
        self.now + chrono::TimeDelta::from_std(self.lane.lease).unwrap_or_default()
    }

    /// The job as it was written, claimed.
    pub(crate) fn job(&self, id: JobId, new: &NewJob) -> Job {
        Job {
            id,
            queue: new.queue.clone(),
            kind: new.kind.clone(),
            payload: new.payload.clone(),
            priority: new.priority,
            state: JobState::Running,
            attempt: 1,
            max_attempts: new.max_attempts,
            run_at: new.run_at.unwrap_or(self.now),
            created_at: self.now,
            started_at: Some(self.now),
            finished_at: None,
            locked_by: Some(self.lane.worker.clone()),
            locked_until: Some(self.lease_end()),
            bucket_key: new.bucket_key.clone(),
            unique_key: new.unique_key.clone(),
            last_error: None,
            recorded: Default::default(),
        }
    }

    /// Starts `job` on the runner (call after the commit that wrote it).
    pub(crate) fn start(self, job: Job) {
        crate::metrics::claimed(&job.kind, Duration::ZERO);
        self.lane.start.spawn(job, self.slot, self.unrecorded);
    }
}

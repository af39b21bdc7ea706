use crate::handoff::{Lane, Lanes};
use crate::job::{Job, JobId};
use crate::queue::{Claimed, Completion, Queue, RunResult};
use crate::{JobError, WAKE_CHANNEL, metrics};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use herald_store::{Backend, Pools};
use rand::Rng;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

/// Does the work of one job kind.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, job: &Job) -> Result<(), JobError>;

    /// The longest one run may take; past it the run fails and is retried.
    fn timeout(&self) -> Duration {
        Duration::from_secs(300)
    }

    /// How long to wait before retrying after failed attempt `attempt` (1-based).
    fn backoff(&self, attempt: i32) -> Duration {
        default_backoff(attempt)
    }
}

/// 5 s, 10 s, 20 s … doubling up to an hour, each ±20 % so retries of a burst spread out.
pub fn default_backoff(attempt: i32) -> Duration {
    let base = 5.0 * 2f64.powi((attempt - 1).clamp(0, 20));
    let secs = base.min(3600.0) * rand::rng().random_range(0.8..1.2);
    Duration::from_secs_f64(secs)
}

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(kind)
    }
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Unique per process; shows in attempts as the worker.
    pub worker_id: String,
    /// Queues to work, each with how many jobs may run at once.
    pub queues: Vec<(String, usize)>,
    /// The most jobs one claim takes.
    pub batch_size: usize,
    /// How long a claim holds a job without a heartbeat.
    pub lease: Duration,
    /// How often an idle worker looks for due jobs when no wake-up arrives.
    pub poll_interval: Duration,
    /// How often this node looks for expired leases.
    pub reap_interval: Duration,
    /// Finished jobs older than this are pruned.
    pub retention_age: Option<Duration>,
    /// At most this many finished jobs are kept.
    pub retention_count: Option<u64>,
    pub prune_interval: Duration,
    /// How long running jobs may finish after shutdown begins before they are released.
    pub shutdown_grace: Duration,
    /// Whether jobs this process enqueues start in a free slot as they commit, unclaimed (see
    /// the crate's docs); off, every job waits for a claim. By default (`None`) on PostgreSQL,
    /// where each claim is a commit waiting for the disk, and off on SQLite, where a claim flushes
    /// nothing and takes a batch, and jobs started one by one as they commit write their results
    /// in smaller batches (`herald bench workflows --backend sqlite`: 5–10% fewer events/s).
    pub handoff: Option<bool>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            worker_id: format!("worker-{}", uuid::Uuid::now_v7().simple()),
            queues: vec![(crate::NewJob::DEFAULT_QUEUE.to_string(), 16)],
            batch_size: 100,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            reap_interval: Duration::from_secs(10),
            retention_age: Some(Duration::from_secs(7 * 86_400)),
            retention_count: Some(100_000),
            prune_interval: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            handoff: None,
        }
    }
}

/// Runs jobs from the database until told to stop.
pub struct Runner {
    queue: Queue,
    registry: Arc<Registry>,
    config: Arc<RunnerConfig>,
}

struct InFlight {
    attempt: i32,
    started_at: DateTime<Utc>,
    abort: Option<AbortHandle>,
}

type Running = Arc<Mutex<HashMap<JobId, InFlight>>>;

/// A finished run on its way to the database. It holds a backlog permit until the result is
/// committed, so a slow database slows claiming instead of letting `running` rows pile up, while
/// its worker slot is already free for the next job.
struct Done {
    completion: Completion,
    _unrecorded: OwnedSemaphorePermit,
}

impl Runner {
    pub fn new(queue: Queue, registry: Registry, config: RunnerConfig) -> Self {
        Runner { queue, registry: Arc::new(registry), config: Arc::new(config) }
    }

    /// Works until `shutdown` is cancelled, then stops claiming, gives running jobs the grace
    /// period to finish, releases the rest without spending their attempt, and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let Runner { queue, registry, config } = self;
        let running: Running = Arc::default();
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
        let background = CancellationToken::new();

        let completer = queue.db().spawn_writing(complete_loop(queue.clone(), config.worker_id.clone(), done_rx));
        let heartbeat = tokio::spawn(heartbeat_loop(queue.clone(), config.clone(), background.clone()));
        let maintenance = tokio::spawn(maintenance_loop(queue.clone(), config.clone(), background.clone()));
        let listener = (queue.db().backend() == Backend::Postgres)
            .then(|| tokio::spawn(listen_loop(queue.clone(), background.clone())));

        let dispatchers: Vec<JoinHandle<()>> = config
            .queues
            .iter()
            .map(|(name, concurrency)| {
                let d = Dispatcher {
                    queue: queue.clone(),
                    config: config.clone(),
                    name: name.clone(),
                    concurrency: (*concurrency).max(1),
                    starter: Starter {
                        registry: registry.clone(),
                        running: running.clone(),
                        done: done_tx.clone(),
                        runtime: tokio::runtime::Handle::current(),
                    },
                };
                tokio::spawn(d.run(shutdown.clone()))
            })
            .collect();
        drop(done_tx);
        tracing::info!(worker = %config.worker_id, queues = ?config.queues, "job runner started");

        for d in dispatchers {
            let _ = d.await;
        }
        // Stopped claiming. Let running jobs finish within the grace period.
        let deadline = Instant::now() + config.shutdown_grace;
        while !running.lock().expect("running lock").is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let leftovers: Vec<(JobId, InFlight)> = running.lock().expect("running lock").drain().collect();
        if !leftovers.is_empty() {
            let mut release = Vec::with_capacity(leftovers.len());
            for (id, f) in leftovers {
                if let Some(a) = f.abort {
                    a.abort();
                }
                release.push((id, f.attempt, f.started_at));
            }
            match queue.release(&config.worker_id, &release).await {
                Ok(n) => tracing::warn!(released = n, "shutdown grace ran out; released unfinished jobs"),
                Err(e) => {
                    tracing::error!(error = %e, "could not release jobs at shutdown; their leases will expire")
                }
            }
        }
        // Every sender is gone once the job tasks end, so the completer drains and exits.
        let _ = completer.await;
        background.cancel();
        let _ = heartbeat.await;
        let _ = maintenance.await;
        if let Some(l) = listener {
            let _ = l.await;
        }
        tracing::info!(worker = %config.worker_id, "job runner stopped");
    }
}

struct Dispatcher {
    queue: Queue,
    config: Arc<RunnerConfig>,
    name: String,
    concurrency: usize,
    starter: Starter,
}

/// Starts claimed and handed jobs: each runs in a task of its own, and its result goes to the
/// completer unless its handler recorded it.
#[derive(Clone)]
pub(crate) struct Starter {
    registry: Arc<Registry>,
    running: Running,
    done: mpsc::UnboundedSender<Done>,
    /// The runner's runtime. A handed job starts from whatever commits it, which on SQLite may
    /// be a group commit on the writer's own thread; its job must not run there.
    runtime: tokio::runtime::Handle,
}

impl Dispatcher {
    async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        // Jobs claimed but not yet recorded as finished: bounded, so `running` rows stay few.
        let unrecorded = Arc::new(Semaphore::new((self.concurrency * 4).max(1000)));
        // Jobs this process enqueues for this queue take free slots as they commit.
        let handoff = self.config.handoff.unwrap_or(self.queue.db().backend() == Backend::Postgres);
        let lane = handoff.then(|| {
            let lane = Arc::new(Lane {
                worker: self.config.worker_id.clone(),
                lease: self.config.lease,
                slots: slots.clone(),
                unrecorded: unrecorded.clone(),
                start: self.starter.clone(),
            });
            self.queue.db().wakeups().local::<Lanes>().open(&self.name, lane.clone());
            lane
        });
        self.dispatch(shutdown, slots, unrecorded).await;
        if let Some(lane) = lane {
            self.queue.db().wakeups().local::<Lanes>().close(&self.name, &lane);
        }
    }

    async fn dispatch(&self, shutdown: CancellationToken, slots: Arc<Semaphore>, unrecorded: Arc<Semaphore>) {
        let wake = self.queue.db().wakeups().channel(WAKE_CHANNEL);
        // Under load, wait a moment for several slots so one claim takes many jobs.
        let batch_target = (self.concurrency / 2).clamp(1, self.config.batch_size);
        let mut saturated = false;
        loop {
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = shutdown.cancelled() => return,
            };
            let mut permits = vec![first];
            let gather_until = Instant::now() + if saturated { Duration::from_millis(2) } else { Duration::ZERO };
            while permits.len() < self.config.batch_size {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) if permits.len() < batch_target && Instant::now() < gather_until => {
                        let left = gather_until.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(left, slots.clone().acquire_owned()).await {
                            Ok(p) => permits.push(p.expect("semaphore open")),
                            Err(_) => break,
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut backlog = Vec::with_capacity(permits.len());
            while backlog.len() < permits.len() {
                match unrecorded.clone().try_acquire_owned() {
                    Ok(p) => backlog.push(p),
                    Err(_) => break,
                }
            }
            if backlog.is_empty() {
                // Results are not being recorded as fast as jobs finish; wait for the database.
                drop(permits);
                tokio::select! {
                    p = unrecorded.clone().acquire_owned() => drop(p),
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            permits.truncate(backlog.len());
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wanted = permits.len();
            let claim = {
                let (queue, name, config) = (self.queue.clone(), self.name.clone(), self.config.clone());
                async move { queue.claim_and_look_ahead(&name, wanted, &config.worker_id, config.lease).await }
            };
            let Claimed { jobs, next_due } = match self.queue.db().writing(claim).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "claiming jobs failed; retrying in 1s");
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            let got = jobs.len();
            for job in jobs {
                let slot = permits.pop().expect("one slot per claimed job");
                let pending = backlog.pop().expect("one backlog permit per claimed job");
                self.starter.spawn(job, slot, pending);
            }
            drop(permits);
            drop(backlog);
            saturated = got == wanted;
            if saturated {
                continue;
            }
            let now = Utc::now();
            let next_due = match next_due {
                Some(known) => Ok(known),
                None => self.queue.next_due(&self.name).await,
            };
            let nap = match next_due {
                Ok(Some(t)) if t > now => (t - now).to_std().unwrap_or_default().min(self.config.poll_interval),
                _ => self.config.poll_interval,
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

impl Starter {
    pub(crate) fn spawn(&self, job: Job, slot: OwnedSemaphorePermit, unrecorded: OwnedSemaphorePermit) {
        let id = job.id;
        let started_at = job.started_at.unwrap_or_else(Utc::now);
        // Registered before the task exists, so a fast job finds itself in the map.
        self.running
            .lock()
            .expect("running lock")
            .insert(id, InFlight { attempt: job.attempt, started_at, abort: None });
        let handler = self.registry.get(&job.kind).cloned();
        let running = self.running.clone();
        let done = self.done.clone();
        let task = self.runtime.spawn(async move {
            let clock = Instant::now();
            let result = run_one(handler.as_deref(), &job).await;
            let run_time = clock.elapsed();
            drop(slot);
            metrics::finished(&job.kind, result.outcome(), run_time);
            if let RunResult::Retry { error, .. } | RunResult::Dead { error } = &result {
                tracing::warn!(job = %job.id, kind = %job.kind, attempt = job.attempt, error = %error, "job failed");
            }
            // If shutdown already took this job to release it, it is not ours to complete; if
            // its handler recorded the run with its work, it is done.
            let ours = running.lock().expect("running lock").remove(&job.id).is_some();
            if ours && !job.recorded.get() {
                let completion = Completion {
                    job_id: job.id,
                    attempt: job.attempt,
                    started_at,
                    run_time,
                    bucket_key: job.bucket_key.clone(),
                    result,
                };
                let _ = done.send(Done { completion, _unrecorded: unrecorded });
            }
        });
        if let Some(f) = self.running.lock().expect("running lock").get_mut(&id) {
            f.abort = Some(task.abort_handle());
        }
    }
}

async fn run_one(handler: Option<&dyn Handler>, job: &Job) -> RunResult {
    let Some(handler) = handler else {
        return retry_or_dead(
            job,
            format!("no handler for job kind `{}` on this node", job.kind),
            default_backoff(job.attempt),
        );
    };
    let limit = handler.timeout();
    let outcome = match tokio::time::timeout(limit, AssertUnwindSafe(handler.run(job)).catch_unwind()).await {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(JobError::Retry(format!("job panicked: {msg}")))
        }
        Err(_) => Err(JobError::Retry(format!("job timed out after {}s", limit.as_secs_f64()))),
    };
    match outcome {
        Ok(()) => RunResult::Succeeded,
        Err(JobError::Retry(e)) => retry_or_dead(job, e, handler.backoff(job.attempt)),
        Err(JobError::RetryAfter(e, d)) => retry_or_dead(job, e, d),
        Err(JobError::Permanent(e)) => RunResult::Dead { error: e },
        Err(JobError::RateLimited { reason, retry_after }) => {
            RunResult::RateLimited { error: reason, delay: retry_after }
        }
        Err(JobError::Cancel(reason)) => RunResult::Cancelled { reason: format!("cancelled: {reason}") },
    }
}

fn retry_or_dead(job: &Job, error: String, delay: Duration) -> RunResult {
    if job.attempt >= job.max_attempts {
        RunResult::Dead { error: format!("{error} (attempt {} of {}; giving up)", job.attempt, job.max_attempts) }
    } else {
        RunResult::Retry { error, delay }
    }
}

/// Writes completions in batches: whatever arrived while the last batch was being written.
async fn complete_loop(queue: Queue, worker: String, mut rx: mpsc::UnboundedReceiver<Done>) {
    const MAX_BATCH: usize = 1000;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut slots = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(d) = next.take() {
            batch.push(d.completion);
            slots.push(d._unrecorded);
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let mut delay = Duration::from_millis(50);
        for attempt in 1.. {
            match queue.complete(&worker, &batch).await {
                Ok(_) => break,
                // The jobs stay `running` under our lease (heartbeats keep it) until this lands;
                // if we never manage, the reaper runs them again elsewhere.
                Err(e) if attempt < 30 => {
                    tracing::error!(error = %e, jobs = batch.len(), "recording job results failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = batch.len(), "gave up recording job results; the reaper will rerun them");
                    break;
                }
            }
        }
        batch.clear();
        slots.clear(); // frees the backlog
    }
}

async fn heartbeat_loop(queue: Queue, config: Arc<RunnerConfig>, stop: CancellationToken) {
    let every = config.lease / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = queue.heartbeat(&config.worker_id, config.lease).await {
            tracing::error!(error = %e, "job heartbeat failed; leases may expire");
        }
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

async fn maintenance_loop(queue: Queue, config: Arc<RunnerConfig>, stop: CancellationToken) {
    let mut next_prune = Instant::now() + jitter(Duration::from_secs(30)).min(config.prune_interval);
    let mut next_depth = Instant::now();
    loop {
        if let Err(e) = queue.reap().await {
            tracing::error!(error = %e, "reaping expired leases failed");
        }
        if Instant::now() >= next_depth {
            let _ = queue.depth().await;
            next_depth = Instant::now() + Duration::from_secs(15);
        }
        if Instant::now() >= next_prune {
            match queue.prune(config.retention_age, config.retention_count).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "pruned finished jobs"),
                Err(e) => tracing::error!(error = %e, "pruning finished jobs failed"),
            }
            next_prune = Instant::now() + jitter(config.prune_interval);
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(config.reap_interval)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Turns PostgreSQL notifications from other nodes into local wake-ups.
async fn listen_loop(queue: Queue, stop: CancellationToken) {
    let Pools::Postgres(pool) = queue.db().pools() else {
        return;
    };
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for job wake-ups; polling only, retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen(WAKE_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying in 5s");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        loop {
            tokio::select! {
                msg = listener.recv() => match msg {
                    Ok(n) => queue.db().wakeups().ring_from(WAKE_CHANNEL, n.payload()),
                    Err(e) => {
                        tracing::warn!(error = %e, "job wake-up listener lost its connection; reconnecting");
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}

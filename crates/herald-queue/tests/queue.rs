//! The shared queue suite: every test runs on SQLite, and on PostgreSQL when
//! HERALD_TEST_POSTGRES_URL is set.

use chrono::Utc;
use herald_queue::{
    CancelResult, Completion, Enqueued, Handler, Job, JobError, JobId, JobState, NewJob, Queue, Registry, RunResult,
    Runner, RunnerConfig, enqueue, enqueue_many,
};
use herald_store::Db;
use herald_store::testing::each_backend;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn add(db: &Db, job: NewJob) -> JobId {
    let mut tx = db.begin().await.unwrap();
    let id = enqueue(&mut tx, job).await.unwrap().id();
    tx.commit().await.unwrap();
    id
}

fn noop() -> NewJob {
    NewJob::new("test.noop", json!({"n": 1}))
}

async fn state(q: &Queue, id: JobId) -> JobState {
    q.get(id).await.unwrap().expect("job exists").state
}

fn done(job: &Job, result: RunResult) -> Completion {
    Completion {
        job_id: job.id,
        attempt: job.attempt,
        started_at: job.started_at.unwrap(),
        run_time: Duration::from_millis(3),
        bucket_key: job.bucket_key.clone(),
        result,
    }
}

const LEASE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn enqueue_commits_with_the_callers_transaction_and_vanishes_on_rollback() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let mut tx = db.begin().await.unwrap();
        let gone = enqueue(&mut tx, noop()).await.unwrap().id();
        tx.rollback().await.unwrap();
        assert!(q.get(gone).await.unwrap().is_none(), "a rolled-back enqueue leaves no job");

        let mut tx = db.begin().await.unwrap();
        let kept = enqueue(&mut tx, noop()).await.unwrap().id();
        assert!(q.get(kept).await.unwrap().is_none(), "not visible before commit");
        tx.commit().await.unwrap();
        let job = q.get(kept).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.payload, json!({"n": 1}));
        assert_eq!(job.attempt, 0);
        assert_eq!(job.max_attempts, NewJob::DEFAULT_MAX_ATTEMPTS);
        // UUIDv7: time-ordered ids.
        assert_eq!(job.id.0.get_version_num(), 7);
    })
    .await;
}

#[tokio::test]
async fn a_unique_key_returns_the_live_job_and_frees_once_it_finishes() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let mut tx = db.begin().await.unwrap();
        let first = enqueue(&mut tx, noop().unique_key("post:1")).await.unwrap();
        let second = enqueue(&mut tx, noop().unique_key("post:1")).await.unwrap();
        tx.commit().await.unwrap();
        assert!(matches!(first, Enqueued::New(_)));
        assert_eq!(second, Enqueued::Existing(first.id()));

        // Still held while running.
        let claimed = q.claim("default", 10, "w1", LEASE).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let mut tx = db.begin().await.unwrap();
        assert_eq!(enqueue(&mut tx, noop().unique_key("post:1")).await.unwrap(), Enqueued::Existing(first.id()));
        tx.commit().await.unwrap();

        q.complete("w1", &[done(&claimed[0], RunResult::Succeeded)]).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let third = enqueue(&mut tx, noop().unique_key("post:1")).await.unwrap();
        tx.commit().await.unwrap();
        assert!(matches!(third, Enqueued::New(id) if id != first.id()), "a finished job frees its key");
    })
    .await;
}

#[tokio::test]
async fn claims_follow_priority_then_run_at_and_skip_future_jobs() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let later = add(&db, noop().run_at(Utc::now() + chrono::Duration::hours(1))).await;
        let low = add(&db, noop().priority(5)).await;
        let old_normal = add(&db, noop().run_at(Utc::now() - chrono::Duration::seconds(5))).await;
        let normal = add(&db, noop()).await;
        let urgent = add(&db, noop().priority(-1)).await;
        let other_queue = add(&db, noop().queue("other")).await;

        let jobs = q.claim("default", 10, "w1", LEASE).await.unwrap();
        let order: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(order, vec![urgent, old_normal, normal, low]);
        assert!(jobs.iter().all(|j| j.state == JobState::Running && j.attempt == 1));
        assert_eq!(jobs[0].locked_by.as_deref(), Some("w1"));
        assert_eq!(state(&q, later).await, JobState::Pending);
        assert_eq!(state(&q, other_queue).await, JobState::Pending);

        // A claim takes at most its limit.
        for _ in 0..5 {
            add(&db, noop()).await;
        }
        assert_eq!(q.claim("default", 3, "w1", LEASE).await.unwrap().len(), 3);
        assert_eq!(q.claim("default", 3, "w1", LEASE).await.unwrap().len(), 2);
        assert!(q.claim("default", 3, "w1", LEASE).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn concurrent_claimers_never_take_the_same_job() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let mut tx = db.begin().await.unwrap();
        enqueue_many(&mut tx, (0..400).map(|_| noop()).collect()).await.unwrap();
        tx.commit().await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let jobs = q.claim("default", 7, &format!("w{w}"), LEASE).await.unwrap();
                    if jobs.is_empty() {
                        return mine;
                    }
                    mine.extend(jobs.into_iter().map(|j| j.id));
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(n, 400, "every job claimed");
        assert_eq!(all.len(), 400, "no job claimed twice");
    })
    .await;
}

#[tokio::test]
async fn an_expired_lease_is_reaped_and_recorded_but_heartbeats_keep_it() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let kept = add(&db, noop().queue("hb")).await;
        let lost = add(&db, noop().queue("lost")).await;
        let short = Duration::from_millis(400);
        let hb = q.claim("hb", 1, "alive", short).await.unwrap();
        let gone = q.claim("lost", 1, "crashed", short).await.unwrap();
        assert_eq!((hb.len(), gone.len()), (1, 1));

        // The live worker heartbeats every 100 ms for well past its lease.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(q.heartbeat("alive", short).await.unwrap(), 1);
            q.reap().await.unwrap();
            assert_eq!(state(&q, kept).await, JobState::Running, "a heartbeating job is never reaped");
        }
        assert_eq!(state(&q, lost).await, JobState::Pending, "the silent worker's job was reaped");
        let attempts = q.attempts(lost).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome, "lease_expired");
        assert_eq!(attempts[0].worker, "crashed");

        // Its late completion is ignored, and the rerun is attempt 2.
        let again = q.claim("lost", 1, "other", LEASE).await.unwrap();
        assert_eq!(again[0].attempt, 2);
        assert_eq!(q.complete("crashed", &[done(&gone[0], RunResult::Succeeded)]).await.unwrap(), 0);
        assert_eq!(state(&q, lost).await, JobState::Running);
        assert_eq!(q.complete("other", &[done(&again[0], RunResult::Succeeded)]).await.unwrap(), 1);
        assert_eq!(state(&q, lost).await, JobState::Succeeded);
    })
    .await;
}

#[tokio::test]
async fn a_reaped_job_on_its_last_attempt_goes_dead() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let id = add(&db, noop().max_attempts(1)).await;
        q.claim("default", 1, "w", Duration::from_millis(50)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(q.reap().await.unwrap(), 1);
        let job = q.get(id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Dead);
        assert!(job.last_error.unwrap().contains("lease expired"));
        assert!(job.finished_at.is_some());
    })
    .await;
}

#[tokio::test]
async fn retries_back_off_then_die_with_the_last_error() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let id = add(&db, noop().max_attempts(2)).await;
        let job = q.claim("default", 1, "w", LEASE).await.unwrap().remove(0);
        let before = Utc::now();
        let retry = RunResult::Retry { error: "HTTP 503 from platform".into(), delay: Duration::from_secs(60) };
        assert_eq!(q.complete("w", &[done(&job, retry)]).await.unwrap(), 1);
        let after = q.get(id).await.unwrap().unwrap();
        assert_eq!(after.state, JobState::Pending);
        assert_eq!(after.last_error.as_deref(), Some("HTTP 503 from platform"));
        let wait = (after.run_at - before).num_seconds();
        assert!((58..=62).contains(&wait), "retry scheduled ~60 s out, got {wait}");
        assert!(q.claim("default", 1, "w", LEASE).await.unwrap().is_empty(), "not due yet");

        // Make it due now, fail it for good.
        q.reschedule(id, Utc::now()).await.unwrap();
        let job = q.claim("default", 1, "w", LEASE).await.unwrap().remove(0);
        assert_eq!(job.attempt, 2);
        q.complete("w", &[done(&job, RunResult::Dead { error: "gave up".into() })]).await.unwrap();
        let dead = q.get(id).await.unwrap().unwrap();
        assert_eq!(dead.state, JobState::Dead);
        assert_eq!(dead.last_error.as_deref(), Some("gave up"));
        let outcomes: Vec<String> = q.attempts(id).await.unwrap().into_iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, ["failed", "dead"]);
    })
    .await;
}

#[tokio::test]
async fn a_rate_limited_run_waits_without_spending_an_attempt_and_blocks_its_bucket() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let id = add(&db, noop().bucket("telegram:42").max_attempts(1)).await;
        let sibling = add(&db, noop().bucket("telegram:42")).await;
        let job = q.claim("default", 1, "w", LEASE).await.unwrap().remove(0);
        assert_eq!(job.id, id);
        let limited = RunResult::RateLimited { error: "429 retry after 30".into(), delay: Duration::from_secs(30) };
        q.complete("w", &[done(&job, limited)]).await.unwrap();
        let after = q.get(id).await.unwrap().unwrap();
        assert_eq!(after.state, JobState::Pending, "even with max_attempts 1 it is not dead");
        assert_eq!(after.attempt, 0, "the rate-limited run is not an attempt");
        let bucket = q.bucket("telegram:42").await.unwrap().expect("bucket created");
        assert!(bucket.blocked_until.unwrap() > Utc::now() + chrono::Duration::seconds(25));
        // The blocked bucket holds back the sibling too.
        assert!(q.claim("default", 5, "w", LEASE).await.unwrap().is_empty());
        assert_eq!(state(&q, sibling).await, JobState::Pending);
        assert_eq!(q.attempts(id).await.unwrap()[0].outcome, "rate_limited");
    })
    .await;
}

/// On PostgreSQL a completion blocks its runs' buckets in key order, as claims and hand-offs lock
/// them: a transaction that holds the first bucket and then wants the second (as a post's create
/// taking tokens does) waits for the completion instead of deadlocking with it. Blocking in the
/// runs' order (second, then first) deadlocked here, and PostgreSQL failed one side.
#[tokio::test]
async fn a_completion_blocks_buckets_in_key_order_so_it_never_deadlocks_with_a_grant() {
    let Some(t) = herald_store::testing::TestDb::postgres().await else { return };
    let q = Queue::new(t.db.clone());
    for key in ["order:a", "order:b"] {
        q.set_bucket(key, 100.0, 100.0).await.unwrap();
        add(&t.db, noop().bucket(key)).await;
    }
    let jobs = q.claim("default", 2, "w", LEASE).await.unwrap();
    assert_eq!(jobs.len(), 2);
    let of = |key: &str| jobs.iter().find(|j| j.bucket_key.as_deref() == Some(key)).unwrap();
    let limited = || RunResult::RateLimited { error: "429".into(), delay: Duration::from_secs(30) };
    // The runs in the order that used to lock "order:b" first.
    let batch = vec![done(of("order:b"), limited()), done(of("order:a"), limited())];

    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&t.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '5s'").execute(&mut other).await.unwrap();
    sqlx::query("SELECT key FROM rate_buckets WHERE key = 'order:a' FOR UPDATE").execute(&mut other).await.unwrap();

    let completing = tokio::spawn({
        let q = q.clone();
        async move { q.complete("w", &batch).await }
    });
    // Until the completion waits for a lock (for "order:a" with the fix; for it after taking
    // "order:b" without), so the next step meets it either way.
    let waiting =
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(waiting).fetch_one(&mut other).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "the completion never waited for the held bucket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("SELECT key FROM rate_buckets WHERE key = 'order:b' FOR UPDATE")
        .execute(&mut other)
        .await
        .expect("the second bucket is free: the completion waits for the first before it takes any");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    assert_eq!(completing.await.unwrap().expect("the completion goes on once the first bucket is free"), 2);
    for key in ["order:a", "order:b"] {
        let bucket = q.bucket(key).await.unwrap().unwrap();
        assert!(bucket.blocked_until.is_some_and(|t| t > Utc::now()), "{key} blocked");
    }
}

#[tokio::test]
async fn rate_buckets_limit_claims_across_claimers() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        q.set_bucket("mastodon:1", 3.0, 0.0).await.unwrap();
        for _ in 0..6 {
            add(&db, noop().bucket("mastodon:1")).await;
        }
        let free = add(&db, noop().bucket("unconfigured")).await;
        let plain = add(&db, noop()).await;
        let first = q.claim("default", 10, "a", LEASE).await.unwrap();
        let limited = first.iter().filter(|j| j.bucket_key.as_deref() == Some("mastodon:1")).count();
        assert_eq!(limited, 3, "three tokens, three claims");
        assert!(first.iter().any(|j| j.id == free), "a bucket with no row is unlimited");
        assert!(first.iter().any(|j| j.id == plain));
        assert!(q.claim("default", 10, "b", LEASE).await.unwrap().is_empty(), "the bucket is empty for every claimer");
        let b = q.bucket("mastodon:1").await.unwrap().unwrap();
        assert!(b.tokens < 1.0);

        // Refill at 20 tokens/s: after 200 ms about 4 more, capped by the remaining 3 jobs.
        q.set_bucket("mastodon:1", 3.0, 20.0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refilled = q.claim("default", 10, "b", LEASE).await.unwrap();
        assert_eq!(refilled.len(), 3);
        // A block stops even a full bucket.
        add(&db, noop().bucket("mastodon:1")).await;
        q.block_bucket("mastodon:1", Duration::from_secs(60)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(q.claim("default", 10, "b", LEASE).await.unwrap().is_empty());
    })
    .await;
}

/// Claimers racing for one bucket take no more tokens than it has, all told: each waits for the
/// other's level before taking its own.
#[tokio::test]
async fn racing_claimers_never_take_more_tokens_than_a_bucket_has() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        q.set_bucket("telegram:1", 5.0, 0.0).await.unwrap();
        for _ in 0..40 {
            add(&db, noop().bucket("telegram:1")).await;
        }
        let claimers: Vec<_> = (0..4)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move { q.claim("default", 3, &format!("w{i}"), LEASE).await.unwrap().len() })
            })
            .collect();
        let mut taken = 0;
        for c in claimers {
            taken += c.await.unwrap();
        }
        assert_eq!(taken, 5, "five tokens, five claims across every claimer");
        assert!(q.claim("default", 40, "late", LEASE).await.unwrap().is_empty());
        let b = q.bucket("telegram:1").await.unwrap().unwrap();
        assert!((0.0..1.0).contains(&b.tokens), "{b:?}");
    })
    .await;
}

#[tokio::test]
async fn cancel_stops_pending_jobs_only() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let pending = add(&db, noop().run_at(Utc::now() + chrono::Duration::minutes(5))).await;
        let running = add(&db, noop()).await;
        q.claim("default", 1, "w", LEASE).await.unwrap();
        assert_eq!(q.cancel(pending, "post deleted").await.unwrap(), CancelResult::Cancelled);
        let job = q.get(pending).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.last_error.as_deref(), Some("cancelled: post deleted"));
        assert_eq!(q.cancel(running, "x").await.unwrap(), CancelResult::NotCancellable(JobState::Running));
        assert_eq!(q.cancel(JobId::new(), "x").await.unwrap(), CancelResult::NotFound);
    })
    .await;
}

#[tokio::test]
async fn pruning_removes_old_finished_jobs_and_their_attempts_only() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let mut finished = Vec::new();
        for _ in 0..5 {
            finished.push(add(&db, noop()).await);
        }
        let jobs = q.claim("default", 5, "w", LEASE).await.unwrap();
        q.complete("w", &jobs.iter().map(|j| done(j, RunResult::Succeeded)).collect::<Vec<_>>()).await.unwrap();
        let live = add(&db, noop().run_at(Utc::now() + chrono::Duration::hours(1))).await;

        assert_eq!(q.prune(Some(Duration::from_secs(3600)), None).await.unwrap(), 0, "nothing is an hour old");
        assert_eq!(q.prune(None, Some(2)).await.unwrap(), 3, "keep the newest two");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(q.prune(Some(Duration::from_millis(1)), None).await.unwrap(), 2);
        for id in finished {
            assert!(q.get(id).await.unwrap().is_none());
            assert!(q.attempts(id).await.unwrap().is_empty(), "attempts go with their job");
        }
        assert_eq!(state(&q, live).await, JobState::Pending, "pending jobs are never pruned");
    })
    .await;
}

struct Counting {
    runs: Arc<AtomicUsize>,
    fail_first: usize,
}

#[async_trait::async_trait]
impl Handler for Counting {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        match job.payload["mode"].as_str() {
            Some("permanent") => Err(JobError::permanent("bad request: 400")),
            Some("panic") => panic!("handler bug"),
            Some("cancel") => Err(JobError::Cancel("no longer wanted".into())),
            _ if n < self.fail_first => Err(JobError::retry("flaky")),
            _ => Ok(()),
        }
    }

    fn backoff(&self, _attempt: i32) -> Duration {
        Duration::ZERO
    }
}

fn fast_config() -> RunnerConfig {
    RunnerConfig {
        queues: vec![("default".into(), 8)],
        poll_interval: Duration::from_millis(50),
        reap_interval: Duration::from_millis(100),
        ..RunnerConfig::default()
    }
}

async fn wait_until_finished(q: &Queue, ids: &[JobId]) {
    for _ in 0..500 {
        let mut all = true;
        for id in ids {
            all &= q.get(*id).await.unwrap().unwrap().state.is_finished();
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("jobs did not finish in 10 s");
}

#[tokio::test]
async fn the_runner_retries_fails_and_records_every_attempt() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut registry = Registry::default();
        registry.register("test.noop", Counting { runs: runs.clone(), fail_first: 2 });
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(q.clone(), registry, fast_config()).run(shutdown.clone()));

        let flaky = add(&db, noop()).await;
        let permanent = add(&db, NewJob::new("test.noop", json!({"mode": "permanent"}))).await;
        let panics = add(&db, NewJob::new("test.noop", json!({"mode": "panic"})).max_attempts(2)).await;
        let cancels = add(&db, NewJob::new("test.noop", json!({"mode": "cancel"}))).await;
        let unknown = add(&db, NewJob::new("test.unknown", json!({})).max_attempts(1)).await;
        wait_until_finished(&q, &[flaky, permanent, panics, cancels, unknown]).await;
        shutdown.cancel();
        runner.await.unwrap();

        let flaky_job = q.get(flaky).await.unwrap().unwrap();
        assert_eq!(flaky_job.state, JobState::Succeeded);
        let outcomes: Vec<String> = q.attempts(flaky).await.unwrap().into_iter().map(|a| a.outcome).collect();
        assert!(outcomes.last().map(String::as_str) == Some("succeeded"));
        assert!(outcomes.iter().all(|o| o == "failed" || o == "succeeded"));

        assert_eq!(state(&q, permanent).await, JobState::Dead);
        assert_eq!(q.attempts(permanent).await.unwrap().len(), 1, "permanent failures are not retried");
        let p = q.get(panics).await.unwrap().unwrap();
        assert_eq!(p.state, JobState::Dead);
        assert!(p.last_error.unwrap().contains("job panicked: handler bug"));
        assert_eq!(q.attempts(panics).await.unwrap().len(), 2);
        assert_eq!(state(&q, cancels).await, JobState::Cancelled);
        let u = q.get(unknown).await.unwrap().unwrap();
        assert_eq!(u.state, JobState::Dead);
        assert!(u.last_error.unwrap().contains("no handler for job kind `test.unknown`"));
        let a = &q.attempts(flaky).await.unwrap()[0];
        assert!(a.finished_at >= a.started_at);
    })
    .await;
}

struct Slow;

#[async_trait::async_trait]
impl Handler for Slow {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let ms = job.payload["ms"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_lets_short_jobs_finish_and_releases_long_ones_without_spending_an_attempt() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let mut registry = Registry::default();
        registry.register("test.slow", Slow);
        let config = RunnerConfig { shutdown_grace: Duration::from_millis(300), ..fast_config() };
        let short = add(&db, NewJob::new("test.slow", json!({"ms": 100}))).await;
        let long = add(&db, NewJob::new("test.slow", json!({"ms": 60_000}))).await;
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(q.clone(), registry, config).run(shutdown.clone()));
        for _ in 0..100 {
            if state(&q, long).await == JobState::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), runner).await.expect("runner stops within the grace").unwrap();

        assert_eq!(state(&q, short).await, JobState::Succeeded, "a job inside the grace period finishes");
        let l = q.get(long).await.unwrap().unwrap();
        assert_eq!(l.state, JobState::Pending, "the long job is released, not lost");
        assert_eq!(l.attempt, 0, "and keeps its attempt");
        assert!(l.locked_by.is_none());
        assert_eq!(q.attempts(long).await.unwrap()[0].outcome, "released");
    })
    .await;
}

#[tokio::test]
async fn the_runner_wakes_promptly_on_enqueue_and_honours_run_at() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let mut registry = Registry::default();
        registry.register("test.slow", Slow);
        // A long poll interval: only the wake-up can make this prompt.
        let config = RunnerConfig { poll_interval: Duration::from_secs(30), ..fast_config() };
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(q.clone(), registry, config).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;

        let now = add(&db, NewJob::new("test.slow", json!({}))).await;
        let soon =
            add(&db, NewJob::new("test.slow", json!({})).run_at(Utc::now() + chrono::Duration::milliseconds(500)))
                .await;
        wait_until_finished(&q, &[now, soon]).await;
        let now_job = q.get(now).await.unwrap().unwrap();
        let soon_job = q.get(soon).await.unwrap().unwrap();
        assert!((now_job.started_at.unwrap() - now_job.created_at).num_milliseconds() < 1000);
        let late = soon_job.started_at.unwrap() - soon_job.run_at;
        assert!(late.num_milliseconds() >= 0, "never before run_at");
        assert!(late.num_milliseconds() < 1000, "started {late} after run_at");
        shutdown.cancel();
        runner.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn on_postgres_an_enqueue_on_one_node_wakes_the_workers_of_another() {
    let Some(t) = herald_store::testing::TestDb::postgres().await else { return };
    // A second handle: its own pool and its own in-process wake-ups, like another node.
    let other = Db::connect(&herald_store::DatabaseUrl::parse(&t.url()).unwrap(), &Default::default()).await.unwrap();
    let q = Queue::new(t.db.clone());
    let mut registry = Registry::default();
    registry.register("test.slow", Slow);
    let config = RunnerConfig { poll_interval: Duration::from_secs(30), ..fast_config() };
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(q.clone(), registry, config).run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await; // LISTEN is up, the first poll is done

    let id = add(&other, NewJob::new("test.slow", json!({}))).await;
    wait_until_finished(&q, &[id]).await;
    let job = q.get(id).await.unwrap().unwrap();
    let waited = job.started_at.unwrap() - job.created_at;
    assert!(waited.num_milliseconds() < 2000, "woken by NOTIFY, not the 30 s poll: waited {waited}");
    shutdown.cancel();
    runner.await.unwrap();
    other.close().await;
    t.destroy().await;
}

/// Records its job's success in the transaction of its own work (a row in `work`); with
/// `"rollback": true` it rolls that transaction back and leaves the record to the runner; with
/// `"own_log": true` it keeps its own log of runs, and the queue writes no attempt row.
struct SelfRecording {
    queue: Queue,
}

#[async_trait::async_trait]
impl Handler for SelfRecording {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let mut tx = self.queue.db().begin().await.map_err(JobError::retry)?;
        herald_store::exec!(tx, "INSERT INTO work (job) VALUES ($1)", job.id.0.to_string()).map_err(JobError::retry)?;
        let mut finished = job.succeeded();
        if job.payload["own_log"] == json!(true) {
            finished = finished.logged_by_handler();
        }
        Queue::complete_in(&mut tx, &[finished]).await.map_err(JobError::retry)?;
        if job.payload["rollback"] == json!(true) {
            tx.rollback().await.map_err(JobError::retry)?;
            return Ok(());
        }
        tx.commit().await.map_err(JobError::retry)?;
        // Committed with the work: the job is finished before the handler even returns.
        let now = self.queue.get(job.id).await.map_err(JobError::retry)?.map(|j| j.state);
        if now != Some(JobState::Succeeded) {
            return Err(JobError::permanent(format!("the job's success did not commit with its work: {now:?}")));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_records_its_jobs_success_in_the_transaction_of_its_work() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "CREATE TABLE work (job TEXT PRIMARY KEY)").unwrap();
        tx.commit().await.unwrap();
        let mut registry = Registry::default();
        registry.register("test.self", SelfRecording { queue: q.clone() });
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(q.clone(), registry, fast_config()).run(shutdown.clone()));

        let own = add(&db, NewJob::new("test.self", json!({}))).await;
        let rolled_back = add(&db, NewJob::new("test.self", json!({"rollback": true}))).await;
        let logged_by_handler = add(&db, NewJob::new("test.self", json!({"own_log": true}))).await;
        wait_until_finished(&q, &[own, rolled_back, logged_by_handler]).await;
        shutdown.cancel();
        runner.await.unwrap();

        let job = q.get(logged_by_handler).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
        assert!(job.finished_at.is_some() && job.locked_by.is_none(), "finished and let go: {job:?}");
        assert!(q.attempts(logged_by_handler).await.unwrap().is_empty(), "its handler logs its runs, not the queue");

        for id in [own, rolled_back] {
            let job = q.get(id).await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
            let attempts = q.attempts(id).await.unwrap();
            assert_eq!(attempts.len(), 1, "one run, recorded once");
            assert_eq!(attempts[0].outcome, "succeeded");
            assert!(attempts[0].finished_at >= attempts[0].started_at);
        }
        let mut rows: Vec<String> =
            herald_store::on_read!(db, c => sqlx::query_scalar("SELECT job FROM work").fetch_all(c).await).unwrap();
        rows.sort();
        let mut want = vec![own.0.to_string(), logged_by_handler.0.to_string()];
        want.sort();
        assert_eq!(rows, want, "the rolled-back work left nothing, its job's record neither");
    })
    .await;
}

/// Holds its job running until the test opens the gate.
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl Handler for Gated {
    async fn run(&self, _job: &Job) -> Result<(), JobError> {
        self.gate.acquire().await.expect("gate open").forget();
        Ok(())
    }
}

#[tokio::test]
async fn a_job_enqueued_where_its_queue_is_worked_starts_at_commit_without_a_claim() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut registry = Registry::default();
        registry.register("test.gated", Gated { gate: gate.clone() });
        // One slot, and a poll too slow to matter: only the hand-off starts a job at once.
        let config = RunnerConfig {
            queues: vec![("default".into(), 1)],
            poll_interval: Duration::from_secs(30),
            handoff: Some(true), // on SQLite it is off unless asked for
            ..fast_config()
        };
        let worker = config.worker_id.clone();
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(q.clone(), registry, config).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await; // the first (empty) claim is done

        // A rolled-back transaction gives its slot back.
        let mut tx = db.begin().await.unwrap();
        enqueue(&mut tx, NewJob::new("test.gated", json!({}))).await.unwrap();
        tx.rollback().await.unwrap();

        let mut tx = db.begin().await.unwrap();
        let handed = enqueue(&mut tx, NewJob::new("test.gated", json!({}))).await.unwrap().id();
        tx.commit().await.unwrap();
        // Written claimed: no claim stands between the commit and the run.
        let job = q.get(handed).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Running, "handed over as it committed");
        assert_eq!(job.attempt, 1);
        assert_eq!(job.locked_by.as_deref(), Some(worker.as_str()));
        assert!(job.locked_until.is_some());
        assert_eq!(job.started_at, Some(job.created_at), "started as it was made");

        // The only slot is taken: the next job waits for a claim, as do jobs not due yet.
        let waits = add(&db, NewJob::new("test.gated", json!({}))).await;
        assert_eq!(state(&q, waits).await, JobState::Pending);
        let later =
            add(&db, NewJob::new("test.gated", json!({})).run_at(Utc::now() + chrono::Duration::hours(1))).await;
        assert_eq!(state(&q, later).await, JobState::Pending);

        gate.add_permits(2);
        wait_until_finished(&q, &[handed, waits]).await;
        let attempts = q.attempts(handed).await.unwrap();
        assert_eq!(attempts.len(), 1, "one run, recorded like a claimed one");
        assert_eq!((attempts[0].outcome.as_str(), attempts[0].worker.as_str()), ("succeeded", worker.as_str()));

        // A job drawing on a rate bucket is handed over with a token, taken as it is made; with
        // none left, it waits for a claim (and the bucket's refill).
        q.set_bucket("b1", 1.0, 0.0001).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let ids = enqueue_many(&mut tx, vec![NewJob::new("test.gated", json!({})).bucket("b1")]).await.unwrap();
        tx.commit().await.unwrap();
        let with_token = ids[0].id();
        assert_eq!(state(&q, with_token).await, JobState::Running);
        assert!(q.bucket("b1").await.unwrap().unwrap().tokens < 1.0, "its token was taken");
        gate.add_permits(1);
        wait_until_finished(&q, &[with_token]).await;
        let without = add(&db, NewJob::new("test.gated", json!({})).bucket("b1")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let j = q.get(without).await.unwrap().unwrap();
        assert_eq!((j.state, j.attempt), (JobState::Pending, 0), "no token, no start");
        shutdown.cancel();
        runner.await.unwrap();
        assert_eq!(state(&q, later).await, JobState::Pending, "not run before its time");
    })
    .await;
}

#[tokio::test]
async fn with_the_hand_off_off_every_job_waits_for_a_claim() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let mut registry = Registry::default();
        registry.register("test.slow", Slow);
        let config = RunnerConfig { handoff: Some(false), poll_interval: Duration::from_secs(30), ..fast_config() };
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(q.clone(), registry, config).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut tx = db.begin().await.unwrap();
        let ids = enqueue_many(&mut tx, vec![NewJob::new("test.slow", json!({"ms": 1}))]).await.unwrap();
        tx.commit().await.unwrap();
        let id = ids[0].id();
        wait_until_finished(&q, &[id]).await;
        let job = q.get(id).await.unwrap().unwrap();
        assert!(job.started_at > Some(job.created_at), "claimed after it was made: {job:?}");
        shutdown.cancel();
        runner.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_batch_hands_over_as_many_jobs_of_a_bucket_as_it_has_tokens() {
    each_backend(|db| async move {
        let q = Queue::new(db.clone());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut registry = Registry::default();
        registry.register("test.gated", Gated { gate: gate.clone() });
        let config = RunnerConfig { poll_interval: Duration::from_secs(30), handoff: Some(true), ..fast_config() };
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(q.clone(), registry, config).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        q.set_bucket("two", 2.0, 0.0001).await.unwrap();

        let mut tx = db.begin().await.unwrap();
        let jobs = vec![
            NewJob::new("test.gated", json!({"n": 1})).bucket("two"),
            NewJob::new("test.gated", json!({"n": 2})),
            NewJob::new("test.gated", json!({"n": 3})).bucket("two"),
            NewJob::new("test.gated", json!({"n": 4})).bucket("two"),
        ];
        let ids: Vec<JobId> = enqueue_many(&mut tx, jobs).await.unwrap().into_iter().map(|e| e.id()).collect();
        tx.commit().await.unwrap();
        let mut states = Vec::new();
        for id in &ids {
            states.push(state(&q, *id).await);
        }
        use JobState::{Pending, Running};
        assert_eq!(
            states,
            [Running, Running, Running, Pending],
            "two tokens: the bucket's first two, and the job without one"
        );
        assert!(q.bucket("two").await.unwrap().unwrap().tokens < 0.01, "both tokens were taken");
        gate.add_permits(3);
        wait_until_finished(&q, &ids[..3]).await;
        shutdown.cancel();
        runner.await.unwrap();
        assert_eq!(state(&q, ids[3]).await, Pending, "it waits for a token");
    })
    .await;
}

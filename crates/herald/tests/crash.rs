//! Crash test: real `herald serve --role worker` processes drain 10,000 jobs while one is killed
//! with SIGKILL. An independent counter outside Herald (an HTTP server in this test) receives
//! every job's request with the job id as its Idempotency-Key, like a platform that honours one.
//!
//! It checks that every job succeeded exactly once, that the counter saw every job id, and that
//! the only repeated requests are the runs the kill interrupted, which the idempotency key absorbs.

mod common;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use common::{Proc, herald};
use herald_queue::{JobState, NewJob, Queue, enqueue_many};
use herald_store::Pools;
use herald_store::testing::TestDb;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JOBS: usize = 10_000;

#[derive(Clone, Default)]
struct Counter {
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl Counter {
    async fn start(&self) -> std::net::SocketAddr {
        let app = axum::Router::new().route("/ping", post(record)).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn requests(&self) -> u64 {
        self.seen.lock().unwrap().values().map(|n| u64::from(*n)).sum()
    }
}

async fn record(State(c): State<Counter>, headers: HeaderMap) -> &'static str {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("missing").to_string();
    *c.seen.lock().unwrap().entry(key).or_default() += 1;
    "ok"
}

async fn count(db: &herald_store::Db, sql: &str) -> i64 {
    match db.pools() {
        Pools::Sqlite { read, .. } => sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(read).await.unwrap(),
        Pools::Postgres(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.unwrap(),
    }
}

async fn drain_while_one_worker_is_killed(t: TestDb, processes: usize) {
    let counter = Counter::default();
    let addr = counter.start().await;
    let url = format!("http://{addr}/ping");
    let mut tx = t.db.begin().await.unwrap();
    enqueue_many(&mut tx, (0..JOBS).map(|_| NewJob::new("diag.ping", json!({"url": url}))).collect()).await.unwrap();
    tx.commit().await.unwrap();

    let dir = herald_store::testing::scratch_dir("herald-crash");
    let mut workers: Vec<Proc> = (0..processes)
        .map(|_| {
            let mut cmd = herald();
            cmd.args(["serve", "--role", "worker", "--listen", "127.0.0.1:0", "--job-lease", "3s", "--workers", "16"])
                .args(["--database-url", &t.url()])
                .env("HERALD_SECRET_KEY", "ab".repeat(32));
            Proc::spawn(cmd, &dir)
        })
        .collect();

    let start = Instant::now();
    while counter.distinct() < JOBS / 4 {
        assert!(start.elapsed() < Duration::from_secs(120), "workers made no progress:\n{}", workers[0].log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kill a worker while it holds jobs (its worker id carries its pid): at 1/4 done it may be
    // between claims, and a kill then interrupts nothing the test could check.
    let holding =
        format!("SELECT COUNT(*) FROM jobs WHERE state = 'running' AND locked_by LIKE '%-{}-%'", workers[0].child.id());
    loop {
        let held = count(&t.db, &holding).await;
        if held > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "worker 0 never held a job:\n{}", workers[0].log());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    workers[0].child.kill().unwrap(); // SIGKILL, mid-run
    let killed_at = counter.distinct();

    let q = Queue::new(t.db.clone());
    loop {
        let depth = q.depth().await.unwrap();
        let done: i64 = depth.iter().filter(|d| d.state == JobState::Succeeded.as_str()).map(|d| d.count).sum();
        if done == JOBS as i64 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "not drained: {depth:?}\n{}", workers[1].log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &mut workers[1..] {
        w.signal("TERM");
        assert_eq!(w.wait_exit(Duration::from_secs(30)), 0, "{}", w.log());
    }

    let reaped = count(&t.db, "SELECT COUNT(*) FROM job_attempts WHERE outcome = 'lease_expired'").await;
    let succeeded = count(&t.db, "SELECT COUNT(*) FROM job_attempts WHERE outcome = 'succeeded'").await;
    let twice = count(
        &t.db,
        "SELECT COUNT(*) FROM (SELECT job_id FROM job_attempts WHERE outcome = 'succeeded' GROUP BY job_id HAVING COUNT(*) > 1) AS d",
    )
    .await;
    let replays = counter.requests() - counter.distinct() as u64;
    eprintln!(
        "{}: {processes} workers, killed one at {killed_at} jobs; {reaped} runs reaped, {replays} repeated requests absorbed by the idempotency key",
        t.db.backend().as_str()
    );
    assert_eq!(counter.distinct(), JOBS, "the counter saw every job id");
    assert_eq!(succeeded, JOBS as i64, "every job succeeded once");
    assert_eq!(twice, 0, "no job succeeded twice");
    assert!(reaped >= 1, "the kill interrupted running jobs, and the reaper put them back");
    assert!(replays <= reaped as u64, "only interrupted runs were repeated ({replays} > {reaped})");
    let ids: Vec<String> = counter.seen.lock().unwrap().keys().cloned().collect();
    for id in ids.iter().take(50) {
        let job = q.get(herald_queue::JobId(id.parse().unwrap())).await.unwrap().expect("the key is a real job id");
        assert_eq!(job.state, JobState::Succeeded);
    }
    drop(workers);
    let _ = std::fs::remove_dir_all(dir);
    t.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_postgres_drain_10000_jobs_through_a_sigkill() {
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    drain_while_one_worker_is_killed(t, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_sqlite_file_drain_10000_jobs_through_a_sigkill() {
    drain_while_one_worker_is_killed(TestDb::sqlite().await, 2).await;
}

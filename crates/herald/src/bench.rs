//! `herald bench …`: measurements that print their result beside a ceiling measured in the same
//! run. They are benchmarks, never tests: nothing here fails on a number.

use crate::Exit;
use crate::cli::{BenchCommand, BenchQueueArgs};
use crate::config::Config;
use chrono::Utc;
use herald_queue::{Handler, Job, JobError, JobState, NewJob, Queue, Registry, Runner, RunnerConfig, enqueue_many};
use herald_store::testing::{create_postgres_database, drop_postgres_database, scratch_dir};
use herald_store::{DatabaseUrl, Db, StoreOptions, TxConn};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub async fn run(command: BenchCommand, config: &Config) -> Result<(), Exit> {
    match command {
        BenchCommand::Queue(args) => bench_queue(args).await,
        BenchCommand::Serve => bench_serve(config).await,
        BenchCommand::Deliveries(args) => crate::bench_deliveries::run(args).await,
        BenchCommand::Feeds(args) => crate::bench_feeds::run(args).await,
        BenchCommand::Workflows(args) => crate::bench_workflows::run(args).await,
        BenchCommand::FeedServer(args) => crate::bench_feeds::serve_feeds(args).await,
    }
}

struct Noop {
    runs: Arc<AtomicUsize>,
    waits_us: Arc<Mutex<Vec<i64>>>,
}

#[async_trait::async_trait]
impl Handler for Noop {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let wait = (Utc::now() - job.created_at).num_microseconds().unwrap_or(0);
        self.waits_us.lock().expect("waits").push(wait);
        self.runs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn payload() -> serde_json::Value {
    json!({"post": "0192f0c4-7d1e-7c3a-9e1b-2a4f5c6d7e8f", "connection": "telegram:42", "attempt_key": "abc"})
}

/// The database's rate of one-row INSERT then DELETE, each its own commit, from `clients`
/// concurrent clients: what a queue that commits every enqueue and every completion could reach.
async fn commit_ceiling(db: &Db, clients: usize, secs: u64) -> anyhow::Result<f64> {
    let mut tx = db.begin().await?;
    match tx.conn().await? {
        TxConn::Sqlite(c) => {
            sqlx::query("CREATE TABLE IF NOT EXISTS bench_ceiling (id BLOB PRIMARY KEY, payload TEXT NOT NULL)")
                .execute(c)
                .await?;
        }
        TxConn::Postgres(c) => {
            sqlx::query("CREATE TABLE IF NOT EXISTS bench_ceiling (id uuid PRIMARY KEY, payload jsonb NOT NULL)")
                .execute(c)
                .await?;
        }
    }
    tx.commit().await?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let body = payload().to_string();
            while Instant::now() < deadline {
                let id = uuid::Uuid::now_v7();
                let mut tx = db.begin().await?;
                match tx.conn().await? {
                    TxConn::Sqlite(c) => {
                        sqlx::query("INSERT INTO bench_ceiling (id, payload) VALUES (?1, ?2)")
                            .bind(id)
                            .bind(&body)
                            .execute(c)
                            .await?;
                    }
                    TxConn::Postgres(c) => {
                        sqlx::query("INSERT INTO bench_ceiling (id, payload) VALUES ($1, $2::jsonb)")
                            .bind(id)
                            .bind(&body)
                            .execute(c)
                            .await?;
                    }
                }
                tx.commit().await?;
                let mut tx = db.begin().await?;
                match tx.conn().await? {
                    TxConn::Sqlite(c) => {
                        sqlx::query("DELETE FROM bench_ceiling WHERE id = ?1").bind(id).execute(c).await?;
                    }
                    TxConn::Postgres(c) => {
                        sqlx::query("DELETE FROM bench_ceiling WHERE id = $1").bind(id).execute(c).await?;
                    }
                }
                tx.commit().await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

struct QueueResult {
    jobs_per_sec: f64,
    enqueue_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn drain(db: &Db, jobs: usize, workers: usize) -> anyhow::Result<QueueResult> {
    let runs = Arc::new(AtomicUsize::new(0));
    let waits = Arc::new(Mutex::new(Vec::with_capacity(jobs)));
    let mut registry = Registry::default();
    registry.register("bench.noop", Noop { runs: runs.clone(), waits_us: waits.clone() });
    let queue = Queue::new(db.clone());
    let config = RunnerConfig {
        worker_id: "bench".into(),
        queues: vec![("default".into(), workers)],
        batch_size: 1000,
        ..RunnerConfig::default()
    };
    let stop = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(queue.clone(), registry, config).run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let start = Instant::now();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(500);
        let mut tx = db.begin().await?;
        enqueue_many(&mut tx, (0..n).map(|_| NewJob::new("bench.noop", payload())).collect()).await?;
        tx.commit().await?;
        left -= n;
    }
    let enqueued = start.elapsed();
    while runs.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Done means recorded: wait for the last completions to commit.
    loop {
        let succeeded: i64 =
            queue.depth().await?.iter().filter(|d| d.state == JobState::Succeeded.as_str()).map(|d| d.count).sum();
        if succeeded as usize >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    stop.cancel();
    runner.await?;
    let mut w = std::mem::take(&mut *waits.lock().expect("waits"));
    w.sort_unstable();
    let pct = |p: f64| {
        w.get(((w.len() as f64 * p) as usize).min(w.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1000.0
    };
    Ok(QueueResult {
        jobs_per_sec: jobs as f64 / elapsed.as_secs_f64(),
        enqueue_per_sec: jobs as f64 / enqueued.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

/// Starts the peak that [`peak_rss_mb`] reads again from the current RSS (Linux: writing 5 to
/// `/proc/self/clear_refs`), so a bench that runs several rounds reports each one's own peak.
/// Elsewhere the peak stays the process's.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(crate) fn peak_rss_mb() -> f64 {
    status_kb(std::process::id(), "VmHWM:") / 1024.0
}

fn status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0.0)
}

async fn bench_queue(args: BenchQueueArgs) -> Result<(), Exit> {
    let backends = backends(&args.backend)?;
    println!(
        "herald bench queue: {} no-op jobs, {} at once, enqueued 500 per transaction while workers drain",
        args.jobs, args.workers
    );
    println!(
        "{:<9} {:>10} {:>12} {:>22} {:>7} {:>10} {:>10} {:>9}",
        "backend", "jobs/s", "enqueue/s", "ceiling commits/s", "ratio", "wait p50", "wait p99", "peak RSS"
    );
    for backend in backends {
        let (db, cleanup) = bench_db(backend, &args.postgres_url).await?;
        db.migrate().await?;
        let ceiling = commit_ceiling(&db, args.workers.min(64), args.ceiling_secs).await?;
        let r = drain(&db, args.jobs, args.workers).await?;
        println!(
            "{:<9} {:>10.0} {:>12.0} {:>22.0} {:>6.2}x {:>8.1}ms {:>8.1}ms {:>7.0}MB",
            backend,
            r.jobs_per_sec,
            r.enqueue_per_sec,
            ceiling,
            r.jobs_per_sec / ceiling,
            r.p50_ms,
            r.p99_ms,
            peak_rss_mb()
        );
        db.close().await;
        cleanup.run().await;
    }
    println!(
        "ceiling: one-row INSERT then DELETE, each its own commit, from min(workers, 64) clients, on the same database"
    );
    println!("wait: from enqueue to the start of the run; peak RSS: this process so far");
    Ok(())
}

/// What to remove after a bench: its SQLite directory or its PostgreSQL database.
pub(crate) enum Cleanup {
    Dir(std::path::PathBuf),
    Pg(String, String),
}

impl Cleanup {
    pub(crate) async fn run(self) {
        match self {
            Cleanup::Dir(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
            Cleanup::Pg(admin, name) => drop_postgres_database(&admin, &name).await,
        }
    }
}

/// A fresh, migrated database for one bench run on `backend` (`sqlite` or `postgres`).
pub(crate) async fn bench_db(backend: &str, postgres_url: &str) -> Result<(Db, Cleanup), Exit> {
    let (db, cleanup) = match backend {
        "sqlite" => {
            let dir = scratch_dir("herald-bench");
            let db = Db::connect(&DatabaseUrl::sqlite(dir.join("bench.db")), &StoreOptions::default()).await?;
            (db, Cleanup::Dir(dir))
        }
        _ => {
            <sqlx::PgConnection as sqlx::Connection>::connect(postgres_url).await.map_err(|e| {
                Exit::Config(format!(
                    "cannot reach PostgreSQL at {} for the bench: {e}",
                    DatabaseUrl::parse(postgres_url).map(|u| u.redacted()).unwrap_or_default()
                ))
            })?;
            let (url, name) = create_postgres_database(postgres_url).await;
            let db =
                Db::connect(&DatabaseUrl::parse(&url)?, &StoreOptions { max_connections: 20, ..Default::default() })
                    .await?;
            (db, Cleanup::Pg(postgres_url.to_string(), name))
        }
    };
    db.migrate().await?;
    Ok((db, cleanup))
}

pub(crate) fn backends(which: &str) -> Result<Vec<&'static str>, Exit> {
    match which {
        "all" => Ok(vec!["sqlite", "postgres"]),
        "sqlite" => Ok(vec!["sqlite"]),
        "postgres" => Ok(vec!["postgres"]),
        other => Err(Exit::Config(format!("--backend `{other}`: use sqlite, postgres or all"))),
    }
}

/// Start-to-ready and idle memory of `herald serve` on a fresh data dir, beside the floor: the
/// time this binary takes to start and exit doing nothing (`herald --version`).
async fn bench_serve(_config: &Config) -> Result<(), Exit> {
    let exe = std::env::current_exe().map_err(anyhow::Error::from)?;
    let mut floor = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        std::process::Command::new(&exe).arg("--version").output().map_err(anyhow::Error::from)?;
        floor.push(t.elapsed());
    }
    floor.sort();
    let mut ready = Vec::new();
    let mut idle_rss = 0.0;
    for round in 0..3 {
        let dir = scratch_dir("herald-bench-serve");
        let addr =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(anyhow::Error::from)?;
        let mut cmd = std::process::Command::new(&exe);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")) {
            cmd.env_remove(k);
        }
        let t = Instant::now();
        let mut child = cmd
            .args(["serve", "--listen", &addr.to_string()])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(anyhow::Error::from)?;
        loop {
            if readyz(addr) {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                return Err(Exit::Failure(anyhow::anyhow!("herald serve was not ready within 30 s")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        ready.push(t.elapsed());
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            idle_rss = status_kb(child.id(), "VmRSS:") / 1024.0;
        }
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
    ready.sort();
    println!("herald bench serve: fresh data dir, SQLite, 3 starts");
    println!(
        "start to ready (median): {:>8.1} ms   floor (`herald --version`, median of 5): {:>6.1} ms",
        ms(ready[1]),
        ms(floor[2])
    );
    println!("idle RSS after 3 s:      {idle_rss:>8.1} MB");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn readyz(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

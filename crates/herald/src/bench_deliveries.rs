//! `herald bench deliveries`: posts × targets through the whole pipeline (create with validation,
//! the post/delivery/job commit, the queue, the delivery job with its in-flight marks, the webhook
//! adapter's signing, the HTTP call, and the outcome commit) against a local receiver with
//! keep-alive, beside the ceiling: a bare HTTP client loop sending the same number of requests to
//! the same receiver with the same concurrency.

use crate::Exit;
use crate::bench::{backends, bench_db, peak_rss_mb, reset_peak_rss};
use crate::cli::BenchDeliveriesArgs;
use axum::extract::State;
use axum::http::HeaderMap;
use herald_accounts::{Accounts, AccountsConfig, Actor, Principal};
use herald_connections::{Connections, NewConnection};
use herald_core::TeamRole;
use herald_http::guard::{Cidr, GuardConfig};
use herald_http::{HttpClient, SafeClient};
use herald_platforms::Net;
use herald_posts::{DeliveryHandler, NewPost, Posts};
use herald_queue::{Queue, Registry, Runner, RunnerConfig};
use herald_vault::{MasterKey, Vault};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The receiver: answers every POST at once and notes when each webhook-id arrived.
#[derive(Default)]
struct Seen {
    count: AtomicUsize,
    arrivals: Mutex<HashMap<String, Instant>>,
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> axum::Json<serde_json::Value> {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    seen.count.fetch_add(1, Ordering::Relaxed);
    if !id.is_empty() {
        seen.arrivals.lock().expect("arrivals").insert(id.clone(), Instant::now());
    }
    axum::Json(json!({ "id": id }))
}

async fn start_receiver() -> anyhow::Result<(String, Arc<Seen>)> {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new().route("/hook/{n}", axum::routing::post(receive)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, seen))
}

/// User and system CPU time of this process so far.
pub(crate) fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// CPU time and run-queue wait of this process's threads, by kind: the name without a trailing
/// `-N` (`tokio-rt-worker`, `herald-writer`, `sqlite-writer`, `sqlite-reader`), summed. Linux
/// only (`/proc/self/task/*/schedstat`); empty elsewhere. Threads that end between two readings
/// are left out of their difference.
pub(crate) fn threads() -> std::collections::BTreeMap<String, Threads> {
    let mut by = std::collections::BTreeMap::<String, Threads>::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return by };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("schedstat")))
        else {
            continue;
        };
        let name = comm.trim();
        let kind = match name.rsplit_once('-') {
            Some((k, n)) if n.chars().all(|c| c.is_ascii_digit()) => k,
            _ => name,
        };
        let f: Vec<u64> = stat.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        let t = by.entry(kind.to_string()).or_default();
        t.ran += Duration::from_nanos(f.first().copied().unwrap_or(0));
        t.waited += Duration::from_nanos(f.get(1).copied().unwrap_or(0));
    }
    by
}

/// One kind of thread's time on a CPU and waiting for one (see [`threads`]).
#[derive(Clone, Copy, Default)]
pub(crate) struct Threads {
    pub ran: Duration,
    pub waited: Duration,
}

/// `threads()` now minus `before`, as one line: each kind's CPU and run-queue wait per `per`
/// (an event, a delivery), busiest first.
pub(crate) fn threads_line(before: &std::collections::BTreeMap<String, Threads>, per: usize) -> String {
    let mut kinds: Vec<(String, Threads)> = threads()
        .into_iter()
        .map(|(k, now)| {
            let then = before.get(&k).copied().unwrap_or_default();
            (k, Threads { ran: now.ran.saturating_sub(then.ran), waited: now.waited.saturating_sub(then.waited) })
        })
        .filter(|(_, t)| !t.ran.is_zero())
        .collect();
    kinds.sort_by_key(|(_, t)| std::cmp::Reverse(t.ran));
    let per = per.max(1) as f64;
    kinds
        .iter()
        .map(|(k, t)| {
            format!("{k} {:.3}/{:.3}", t.ran.as_secs_f64() * 1000.0 / per, t.waited.as_secs_f64() * 1000.0 / per)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// SQLite's writer over a phase of `elapsed` that did `per` units of work (events, deliveries),
/// as one line: how much of the phase it was held, by how many transactions, their trips to the
/// connection's thread, and how many tasks waited for it on average.
pub(crate) fn writer_line(u: &herald_store::WriterStats, elapsed: Duration, per: usize, unit: &str) -> String {
    let tx = u.transactions.max(1) as f64;
    let share_of_hold = |part: Duration| 100.0 * part.as_secs_f64() / u.held.as_secs_f64().max(1e-9);
    format!(
        "SQLite's writer: held {:.0}% of the run by {} transactions ({:.2} ms and {:.2} trips each, \
         {:.2} trips per {unit}), {:.1} waiting for it on average; of the hold, {:.0}% before the first trip, \
         {:.0}% in trips of deferred statements",
        100.0 * u.held.as_secs_f64() / elapsed.as_secs_f64(),
        u.transactions,
        u.held.as_secs_f64() * 1000.0 / tx,
        u.trips as f64 / tx,
        u.trips as f64 / per.max(1) as f64,
        u.waited.as_secs_f64() / elapsed.as_secs_f64(),
        share_of_hold(u.before_first),
        share_of_hold(u.sent),
    )
}

struct Measured {
    per_sec: f64,
    cpu_per: Duration,
    p50: Duration,
    p99: Duration,
    /// How long creating every post took (through the API layer, beside the running workers).
    created_in: Duration,
    /// CPU and run-queue wait per delivery by kind of thread (see [`threads_line`]).
    threads: String,
    /// SQLite's writer over the run (see [`writer_line`]); empty on PostgreSQL and for the ceiling.
    writer: String,
}

/// The same number of requests, the same body size and concurrency, from a bare client loop.
async fn ceiling(url: &str, n: usize, concurrency: usize) -> anyhow::Result<Measured> {
    let http = HttpClient::trusted()?;
    let body = json!({"type": "post.published", "timestamp": "2026-12-01T00:00:00Z",
        "data": {"text": "Benchmark post with some text in it, much like a real one", "link": null, "media": [], "idempotency_key": "herald-0"}});
    let left = Arc::new(AtomicUsize::new(n));
    let (cpu0, start) = (cpu(), Instant::now());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, left, body, url) = (http.clone(), left.clone(), body.clone(), format!("{url}/hook/0"));
        tasks.push(tokio::spawn(async move {
            while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1)).is_ok() {
                let r = http.post(&url).header("webhook-id", "x").json(&body).send().await?;
                r.bytes().await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    Ok(Measured {
        per_sec: n as f64 / elapsed.as_secs_f64(),
        cpu_per: (cpu() - cpu0) / n as u32,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        created_in: elapsed,
        threads: String::new(),
        writer: String::new(),
    })
}

async fn pipeline(backend: &str, args: &BenchDeliveriesArgs, url: &str, seen: &Arc<Seen>) -> Result<Measured, Exit> {
    let (db, cleanup) = bench_db(backend, &args.postgres_url).await?;
    let accounts = Accounts::new(db.clone(), Vault::new(&[MasterKey::generate()]), AccountsConfig::default());
    let mut tx = db.begin().await.map_err(|e| Exit::Failure(e.into()))?;
    let (user, team) = accounts
        .create_user(&mut tx, "bench@example.com", "Bench", "bench-password-1", false)
        .await
        .map_err(|e| Exit::Failure(anyhow::anyhow!("{e}")))?;
    tx.commit().await.map_err(|e| Exit::Failure(e.into()))?;
    let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").expect("cidr")], allow_ports: vec![] };
    let net = Net::new(
        HttpClient::trusted().map_err(|e| Exit::Failure(e.into()))?,
        SafeClient::new(guard).map_err(|e| Exit::Failure(e.into()))?,
    );
    let connections = Connections::new(accounts.clone(), net);
    let mut targets = Vec::new();
    for i in 0..args.targets {
        let new = NewConnection {
            platform: "webhook".into(),
            name: Some(format!("receiver {i}")),
            credentials: json!({}),
            settings: json!({"url": format!("{url}/hook/{i}"), "rate_per_second": 1_000_000.0}),
        };
        let c = connections
            .create_in(team, &Actor::system(), new)
            .await
            .map_err(|e| Exit::Failure(anyhow::anyhow!("{e}")))?;
        targets.push(c.id);
    }
    let queue = Queue::new(db.clone());
    let posts = Posts::new(
        accounts,
        connections,
        queue.clone(),
        herald_media::MediaStore::local(std::env::temp_dir().join("herald-bench-media")),
    );
    let mut registry = Registry::default();
    registry.register(herald_posts::DELIVERY_JOB, DeliveryHandler::new(posts.clone()));
    let config = RunnerConfig {
        worker_id: "bench".into(),
        queues: vec![("default".into(), args.workers)],
        batch_size: 500,
        poll_interval: Duration::from_millis(20),
        ..RunnerConfig::default()
    };
    let stop = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(queue, registry, config).run(stop.clone()));
    let owner = Principal::acting(Some(user.id), team, TeamRole::Owner, "bench");
    let before = seen.count.load(Ordering::Relaxed);
    seen.arrivals.lock().expect("arrivals").clear();
    let n = args.posts * args.targets;
    let committed = Arc::new(Mutex::new(HashMap::with_capacity(n)));
    let threads0 = threads();
    let writer0 = db.writer_use();
    let (cpu0, start) = (cpu(), Instant::now());
    // Posts arrive from several clients at once, as from an API.
    let creators = args.clients.clamp(1, args.posts.max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..creators {
        let (posts, owner, targets, next, committed, total) =
            (posts.clone(), owner.clone(), targets.clone(), next.clone(), committed.clone(), args.posts);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let new = NewPost::now("Benchmark post with some text in it, much like a real one", &targets);
                let (post, _) = posts.create(&owner, new, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let at = Instant::now();
                let mut c = committed.lock().expect("committed");
                for d in post.deliveries {
                    c.insert(herald_platforms::idempotency_key(d.id), at);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Exit::Failure(e.into()))?.map_err(Exit::Failure)?;
    }
    let created_in = start.elapsed();
    // Done means recorded: every delivery published in the database. The count scans the
    // deliveries, so it is read only once every request has arrived (before that it cannot be
    // done); read every 5 ms through the run, it cost the pipeline's process a few percent.
    while seen.count.load(Ordering::Relaxed) - before < n && start.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        let published: i64 = herald_store::on_read!(db, c => sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE state = 'published'").fetch_one(c).await)
        .map_err(|e| Exit::Failure(e.into()))?;
        if published as usize >= n {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(Exit::Failure(anyhow::anyhow!(
                "only {published} of {n} deliveries were published in 10 minutes"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let cpu_used = cpu() - cpu0;
    let threads = threads_line(&threads0, n);
    let writer = db
        .writer_use()
        .zip(writer0)
        .map(|(now, then)| writer_line(&now.since(&then), elapsed, n, "delivery"))
        .unwrap_or_default();
    stop.cancel();
    let _ = runner.await;
    let received = seen.count.load(Ordering::Relaxed) - before;
    if received != n {
        return Err(Exit::Failure(anyhow::anyhow!("the receiver got {received} requests for {n} deliveries")));
    }
    let mut lat: Vec<Duration> = {
        let committed = committed.lock().expect("committed");
        let arrivals = seen.arrivals.lock().expect("arrivals");
        arrivals.iter().filter_map(|(k, at)| committed.get(k).map(|c| at.saturating_duration_since(*c))).collect()
    };
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    db.close().await;
    cleanup.run().await;
    Ok(Measured {
        per_sec: n as f64 / elapsed.as_secs_f64(),
        cpu_per: cpu_used / n as u32,
        p50: pct(0.5),
        p99: pct(0.99),
        created_in,
        threads,
        writer,
    })
}

pub async fn run(args: BenchDeliveriesArgs) -> Result<(), Exit> {
    let backends = backends(&args.backend)?;
    let (url, seen) = start_receiver().await.map_err(Exit::Failure)?;
    let n = args.posts * args.targets;
    println!(
        "herald bench deliveries: {} posts x {} webhook targets = {n} deliveries, {} at once, against a local receiver; \
         {} clients create the posts; {} rounds of the ceiling, then each backend",
        args.posts, args.targets, args.workers, args.clients, args.rounds
    );
    println!(
        "{:<9} {:>5} {:>12} {:>14} {:>7} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "backend",
        "round",
        "deliveries/s",
        "ceiling req/s",
        "ratio",
        "CPU/delivery",
        "commit→req",
        "p99",
        "peak RSS",
        "posts/s"
    );
    // Each round measures the ceiling just before its runs, and each run is compared with its
    // own round's ceiling: the host's speed drifts within seconds, by up to a third here.
    let mut runs: Vec<Runs> = backends.iter().map(|_| Runs::default()).collect();
    let mut ceilings = Vec::new();
    for round in 1..=args.rounds {
        let c = ceiling(&url, n, args.workers).await.map_err(Exit::Failure)?;
        ceilings.push(c.cpu_per);
        for (b, backend) in backends.iter().enumerate() {
            settle().await;
            reset_peak_rss();
            let r = pipeline(backend, &args, &url, &seen).await?;
            let peak = peak_rss_mb();
            runs[b].add(r.per_sec, r.per_sec / c.per_sec, peak);
            println!(
                "{:<9} {:>5} {:>12.0} {:>14.0} {:>6.2}x {:>10.3}ms {:>10.1}ms {:>10.1}ms {:>7.0}MB {:>9.0}",
                backend,
                round,
                r.per_sec,
                c.per_sec,
                r.per_sec / c.per_sec,
                r.cpu_per.as_secs_f64() * 1000.0,
                r.p50.as_secs_f64() * 1000.0,
                r.p99.as_secs_f64() * 1000.0,
                peak,
                args.posts as f64 / r.created_in.as_secs_f64()
            );
            if !r.threads.is_empty() {
                println!("  {backend} threads, ms of CPU/of waiting for one per delivery: {}", r.threads);
            }
            if !r.writer.is_empty() {
                println!("  {}", r.writer);
            }
        }
    }
    for (backend, mut runs) in backends.iter().zip(runs) {
        let (lo, mid, hi) = spread(&mut runs.ratios);
        let (rlo, rmid, rhi) = spread(&mut runs.rates);
        println!(
            "{backend}: median over {} rounds: {rmid:.0} deliveries/s ({rlo:.0}–{rhi:.0}), {mid:.2}x its round's ceiling \
             ({lo:.2}–{hi:.2}); highest peak RSS of a run {:.0} MB",
            args.rounds, runs.peak
        );
    }
    ceilings.sort_unstable();
    println!(
        "ceiling: the same number of POSTs from a bare keep-alive client loop with the same concurrency ({:.3} ms CPU each, \
         receiver included; median of the rounds)",
        ceilings[ceilings.len() / 2].as_secs_f64() * 1000.0
    );
    println!(
        "CPU/delivery: this whole process (creating posts, the queue, the worker, the receiver) over the run; \
         commit→req: from a post's commit to its request reaching the receiver; \
         peak RSS: the process's during the run, which starts from what the rounds before left, \
         after a pause for the allocator to give back what the ceiling freed; \
         posts/s: how fast the posts were created (each with its targets) while the workers ran"
    );
    Ok(())
}

/// Waits long enough for the memory the allocator keeps after the last run (the ceiling's
/// connections, the round before's database) to go back to the OS, so a run's peak RSS is its
/// own: mimalloc returns freed pages a second after they were freed (its `purge_delay`), and a
/// peak measured at once counted up to 30 MB of the ceiling's freed buffers.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1_200)).await;
}

/// One backend's runs over the rounds.
#[derive(Default)]
struct Runs {
    rates: Vec<f64>,
    ratios: Vec<f64>,
    /// The highest peak RSS of a run, MB.
    peak: f64,
}

impl Runs {
    fn add(&mut self, rate: f64, ratio: f64, peak: f64) {
        self.rates.push(rate);
        self.ratios.push(ratio);
        self.peak = self.peak.max(peak);
    }
}

/// The lowest, median (of an even count, the mean of the middle two) and highest of `xs` (not
/// empty).
fn spread(xs: &mut [f64]) -> (f64, f64, f64) {
    xs.sort_unstable_by(f64::total_cmp);
    let n = xs.len();
    (xs[0], (xs[(n - 1) / 2] + xs[n / 2]) / 2.0, xs[n - 1])
}

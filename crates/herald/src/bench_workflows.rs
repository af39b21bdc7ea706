//! `herald bench workflows`: events through a workflow (filter, then template, then publish to
//! M webhook targets) against a local receiver, beside the ceiling: a bare HTTP client loop
//! sending the same number of requests to the same receiver with the same concurrency.
//!
//! Each event goes the whole way: `add_event` commits it with its `source.event` job; the job
//! starts the run; the run filters, renders and creates the post with its M deliveries; each
//! delivery job signs and POSTs to the receiver and records the outcome. The receiver notes when
//! the first request of each event arrived (the event's number is in the post's text), so the
//! latency is from `add_event` returning to the first platform request.
//!
//! Per backend, after a short warm-up: a run paced at `--rate` (the event-to-first-request
//! p50/p99 at that rate), then a run as fast as the clients add events (events/s, deliveries/s,
//! CPU per event).

use crate::Exit;
use crate::bench::{Cleanup, backends, bench_db, peak_rss_mb};
use crate::bench_deliveries::{cpu, threads, threads_line};
use crate::cli::BenchWorkflowsArgs;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use herald_accounts::{Accounts, AccountsConfig, Actor, Principal};
use herald_connections::{Connections, NewConnection};
use herald_core::TeamRole;
use herald_http::guard::{Cidr, GuardConfig};
use herald_http::{HttpClient, SafeClient};
use herald_platforms::Net;
use herald_posts::{DeliveryHandler, EventHandler, Posts};
use herald_queue::{Queue, Registry, Runner, RunnerConfig};
use herald_store::{Db, Ts};
use herald_triggers::{EventDispatcher, Kind, NewEvent, NewSource, Sources, TriggerConfig};
use herald_vault::{MasterKey, Vault};
use herald_workflows::{RunHandler, WorkflowConfig, Workflows};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The targets: on SQLite on this machine, and at a paced 100 events/s.
const TARGET_EVENTS_PER_SEC: f64 = 1_000.0;
const TARGET_DELIVERIES_PER_SEC: f64 = 5_000.0;
const TARGET_P99: Duration = Duration::from_millis(20);
const TARGET_RATE: f64 = 100.0;

/// Events sent on each database before measuring.
const WARM_UP: usize = 200;

/// What the post text carries before the event's number: `bench event 17 https://…/17`.
const MARK: &[u8] = b"bench event ";

/// The receiver: answers every POST at once, counts them, and notes when the first request of
/// each event arrived.
#[derive(Default)]
struct Seen {
    count: AtomicUsize,
    first: Mutex<HashMap<u64, Instant>>,
}

/// The event number after [`MARK`] in a request body, if any.
fn event_number(body: &[u8]) -> Option<u64> {
    let at = body.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits]).ok()?.parse().ok()
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> axum::Json<serde_json::Value> {
    let now = Instant::now();
    seen.count.fetch_add(1, Ordering::Relaxed);
    if let Some(n) = event_number(&body) {
        seen.first.lock().expect("first").entry(n).or_insert(now);
    }
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("");
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

struct Ceiling {
    per_sec: f64,
    cpu_per: Duration,
}

/// The same number of requests, a body of the same shape and size, and the same concurrency,
/// from a bare client loop.
async fn ceiling(url: &str, n: usize, concurrency: usize) -> anyhow::Result<Ceiling> {
    let http = HttpClient::trusted()?;
    let body = json!({"type": "post.published", "timestamp": "2026-12-01T00:00:00Z",
        "data": {"text": "bench ceiling 1234567 https://example.com/e/1234567", "link": null, "media": [],
                 "reply_to": null, "options": {}, "idempotency_key": "herald-0192f0c4-7d1e-7c3a-9e1b-2a4f5c6d7e8f"}});
    let left = Arc::new(AtomicUsize::new(n));
    let (cpu0, start) = (cpu(), Instant::now());
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
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
    Ok(Ceiling { per_sec: n as f64 / elapsed.as_secs_f64(), cpu_per: (cpu() - cpu0) / n.max(1) as u32 })
}

fn fail(e: impl std::fmt::Display) -> Exit {
    Exit::Failure(anyhow::anyhow!("{e}"))
}

/// Herald's services on one bench database, with the workflow, its source and a running runner.
struct World {
    db: Db,
    cleanup: Cleanup,
    sources: Sources,
    owner: Principal,
    source: Uuid,
    stop: CancellationToken,
    runner: tokio::task::JoinHandle<()>,
    /// Events sent on this database so far (every phase's count adds up).
    sent: usize,
}

async fn world(backend: &str, postgres_url: &str, args: &BenchWorkflowsArgs, url: &str) -> Result<World, Exit> {
    let (db, cleanup) = bench_db(backend, postgres_url).await?;
    let vault = Vault::new(&[MasterKey::generate()]);
    let accounts = Accounts::new(db.clone(), vault.clone(), AccountsConfig::default());
    let mut tx = db.begin().await.map_err(|e| Exit::Failure(e.into()))?;
    let (user, team) =
        accounts.create_user(&mut tx, "bench@example.com", "Bench", "bench-password-1", false).await.map_err(fail)?;
    tx.commit().await.map_err(|e| Exit::Failure(e.into()))?;
    let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").expect("cidr")], allow_ports: vec![] };
    let net = Net::new(
        HttpClient::trusted().map_err(|e| Exit::Failure(e.into()))?,
        SafeClient::new(guard).map_err(|e| Exit::Failure(e.into()))?,
    );
    let connections = Connections::new(accounts.clone(), net.clone());
    let mut targets = Vec::new();
    for i in 0..args.targets {
        let new = NewConnection {
            platform: "webhook".into(),
            name: Some(format!("receiver {i}")),
            credentials: json!({}),
            settings: json!({"url": format!("{url}/hook/{i}"), "rate_per_second": 1_000_000.0}),
        };
        let c = connections.create_in(team, &Actor::system(), new).await.map_err(fail)?;
        targets.push(json!({"connection": c.id}));
    }
    let queue = Queue::new(db.clone());
    let posts = Posts::new(
        accounts,
        connections.clone(),
        queue.clone(),
        herald_media::MediaStore::local(std::env::temp_dir().join("herald-bench-media")),
    );
    let sources =
        Sources::new(db.clone(), vault.clone(), net.safe.clone(), net.trusted.clone(), TriggerConfig::default());
    let workflows = Workflows::new(
        db.clone(),
        posts.clone(),
        connections,
        net.safe.clone(),
        net.trusted.clone(),
        vault,
        WorkflowConfig::default(),
    );
    let owner = Principal::acting(Some(user.id), team, TeamRole::Owner, "bench");
    let source = sources
        .create(
            &owner,
            NewSource { kind: Kind::Manual, name: "bench".into(), config: Default::default(), active: true },
        )
        .await
        .map_err(fail)?
        .id;
    workflows
        .create(
            &owner,
            json!({
                "name": "bench", "sources": [source],
                "steps": [
                    {"type": "filter", "when": {"field": "item.title", "op": "contains", "value": "bench"}},
                    {"type": "template", "template": "{{ item.title }} {{ item.url }}"},
                    {"type": "publish", "targets": targets}
                ]
            }),
        )
        .await
        .map_err(fail)?;
    let mut registry = Registry::default();
    registry.register(herald_posts::DELIVERY_JOB, DeliveryHandler::new(posts.clone()));
    registry.register(herald_posts::EVENT_JOB, EventHandler::new(posts));
    registry.register(
        herald_triggers::EVENT_JOB,
        EventDispatcher::new(sources.clone(), herald_workflows::sink(&workflows)),
    );
    registry.register(herald_workflows::RUN_JOB, RunHandler::new(workflows));
    // As `herald serve` runs them (its poll interval too: wake-ups, not polling, start jobs),
    // with as many slots and as large claims as `bench deliveries`.
    let config = RunnerConfig {
        worker_id: "bench".into(),
        queues: vec![("default".into(), args.workers)],
        batch_size: 500,
        ..RunnerConfig::default()
    };
    let stop = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(queue, registry, config).run(stop.clone()));
    Ok(World { db, cleanup, sources, owner, source, stop, runner, sent: 0 })
}

impl World {
    async fn close(self) {
        self.stop.cancel();
        let _ = self.runner.await;
        self.db.close().await;
        self.cleanup.run().await;
    }

    /// Adds event number `n`; answers with its id and when `add_event` returned.
    async fn add(sources: &Sources, owner: &Principal, source: Uuid, n: u64) -> anyhow::Result<Added> {
        let data = json!({"item": {"title": format!("bench event {n}"), "url": format!("https://example.com/e/{n}"),
                                   "summary": "A benchmark event, much like an item of a feed"}});
        let event = sources
            .add_event(owner, source, NewEvent { external_id: None, data })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Added { n, event: event.id, at: Instant::now() })
    }

    /// Each run's start, and its publish step's start and end (the post made), by event.
    async fn stamps(&self) -> Result<HashMap<Uuid, [DateTime<Utc>; 3]>, Exit> {
        let db = &self.db;
        let rows: Vec<(Uuid, Ts, Ts, Option<Ts>)> = herald_store::on_read!(db, c => sqlx::query_as(
            "SELECT r.event_id, r.created_at, s.started_at, s.finished_at FROM workflow_runs r \
             JOIN workflow_step_runs s ON s.run_id = r.id WHERE s.step_id = 'publish' AND r.event_id IS NOT NULL")
            .fetch_all(c).await)
        .map_err(|e| Exit::Failure(e.into()))?;
        Ok(rows.into_iter().filter_map(|(e, run, start, end)| Some((e, [run.0, start.0, end?.0]))).collect())
    }

    /// Runs that succeeded, runs that ended otherwise, and deliveries published, so far.
    async fn counts(&self) -> Result<(usize, usize, usize), Exit> {
        let db = &self.db;
        let runs: Vec<(String, i64)> = herald_store::on_read!(db, c => sqlx::query_as(
            "SELECT status, COUNT(*) FROM workflow_runs GROUP BY status").fetch_all(c).await)
        .map_err(|e| Exit::Failure(e.into()))?;
        let published: i64 = herald_store::on_read!(db, c => sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE state = 'published'").fetch_one(c).await)
        .map_err(|e| Exit::Failure(e.into()))?;
        let ok = runs.iter().filter(|(s, _)| s == "succeeded").map(|r| r.1).sum::<i64>() as usize;
        let ended = runs
            .iter()
            .filter(|(s, _)| matches!(s.as_str(), "failed" | "skipped" | "cancelled"))
            .map(|r| r.1)
            .sum::<i64>() as usize;
        Ok((ok, ended, published as usize))
    }
}

/// One event added: its number, its id, and when `add_event` returned.
struct Added {
    n: u64,
    event: Uuid,
    at: Instant,
}

/// Where the time from an event to its first request went, per stage, sorted.
const STAGES: [&str; 4] = ["added→run", "run→publish", "publish (post made)", "post→request"];

/// Instants as wall-clock times, to set them beside the times the database keeps.
#[derive(Clone, Copy)]
struct Clock(Instant, DateTime<Utc>);

impl Clock {
    fn now() -> Clock {
        Clock(Instant::now(), Utc::now())
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        self.1 + chrono::TimeDelta::from_std(at.saturating_duration_since(self.0)).unwrap_or_default()
    }
}

/// One phase's measurements.
struct Phase {
    events: usize,
    deliveries: usize,
    /// From the first event added to every request reaching the receiver (or the timeout).
    reached_in: Duration,
    /// From the first event added to every run and delivery recorded in the database.
    recorded_in: Duration,
    /// How long adding the events took.
    added_in: Duration,
    cpu: Duration,
    /// Event added → its first request at the receiver, sorted.
    latency: Vec<Duration>,
    received: usize,
    /// Runs that ended otherwise than `succeeded`.
    not_succeeded: usize,
    /// Per stage (see [`STAGES`]), sorted.
    stages: [Vec<Duration>; 4],
    timed_out: bool,
    /// SQLite's writer over the phase.
    writer: Option<herald_store::WriterStats>,
    /// CPU and run-queue wait per event by kind of thread (see [`threads_line`]).
    threads: String,
}

fn pct(l: &[Duration], p: f64) -> Duration {
    l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default()
}

impl Phase {
    fn pct(&self, p: f64) -> Duration {
        pct(&self.latency, p)
    }

    /// Events whose every delivery reached the receiver, per second (all of them unless timed out).
    fn events_per_sec(&self) -> f64 {
        self.deliveries_per_sec() * self.events as f64 / self.deliveries.max(1) as f64
    }

    fn deliveries_per_sec(&self) -> f64 {
        self.received.min(self.deliveries) as f64 / self.reached_in.as_secs_f64()
    }

    fn cpu_per_event(&self) -> Duration {
        self.cpu / self.events.max(1) as u32
    }
}

/// Sends `events` events as fast as `clients` clients add them, numbered from `first`.
async fn feed_fast(w: &World, first: u64, events: usize, clients: usize) -> Result<Vec<Added>, Exit> {
    let next = Arc::new(AtomicU64::new(first));
    let end = first + events as u64;
    let mut tasks = Vec::new();
    for _ in 0..clients.clamp(1, events.max(1)) {
        let (sources, owner, source, next) = (w.sources.clone(), w.owner.clone(), w.source, next.clone());
        tasks.push(tokio::spawn(async move {
            let mut added = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    break;
                }
                added.push(World::add(&sources, &owner, source, n).await?);
            }
            anyhow::Ok(added)
        }));
    }
    let mut added = Vec::with_capacity(events);
    for t in tasks {
        added.extend(t.await.map_err(|e| Exit::Failure(e.into()))?.map_err(Exit::Failure)?);
    }
    Ok(added)
}

/// Sends `events` events at `rate` per second, each on its own task so a slow one never holds
/// back the next (an open loop, as events arrive in life).
async fn feed_paced(w: &World, first: u64, events: usize, rate: f64) -> Result<Vec<Added>, Exit> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    let mut tasks = Vec::with_capacity(events);
    for i in 0..events as u64 {
        tick.tick().await;
        let (sources, owner, source) = (w.sources.clone(), w.owner.clone(), w.source);
        let n = first + i;
        tasks.push(tokio::spawn(async move { World::add(&sources, &owner, source, n).await }));
    }
    let mut added = Vec::with_capacity(events);
    for t in tasks {
        added.push(t.await.map_err(|e| Exit::Failure(e.into()))?.map_err(Exit::Failure)?);
    }
    Ok(added)
}

/// What every phase shares.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    seen: &'a Seen,
    /// The next event's number: unique over the whole run, so the receiver tells events apart.
    next_number: &'a AtomicU64,
    targets: usize,
    timeout: Duration,
    clock: Clock,
}

enum Feed {
    Fast { clients: usize },
    Paced { rate: f64 },
}

/// Sends one phase's events and waits until every request reached the receiver and every run
/// and delivery is recorded (or the timeout).
async fn phase(w: &mut World, ctx: &Ctx<'_>, events: usize, feed: Feed) -> Result<Phase, Exit> {
    let Ctx { seen, next_number, targets, timeout, clock } = *ctx;
    let first = next_number.fetch_add(events as u64, Ordering::Relaxed);
    let deliveries = events * targets;
    let before = seen.count.load(Ordering::Relaxed);
    let (_, ended_before, _) = w.counts().await?;
    let writer0 = w.db.writer_use();
    let threads0 = threads();
    let (cpu0, start) = (cpu(), Instant::now());
    let added = match feed {
        Feed::Fast { clients } => feed_fast(w, first, events, clients).await?,
        Feed::Paced { rate } => feed_paced(w, first, events, rate).await?,
    };
    let added_in = start.elapsed();
    w.sent += events;
    let mut timed_out = false;
    while seen.count.load(Ordering::Relaxed) - before < deliveries {
        if start.elapsed() > timeout {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reached_in = start.elapsed();
    // Done means recorded: every run over and every delivery published in the database.
    let mut ended;
    loop {
        let (ok, e, published) = w.counts().await?;
        ended = e;
        if ok + ended >= w.sent && published >= w.sent * targets {
            break;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recorded_in = start.elapsed();
    let cpu_used = cpu() - cpu0;
    let writer = w.db.writer_use().zip(writer0).map(|(now, then)| now.since(&then));
    let threads = threads_line(&threads0, events);
    let received = seen.count.load(Ordering::Relaxed) - before;
    let first: HashMap<u64, Instant> = seen.first.lock().expect("first").clone();
    let mut latency: Vec<Duration> =
        added.iter().filter_map(|a| first.get(&a.n).map(|f| f.saturating_duration_since(a.at))).collect();
    latency.sort_unstable();
    let stamps = w.stamps().await?;
    let mut stages: [Vec<Duration>; 4] = Default::default();
    let gap = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).to_std().unwrap_or_default();
    for a in &added {
        let (Some([run, publish, made]), Some(req)) = (stamps.get(&a.event), first.get(&a.n)) else { continue };
        let times = [clock.wall(a.at), *run, *publish, *made, clock.wall(*req)];
        for (i, s) in stages.iter_mut().enumerate() {
            s.push(gap(times[i], times[i + 1]));
        }
    }
    for s in &mut stages {
        s.sort_unstable();
    }
    Ok(Phase {
        events,
        deliveries,
        reached_in,
        recorded_in,
        added_in,
        cpu: cpu_used,
        latency,
        received,
        not_succeeded: ended - ended_before,
        stages,
        timed_out,
        writer,
        threads,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

pub async fn run(args: BenchWorkflowsArgs) -> Result<(), Exit> {
    let mut chosen = backends(&args.backend)?;
    let postgres_url = args.postgres_url.clone().unwrap_or_default();
    if postgres_url.is_empty() && chosen.contains(&"postgres") {
        if args.backend == "postgres" {
            return Err(Exit::Config("--backend postgres needs HERALD_BENCH_POSTGRES_URL (or --postgres-url)".into()));
        }
        chosen.retain(|b| *b != "postgres");
    }
    if args.events == 0 || args.targets == 0 {
        return Err(Exit::Config("--events and --targets must be at least 1".into()));
    }
    let (url, seen) = start_receiver().await.map_err(Exit::Failure)?;
    let n = args.events * args.targets;
    println!(
        "herald bench workflows: {} events through filter → template → publish to {} webhook targets ({n} deliveries), \
         {} job slots, {} clients adding events, against a local receiver",
        args.events, args.targets, args.workers, args.clients
    );
    if !chosen.contains(&"postgres") && args.backend != "sqlite" {
        println!("postgres: skipped (set HERALD_BENCH_POSTGRES_URL or --postgres-url to run it)");
    }
    let c = ceiling(&url, n, args.workers).await.map_err(Exit::Failure)?;
    println!(
        "ceiling: a bare keep-alive client loop, {n} POSTs, {} at once: {:.0} req/s, {:.3} ms CPU each (receiver included)",
        args.workers,
        c.per_sec,
        ms(c.cpu_per)
    );
    let next_number = AtomicU64::new(0);
    let ctx = Ctx {
        seen: &seen,
        next_number: &next_number,
        targets: args.targets,
        timeout: args.timeout,
        clock: Clock::now(),
    };
    let mut fast = Vec::new();
    let mut paced = Vec::new();
    for backend in &chosen {
        let mut w = world(backend, &postgres_url, &args, &url).await?;
        seen.first.lock().expect("first").clear();
        // A warm-up, not reported: connections, caches and the receiver's keep-alive sockets.
        phase(&mut w, &ctx, WARM_UP.min(args.events), Feed::Fast { clients: args.clients }).await?;
        // The paced run first, so it sees the steady state at that rate rather than the
        // aftermath of the throughput run (its backlog of WAL, vacuum and checkpoints).
        let p = match args.latency_events {
            0 => None,
            n => Some(phase(&mut w, &ctx, n, Feed::Paced { rate: args.rate }).await?),
        };
        paced.push((*backend, p, peak_rss_mb()));
        let f = phase(&mut w, &ctx, args.events, Feed::Fast { clients: args.clients }).await?;
        fast.push((*backend, f, peak_rss_mb()));
        w.close().await;
    }

    println!();
    println!("throughput: {} events, added by {} clients as fast as they go", args.events, args.clients);
    println!(
        "{:<9} {:>9} {:>13} {:>14} {:>7} {:>10} {:>11} {:>10} {:>9} {:>9}  target (SQLite)",
        "backend",
        "events/s",
        "deliveries/s",
        "ceiling req/s",
        "ratio",
        "CPU/event",
        "ev→req p50",
        "p99",
        "added/s",
        "peak RSS"
    );
    for (backend, f, rss) in &fast {
        let target = if *backend == "sqlite" {
            format!(
                "≥{TARGET_EVENTS_PER_SEC:.0} events/s {}, ≥{TARGET_DELIVERIES_PER_SEC:.0} deliveries/s {}",
                verdict(f.events_per_sec() >= TARGET_EVENTS_PER_SEC),
                verdict(f.deliveries_per_sec() >= TARGET_DELIVERIES_PER_SEC)
            )
        } else {
            "-".to_string()
        };
        println!(
            "{:<9} {:>9.0} {:>13.0} {:>14.0} {:>6.2}x {:>8.3}ms {:>9.1}ms {:>8.1}ms {:>9.0} {:>7.0}MB  {}",
            backend,
            f.events_per_sec(),
            f.deliveries_per_sec(),
            c.per_sec,
            f.deliveries_per_sec() / c.per_sec,
            ms(f.cpu_per_event()),
            ms(f.pct(0.5)),
            ms(f.pct(0.99)),
            f.events as f64 / f.added_in.as_secs_f64(),
            rss,
            target
        );
    }
    if args.latency_events > 0 {
        println!();
        println!(
            "latency: {} events paced at {}/s, each added on its own task (after a {WARM_UP}-event warm-up, before the throughput run)",
            args.latency_events, args.rate
        );
        println!(
            "{:<9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>10} {:>9}  target",
            "backend", "sent/s", "ev→req p50", "p90", "p99", "max", "CPU/event", "peak RSS"
        );
        for (backend, p, rss) in &paced {
            let Some(p) = p else { continue };
            println!(
                "{:<9} {:>9.1} {:>9.1}ms {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.3}ms {:>7.0}MB  p99 <{}ms {}",
                backend,
                p.events as f64 / p.added_in.as_secs_f64(),
                ms(p.pct(0.5)),
                ms(p.pct(0.9)),
                ms(p.pct(0.99)),
                ms(p.latency.last().copied().unwrap_or_default()),
                ms(p.cpu_per_event()),
                rss,
                TARGET_P99.as_millis(),
                if (args.rate - TARGET_RATE).abs() > 0.5 {
                    "n/a (set at 100/s)"
                } else {
                    verdict(p.latency.len() == p.events && p.pct(0.99) < TARGET_P99)
                }
            );
        }
    }
    println!();
    for (backend, f, _) in &fast {
        let p = paced.iter().find(|(b, ..)| b == backend).and_then(|(_, p, _)| p.as_ref());
        for (what, ph) in [("throughput", Some(f)), ("latency", p)] {
            let Some(ph) = ph else { continue };
            let mut line = format!(
                "{backend} {what}: all {} requests reached the receiver in {:.2} s, recorded in the database in {:.2} s",
                ph.received,
                ph.reached_in.as_secs_f64(),
                ph.recorded_in.as_secs_f64()
            );
            if ph.timed_out {
                line.push_str(&format!(
                    "; TIMED OUT after {:.0} s with {} of {} requests",
                    args.timeout.as_secs_f64(),
                    ph.received,
                    ph.deliveries
                ));
            } else if ph.received != ph.deliveries {
                line.push_str(&format!("; the receiver got {} requests for {} deliveries", ph.received, ph.deliveries));
            }
            if ph.not_succeeded > 0 {
                line.push_str(&format!("; {} runs did not succeed", ph.not_succeeded));
            }
            println!("{line}");
            let stages: Vec<String> = STAGES
                .iter()
                .zip(&ph.stages)
                .map(|(name, s)| format!("{name} {:.1}/{:.1}", ms(pct(s, 0.5)), ms(pct(s, 0.99))))
                .collect();
            println!("  where the time went, p50/p99 ms: {}", stages.join(", "));
            if let Some(u) = ph.writer {
                println!("  {}", crate::bench_deliveries::writer_line(&u, ph.recorded_in, ph.events, "event"));
            }
            if !ph.threads.is_empty() {
                println!("  threads, ms of CPU/of waiting for one per event: {}", ph.threads);
            }
        }
    }
    println!(
        "CPU/event: this whole process (adding events, the queue, the runs, the deliveries, the receiver) over the run, \
         until everything was recorded; ev→req: from `add_event` returning to the event's first request reaching the \
         receiver; added/s: how fast the clients added events while the workers ran; peak RSS: this process so far"
    );
    Ok(())
}

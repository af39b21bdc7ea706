//! `herald bench feeds`: one node polling N feed sources on a cycle from a fake feed server, for
//! polls/s against the ideal N/cycle, the lateness of polls against their schedule, CPU, peak
//! RSS, and whether a feed was ever fetched twice at once. Beside it, the ceiling: a bare HTTP
//! client fetching the same feeds from the same server with the same concurrency.
//!
//! The fake runs in a child process (`herald bench feed-server`, hidden) so that its CPU is not
//! counted as Herald's.

use crate::Exit;
use crate::bench::{backends, bench_db, peak_rss_mb};
use crate::cli::{BenchFeedServerArgs, BenchFeedsArgs};
use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use herald_accounts::{Accounts, AccountsConfig};
use herald_http::guard::{Cidr, GuardConfig};
use herald_http::{HttpClient, SafeClient};
use herald_store::{Db, Ts, on_read, on_tx, value_rows};
use herald_triggers::{Poller, Sources, TriggerConfig};
use herald_vault::{MasterKey, Vault};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The fake feed server (the child process)
// ---------------------------------------------------------------------------------------------

/// How a fake feed behaves, by its index: of every 20 feeds, 14 static, 2 changing, 2 without an
/// ETag, 1 slow and 1 broken, so any run of feeds carries the whole mix.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// The same body always, with an ETag: 304 once the poller has it.
    Static,
    /// A new item every [`CHANGE_EVERY`]; the body and the ETag follow the time.
    Changing,
    /// The same body always, without ETag or Last-Modified: Herald skips it by its hash.
    NoEtag,
    /// Static, after [`SLOW`].
    Slow,
    /// Half answer 500, half a cut-off document.
    Broken,
}

const BEHAVIOURS: [Behaviour; 5] =
    [Behaviour::Static, Behaviour::Changing, Behaviour::NoEtag, Behaviour::Slow, Behaviour::Broken];
const CHANGE_EVERY: u64 = 120;
const SLOW: Duration = Duration::from_secs(2);
const ITEMS: u64 = 10;

impl Behaviour {
    fn of(i: usize) -> Behaviour {
        match i % 20 {
            0..=13 => Behaviour::Static,
            14 | 15 => Behaviour::Changing,
            16 | 17 => Behaviour::NoEtag,
            18 => Behaviour::Slow,
            _ => Behaviour::Broken,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Behaviour::Static => "static",
            Behaviour::Changing => "changing",
            Behaviour::NoEtag => "no_etag",
            Behaviour::Slow => "slow",
            Behaviour::Broken => "broken",
        }
    }
}

struct Fake {
    /// Requests being answered, per feed: more than one is a feed fetched twice at once.
    in_flight: Vec<AtomicU32>,
    requests: AtomicU64,
    violations: AtomicU64,
    by_kind: [AtomicU64; 5],
    by_status: Mutex<BTreeMap<u16, u64>>,
}

/// What `GET /stats` answers: counts since the server started.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
struct Stats {
    /// Feed requests (not `/stats`).
    requests: u64,
    by_kind: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    /// Requests that arrived while another request for the same feed was being answered.
    violations: u64,
}

/// Feed `i` is being answered while this lives (dropped too when the client goes away mid-way).
struct InFlight {
    fake: Arc<Fake>,
    i: usize,
}

impl InFlight {
    fn enter(fake: &Arc<Fake>, i: usize) -> InFlight {
        if fake.in_flight[i].fetch_add(1, Ordering::SeqCst) > 0 {
            fake.violations.fetch_add(1, Ordering::Relaxed);
        }
        InFlight { fake: fake.clone(), i }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.fake.in_flight[self.i].fetch_sub(1, Ordering::SeqCst);
    }
}

async fn get_feed(State(fake): State<Arc<Fake>>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(i) = file.strip_suffix(".xml").and_then(|n| n.parse::<usize>().ok()).filter(|i| *i < fake.in_flight.len())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let kind = Behaviour::of(i);
    fake.requests.fetch_add(1, Ordering::Relaxed);
    fake.by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
    let _held = InFlight::enter(&fake, i);
    if kind == Behaviour::Slow {
        tokio::time::sleep(SLOW).await;
    }
    let response = answer(i, kind, headers.get(header::IF_NONE_MATCH));
    *fake.by_status.lock().expect("stats").entry(response.status().as_u16()).or_default() += 1;
    response
}

fn answer(i: usize, kind: Behaviour, if_none_match: Option<&HeaderValue>) -> Response {
    // Static items are an hour apart in 2026; a changing feed's are its real change times.
    let (body, etag) = match kind {
        Behaviour::Static | Behaviour::Slow => (rss(i, 0..ITEMS, 1_767_225_600, 3600), Some(format!("\"s{i}\""))),
        Behaviour::NoEtag => (rss(i, 0..ITEMS, 1_767_225_600, 3600), None),
        Behaviour::Changing => {
            // Staggered, so the changing feeds do not all change on the same tick.
            let now = Utc::now().timestamp().max(0) as u64;
            let bucket = (now + (i as u64 * 37) % CHANGE_EVERY) / CHANGE_EVERY;
            (rss(i, bucket + 1 - ITEMS..bucket + 1, 0, CHANGE_EVERY as i64), Some(format!("\"c{i}-{bucket}\"")))
        }
        Behaviour::Broken if (i / 20).is_multiple_of(2) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "the feed's server is broken").into_response();
        }
        Behaviour::Broken => (
            format!("<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>Broken {i}</title><item><title>cut"),
            None,
        ),
    };
    if let Some(tag) = &etag
        && if_none_match.is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag.clone())]).into_response();
    }
    let mut response = ([(header::CONTENT_TYPE, "application/rss+xml; charset=utf-8")], body).into_response();
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// An RSS 2.0 document with `items`, newest first; item `k` is dated `epoch + k * step` seconds.
fn rss(i: usize, items: Range<u64>, epoch: i64, step: i64) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<rss version=\"2.0\"><channel><title>Bench feed {i}</title>\
         <link>https://example.com/{i}/</link><description>Feed {i} of herald bench feeds</description>"
    );
    for k in items.rev() {
        let date = DateTime::from_timestamp(epoch + k as i64 * step, 0).unwrap_or_default().to_rfc2822();
        let _ = write!(
            s,
            "<item><title>Feed {i}, item {k}</title><link>https://example.com/{i}/{k}</link>\
             <guid isPermaLink=\"false\">feed-{i}-item-{k}</guid><pubDate>{date}</pubDate>\
             <description>Item {k} of feed {i}: a sentence or two, as a real feed carries.</description></item>"
        );
    }
    s.push_str("</channel></rss>\n");
    s
}

async fn get_stats(State(fake): State<Arc<Fake>>) -> axum::Json<Stats> {
    axum::Json(Stats {
        requests: fake.requests.load(Ordering::Relaxed),
        by_kind: BEHAVIOURS
            .iter()
            .map(|b| (b.name().to_string(), fake.by_kind[*b as usize].load(Ordering::Relaxed)))
            .collect(),
        by_status: fake.by_status.lock().expect("stats").iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        violations: fake.violations.load(Ordering::Relaxed),
    })
}

/// `herald bench feed-server`: binds 127.0.0.1:0, prints the port on stdout, and serves until
/// stdin closes (the parent ended, however it ended).
pub async fn serve_feeds(args: BenchFeedServerArgs) -> Result<(), Exit> {
    let fake = Arc::new(Fake {
        in_flight: (0..args.feeds).map(|_| AtomicU32::new(0)).collect(),
        requests: AtomicU64::new(0),
        violations: AtomicU64::new(0),
        by_kind: Default::default(),
        by_status: Mutex::new(BTreeMap::new()),
    });
    let app = axum::Router::new()
        .route("/feed/{file}", axum::routing::get(get_feed))
        .route("/stats", axum::routing::get(get_stats))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(anyhow::Error::from)?;
    println!("{}", listener.local_addr().map_err(anyhow::Error::from)?.port());
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    axum::serve(listener, app).await.map_err(anyhow::Error::from)?;
    Ok(())
}

/// The fake feed server as the parent sees it. Dropping it closes the child's stdin and kills it.
struct FeedServer {
    base: String,
    http: HttpClient,
    _child: tokio::process::Child,
}

impl FeedServer {
    async fn start(feeds: usize) -> anyhow::Result<FeedServer> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args(["bench", "feed-server", "--feeds", &feeds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the fake feed server")?;
        let stdout = child.stdout.take().context("the fake feed server has no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), BufReader::new(stdout).read_line(&mut line))
            .await
            .context("the fake feed server did not print its port within 30 s")??;
        let port: u16 = line
            .trim()
            .parse()
            .with_context(|| format!("the fake feed server printed `{}`, not a port", line.trim()))?;
        Ok(FeedServer { base: format!("http://127.0.0.1:{port}"), http: HttpClient::trusted()?, _child: child })
    }

    fn url(&self, i: usize) -> String {
        format!("{}/feed/{i}.xml", self.base)
    }

    async fn stats(&self) -> anyhow::Result<Stats> {
        let r = self.http.get(&format!("{}/stats", self.base)).send().await?.error_for_status()?;
        Ok(r.json().await?)
    }
}

// ---------------------------------------------------------------------------------------------
// The ceiling
// ---------------------------------------------------------------------------------------------

/// This process's CPU time (user and system), read two ways: `/proc/self/stat` counts every
/// thread, exited ones too, but in 10 ms ticks; the threads' `schedstat` counts nanoseconds but
/// forgets threads that have exited. The ceiling's few seconds need the second.
#[derive(Clone, Copy)]
struct Cpu {
    ticks: Duration,
    exact: Duration,
}

impl Cpu {
    fn now() -> Cpu {
        let ticks = crate::bench_deliveries::cpu();
        let exact: u64 = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Cpu { ticks, exact: Duration::from_nanos(exact) }
    }

    /// The CPU used since `earlier`: by ticks once they are precise to 1 %, by nanoseconds before.
    fn since(self, earlier: Cpu) -> Duration {
        let ticks = self.ticks.saturating_sub(earlier.ticks);
        if ticks >= Duration::from_secs(1) { ticks } else { self.exact.saturating_sub(earlier.exact) }
    }
}

struct Ceiling {
    requests: usize,
    per_sec: f64,
    cpu_per: Duration,
}

/// GETs every URL once, `concurrency` at once, with its If-None-Match when `etags` has one;
/// gives back the ETag each answered with (or the one sent, on a 304).
async fn fetch_all(
    http: &HttpClient,
    urls: &Arc<Vec<String>>,
    etags: Arc<Vec<Option<String>>>,
    concurrency: usize,
) -> anyhow::Result<Vec<Option<String>>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, urls, etags, next) = (http.clone(), urls.clone(), etags.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(url) = urls.get(i) else { break };
                let mut request = http.get(url);
                if let Some(tag) = &etags[i] {
                    request = request.header("if-none-match", tag.as_str());
                }
                let response = request.send().await?;
                let tag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
                response.bytes().await?;
                got.push((i, tag.or_else(|| etags[i].clone())));
            }
            anyhow::Ok(got)
        }));
    }
    let mut out = vec![None; urls.len()];
    for t in tasks {
        for (i, tag) in t.await?? {
            out[i] = tag;
        }
    }
    Ok(out)
}

/// A bare keep-alive client (no guard, no database) fetching `feeds` of the same feeds from the
/// same server, `concurrency` at once: first unmeasured, to learn the ETags as a poller's first
/// cycle does; then measured, conditional as every later cycle is.
async fn ceiling(server: &FeedServer, feeds: usize, concurrency: usize) -> anyhow::Result<Ceiling> {
    let http = HttpClient::trusted()?;
    let urls = Arc::new((0..feeds).map(|i| server.url(i)).collect::<Vec<_>>());
    let etags = fetch_all(&http, &urls, Arc::new(vec![None; feeds]), concurrency).await?;
    let (cpu0, start) = (Cpu::now(), Instant::now());
    fetch_all(&http, &urls, Arc::new(etags), concurrency).await?;
    let elapsed = start.elapsed();
    Ok(Ceiling {
        requests: feeds,
        per_sec: feeds as f64 / elapsed.as_secs_f64(),
        cpu_per: Cpu::now().since(cpu0) / feeds.max(1) as u32,
    })
}

// ---------------------------------------------------------------------------------------------
// The poller run
// ---------------------------------------------------------------------------------------------

fn fail(e: impl std::fmt::Display) -> Exit {
    Exit::Failure(anyhow::anyhow!("{e}"))
}

/// N feed sources, each its own URL, first due at `start + i * cycle / N`: inserted with SQL in
/// batches, as the API would be far slower to set up 10,000.
async fn insert_sources(
    db: &Db,
    team: Uuid,
    server: &FeedServer,
    n: usize,
    cycle: Duration,
    start: DateTime<Utc>,
) -> anyhow::Result<()> {
    const COLS: usize = 9;
    const BATCH: usize = 500;
    let now = Ts::now();
    let step_us = cycle.as_micros() as f64 / n.max(1) as f64;
    for first in (0..n).step_by(BATCH) {
        let rows: Vec<(Uuid, String, String, Ts)> = (first..(first + BATCH).min(n))
            .map(|i| {
                let config = serde_json::json!({"url": server.url(i), "interval_secs": cycle.as_secs()});
                let due = start + TimeDelta::microseconds((i as f64 * step_us) as i64);
                (Uuid::now_v7(), format!("bench feed {i}"), config.to_string(), Ts(due))
            })
            .collect();
        let sql = format!(
            "INSERT INTO sources (id, team_id, kind, name, config, active, next_run_at, created_at, updated_at) VALUES {}",
            value_rows(1, rows.len(), COLS)
        );
        let mut tx = db.begin().await?;
        on_tx!(tx, c => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for (id, name, config, due) in &rows {
                q = q.bind(*id).bind(team).bind("feed").bind(name.as_str()).bind(config.as_str()).bind(true)
                    .bind(*due).bind(now).bind(now);
            }
            q.execute(&mut *c).await.map(|_| ())
        })?;
        tx.commit().await?;
    }
    Ok(())
}

/// Sources due more than `by` ago that no poll has started on.
async fn overdue(db: &Db, by: Duration) -> anyhow::Result<i64> {
    let now = Utc::now();
    let cutoff = Ts(now - TimeDelta::from_std(by)?);
    let sql = "SELECT COUNT(*) FROM sources WHERE next_run_at < $1 AND (lease_until IS NULL OR lease_until < $2)";
    Ok(on_read!(db, c => sqlx::query_scalar(sql).bind(cutoff).bind(Ts(now)).fetch_one(c).await)?)
}

/// One measured stretch of the run.
struct Window {
    secs: f64,
    /// Requests that reached the fake feed server.
    polls: u64,
    /// Polls whose scheduled time fell in the window (started, or overdue at its end).
    due: usize,
    cpu: Duration,
    /// Of the polls started in the window, sorted.
    late: Vec<Duration>,
    by_status: BTreeMap<String, u64>,
}

impl Window {
    fn new(
        (from, to): (Instant, Instant),
        (s0, s1): (&Stats, &Stats),
        cpu: Duration,
        starts: &[(Instant, Duration)],
        backlog: i64,
    ) -> Window {
        let mut late: Vec<Duration> =
            starts.iter().filter(|(at, _)| *at >= from && *at < to).map(|(_, l)| *l).collect();
        late.sort_unstable();
        let due = starts
            .iter()
            .filter(|(at, l)| at.checked_sub(*l).is_some_and(|scheduled| scheduled >= from && scheduled < to))
            .count()
            + backlog.max(0) as usize;
        let by_status = s1
            .by_status
            .iter()
            .map(|(k, n)| (k.clone(), n - s0.by_status.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Window { secs: (to - from).as_secs_f64(), polls: s1.requests - s0.requests, due, cpu, late, by_status }
    }

    fn pct(&self, p: f64) -> Duration {
        let n = self.late.len();
        self.late.get(((n as f64 * p) as usize).min(n.saturating_sub(1))).copied().unwrap_or_default()
    }

    fn per_sec(&self) -> f64 {
        self.polls as f64 / self.secs
    }

    fn cpu_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.secs * 100.0
    }

    fn cpu_per_poll(&self) -> Duration {
        self.cpu / self.polls.max(1) as u32
    }
}

struct Run {
    inserted_in: Duration,
    whole: Window,
    /// After the first cycle, when the run is longer than one.
    steady: Option<Window>,
    started: usize,
    violations: u64,
    backlog: i64,
}

async fn poll_feeds(
    backend: &str,
    args: &BenchFeedsArgs,
    server: &FeedServer,
    duration: Duration,
) -> Result<Run, Exit> {
    let (db, cleanup) = bench_db(backend, &args.postgres_url).await?;
    let vault = Vault::new(&[MasterKey::generate()]);
    let accounts = Accounts::new(db.clone(), vault.clone(), AccountsConfig::default());
    let mut tx = db.begin().await?;
    let (_, team) =
        accounts.create_user(&mut tx, "bench@example.com", "Bench", "bench-password-1", false).await.map_err(fail)?;
    tx.commit().await?;

    // The first polls begin once every source is in: allow ~0.3 ms a source for the inserts.
    let lead = Duration::from_secs(2) + Duration::from_micros(300 * args.feeds as u64);
    let (start_at, start) = (Utc::now() + TimeDelta::from_std(lead).map_err(fail)?, Instant::now() + lead);
    let t = Instant::now();
    insert_sources(&db, team, server, args.feeds, args.cycle, start_at).await.map_err(Exit::Failure)?;
    let inserted_in = t.elapsed();

    let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").expect("cidr")], allow_ports: vec![] };
    let sources = Sources::new(
        db.clone(),
        vault,
        SafeClient::new(guard).map_err(fail)?,
        HttpClient::trusted().map_err(fail)?,
        TriggerConfig::default(),
    );
    let starts: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::new(Mutex::new(Vec::with_capacity(args.feeds * 2)));
    let observe = {
        let starts = starts.clone();
        Arc::new(move |late: Duration| starts.lock().expect("starts").push((Instant::now(), late)))
    };
    let before = server.stats().await?;
    let stop = CancellationToken::new();
    let poller = tokio::spawn(Poller::new(sources, args.concurrency).observe(observe).run(stop.clone()));

    tokio::time::sleep_until(start.into()).await;
    let (s0, c0) = (server.stats().await?, Cpu::now());
    let mid = if duration > args.cycle {
        tokio::time::sleep_until((start + args.cycle).into()).await;
        Some((server.stats().await?, Cpu::now()))
    } else {
        None
    };
    tokio::time::sleep_until((start + duration).into()).await;
    let (s1, c1) = (server.stats().await?, Cpu::now());
    let end = Instant::now();
    let backlog = overdue(&db, Duration::from_secs(5)).await.map_err(Exit::Failure)?;
    stop.cancel();
    let _ = poller.await;
    // Polls in flight end (a slow feed takes 2 s) before the last count and the database closes.
    tokio::time::sleep(SLOW + Duration::from_secs(1)).await;
    let after = server.stats().await?;
    db.close().await;
    cleanup.run().await;

    let starts = std::mem::take(&mut *starts.lock().expect("starts"));
    let whole = Window::new((start, end), (&s0, &s1), c1.since(c0), &starts, backlog);
    let steady = mid.map(|(sm, cm)| Window::new((start + args.cycle, end), (&sm, &s1), c1.since(cm), &starts, backlog));
    Ok(Run {
        inserted_in,
        whole,
        steady,
        started: starts.len(),
        violations: after.violations - before.violations,
        backlog,
    })
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

pub async fn run(args: BenchFeedsArgs) -> Result<(), Exit> {
    let backends = backends(&args.backend)?;
    if args.feeds == 0 || args.cycle.is_zero() {
        return Err(Exit::Config("--feeds and --cycle must be more than zero".into()));
    }
    let duration = args.duration.unwrap_or(args.cycle + Duration::from_secs(60));
    let ideal = args.feeds as f64 / args.cycle.as_secs_f64();
    let server = FeedServer::start(args.feeds).await.map_err(Exit::Failure)?;
    println!(
        "herald bench feeds: {} feeds every {} s (ideal {ideal:.1} polls/s), {} polls at once, for {} s",
        args.feeds,
        args.cycle.as_secs(),
        args.concurrency,
        duration.as_secs()
    );
    println!(
        "feeds (of every 20): 14 static with ETag, 2 changing (an item every {} s), 2 without ETag, 1 slow ({} s), \
         1 broken (500 or a cut-off document); {ITEMS} items each; the server is a child process",
        CHANGE_EVERY,
        SLOW.as_secs()
    );
    let c = ceiling(&server, args.ceiling_feeds.min(args.feeds), args.concurrency).await.map_err(Exit::Failure)?;
    for backend in backends {
        let r = poll_feeds(backend, &args, &server, duration).await?;
        let (w, s) = (&r.whole, r.steady.as_ref());
        println!();
        println!(
            "{backend}: {} sources inserted in {:.1} s; {} polls started, {} requests reached the server",
            args.feeds,
            r.inserted_in.as_secs_f64(),
            r.started,
            w.polls
        );
        let steady_head = if s.is_some() { "after cycle 1" } else { "" };
        println!("{:<24} {:>12} {steady_head:>14}   target / ceiling", "", "whole run");
        let row = |name: &str, whole: String, steady: Option<String>, target: String| {
            println!("{name:<24} {whole:>12} {:>14}   {target}", steady.unwrap_or_default());
        };
        row(
            "polls/s",
            format!("{:.1}", w.per_sec()),
            s.map(|s| format!("{:.1}", s.per_sec())),
            format!("ideal {ideal:.1}; ceiling {:.0} req/s", c.per_sec),
        );
        row(
            "polls due/s (schedule)",
            format!("{:.1}", w.due as f64 / w.secs),
            s.map(|s| format!("{:.1}", s.due as f64 / s.secs)),
            "what the schedule asked for".into(),
        );
        row("lateness p50", ms(w.pct(0.50)), s.map(|s| ms(s.pct(0.50))), String::new());
        row("lateness p99", ms(w.pct(0.99)), s.map(|s| ms(s.pct(0.99))), "< 5 s".into());
        row("lateness max", ms(w.pct(1.0)), s.map(|s| ms(s.pct(1.0))), String::new());
        row(
            "CPU, % of one core",
            format!("{:.2} %", w.cpu_share()),
            s.map(|s| format!("{:.2} %", s.cpu_share())),
            "< 5 %".into(),
        );
        row(
            "CPU per poll",
            format!("{:.3} ms", w.cpu_per_poll().as_secs_f64() * 1000.0),
            s.map(|s| format!("{:.3} ms", s.cpu_per_poll().as_secs_f64() * 1000.0)),
            format!("ceiling {:.3} ms per request", c.cpu_per.as_secs_f64() * 1000.0),
        );
        // The windows run below the ideal rate (backoff, jitter): what one poll costs, at that rate.
        let at_ideal = |w: &Window| format!("{:.2} %", w.cpu_per_poll().as_secs_f64() * ideal * 100.0);
        row("CPU/poll x ideal rate", at_ideal(w), s.map(at_ideal), "< 5 %".into());
        row("peak RSS", format!("{:.0} MB", peak_rss_mb()), None, "< 200 MB".into());
        row("fetched twice at once", r.violations.to_string(), None, "0".into());
        row("overdue > 5 s at the end", r.backlog.to_string(), None, "0".into());
        let statuses =
            |b: &BTreeMap<String, u64>| b.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ");
        println!("responses: whole run {}", statuses(&w.by_status));
        if let Some(s) = s {
            println!("           after cycle 1 {}", statuses(&s.by_status));
        }
    }
    println!();
    println!(
        "ceiling: a bare keep-alive HTTP client (no guard, no database) GETting {} of the same feeds from the same \
         server, {} at once, conditional with the ETags it learned in an unmeasured first round: {:.0} requests/s, \
         {:.3} ms CPU per request; the slow feeds bound its rate",
        c.requests,
        args.concurrency,
        c.per_sec,
        c.cpu_per.as_secs_f64() * 1000.0
    );
    println!(
        "CPU: user+system of this whole process (poller, HTTP, and the database when it is SQLite), not the fake \
         server's; lateness: from a source's next_run_at to the start of its poll; polls due/s falls below ideal \
         after cycle 1 as broken feeds back off and the ±10 % jitter spreads the second polls"
    );
    Ok(())
}

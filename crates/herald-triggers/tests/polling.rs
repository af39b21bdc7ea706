//! Feed polling against a local feed server: the baseline, new items, edits, conditional GET,
//! unchanged bodies, errors with backoff, Retry-After and max-age, gzip, the size cap, backfill
//! and per-poll caps; two pollers never polling one feed at once; schedules fired by the poller.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use herald_accounts::{Accounts, AccountsConfig, Principal};
use herald_core::TeamRole;
use herald_http::guard::{Cidr, GuardConfig, SystemLookup};
use herald_http::{HttpClient, SafeClient};
use herald_store::testing::each_backend;
use herald_store::{Db, Ts, exec, on_read};
use herald_triggers::{Kind, NewSource, Poller, Settings, Sources, TriggerConfig};
use herald_vault::{MasterKey, Vault};
use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Default)]
struct Feed {
    items: Vec<(String, String)>,
    etag: bool,
    status: Option<u16>,
    retry_after: Option<u64>,
    max_age: Option<u64>,
    gzip: bool,
    body: Option<String>,
    delay_ms: u64,
    /// If-None-Match of each request.
    requests: Vec<Option<String>>,
    in_flight: HashSet<String>,
    overlaps: usize,
}

type Shared = Arc<Mutex<Feed>>;

fn rss(items: &[(String, String)]) -> String {
    let mut out = String::from(
        r#"<?xml version="1.0"?><rss version="2.0"><channel><title>T</title><link>https://blog.example/</link>"#,
    );
    for (guid, title) in items {
        out.push_str(&format!(
            "<item><guid>{guid}</guid><title>{title}</title><link>https://blog.example/{guid}</link><description>&lt;p&gt;About {title}&lt;/p&gt;</description></item>"
        ));
    }
    out + "</channel></rss>"
}

async fn serve_feed(
    State(feed): State<Shared>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let inm = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_string);
    let delay = {
        let mut f = feed.lock().unwrap();
        f.requests.push(inm.clone());
        if !f.in_flight.insert(name.clone()) {
            f.overlaps += 1;
        }
        f.delay_ms
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let mut f = feed.lock().unwrap();
    f.in_flight.remove(&name);
    if let Some(status) = f.status {
        let mut r = (StatusCode::from_u16(status).unwrap(), "nope").into_response();
        if let Some(s) = f.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
        }
        return r;
    }
    let body = f.body.clone().unwrap_or_else(|| rss(&f.items));
    let etag = format!("\"{}\"", body.len() * 31 + f.items.len());
    if f.etag && inm.as_deref() == Some(etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut r = if f.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(body.as_bytes()).unwrap();
        let mut r = enc.finish().unwrap().into_response();
        r.headers_mut().insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        r
    } else {
        body.into_response()
    };
    r.headers_mut().insert(header::CONTENT_TYPE, "application/rss+xml".parse().unwrap());
    if f.etag {
        r.headers_mut().insert(header::ETAG, etag.parse().unwrap());
    }
    if let Some(age) = f.max_age {
        r.headers_mut().insert(header::CACHE_CONTROL, format!("max-age={age}").parse().unwrap());
    }
    r
}

async fn start_feed() -> (String, Shared) {
    let shared: Shared = Arc::default();
    let app = axum::Router::new().route("/{name}", axum::routing::get(serve_feed)).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, shared)
}

struct World {
    db: Db,
    sources: Sources,
    owner: Principal,
}

async fn world(db: Db, feed_max_bytes: usize) -> World {
    let vault = Vault::new(&[MasterKey::generate()]);
    let accounts = Accounts::new(db.clone(), vault.clone(), AccountsConfig::default());
    let mut tx = db.begin().await.unwrap();
    let (user, team) = accounts.create_user(&mut tx, "o@example.com", "O", "pw-123456789", false).await.unwrap();
    tx.commit().await.unwrap();
    let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").unwrap()], allow_ports: vec![] };
    let safe = SafeClient::with_options(guard, Arc::new(SystemLookup), Duration::from_secs(5)).unwrap();
    let config = TriggerConfig { feed_max_bytes, ..TriggerConfig::default() };
    let sources = Sources::new(db.clone(), vault, safe, HttpClient::trusted().unwrap(), config);
    World { db, sources, owner: Principal::acting(Some(user.id), team, TeamRole::Owner, "o@example.com") }
}

impl World {
    async fn feed(&self, url: &str, s: Settings) -> Uuid {
        let config = Settings { url: Some(url.to_string()), interval_secs: Some(60), ..s };
        let new = NewSource { kind: Kind::Feed, name: "blog".into(), config, active: true };
        self.sources.create(&self.owner, new).await.unwrap().id
    }

    async fn jobs(&self) -> i64 {
        let n: (i64,) = on_read!(self.db, c => sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE kind = $1")
            .bind(herald_triggers::EVENT_JOB).fetch_one(c).await)
        .unwrap();
        n.0
    }

    async fn next_in(&self, id: Uuid) -> i64 {
        let v = self.sources.get(&self.owner, id).await.unwrap();
        (v.status.next_run_at.unwrap() - Utc::now()).num_seconds()
    }
}

fn items(n: usize) -> Vec<(String, String)> {
    (1..=n).map(|i| (format!("post-{i}"), format!("Post {i}"))).collect()
}

#[tokio::test]
async fn a_feed_is_baselined_then_new_items_trigger_once() {
    each_backend(|db| async move {
        let (base, feed) = start_feed().await;
        let w = world(db, 64 << 10).await;
        feed.lock().unwrap().items = items(3);
        feed.lock().unwrap().etag = true;
        let id = w.feed(&format!("{base}/a.xml"), Settings::default()).await;

        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        assert_eq!((r.outcome.as_str(), r.items, r.new_events, r.remembered), ("ok", 3, 0, 3), "{r:?}");
        assert_eq!(w.jobs().await, 0, "the baseline hands nothing on");

        feed.lock().unwrap().items.push(("post-4".into(), "Post 4".into()));
        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        assert_eq!((r.new_events, r.remembered), (1, 0), "{r:?}");
        assert_eq!(w.jobs().await, 1, "one hand-off job per event, in the same commit");
        let page = w.sources.events(&w.owner, Default::default()).await.unwrap();
        assert_eq!(page.events.len(), 1);
        let data = &page.events[0].data["item"];
        assert_eq!(data["title"], "Post 4");
        assert_eq!(data["url"], "https://blog.example/post-4");
        assert_eq!(data["summary_text"], "About Post 4");

        // Conditional GET: the stored ETag comes back and the server answers 304.
        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        assert_eq!(r.outcome, "not_modified");
        assert!(feed.lock().unwrap().requests.last().unwrap().is_some(), "If-None-Match was sent");

        // No ETag, same body as the last one parsed: recognised by its hash, not parsed again.
        feed.lock().unwrap().etag = false;
        assert_eq!(w.sources.poll_now(&w.owner, id).await.unwrap().outcome, "unchanged");

        // An edited item refreshes its event instead of making another.
        feed.lock().unwrap().items[3].1 = "Post 4, corrected".into();
        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        assert_eq!((r.new_events, r.updated), (0, 1), "{r:?}");
        let page = w.sources.events(&w.owner, Default::default()).await.unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].data["item"]["title"], "Post 4, corrected");
        assert!(page.events[0].updated_at.is_some());

        // gzip is decoded.
        {
            let mut f = feed.lock().unwrap();
            f.gzip = true;
            f.items.push(("post-5".into(), "Post 5".into()));
        }
        assert_eq!(w.sources.poll_now(&w.owner, id).await.unwrap().new_events, 1);
        assert_eq!(w.sources.get(&w.owner, id).await.unwrap().status.event_count, 2);
    })
    .await;
}

#[tokio::test]
async fn failures_back_off_and_honour_retry_after_and_max_age() {
    each_backend(|db| async move {
        let (base, feed) = start_feed().await;
        let w = world(db, 64 << 10).await;
        feed.lock().unwrap().items = items(2);
        let id = w.feed(&format!("{base}/b.xml"), Settings::default()).await;

        feed.lock().unwrap().status = Some(500);
        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        assert_eq!(r.outcome, "failed");
        assert_eq!(r.error.as_ref().unwrap().code, "http_500");
        let v = w.sources.get(&w.owner, id).await.unwrap();
        assert_eq!(v.status.failures, 1);
        assert_eq!(v.status.last_error.as_ref().unwrap().code, "http_500");
        assert!(w.next_in(id).await >= 100, "one failure doubles the 60 s interval (±10 %)");
        w.sources.poll_now(&w.owner, id).await.unwrap();
        assert!(w.next_in(id).await >= 210, "two failures: four intervals");

        {
            let mut f = feed.lock().unwrap();
            f.status = Some(429);
            f.retry_after = Some(7200);
        }
        w.sources.poll_now(&w.owner, id).await.unwrap();
        assert!(w.next_in(id).await >= 7190, "Retry-After is honoured");

        // Success clears the error; max-age stretches the next poll.
        {
            let mut f = feed.lock().unwrap();
            f.status = None;
            f.max_age = Some(3600);
        }
        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        assert_eq!(r.outcome, "ok");
        let v = w.sources.get(&w.owner, id).await.unwrap();
        assert_eq!((v.status.failures, v.status.last_error.is_none()), (0, true));
        assert!(w.next_in(id).await >= 3590, "Cache-Control: max-age is honoured");

        // A broken document: a clear feed error, never a crash.
        feed.lock().unwrap().body = Some("<rss><channel><item><title>oops".into());
        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        let code = r.error.unwrap().code;
        assert!(code.starts_with("feed_"), "{code}");
        // Past the size cap.
        feed.lock().unwrap().body = Some(rss(&items(2)) + &" ".repeat(70 << 10));
        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        assert_eq!(r.error.unwrap().code, "feed_too_large");
    })
    .await;
}

#[tokio::test]
async fn backfill_and_the_per_poll_cap() {
    each_backend(|db| async move {
        let (base, feed) = start_feed().await;
        let w = world(db, 64 << 10).await;
        feed.lock().unwrap().items = items(5);
        let id = w.feed(&format!("{base}/c.xml"), Settings { backfill: Some(2), ..Settings::default() }).await;
        let r = w.sources.poll_now(&w.owner, id).await.unwrap();
        assert_eq!((r.new_events, r.remembered), (2, 3), "{r:?}");

        let capped =
            w.feed(&format!("{base}/d.xml"), Settings { max_new_per_poll: Some(1), ..Settings::default() }).await;
        assert_eq!(w.sources.poll_now(&w.owner, capped).await.unwrap().new_events, 0);
        feed.lock().unwrap().items.extend((6..=8).map(|i| (format!("post-{i}"), format!("Post {i}"))));
        let r = w.sources.poll_now(&w.owner, capped).await.unwrap();
        assert_eq!((r.new_events, r.remembered), (1, 2), "{r:?}");
        // The remembered ones never trigger later.
        feed.lock().unwrap().items.push(("post-9".into(), "Post 9".into()));
        let r = w.sources.poll_now(&w.owner, capped).await.unwrap();
        assert_eq!((r.new_events, r.remembered), (1, 0), "{r:?}");
    })
    .await;
}

#[tokio::test]
async fn two_pollers_never_poll_one_feed_at_once() {
    each_backend(|db| async move {
        let (base, feed) = start_feed().await;
        let w = world(db, 64 << 10).await;
        {
            let mut f = feed.lock().unwrap();
            f.items = items(2);
            f.delay_ms = 300;
        }
        for i in 0..20 {
            w.feed(&format!("{base}/f{i}.xml"), Settings::default()).await;
        }
        let stop = CancellationToken::new();
        let a = tokio::spawn(Poller::new(w.sources.clone(), 8).run(stop.clone()));
        let b = tokio::spawn(Poller::new(w.sources.clone(), 8).run(stop.clone()));
        for _ in 0..100 {
            if feed.lock().unwrap().requests.len() >= 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.cancel();
        a.await.unwrap();
        b.await.unwrap();
        let f = feed.lock().unwrap();
        assert_eq!(f.requests.len(), 20, "each due feed polled exactly once");
        assert_eq!(f.overlaps, 0, "no feed was fetched twice at once");
    })
    .await;
}

#[tokio::test]
async fn schedules_fire_through_the_poller_and_missed_times_follow_the_policy() {
    each_backend(|db| async move {
        let w = world(db, 64 << 10).await;
        let schedule = |missed: &str| {
            let config: Settings = serde_json::from_value(
                serde_json::json!({"cron": "0 0 1 1 *", "timezone": "Europe/Berlin", "missed": missed}),
            )
            .unwrap();
            NewSource { kind: Kind::Schedule, name: format!("yearly {missed}"), config, active: true }
        };
        let once = w.sources.create(&w.owner, schedule("run_once")).await.unwrap().id;
        let skip = w.sources.create(&w.owner, schedule("skip")).await.unwrap().id;
        // As if Herald had been down since an hour before the time.
        let missed = Ts(Utc::now() - TimeDelta::hours(1));
        let mut tx = w.db.begin().await.unwrap();
        exec!(tx, "UPDATE sources SET next_run_at = $1", missed).unwrap();
        tx.commit().await.unwrap();
        let stop = CancellationToken::new();
        let pollers: Vec<_> =
            (0..2).map(|_| tokio::spawn(Poller::new(w.sources.clone(), 4).run(stop.clone()))).collect();
        for _ in 0..60 {
            let due: (i64,) =
                on_read!(w.db, c => sqlx::query_as("SELECT COUNT(*) FROM sources WHERE next_run_at <= $1")
                .bind(Ts(Utc::now())).fetch_one(c).await)
                .unwrap();
            if due.0 == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        for p in pollers {
            p.await.unwrap();
        }
        let page = w.sources.events(&w.owner, Default::default()).await.unwrap();
        assert_eq!(page.events.len(), 1, "run_once fires once, skip fires nothing: {:?}", page.events);
        let e = &page.events[0];
        assert_eq!(e.source_id, once);
        assert_eq!(e.kind, "schedule.fired");
        assert!(e.data["late_by_secs"].as_i64().unwrap() >= 3500);
        for id in [once, skip] {
            let next = w.sources.get(&w.owner, id).await.unwrap().status.next_run_at.unwrap();
            // The next 1 January, midnight in Berlin (23:00 UTC the day before).
            assert!(next > Utc::now());
            assert_eq!(next.format("%m-%d %H:%M").to_string(), "12-31 23:00");
        }
    })
    .await;
}

#[tokio::test]
async fn a_schedule_fires_each_time_once_and_never_early() {
    each_backend(|db| async move {
        let w = world(db, 64 << 10).await;
        let config: Settings =
            serde_json::from_value(serde_json::json!({"cron": "* * * * * *", "timezone": "UTC"})).unwrap();
        let id = w
            .sources
            .create(&w.owner, NewSource { kind: Kind::Schedule, name: "every second".into(), config, active: true })
            .await
            .unwrap()
            .id;
        let stop = CancellationToken::new();
        let pollers: Vec<_> =
            (0..2).map(|_| tokio::spawn(Poller::new(w.sources.clone(), 4).run(stop.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        stop.cancel();
        for p in pollers {
            p.await.unwrap();
        }
        let page = w.sources.events(&w.owner, Default::default()).await.unwrap();
        assert!(page.events.len() >= 2, "{:?}", page.events);
        let mut times = HashSet::new();
        for e in &page.events {
            assert_eq!(e.source_id, id);
            let at: chrono::DateTime<Utc> = serde_json::from_value(e.data["scheduled_for"].clone()).unwrap();
            assert!(e.received_at >= at, "fired early: {at} at {}", e.received_at);
            assert!(times.insert(at), "{at} fired twice");
        }
    })
    .await;
}

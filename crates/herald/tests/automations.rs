//! The seeds' automations end to end, each against a real `herald serve` with the platform fakes
//! (and the real Synapse and Bluesky PDS where CI runs them):
//! 1. AmpFlow: a signed YouTube WebSub push → template → Discord, Telegram and a Whop forum,
//!    exactly once; a title edit and a forged push send nothing.
//! 2. Kipu: RSS items → hashtag filter → AI rewrite per platform → delay → Bluesky + Mastodon.
//! 3. SPEC-1: a cron source → AI post → an editor approves with an edit → Mastodon + Matrix; an
//!    unanswered approval expires and nothing is posted.
//! 4. Clip auto-posting: a manual event with a video → Telegram and VK, scheduled; Telegram's size
//!    check fails and VK publishes; cancel and retry work.
//! 5. Crash: `kill -9` in the middle of AmpFlow, after Discord took the message and before
//!    Telegram; after the restart every platform has exactly one message.

mod common;

use common::{Proc, free_port, herald};
use herald_http::HttpClient;
use herald_testkit::openai::FakeOpenAi;
use herald_testkit::youtube::{self, Video};
use herald_testkit::{Failure, bluesky, discord, mastodon, matrix, telegram, vk, whop};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHANNEL: &str = "UCseedsAmpFlow0000000001";

fn run(dir: &Path, args: &[&str], stdin: &str) -> String {
    let (code, out, err) = common::run_cli(dir, args, stdin);
    assert_eq!(code, 0, "{err}");
    out
}

/// A data dir with a user, a team and an admin key, and the address `herald serve` listens on
/// (the same across restarts: it is the WebSub callback's origin).
struct Node {
    dir: PathBuf,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    key: String,
    http: HttpClient,
}

impl Node {
    fn new(name: &str, env: &[(&str, String)]) -> Node {
        let dir = herald_store::testing::scratch_dir(name);
        let out = run(&dir, &["user", "create", "--email", "o@example.com"], "pw-123456789\n");
        let team = out.split("with team ").nth(1).unwrap().trim().to_string();
        let key = run(&dir, &["token", "create", "--team", &team, "--role", "admin"], "");
        let addr = free_port();
        let mut all = vec![
            ("HERALD_ALLOW_PRIVATE_NETWORKS".to_string(), "127.0.0.0/8".to_string()),
            ("HERALD_PUBLIC_URL".to_string(), format!("http://{addr}")),
            ("HERALD_JOB_LEASE".to_string(), "2s".to_string()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        Node {
            dir,
            addr,
            env: all,
            key: key.lines().next().unwrap().trim().to_string(),
            http: HttpClient::trusted().unwrap(),
        }
    }

    fn start(&self, failpoint: Option<&str>) -> Proc {
        let mut cmd = herald();
        cmd.args(["serve", "--listen", &self.addr.to_string()]);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(f) = failpoint {
            cmd.env("HERALD_FAILPOINT", f);
        }
        let mut p = Proc::spawn(cmd, &self.dir);
        p.wait_ready(self.addr, Duration::from_secs(30));
        p
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{}/api/v1{path}", self.addr);
        let mut req = self.http.request(method.parse().unwrap(), &url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
        v
    }

    async fn connect(&self, platform: &str, credentials: Value, settings: Value) -> String {
        let body = json!({"platform": platform, "credentials": credentials, "settings": settings});
        self.ok("POST", "/connections", Some(body)).await["id"].as_str().unwrap().to_string()
    }

    async fn runs(&self, workflow: &str) -> Vec<Value> {
        self.ok("GET", &format!("/runs?workflow={workflow}"), None).await["runs"].as_array().unwrap().clone()
    }

    /// Waits until the workflow has `n` runs that are over, and returns them, newest first.
    async fn finished_runs(&self, workflow: &str, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let runs = self.runs(workflow).await;
            let over = ["succeeded", "failed", "skipped", "cancelled"];
            if runs.len() >= n && runs.iter().all(|r| over.contains(&r["status"].as_str().unwrap_or(""))) {
                return runs;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "runs never finished: {runs:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn until(what: &str, within: Duration, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set, and CI must run the real-peer tests")
        }
        _ => {
            eprintln!("real peer skipped: {var} is not set");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ampflow_push_to_three_platforms_once_and_a_crash_in_the_middle() {
    let (yt, tg, dc, wh) =
        (youtube::start().await, telegram::start().await, discord::start().await, whop::start().await);
    yt.add_channel(CHANNEL, "@ampflow", "AmpFlow Channel");
    let node = Node::new(
        "herald-ampflow",
        &[
            ("HERALD_WEBSUB_HUB", yt.hub_url()),
            ("HERALD_YOUTUBE_BASE", yt.url.clone()),
            ("HERALD_TELEGRAM_API_BASE", tg.url.clone()),
            ("HERALD_DISCORD_API_BASE", format!("{}/api/v10", dc.url)),
            ("HERALD_WHOP_API_BASE", format!("{}/api/v1", wh.url)),
        ],
    );
    let p = node.start(None);
    let tg_id =
        node.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
    let dc_id = node
        .connect("discord", json!({"bot_token": discord::BOT_TOKEN}), json!({"channel_id": discord::CHANNEL_ID}))
        .await;
    let wh_id = node
        .connect(
            "whop",
            json!({"api_key": whop::API_KEY}),
            json!({"kind": "forum", "experience_id": whop::FORUM_EXPERIENCE}),
        )
        .await;
    let source = node
        .ok(
            "POST",
            "/sources",
            Some(json!({"kind": "youtube_channel", "name": "yt", "config": {"channel": "@ampflow"}})),
        )
        .await;
    let source_id = source["id"].as_str().unwrap().to_string();
    assert!(yt.wait_for_verifications(1, Duration::from_secs(20)).await, "the hub never verified:\n{}", p.log());
    // The first poll remembers what exists (nothing triggers from it).
    let start = Instant::now();
    loop {
        let s = node.ok("GET", &format!("/sources/{source_id}"), None).await;
        if !s["status"]["last_ok_at"].is_null() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never polled: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wf = node
        .ok(
            "POST",
            "/workflows",
            Some(json!({"name": "AmpFlow", "sources": [source_id], "steps": [
                {"type": "template", "template": "New video: {{video_title}} {{video_url}}"},
                {"type": "publish", "targets": [{"connection": dc_id}, {"connection": tg_id}, {"connection": wh_id}]}
            ]})),
        )
        .await;
    let wf_id = wf["id"].as_str().unwrap().to_string();

    // A signed push of a new upload: one message on each platform.
    yt.add_video(CHANNEL, Video::new("AMPvideo001", "Launch day"));
    yt.notify_video(CHANNEL, "AMPvideo001").await;
    let runs = node.finished_runs(&wf_id, 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#?}");
    let event = node.ok("GET", &format!("/events/{}", runs[0]["event_id"].as_str().unwrap()), None).await;
    let want = format!("New video: Launch day {}", event["data"]["video"]["url"].as_str().unwrap());
    assert!(want.contains("AMPvideo001"), "{want}");
    let all_three =
        |n: usize| tg.data().messages.len() >= n && dc.data().messages.len() >= n && wh.data().posts.len() >= n;
    until("the three messages", Duration::from_secs(30), || all_three(1)).await;
    assert_eq!(tg.data().messages.iter().filter_map(|m| m.text.clone()).collect::<Vec<_>>(), vec![want.clone()]);
    assert_eq!(dc.data().messages.iter().map(|m| m.content.clone()).collect::<Vec<_>>(), vec![want.clone()]);
    assert_eq!(wh.data().posts.iter().map(|m| m.content.clone()).collect::<Vec<_>>(), vec![want.clone()]);

    // A title edit pushes the same video again, and a forged push arrives: nothing is sent.
    yt.edit_video(CHANNEL, "AMPvideo001", |v| v.title = "Launch day (edited)".into());
    yt.notify_video(CHANNEL, "AMPvideo001").await;
    let forged = youtube::push_body(CHANNEL, "AmpFlow Channel", &Video::new("FORGED00001", "Forged"));
    let callback = format!("http://{}/hooks/websub/{source_id}", node.addr);
    let status = yt.publish_raw(&callback, &forged, Some("sha1=0000000000000000000000000000000000000000".into())).await;
    assert!((200..300).contains(&status));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.runs(&wf_id).await.len(), 1, "neither the edit nor the forgery starts a run");
    assert_eq!((tg.data().messages.len(), dc.data().messages.len(), wh.data().posts.len()), (1, 1, 1));
    drop(p);

    // Scenario 5: the process dies right after Discord took the next message. Telegram and Whop
    // are told to wait first (a 429 each, recorded while Discord is slow to answer), so their
    // messages come after Discord's, and no call of theirs is in flight at the crash.
    let p = node.start(Some("delivery.after_call:discord"));
    tg.fail_next(Failure::RateLimited { retry_after_secs: 3 });
    wh.fail_next(Failure::RateLimited { retry_after_secs: 3 });
    dc.fail_next(Failure::Hang(Duration::from_millis(1500)));
    yt.add_video(CHANNEL, Video::new("AMPvideo002", "Second upload"));
    yt.notify_video(CHANNEL, "AMPvideo002").await;
    let mut p = p;
    let code = p.wait_exit(Duration::from_secs(30));
    assert_ne!(code, 0, "the failpoint aborts:\n{}", p.log());
    assert_eq!(dc.data().messages.len(), 2, "Discord took it before the crash");
    assert_eq!(tg.data().messages.len(), 1, "Telegram had not");
    let p = node.start(None);
    let start = Instant::now();
    while !all_three(2) {
        if start.elapsed() > Duration::from_secs(60) {
            let posts = node.ok("GET", "/posts", None).await;
            panic!("not every platform got its second message: {posts:#}\n{}", p.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = node.finished_runs(&wf_id, 2).await;
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = |texts: Vec<String>| texts.iter().filter(|t| t.contains("Second upload")).count();
    assert_eq!(second(tg.data().messages.iter().filter_map(|m| m.text.clone()).collect()), 1);
    assert_eq!(second(dc.data().messages.iter().map(|m| m.content.clone()).collect()), 1, "Discord's nonce held");
    assert_eq!(second(wh.data().posts.iter().map(|m| m.content.clone()).collect()), 1);
    assert_eq!((tg.data().messages.len(), dc.data().messages.len(), wh.data().posts.len()), (2, 2, 2));
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kipu_feed_filter_ai_delay_to_bluesky_and_mastodon() {
    let (md, bs, ai) = (mastodon::start().await, bluesky::start().await, FakeOpenAi::start().await);
    ai.reply_with(|req| {
        let system = req["messages"][0]["content"].as_str().unwrap_or_default().to_lowercase();
        let text = herald_testkit::openai::marked_text(req).unwrap_or_default();
        let tag = if system.contains("bluesky") { "[bsky]" } else { "[masto]" };
        format!("{tag} {text}")
    });
    let feed = feed_server().await;
    let node = Node::new("herald-kipu", &[("HERALD_AI_BASE_URL", ai.base_url())]);
    let _p = node.start(None);
    let md_id =
        node.connect("mastodon", json!({"access_token": mastodon::TOKEN}), json!({"instance_url": md.url})).await;
    let (bs_id, pds) = match peer("HERALD_TEST_BLUESKY_PDS") {
        Some(pds) => {
            let handle = format!("k{}.test", &uuid::Uuid::now_v7().simple().to_string()[20..]);
            let http = HttpClient::trusted().unwrap();
            let r = http
                .post(&format!("{pds}/xrpc/com.atproto.server.createAccount"))
                .json(&json!({"handle": handle, "email": format!("{handle}@test.invalid"), "password": "kipu-pass"}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            let id = node
                .connect("bluesky", json!({"identifier": handle, "app_password": "kipu-pass"}), json!({"service": pds}))
                .await;
            (id, Some(pds))
        }
        None => {
            let id = node
                .connect(
                    "bluesky",
                    json!({"identifier": bluesky::HANDLE, "app_password": bluesky::PASSWORD}),
                    json!({"service": bs.url}),
                )
                .await;
            (id, None)
        }
    };
    // Two items exist before the source: backfilled. Only the #rust one passes the filter. The
    // source starts paused, so its first poll comes after the workflow exists.
    let source = node
        .ok(
            "POST",
            "/sources",
            Some(json!({"kind": "feed", "name": "blog", "active": false, "config": {"url": feed, "backfill": 2}})),
        )
        .await;
    let wf = node
        .ok(
            "POST",
            "/workflows",
            Some(json!({"name": "Kipu", "sources": [source["id"]], "steps": [
                {"type": "filter", "when": {"hashtags": {"include": ["rust"], "exclude": ["ad"]}}},
                {"type": "template", "template": "{{ item.title }} {{ item.url }}"},
                {"type": "ai_rewrite", "platforms": ["bluesky", "mastodon"], "tone": "upbeat", "hashtags": true},
                {"type": "delay", "for": "2s"},
                {"type": "publish", "targets": [{"connection": bs_id}, {"connection": md_id}]}
            ]})),
        )
        .await;
    let wf_id = wf["id"].as_str().unwrap().to_string();
    node.ok("PATCH", &format!("/sources/{}", source["id"].as_str().unwrap()), Some(json!({"active": true}))).await;
    let runs = node.finished_runs(&wf_id, 2).await;
    let mut statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, ["skipped", "succeeded"], "{runs:#?}");
    let ok = runs.iter().find(|r| r["status"] == "succeeded").unwrap();
    let run = node.ok("GET", &format!("/runs/{}", ok["id"].as_str().unwrap()), None).await;
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5, "{run:#}");
    let delay = &steps[3];
    let waited = chrono::DateTime::parse_from_rfc3339(delay["output"]["until"].as_str().unwrap()).unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(run["finished_at"].as_str().unwrap()).unwrap() >= waited);
    let want_md = "[masto] Rust 2.0 #rust https://blog.example/rust";
    until("the Mastodon status", Duration::from_secs(30), || !md.data().statuses.is_empty()).await;
    assert_eq!(md.data().statuses.iter().map(|s| s.text.clone()).collect::<Vec<_>>(), [want_md]);
    let post = &steps[4]["output"];
    let post = node.ok("GET", &format!("/posts/{}", post["post_id"].as_str().unwrap()), None).await;
    let start = Instant::now();
    let mut post = post;
    while post["state"] != "published" {
        assert!(start.elapsed() < Duration::from_secs(30), "{post:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        post = node.ok("GET", &format!("/posts/{}", post["id"].as_str().unwrap()), None).await;
    }
    let bsky = post["deliveries"].as_array().unwrap().iter().find(|d| d["platform"] == "bluesky").unwrap();
    assert_eq!(bsky["content"]["text"], "[bsky] Rust 2.0 #rust https://blog.example/rust");
    if pds.is_none() {
        let posts = bs.data().posts();
        assert_eq!(posts.len(), 1);
        assert!(posts[0].value["text"].as_str().unwrap().starts_with("[bsky] Rust 2.0"));
    }
    assert_eq!(ai.chat_requests().len(), 2, "the skipped item never reached the model");
}

/// A feed with a #rust item and an #ad item.
async fn feed_server() -> String {
    let app = axum::Router::new().route(
        "/feed.xml",
        axum::routing::get(|| async {
            let body = r#"<?xml version="1.0"?><rss version="2.0"><channel><title>Blog</title>
                <item><guid>a1</guid><title>Rust 2.0 #rust</title><link>https://blog.example/rust</link></item>
                <item><guid>a2</guid><title>Buy now #rust #ad</title><link>https://blog.example/ad</link></item>
                </channel></rss>"#;
            ([("content-type", "application/rss+xml")], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/feed.xml", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec1_cron_ai_approval_with_an_edit_and_an_expiry() {
    let (md, mx, ai) = (mastodon::start().await, matrix::start().await, FakeOpenAi::start().await);
    ai.reply_with(|_| "Good morning! Today's tip: write tests first.".to_string());
    let node = Node::new("herald-spec1", &[("HERALD_AI_BASE_URL", ai.base_url())]);
    let _p = node.start(None);
    let md_id =
        node.connect("mastodon", json!({"access_token": mastodon::TOKEN}), json!({"instance_url": md.url})).await;
    let real = peer("HERALD_TEST_MATRIX_URL");
    let (mx_id, room_check) = match &real {
        Some(base) => {
            let user = std::env::var("HERALD_TEST_MATRIX_USER").unwrap();
            let password = std::env::var("HERALD_TEST_MATRIX_PASSWORD").unwrap();
            let http = HttpClient::trusted().unwrap();
            let login: Value = http
                .post(&format!("{base}/_matrix/client/v3/login"))
                .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, "device_id": "SPEC1"}))
                .send().await.unwrap().json().await.unwrap();
            let token = login["access_token"].as_str().unwrap().to_string();
            let room: Value = http
                .post(&format!("{base}/_matrix/client/v3/createRoom"))
                .bearer_auth(&token)
                .json(&json!({"name": "spec1", "preset": "private_chat"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let room = room["room_id"].as_str().unwrap().to_string();
            let id = node
                .connect(
                    "matrix",
                    json!({"user": user, "password": password}),
                    json!({"homeserver": base, "room_id": room}),
                )
                .await;
            (id, Some((base.clone(), token, room)))
        }
        None => {
            let id = node
                .connect(
                    "matrix",
                    json!({"access_token": matrix::TOKEN}),
                    json!({"homeserver": mx.url, "room_id": matrix::ROOM}),
                )
                .await;
            (id, None)
        }
    };
    // An editor approves; the key acting here is an admin, so it may too.
    let definition = |name: &str, source: &Value, timeout: &str| {
        json!({"name": name, "sources": [source["id"]], "steps": [
            {"type": "template", "template": "Write today's tip"},
            {"type": "ai_rewrite", "instructions": "A short morning tip for developers."},
            {"type": "approval", "role": "editor", "timeout": timeout, "message": "Morning post for {{ event.received_at }}"},
            {"type": "publish", "targets": [{"connection": md_id}, {"connection": mx_id}]}
        ]})
    };
    // Every second (six fields: seconds first), paused after its first firing.
    let cron = node
        .ok(
            "POST",
            "/sources",
            Some(json!({"kind": "schedule", "name": "mornings", "config": {"cron": "* * * * * *"}})),
        )
        .await;
    let wf = node.ok("POST", "/workflows", Some(definition("SPEC-1", &cron, "1h"))).await;
    let wf_id = wf["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    while node.runs(&wf_id).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "the schedule never fired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.ok("PATCH", &format!("/sources/{}", cron["id"].as_str().unwrap()), Some(json!({"active": false}))).await;
    // The approval waits; the editor edits the Matrix text and approves.
    let approval = loop {
        let list = node.ok("GET", "/approvals?status=pending", None).await;
        if let Some(a) = list.as_array().unwrap().first() {
            break a.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no approval");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(approval["proposal"]["text"], "Good morning! Today's tip: write tests first.");
    // More firings may have started runs before the pause: reject those.
    for extra in node.ok("GET", "/approvals?status=pending", None).await.as_array().unwrap().iter().skip(1) {
        node.ok("POST", &format!("/approvals/{}/reject", extra["id"].as_str().unwrap()), Some(json!({}))).await;
    }
    let edit = json!({"targets": {"matrix": "Good morning, Matrix! Write tests first."}, "comment": "friendlier"});
    let decided =
        node.ok("POST", &format!("/approvals/{}/approve", approval["id"].as_str().unwrap()), Some(edit)).await;
    assert_eq!(decided["status"], "approved");
    until("the Mastodon status", Duration::from_secs(30), || !md.data().statuses.is_empty()).await;
    assert_eq!(md.data().statuses[0].text, "Good morning! Today's tip: write tests first.");
    match room_check {
        Some((base, token, room)) => {
            let http = HttpClient::trusted().unwrap();
            let start = Instant::now();
            loop {
                let r: Value = http
                    .get(&format!(
                        "{base}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20",
                        room.replace('!', "%21").replace(':', "%3A")
                    ))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let bodies: Vec<String> = r["chunk"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["type"] == "m.room.message")
                    .filter_map(|e| e["content"]["body"].as_str().map(str::to_string))
                    .collect();
                if !bodies.is_empty() {
                    assert_eq!(bodies, ["Good morning, Matrix! Write tests first."]);
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "nothing in the Synapse room");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        None => {
            until("the Matrix message", Duration::from_secs(30), || !mx.data().messages(matrix::ROOM).is_empty()).await;
            assert_eq!(mx.data().messages(matrix::ROOM)[0].content["body"], "Good morning, Matrix! Write tests first.");
        }
    }

    // An unanswered approval expires at its timeout, and nothing is posted.
    let manual = node.ok("POST", "/sources", Some(json!({"kind": "manual", "name": "by hand"}))).await;
    let short = node.ok("POST", "/workflows", Some(definition("SPEC-1 short", &manual, "2s"))).await;
    node.ok("POST", &format!("/sources/{}/events", manual["id"].as_str().unwrap()), Some(json!({"data": {}}))).await;
    let runs = node.finished_runs(short["id"].as_str().unwrap(), 1).await;
    assert_eq!(
        (runs[0]["status"].as_str(), runs[0]["error_code"].as_str()),
        (Some("cancelled"), Some("approval_expired"))
    );
    assert_eq!(md.data().statuses.len(), 1, "the expired approval posted nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clip_video_to_telegram_and_vk_one_too_large_cancel_and_retry() {
    let (tg, vkf) = (telegram::start().await, vk::start().await);
    let node = Node::new(
        "herald-clips",
        &[("HERALD_TELEGRAM_API_BASE", tg.url.clone()), ("HERALD_VK_API_BASE", format!("{}/method", vkf.url))],
    );
    let _p = node.start(None);
    let tg_id =
        node.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
    let vk_id = node.connect("vk", json!({"access_token": vk::USER_TOKEN}), json!({"owner_id": -vk::GROUP_ID})).await;
    // A 51 MB clip: over Telegram's 50 MB bot upload limit, within VK's.
    let mut clip = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    clip.resize(51 << 20, 0);
    let form = herald_http::multipart::Form::new()
        .part("file", herald_http::multipart::Part::bytes(clip).file_name("clip.mp4".to_string()));
    let media: Value = node
        .http
        .post(&format!("http://{}/api/v1/media", node.addr))
        .bearer_auth(&node.key)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(media["mime"], "video/mp4", "{media}");
    let source = node.ok("POST", "/sources", Some(json!({"kind": "manual", "name": "clips"}))).await;
    let wf = node
        .ok(
            "POST",
            "/workflows",
            Some(json!({"name": "Clips", "sources": [source["id"]], "steps": [
                {"type": "template", "template": "{{ payload.caption }}"},
                {"type": "publish", "targets": [{"connection": tg_id}, {"connection": vk_id}],
                 "media": ["{{ payload.media }}"], "schedule": {"at": "{{ payload.publish_at }}"}}
            ]})),
        )
        .await;
    let wf_id = wf["id"].as_str().unwrap().to_string();
    let event =
        |at: String| json!({"data": {"payload": {"caption": "New clip", "media": media["id"], "publish_at": at}}});

    // Scheduled an hour out: Telegram is left out for its size limit, VK waits; cancelling the
    // post sends nothing.
    let later = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    node.ok("POST", &format!("/sources/{}/events", source["id"].as_str().unwrap()), Some(event(later))).await;
    let runs = node.finished_runs(&wf_id, 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#?}");
    let run = node.ok("GET", &format!("/runs/{}", runs[0]["id"].as_str().unwrap()), None).await;
    let out = &run["steps"][1]["output"];
    assert_eq!(out["skipped"][0]["platform"], "telegram", "{out:#}");
    assert!(out["skipped"][0]["violations"].to_string().contains("size"), "{out:#}");
    assert_eq!(out["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(out["deliveries"][0]["platform"], "vk");
    assert_eq!(out["state"], "scheduled");
    let post = out["post_id"].as_str().unwrap().to_string();
    let cancelled = node.ok("POST", &format!("/posts/{post}/cancel"), None).await;
    assert_eq!(cancelled["state"], "cancelled");

    // Retry: the clip again, due in two seconds; VK publishes it, Telegram never gets it.
    let soon = (chrono::Utc::now() + chrono::TimeDelta::seconds(2)).to_rfc3339();
    node.ok("POST", &format!("/sources/{}/events", source["id"].as_str().unwrap()), Some(event(soon))).await;
    let runs = node.finished_runs(&wf_id, 2).await;
    let run = node.ok("GET", &format!("/runs/{}", runs[0]["id"].as_str().unwrap()), None).await;
    let post = run["steps"][1]["output"]["post_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let p = node.ok("GET", &format!("/posts/{post}"), None).await;
        if p["state"] == "published" {
            assert!(p["deliveries"][0]["platform_url"].as_str().unwrap().contains("vk.com"), "{p:#}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{p:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(vkf.data().posts.len(), 1, "one wall post, from the retry");
    assert!(tg.data().messages.is_empty(), "nothing reached Telegram");
    assert!(tg.requests_to("sendVideo").is_empty() && tg.requests_to("sendMessage").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_its_publish_step_and_before_its_commit_posts_once() {
    let tg = telegram::start().await;
    let node = Node::new("herald-run-crash", &[("HERALD_TELEGRAM_API_BASE", tg.url.clone())]);
    let mut p = node.start(Some("workflow.after_publish"));
    let tg_id =
        node.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
    let source = node.ok("POST", "/sources", Some(json!({"kind": "manual", "name": "m"}))).await;
    let wf = node
        .ok(
            "POST",
            "/workflows",
            Some(json!({"name": "once", "sources": [source["id"]], "steps": [
                {"type": "template", "template": "Exactly once: {{ payload.n }}"},
                {"type": "publish", "targets": [{"connection": tg_id}]},
                {"type": "template", "id": "after", "template": "done {{ steps.publish.post_id }}"}
            ]})),
        )
        .await;
    node.ok(
        "POST",
        &format!("/sources/{}/events", source["id"].as_str().unwrap()),
        Some(json!({"data": {"payload": {"n": 7}}})),
    )
    .await;
    let code = p.wait_exit(Duration::from_secs(30));
    assert_ne!(code, 0, "the failpoint aborts:\n{}", p.log());
    assert!(p.log().contains("failpoint workflow.after_publish"), "{}", p.log());
    // On SQLite the post is written with the commit that records its step, so neither was (on
    // PostgreSQL the post was, and the step finds it by its key): resuming makes the one post.
    let _p = node.start(None);
    let runs = node.finished_runs(wf["id"].as_str().unwrap(), 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#?}");
    let run = node.ok("GET", &format!("/runs/{}", runs[0]["id"].as_str().unwrap()), None).await;
    let post_id = run["steps"][1]["output"]["post_id"].as_str().unwrap().to_string();
    assert_eq!(run["steps"][2]["output"]["text"], format!("done {post_id}"));
    until("the message", Duration::from_secs(30), || !tg.data().messages.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let posts = node.ok("GET", "/posts", None).await;
    assert_eq!(posts["posts"].as_array().map(Vec::len).unwrap_or(0), 1, "one post: {posts:#}");
    assert_eq!(tg.data().messages.iter().filter_map(|m| m.text.clone()).collect::<Vec<_>>(), ["Exactly once: 7"]);
}

//! The process dies after a platform accepted a delivery but before Herald committed it
//! (`HERALD_FAILPOINT=delivery.after_call` aborts right there). On restart, Mastodon (which
//! deduplicates on the stored Idempotency-Key) shows exactly one status; Telegram (which cannot)
//! is `unconfirmed` and is not sent again.

mod common;

use common::{Proc, free_port, herald};
use herald_http::HttpClient;
use herald_testkit::{mastodon, telegram};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn run(dir: &Path, args: &[&str], stdin: &str) -> String {
    let (code, out, err) = common::run_cli(dir, args, stdin);
    assert_eq!(code, 0, "{err}");
    out
}

struct Node {
    dir: PathBuf,
    telegram: String,
}

impl Node {
    fn start(&self, failpoint: bool) -> (Proc, String) {
        let addr = free_port();
        let mut cmd = herald();
        cmd.args(["serve", "--listen", &addr.to_string()])
            .env("HERALD_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8")
            .env("HERALD_TELEGRAM_API_BASE", &self.telegram)
            .env("HERALD_JOB_LEASE", "2s");
        if failpoint {
            cmd.env("HERALD_FAILPOINT", "delivery.after_call");
        }
        let mut p = Proc::spawn(cmd, &self.dir);
        p.wait_ready(addr, Duration::from_secs(30));
        (p, format!("http://{addr}/api/v1"))
    }
}

async fn call(http: &HttpClient, key: &str, method: &str, url: &str, body: Option<Value>) -> Value {
    let mut req = http.request(method.parse().unwrap(), url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {url}: {status} {v}");
    v
}

async fn wait_post(http: &HttpClient, key: &str, base: &str, id: &str, want: &str) -> Value {
    let start = Instant::now();
    loop {
        let v = call(http, key, "GET", &format!("{base}/posts/{id}"), None).await;
        if v["deliveries"][0]["state"] == want {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never {want}: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_crash(p: &mut Proc) {
    let code = p.wait_exit(Duration::from_secs(30));
    assert_ne!(code, 0, "the failpoint aborts the process:\n{}", p.log());
    assert!(p.log().contains("failpoint delivery.after_call"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_platform_and_the_commit_never_posts_twice() {
    let (md, tg) = (mastodon::start().await, telegram::start().await);
    let dir = herald_store::testing::scratch_dir("herald-delivery-crash");
    let out = run(&dir, &["user", "create", "--email", "o@example.com"], "pw-123456789\n");
    let team = out.split("with team ").nth(1).unwrap().trim().to_string();
    let key = run(&dir, &["token", "create", "--team", &team, "--role", "admin"], "");
    let key = key.lines().next().unwrap().trim().to_string();
    let node = Node { dir, telegram: tg.url.clone() };
    let http = HttpClient::trusted().unwrap();

    // Mastodon: the resend after the crash carries the same key, and the instance keeps one status.
    let (mut p, base) = node.start(true);
    let c = call(&http, &key, "POST", &format!("{base}/connections"), Some(json!({
        "platform": "mastodon", "credentials": {"access_token": mastodon::TOKEN}, "settings": {"instance_url": md.url}
    })))
    .await;
    let post = call(
        &http,
        &key,
        "POST",
        &format!("{base}/posts"),
        Some(json!({
            "text": "survives a crash", "targets": [{"connection_id": c["id"]}]
        })),
    )
    .await;
    wait_crash(&mut p);
    assert_eq!(md.data().statuses.len(), 1, "the platform took it before the crash");
    let (p, base) = node.start(false);
    let v = wait_post(&http, &key, &base, post["id"].as_str().unwrap(), "published").await;
    assert_eq!(md.data().statuses.len(), 1, "the resend was recognised by its key: exactly one status");
    let keys: Vec<_> =
        md.requests_to("/api/v1/statuses").iter().map(|r| r.header("idempotency-key").unwrap().to_string()).collect();
    assert_eq!(keys.len(), 2, "sent twice, with one key");
    assert_eq!(keys[0], keys[1]);
    assert_eq!(v["deliveries"][0]["platform_post_id"], md.data().statuses[0].id.as_str());
    drop(p);

    // Telegram: no idempotency, so after the crash the delivery is unconfirmed and not resent.
    let (mut p, base) = node.start(true);
    let c = call(&http, &key, "POST", &format!("{base}/connections"), Some(json!({
        "platform": "telegram", "credentials": {"bot_token": telegram::TOKEN}, "settings": {"chat_id": telegram::CHANNEL}
    })))
    .await;
    let post = call(
        &http,
        &key,
        "POST",
        &format!("{base}/posts"),
        Some(json!({
            "text": "only once", "targets": [{"connection_id": c["id"]}]
        })),
    )
    .await;
    wait_crash(&mut p);
    let (p, base) = node.start(false);
    let v = wait_post(&http, &key, &base, post["id"].as_str().unwrap(), "unconfirmed").await;
    assert_eq!(tg.requests_to("sendMessage").len(), 1, "never resent");
    assert_eq!(tg.data().messages.len(), 1);
    let log = v["deliveries"][0]["attempt_log"].as_array().unwrap();
    assert_eq!(log.last().unwrap()["outcome"], "unknown_outcome", "{v:#}");
    assert!(log.last().unwrap()["message"].as_str().unwrap().contains("the worker stopped"), "{v:#}");
    // The person checks Telegram and settles it.
    let d = v["deliveries"][0]["id"].as_str().unwrap();
    let settled =
        call(&http, &key, "POST", &format!("{base}/deliveries/{d}/resolve"), Some(json!({"published": true}))).await;
    assert_eq!(settled["state"], "published");
    drop(p);
}

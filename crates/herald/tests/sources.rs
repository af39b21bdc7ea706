//! `herald sources …` through the real binary, and `herald serve` polling a feed on its own: the
//! poller runs in the server, and each event is handed on by a `source.event` job.

mod common;

use common::{Proc, free_port, herald};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = herald();
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const OPEN: (&str, &str) = ("HERALD_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8");

/// A feed with `items` entries; counts requests.
async fn feed_server(items: Arc<AtomicUsize>, hits: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/feed.xml",
        axum::routing::get(move || {
            let (items, hits) = (items.clone(), hits.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let mut body = String::from(r#"<?xml version="1.0"?><rss version="2.0"><channel><title>Blog</title>"#);
                for i in 1..=items.load(Ordering::SeqCst) {
                    body.push_str(&format!(
                        "<item><guid>p{i}</guid><title>Post {i}</title><link>https://blog.example/{i}</link></item>"
                    ));
                }
                body.push_str("</channel></rss>");
                ([("content-type", "application/rss+xml")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/feed.xml", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_from_the_cli_and_the_poller_in_serve() {
    let (items, hits) = (Arc::new(AtomicUsize::new(2)), Arc::new(AtomicUsize::new(0)));
    let url = feed_server(items.clone(), hits.clone()).await;
    let dir = herald_store::testing::scratch_dir("herald-sources-cli");
    let d = dir.clone();
    let cli = move |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let dir = d.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run(&dir, &args, &env)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let open = || vec![(OPEN.0, OPEN.1.to_string())];

    let d = dir.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let mut cmd = herald();
        cmd.args(["user", "create", "--email", "o@example.com"])
            .current_dir(&d)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"pw-123456789\n").unwrap();
        let o = child.wait_with_output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let team = out.split("with team ").nth(1).unwrap().trim().to_string();

    // Without a team: a clear message. With a loopback URL and the guard closed: refused.
    let (code, _, err) = cli(args(&["sources", "list"]), vec![]).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--team"), "{err}");
    let config = format!(r#"{{"url":"{url}","interval_secs":60}}"#);
    let add = args(&["sources", "add", "--kind", "feed", "--name", "blog", "--settings", &config, "--team", &team]);
    let (code, _, err) = cli(add.clone(), vec![]).await.unwrap();
    assert_eq!(code, 1, "{err}");
    let (code, out, err) = cli(add, open()).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("feed") && out.contains("\"blog\""), "{out}");
    let id = out.split_whitespace().next().unwrap().to_string();

    let (code, out, err) = cli(args(&["sources", "poll", &id, "--team", &team, "--json"]), open()).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((report["outcome"].as_str(), report["remembered"].as_u64()), (Some("ok"), Some(2)), "{out}");
    let (code, out, _) = cli(args(&["sources", "list", "--team", &team]), open()).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");

    // A second feed that backfills one item: `herald serve`'s poller takes it on its own, and
    // the event's hand-off job runs (the log sink notes it).
    let config = format!(r#"{{"url":"{url}?b","backfill":1}}"#);
    let (code, out, err) = cli(
        args(&["sources", "add", "--kind", "feed", "--name", "backfilled", "--settings", &config, "--team", &team]),
        open(),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let before = hits.load(Ordering::SeqCst);
    let addr = free_port();
    let mut cmd = herald();
    cmd.args(["serve", "--listen", &addr.to_string()]).env(OPEN.0, OPEN.1);
    let mut server = Proc::spawn(cmd, &dir);
    server.wait_ready(addr, Duration::from_secs(30));
    let start = Instant::now();
    while !server.log().contains("event received") && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log();
    assert!(hits.load(Ordering::SeqCst) > before, "the server's poller fetched the feed:\n{log}");
    assert!(log.contains("event received"), "the backfilled item was handed on:\n{log}");

    // Remove it through a running server's API.
    let (code, key, err) = cli(args(&["token", "create", "--team", &team, "--role", "admin"]), vec![]).await.unwrap();
    assert_eq!(code, 0, "{err}");
    let remote = vec![
        ("HERALD_SERVER", format!("http://{addr}")),
        ("HERALD_API_KEY", key.lines().next().unwrap().trim().to_string()),
    ];
    let (code, out, err) = cli(args(&["sources", "remove", &id]), remote.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(args(&["sources", "list", "--json"]), remote).await.unwrap();
    assert_eq!(code, 0);
    assert!(!out.contains(&id) && out.contains("backfilled"), "{out}");
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), 0);
}

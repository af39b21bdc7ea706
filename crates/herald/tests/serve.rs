//! `herald serve` as a user meets it: a fresh start, a clean stop, and clear errors.

mod common;

use common::{Proc, free_port, herald, http_get};
use std::time::Duration;

#[test]
fn serve_starts_on_a_fresh_data_dir_answers_and_stops_cleanly_on_sigterm() {
    let dir = herald_store::testing::scratch_dir("herald-serve");
    let addr = free_port();
    let mut cmd = herald();
    cmd.args(["serve", "--listen", &addr.to_string()]);
    let mut p = Proc::spawn(cmd, &dir);
    p.wait_ready(addr, Duration::from_secs(20));

    let (status, body) = http_get(addr, "/readyz").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"database\":\"sqlite\""), "{body}");
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    let (status, body) = http_get(addr, "/no/such/route").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("\"code\":\"not_found\""), "{body}");
    let (_, metrics) = http_get(addr, "/metrics").unwrap();
    assert!(
        metrics.contains("herald_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("herald_http_request_duration_seconds_bucket"), "{metrics}");
    // First run: a one-time setup link is logged, and it opens the setup page.
    let log = p.log();
    let link = log.split_whitespace().find(|w| w.contains("/setup?token=")).expect("a setup link in the log");
    assert!(link.starts_with(&format!("http://{addr}/setup?token=")), "{link}");
    let (status, page) = http_get(addr, &link[link.find("/setup").unwrap()..]).unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/api/v1/session/setup"));
    for (page, posts_to) in
        [("/invite?token=x", "/api/v1/invites/accept"), ("/reset-password?token=x", "/api/v1/password-reset/complete")]
    {
        let (status, body) = http_get(addr, page).unwrap();
        assert!(status == 200 && body.contains(posts_to), "{page}: {status}");
    }
    let (status, doc) = http_get(addr, "/api/openapi.json").unwrap();
    assert_eq!(status, 200);
    assert!(doc.contains("\"/session/login\""), "{doc}");

    let data = dir.join("herald-data");
    assert!(data.join("herald.db").exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data.join("secret.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the generated key file is private");

    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 0);
    let log = p.log();
    let line = log.lines().find(|l| l.contains("herald listening on")).expect("one start-up line");
    assert!(line.contains(&format!("http://{addr}")) && line.contains("sqlite://herald-data/herald.db"), "{line}");
    assert!(log.contains("generated a new secret key"));
    assert!(log.contains("SIGTERM received"));
    let _ = std::fs::remove_dir_all(dir);
}

fn expect_config_error(args: &[&str], want: &str) {
    let dir = herald_store::testing::scratch_dir("herald-badconf");
    let out = herald().args(args).current_dir(&dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} should exit 2; stderr: {stderr}");
    assert!(stderr.contains("configuration error") && stderr.contains(want), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn each_bad_configuration_stops_with_a_clear_message_and_exit_code_2() {
    expect_config_error(
        &["--database-url", "mysql://root@localhost/x", "serve"],
        "unknown database URL scheme `mysql`",
    );
    expect_config_error(&["--database-url", "postgres://postgres@127.0.0.1:1/x", "serve"], "cannot reach the database");
    expect_config_error(&["--data-dir", "/proc/herald-cannot-live-here", "serve"], "is not writable");
    expect_config_error(&["--listen", "nonsense", "serve"], "is not an address");
    expect_config_error(&["serve", "--role", "boss"], "use all, api or worker");
    expect_config_error(&["--smtp-url", "smtp://u:pw@mail.example.org", "serve"], "smtp_url needs public_url");
    expect_config_error(
        &["--smtp-url", "imap://mail.example.org", "--public-url", "https://h.example", "serve"],
        "unknown scheme",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    expect_config_error(&["--listen", &addr, "serve"], "is already in use");
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = herald_store::testing::scratch_dir("herald-check");
    std::fs::write(dir.join("herald.toml"), "workers = 7\nlisten = \"127.0.0.1:9999\"\n").unwrap();
    let out = herald()
        .args(["config", "check", "--listen", "127.0.0.1:7000"])
        .env("HERALD_SECRET_KEY", "cd".repeat(32))
        .env("HERALD_DATABASE_URL", "sqlite://x/y.db")
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("listen = \"127.0.0.1:7000\""), "flag beats file: {stdout}");
    assert!(stdout.contains("workers = 7"), "{stdout}");
    let out = herald().args(["config", "check"]).env("HERALD_WORKERS", "9").current_dir(&dir).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("workers = 9"), "the environment beats the file");
    assert!(stdout.contains("secret_key = \"***\""), "{stdout}");
    assert!(!stdout.contains(&"cd".repeat(32)));
    std::fs::write(dir.join("herald.toml"), "workers = \"many\"\n").unwrap();
    let out = herald().args(["config", "check"]).current_dir(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("herald.toml is invalid"));
    let _ = std::fs::remove_dir_all(dir);
}

/// A tiny HTTP server that answers 200 to everything and counts requests.
fn sink() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, hits)
}

#[test]
fn jobs_run_by_serve_show_in_the_queue_metrics() {
    let dir = herald_store::testing::scratch_dir("herald-metrics");
    let (target, hits) = sink();
    let out = herald()
        .args(["diag", "ping", "--count", "3", "--url", &format!("http://{target}/ping")])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let addr = free_port();
    let mut cmd = herald();
    cmd.args(["serve", "--listen", &addr.to_string()]);
    let mut p = Proc::spawn(cmd, &dir);
    p.wait_ready(addr, Duration::from_secs(20));
    let start = std::time::Instant::now();
    while hits.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(start.elapsed() < Duration::from_secs(20), "pings not delivered:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Completions are recorded in batches, and depth is refreshed by the maintenance loop.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(addr, "/metrics").unwrap().1;
        if metrics.contains("herald_jobs_succeeded_total{kind=\"diag.ping\"} 3")
            && metrics.contains("herald_queue_depth{")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for want in [
        "herald_jobs_claimed_total{kind=\"diag.ping\"} 3",
        "herald_jobs_succeeded_total{kind=\"diag.ping\"} 3",
        "herald_job_run_seconds_bucket{kind=\"diag.ping\"",
        "herald_job_wait_seconds_bucket{kind=\"diag.ping\"",
        "herald_queue_depth{queue=\"default\",state=\"pending\"}",
    ] {
        assert!(metrics.contains(want), "missing {want} in:\n{metrics}");
    }
    let out = herald().args(["jobs", "stats"]).current_dir(&dir).output().unwrap();
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(stats.contains("\"state\": \"succeeded\"") && stats.contains("\"count\": 3"), "{stats}");
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 0);
    assert!(p.log().contains("SIGINT received"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn media_can_live_in_s3_and_a_wrong_bucket_stops_the_start() {
    let Some(moto) = herald_testkit::moto::start("herald-serve").await else { return };
    let dir = herald_store::testing::scratch_dir("herald-serve-s3");
    let with_media = |url: &str| {
        let mut cmd = herald();
        cmd.envs(moto.env()).env("HERALD_MEDIA_URL", url);
        cmd
    };
    let addr = free_port();
    let mut cmd = with_media("s3://herald-serve/media");
    cmd.args(["serve", "--listen", &addr.to_string()]);
    let mut p = Proc::spawn(cmd, &dir);
    p.wait_ready(addr, Duration::from_secs(20));
    assert!(p.log().contains("media live in object storage"), "{}", p.log());
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 0);

    // A bucket that is not there fails the start, saying which setting to fix.
    let mut cmd = with_media("s3://no-such-bucket");
    cmd.args(["serve", "--listen", &free_port().to_string()]);
    let mut p = Proc::spawn(cmd, &dir);
    assert_ne!(p.wait_exit(Duration::from_secs(20)), 0);
    assert!(p.log().contains("HERALD_MEDIA_URL"), "{}", p.log());
    // Only s3:// is taken.
    let mut cmd = with_media("gs://bucket");
    cmd.args(["serve", "--listen", &free_port().to_string()]);
    let mut p = Proc::spawn(cmd, &dir);
    assert_ne!(p.wait_exit(Duration::from_secs(20)), 0);
    assert!(p.log().contains("media_url"), "{}", p.log());
    let _ = std::fs::remove_dir_all(dir);
}

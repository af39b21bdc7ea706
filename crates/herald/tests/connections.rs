//! `herald connections …` through the real binary, on the local database and through a running
//! server's API, against a webhook receiver standing in for a platform.

mod common;

use common::{Proc, free_port, herald};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

fn run(dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = herald();
    cmd.args(args).current_dir(dir).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const OPEN: (&str, &str) = ("HERALD_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_the_cli_locally_and_through_the_api() {
    let receiver = herald_testkit::webhook::start_with(None).await;
    let dir = herald_store::testing::scratch_dir("herald-connections-cli");
    let d = dir.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(&d, &["user", "create", "--email", "o@example.com"], "pw-123456789\n", &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let team = out.split("with team ").nth(1).unwrap().trim().to_string();
    let settings = format!("{{\"url\":\"{}/hook\"}}", receiver.url);
    let server_dir = dir.clone();

    let cli = move |args: Vec<String>, stdin: &'static str, env: Vec<(&'static str, String)>| {
        let dir = dir.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                run(&dir, &args, stdin, &env)
            })
            .await
            .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let open = || vec![(OPEN.0, OPEN.1.to_string())];

    // Without a team or a server it says what to do.
    let (code, _, err) = cli(args(&["connections", "list"]), "", vec![]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--team"), "{err}");

    // The guard is on by default: the receiver on 127.0.0.1 is refused until the operator opens it.
    let add = args(&[
        "connections",
        "add",
        "--platform",
        "webhook",
        "--name",
        "hook",
        "--settings",
        &settings,
        "--team",
        &team,
    ]);
    let (code, _, err) = cli(add.clone(), "{}", vec![]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ssrf_blocked_destination") || err.contains("refused destination"), "{err}");
    let (code, _, err) = cli(add.clone(), "not json", open()).await;
    assert_eq!(code, 1);
    assert!(err.contains("not JSON"), "{err}");

    let (code, out, err) = cli(add, "{}", open()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("webhook") && out.contains("active") && out.contains("\"hook\""), "{out}");
    let id = out.split_whitespace().next().unwrap().to_string();
    assert_eq!(receiver.data().deliveries.len(), 1, "the live check pinged the receiver");

    let (code, out, _) = cli(args(&["connections", "list", "--team", &team, "--json"]), "", open()).await;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["id"], id.as_str(), "{out}");
    assert!(!out.contains("whsec_"), "the generated secret must not be printed: {out}");

    // Through a running server with an API key.
    let (code, key, err) = cli(args(&["token", "create", "--team", &team, "--role", "admin"]), "", vec![]).await;
    assert_eq!(code, 0, "{err}");
    let key = key.lines().next().unwrap().trim().to_string();
    let addr = free_port();
    let mut cmd = herald();
    cmd.args(["serve", "--listen", &addr.to_string()]).env(OPEN.0, OPEN.1);
    let mut server = Proc::spawn(cmd, &server_dir);
    server.wait_ready(addr, Duration::from_secs(30));
    let remote = vec![("HERALD_SERVER", format!("http://{addr}")), ("HERALD_API_KEY", key.clone())];

    let (code, out, err) = cli(args(&["connections", "test", &id]), "", remote.clone()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("active"), "{out}");
    assert_eq!(receiver.data().deliveries.len(), 2);
    let (code, _, err) =
        cli(args(&["connections", "list"]), "", vec![("HERALD_SERVER", format!("http://{addr}"))]).await;
    assert_eq!(code, 2, "no key: {err}");
    let (code, _, err) = cli(
        args(&["connections", "list"]),
        "",
        vec![("HERALD_SERVER", format!("http://{addr}")), ("HERALD_API_KEY", "hk_wrong".into())],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");
    assert!(!err.contains("hk_wrong"));

    let (code, out, err) = cli(args(&["connections", "remove", &id]), "", remote.clone()).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(args(&["connections", "list"]), "", remote).await;
    assert_eq!((code, out.trim()), (0, ""), "removed");
    let log = server.log();
    assert!(!log.contains(&key), "the API key was logged");
    server.signal("TERM");
}

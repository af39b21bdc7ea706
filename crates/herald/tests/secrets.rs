//! Secrets through the real binary: canaries planted as a password, a TOTP seed, recovery codes,
//! an API key and a session token never show up in logs, later responses or the database file;
//! and `herald secrets rotate` / `retire` re-encrypt under a new key while a server keeps working.

mod common;

use common::{Proc, free_port, herald};
use herald_http::HttpClient;
use serde_json::{Value, json};
use std::time::Duration;

const PASSWORD: &str = "canary-password-5f1e2d3c";

fn run(dir: &std::path::Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    common::run_cli(dir, args, stdin)
}

struct Client {
    http: HttpClient,
    base: String,
    cookie: String,
    csrf: String,
    /// Every response body seen after sign-in, to search for canaries.
    seen: Vec<String>,
}

impl Client {
    async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), &format!("{}/api/v1{path}", self.base))
            .header("cookie", format!("herald_session={}", self.cookie))
            .header("x-csrf-token", &self.csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        self.seen.push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

async fn login(http: &HttpClient, base: &str, body: Value) -> (u16, Value, Option<String>) {
    let resp = http.post(&format!("{base}/api/v1/session/login")).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("herald_session=").map(|v| v.split(';').next().unwrap().to_string()));
    (status, resp.json().await.unwrap(), cookie)
}

fn totp_now(secret: &str, offset: i64) -> String {
    let step = herald_accounts::totp::step_of(chrono::Utc::now().timestamp()) + offset;
    herald_accounts::totp::code_at(secret, step).unwrap()
}

#[tokio::test]
async fn canaries_never_leak_and_rotation_keeps_secrets_readable() {
    let dir = herald_store::testing::scratch_dir("herald-canary");
    let (code, out, err) =
        run(&dir, &["user", "create", "--email", "canary@example.com", "--admin"], &format!("{PASSWORD}\n"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));

    let addr = free_port();
    let mut cmd = herald();
    cmd.args(["serve", "--listen", &addr.to_string()]).env("HERALD_LOG", "debug");
    let mut server = Proc::spawn(cmd, &dir);
    server.wait_ready(addr, Duration::from_secs(30));
    let base = format!("http://{addr}");
    let http = HttpClient::trusted().unwrap();

    let (status, body, cookie) =
        login(&http, &base, json!({"email": "canary@example.com", "password": PASSWORD})).await;
    assert_eq!(status, 200, "{body}");
    let mut c = Client {
        http,
        base: base.clone(),
        cookie: cookie.unwrap(),
        csrf: body["csrf_token"].as_str().unwrap().into(),
        seen: vec![body.to_string()],
    };

    // Two-factor: the seed and the recovery codes are shown once, here.
    let (_, enrol) = c.call("POST", "/me/2fa/enrol", None).await;
    let seed = enrol["secret"].as_str().unwrap().to_string();
    let (s, codes) = c.call("POST", "/me/2fa/confirm", Some(json!({"code": totp_now(&seed, 0)}))).await;
    assert_eq!(s, 200);
    let recovery: Vec<String> =
        codes["recovery_codes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    let (s, key) = c.call("POST", "/api-keys", Some(json!({"name": "canary", "role": "viewer"}))).await;
    assert_eq!(s, 201);
    let api_key = key["key"].as_str().unwrap().to_string();
    c.seen.clear();

    // Read everything back.
    for path in ["/me", "/session", "/teams", "/members", "/api-keys", "/invites", "/audit?limit=200", "/me/sessions"] {
        let (s, _) = c.call("GET", path, None).await;
        assert_eq!(s, 200, "{path}");
    }
    let (s, _) = c.call("POST", "/me/2fa/confirm", Some(json!({"code": "123456"}))).await;
    assert_eq!(s, 409);

    // Rotate while the server runs: it must pick up the new key and still verify codes.
    let (code, out, err) = run(&dir, &["secrets", "rotate"], "");
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(
        out.lines().skip(1).take_while(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n").as_str(),
    )
    .unwrap();
    assert_eq!(report["report"]["rewrapped"], 1, "{out}");
    let active = report["report"]["active_key"].as_str().unwrap().to_string();
    assert_eq!(report["secrets_by_key"], json!({active.clone(): 1}));
    let (code, out, _) = run(&dir, &["secrets", "rotate", "--resume"], "");
    assert_eq!(code, 0);
    assert!(out.contains("\"rewrapped\": 0"), "idempotent: {out}");
    let keyfile = std::fs::read_to_string(dir.join("herald-data/secret.key")).unwrap();
    assert_eq!(keyfile.lines().filter(|l| !l.starts_with('#')).count(), 2, "old key kept until retired");
    let (code, out, err) = run(&dir, &["secrets", "retire"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("retired key"), "{out}");
    let keyfile = std::fs::read_to_string(dir.join("herald-data/secret.key")).unwrap();
    assert_eq!(keyfile.lines().filter(|l| !l.starts_with('#')).count(), 1);

    let (status, body, _) = login(
        &c.http,
        &base,
        json!({"email": "canary@example.com", "password": PASSWORD, "totp_code": totp_now(&seed, 1)}),
    )
    .await;
    assert_eq!(status, 200, "the re-encrypted seed opens under the new key: {body}");
    c.seen.push(body.to_string());

    // The key works; so does one made by `herald token create`.
    let resp = c.http.get(&format!("{base}/api/v1/me")).bearer_auth(&api_key).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let team = body["teams"][0]["id"].as_str().unwrap().to_string();
    let (code, cli_key, err) =
        run(&dir, &["token", "create", "--team", &team, "--role", "viewer", "--name", "ops"], "");
    assert_eq!(code, 0, "{err}");
    let resp = c.http.get(&format!("{base}/api/v1/members")).bearer_auth(cli_key.trim()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = c
        .http
        .post(&format!("{base}/api/v1/invites"))
        .bearer_auth(cli_key.trim())
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403, "a viewer key cannot invite");
    let (code, _, err) = run(&dir, &["token", "create", "--team", &team, "--role", "owner"], "");
    assert_eq!(code, 2, "owner keys are refused: {err}");
    // Nor do secrets reach the metrics.
    c.seen.push(c.http.get(&format!("{base}/metrics")).send().await.unwrap().text().await.unwrap());
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), 0);
    let log = server.log();
    assert!(log.contains("DEBUG"), "the server logged at debug level");
    let mut db = Vec::new();
    for f in ["herald.db", "herald.db-wal"] {
        db.extend(std::fs::read(dir.join("herald-data").join(f)).unwrap_or_default());
    }
    let db = String::from_utf8_lossy(&db).to_string();
    let mut canaries = vec![
        ("password", PASSWORD.to_string()),
        ("totp seed", seed),
        ("api key", api_key),
        ("session token", c.cookie.clone()),
    ];
    canaries.extend(recovery.into_iter().map(|r| ("recovery code", r)));
    for (what, canary) in &canaries {
        assert!(!log.contains(canary.as_str()), "the {what} is in the server log");
        for body in &c.seen {
            assert!(!body.contains(canary.as_str()), "the {what} is in a response: {body}");
        }
        assert!(!db.contains(canary.as_str()), "the {what} is in the database file in clear");
    }
    let _ = std::fs::remove_dir_all(dir);
}

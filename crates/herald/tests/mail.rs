//! Password-reset mail through a real SMTP server (aiosmtpd, from PyPI; `.ci/run` installs it):
//! `herald serve` with HERALD_SMTP_URL mails the link from a job, and the link resets the password.

mod common;

use common::{Proc, free_port, herald};
use herald_http::HttpClient;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn aiosmtpd_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must have aiosmtpd (pip install aiosmtpd); .ci/run installs it");
        let _ = writeln!(
            std::io::stderr(),
            "note: SMTP test skipped: the Python module aiosmtpd is missing (pip install aiosmtpd)"
        );
    }
    ok
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mails(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("new"))
        .map(|entries| entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_reset_link_is_mailed_through_smtp_and_resets_the_password() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = herald_store::testing::scratch_dir("herald-mail");
    let maildir = dir.join("maildir");
    let smtp = free_port();
    let _smtpd = Kill(
        Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &smtp.to_string(), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd"),
    );
    let mut child = herald()
        .args(["user", "create", "--email", "mail@example.com"])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"the old passphrase\n").unwrap();
    assert!(child.wait().unwrap().success());

    let addr = free_port();
    let base = format!("http://{addr}");
    let mut cmd = herald();
    cmd.args(["serve", "--listen", &addr.to_string()])
        .env("HERALD_PUBLIC_URL", &base)
        .env("HERALD_SMTP_URL", format!("smtp://{smtp}"))
        .env("HERALD_SMTP_FROM", "herald@example.org");
    let mut server = Proc::spawn(cmd, &dir);
    server.wait_ready(addr, Duration::from_secs(30));
    let http = HttpClient::trusted().unwrap();
    for email in ["nobody@example.com", "mail@example.com"] {
        let resp = http
            .post(&format!("{base}/api/v1/password-reset/request"))
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
    }
    let start = Instant::now();
    let mail = loop {
        if let Some(m) = mails(&maildir).into_iter().next() {
            break m;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no mail arrived:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(mail.contains("To: mail@example.com") && mail.contains("From: herald@example.org"), "{mail}");
    let link =
        mail.split_whitespace().find(|w| w.starts_with(&format!("{base}/reset-password?token="))).expect("a link");
    let token = link.split("token=").nth(1).unwrap();
    // The page the link opens exists, and the token resets the password once.
    assert_eq!(http.get(link).send().await.unwrap().status().as_u16(), 200);
    let complete = |t: &str| {
        http.post(&format!("{base}/api/v1/password-reset/complete"))
            .json(&json!({"token": t, "new_password": "the new passphrase"}))
            .send()
    };
    assert_eq!(complete(token).await.unwrap().status().as_u16(), 204);
    assert_eq!(complete(token).await.unwrap().status().as_u16(), 404);
    let login = |pw: &'static str| {
        http.post(&format!("{base}/api/v1/session/login"))
            .json(&json!({"email": "mail@example.com", "password": pw}))
            .send()
    };
    assert_eq!(login("the new passphrase").await.unwrap().status().as_u16(), 200);
    assert_eq!(login("the old passphrase").await.unwrap().status().as_u16(), 401);
    assert_eq!(mails(&maildir).len(), 1, "no mail for the unknown address");
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), 0);
    assert!(!server.log().contains(token), "the token is not logged");
    let _ = std::fs::remove_dir_all(dir);
}

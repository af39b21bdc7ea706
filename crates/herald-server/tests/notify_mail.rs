//! Notification e-mail through a real SMTP dialogue: deliveries fail at a fake receiver through
//! the API and the real delivery worker, and the mail job writes to a small SMTP server on
//! 127.0.0.1. One failure is one mail to the owners and admins who want it (never to an editor,
//! a viewer or someone who turned it off); a storm of failures is one digest, not one mail each.

mod common;

use common::{App, Caller};
use herald_accounts::AccountsConfig;
use herald_accounts::notify_mail::Mailer;
use herald_core::TeamRole;
use herald_http::Method;
use herald_posts::{DeliveryHandler, NOTIFY_MAIL_JOB, NotifyMailHandler, Pacing, notify_mail};
use herald_queue::{Queue, Registry, Runner, RunnerConfig};
use herald_store::testing::each_backend;
use herald_store::{Db, Ts, exec, on_read};
use herald_testkit::{Failure, webhook};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// One mail as the SMTP server took it: the envelope's recipients and the message.
#[derive(Debug, Clone, Default)]
struct Received {
    rcpt: Vec<String>,
    data: String,
}

/// An SMTP server that takes every mail and keeps it.
async fn smtp_server() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let kept = inbox.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                let mut mail = Received::default();
                let _ = w.write_all(b"220 inbox.test ready\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-inbox.test\r\n250 8BITMIME\r\n"
                    } else if let Some(to) = upper.strip_prefix("RCPT TO:") {
                        mail.rcpt.push(to.trim_matches(['<', '>']).to_lowercase());
                        b"250 ok\r\n"
                    } else if upper == "DATA" {
                        let _ = w.write_all(b"354 go on\r\n").await;
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            mail.data.push_str(l.strip_prefix('.').unwrap_or(&l));
                            mail.data.push('\n');
                        }
                        kept.lock().unwrap().push(std::mem::take(&mut mail));
                        b"250 queued\r\n"
                    } else if upper == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (port, inbox)
}

/// Waits up to ten seconds for `$done` to hold.
macro_rules! wait_for {
    ($what:literal, $done:expr) => {{
        let mut ok = false;
        for _ in 0..400 {
            if $done {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(ok, "timed out waiting for {}", $what);
    }};
}

async fn count(db: &Db, sql: &'static str) -> i64 {
    on_read!(db, c => sqlx::query_scalar::<_, i64>(sql).fetch_one(c).await).unwrap()
}

/// Posts to both connections; the receiver refuses the one to `/bad` for good (400).
async fn failing_post(app: &App, owner: &Caller, fake: &herald_testkit::FakeServer<webhook::State>, targets: &Value) {
    fake.fail_next_on("/bad", Failure::Named("bad_request"));
    let (s, post) = app.post(owner, "/posts", json!({"text": "hello", "targets": targets})).await;
    assert_eq!(s, 201, "{post}");
}

#[tokio::test]
async fn failed_deliveries_are_mailed_once_to_owners_and_admins_and_a_storm_is_one_digest() {
    each_backend(|db| async move {
        let fake = webhook::start_with(None).await;
        let (port, inbox) = smtp_server().await;
        let config = AccountsConfig { public_url: Some("https://herald.example".into()), ..AccountsConfig::default() };
        let app = App::start_with(db.clone(), config).await;
        let (owner, _, _) = app.owner("owner@example.com").await;
        app.member(&owner, "admin@example.com", TeamRole::Admin).await;
        let (quiet, _) = app.member(&owner, "quiet@example.com", TeamRole::Admin).await;
        let (editor, _) = app.member(&owner, "editor@example.com", TeamRole::Editor).await;
        app.member(&owner, "viewer@example.com", TeamRole::Viewer).await;
        // One admin turns the mail off; the setting reads back.
        let (s, body) = app.call(&quiet, Method::PUT, "/notifications/settings", Some(json!({"email": false}))).await;
        assert_eq!((s, &body), (200, &json!({"email": false})));
        assert_eq!(app.get(&quiet, "/notifications/settings").await.1, json!({"email": false}));
        assert_eq!(app.get(&editor, "/notifications/settings").await.1, json!({"email": true}));
        // An API key has no mailbox; the routes are in the OpenAPI document.
        let (_, _, team) = app.owner("keyholder@example.com").await;
        let key = app.key(team, TeamRole::Owner).await;
        let (s, body) = app.call(&key, Method::PUT, "/notifications/settings", Some(json!({"email": false}))).await;
        assert_eq!((s, common::code(&body)), (422, "validation_failed"), "{body}");
        let doc = serde_json::to_value(herald_server::openapi()).unwrap();
        assert!(
            doc["paths"]["/notifications/settings"]["put"].is_object()
                && doc["paths"]["/notifications/settings"]["get"].is_object()
        );
        let mut targets = Vec::new();
        for name in ["ok", "bad"] {
            // Both share the host's pacing bucket (5/s by default): 64 deliveries would take
            // 13 s of waiting, which is not what this test is about.
            let settings = json!({"url": format!("{}/{name}", fake.url), "rate_per_second": 1000.0});
            let (s, c) = app
                .post(
                    &owner,
                    "/connections",
                    json!({"platform": "webhook", "name": name, "credentials": {}, "settings": settings}),
                )
                .await;
            assert_eq!(s, 201, "{c}");
            targets.push(json!({"connection_id": c["id"]}));
        }
        let targets = Value::Array(targets);

        let mut registry = Registry::default();
        registry.register(herald_posts::DELIVERY_JOB, DeliveryHandler::new(app.posts.clone()));
        let mailer = Mailer::parse(&format!("smtp://127.0.0.1:{port}"), "Herald <herald@example.org>").unwrap();
        registry.register(NOTIFY_MAIL_JOB, NotifyMailHandler::new(app.posts.clone(), mailer));
        let stop = CancellationToken::new();
        let config = RunnerConfig { poll_interval: Duration::from_millis(20), ..RunnerConfig::default() };
        let runner = tokio::spawn(Runner::new(Queue::new(db.clone()), registry, config).run(stop.clone()));
        let failed = "SELECT COUNT(*) FROM notifications WHERE kind = 'delivery.failed'";

        // Without SMTP nothing is enqueued: the failure is a notification only.
        notify_mail::enable(None);
        failing_post(&app, &owner, &fake, &targets).await;
        wait_for!("the first failure", count(&db, failed).await == 1);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM jobs WHERE kind = 'mail.notification'").await, 0);

        // With SMTP, one failure is one mail to the owner and the admin who wants it.
        notify_mail::enable(Some(Pacing { delay: Duration::from_millis(100), window: Duration::from_secs(3600) }));
        failing_post(&app, &owner, &fake, &targets).await;
        wait_for!("the first mail", inbox.lock().unwrap().len() == 1);
        let first = inbox.lock().unwrap()[0].clone();
        let mut rcpt = first.rcpt.clone();
        rcpt.sort();
        assert_eq!(rcpt, ["admin@example.com", "owner@example.com"]);
        assert!(first.data.contains("To: undisclosed-recipients:;"), "{}", first.data);
        assert!(!first.data.to_lowercase().contains("bcc:"), "recipients stay hidden: {}", first.data);
        assert!(first.data.contains("Subject: [Herald] 2 delivery.failed notifications in "), "{}", first.data);
        // Both failures so far are told: the one before SMTP was on is unread and unmailed too.
        assert!(first.data.contains("2 notifications of kind delivery.failed"), "{}", first.data);
        assert!(first.data.contains("https://herald.example/api/v1/posts/"), "{}", first.data);
        assert!(first.data.contains("PUT /api/v1/notifications/settings"), "{}", first.data);

        // A storm: thirty more failures in a row are held for the window, not mailed one by one.
        for _ in 0..30 {
            failing_post(&app, &owner, &fake, &targets).await;
        }
        wait_for!("the storm", count(&db, failed).await == 32);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(inbox.lock().unwrap().len(), 1, "no mail inside the window");
        let live = "SELECT COUNT(*) FROM jobs WHERE kind = 'mail.notification' AND state IN ('pending', 'running')";
        assert_eq!(count(&db, live).await, 1, "the storm joined the one waiting job");

        // An hour later (made now), the storm arrives as one digest.
        let mut tx = db.begin().await.unwrap();
        let hour_ago = Ts(chrono::Utc::now() - chrono::Duration::hours(1));
        exec!(tx, "UPDATE notifications SET mailed_at = $1 WHERE mailed_at IS NOT NULL", hour_ago).unwrap();
        exec!(tx, "UPDATE jobs SET run_at = $1 WHERE kind = 'mail.notification' AND state = 'pending'", hour_ago)
            .unwrap();
        tx.commit().await.unwrap();
        wait_for!("the digest", inbox.lock().unwrap().len() == 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mails = inbox.lock().unwrap().clone();
        assert_eq!(mails.len(), 2, "one digest, not thirty mails");
        assert!(mails[1].data.contains("Subject: [Herald] 30 delivery.failed notifications in "), "{}", mails[1].data);
        assert!(mails[1].data.contains("and 10 more"), "{}", mails[1].data);
        assert_eq!(mails[1].rcpt.len(), 2);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM notifications WHERE mailed_at IS NULL").await, 0);

        notify_mail::enable(None);
        stop.cancel();
        runner.await.unwrap();
    })
    .await;
}

//! Sources over HTTP: the full WebSub lifecycle against a fake of Google's hub and YouTube, signed
//! inbound webhooks (signatures, replays, timestamps, 413/415), and a feed polled through the API.

mod common;

use common::{App, Caller, code};
use herald_queue::{JobError, Queue, Registry, Runner, RunnerConfig};
use herald_store::testing::each_backend;
use herald_testkit::youtube::{self, Video};
use herald_triggers::{EventSink, EventView};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CHANNEL: &str = "UCabcdefghijklmnopqrstuv";

/// Records what the `source.event` jobs hand on.
#[derive(Default)]
struct Seen(Mutex<Vec<EventView>>);

#[async_trait::async_trait]
impl EventSink for Seen {
    async fn event(&self, _team: Uuid, event: &EventView) -> Result<(), JobError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

fn workers(app: &App, seen: Arc<Seen>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut registry = Registry::default();
    registry
        .register(herald_triggers::WEBSUB_JOB, herald_triggers::WebSubHandler::new(app.sources.clone()))
        .register(herald_triggers::EVENT_JOB, herald_triggers::EventDispatcher::new(app.sources.clone(), seen));
    let stop = CancellationToken::new();
    let config = RunnerConfig { poll_interval: Duration::from_millis(50), ..RunnerConfig::default() };
    (stop.clone(), tokio::spawn(Runner::new(Queue::new(app.db.clone()), registry, config).run(stop)))
}

async fn until<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn events(app: &App, who: &Caller, source: &str) -> Vec<Value> {
    let (s, page) = app.get(who, &format!("/events?source={source}")).await;
    assert_eq!(s, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn websub_lifecycle_subscribe_verify_notify_edit_delete_renew_unsubscribe() {
    each_backend(|db| async move {
        let fake = youtube::start().await;
        fake.add_channel(CHANNEL, "@chan", "The Channel");
        let video = |id: &str, title: &str| Video { description: format!("About {title}"), ..Video::new(id, title) };
        // No description: YouTube then sends an empty <media:description/>, which must not break the feed.
        let mut old = Video::new("OLDvideo001", "An old upload");
        old.published = chrono::Utc::now() - chrono::TimeDelta::days(300);
        fake.add_video(CHANNEL, old);
        // A short lease, so the renewal (at 80 %) happens during the test.
        fake.set_max_lease(4);
        let (hub, yt) = (fake.hub_url(), fake.url.clone());
        let app = App::start_with_triggers(db, |c| {
            c.websub_hub = hub;
            c.youtube_base = yt;
        })
        .await;
        let seen = Arc::new(Seen::default());
        let (stop, runner) = workers(&app, seen.clone());
        let (owner, _, _) = app.owner("o@example.com").await;

        // Created by handle: resolved to the channel id, and a subscription is asked for.
        let (s, src) = app
            .post(&owner, "/sources", json!({"kind": "youtube_channel", "name": "yt", "config": {"channel": "@chan"}}))
            .await;
        assert_eq!(s, 201, "{src}");
        assert_eq!(src["config"]["channel_id"], json!(CHANNEL));
        assert_eq!(src["status"]["websub"]["state"], json!("pending"));
        let id = src["id"].as_str().unwrap().to_string();
        assert!(fake.wait_for_verifications(1, Duration::from_secs(10)).await, "no verification arrived");
        let v = &fake.verifications()[0];
        assert!(v.verified, "the callback must echo the challenge: {v:?}");
        let sub = fake.subscriptions().into_iter().find(|s| s.active).expect("an active subscription");
        assert_eq!(sub.topic, youtube::FakeYouTube::topic(CHANNEL));
        assert!(sub.secret.as_deref().is_some_and(|s| !s.is_empty() && s.len() < 200));
        let request = &fake.hub_requests()[0];
        assert_eq!(request.param("hub.mode"), Some("subscribe"));
        assert_eq!(request.param("hub.callback"), Some(format!("{}/hooks/websub/{id}", app.base).as_str()));
        let (_, src) = app.get(&owner, &format!("/sources/{id}")).await;
        assert_eq!(src["status"]["websub"]["state"], json!("subscribed"), "{src}");
        assert!(src["status"]["websub"]["lease_expires_at"].is_string());

        // The first poll remembers what exists and triggers nothing.
        let (s, report) = app.post(&owner, &format!("/sources/{id}/poll"), json!({})).await;
        assert_eq!(s, 200, "{report}");
        assert_eq!(
            (report["items"].clone(), report["new_events"].clone(), report["remembered"].clone()),
            (json!(1), json!(0), json!(1)),
            "{report}"
        );

        // A new upload is pushed: one event, handed on.
        fake.add_video(CHANNEL, video("NEWvideo001", "Brand new"));
        let answers = fake.notify_video(CHANNEL, "NEWvideo001").await;
        assert_eq!(answers.len(), 1);
        assert!((200..300).contains(&answers[0].1), "{answers:?}");
        let list = events(&app, &owner, &id).await;
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["kind"], json!("item.new"));
        assert_eq!(list[0]["external_id"], json!("yt:NEWvideo001"));
        assert_eq!(list[0]["data"]["video"]["title"], json!("Brand new"));
        assert_eq!(list[0]["data"]["channel"]["id"], json!(CHANNEL));
        until("the event to be handed on", || seen.0.lock().unwrap().len() == 1).await;

        // A title edit pushes the same video again: no second event, the stored title changes.
        fake.edit_video(CHANNEL, "NEWvideo001", |v| v.title = "Brand new (edited)".into());
        fake.notify_video(CHANNEL, "NEWvideo001").await;
        let list = events(&app, &owner, &id).await;
        assert_eq!(list.len(), 1, "an edit must not make a second event: {list:?}");
        assert_eq!(list[0]["data"]["video"]["title"], json!("Brand new (edited)"));
        assert!(list[0]["updated_at"].is_string());

        // Bad and missing signatures: 2xx, dropped, and a security event in the audit log.
        fake.add_video(CHANNEL, video("FORGEDvid01", "Forged"));
        let body = youtube::push_body(CHANNEL, "The Channel", &video("FORGEDvid01", "Forged"));
        let callback = format!("{}/hooks/websub/{id}", app.base);
        let status =
            fake.publish_raw(&callback, &body, Some("sha1=0000000000000000000000000000000000000000".into())).await;
        assert!((200..300).contains(&status), "a bad signature still gets 2xx, got {status}");
        let status = fake.publish_raw(&callback, &body, None).await;
        assert!((200..300).contains(&status), "a missing signature still gets 2xx, got {status}");
        assert_eq!(events(&app, &owner, &id).await.len(), 1, "forged pushes must not make events");
        let (_, audit) = app.get(&owner, "/audit").await;
        let rejected = audit.to_string().matches("websub.signature_rejected").count();
        assert_eq!(rejected, 2, "{audit}");

        // A deleted video: recorded, no post-making event handed on.
        fake.notify_deleted(CHANNEL, "NEWvideo001").await;
        let list = events(&app, &owner, &id).await;
        assert_eq!(list.iter().filter(|e| e["kind"] == json!("video.deleted")).count(), 1, "{list:?}");
        assert_eq!(list.iter().filter(|e| e["kind"] == json!("item.new")).count(), 1);

        // The poll sees the pushed video too, and does not double it.
        let (_, report) = app.post(&owner, &format!("/sources/{id}/poll"), json!({})).await;
        assert_eq!(report["new_events"], json!(1), "only the forged upload is new to the poll: {report}");
        let list = events(&app, &owner, &id).await;
        assert_eq!(list.iter().filter(|e| e["external_id"] == json!("yt:NEWvideo001")).count(), 1);

        // The 4 s lease is renewed by the durable job at 80 %.
        assert!(fake.wait_for_verifications(2, Duration::from_secs(10)).await, "the lease was not renewed");
        assert!(fake.verifications().iter().all(|v| v.verified));

        // A verification for another topic, or an unknown source, is refused.
        let http = herald_http::HttpClient::trusted().unwrap();
        let wrong = format!(
            "{callback}?hub.mode=subscribe&hub.topic=https://example.com/x&hub.challenge=abc&hub.lease_seconds=100"
        );
        assert_eq!(http.get(&wrong).send().await.unwrap().status(), 404);
        let unknown = format!(
            "{}/hooks/websub/{}?hub.mode=subscribe&hub.topic={}&hub.challenge=abc",
            app.base,
            Uuid::now_v7(),
            youtube::FakeYouTube::topic(CHANNEL)
        );
        assert_eq!(http.get(&unknown).send().await.unwrap().status(), 404);

        // Deleting unsubscribes at the hub; the row goes once the hub confirms.
        let (s, _) = app.call(&owner, herald_http::Method::DELETE, &format!("/sources/{id}"), None).await;
        assert_eq!(s, 200);
        assert_eq!(app.get(&owner, &format!("/sources/{id}")).await.0, 404);
        until("the unsubscribe request", || {
            fake.hub_requests().iter().any(|r| r.param("hub.mode") == Some("unsubscribe"))
        })
        .await;
        until("the unsubscribe verification", || {
            fake.verifications().iter().any(|v| v.mode == "unsubscribe" && v.verified)
        })
        .await;
        assert!(fake.subscriptions().iter().all(|s| !s.active), "{:?}", fake.subscriptions());
        let gone: Option<(Uuid,)> =
            herald_store::on_read!(app.db, c => sqlx::query_as("SELECT id FROM sources WHERE id = $1")
            .bind(Uuid::parse_str(&id).unwrap()).fetch_optional(c).await)
            .unwrap();
        assert!(gone.is_none(), "the source row should be gone after the hub confirmed");
        // A late push for it is told to stop.
        assert_eq!(fake.publish_raw(&callback, &body, None).await, 410);
        stop.cancel();
        runner.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn without_a_reachable_public_url_a_channel_is_polled_only() {
    each_backend(|db| async move {
        // The default hub is Google's, which cannot reach a loopback HERALD_PUBLIC_URL.
        let app = App::start(db).await;
        let (owner, _, _) = app.owner("o@example.com").await;
        let (s, src) = app
            .post(&owner, "/sources", json!({"kind": "youtube_channel", "name": "yt", "config": {"channel": format!("https://www.youtube.com/channel/{CHANNEL}")}}))
            .await;
        assert_eq!(s, 201, "{src}");
        assert_eq!(src["status"]["websub"]["state"], json!("unavailable"));
        let note = src["status"]["websub"]["note"].as_str().unwrap();
        assert!(note.contains("HERALD_PUBLIC_URL") && note.contains("polled only"), "{note}");
        assert!(src["status"]["next_run_at"].is_string(), "it is still polled: {src}");
        let jobs: (i64,) = herald_store::on_read!(app.db, c => sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE kind = $1")
            .bind(herald_triggers::WEBSUB_JOB).fetch_one(c).await)
        .unwrap();
        assert_eq!(jobs.0, 0, "no subscription is attempted");
        // A bad channel is a clear 422.
        let (s, e) = app.post(&owner, "/sources", json!({"kind": "youtube_channel", "name": "x", "config": {"channel": "https://evil.example/@x"}})).await;
        assert_eq!((s, code(&e)), (422, "validation_failed"), "{e}");
    })
    .await;
}

fn standard_headers(secret: &str, id: &str, ts: i64, body: &str) -> Vec<(String, String)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mac = herald_testkit::webhook::hmac_sha256(&key, format!("{id}.{ts}.{body}").as_bytes());
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.to_string()),
        ("webhook-signature".into(), format!("v1,{}", b64.encode(mac))),
    ]
}

async fn send(app: &App, id: &str, content_type: &str, headers: &[(String, String)], body: &str) -> (u16, Value) {
    let http = herald_http::HttpClient::trusted().unwrap();
    let mut req =
        http.post(&format!("{}/hooks/in/{id}", app.base)).header("content-type", content_type).body(body.to_string());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn inbound_webhooks_verify_signatures_refuse_replays_and_stale_timestamps() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (owner, _, _) = app.owner("o@example.com").await;
        let (s, src) =
            app.post(&owner, "/sources", json!({"kind": "webhook", "name": "in", "config": {"max_bytes": 2048}})).await;
        assert_eq!(s, 201, "{src}");
        let id = src["id"].as_str().unwrap().to_string();
        let secret = src["secret"].as_str().unwrap().to_string();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(src["hook_url"], json!(format!("{}/hooks/in/{id}", app.base)));
        // The secret is shown once.
        let (_, again) = app.get(&owner, &format!("/sources/{id}")).await;
        assert!(again.get("secret").is_none(), "{again}");

        let now = chrono::Utc::now().timestamp();
        let body = r#"{"title":"hello","url":"https://example.com/1"}"#;
        let good = standard_headers(&secret, "msg_1", now, body);
        let (s, r) = send(&app, &id, "application/json", &good, body).await;
        assert_eq!(s, 202, "{r}");
        // The same webhook-id again: acknowledged, not processed.
        let (s, r) = send(&app, &id, "application/json", &good, body).await;
        assert_eq!((s, r["status"].clone()), (200, json!("duplicate")));
        let list = events(&app, &owner, &id).await;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["data"]["title"], json!("hello"));
        assert_eq!(list[0]["kind"], json!("webhook.received"));

        // Six minutes old, or in the future: refused.
        let stale = standard_headers(&secret, "msg_2", now - 360, body);
        let (s, r) = send(&app, &id, "application/json", &stale, body).await;
        assert_eq!((s, code(&r)), (401, "webhook_signature_invalid"), "{r}");
        let future = standard_headers(&secret, "msg_3", now + 360, body);
        assert_eq!(send(&app, &id, "application/json", &future, body).await.0, 401);
        // Signed with another secret, or a tampered body.
        let forged = standard_headers("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_4", now, body);
        assert_eq!(send(&app, &id, "application/json", &forged, body).await.0, 401);
        let tampered = standard_headers(&secret, "msg_5", now, body);
        assert_eq!(send(&app, &id, "application/json", &tampered, &body.replace("hello", "HELLO")).await.0, 401);
        assert_eq!(send(&app, &id, "application/json", &[], body).await.0, 401, "no signature at all");
        // Not JSON: 415. Over the cap: 413 before any signature check.
        let (s, r) = send(&app, &id, "text/plain", &good, body).await;
        assert_eq!((s, code(&r)), (415, "unsupported_media_type"));
        let (s, r) = send(&app, &id, "application/json", &[], &format!("{{\"x\":\"{}\"}}", "a".repeat(3000))).await;
        assert_eq!((s, code(&r)), (413, "payload_too_large"));
        // Signed, but not JSON inside.
        let broken = "{not json";
        let (s, r) =
            send(&app, &id, "application/json", &standard_headers(&secret, "msg_6", now, broken), broken).await;
        assert_eq!((s, code(&r)), (400, "bad_request"), "{r}");
        assert_eq!(events(&app, &owner, &id).await.len(), 1, "nothing refused was stored");
        // An unknown address.
        assert_eq!(send(&app, &Uuid::now_v7().to_string(), "application/json", &good, body).await.0, 404);

        // Plain HMAC mode: X-Hub-Signature-256 over the raw body; a replay of the body is a repeat.
        let (s, src) =
            app.post(&owner, "/sources", json!({"kind": "webhook", "name": "gh", "config": {"verify": "hmac"}})).await;
        assert_eq!(s, 201, "{src}");
        let id2 = src["id"].as_str().unwrap().to_string();
        let secret2 = src["secret"].as_str().unwrap().to_string();
        let sig = format!(
            "sha256={}",
            youtube::hex(&herald_testkit::webhook::hmac_sha256(secret2.as_bytes(), body.as_bytes()))
        );
        let h = vec![("x-hub-signature-256".to_string(), sig)];
        assert_eq!(send(&app, &id2, "application/json", &h, body).await.0, 202);
        assert_eq!(send(&app, &id2, "application/json", &h, body).await.0, 200);
        let bad = vec![("x-hub-signature-256".to_string(), "sha256=00".to_string())];
        assert_eq!(send(&app, &id2, "application/json", &bad, body).await.0, 401);
        assert_eq!(events(&app, &owner, &id2).await.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn manual_events_and_a_feed_through_the_api() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (owner, _, _) = app.owner("o@example.com").await;
        // SSRF: a metadata address is refused at creation.
        let (s, e) = app
            .post(
                &owner,
                "/sources",
                json!({"kind": "feed", "name": "x", "config": {"url": "http://169.254.169.254/latest"}}),
            )
            .await;
        assert_eq!(s, 422, "{e}");
        // Settings of another kind are named.
        let (s, e) = app
            .post(
                &owner,
                "/sources",
                json!({"kind": "feed", "name": "x", "config": {"url": "https://example.com/f", "cron": "* * * * *"}}),
            )
            .await;
        assert_eq!(s, 422);
        assert_eq!(e["error"]["details"]["field"], json!("config.cron"), "{e}");

        let (s, src) = app.post(&owner, "/sources", json!({"kind": "manual", "name": "m"})).await;
        assert_eq!(s, 201, "{src}");
        let id = src["id"].as_str().unwrap();
        let (s, ev) = app
            .post(&owner, &format!("/sources/{id}/events"), json!({"external_id": "a-1", "data": {"text": "hi"}}))
            .await;
        assert_eq!(s, 201, "{ev}");
        let (s, e) =
            app.post(&owner, &format!("/sources/{id}/events"), json!({"external_id": "a-1", "data": {}})).await;
        assert_eq!((s, code(&e)), (409, "conflict"));
        let (s, got) = app.get(&owner, &format!("/events/{}", ev["id"].as_str().unwrap())).await;
        assert_eq!((s, got["data"]["text"].clone()), (200, json!("hi")));
        let (_, src) = app.get(&owner, &format!("/sources/{id}")).await;
        assert_eq!(src["status"]["event_count"], json!(1));
        // Polling is for feeds and channels.
        let (s, _) = app.post(&owner, &format!("/sources/{id}/poll"), json!({})).await;
        assert_eq!(s, 422);
        // Filters and pages.
        for n in 0..3 {
            app.post(&owner, &format!("/sources/{id}/events"), json!({"data": {"n": n}})).await;
        }
        let (_, page) = app.get(&owner, "/events?limit=2&kind=manual").await;
        assert_eq!(page["events"].as_array().unwrap().len(), 2);
        let cursor = page["next_cursor"].as_str().unwrap();
        let (_, rest) = app.get(&owner, &format!("/events?limit=2&cursor={cursor}")).await;
        assert_eq!(rest["events"].as_array().unwrap().len(), 2);
        assert!(rest["next_cursor"].is_null());
        let (_, none) = app.get(&owner, "/events?kind=item.new").await;
        assert_eq!(none["events"], json!([]));

        // A schedule validates its cron and timezone, and defaults to the team's zone.
        let (s, e) = app
            .post(&owner, "/sources", json!({"kind": "schedule", "name": "s", "config": {"cron": "every day"}}))
            .await;
        assert_eq!(s, 422, "{e}");
        let (s, e) = app
            .post(
                &owner,
                "/sources",
                json!({"kind": "schedule", "name": "s", "config": {"cron": "0 9 * * *", "timezone": "Mars/Base"}}),
            )
            .await;
        assert_eq!(s, 422, "{e}");
        let (s, sched) = app
            .post(&owner, "/sources", json!({"kind": "schedule", "name": "s", "config": {"cron": "0 9 * * *"}}))
            .await;
        assert_eq!(s, 201, "{sched}");
        assert_eq!(sched["config"]["timezone"], json!("UTC"));
        assert_eq!(sched["config"]["missed"], json!("run_once"));
        let next: chrono::DateTime<chrono::Utc> = sched["status"]["next_run_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(next.format("%H:%M").to_string(), "09:00");
    })
    .await;
}

//! The generic webhook adapter against the fake receiver, which checks Standard Webhooks
//! signatures with its own HMAC-SHA256: signing, the ping, the payload, each status class, the
//! SSRF guard, de-duplication on webhook-id, pacing.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use herald_platforms::webhook::{self, Webhook};
use herald_platforms::{Adapter, Connection, ErrorClass, Media, MediaKind, Outgoing, PlatformError, idempotency_key};
use herald_testkit::webhook::{Answer, SECRET, State, hmac_sha256, start, start_with};
use herald_testkit::{Failure, FakeServer};
use serde_json::json;
use std::time::Duration;

fn conn(fake: &FakeServer<State>) -> Connection {
    common::connection(json!({ "url": format!("{}/hooks/herald", fake.url) }), json!({ "secret": SECRET }))
}

fn key() -> String {
    idempotency_key(uuid::Uuid::now_v7())
}

fn no_secret(e: &PlatformError) {
    assert!(!e.to_string().contains(SECRET) && !format!("{e:?}").contains(SECRET), "the secret leaked into {e}");
}

#[test]
fn signatures_match_the_standard_webhooks_example() {
    // standard-webhooks/libraries/go/webhook_test.go, TestWebhookSign.
    let sig = webhook::sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        br#"{"test": 2432232314}"#,
    )
    .unwrap();
    assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    // The bare base64 works as the spec's libraries accept it.
    let bare = webhook::sign(
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(bare.unwrap(), sig);
    let e = webhook::sign("whsec_not base64!", "id", 1, b"{}").unwrap_err();
    assert_eq!(e.code.as_deref(), Some("bad_credentials"));
    assert!(!e.to_string().contains("not base64!"));
}

#[tokio::test]
async fn verify_sends_a_signed_ping() {
    let fake = start().await;
    let c = conn(&fake);
    let v = Webhook.verify(&common::net(), &c).await.unwrap();
    assert_eq!(v.account, fake.url.trim_start_matches("http://"));
    assert_eq!(v.credentials, c.credentials, "a given secret is kept");

    let d = fake.data();
    assert!(d.rejected.is_empty(), "{:?}", d.rejected);
    let ping = &d.deliveries[0];
    assert_eq!(ping.path, "/hooks/herald");
    assert_eq!(ping.body["type"], json!("herald.ping"));
    assert!(ping.id.starts_with("herald-ping-"));
}

#[tokio::test]
async fn verify_without_a_secret_makes_one_that_then_signs() {
    // A receiver not configured yet takes the ping unsigned.
    let open = start_with(None).await;
    let mut c = conn(&open);
    c.credentials.0 = json!({});
    let v = Webhook.verify(&common::net(), &c).await.unwrap();
    let secret = v.credentials.0["secret"].as_str().unwrap().to_string();
    let raw = B64.decode(secret.strip_prefix("whsec_").expect("whsec_ prefix")).unwrap();
    assert_eq!(raw.len(), 32);
    assert_ne!(secret, webhook::generate_secret(), "each secret is new");

    // A receiver given that secret accepts what Herald signs with it.
    let strict = start_with(Some(&secret)).await;
    let mut c = conn(&strict);
    c.credentials = v.credentials.clone();
    Webhook.publish(&common::net(), &c, &Outgoing::text("hi", key())).await.unwrap();
    assert_eq!(strict.data().deliveries.len(), 1);
}

#[tokio::test]
async fn a_wrong_secret_is_auth() {
    let fake = start().await;
    let mut c = conn(&fake);
    let other = webhook::generate_secret();
    c.credentials.0 = json!({ "secret": other });
    let e = Webhook.verify(&common::net(), &c).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Auth, Some(401)));
    assert!(!e.to_string().contains(&other));
    assert_eq!(fake.data().rejected, vec!["no signature matches".to_string()]);
    assert!(fake.data().deliveries.is_empty());
}

#[tokio::test]
async fn a_stale_timestamp_is_refused_by_the_receiver() {
    let fake = start().await;
    fake.data().tolerance_secs = -1;
    let e = Webhook.publish(&common::net(), &conn(&fake), &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Auth);
    assert!(fake.data().rejected[0].contains("from now"));
}

#[tokio::test]
async fn publish_posts_the_event_signed_with_the_delivery_key() {
    let fake = start().await;
    let mut c = conn(&fake);
    c.settings["headers"] = json!({ "X-Team": "marketing" });
    let mut post = Outgoing::text("Hello webhook", key());
    post.link = Some("https://example.com/a".into());
    post.reply_to = Some("evt_0".into());
    post.options = json!({ "channel": "news" });
    post.media = vec![Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: "a.png".into(),
        bytes: bytes::Bytes::from_static(b"png bytes"),
        alt: None,
        url: None,
    }];
    let before = chrono::Utc::now().timestamp();
    let p = Webhook.publish(&common::net(), &c, &post).await.unwrap();
    assert_eq!(p.id, "evt_1");
    assert_eq!(p.url, Some(format!("{}/events/evt_1", fake.url)));

    let d = fake.data();
    let got = &d.deliveries[0];
    assert_eq!(got.id, post.idempotency_key);
    assert!((before..=before + 2).contains(&got.timestamp));
    assert_eq!(got.headers.get("x-team").unwrap(), "marketing");
    assert_eq!(got.headers.get("content-type").unwrap(), "application/json");
    // Recompute the signature independently over the exact bytes sent.
    let key = B64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let mut signed = format!("{}.{}.", got.id, got.timestamp).into_bytes();
    signed.extend_from_slice(&got.raw);
    assert_eq!(got.signature, format!("v1,{}", B64.encode(hmac_sha256(&key, &signed))));

    let body = &got.body;
    assert_eq!(body["type"], json!("post.published"));
    let ts = chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(ts.timestamp_micros(), post.created_at.timestamp_micros());
    assert_eq!(
        body["data"],
        json!({
            "text": "Hello webhook",
            "link": "https://example.com/a",
            "media": [{ "filename": "a.png", "mime": "image/png", "bytes": B64.encode(b"png bytes") }],
            "reply_to": "evt_0",
            "options": { "channel": "news" },
            "idempotency_key": post.idempotency_key,
        })
    );
}

#[tokio::test]
async fn without_an_id_in_the_answer_the_webhook_id_is_the_result() {
    let fake = start().await;
    fake.data().answer = Answer::Empty;
    let post = Outgoing::text("hi", key());
    let p = Webhook.publish(&common::net(), &conn(&fake), &post).await.unwrap();
    assert_eq!((p.id.as_str(), p.url), (post.idempotency_key.as_str(), None));
}

#[tokio::test]
async fn credential_headers_and_a_missing_secret_are_refused_before_sending() {
    let fake = start().await;
    let net = common::net();
    for name in ["Authorization", "X-Api-Key", "Cookie", "webhook-signature"] {
        let mut c = conn(&fake);
        c.settings["headers"] = json!({ name: "Bearer sk_live_123" });
        let e = Webhook.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
        assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_settings")), "{name}");
        assert!(!e.to_string().contains("sk_live_123"));
    }
    let mut c = conn(&fake);
    c.credentials.0 = json!({});
    let e = Webhook.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("bad_credentials"));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn each_status_lands_in_its_class() {
    let fake = start().await;
    let net = common::net();
    let c = conn(&fake);
    let cases = [
        (Failure::Named("gone"), ErrorClass::Auth, 410),
        (Failure::Unauthorized, ErrorClass::Auth, 401),
        (Failure::Named("forbidden"), ErrorClass::Auth, 403),
        (Failure::Named("bad_request"), ErrorClass::Invalid, 400),
        (Failure::ServerError(500), ErrorClass::Transient, 500),
        (Failure::ServerError(502), ErrorClass::Transient, 502),
    ];
    for (failure, class, status) in cases {
        fake.fail_next(failure.clone());
        let e = Webhook.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
        assert_eq!((e.class, e.status), (class, Some(status)), "{failure:?}");
        no_secret(&e);
        assert!(!e.to_string().contains("/hooks/herald"), "the URL path may be a secret: {e}");
    }
    fake.fail_next(Failure::Named("gone"));
    let e = Webhook.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("gone"));
    fake.fail_next(Failure::Named("bad_request"));
    let e = Webhook.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert!(e.message.contains("unsupported event type"), "the receiver's words: {e}");

    fake.fail_next(Failure::RateLimited { retry_after_secs: 3 });
    let e = Webhook.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.retry_after), (ErrorClass::RateLimited, Some(Duration::from_secs(3))));
    assert!(fake.data().deliveries.is_empty());
}

#[tokio::test]
async fn a_private_destination_is_blocked() {
    let fake = start().await;
    let e = Webhook.verify(&common::strict_net(), &conn(&fake)).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("ssrf_blocked_destination")));
    let e = Webhook.publish(&common::strict_net(), &conn(&fake), &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("ssrf_blocked_destination"));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_resent_and_the_receiver_keeps_one() {
    let fake = start().await;
    let net = common::net();
    let c = conn(&fake);
    let post = Outgoing::text("exactly once", key());

    fake.fail_next(Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = Webhook.publish(&net, &c, &post).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "webhook-id makes a resend safe: {e}");

    let again = Webhook.publish(&net, &c, &post).await.unwrap();
    assert_eq!(again.id, "evt_1", "the receiver answered the resend with the first delivery");
    assert_eq!(fake.requests().len(), 2);
    let d = fake.data();
    assert_eq!(d.deliveries.len(), 1);
    assert!(d.rejected.is_empty(), "the resend was freshly signed: {:?}", d.rejected);
}

#[test]
fn pacing_is_per_receiver_host() {
    let c = common::connection(json!({ "url": "https://hooks.example.com/T0/B0/xyz" }), json!({}));
    let p = Webhook.pacing(&c).unwrap();
    assert_eq!((p.bucket.as_str(), p.capacity, p.per_second), ("webhook:hooks.example.com", 10.0, 5.0));
}

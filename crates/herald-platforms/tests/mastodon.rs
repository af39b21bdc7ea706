//! The Mastodon adapter against the fake instance: verify with the instance's limits, statuses
//! with their Idempotency-Key, media processing, each error class, pacing.

mod common;

use herald_core::platforms::{Content, Counting, validate};
use herald_platforms::mastodon::{self, Mastodon};
use herald_platforms::{Adapter, Connection, ErrorClass, Media, MediaKind, Outgoing, PlatformError, idempotency_key};
use herald_testkit::mastodon::{Config, TOKEN, start, start_with};
use herald_testkit::{Failure, FakeServer};
use serde_json::json;
use std::time::Duration;

fn conn(fake: &FakeServer<herald_testkit::mastodon::State>) -> Connection {
    common::connection(json!({ "instance_url": format!("{}/", fake.url) }), json!({ "access_token": TOKEN }))
}

fn key() -> String {
    idempotency_key(uuid::Uuid::now_v7())
}

fn image(alt: Option<&str>) -> Media {
    Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: "cat.png".into(),
        bytes: bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\nfake image"),
        alt: alt.map(str::to_string),
        url: None,
    }
}

fn video() -> Media {
    Media {
        kind: MediaKind::Video,
        mime: "video/mp4".into(),
        filename: "clip.mp4".into(),
        bytes: bytes::Bytes::from_static(b"\0\0\0\x18ftypmp42 fake video"),
        alt: None,
        url: None,
    }
}

/// The error's Display never shows the token.
fn no_secret(e: &PlatformError) {
    assert!(!e.to_string().contains(TOKEN), "the token leaked into {e}");
    assert!(!format!("{e:?}").contains(TOKEN), "the token leaked into {e:?}");
}

#[tokio::test]
async fn verify_names_the_account_and_keeps_the_instance_limits() {
    let fake = start_with(Config { max_characters: 1000, characters_reserved_per_url: 30, ..Config::default() }).await;
    let net = common::net();
    let v = Mastodon.verify(&net, &conn(&fake)).await.unwrap();

    assert_eq!(v.account, "@herald@fake.social");
    assert_eq!(v.settings["instance_url"], json!(fake.url), "the trailing slash is gone");
    assert_eq!(v.settings["account_id"], json!("109000000000000001"));
    let limits = &v.settings["limits"];
    assert_eq!(limits["max_characters"], json!(1000));
    assert_eq!(limits["characters_reserved_per_url"], json!(30));
    assert_eq!(limits["max_media_attachments"], json!(4));
    assert_eq!(limits["image_size_limit"], json!(16_777_216));
    assert_eq!(limits["video_size_limit"], json!(103_809_024));
    let verify = fake.requests_to("/api/v1/accounts/verify_credentials");
    assert_eq!(verify[0].header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));

    // The posts pipeline validates against the instance's own limit.
    let limit = mastodon::text_limit(&v.settings);
    assert_eq!(limit.max, 1000);
    assert_eq!(limit.counting, Counting::CharsUrlsFixed { url_weight: 30 });
    let p = mastodon::platform_for(&v.settings);
    let text = |t: String| Content { text: t, media: vec![] };
    assert!(validate(&p, &text("a".repeat(1000))).is_empty(), "1000 fits on this instance");
    assert_eq!(validate(&p, &text("a".repeat(1001)))[0].limit, 1000);
    // Without stored limits, stock Mastodon's.
    assert_eq!(mastodon::text_limit(&json!({ "instance_url": "https://x.y" })).max, 500);
}

#[tokio::test]
async fn verify_with_a_bad_token_is_auth() {
    let fake = start().await;
    let mut c = conn(&fake);
    c.credentials.0 = json!({ "access_token": "revoked-token" });
    let e = Mastodon.verify(&common::net(), &c).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Auth, Some(401)));
    assert_eq!(e.message, "The access token is invalid");
    assert!(!e.to_string().contains("revoked-token"));
}

#[tokio::test]
async fn a_private_instance_url_is_refused_by_the_guard() {
    let fake = start().await;
    let e = Mastodon.verify(&common::strict_net(), &conn(&fake)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Invalid);
    assert_eq!(e.code.as_deref(), Some("ssrf_blocked_destination"));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn publish_posts_text_with_its_key_link_reply_and_options() {
    let fake = start().await;
    let net = common::net();
    let mut c = conn(&fake);
    c.settings["visibility"] = json!("unlisted");
    c.settings["language"] = json!("de");

    let first = Mastodon.publish(&net, &c, &Outgoing::text("Hallo Welt", key())).await.unwrap();
    let mut post = Outgoing::text("Mehr dazu", key());
    post.link = Some("https://example.com/article".into());
    post.reply_to = Some(first.id.clone());
    post.options = json!({ "spoiler_text": "Spoiler", "sensitive": true });
    let second = Mastodon.publish(&net, &c, &post).await.unwrap();

    assert_eq!(second.url.as_deref(), Some(format!("{}/@herald/{}", fake.url, second.id).as_str()));
    let sent = fake.requests_to("/api/v1/statuses");
    assert_eq!(sent[1].header("idempotency-key"), Some(post.idempotency_key.as_str()));
    assert_eq!(
        sent[1].json(),
        json!({
            "status": "Mehr dazu\n\nhttps://example.com/article",
            "visibility": "unlisted",
            "language": "de",
            "in_reply_to_id": first.id,
            "spoiler_text": "Spoiler",
            "sensitive": true,
        })
    );
    {
        let d = fake.data();
        assert_eq!(d.statuses.len(), 2);
        assert_eq!(d.statuses[1].in_reply_to_id.as_deref(), Some(first.id.as_str()));
        assert_eq!(d.statuses[1].visibility, "unlisted");
    }

    // A link the text already carries is not repeated; an option overrides the setting.
    let mut post = Outgoing::text("Read https://example.com/article now", key());
    post.link = Some("https://example.com/article".into());
    post.options = json!({ "visibility": "direct" });
    Mastodon.publish(&net, &c, &post).await.unwrap();
    let d = fake.data();
    assert_eq!(d.statuses[2].text, "Read https://example.com/article now");
    assert_eq!(d.statuses[2].visibility, "direct");
}

#[tokio::test]
async fn a_bad_visibility_is_refused_before_any_call() {
    let fake = start().await;
    let mut c = conn(&fake);
    c.settings["visibility"] = json!("everyone");
    let e = Mastodon.publish(&common::net(), &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_settings")));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn images_and_videos_are_attached_once_processed() {
    let fake = start_with(Config { processing_polls: 2, ..Config::default() }).await;
    let mut post = Outgoing::text("Look", key());
    post.media = vec![image(Some("A cat on a mat")), video()];
    let published = Mastodon.publish(&common::net(), &conn(&fake), &post).await.unwrap();

    let uploads = fake.requests_to("/api/v2/media");
    assert_eq!(uploads.len(), 2);
    let first = uploads[0].body_text();
    assert!(first.contains("name=\"file\"; filename=\"cat.png\""), "{first}");
    assert!(first.contains("Content-Type: image/png"));
    assert!(first.contains("name=\"description\"") && first.contains("A cat on a mat"));
    // The image was ready at once (200); the video answered 202, then 206 twice, then 200.
    let d = fake.data();
    let (img, vid) = (d.media[0].clone(), d.media[1].clone());
    assert_eq!(fake.requests_to(&format!("/api/v1/media/{}", img.id)).len(), 0);
    assert_eq!(fake.requests_to(&format!("/api/v1/media/{}", vid.id)).len(), 3);
    let status = d.statuses.iter().find(|s| s.id == published.id).unwrap();
    assert_eq!(status.media_ids, vec![img.id, vid.id]);
    assert_eq!(status.text, "Look");
}

#[tokio::test]
async fn images_processed_asynchronously_are_polled_too() {
    let fake = start_with(Config { async_images: true, ..Config::default() }).await;
    let mut post = Outgoing::text("", key());
    post.media = vec![image(None)];
    Mastodon.publish(&common::net(), &conn(&fake), &post).await.unwrap();
    let polls = fake.requests_to("/api/v1/media/");
    assert_eq!(polls.len(), 2, "one 206, then 200");
    assert_eq!(fake.data().statuses[0].media_ids.len(), 1);
}

#[tokio::test]
async fn over_length_text_is_invalid_with_the_instance_message_and_links_count_23() {
    let fake = start_with(Config { max_characters: 50, ..Config::default() }).await;
    let net = common::net();
    let long_url = format!("https://example.com/{}", "p".repeat(150));
    // 20 characters and a link counted as 23: 43, which fits although the URL alone is 170 long.
    Mastodon
        .publish(&net, &conn(&fake), &Outgoing::text(format!("{} {long_url}", "a".repeat(19)), key()))
        .await
        .unwrap();

    let e = Mastodon
        .publish(&net, &conn(&fake), &Outgoing::text(format!("{} {long_url}", "a".repeat(29)), key()))
        .await
        .unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Invalid, Some(422)));
    assert_eq!(e.message, "Validation failed: Text character limit of 50 exceeded");
    assert_eq!(fake.data().statuses.len(), 1);
}

#[tokio::test]
async fn the_rate_limit_reset_header_becomes_retry_after() {
    let fake = start().await;
    let net = common::net();
    let c = conn(&fake);

    fake.fail_next_on("/api/v1/statuses", Failure::RateLimited { retry_after_secs: 120 });
    let e = Mastodon.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::RateLimited, Some(429)));
    assert_eq!(e.message, "Too many requests");
    let wait = e.retry_after.unwrap();
    assert!(wait > Duration::from_secs(115) && wait <= Duration::from_secs(120), "{wait:?}");

    // A proxy's Retry-After when there is no X-RateLimit-Reset; five minutes when neither is there.
    fake.fail_next_on("/api/v1/statuses", Failure::Named("retry_after"));
    let e = Mastodon.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    fake.fail_next_on("/api/v1/statuses", Failure::Named("bare_429"));
    let e = Mastodon.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.retry_after, Some(Duration::from_secs(300)));
    no_secret(&e);
    assert!(fake.data().statuses.is_empty());
}

#[tokio::test]
async fn each_failure_lands_in_its_class() {
    let fake = start().await;
    let net = common::net();
    let c = conn(&fake);
    let cases = [
        (Failure::Unauthorized, ErrorClass::Auth, 401, "The access token is invalid"),
        (Failure::Named("scope"), ErrorClass::Auth, 403, "This action is outside the authorized scopes"),
        (Failure::Named("forbidden"), ErrorClass::Invalid, 403, "This action is not allowed"),
        (Failure::Named("not_found"), ErrorClass::Invalid, 404, "Record not found"),
        (Failure::ServerError(503), ErrorClass::Transient, 503, "We're sorry, but something went wrong on our end."),
    ];
    for (failure, class, status, message) in cases {
        fake.fail_next_on("/api/v1/statuses", failure.clone());
        let e = Mastodon.publish(&net, &c, &Outgoing::text("hi", key())).await.unwrap_err();
        assert_eq!((e.class, e.status, e.message.as_str()), (class, Some(status), message), "{failure:?}");
        no_secret(&e);
    }
    // A refused upload stops the post.
    fake.fail_next_on("/api/v2/media", Failure::Named("invalid_media"));
    let mut post = Outgoing::text("pic", key());
    post.media = vec![image(None)];
    let e = Mastodon.publish(&net, &c, &post).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Invalid, Some(422)));
    assert!(e.message.contains("File content type is invalid"));
    // Replying to a status that does not exist is the instance's 404.
    let mut post = Outgoing::text("reply", key());
    post.reply_to = Some("999".into());
    let e = Mastodon.publish(&net, &c, &post).await.unwrap_err();
    assert_eq!((e.class, e.message.as_str()), (ErrorClass::Invalid, "Record not found"));
    assert!(fake.data().statuses.is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_key_and_posts_once() {
    let fake = start().await;
    let net = common::net();
    let c = conn(&fake);
    let post = Outgoing::text("exactly once", key());

    fake.fail_next_on("/api/v1/statuses", Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = Mastodon.publish(&net, &c, &post).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "the Idempotency-Key makes a retry safe: {e}");
    assert_eq!(fake.data().statuses.len(), 1, "the instance did post");

    let again = Mastodon.publish(&net, &c, &post).await.unwrap();
    let d = fake.data();
    assert_eq!(d.statuses.len(), 1, "the retry returned the first status");
    assert_eq!(again.id, d.statuses[0].id);
    assert_eq!(fake.requests_to("/api/v1/statuses").len(), 2);
}

#[tokio::test]
async fn a_thread_replies_to_each_part() {
    let fake = start().await;
    let post = Outgoing::text("", key());
    let parts = vec!["one".to_string(), "two".to_string()];
    let out = herald_platforms::publish_thread(&Mastodon, &common::net(), &conn(&fake), &post, &parts).await.unwrap();
    let d = fake.data();
    assert_eq!(d.statuses[1].in_reply_to_id.as_deref(), Some(out[0].id.as_str()));
    assert_eq!(d.statuses[1].idempotency_key.as_deref(), Some(format!("{}-2", post.idempotency_key).as_str()));
}

#[tokio::test]
async fn delete_removes_the_status_and_is_fine_when_it_is_gone() {
    let fake = start().await;
    let net = common::net();
    let c = conn(&fake);
    let p = Mastodon.publish(&net, &c, &Outgoing::text("bye", key())).await.unwrap();
    Mastodon.delete(&net, &c, &p.id).await.unwrap();
    assert!(fake.data().live().is_empty());
    Mastodon.delete(&net, &c, &p.id).await.unwrap();
}

#[tokio::test]
async fn pacing_keeps_to_the_status_family_per_account() {
    let fake = start().await;
    let v = Mastodon.verify(&common::net(), &conn(&fake)).await.unwrap();
    let mut c = conn(&fake);
    c.settings = v.settings;
    let p = Mastodon.pacing(&c).unwrap();
    let host = fake.url.trim_start_matches("http://");
    assert_eq!(p.bucket, format!("mastodon:{host}:109000000000000001"));
    assert_eq!(p.capacity, 30.0);
    assert!((p.per_second * 10_800.0 - 300.0).abs() < 1e-9);
}

#[tokio::test]
async fn metrics_read_the_status_counts_and_fall_back_to_no_token_without_read_scope() {
    let fake = start().await;
    let net = common::net();
    let c = conn(&fake);
    let p = Mastodon.publish(&net, &c, &Outgoing::text("counted", key())).await.unwrap();
    fake.data().engage(&p.id, 7, 2, 1);

    let m = Mastodon.metrics(&net, &c, &p.id).await.unwrap().expect("Mastodon has counts");
    assert_eq!((m.get("favourites"), m.get("reblogs"), m.get("replies")), (Some(7), Some(2), Some(1)));
    assert_eq!(serde_json::to_value(&m).unwrap(), json!({"favourites": 7, "reblogs": 2, "replies": 1}));
    let read = fake.requests_to(&format!("/api/v1/statuses/{}", p.id));
    assert_eq!(read.last().unwrap().header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));

    // A token made only to post: the public status is read without it.
    fake.fail_next_on("/api/v1/statuses/", Failure::Named("scope"));
    let m = Mastodon.metrics(&net, &c, &p.id).await.unwrap().unwrap();
    assert_eq!(m.get("favourites"), Some(7));
    assert_eq!(fake.requests_to(&format!("/api/v1/statuses/{}", p.id)).last().unwrap().header("authorization"), None);
}

#[tokio::test]
async fn metrics_failures_keep_their_class() {
    let fake = start().await;
    let net = common::net();
    let c = conn(&fake);
    let p = Mastodon.publish(&net, &c, &Outgoing::text("counted", key())).await.unwrap();

    fake.fail_next_on("/api/v1/statuses/", Failure::RateLimited { retry_after_secs: 90 });
    let e = Mastodon.metrics(&net, &c, &p.id).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimited);
    assert!(e.retry_after.unwrap() > Duration::from_secs(80), "{e:?}");

    fake.fail_next_on("/api/v1/statuses/", Failure::ServerError(503));
    assert_eq!(Mastodon.metrics(&net, &c, &p.id).await.unwrap_err().class, ErrorClass::Transient);

    // A deleted status is gone for good; a malformed id never leaves Herald.
    Mastodon.delete(&net, &c, &p.id).await.unwrap();
    assert_eq!(Mastodon.metrics(&net, &c, &p.id).await.unwrap_err().class, ErrorClass::Invalid);
    let before = fake.requests().len();
    assert_eq!(Mastodon.metrics(&net, &c, "../accounts").await.unwrap_err().class, ErrorClass::Invalid);
    assert_eq!(fake.requests().len(), before);
}

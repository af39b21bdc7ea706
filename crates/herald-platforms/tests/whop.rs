//! The Whop adapter against the fake API: verify for forums and chats, forum posts and chat
//! messages (text, link, title, replies), the image upload flow, every error class with the 429
//! signals, a lost answer, pacing by key hash, and no key in any error.
mod common;

use herald_platforms::whop::Whop;
use herald_platforms::{Adapter, Connection, ErrorClass, Media, MediaKind, Net, Outgoing, PlatformError};
use herald_testkit::whop::{self as fake, API_KEY, CHAT_CHANNEL, COMPANY_ID, FORUM_EXPERIENCE};
use herald_testkit::{Failure, FakeServer};
use serde_json::{Value, json};
use std::time::Duration;

async fn setup() -> (FakeServer<fake::State>, Net) {
    let fake = fake::start().await;
    let net = common::net().with_base("whop", format!("{}/api/v1", fake.url));
    (fake, net)
}

fn conn(settings: Value) -> Connection {
    common::connection(settings, json!({"api_key": API_KEY}))
}

fn forum() -> Connection {
    conn(json!({"kind": "forum", "experience_id": FORUM_EXPERIENCE}))
}

fn chat() -> Connection {
    conn(json!({"kind": "chat", "channel_id": CHAT_CHANNEL}))
}

fn post(text: &str) -> Outgoing {
    Outgoing::text(text, format!("herald-{}", uuid::Uuid::now_v7().simple()))
}

fn image(name: &str, bytes: &'static [u8]) -> Media {
    Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: name.into(),
        bytes: bytes::Bytes::from_static(bytes),
        alt: None,
        url: None,
    }
}

fn no_secret(e: &PlatformError) {
    assert!(!e.to_string().contains(API_KEY) && !format!("{e:?}").contains(API_KEY), "{e}");
}

#[tokio::test]
async fn verify_a_forum_reads_the_experience() {
    let (fake, net) = setup().await;
    let v = Whop.verify(&net, &forum()).await.unwrap();
    assert_eq!(v.account, "Herald HQ / Announcements");
    assert_eq!(v.settings["experience_name"], "Announcements");
    assert_eq!(v.settings["company_id"], COMPANY_ID);
    let req = &fake.requests()[0];
    assert_eq!(req.path, format!("/api/v1/experiences/{FORUM_EXPERIENCE}"));
    assert_eq!(req.header("authorization"), Some(format!("Bearer {API_KEY}").as_str()));
}

#[tokio::test]
async fn verify_the_public_forum_and_chats() {
    let (fake, net) = setup().await;
    let public = conn(json!({"kind": "forum", "experience_id": "public", "company_id": COMPANY_ID}));
    assert_eq!(Whop.verify(&net, &public).await.unwrap().account, "Herald HQ");
    let v = Whop.verify(&net, &chat()).await.unwrap();
    assert_eq!((v.account.as_str(), &v.settings["ban_media"]), ("Community chat", &json!(false)));
    let by_experience = conn(json!({"kind": "chat", "channel_id": "exp_chat1"}));
    assert_eq!(Whop.verify(&net, &by_experience).await.unwrap().account, "Herald HQ / Community chat");
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec![
            format!("/api/v1/companies/{COMPANY_ID}"),
            format!("/api/v1/chat_channels/{CHAT_CHANNEL}"),
            "/api/v1/experiences/exp_chat1".to_string()
        ]
    );
}

#[tokio::test]
async fn verify_refuses_a_wrong_key_and_unknown_targets() {
    let (fake, net) = setup().await;
    let wrong = common::connection(
        json!({"kind": "forum", "experience_id": FORUM_EXPERIENCE}),
        json!({"api_key": "apik_nope"}),
    );
    let e = Whop.verify(&net, &wrong).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Auth, Some(401), Some("unauthorized")));
    assert!(!e.to_string().contains("apik_nope"));

    let e = Whop.verify(&net, &conn(json!({"kind": "forum", "experience_id": "exp_missing"}))).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Invalid, Some(404)));
    assert!(e.message.contains("Experience not found"), "{e}");

    let before = fake.requests().len();
    let e = Whop.verify(&net, &conn(json!({"kind": "forum", "experience_id": "public"}))).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("bad_settings"));
    let e = Whop.verify(&net, &conn(json!({"kind": "chat", "channel_id": "../admin"}))).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("bad_settings"));
    assert_eq!(fake.requests().len(), before, "bad settings never leave");
}

#[tokio::test]
async fn publishes_a_forum_post_with_title_link_and_parent() {
    let (fake, net) = setup().await;
    let mut p = post("Release 2.0 is out");
    p.link = Some("https://example.com/notes".into());
    p.options = json!({"title": "Release 2.0"});
    p.reply_to = Some("post_parent".into());
    let published = Whop.publish(&net, &forum(), &p).await.unwrap();

    let body = fake.requests_to("/forum_posts")[0].json();
    assert_eq!(
        body,
        json!({
            "experience_id": FORUM_EXPERIENCE,
            "content": "Release 2.0 is out\n\nhttps://example.com/notes",
            "title": "Release 2.0",
            "parent_id": "post_parent",
        })
    );
    let data = fake.data();
    assert_eq!(data.posts.len(), 1);
    assert_eq!((published.id.as_str(), published.url.as_deref()), (data.posts[0].id.as_str(), None));
}

#[tokio::test]
async fn publishes_to_the_public_forum_with_the_company() {
    let (fake, net) = setup().await;
    let public = conn(json!({"kind": "forum", "experience_id": "public", "company_id": COMPANY_ID}));
    Whop.publish(&net, &public, &post("Hello everyone")).await.unwrap();
    assert_eq!(fake.data().posts[0].target, format!("public:{COMPANY_ID}"));
}

#[tokio::test]
async fn publishes_a_chat_message_and_a_reply() {
    let (fake, net) = setup().await;
    let first = Whop.publish(&net, &chat(), &post("gm")).await.unwrap();
    let mut reply = post("gm again");
    reply.reply_to = Some(first.id.clone());
    Whop.publish(&net, &chat(), &reply).await.unwrap();
    let bodies: Vec<Value> = fake.requests_to("/messages").iter().map(|r| r.json()).collect();
    assert_eq!(bodies[0], json!({"channel_id": CHAT_CHANNEL, "content": "gm"}));
    assert_eq!(bodies[1]["replying_to_message_id"], first.id);
    let data = fake.data();
    assert_eq!(data.posts.iter().map(|p| p.kind).collect::<Vec<_>>(), vec!["message", "message"]);
    assert_eq!(data.posts[1].reply_to.as_deref(), Some(first.id.as_str()));
}

#[tokio::test]
async fn images_are_uploaded_then_attached() {
    let (fake, net) = setup().await;
    let mut p = post("A cat");
    p.media = vec![image("cat.png", b"\x89PNG cat")];
    Whop.publish(&net, &forum(), &p).await.unwrap();

    let create = &fake.requests_to("/api/v1/files")[0];
    assert_eq!(create.json(), json!({"filename": "cat.png", "visibility": "public"}));
    assert!(create.header("api-version-date").is_some());
    let put = &fake.requests_to("/_storage/")[0];
    assert_eq!(put.method, "PUT");
    assert!(put.header("authorization").is_none(), "the presigned URL is the credential");
    assert_eq!(put.header("content-type"), Some("image/png"));
    assert_eq!(put.header("x-amz-acl"), Some("public-read"), "upload_headers are sent");
    assert_eq!(&put.body[..], b"\x89PNG cat");
    // The fake says `processing` once, then `ready`.
    let file_reads = fake.requests().into_iter().filter(|r| r.method == "GET" && r.path.contains("/files/")).count();
    assert_eq!(file_reads, 2);

    let data = fake.data();
    let file = &data.files[0];
    assert_eq!(file.status, "ready");
    assert_eq!(data.posts[0].attachments, vec![file.id.clone()]);
    assert_eq!(fake.requests_to("/forum_posts")[0].json()["attachments"], json!([{"id": file.id}]));
}

#[tokio::test]
async fn videos_and_banned_media_are_refused_before_any_call() {
    let (fake, net) = setup().await;
    let mut p = post("clip");
    p.media = vec![Media { kind: MediaKind::Video, ..image("a.mp4", b"mp4") }];
    let e = Whop.publish(&net, &forum(), &p).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Invalid);
    assert!(e.message.contains("images only"), "{e}");

    let banned = conn(json!({"kind": "chat", "channel_id": CHAT_CHANNEL, "ban_media": true}));
    let mut p = post("pic");
    p.media = vec![image("a.png", b"png")];
    let e = Whop.publish(&net, &banned, &p).await.unwrap_err();
    assert!(e.message.contains("bans media"), "{e}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn rate_limits_honour_retry_after_ms_then_retry_after_then_the_message() {
    let (fake, net) = setup().await;
    fake.fail_next(Failure::RateLimited { retry_after_secs: 7 });
    let e = Whop.publish(&net, &forum(), &post("hi")).await.unwrap_err();
    assert_eq!((e.class, e.status, e.retry_after), (ErrorClass::RateLimited, Some(429), Some(Duration::from_secs(7))));
    assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));

    fake.fail_next(Failure::Named("rate_limited_ms"));
    let e = Whop.publish(&net, &forum(), &post("hi")).await.unwrap_err();
    assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));

    fake.fail_next(Failure::Named("rate_limited_bare"));
    let e = Whop.publish(&net, &forum(), &post("hi")).await.unwrap_err();
    assert_eq!(e.retry_after, Some(Duration::from_secs(12)));
}

#[tokio::test]
async fn errors_fall_into_their_classes() {
    let (fake, net) = setup().await;
    let cases: Vec<(Failure, ErrorClass, &str)> = vec![
        (Failure::Unauthorized, ErrorClass::Auth, "invalid or has been revoked"),
        (Failure::Named("forbidden"), ErrorClass::Auth, "forum:post:create"),
        (Failure::Named("not_found"), ErrorClass::Invalid, "Experience not found."),
        (Failure::Named("Content is too long."), ErrorClass::Invalid, "Content is too long."),
        (Failure::ServerError(503), ErrorClass::Transient, "Something went wrong"),
    ];
    for (failure, class, says) in cases {
        fake.fail_next(failure.clone());
        let e = Whop.publish(&net, &forum(), &post("hi")).await.unwrap_err();
        assert_eq!(e.class, class, "{failure:?}: {e}");
        assert!(e.message.contains(says), "{failure:?}: {e}");
        no_secret(&e);
    }
    // A failed upload step stops the post.
    fake.fail_next_on("/files", Failure::ServerError(500));
    let mut p = post("pic");
    p.media = vec![image("a.png", b"png")];
    assert_eq!(Whop.publish(&net, &forum(), &p).await.unwrap_err().class, ErrorClass::Transient);
    assert!(fake.data().posts.is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_unknown_outcome_and_posted_once() {
    let (fake, net) = setup().await;
    fake.fail_next_on("/forum_posts", Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = Whop.publish(&net, &forum(), &post("once")).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::UnknownOutcome, "{e}");
    no_secret(&e);
    assert_eq!(fake.data().posts.len(), 1);
}

#[tokio::test]
async fn pacing_is_per_key_hash() {
    let p = Whop.pacing(&forum()).unwrap();
    assert!(p.bucket.starts_with("whop:key:") && p.bucket.len() == "whop:key:".len() + 16, "{}", p.bucket);
    assert!(!p.bucket.contains(API_KEY));
    assert_eq!((p.capacity, p.per_second), (5.0, 1.0));
    assert_eq!(Whop.pacing(&chat()).unwrap().bucket, p.bucket, "one key, one bucket");
    let other =
        common::connection(json!({"kind": "chat", "channel_id": CHAT_CHANNEL}), json!({"api_key": "apik_other"}));
    assert_ne!(Whop.pacing(&other).unwrap().bucket, p.bucket);
}

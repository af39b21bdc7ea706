//! The Discord adapter against the fake REST API, in bot and webhook mode: verify, publish
//! (text, link, images, replies), nonce deduplication after a lost answer, every error class with
//! Discord's own rate-limit signal, pacing, and no token in any error.
mod common;

use herald_platforms::discord::{self, Discord};
use herald_platforms::{Adapter, Connection, ErrorClass, Media, MediaKind, Net, Outgoing, PlatformError};
use herald_testkit::discord::{self as fake, BOT_TOKEN, CHANNEL_ID, GUILD_ID, WEBHOOK_ID, WEBHOOK_TOKEN};
use herald_testkit::{Failure, FakeServer};
use serde_json::json;
use std::time::Duration;

const AGENT: &str = "DiscordBot (https://github.com/herald, 0.1)";

async fn setup() -> (FakeServer<fake::State>, Net, String) {
    let fake = fake::start().await;
    let base = format!("{}/api/v10", fake.url);
    let net = common::net().with_base("discord", &base);
    (fake, net, base)
}

fn bot(channel: &str) -> Connection {
    common::connection(json!({"channel_id": channel}), json!({"bot_token": BOT_TOKEN}))
}

fn hook(url: String) -> Connection {
    common::connection(json!({}), json!({"webhook_url": url}))
}

fn webhook(base: &str) -> Connection {
    hook(format!("{base}/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}"))
}

fn post(text: &str) -> Outgoing {
    Outgoing::text(text, format!("herald-{}", uuid::Uuid::now_v7().simple()))
}

fn image(name: &str, bytes: &'static [u8], alt: Option<&str>) -> Media {
    Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: name.into(),
        bytes: bytes::Bytes::from_static(bytes),
        alt: alt.map(str::to_string),
        url: None,
    }
}

fn no_secret(e: &PlatformError) {
    for s in [e.to_string(), format!("{e:?}")] {
        assert!(!s.contains(BOT_TOKEN) && !s.contains(WEBHOOK_TOKEN), "{s}");
    }
}

#[tokio::test]
async fn verify_a_bot_checks_the_token_and_the_channel() {
    let (fake, net, _) = setup().await;
    let v = Discord.verify(&net, &bot(CHANNEL_ID)).await.unwrap();
    assert_eq!(v.account, "@Herald");
    assert_eq!(v.settings["channel_id"], CHANNEL_ID);
    assert_eq!(v.settings["guild_id"], GUILD_ID);
    assert_eq!(v.settings["channel_name"], "announcements");
    let reqs = fake.requests();
    assert_eq!(
        reqs.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        vec!["/api/v10/users/@me".to_string(), format!("/api/v10/channels/{CHANNEL_ID}")]
    );
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some(format!("Bot {BOT_TOKEN}").as_str()));
        assert_eq!(r.header("user-agent"), Some(AGENT));
    }
}

#[tokio::test]
async fn verify_a_bot_with_a_wrong_token_is_auth() {
    let (_fake, net, _) = setup().await;
    let wrong = common::connection(json!({"channel_id": CHANNEL_ID}), json!({"bot_token": "not-the-token"}));
    let e = Discord.verify(&net, &wrong).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Auth, Some(401)));
    assert!(!e.to_string().contains("not-the-token"));
}

#[tokio::test]
async fn verify_a_bot_explains_channels_it_cannot_use() {
    let (_fake, net, _) = setup().await;
    let e = Discord.verify(&net, &bot(fake::HIDDEN_CHANNEL_ID)).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("50001")));
    assert!(e.message.contains("View Channel"), "{e}");
    let e = Discord.verify(&net, &bot("1399999999999999999")).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("10003")));
    let e = Discord.verify(&net, &bot("general")).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("bad_settings"));
}

#[tokio::test]
async fn verify_a_webhook_reads_it_through_the_trusted_base() {
    let (fake, net, base) = setup().await;
    let v = Discord.verify(&net, &webhook(&base)).await.unwrap();
    assert_eq!(v.account, "webhook Herald Hook");
    assert_eq!(v.settings["webhook_id"], WEBHOOK_ID);
    assert_eq!(v.settings["channel_id"], CHANNEL_ID);
    assert_eq!(v.settings["guild_id"], GUILD_ID);
    assert!(v.settings.get("token").is_none());
    // A real discord.com URL is called through the configured base, never fetched as given.
    let real = hook(format!("https://discord.com/api/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}"));
    Discord.verify(&net, &real).await.unwrap();
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    for r in reqs {
        assert_eq!(r.path, format!("/api/v10/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}"));
        assert!(r.header("authorization").is_none());
        assert_eq!(r.header("user-agent"), Some(AGENT));
    }
}

#[tokio::test]
async fn verify_refuses_foreign_deleted_and_wrong_webhooks() {
    let (fake, net, base) = setup().await;
    let foreign = hook(format!("https://evil.example/api/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}"));
    let e = Discord.verify(&net, &foreign).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_webhook_url")));
    no_secret(&e);
    assert!(fake.requests().is_empty());

    let deleted = hook(format!("{base}/webhooks/1400000000000000999/{WEBHOOK_TOKEN}"));
    let e = Discord.verify(&net, &deleted).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Auth, Some("10015")));
    no_secret(&e);

    let wrong = hook(format!("{base}/webhooks/{WEBHOOK_ID}/not-the-token"));
    let e = Discord.verify(&net, &wrong).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Auth, Some("50027")));
}

#[tokio::test]
async fn a_bot_publishes_text_and_link_with_a_nonce() {
    let (fake, net, _) = setup().await;
    let mut p = post("Release 2.0 is out");
    p.link = Some("https://example.com/notes".into());
    let published = Discord.publish(&net, &bot(CHANNEL_ID), &p).await.unwrap();

    let req = &fake.requests_to("/messages")[0];
    assert_eq!(req.path, format!("/api/v10/channels/{CHANNEL_ID}/messages"));
    assert_eq!(req.header("user-agent"), Some(AGENT));
    let body = req.json();
    assert_eq!(body["content"], "Release 2.0 is out\n\nhttps://example.com/notes");
    assert_eq!(body["nonce"], discord::nonce(&p.idempotency_key));
    assert_eq!(body["nonce"].as_str().unwrap().len(), 25);
    assert_eq!(body["enforce_nonce"], true);
    assert_eq!(body["allowed_mentions"], json!({"parse": []}));

    let data = fake.data();
    assert_eq!(data.messages.len(), 1);
    let m = &data.messages[0];
    assert_eq!(published.id, m.id);
    assert_eq!(published.url, Some(format!("https://discord.com/channels/{GUILD_ID}/{CHANNEL_ID}/{}", m.id)));
}

#[tokio::test]
async fn a_bot_publishes_images_as_multipart_files() {
    let (fake, net, _) = setup().await;
    let mut p = post("Two cats");
    p.media = vec![image("a.png", b"cat one", Some("A grey cat")), image("b.png", b"cat two", None)];
    Discord.publish(&net, &bot(CHANNEL_ID), &p).await.unwrap();
    let req = &fake.requests_to("/messages")[0];
    assert!(req.header("content-type").unwrap().starts_with("multipart/form-data"));
    let raw = req.body_text();
    assert!(raw.contains("name=\"payload_json\"") && raw.contains("name=\"files[0]\"; filename=\"a.png\""), "{raw}");

    let data = fake.data();
    let m = &data.messages[0];
    assert_eq!(m.content, "Two cats");
    assert_eq!(m.files.iter().map(|f| &f.bytes[..]).collect::<Vec<_>>(), vec![&b"cat one"[..], b"cat two"]);
    assert_eq!(m.attachments[0], json!({"id": 0, "filename": "a.png", "description": "A grey cat"}));
    assert_eq!(m.attachments[1], json!({"id": 1, "filename": "b.png"}));
    assert!(m.nonce.is_some());
}

#[tokio::test]
async fn a_bot_replies_with_a_message_reference() {
    let (fake, net, _) = setup().await;
    let c = bot(CHANNEL_ID);
    let first = Discord.publish(&net, &c, &post("Part 1")).await.unwrap();
    let mut second = post("Part 2");
    second.reply_to = Some(first.id.clone());
    Discord.publish(&net, &c, &second).await.unwrap();
    assert_eq!(fake.data().messages[1].reply_to.as_deref(), Some(first.id.as_str()));
    assert_eq!(fake.requests_to("/messages")[1].json()["message_reference"]["message_id"], first.id);
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_returns_the_same_message() {
    let (fake, net, _) = setup().await;
    let c = bot(CHANNEL_ID);
    let p = post("exactly once");
    fake.fail_next(Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = Discord.publish(&net, &c, &p).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    no_secret(&e);
    assert_eq!(fake.data().messages.len(), 1);

    let retried = Discord.publish(&net, &c, &p).await.unwrap();
    {
        let data = fake.data();
        assert_eq!(data.messages.len(), 1, "the nonce deduplicated the retry");
        assert_eq!(retried.id, data.messages[0].id);
    }
    // A different delivery is a different message.
    Discord.publish(&net, &c, &post("exactly once")).await.unwrap();
    assert_eq!(fake.data().messages.len(), 2);
}

#[tokio::test]
async fn a_webhook_publishes_with_wait_and_no_nonce() {
    let (fake, net, base) = setup().await;
    let mut p = post("From the hook");
    p.link = Some("https://example.com".into());
    p.media = vec![image("a.png", b"png", None)];
    let published = Discord.publish(&net, &webhook(&base), &p).await.unwrap();
    let req = &fake.requests_to("/webhooks/")[0];
    assert_eq!(req.query.as_deref(), Some("wait=true"));
    assert!(req.header("authorization").is_none());
    let data = fake.data();
    let m = &data.messages[0];
    assert_eq!(m.author_id, WEBHOOK_ID);
    assert_eq!(m.content, "From the hook\n\nhttps://example.com");
    assert_eq!(m.nonce, None);
    assert_eq!(m.files.len(), 1);
    assert_eq!(published.id, m.id);
}

#[tokio::test]
async fn a_webhooks_lost_answer_is_unknown_outcome() {
    let (fake, net, base) = setup().await;
    fake.fail_next(Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = Discord.publish(&net, &webhook(&base), &post("maybe")).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::UnknownOutcome, "{e}");
    no_secret(&e);
    assert_eq!(fake.data().messages.len(), 1);
}

#[tokio::test]
async fn rate_limits_use_the_bodys_exact_retry_after() {
    let (fake, net, _) = setup().await;
    fake.fail_next(Failure::RateLimited { retry_after_secs: 3 });
    let e = Discord.publish(&net, &bot(CHANNEL_ID), &post("hi")).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::RateLimited, Some(429)));
    // The header says 3; the body says 2.5.
    assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));

    fake.fail_next(Failure::Named("global_rate_limit"));
    let e = Discord.publish(&net, &bot(CHANNEL_ID), &post("hi")).await.unwrap_err();
    assert_eq!(e.retry_after, Some(Duration::from_millis(750)));
    assert!(e.message.contains("global"), "{e}");
}

#[tokio::test]
async fn errors_fall_into_their_classes() {
    let (fake, net, base) = setup().await;
    let cases: Vec<(Failure, ErrorClass, &str)> = vec![
        (Failure::Unauthorized, ErrorClass::Auth, "401: Unauthorized"),
        (Failure::Named("invalid_token"), ErrorClass::Auth, "Invalid authentication token"),
        (Failure::Named("missing_permissions"), ErrorClass::Invalid, "Send Messages"),
        (Failure::Named("missing_access"), ErrorClass::Invalid, "View Channel"),
        (Failure::Named("unknown_channel"), ErrorClass::Invalid, "Unknown Channel"),
        (
            Failure::Named("invalid_form_body"),
            ErrorClass::Invalid,
            "Invalid Form Body: content: Must be 2000 or fewer in length.; embeds.0.description: This field is required",
        ),
        (Failure::ServerError(500), ErrorClass::Transient, "Internal Server Error"),
        (Failure::ServerError(502), ErrorClass::Transient, "Bad Gateway"),
    ];
    for (failure, class, says) in cases {
        fake.fail_next(failure.clone());
        let e = Discord.publish(&net, &bot(CHANNEL_ID), &post("hi")).await.unwrap_err();
        assert_eq!(e.class, class, "{failure:?}: {e}");
        assert!(e.message.contains(says), "{failure:?}: {e}");
        no_secret(&e);
    }
    fake.fail_next(Failure::Named("unknown_webhook"));
    let e = Discord.publish(&net, &webhook(&base), &post("hi")).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Auth, Some("10015")));
    no_secret(&e);
    assert!(fake.data().messages.is_empty());
}

#[tokio::test]
async fn the_platform_refuses_what_discord_refuses() {
    let (fake, net, _) = setup().await;
    // A channel the bot can read but not post in.
    let e = Discord.publish(&net, &bot(fake::READ_ONLY_CHANNEL_ID), &post("hi")).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref(), e.status), (ErrorClass::Invalid, Some("50013"), Some(403)));
    let e = Discord.publish(&net, &bot(CHANNEL_ID), &post("  ")).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("50006")));
    let e = Discord.publish(&net, &bot(CHANNEL_ID), &post(&"x".repeat(2001))).await.unwrap_err();
    assert_eq!(e.message, "Invalid Form Body: content: Must be 2000 or fewer in length.");
    assert!(fake.data().messages.is_empty());
}

#[tokio::test]
async fn pacing_is_per_channel_or_webhook() {
    let p = Discord.pacing(&bot(CHANNEL_ID)).unwrap();
    assert_eq!((p.bucket, p.capacity, p.per_second), (format!("discord:channel:{CHANNEL_ID}"), 5.0, 1.0));
    let p = Discord.pacing(&hook(format!("https://discord.com/api/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}"))).unwrap();
    assert_eq!(p.bucket, format!("discord:webhook:{WEBHOOK_ID}"));
    assert!(!p.bucket.contains(WEBHOOK_TOKEN));
}

#[test]
fn webhook_urls_parse_and_refuse_strangers() {
    let base = discord::DEFAULT_BASE;
    let ok = |u: &str| discord::parse_webhook_url(u, base).unwrap();
    assert_eq!(ok("https://discord.com/api/webhooks/123/abc-DEF_1"), ("123".into(), "abc-DEF_1".into()));
    assert_eq!(ok("https://discordapp.com/api/v10/webhooks/123/tok/"), ("123".into(), "tok".into()));
    assert_eq!(ok("https://canary.discord.com/api/webhooks/123/tok?wait=true"), ("123".into(), "tok".into()));
    assert_eq!(discord::parse_webhook_url("http://fake:9/api/webhooks/9/t", "http://fake:9/api").unwrap().0, "9");
    for bad in [
        "http://discord.com/api/webhooks/123/SeCrEt",
        "https://evil.example/api/webhooks/123/SeCrEt",
        "https://discord.com.evil.example/api/webhooks/123/SeCrEt",
        "https://discord.com:8443/api/webhooks/123/SeCrEt",
        "https://discord.com/api/webhooks/abc/SeCrEt",
        "https://discord.com/api/webhooks/123/",
        "https://discord.com/api/webhooks/123/SeCrEt/slack",
        "https://discord.com/webhooks/123/SeCrEt",
    ] {
        let e = discord::parse_webhook_url(bad, base).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("bad_webhook_url"), "{bad}");
        assert!(!e.message.contains("SeCrEt"), "{e}");
    }
}

#[test]
fn nonces_fit_discord_and_are_stable() {
    let key = "herald-0190a1b2c3d4e5f60718293a4b5c6d7e";
    assert_eq!(discord::nonce(key).len(), 25);
    assert_eq!(discord::nonce(key), discord::nonce(key));
    assert_ne!(discord::nonce(key), discord::nonce("herald-0190a1b2c3d4e5f60718293a4b5c6d7e-2"));
    assert_eq!(discord::nonce("short-key"), "short-key");
}

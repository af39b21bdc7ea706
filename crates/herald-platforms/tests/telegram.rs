//! The Telegram adapter against the fake Bot API: verify, publish (text, photo, album, video,
//! replies in topics), literal text under both parse modes, every error class, pacing, and a
//! lost answer.
mod common;

use herald_platforms::telegram::{self, ParseMode, Telegram};
use herald_platforms::{Adapter, Connection, ErrorClass, Media, MediaKind, Net, Outgoing, PlatformError};
use herald_testkit::telegram::{self as fake, CHANNEL, CHANNEL_ID, GROUP_ID, PRIVATE_ID, SUPERGROUP_ID, TOKEN};
use herald_testkit::{Failure, FakeServer};
use serde_json::{Value, json};
use std::time::Duration;

async fn setup() -> (FakeServer<fake::State>, Net) {
    let fake = fake::start().await;
    let net = common::net().with_base("telegram", &fake.url);
    (fake, net)
}

fn conn(settings: Value) -> Connection {
    common::connection(settings, json!({"bot_token": TOKEN}))
}

fn channel() -> Connection {
    conn(json!({"chat_id": CHANNEL}))
}

fn image(name: &str, bytes: &[u8]) -> Media {
    Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: name.into(),
        bytes: bytes::Bytes::copy_from_slice(bytes),
        alt: None,
        url: None,
    }
}

fn video(name: &str) -> Media {
    Media {
        kind: MediaKind::Video,
        mime: "video/mp4".into(),
        filename: name.into(),
        bytes: bytes::Bytes::from_static(b"\0\0\0\x18ftypmp42"),
        alt: None,
        url: None,
    }
}

fn post(text: &str) -> Outgoing {
    Outgoing::text(text, format!("herald-{}", uuid::Uuid::now_v7().simple()))
}

async fn publish_err(net: &Net, conn: &Connection, text: &str) -> PlatformError {
    Telegram.publish(net, conn, &post(text)).await.unwrap_err()
}

#[tokio::test]
async fn verify_names_the_bot_and_completes_the_settings() {
    let (fake, net) = setup().await;
    let v = Telegram.verify(&net, &channel()).await.unwrap();
    assert_eq!(v.account, "@herald_test_bot");
    assert_eq!(v.settings["chat_id"], CHANNEL);
    assert_eq!(v.settings["chat_type"], "channel");
    assert_eq!(v.settings["chat_title"], "Herald News");
    assert_eq!(v.settings["resolved_chat_id"], CHANNEL_ID);
    assert_eq!(v.settings["bot_id"], fake::BOT_ID);
    let member = fake.requests_to("/getChatMember");
    assert_eq!(member.len(), 1);
    assert_eq!(member[0].json(), json!({"chat_id": CHANNEL, "user_id": fake::BOT_ID}));
    assert_eq!(fake.requests()[0].path, format!("/bot{TOKEN}/getMe"));
}

#[tokio::test]
async fn verify_refuses_a_wrong_token_as_auth() {
    let (_fake, net) = setup().await;
    let wrong = common::connection(json!({"chat_id": CHANNEL}), json!({"bot_token": "999:wrong-token"}));
    let e = Telegram.verify(&net, &wrong).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Auth);
    assert_eq!(e.status, Some(401));
    assert!(!e.to_string().contains("wrong-token"));
    // A token that cannot be a path segment never leaves.
    let malformed = common::connection(json!({"chat_id": CHANNEL}), json!({"bot_token": "1:a/../b"}));
    assert_eq!(Telegram.verify(&net, &malformed).await.unwrap_err().class, ErrorClass::Auth);
}

#[tokio::test]
async fn verify_refuses_chats_where_the_bot_cannot_post() {
    let (fake, net) = setup().await;
    fake.data().chat_mut(CHANNEL_ID).unwrap().can_post = false;
    let e = Telegram.verify(&net, &channel()).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bot_cannot_post")));
    assert!(e.message.contains("Post messages"), "{e}");

    fake.data().chat_mut(CHANNEL_ID).unwrap().bot_status = "member";
    let e = Telegram.verify(&net, &channel()).await.unwrap_err();
    assert!(e.message.contains("must be an administrator"), "{e}");

    fake.data().chat_mut(GROUP_ID).unwrap().bot_status = "left";
    let e = Telegram.verify(&net, &conn(json!({"chat_id": GROUP_ID}))).await.unwrap_err();
    assert!(e.message.contains("not a member"), "{e}");

    fake.data().chat_mut(SUPERGROUP_ID).unwrap().bot_status = "restricted";
    fake.data().chat_mut(SUPERGROUP_ID).unwrap().can_send = false;
    let e = Telegram.verify(&net, &conn(json!({"chat_id": SUPERGROUP_ID}))).await.unwrap_err();
    assert!(e.message.contains("restricted"), "{e}");

    // A private chat has no membership to check.
    let v = Telegram.verify(&net, &conn(json!({"chat_id": PRIVATE_ID}))).await.unwrap();
    assert_eq!(v.settings["chat_type"], "private");
}

#[tokio::test]
async fn verify_reports_an_unknown_chat_as_invalid() {
    let (_fake, net) = setup().await;
    let e = Telegram.verify(&net, &conn(json!({"chat_id": "@nobody_here"}))).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Invalid);
    assert!(e.message.contains("chat not found"), "{e}");
    for bad in [json!("not a chat"), json!("@a/b"), json!("@"), json!(1.5), json!(null)] {
        let e = Telegram.verify(&net, &conn(json!({"chat_id": bad}))).await.unwrap_err();
        assert_eq!(e.code.as_deref(), Some("bad_settings"), "{bad}");
    }
    // A numeric string is a chat id.
    let v = Telegram.verify(&net, &conn(json!({"chat_id": GROUP_ID.to_string()}))).await.unwrap();
    assert_eq!(v.settings["chat_type"], "group");
}

#[tokio::test]
async fn publishes_text_with_the_link_appended_and_previewed() {
    let (fake, net) = setup().await;
    let mut p = post("Release 2.0 is out");
    p.link = Some("https://example.com/notes".into());
    let published = Telegram.publish(&net, &channel(), &p).await.unwrap();

    let sent = fake.requests_to("/sendMessage");
    assert_eq!(sent.len(), 1);
    let body = sent[0].json();
    assert_eq!(body["chat_id"], CHANNEL);
    assert_eq!(body["text"], "Release 2.0 is out\n\nhttps://example.com/notes");
    assert_eq!(body["link_preview_options"]["url"], "https://example.com/notes");
    assert!(body.get("parse_mode").is_none());

    let data = fake.data();
    assert_eq!(data.messages.len(), 1);
    let m = &data.messages[0];
    assert_eq!(published.id, m.message_id.to_string());
    assert_eq!(published.url, Some(format!("https://t.me/herald_news/{}", m.message_id)));
    assert_eq!(m.preview_url.as_deref(), Some("https://example.com/notes"));
}

#[tokio::test]
async fn a_link_already_in_the_text_is_not_repeated() {
    let (fake, net) = setup().await;
    let mut p = post("Read https://example.com/notes today");
    p.link = Some("https://example.com/notes".into());
    Telegram.publish(&net, &channel(), &p).await.unwrap();
    assert_eq!(fake.data().messages[0].text.as_deref(), Some("Read https://example.com/notes today"));
}

#[tokio::test]
async fn markdown_v2_text_arrives_literally() {
    let (fake, net) = setup().await;
    let text = r"Sale: 5.00 (50% off!) _now_ *only* [today] ~x~ `y` > #1 + a-b = c | {d} \ end.";
    let c = conn(json!({"chat_id": CHANNEL, "parse_mode": "MarkdownV2"}));
    let mut p = post(text);
    p.link = Some("https://example.com/a_b-c.html".into());
    Telegram.publish(&net, &c, &p).await.unwrap();
    let data = fake.data();
    let m = &data.messages[0];
    assert_eq!(m.parse_mode.as_deref(), Some("MarkdownV2"));
    assert_eq!(m.text.as_deref(), Some(format!("{text}\n\nhttps://example.com/a_b-c.html").as_str()));
    assert_ne!(m.raw, m.text, "the wire text is escaped");
}

#[tokio::test]
async fn html_text_arrives_literally() {
    let (fake, net) = setup().await;
    let text = "<b>Fish & chips</b> cost < 5 > 3 &amp; \"more\"";
    let c = conn(json!({"chat_id": CHANNEL, "parse_mode": "HTML"}));
    Telegram.publish(&net, &c, &post(text)).await.unwrap();
    let m = fake.data().messages[0].clone();
    assert_eq!(m.parse_mode.as_deref(), Some("HTML"));
    assert_eq!(m.text.as_deref(), Some(text));
}

#[tokio::test]
async fn the_fake_rejects_unescaped_markdown_so_the_escaping_test_can_fail() {
    let (fake, net) = setup().await;
    // Straight to the fake, bypassing the adapter's escaping.
    let raw = net
        .trusted
        .post(&format!("{}/bot{TOKEN}/sendMessage", fake.url))
        .json(&json!({"chat_id": CHANNEL, "text": "5.00", "parse_mode": "MarkdownV2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert!(raw.text().await.unwrap().contains("is reserved and must be escaped"));
}

#[tokio::test]
async fn publishes_one_image_as_a_photo_with_caption() {
    let (fake, net) = setup().await;
    let mut p = post("A picture");
    p.media = vec![image("cat.png", b"\x89PNG fake cat")];
    let published = Telegram.publish(&net, &channel(), &p).await.unwrap();
    let req = &fake.requests_to("/sendPhoto")[0];
    assert!(req.header("content-type").unwrap().starts_with("multipart/form-data"));
    let data = fake.data();
    let m = &data.messages[0];
    assert_eq!((m.kind, m.text.as_deref()), ("photo", Some("A picture")));
    let upload = m.upload.as_ref().unwrap();
    assert_eq!(upload.filename.as_deref(), Some("cat.png"));
    assert_eq!(upload.content_type.as_deref(), Some("image/png"));
    assert_eq!(&upload.bytes[..], b"\x89PNG fake cat");
    assert_eq!(published.id, m.message_id.to_string());
}

#[tokio::test]
async fn publishes_several_images_as_an_album_with_the_caption_first() {
    let (fake, net) = setup().await;
    let mut p = post("Three cats");
    p.media = vec![image("1.png", b"one"), image("2.png", b"two"), image("3.png", b"three")];
    let published = Telegram.publish(&net, &channel(), &p).await.unwrap();
    assert_eq!(fake.requests_to("/sendMediaGroup").len(), 1);
    let data = fake.data();
    assert_eq!(data.messages.len(), 3);
    let group = data.messages[0].media_group_id.clone().unwrap();
    assert!(data.messages.iter().all(|m| m.media_group_id.as_ref() == Some(&group)));
    assert_eq!(data.messages[0].text.as_deref(), Some("Three cats"));
    assert!(data.messages[1].text.is_none() && data.messages[2].text.is_none());
    let bytes: Vec<&[u8]> = data.messages.iter().map(|m| &m.upload.as_ref().unwrap().bytes[..]).collect();
    assert_eq!(bytes, vec![&b"one"[..], b"two", b"three"]);
    assert_eq!(published.id, data.messages[0].message_id.to_string());
}

#[tokio::test]
async fn publishes_a_video() {
    let (fake, net) = setup().await;
    let mut p = post("Watch");
    p.media = vec![video("clip.mp4")];
    Telegram.publish(&net, &channel(), &p).await.unwrap();
    assert_eq!(fake.requests_to("/sendVideo").len(), 1);
    assert_eq!(fake.data().messages[0].kind, "video");
}

#[tokio::test]
async fn replies_go_to_the_topic_and_link_to_the_private_supergroup() {
    let (fake, net) = setup().await;
    let c = conn(json!({"chat_id": SUPERGROUP_ID, "message_thread_id": 7}));
    let first = Telegram.publish(&net, &c, &post("Part 1")).await.unwrap();
    let mut second = post("Part 2");
    second.reply_to = Some(first.id.clone());
    let reply = Telegram.publish(&net, &c, &second).await.unwrap();

    let body = fake.requests_to("/sendMessage")[1].json();
    assert_eq!(body["message_thread_id"], 7);
    assert_eq!(body["reply_parameters"]["message_id"].to_string(), first.id);
    let data = fake.data();
    assert_eq!(data.messages[1].reply_to.map(|r| r.to_string()), Some(first.id));
    assert_eq!(data.messages[1].thread_id, Some(7));
    assert_eq!(reply.url, Some(format!("https://t.me/c/9876543210/{}", reply.id)));
}

#[tokio::test]
async fn groups_and_private_chats_get_no_message_url() {
    let (_fake, net) = setup().await;
    let p = Telegram.publish(&net, &conn(json!({"chat_id": GROUP_ID})), &post("hi")).await.unwrap();
    assert_eq!(p.url, None);
}

#[tokio::test]
async fn the_platform_validates_text_and_captions() {
    let (fake, net) = setup().await;
    let e = publish_err(&net, &channel(), "").await;
    assert_eq!((e.class, e.status), (ErrorClass::Invalid, Some(400)));
    assert!(e.message.contains("message text is empty"), "{e}");

    let mut p = post(&"x".repeat(1025));
    p.media = vec![image("a.png", b"a")];
    let e = Telegram.publish(&net, &channel(), &p).await.unwrap_err();
    assert!(e.message.contains("caption is too long"), "{e}");
    assert!(fake.data().messages.is_empty());
}

#[tokio::test]
async fn rate_limits_carry_telegrams_retry_after() {
    let (fake, net) = setup().await;
    fake.fail_next(Failure::RateLimited { retry_after_secs: 15 });
    let e = publish_err(&net, &channel(), "hi").await;
    assert_eq!(e.class, ErrorClass::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(15)));
    assert_eq!((e.status, e.code.as_deref()), (Some(429), Some("429")));
}

#[tokio::test]
async fn errors_fall_into_their_classes() {
    let (fake, net) = setup().await;
    let cases: Vec<(Failure, ErrorClass, &str)> = vec![
        (Failure::Unauthorized, ErrorClass::Auth, "Unauthorized"),
        (Failure::Named("bot_kicked"), ErrorClass::Auth, "bot was kicked"),
        (Failure::Named("not_member"), ErrorClass::Auth, "add it back"),
        (Failure::Named("chat_not_found"), ErrorClass::Invalid, "chat not found"),
        (Failure::Named("migrated"), ErrorClass::Invalid, "-1001999888777"),
        (Failure::ServerError(500), ErrorClass::Transient, "Internal Server Error"),
        (Failure::ServerError(502), ErrorClass::Transient, "HTTP 502"),
    ];
    for (failure, class, says) in cases {
        fake.fail_next(failure.clone());
        let e = publish_err(&net, &channel(), "hi").await;
        assert_eq!(e.class, class, "{failure:?}: {e}");
        assert!(e.message.contains(says), "{failure:?}: {e}");
        assert!(!e.to_string().contains(TOKEN));
    }
    assert!(fake.data().messages.is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_unknown_outcome_and_posted_once() {
    let (fake, net) = setup().await;
    fake.fail_next(Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = publish_err(&net, &channel(), "once").await;
    assert_eq!(e.class, ErrorClass::UnknownOutcome, "{e}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    assert_eq!(fake.data().messages.len(), 1);
}

#[tokio::test]
async fn an_unreachable_api_is_transient_and_never_shows_the_token() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let net = common::net().with_base("telegram", closed);
    let e = publish_err(&net, &channel(), "hi").await;
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    assert!(!format!("{e:?}").contains(TOKEN));
}

#[tokio::test]
async fn pacing_follows_the_chat_kind() {
    let pace = |settings: Value| Telegram.pacing(&conn(settings)).unwrap();
    let channel = pace(json!({"chat_id": CHANNEL_ID, "chat_type": "channel"}));
    assert_eq!(channel.bucket, format!("telegram:chat:{CHANNEL_ID}"));
    assert_eq!((channel.capacity, channel.per_second), (1.0, 1.0));
    assert_eq!(pace(json!({"chat_id": PRIVATE_ID})).per_second, 1.0);
    let group_rate = 20.0 / 60.0;
    assert_eq!(pace(json!({"chat_id": GROUP_ID})).per_second, group_rate);
    assert_eq!(pace(json!({"chat_id": SUPERGROUP_ID, "chat_type": "supergroup"})).per_second, group_rate);
    // Unknown kind: the stricter rate.
    assert_eq!(pace(json!({"chat_id": CHANNEL_ID})).per_second, group_rate);
    let named = pace(json!({"chat_id": "@Herald_News"}));
    assert_eq!((named.bucket.as_str(), named.per_second), ("telegram:chat:@herald_news", group_rate));
}

#[test]
fn markdown_v2_escapes_every_special_character() {
    assert_eq!(
        telegram::escape(r"1+1=2. (Yes!) _a_ *b* [c] ~d~ `e` >f #g -h |i| {j} \k", Some(ParseMode::MarkdownV2)),
        r"1\+1\=2\. \(Yes\!\) \_a\_ \*b\* \[c\] \~d\~ \`e\` \>f \#g \-h \|i\| \{j\} \\k"
    );
}

#[test]
fn html_escapes_markup_characters_only() {
    assert_eq!(
        telegram::escape("<b>Fish & \"chips\"</b>", Some(ParseMode::Html)),
        "&lt;b&gt;Fish &amp; \"chips\"&lt;/b&gt;"
    );
    assert_eq!(telegram::escape("a < b", None), "a < b");
}

#[test]
fn message_urls_follow_the_chat_kind() {
    let public = json!({"id": -1001, "type": "channel", "username": "news"});
    let private = json!({"id": -1009876, "type": "supergroup"});
    let group = json!({"id": -4567, "type": "group"});
    let user = json!({"id": 42, "type": "private", "username": "ada"});
    assert_eq!(telegram::message_url(&public, 7).as_deref(), Some("https://t.me/news/7"));
    assert_eq!(telegram::message_url(&private, 7).as_deref(), Some("https://t.me/c/9876/7"));
    assert_eq!(telegram::message_url(&group, 7), None);
    assert_eq!(telegram::message_url(&user, 7), None);
}

#[tokio::test]
async fn metrics_are_none_since_the_bot_api_shows_no_views() {
    let (fake, net) = setup().await;
    let p = Telegram.publish(&net, &channel(), &Outgoing::text("seen?", "k")).await.unwrap();
    let before = fake.requests().len();
    assert_eq!(Telegram.metrics(&net, &channel(), &p.id).await.unwrap(), None);
    assert_eq!(fake.requests().len(), before, "nothing is asked");
}

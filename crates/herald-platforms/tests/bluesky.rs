//! Bluesky against the fake PDS (herald-testkit) and, when `HERALD_TEST_BLUESKY_PDS` is set, a
//! real reference PDS.
mod common;

use herald_platforms::bluesky::{Bluesky, facets, tid};
use herald_platforms::{
    Adapter, Connection, ErrorClass, Media, MediaKind, Outgoing, PlatformError, Published, publish_thread,
};
use herald_testkit::Failure;
use herald_testkit::bluesky::{self as fake, DID, HANDLE, PASSWORD, State};
use serde_json::{Value, json};
use std::time::Duration;

/// A 1×1 PNG, so a real PDS sniffs it as an image.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0, 0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d,
    0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn conn(service: &str, identifier: &str, password: &str) -> Connection {
    common::connection(json!({ "service": service }), json!({ "identifier": identifier, "app_password": password }))
}

/// A connection as it is stored after verify: the session in the credentials.
async fn verified(service: &str, identifier: &str, password: &str) -> Connection {
    let c = conn(service, identifier, password);
    let v = Bluesky.verify(&common::net(), &c).await.expect("verify");
    Connection { settings: v.settings, credentials: v.credentials, ..c }
}

fn image(alt: &str) -> Media {
    Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: "dot.png".into(),
        bytes: bytes::Bytes::from_static(PNG),
        alt: Some(alt.into()),
        url: None,
    }
}

fn puts(fake: &herald_testkit::FakeServer<State>) -> Vec<Value> {
    fake.requests_to("com.atproto.repo.putRecord").iter().map(|r| r.json()).collect()
}

/// The text a facet covers.
fn covered<'a>(text: &'a str, facet: &Value) -> &'a str {
    let s = facet["index"]["byteStart"].as_u64().unwrap() as usize;
    let e = facet["index"]["byteEnd"].as_u64().unwrap() as usize;
    &text[s..e]
}

/// Every secret of a connection, to check error messages against.
fn secrets(c: &Connection) -> Vec<String> {
    ["app_password", "access_jwt", "refresh_jwt"]
        .iter()
        .filter_map(|k| c.credentials.0[*k].as_str().map(str::to_string))
        .collect()
}

fn assert_no_secret(e: &PlatformError, c: &Connection) {
    let shown = format!("{e} {e:?}");
    for s in secrets(c) {
        assert!(!shown.contains(&s), "a secret leaked into {shown}");
    }
}

// ---------------------------------------------------------------------------------------------
// verify

#[tokio::test]
async fn verify_logs_in_and_keeps_the_session() {
    let fake = fake::start().await;
    let c = conn(&fake.url, "Alice.test", PASSWORD);
    let v = Bluesky.verify(&common::net(), &c).await.unwrap();
    assert_eq!(v.account, HANDLE);
    let creds = &v.credentials.0;
    assert_eq!(creds["did"], DID);
    assert_eq!(creds["handle"], HANDLE);
    assert_eq!(creds["app_password"], PASSWORD, "the app password stays for the next login");
    let access = creds["access_jwt"].as_str().unwrap();
    assert!(fake.data().access_tokens.contains_key(access));
    assert!(fake.data().refresh_tokens.contains_key(creds["refresh_jwt"].as_str().unwrap()));
    assert_eq!(v.settings, json!({ "service": fake.url, "did": DID, "handle": HANDLE }));
    let sent = fake.requests_to("createSession")[0].json();
    assert_eq!(sent, json!({ "identifier": "Alice.test", "password": PASSWORD }));
    assert!(!format!("{:?}", v.credentials).contains(PASSWORD));
}

#[tokio::test]
async fn verify_with_a_wrong_password_is_auth() {
    let fake = fake::start().await;
    let c = conn(&fake.url, HANDLE, "wrong-pass-word-here");
    let e = Bluesky.verify(&common::net(), &c).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Auth);
    assert_eq!((e.status, e.code.as_deref()), (Some(401), Some("AuthenticationRequired")));
    assert!(e.message.contains("Invalid identifier or password"), "{e}");
    assert_no_secret(&e, &c);
}

#[tokio::test]
async fn verify_asks_for_an_app_password_when_2fa_is_on() {
    let fake = fake::start_with(State { auth_factor_required: true, ..State::default() }).await;
    let e = Bluesky.verify(&common::net(), &conn(&fake.url, HANDLE, PASSWORD)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Auth);
    assert_eq!(e.code.as_deref(), Some("AuthFactorTokenRequired"));
    assert!(e.message.contains("app password"), "{e}");
}

#[tokio::test]
async fn the_service_is_a_user_chosen_host() {
    let fake = fake::start().await;
    // The production guard refuses the loopback fake: the PDS goes through the SSRF guard.
    let e = Bluesky.verify(&common::strict_net(), &conn(&fake.url, HANDLE, PASSWORD)).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("ssrf_blocked_destination")));
    assert!(fake.requests().is_empty());

    let e = Bluesky.verify(&common::net(), &conn("ftp://pds.example", HANDLE, PASSWORD)).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_settings")));
    let no_password = common::connection(json!({ "service": fake.url }), json!({ "identifier": HANDLE }));
    let e = Bluesky.verify(&common::net(), &no_password).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_credentials")));
}

// ---------------------------------------------------------------------------------------------
// publish: the record on the wire

#[tokio::test]
async fn publish_text_with_link_and_tag_facets() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let text = "Привет 👋🏽 мир! Read https://example.com/posts/1?x=y. #Rust_lang and (https://ex.org/a_(b)) ok";
    let mut post = Outgoing::text(text, "herald-text-1");
    post.options = json!({ "langs": ["ru", "en"] });
    let p = Bluesky.publish(&common::net(), &c, &post).await.unwrap();

    let rkey = tid(post.created_at, "herald-text-1");
    assert_eq!(p.id, format!("at://{DID}/app.bsky.feed.post/{rkey}"));
    assert_eq!(p.url.as_deref(), Some(format!("https://bsky.app/profile/{HANDLE}/post/{rkey}").as_str()));
    assert_eq!(p.credentials, None, "the stored session worked: nothing to store");
    assert!(fake.requests_to("createSession").len() == 1, "publish reuses the session from verify");

    let put = &puts(&fake)[0];
    assert_eq!((put["repo"].as_str(), put["collection"].as_str()), (Some(DID), Some("app.bsky.feed.post")));
    assert_eq!(put["rkey"], rkey);
    let record = &put["record"];
    assert_eq!(record["$type"], "app.bsky.feed.post");
    assert_eq!(record["text"], text);
    assert_eq!(record["createdAt"], post.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    assert!(record["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(record["langs"], json!(["ru", "en"]));
    let f = record["facets"].as_array().unwrap();
    let spans: Vec<&str> = f.iter().map(|f| covered(text, f)).collect();
    assert_eq!(spans, ["https://example.com/posts/1?x=y", "#Rust_lang", "https://ex.org/a_(b)"]);
    // "Привет 👋🏽 мир! Read " is 12 + 1 + 8 + 1 + 7 + 6 bytes.
    assert_eq!(f[0]["index"], json!({ "byteStart": 35, "byteEnd": 66 }));
    assert_eq!(
        f[0]["features"],
        json!([{ "$type": "app.bsky.richtext.facet#link", "uri": "https://example.com/posts/1?x=y" }])
    );
    assert_eq!(f[1]["features"], json!([{ "$type": "app.bsky.richtext.facet#tag", "tag": "Rust_lang" }]));
    assert!(record.get("embed").is_none());

    let stored = fake.data().posts();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].value, *record);
    let auth = fake.requests_to("putRecord")[0].header("authorization").unwrap().to_string();
    assert_eq!(auth, format!("Bearer {}", c.credentials.0["access_jwt"].as_str().unwrap()));
}

#[test]
fn facets_skip_what_is_not_a_link_or_tag() {
    assert!(facets("no links here, see example.com or ftp://x.org; a#b, #123 and #️⃣").is_empty());
    let text = "🇺🇦 #тег, http://a.b/c!";
    let f = facets(text);
    assert_eq!(f.iter().map(|f| covered(text, f)).collect::<Vec<_>>(), ["#тег", "http://a.b/c"]);
    assert_eq!(f[0]["index"]["byteStart"], 9, "the flag is two 4-byte regional indicators");
    assert_eq!(f[0]["features"][0]["tag"], "тег");
}

#[test]
fn rkeys_are_tids_stable_per_delivery() {
    let at = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00.123Z").unwrap().to_utc();
    let a = tid(at, "herald-1");
    assert_eq!(a, tid(at, "herald-1"));
    assert_eq!(a.len(), 13);
    assert!(a.bytes().all(|b| b"234567abcdefghijklmnopqrstuvwxyz".contains(&b)) && a.as_bytes()[0] <= b'j');
    // Thread parts share the creation time but not the key.
    let parts: std::collections::HashSet<String> = (2..200).map(|n| tid(at, &format!("herald-1-{n}"))).collect();
    assert_eq!(parts.len(), 198);
    assert!(tid(at + chrono::Duration::milliseconds(1), "herald-1") > a, "TIDs sort by time");
}

#[tokio::test]
async fn publish_images_as_blobs_with_alt_text() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let mut post = Outgoing::text("two dots", "herald-img-1");
    post.media = vec![image("a red dot"), image("the same dot")];
    post.link = Some("https://example.com/not-a-card".into());
    Bluesky.publish(&common::net(), &c, &post).await.unwrap();

    let uploads = fake.requests_to("uploadBlob");
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[0].header("content-type"), Some("image/png"));
    assert_eq!(&uploads[0].body[..], PNG, "raw bytes, not multipart");
    let embed = &puts(&fake)[0]["record"]["embed"];
    assert_eq!(embed["$type"], "app.bsky.embed.images", "images win over the link card");
    let images = embed["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[1]["alt"], "the same dot");
    assert_eq!(images[0]["image"]["$type"], "blob");
    assert_eq!(images[0]["image"]["mimeType"], "image/png");
    assert_eq!(images[0]["image"]["size"], PNG.len());
    assert_eq!(images[0]["image"]["ref"]["$link"], fake.data().blobs[0].cid.as_str());

    let mut five = Outgoing::text("too many", "herald-img-2");
    five.media = vec![image("x"); 5];
    let e = Bluesky.publish(&common::net(), &c, &five).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Invalid);
    assert_eq!(fake.requests_to("uploadBlob").len(), 2, "nothing uploaded for a post that cannot go out");
}

#[tokio::test]
async fn the_fake_refuses_a_record_with_an_unknown_blob() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let post = Outgoing::text("dot", "herald-img-3");
    let put = json!({
        "repo": DID, "collection": "app.bsky.feed.post", "rkey": tid(post.created_at, "k"),
        "record": { "$type": "app.bsky.feed.post", "text": "x", "createdAt": "2026-01-01T00:00:00.000Z",
            "embed": { "$type": "app.bsky.embed.images", "images": [{ "alt": "", "image": {
                "$type": "blob", "ref": { "$link": "bafkreinope" }, "mimeType": "image/png", "size": 1 } }] } }
    });
    let token = c.credentials.0["access_jwt"].as_str().unwrap();
    let reply = common::net()
        .trusted
        .post(&format!("{}/xrpc/com.atproto.repo.putRecord", fake.url))
        .bearer_auth(token)
        .json(&put)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 400);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["error"], "BlobNotFound");
}

#[tokio::test]
async fn link_card_from_the_options() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let mut post = Outgoing::text("new article", "herald-link-1");
    post.link = Some(format!("{}/pages/missing", fake.url));
    post.options = json!({ "link_title": "Given title", "link_description": "Given description" });
    Bluesky.publish(&common::net(), &c, &post).await.unwrap();
    let embed = &puts(&fake)[0]["record"]["embed"];
    assert_eq!(
        *embed,
        json!({ "$type": "app.bsky.embed.external", "external": {
            "uri": post.link.as_deref().unwrap(), "title": "Given title", "description": "Given description" } })
    );
    assert!(fake.requests_to("/pages/").is_empty(), "no page fetch when the title is given");
}

#[tokio::test]
async fn link_card_from_the_page_and_failing_soft() {
    let fake = fake::start().await;
    fake.data().pages.insert(
        "article".into(),
        r#"<!doctype html><html><head><title>Plain title</title>
        <meta name="description" content="plain">
        <META property="og:title" content="The &quot;OG&quot; title &#8212; Ünïcode" />
        <meta content='First &amp; foremost' property=og:description></head><body>…</body></html>"#
            .into(),
    );
    fake.data().pages.insert("plain".into(), "<html><title>\n  Only a   title\n</title></html>".into());
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let mut cards = Vec::new();
    for (i, page) in ["article", "plain", "missing"].into_iter().enumerate() {
        let mut post = Outgoing::text("read this", format!("herald-link-page-{i}"));
        post.link = Some(format!("{}/pages/{page}", fake.url));
        Bluesky.publish(&common::net(), &c, &post).await.unwrap();
        cards.push(puts(&fake)[i]["record"]["embed"]["external"].clone());
    }
    assert_eq!(cards[0]["title"], "The \"OG\" title — Ünïcode");
    assert_eq!(cards[0]["description"], "First & foremost");
    assert_eq!((cards[1]["title"].as_str(), cards[1]["description"].as_str()), (Some("Only a title"), Some("")));
    assert_eq!(cards[2]["title"], format!("{}/pages/missing", fake.url), "a page that fails gives the URL");
    assert_eq!(fake.data().posts().len(), 3);
}

#[tokio::test]
async fn a_thread_answers_its_root() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let post = Outgoing::text("", "herald-thread-1");
    let parts = ["one".to_string(), "two".to_string(), "three".to_string()];
    let out = publish_thread(&Bluesky, &common::net(), &c, &post, &parts).await.unwrap();
    assert_eq!(out.len(), 3);
    let posts = fake.data().posts();
    assert_eq!(posts.len(), 3, "three distinct rkeys");
    let (root, second, third) = (&posts[0], &posts[1], &posts[2]);
    assert!(root.value.get("reply").is_none());
    let strong = |r: &herald_testkit::bluesky::Record| json!({ "uri": r.uri(), "cid": r.cid });
    assert_eq!(second.value["reply"], json!({ "root": strong(root), "parent": strong(root) }));
    assert_eq!(third.value["reply"], json!({ "root": strong(root), "parent": strong(second) }));
    assert_eq!(out[2].id, third.uri());

    let mut orphan = Outgoing::text("answer", "herald-thread-2");
    orphan.reply_to = Some(format!("at://{DID}/app.bsky.feed.post/3aaaaaaaaaaaa"));
    let e = Bluesky.publish(&common::net(), &c, &orphan).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("RecordNotFound")));
    orphan.reply_to = Some("https://bsky.app/profile/x/post/y".into());
    let e = Bluesky.publish(&common::net(), &c, &orphan).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_reply_to")));
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[tokio::test]
async fn an_expired_token_is_refreshed_and_the_rotated_pair_returned() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    fake.data().expire_access_tokens();
    let p = Bluesky.publish(&common::net(), &c, &Outgoing::text("hi", "herald-refresh-1")).await.unwrap();

    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.rsplit('.').next().unwrap().to_string()).collect();
    assert_eq!(paths, ["createSession", "putRecord", "refreshSession", "putRecord"]);
    let old = &c.credentials.0;
    let refresh = &fake.requests_to("refreshSession")[0];
    assert_eq!(refresh.header("authorization").unwrap(), format!("Bearer {}", old["refresh_jwt"].as_str().unwrap()));
    let new = p.credentials.expect("rotated credentials").0;
    assert_ne!(new["access_jwt"], old["access_jwt"]);
    assert_ne!(new["refresh_jwt"], old["refresh_jwt"]);
    assert_eq!((new["did"].as_str(), new["app_password"].as_str()), (Some(DID), Some(PASSWORD)));
    assert!(!fake.data().refresh_tokens.contains_key(old["refresh_jwt"].as_str().unwrap()), "rotation spent it");
    assert_eq!(fake.data().posts().len(), 1);
}

#[tokio::test]
async fn a_refused_refresh_falls_back_to_the_app_password() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    fake.data().revoke_sessions();
    let p = Bluesky.publish(&common::net(), &c, &Outgoing::text("hi", "herald-relogin-1")).await.unwrap();
    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.rsplit('.').next().unwrap().to_string()).collect();
    assert_eq!(paths, ["createSession", "putRecord", "refreshSession", "createSession", "putRecord"]);
    assert!(p.credentials.is_some());

    // An expired refresh token takes the same way.
    let c2 = Connection { credentials: p.credentials.unwrap(), ..c.clone() };
    fake.data().expire_access_tokens();
    fake.data().expire_refresh_tokens();
    let p2 = Bluesky.publish(&common::net(), &c2, &Outgoing::text("again", "herald-relogin-2")).await.unwrap();
    assert!(p2.credentials.is_some());
    assert_eq!(fake.data().posts().len(), 2);

    // A connection saved without a session logs in first.
    let bare = conn(&fake.url, HANDLE, PASSWORD);
    let p3 = Bluesky.publish(&common::net(), &bare, &Outgoing::text("bare", "herald-relogin-3")).await.unwrap();
    assert!(p3.credentials.unwrap().0["access_jwt"].is_string());
}

#[tokio::test]
async fn a_token_refused_after_a_fresh_login_is_auth() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    for _ in 0..3 {
        fake.fail_next_on("putRecord", Failure::Named("InvalidToken"));
    }
    let e = Bluesky.publish(&common::net(), &c, &Outgoing::text("hi", "herald-invalid-1")).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Auth, Some(400), Some("InvalidToken")));
    assert_eq!(fake.requests_to("putRecord").len(), 3, "stored, refreshed, then a new login");
    assert_no_secret(&e, &c);

    // The app password was changed: the login itself is refused.
    fake.data().revoke_sessions();
    fake.data().accounts[0].password = "a-new-password".into();
    let e = Bluesky.publish(&common::net(), &c, &Outgoing::text("hi", "herald-invalid-2")).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Auth, Some(401)));
    assert_no_secret(&e, &c);
    assert!(fake.data().posts().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Error classes

#[tokio::test]
async fn errors_fall_into_their_classes() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let net = common::net();
    let publish = |key: &str| {
        let post = Outgoing::text("hello", key);
        let (net, c) = (net.clone(), c.clone());
        async move { Bluesky.publish(&net, &c, &post).await }
    };

    fake.fail_next_on("putRecord", Failure::RateLimited { retry_after_secs: 30 });
    let e = publish("k1").await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::RateLimited, Some(429), Some("RateLimitExceeded")));
    let wait = e.retry_after.unwrap();
    assert!(wait > Duration::from_secs(27) && wait <= Duration::from_secs(30), "RateLimit-Reset read: {wait:?}");
    assert_eq!(e.message, "Rate Limit Exceeded");

    fake.fail_next_on("putRecord", Failure::ServerError(502));
    let e = publish("k2").await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Transient, Some(502), Some("UpstreamFailure")));
    fake.fail_next_on("putRecord", Failure::ServerError(500));
    assert_eq!(publish("k3").await.unwrap_err().class, ErrorClass::Transient);

    fake.fail_next_on("putRecord", Failure::Named("PayloadTooLarge"));
    let e = publish("k4").await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Invalid, Some(413)));

    fake.fail_next_on("putRecord", Failure::Unauthorized);
    let e = publish("k5").await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Auth, Some(401)));

    fake.fail_next_on("createSession", Failure::RateLimited { retry_after_secs: 300 });
    let e = Bluesky.verify(&net, &c).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimited);
    assert!(e.retry_after.unwrap() > Duration::from_secs(290));

    // The PDS's own check: 301 graphemes.
    let long = Outgoing::text("é".repeat(301), "k6");
    let e = Bluesky.publish(&net, &c, &long).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Invalid, Some(400), Some("InvalidRequest")));
    assert!(e.message.contains("grapheme too big (maximum 300, got 301)"), "{e}");
    // 300 family emoji are 300 graphemes but 7,500 bytes.
    let family = Outgoing::text("👨\u{200d}👩\u{200d}👧\u{200d}👦".repeat(300), "k7");
    let e = Bluesky.publish(&net, &c, &family).await.unwrap_err();
    assert!(e.message.contains("string too long (maximum 3000"), "{e}");
    let mut langs = Outgoing::text("x", "k8");
    langs.options = json!({ "langs": "en, de, fr, es" });
    assert_eq!(Bluesky.publish(&net, &c, &langs).await.unwrap_err().class, ErrorClass::Invalid);

    assert!(fake.data().posts().is_empty());
    assert_no_secret(&e, &c);
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_writes_the_same_record() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let mut post = Outgoing::text("exactly once https://example.com", "herald-lost-1");
    post.media = vec![image("dot")];
    fake.fail_next_on("putRecord", Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = Bluesky.publish(&common::net(), &c, &post).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "putRecord under a fixed rkey is safe to retry: {e}");
    assert_eq!(fake.data().posts().len(), 1, "the first attempt did post");

    let p: Published = Bluesky.publish(&common::net(), &c, &post).await.unwrap();
    let posts = fake.data().posts();
    assert_eq!(posts.len(), 1, "no duplicate");
    assert_eq!(p.id, posts[0].uri());
    let puts = puts(&fake);
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[0], puts[1], "the retry sends the very same record");
}

// ---------------------------------------------------------------------------------------------
// delete and pacing

#[tokio::test]
async fn delete_removes_the_record() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let p = Bluesky.publish(&common::net(), &c, &Outgoing::text("short-lived", "herald-del-1")).await.unwrap();
    Bluesky.delete(&common::net(), &c, &p.id).await.unwrap();
    assert!(fake.data().posts().is_empty());
    let sent = fake.requests_to("deleteRecord")[0].json();
    let rkey = p.id.rsplit('/').next().unwrap();
    assert_eq!(sent, json!({ "repo": DID, "collection": "app.bsky.feed.post", "rkey": rkey }));
    let e = Bluesky.delete(&common::net(), &c, "3kabc").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Invalid);
}

#[tokio::test]
async fn pacing_shares_one_bucket_per_account() {
    let fake = fake::start().await;
    let c = verified(&fake.url, HANDLE, PASSWORD).await;
    let p = Bluesky.pacing(&c).unwrap();
    assert_eq!(p.bucket, format!("bluesky:{DID}"));
    assert_eq!((p.capacity, p.per_second), (10.0, 0.46));
    // 5000 points an hour at 3 a post.
    assert!(p.per_second * 3600.0 * 3.0 <= 5000.0);
    let bare = conn(&fake.url, HANDLE, PASSWORD);
    assert_eq!(Bluesky.pacing(&bare).unwrap().bucket, format!("bluesky:{HANDLE}"));
}

// ---------------------------------------------------------------------------------------------
// A real PDS

/// Against the reference PDS (`@atproto/dev-env`'s `TestNetworkNoAppView`, e.g.
/// `HERALD_TEST_BLUESKY_PDS=http://127.0.0.1:2583`): a fresh account, verify, a post with a link
/// facet and an image read back with getRecord, an idempotent retry, a refresh, and a bad
/// password.
#[tokio::test]
async fn real_pds() {
    let Some(pds) = common::peer("HERALD_TEST_BLUESKY_PDS") else { return };
    let pds = pds.trim_end_matches('/').to_string();
    let net = common::net();
    let id = uuid::Uuid::now_v7().simple().to_string();
    // Handles are `<3..18 chars>.test` on the dev PDS; the uuid's tail is its random part.
    let handle = format!("h{}.test", &id[20..]);
    let password = format!("pw-{id}");
    let created = net
        .trusted
        .post(&format!("{pds}/xrpc/com.atproto.server.createAccount"))
        .json(&json!({ "handle": handle, "email": format!("{}@test.invalid", &id[20..]), "password": password }))
        .send()
        .await
        .expect("createAccount");
    assert!(created.status().is_success(), "createAccount: {}", created.text().await.unwrap_or_default());
    let did = created.json::<Value>().await.unwrap()["did"].as_str().unwrap().to_string();

    let c = verified(&pds, &handle, &password).await;
    assert_eq!(c.credentials.0["did"], did);
    assert_eq!(Bluesky.pacing(&c).unwrap().bucket, format!("bluesky:{did}"));

    let text = "Grüße 👋🏽 from Herald: https://example.com/real?x=1 #herald";
    let mut post = Outgoing::text(text, format!("herald-real-{id}"));
    post.media = vec![image("a single dot")];
    post.options = json!({ "langs": ["de"] });
    let p = Bluesky.publish(&net, &c, &post).await.expect("publish to the real PDS");
    let rkey = tid(post.created_at, &post.idempotency_key);
    assert_eq!(p.id, format!("at://{did}/app.bsky.feed.post/{rkey}"));
    assert_eq!(p.url, Some(format!("https://bsky.app/profile/{handle}/post/{rkey}")));

    let got: Value = net
        .trusted
        .get(&format!("{pds}/xrpc/com.atproto.repo.getRecord"))
        .query(&[("repo", did.as_str()), ("collection", "app.bsky.feed.post"), ("rkey", rkey.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let value = &got["value"];
    assert_eq!(value["text"], text);
    let facets = value["facets"].as_array().expect("facets kept");
    assert_eq!(covered(text, &facets[0]), "https://example.com/real?x=1");
    assert_eq!(facets[0]["features"][0]["uri"], "https://example.com/real?x=1");
    assert_eq!(covered(text, &facets[1]), "#herald");
    assert_eq!(value["embed"]["$type"], "app.bsky.embed.images");
    assert_eq!(value["embed"]["images"][0]["alt"], "a single dot");
    assert_eq!(value["embed"]["images"][0]["image"]["mimeType"], "image/png");
    assert_eq!(value["langs"], json!(["de"]));

    // The same delivery again (as after a lost answer): still one post.
    Bluesky.publish(&net, &c, &post).await.expect("the retry");
    let list: Value = net
        .trusted
        .get(&format!("{pds}/xrpc/com.atproto.repo.listRecords"))
        .query(&[("repo", did.as_str()), ("collection", "app.bsky.feed.post")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["records"].as_array().unwrap().len(), 1, "no duplicate: {list}");

    // A token the PDS cannot verify is renewed, and the new pair comes back to be stored.
    let mut stale = c.clone();
    stale.credentials.0["access_jwt"] = json!("not-a-jwt");
    let answer = Outgoing::text("a reply", format!("herald-real-{id}-2"));
    let answer = Outgoing { reply_to: Some(p.id.clone()), ..answer };
    let p2 = Bluesky.publish(&net, &stale, &answer).await.expect("publish with a stale token");
    assert!(p2.credentials.is_some());
    let reply_rkey = p2.id.rsplit('/').next().unwrap();
    let got: Value = net
        .trusted
        .get(&format!("{pds}/xrpc/com.atproto.repo.getRecord"))
        .query(&[("repo", did.as_str()), ("collection", "app.bsky.feed.post"), ("rkey", reply_rkey)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["value"]["reply"]["parent"]["uri"], p.id);
    assert_eq!(got["value"]["reply"]["root"]["uri"], p.id);

    Bluesky.delete(&net, &c, &p2.id).await.expect("delete");

    let bad = conn(&pds, &handle, "not-the-password");
    let e = Bluesky.verify(&net, &bad).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Auth, Some(401)), "{e}");
    assert_no_secret(&e, &bad);
}

#[tokio::test]
async fn metrics_read_the_post_view_counts_by_its_at_uri() {
    let pds = fake::start().await;
    let net = common::net();
    let c = verified(&pds.url, HANDLE, PASSWORD).await;
    let p = Bluesky.publish(&net, &c, &Outgoing::text("counted", "herald-metrics")).await.unwrap();
    assert!(p.id.starts_with(&format!("at://{DID}/app.bsky.feed.post/")), "{}", p.id);
    pds.data().engage(&p.id, fake::Engagement { likes: 12, reposts: 3, replies: 2, quotes: 1 });

    let m = Bluesky.metrics(&net, &c, &p.id).await.unwrap().expect("Bluesky has counts");
    assert_eq!(serde_json::to_value(&m).unwrap(), json!({"likes": 12, "reposts": 3, "replies": 2, "quotes": 1}));
    assert!(m.credentials.is_none(), "the stored session still worked");
    let asked = pds.requests_to("app.bsky.feed.getPosts");
    assert!(asked[0].header("authorization").is_some_and(|a| a.starts_with("Bearer ")));

    // An expired session is refreshed, and the rotated tokens come back to be stored.
    pds.data().expire_access_tokens();
    let m = Bluesky.metrics(&net, &c, &p.id).await.unwrap().unwrap();
    assert_eq!(m.get("likes"), Some(12));
    let renewed = m.credentials.expect("the refreshed session");
    assert_ne!(renewed.0["access_jwt"], c.credentials.0["access_jwt"]);
    assert_eq!(renewed.0["app_password"], PASSWORD);
}

#[tokio::test]
async fn metrics_failures_keep_their_class() {
    let pds = fake::start().await;
    let net = common::net();
    let c = verified(&pds.url, HANDLE, PASSWORD).await;
    let p = Bluesky.publish(&net, &c, &Outgoing::text("counted", "herald-metrics-fail")).await.unwrap();

    pds.fail_next_on("app.bsky.feed.getPosts", Failure::RateLimited { retry_after_secs: 30 });
    let e = Bluesky.metrics(&net, &c, &p.id).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimited);
    assert!(e.retry_after.unwrap() > Duration::from_secs(20), "{e:?}");

    // A post the AppView does not show (deleted) is named; a bad id is refused before any call.
    Bluesky.delete(&net, &c, &p.id).await.unwrap();
    let e = Bluesky.metrics(&net, &c, &p.id).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("post_not_found")));
    assert_eq!(Bluesky.metrics(&net, &c, "3kxyz").await.unwrap_err().class, ErrorClass::Invalid);
}

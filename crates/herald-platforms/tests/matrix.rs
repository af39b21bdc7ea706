//! The Matrix adapter against the fake homeserver, and against a real Synapse when
//! `HERALD_TEST_MATRIX_URL`, `HERALD_TEST_MATRIX_USER` and `HERALD_TEST_MATRIX_PASSWORD` are set.

mod common;

use herald_http::Method;
use herald_platforms::matrix::{DEVICE_ID, Matrix};
use herald_platforms::{Adapter, Connection, ErrorClass, Idempotent, Media, MediaKind, Outgoing, PlatformError};
use herald_testkit::Failure;
use herald_testkit::matrix::{self as fake, Homeserver};
use serde_json::{Value, json};
use std::time::Duration;

/// A 1×1 PNG.
const PNG: &[u8] = &[
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 31, 21, 196,
    137, 0, 0, 0, 13, 73, 68, 65, 84, 120, 156, 99, 248, 207, 192, 240, 31, 0, 5, 0, 1, 255, 137, 153, 61, 29, 0, 0, 0,
    0, 73, 69, 78, 68, 174, 66, 96, 130,
];

type Fake = herald_testkit::FakeServer<Homeserver>;

fn conn(fake: &Fake, room: &str, credentials: Value) -> Connection {
    common::connection(json!({"homeserver": fake.url, "room_id": room}), credentials)
}

fn with_token(fake: &Fake) -> Connection {
    conn(fake, fake::ROOM, json!({"access_token": fake::TOKEN}))
}

fn with_password(fake: &Fake) -> Connection {
    conn(fake, fake::ROOM, json!({"user": fake::LOCALPART, "password": fake::PASSWORD}))
}

fn image(name: &str) -> Media {
    Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: name.into(),
        bytes: bytes::Bytes::from_static(PNG),
        alt: Some("a red dot".into()),
        url: None,
    }
}

fn key() -> String {
    herald_platforms::idempotency_key(uuid::Uuid::now_v7())
}

#[tokio::test]
async fn verify_with_a_token_names_the_account_and_checks_the_room() {
    let fake = fake::start().await;
    let v = Matrix.verify(&common::net(), &with_token(&fake)).await.unwrap();
    assert_eq!(v.account, fake::USER);
    assert_eq!(v.settings["room_id"], fake::ROOM);
    assert_eq!(v.settings["homeserver"], fake.url);
    assert_eq!(v.credentials.0, json!({"access_token": fake::TOKEN, "device_id": fake::TOKEN_DEVICE}));
    let whoami = &fake.requests_to("/account/whoami")[0];
    assert_eq!(whoami.header("authorization"), Some(format!("Bearer {}", fake::TOKEN).as_str()));
    assert_eq!(fake.requests_to("/joined_rooms").len(), 1);
    assert!(fake.requests_to("/login").is_empty());
}

#[tokio::test]
async fn verify_with_a_password_logs_in_as_herald_s_fixed_device() {
    let fake = fake::start().await;
    let v = Matrix.verify(&common::net(), &with_password(&fake)).await.unwrap();
    assert_eq!(v.account, fake::USER);
    let login = fake.requests_to("/_matrix/client/v3/login");
    assert_eq!(login.len(), 1);
    let body = login[0].json();
    assert_eq!(body["type"], "m.login.password");
    assert_eq!(body["identifier"], json!({"type": "m.id.user", "user": fake::LOCALPART}));
    assert_eq!(body["device_id"], DEVICE_ID);
    // The new token and the device are stored; the password stays to renew an expired token.
    let token = v.credentials.0["access_token"].as_str().unwrap().to_string();
    assert_eq!(fake.data().tokens[&token], (fake::USER.to_string(), DEVICE_ID.to_string()));
    assert_eq!(v.credentials.0["device_id"], DEVICE_ID);
    assert_eq!(v.credentials.0["password"], fake::PASSWORD);
    assert_eq!(
        fake.requests_to("/account/whoami")[0].header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
}

#[tokio::test]
async fn verify_resolves_a_room_alias_to_its_id() {
    let fake = fake::start().await;
    let v =
        Matrix.verify(&common::net(), &conn(&fake, fake::ALIAS, json!({"access_token": fake::TOKEN}))).await.unwrap();
    assert_eq!(v.settings["room_id"], fake::ROOM);
    assert_eq!(v.settings["room_alias"], fake::ALIAS);
    // `#` and `:` are encoded in the path.
    assert_eq!(fake.requests_to("/directory/room/")[0].path, "/_matrix/client/v3/directory/room/%23news%3Afake.local");

    let e = Matrix
        .verify(&common::net(), &conn(&fake, "#nowhere:fake.local", json!({"access_token": fake::TOKEN})))
        .await
        .unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Invalid, Some(404), Some("M_NOT_FOUND")));
}

#[tokio::test]
async fn verify_refuses_a_room_the_account_is_not_in() {
    let fake = fake::start().await;
    let e = Matrix
        .verify(&common::net(), &conn(&fake, fake::OTHER_ROOM, json!({"access_token": fake::TOKEN})))
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Invalid);
    assert_eq!(e.code.as_deref(), Some("not_in_room"));
    assert!(e.message.contains("invite the account"), "{e}");
}

#[tokio::test]
async fn refused_credentials_are_auth() {
    let fake = fake::start().await;
    let net = common::net();

    let e = Matrix.verify(&net, &conn(&fake, fake::ROOM, json!({"access_token": "syt_wrong"}))).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Auth, Some(401), Some("M_UNKNOWN_TOKEN")));

    let e = Matrix
        .verify(&net, &conn(&fake, fake::ROOM, json!({"user": fake::LOCALPART, "password": "nope"})))
        .await
        .unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Auth, Some(403), Some("M_FORBIDDEN")));

    fake.data().password_login = false;
    let e = Matrix.verify(&net, &with_password(&fake)).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Auth, Some(404), Some("M_UNRECOGNIZED")));
    assert!(e.message.contains("no password login"), "{e}");

    let e = Matrix.verify(&net, &conn(&fake, fake::ROOM, json!({}))).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_credentials")));
}

#[tokio::test]
async fn text_goes_out_as_m_text_with_a_txn_id_from_the_key() {
    let fake = fake::start().await;
    let post = Outgoing::text("Hello, room", key());
    let p = Matrix.publish(&common::net(), &with_token(&fake), &post).await.unwrap();

    let sends = fake.requests_to("/send/");
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].method, "PUT");
    assert_eq!(
        sends[0].path,
        format!("/_matrix/client/v3/rooms/%21herald%3Afake.local/send/m.room.message/{}-text", post.idempotency_key)
    );
    assert_eq!(sends[0].json(), json!({"msgtype": "m.text", "body": "Hello, room"}));
    let messages = fake.data().messages(fake::ROOM);
    assert_eq!(messages.len(), 1);
    assert_eq!(p.id, messages[0].event_id);
    assert_eq!(p.url.as_deref(), Some(format!("https://matrix.to/#/{}/{}", fake::ROOM, p.id).as_str()));
    assert_eq!(p.credentials, None);
}

#[tokio::test]
async fn a_link_is_appended_and_formatted_as_an_anchor() {
    let fake = fake::start().await;
    let mut post = Outgoing::text("Fish & <chips>", key());
    post.link = Some("https://example.org/fish?a=1&b=2".into());
    Matrix.publish(&common::net(), &with_token(&fake), &post).await.unwrap();

    let content = fake.data().messages(fake::ROOM)[0].content.clone();
    assert_eq!(content["body"], "Fish & <chips>\n\nhttps://example.org/fish?a=1&b=2");
    assert_eq!(content["format"], "org.matrix.custom.html");
    assert_eq!(
        content["formatted_body"],
        "Fish &amp; &lt;chips&gt;<br><br><a href=\"https://example.org/fish?a=1&amp;b=2\">https://example.org/fish?a=1&amp;b=2</a>"
    );
}

#[tokio::test]
async fn an_image_is_uploaded_then_sent_as_m_image_before_the_text() {
    let fake = fake::start().await;
    let mut post = Outgoing::text("Look at this", key());
    post.media = vec![image("dot one.png")];
    let p = Matrix.publish(&common::net(), &with_token(&fake), &post).await.unwrap();

    let upload = &fake.requests_to("/_matrix/media/v3/upload")[0];
    assert_eq!(upload.method, "POST");
    assert_eq!(upload.query.as_deref(), Some("filename=dot%20one.png"));
    assert_eq!(upload.header("content-type"), Some("image/png"));
    assert_eq!(upload.body.as_ref(), PNG);

    let data = fake.data();
    let mxc = data.uploads[0].content_uri.clone();
    let messages = data.messages(fake::ROOM);
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].txn_id, format!("{}-img0", post.idempotency_key));
    assert_eq!(
        messages[0].content,
        json!({"msgtype": "m.image", "body": "a red dot", "filename": "dot one.png", "url": mxc,
               "info": {"mimetype": "image/png", "size": PNG.len()}})
    );
    assert_eq!(messages[1].content["msgtype"], "m.text");
    assert_eq!(p.id, messages[1].event_id, "the post's id is the text event");
}

#[tokio::test]
async fn a_reply_carries_m_in_reply_to() {
    let fake = fake::start().await;
    let first = Matrix.publish(&common::net(), &with_token(&fake), &Outgoing::text("one", key())).await.unwrap();
    let mut second = Outgoing::text("two", key());
    second.reply_to = Some(first.id.clone());
    Matrix.publish(&common::net(), &with_token(&fake), &second).await.unwrap();
    let messages = fake.data().messages(fake::ROOM);
    assert_eq!(messages[1].content["m.relates_to"], json!({"m.in_reply_to": {"event_id": first.id}}));
    assert!(messages[0].content.get("m.relates_to").is_none());
}

#[tokio::test]
async fn rate_limits_wait_as_the_homeserver_says() {
    let fake = fake::start().await;
    let net = common::net();
    fake.fail_next_on("/send/", Failure::RateLimited { retry_after_secs: 7 });
    let e = Matrix.publish(&net, &with_token(&fake), &Outgoing::text("x", key())).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::RateLimited, Some(429), Some("M_LIMIT_EXCEEDED")));
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));

    // Without the header, the deprecated `retry_after_ms`.
    fake.fail_next_on("/send/", Failure::Named("rate_limited_ms"));
    let e = Matrix.publish(&net, &with_token(&fake), &Outgoing::text("x", key())).await.unwrap_err();
    assert_eq!((e.class, e.retry_after), (ErrorClass::RateLimited, Some(Duration::from_millis(2500))));
    assert!(fake.data().messages(fake::ROOM).is_empty());
}

#[tokio::test]
async fn other_failures_map_to_their_classes() {
    let fake = fake::start().await;
    let net = common::net();
    let post = || Outgoing::text("x", key());

    fake.fail_next_on("/send/", Failure::ServerError(502));
    let e = Matrix.publish(&net, &with_token(&fake), &post()).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Transient, Some(502)));

    fake.fail_next_on("/send/", Failure::Named("forbidden"));
    let e = Matrix.publish(&net, &with_token(&fake), &post()).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Invalid, Some(403), Some("M_FORBIDDEN")));
    assert!(e.message.contains("invite it to the room"), "{e}");

    // Posting into a room the account left is the same refusal, from the fake's own check.
    let e = Matrix
        .publish(&net, &conn(&fake, fake::OTHER_ROOM, json!({"access_token": fake::TOKEN})), &post())
        .await
        .unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("M_FORBIDDEN")));

    let mut with_image = post();
    with_image.media = vec![image("big.png")];
    fake.fail_next_on("/upload", Failure::Named("too_large"));
    let e = Matrix.publish(&net, &with_token(&fake), &with_image).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Invalid, Some(413), Some("M_TOO_LARGE")));

    fake.fail_next_on("/send/", Failure::Unauthorized);
    let e = Matrix.publish(&net, &with_token(&fake), &post()).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Auth, Some(401)));

    assert!(fake.data().messages(fake::ROOM).is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_retried_into_the_same_event() {
    let fake = fake::start().await;
    let net = common::net();
    let mut post = Outgoing::text("exactly once", key());
    post.media = vec![image("a.png")];
    fake.fail_next_on("/send/", Failure::AnswerLate(common::TIMEOUT + Duration::from_millis(500)));
    let e = Matrix.publish(&net, &with_token(&fake), &post).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert_eq!(fake.data().messages(fake::ROOM).len(), 1, "the image event went out before the answer was lost");

    let p = Matrix.publish(&net, &with_token(&fake), &post).await.unwrap();
    let messages = fake.data().messages(fake::ROOM);
    assert_eq!(messages.len(), 2, "one image and one text, no duplicate");
    assert_eq!(messages[1].event_id, p.id);
}

#[tokio::test]
async fn a_revoked_token_is_renewed_with_the_password_on_the_same_device() {
    let fake = fake::start().await;
    let net = common::net();
    let verified = Matrix.verify(&net, &with_password(&fake)).await.unwrap();
    let mut c = with_password(&fake);
    c.credentials = verified.credentials.clone();

    let post = Outgoing::text("survives a re-login", key());
    let first = Matrix.publish(&net, &c, &post).await.unwrap();
    assert_eq!(first.credentials, None);

    // The password changed elsewhere: every token is gone. The retry logs in again as the same
    // device, so the homeserver still knows the transaction.
    fake.data().revoke_all();
    let again = Matrix.publish(&net, &c, &post).await.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(fake.data().messages(fake::ROOM).len(), 1);
    let rotated = again.credentials.expect("the new token is handed back to be stored");
    assert_ne!(rotated.0["access_token"], verified.credentials.0["access_token"]);
    assert_eq!(rotated.0["device_id"], DEVICE_ID);
    assert_eq!(fake.requests_to("/login").len(), 2);

    // Without a password there is nothing to renew with.
    fake.data().revoke_all();
    let e = Matrix.publish(&net, &with_token(&fake), &Outgoing::text("x", key())).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Auth);
}

#[tokio::test]
async fn delete_redacts_the_event() {
    let fake = fake::start().await;
    let net = common::net();
    let p = Matrix.publish(&net, &with_token(&fake), &Outgoing::text("oops", key())).await.unwrap();
    Matrix.delete(&net, &with_token(&fake), &p.id).await.unwrap();
    let redact = &fake.requests_to("/redact/")[0];
    assert_eq!(redact.method, "PUT");
    assert!(
        redact.path.starts_with(&format!("/_matrix/client/v3/rooms/%21herald%3Afake.local/redact/%24{}/", &p.id[1..]))
    );
    assert!(fake.data().messages(fake::ROOM).is_empty());
}

#[tokio::test]
async fn pacing_is_per_homeserver_and_room() {
    let c = common::connection(
        json!({"homeserver": "https://matrix.example.org/", "room_id": "!abc:example.org"}),
        json!({"access_token": "t"}),
    );
    let p = Matrix.pacing(&c).unwrap();
    assert_eq!(p.bucket, "matrix:matrix.example.org:!abc:example.org");
    assert_eq!((p.capacity, p.per_second), (5.0, 1.0));
}

#[tokio::test]
async fn a_private_homeserver_is_refused_by_the_guard() {
    let fake = fake::start().await;
    let e = Matrix.verify(&common::strict_net(), &with_token(&fake)).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("ssrf_blocked_destination")));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn no_secret_appears_in_errors_or_debug_output() {
    let fake = fake::start().await;
    let net = common::net();
    let mut errors: Vec<PlatformError> = Vec::new();
    for failure in [
        Failure::Unauthorized,
        Failure::RateLimited { retry_after_secs: 1 },
        Failure::ServerError(500),
        Failure::Named("forbidden"),
    ] {
        if failure == Failure::Unauthorized {
            // Once for the stored token, once for the token of the re-login.
            fake.fail_next_on("/send/", failure.clone());
        }
        fake.fail_next_on("/send/", failure);
        errors.push(Matrix.publish(&net, &with_password(&fake), &Outgoing::text("x", key())).await.unwrap_err());
    }
    errors.push(
        Matrix
            .verify(&net, &conn(&fake, fake::ROOM, json!({"user": fake::LOCALPART, "password": "wrong-pass-123"})))
            .await
            .unwrap_err(),
    );
    errors.push(
        Matrix.verify(&net, &conn(&fake, fake::ROOM, json!({"access_token": 42, "password": 7}))).await.unwrap_err(),
    );
    let verified = Matrix.verify(&net, &with_password(&fake)).await.unwrap();
    let token = verified.credentials.0["access_token"].as_str().unwrap().to_string();
    let shown =
        format!("{errors:?} {} {verified:?}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
    for secret in [fake::PASSWORD, "wrong-pass-123", fake::TOKEN, token.as_str()] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
}

// ---- A real Synapse ----------------------------------------------------------------------------

/// Reads the room back from Synapse as the test account.
async fn synapse_messages(net: &herald_platforms::Net, base: &str, token: &str, room: &str) -> Vec<Value> {
    let url = format!("{base}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", room.replace('!', "%21"));
    let req = net.trusted().request(Method::GET, &url).unwrap().bearer_auth(token);
    let reply = net.trusted().send(req, Idempotent::Yes).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.snippet());
    reply.json()["chunk"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn against_a_real_synapse() {
    let Some(base) = common::peer("HERALD_TEST_MATRIX_URL") else { return };
    let (Some(user), Some(password)) =
        (common::peer("HERALD_TEST_MATRIX_USER"), common::peer("HERALD_TEST_MATRIX_PASSWORD"))
    else {
        return;
    };
    let base = base.trim_end_matches('/').to_string();
    let net = common::net();

    // A fresh room, made with a setup login of its own device.
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                       "password": password, "device_id": "HERALD_TEST_SETUP"});
    let req = net.trusted().request(Method::POST, &format!("{base}/_matrix/client/v3/login")).unwrap().json(&login);
    let reply = net.trusted().send(req, Idempotent::Yes).await.unwrap();
    assert_eq!(reply.status, 200, "setup login: {}", reply.snippet());
    let setup_token = reply.json()["access_token"].as_str().unwrap().to_string();
    let req = net
        .trusted()
        .request(Method::POST, &format!("{base}/_matrix/client/v3/createRoom"))
        .unwrap()
        .bearer_auth(&setup_token)
        .json(&json!({"name": "herald-adapter-test", "preset": "private_chat"}));
    let reply = net.trusted().send(req, Idempotent::Yes).await.unwrap();
    assert_eq!(reply.status, 200, "createRoom: {}", reply.snippet());
    let room = reply.json()["room_id"].as_str().unwrap().to_string();

    // Connect with the password: verify logs in as Herald's device and checks the room.
    let c =
        common::connection(json!({"homeserver": base, "room_id": room}), json!({"user": user, "password": password}));
    let verified = Matrix.verify(&net, &c).await.unwrap();
    assert!(verified.account.starts_with('@'), "{}", verified.account);
    assert_eq!(verified.credentials.0["device_id"], DEVICE_ID);
    let token = verified.credentials.0["access_token"].as_str().unwrap().to_string();
    let c = Connection { credentials: verified.credentials.clone(), settings: verified.settings.clone(), ..c };

    let mut text = Outgoing::text(format!("Herald test {} & <friends>", uuid::Uuid::now_v7()), key());
    text.link = Some("https://example.org/herald?a=1&b=2".into());
    let sent = Matrix.publish(&net, &c, &text).await.unwrap();
    assert!(sent.id.starts_with('$'), "{}", sent.id);
    let mut pic = Outgoing::text("", key());
    pic.media = vec![image("dot.png")];
    let sent_pic = Matrix.publish(&net, &c, &pic).await.unwrap();

    let chunk = synapse_messages(&net, &base, &token, &room).await;
    let find = |id: &str| chunk.iter().find(|e| e["event_id"] == id).cloned().unwrap_or_else(|| panic!("{id} missing"));
    let t = find(&sent.id);
    assert_eq!(t["type"], "m.room.message");
    assert_eq!(t["content"]["msgtype"], "m.text");
    assert!(t["content"]["body"].as_str().unwrap().ends_with("\n\nhttps://example.org/herald?a=1&b=2"));
    assert!(t["content"]["formatted_body"].as_str().unwrap().contains("&amp; &lt;friends&gt;"));
    assert!(
        t["content"]["formatted_body"]
            .as_str()
            .unwrap()
            .contains("<a href=\"https://example.org/herald?a=1&amp;b=2\">")
    );
    assert_eq!(t["unsigned"]["transaction_id"], format!("{}-text", text.idempotency_key));
    let i = find(&sent_pic.id);
    assert_eq!(i["content"]["msgtype"], "m.image");
    assert!(i["content"]["url"].as_str().unwrap().starts_with("mxc://"));
    assert_eq!(i["content"]["info"], json!({"mimetype": "image/png", "size": PNG.len()}));

    // A retry with the same key, even after a fresh login as the same device, is the same event.
    let again = Matrix.publish(&net, &c, &text).await.unwrap();
    assert_eq!(again.id, sent.id);
    let relogin = Connection {
        credentials: herald_platforms::Credentials(json!({"user": user, "password": password})),
        ..c.clone()
    };
    let again = Matrix.publish(&net, &relogin, &text).await.unwrap();
    assert_eq!(again.id, sent.id);
    assert!(again.credentials.is_some());
    // Read with the setup login: a homeserver may end older sessions of a device at a new login.
    let chunk = synapse_messages(&net, &base, &setup_token, &room).await;
    let texts = chunk.iter().filter(|e| e["content"]["body"] == t["content"]["body"]).count();
    assert_eq!(texts, 1, "exactly one text event");

    let bad =
        Connection { credentials: herald_platforms::Credentials(json!({"access_token": "syt_not_a_token"})), ..c };
    let e = Matrix.publish(&net, &bad, &Outgoing::text("never", key())).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Auth, Some("M_UNKNOWN_TOKEN")));
}

#[tokio::test]
async fn metrics_count_reactions_by_key_across_pages() {
    let hs = fake::start().await;
    let net = common::net();
    let c = with_token(&hs);
    let p = Matrix.publish(&net, &c, &Outgoing::text("react to me", key())).await.unwrap();
    {
        let mut d = hs.data();
        // 130 reactions: more than one page of 100.
        for i in 0..130 {
            let key = if i % 10 == 0 { "🎉" } else { "👍" };
            d.react(fake::ROOM, &p.id, &format!("@u{i}:fake.local"), key);
        }
    }
    let m = Matrix.metrics(&net, &c, &p.id).await.unwrap().expect("Matrix has reactions");
    assert_eq!(m.get("reactions"), Some(130));
    assert_eq!((m.get("reactions:👍"), m.get("reactions:🎉")), (Some(117), Some(13)));
    assert!(m.credentials.is_none());
    assert_eq!(hs.requests_to("/relations/").len(), 2, "two pages");

    // Nothing yet is zero, not missing.
    let q = Matrix.publish(&net, &c, &Outgoing::text("quiet", key())).await.unwrap();
    let m = Matrix.metrics(&net, &c, &q.id).await.unwrap().unwrap();
    assert_eq!(serde_json::to_value(&m).unwrap(), json!({"reactions": 0}));
}

#[tokio::test]
async fn metrics_failures_keep_their_class_and_a_lost_token_is_renewed() {
    let hs = fake::start().await;
    let net = common::net();
    let c = with_token(&hs);
    let p = Matrix.publish(&net, &c, &Outgoing::text("react to me", key())).await.unwrap();

    hs.fail_next_on("/relations/", Failure::RateLimited { retry_after_secs: 4 });
    let e = Matrix.metrics(&net, &c, &p.id).await.unwrap_err();
    assert_eq!((e.class, e.retry_after), (ErrorClass::RateLimited, Some(Duration::from_secs(4))));
    hs.fail_next_on("/relations/", Failure::Unauthorized);
    assert_eq!(Matrix.metrics(&net, &c, &p.id).await.unwrap_err().class, ErrorClass::Auth);

    // With a password, a refused token is replaced and the new one comes back to be stored.
    let pw = with_password(&hs);
    hs.data().react(fake::ROOM, &p.id, "@u:fake.local", "👍");
    hs.fail_next_on("/relations/", Failure::Unauthorized);
    let m = Matrix.metrics(&net, &pw, &p.id).await.unwrap().unwrap();
    assert_eq!(m.get("reactions"), Some(1));
    assert!(m.credentials.expect("a new login").0["access_token"].is_string());
}

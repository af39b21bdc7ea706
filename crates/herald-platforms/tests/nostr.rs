//! The Nostr adapter against fake relays, and against a real relay when `HERALD_TEST_NOSTR_RELAY`
//! is set (e.g. `ws://127.0.0.1:7000`).

mod common;

use futures::{SinkExt, StreamExt};
use herald_platforms::nostr::{Nostr, Outcome, RelayResult};
use herald_platforms::{Adapter, Connection, ErrorClass, Outgoing, PlatformError};
use herald_testkit::nostr::{self as fake, Answer};
use k256::schnorr::{Signature, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

// NIP-19's example key pair.
const SECRET: &str = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa";
const NSEC: &str = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5";
const PUBKEY: &str = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";
const NPUB: &str = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";

/// Short, so a silent relay costs a test under a second.
const FAST: Duration = Duration::from_millis(800);

fn conn(relays: &[&str], secret: &str) -> Connection {
    common::connection(json!({"relays": relays}), json!({"secret_key": secret}))
}

fn key() -> String {
    herald_platforms::idempotency_key(uuid::Uuid::now_v7())
}

/// A relay address nothing listens on.
async fn dead_relay() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("ws://{addr}/")
}

/// Checks an event as a relay that verifies would: the id is the hash of NIP-01's serialisation,
/// and the signature is the key's.
fn assert_signed(ev: &Value) {
    let ser = json!([0, ev["pubkey"], ev["created_at"], ev["kind"], ev["tags"], ev["content"]]).to_string();
    let id = Sha256::digest(ser.as_bytes());
    assert_eq!(ev["id"].as_str().unwrap(), hex::encode(id));
    let vk = VerifyingKey::from_bytes(&hex::decode(ev["pubkey"].as_str().unwrap()).unwrap()).unwrap();
    let sig = Signature::try_from(hex::decode(ev["sig"].as_str().unwrap()).unwrap().as_slice()).unwrap();
    vk.verify_raw(&id, &sig).expect("the signature verifies");
}

fn outcome_of<'a>(results: &'a [RelayResult], relay: &str) -> &'a Outcome {
    &results.iter().find(|r| r.relay == relay).unwrap_or_else(|| panic!("no result for {relay}")).outcome
}

#[tokio::test]
async fn verify_names_the_npub_and_asks_every_relay() {
    let (a, b) = (fake::start().await, fake::start().await);
    for secret in [SECRET, NSEC] {
        let v = Nostr.verify(&common::net(), &conn(&[&a.url, &b.url, &a.url], secret)).await.unwrap();
        assert_eq!(v.account, NPUB);
        assert_eq!(v.settings, json!({"relays": [a.url, b.url], "pubkey": PUBKEY}));
        assert_eq!(v.credentials.0, json!({"secret_key": secret}));
    }
    // One REQ per verify at each relay (repeats in the list are dropped).
    for relay in [&a, &b] {
        let reqs: Vec<Value> = relay.received().into_iter().filter(|m| m[0] == "REQ").collect();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0][2], json!({"authors": [PUBKEY], "kinds": [1], "limit": 1}));
    }
}

#[tokio::test]
async fn verify_reports_the_relays_that_failed_and_needs_one_that_answers() {
    let good = fake::start().await;
    let silent = fake::start().await;
    silent.answer(Answer::Never);
    let dead = dead_relay().await;
    let net = common::net();

    let v = Nostr::verify_within(&net, &conn(&[&good.url, &silent.url, &dead], SECRET), FAST).await.unwrap();
    let failed: Vec<&str> =
        v.settings["unreachable_relays"].as_array().unwrap().iter().map(|r| r["relay"].as_str().unwrap()).collect();
    assert_eq!(failed, vec![silent.url.as_str(), dead.as_str()]);

    let e = Nostr::verify_within(&net, &conn(&[&silent.url, &dead], SECRET), FAST).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
    assert!(e.message.contains(&dead) && e.message.contains(&silent.url), "{e}");
}

#[tokio::test]
async fn bad_keys_and_relay_lists_are_invalid() {
    let relay = fake::start().await;
    let net = common::net();
    for secret in [NPUB, "not a key", &SECRET[1..], "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe6"] {
        let e = Nostr.verify(&net, &conn(&[&relay.url], secret)).await.unwrap_err();
        assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_credentials")), "{secret}");
    }
    let e = Nostr.verify(&net, &conn(&[&relay.url], NPUB)).await.unwrap_err();
    assert!(e.message.contains("public key"), "{e}");

    let eleven: Vec<String> = (0..11).map(|i| format!("wss://relay{i}.example.org")).collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    for relays in [vec![], vec!["https://relay.example.org"], vec!["relay.example.org"], eleven] {
        let e = Nostr.verify(&net, &conn(&relays, SECRET)).await.unwrap_err();
        assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_settings")), "{relays:?}");
    }
    assert!(relay.received().is_empty());
}

#[tokio::test]
async fn publish_sends_one_signed_note_to_every_relay() {
    let (a, b) = (fake::start().await, fake::start().await);
    let mut post = Outgoing::text("Release day! #Herald #rust", key());
    post.link = Some("https://example.org/release".into());
    post.reply_to = Some("ab".repeat(32));
    let (p, results) =
        Nostr::publish_within(&common::net(), &conn(&[&a.url, &b.url], SECRET), &post, FAST).await.unwrap();

    let events = a.events();
    assert_eq!(events.len(), 1);
    assert_eq!(b.events(), events, "both relays got the same signed event");
    let ev = &events[0];
    assert_signed(ev);
    assert_eq!(ev["kind"], 1);
    assert_eq!(ev["pubkey"], PUBKEY);
    assert_eq!(ev["created_at"], post.created_at.timestamp());
    assert_eq!(ev["content"], "Release day! #Herald #rust\n\nhttps://example.org/release");
    assert_eq!(
        ev["tags"],
        json!([
            ["e", "ab".repeat(32), "", "reply"],
            ["r", "https://example.org/release"],
            ["t", "herald"],
            ["t", "rust"]
        ])
    );
    assert_eq!(p.id, ev["id"].as_str().unwrap());
    // The URL is NIP-19's note1… of the id.
    let note = p.url.as_deref().unwrap().strip_prefix("nostr:").unwrap();
    let (hrp, data) = bech32::decode(note).unwrap();
    assert_eq!((hrp.as_str(), hex::encode(data)), ("note", p.id.clone()));
    assert_eq!(outcome_of(&results, &a.url), &Outcome::Accepted(String::new()));
    assert_eq!(outcome_of(&results, &b.url), &Outcome::Accepted(String::new()));
}

#[tokio::test]
async fn media_are_linked_by_url_with_imeta_tags() {
    let a = fake::start().await;
    let mut post = Outgoing::text("Look", key());
    let image = |url: Option<&str>| herald_platforms::Media {
        kind: herald_platforms::MediaKind::Image,
        mime: "image/png".into(),
        filename: "a.png".into(),
        bytes: bytes::Bytes::from_static(b"png"),
        alt: Some("a chart".into()),
        url: url.map(str::to_string),
    };
    post.media.push(image(Some("https://media.example.org/a.png")));
    Nostr::publish_within(&common::net(), &conn(&[&a.url], SECRET), &post, FAST).await.unwrap();
    let ev = &a.events()[0];
    assert_signed(ev);
    assert_eq!(ev["content"], "Look\nhttps://media.example.org/a.png");
    assert_eq!(ev["tags"], json!([["imeta", "url https://media.example.org/a.png", "m image/png", "alt a chart"]]));

    // A file Herald cannot point to is refused before any relay is asked.
    post.media = vec![image(None)];
    let e = Nostr::publish_within(&common::net(), &conn(&[&a.url], SECRET), &post, FAST).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("media_url")));
    assert_eq!(a.events().len(), 1);
}

#[tokio::test]
async fn a_retry_rebuilds_the_same_event_and_relays_call_it_a_duplicate() {
    let relay = fake::start().await;
    let net = common::net();
    let c = conn(&[&relay.url], SECRET);
    let post = Outgoing::text("only once", key());

    // The relay stores the event but its OK never arrives.
    relay.answer(Answer::Swallow);
    let e = Nostr::publish_within(&net, &c, &post, FAST).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert_eq!(relay.events().len(), 1);

    relay.answer(Answer::Accept);
    let (p, results) = Nostr::publish_within(&net, &c, &post, FAST).await.unwrap();
    assert_eq!(relay.events().len(), 1, "no second note");
    assert_eq!(p.id, relay.events()[0]["id"].as_str().unwrap());
    assert!(matches!(&results[0].outcome, Outcome::Accepted(m) if m.starts_with("duplicate:")), "{results:?}");
}

#[tokio::test]
async fn one_accepting_relay_is_enough() {
    let (good, bad) = (fake::start().await, fake::start().await);
    bad.answer(Answer::Invalid);
    let dead = dead_relay().await;
    let (p, results) = Nostr::publish_within(
        &common::net(),
        &conn(&[&good.url, &bad.url, &dead], SECRET),
        &Outgoing::text("hi", key()),
        FAST,
    )
    .await
    .unwrap();
    assert_eq!(good.events()[0]["id"], p.id);
    assert!(matches!(outcome_of(&results, &bad.url), Outcome::Refused(m) if m.starts_with("invalid:")));
    assert!(matches!(outcome_of(&results, &dead), Outcome::Down(_)));
}

#[tokio::test]
async fn refusals_map_to_their_classes() {
    let (a, b) = (fake::start().await, fake::start().await);
    let net = common::net();
    let c = conn(&[&a.url, &b.url], SECRET);
    let post = || Outgoing::text("x", key());

    a.answer(Answer::RateLimited);
    b.answer(Answer::Invalid);
    let e = Nostr::publish_within(&net, &c, &post(), FAST).await.unwrap_err();
    assert_eq!((e.class, e.retry_after), (ErrorClass::RateLimited, Some(Duration::from_secs(60))));
    assert!(e.message.contains("rate-limited: slow down"), "{e}");

    a.answer(Answer::Blocked);
    let e = Nostr::publish_within(&net, &c, &post(), FAST).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("relay_refused")));
    assert!(e.message.contains("blocked: this pubkey") && e.message.contains("invalid: event signature"), "{e}");

    // Silent relays: the event may have landed, and a retry is a duplicate, so it is transient.
    a.answer(Answer::Never);
    b.answer(Answer::Never);
    let started = Instant::now();
    let e = Nostr::publish_within(&net, &c, &post(), FAST).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
    assert!(started.elapsed() < FAST * 3, "the relays are asked at once, each within the wait");

    let dead = dead_relay().await;
    let e = Nostr::publish_within(&net, &conn(&[&dead], SECRET), &post(), FAST).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
    assert!(a.events().is_empty() && b.events().is_empty());
}

#[tokio::test]
async fn wss_goes_through_tls_and_a_failed_handshake_is_transient() {
    // The fake speaks plain WebSocket, so the TLS handshake to it fails before anything is sent.
    let relay = fake::start().await;
    let wss = relay.url.replace("ws://", "wss://");
    let started = Instant::now();
    let e = Nostr::publish_within(&common::net(), &conn(&[&wss], SECRET), &Outgoing::text("x", key()), FAST)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
    assert!(e.message.contains("TLS"), "{e}");
    assert!(started.elapsed() < FAST);
    assert!(relay.received().is_empty());
}

#[tokio::test]
async fn private_relays_are_refused_by_the_guard() {
    let relay = fake::start().await;
    let net = common::strict_net();
    let e = Nostr.publish(&net, &conn(&[&relay.url], SECRET), &Outgoing::text("x", key())).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("ssrf_blocked_destination")));
    let e = Nostr.verify(&net, &conn(&[&relay.url], SECRET)).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("ssrf_blocked_destination")));
    assert_eq!(relay.connections(), 0);
}

#[tokio::test]
async fn delete_sends_a_nip09_deletion_request() {
    let relay = fake::start().await;
    let net = common::net();
    let c = conn(&[&relay.url], SECRET);
    let p = Nostr.publish(&net, &c, &Outgoing::text("regret", key())).await.unwrap();
    Nostr.delete(&net, &c, &p.id).await.unwrap();
    let events = relay.events();
    let deletion = &events[1];
    assert_signed(deletion);
    assert_eq!(deletion["kind"], 5);
    assert_eq!(deletion["tags"], json!([["e", p.id], ["k", "1"]]));
}

#[tokio::test]
async fn pacing_is_per_key() {
    let p = Nostr.pacing(&conn(&["wss://relay.example.org"], NSEC)).unwrap();
    assert_eq!(p.bucket, format!("nostr:{PUBKEY}"));
    assert_eq!((p.capacity, p.per_second), (5.0, 1.0));
    assert!(Nostr.pacing(&conn(&["wss://relay.example.org"], "junk")).is_none());
}

#[tokio::test]
async fn the_secret_key_never_appears_in_errors() {
    let relay = fake::start().await;
    relay.answer(Answer::Invalid);
    let net = common::net();
    let mut errors: Vec<PlatformError> = Vec::new();
    for secret in [SECRET, NSEC] {
        errors.push(
            Nostr::publish_within(&net, &conn(&[&relay.url], secret), &Outgoing::text("x", key()), FAST)
                .await
                .unwrap_err(),
        );
    }
    for bad in [&SECRET[..63], &NSEC[..60]] {
        errors.push(Nostr.verify(&net, &conn(&[&relay.url], bad)).await.unwrap_err());
    }
    errors.push(
        Nostr
            .verify(&net, &common::connection(json!({"relays": [relay.url]}), json!({"secret_key": 5})))
            .await
            .unwrap_err(),
    );
    let shown = format!("{errors:?} {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
    for secret in [SECRET, NSEC, &SECRET[..63], &NSEC[..60]] {
        assert!(!shown.contains(secret), "the key leaked: {shown}");
    }
}

// ---- A real relay ------------------------------------------------------------------------------

/// Reads events back over a WebSocket of the test's own.
async fn req(relay: &str, filter: Value) -> Vec<Value> {
    let url = url::Url::parse(relay).unwrap();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port_or_known_default().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(relay, tcp).await.unwrap();
    ws.send(Message::text(json!(["REQ", "readback", filter]).to_string())).await.unwrap();
    let mut events = Vec::new();
    loop {
        let msg =
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the relay answers").unwrap().unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        match v[0].as_str() {
            Some("EVENT") => events.push(v[2].clone()),
            Some("EOSE") => break,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    events
}

#[tokio::test]
async fn against_a_real_relay() {
    let Some(relay) = common::peer("HERALD_TEST_NOSTR_RELAY") else { return };
    let net = common::net();
    let c = conn(&[&relay], SECRET);

    let v = Nostr.verify(&net, &c).await.unwrap();
    assert_eq!(v.account, NPUB);
    assert!(v.settings.get("unreachable_relays").is_none(), "{}", v.settings);

    let mut post =
        Outgoing::text(format!("Herald test {} \"quoted\" \\ Привет 🎉 #HeraldTest", uuid::Uuid::now_v7()), key());
    post.link = Some("https://example.org/herald".into());
    let (p, results) = Nostr::publish_within(&net, &c, &post, Duration::from_secs(10)).await.unwrap();
    assert_eq!(results[0].outcome, Outcome::Accepted(String::new()), "{results:?}");

    let found = req(&relay, json!({"ids": [p.id]})).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let ev = &found[0];
    assert_signed(ev);
    assert_eq!(ev["content"], format!("{}\n\nhttps://example.org/herald", post.text));
    assert_eq!(ev["tags"], json!([["r", "https://example.org/herald"], ["t", "heraldtest"]]));
    assert_eq!(ev["created_at"], post.created_at.timestamp());

    // A retry sends the very same event, and the relay says so.
    let (again, results) = Nostr::publish_within(&net, &c, &post, Duration::from_secs(10)).await.unwrap();
    assert_eq!(again.id, p.id);
    assert!(matches!(&results[0].outcome, Outcome::Accepted(m) if m.starts_with("duplicate:")), "{results:?}");
    assert_eq!(req(&relay, json!({"ids": [p.id]})).await.len(), 1);

    // A reply threads to it.
    let mut reply = Outgoing::text("a reply", key());
    reply.reply_to = Some(p.id.clone());
    let r = Nostr.publish(&net, &c, &reply).await.unwrap();
    let found = req(&relay, json!({"#e": [p.id], "kinds": [1]})).await;
    assert!(found.iter().any(|e| e["id"] == r.id), "{found:?}");
}

/// A kind-7 reaction to `target` as another client would store it (the fake does not check
/// signatures).
fn reaction(n: u32, target: &str, content: &str) -> Value {
    json!({
        "id": format!("{n:064x}"), "pubkey": "ab".repeat(32), "created_at": 1_700_000_000 + n as i64, "kind": 7,
        "tags": [["e", target], ["p", PUBKEY]], "content": content, "sig": "cd".repeat(64),
    })
}

#[tokio::test]
async fn metrics_count_reactions_once_across_relays() {
    let (a, b) = (fake::start().await, fake::start().await);
    let c = conn(&[&a.url, &b.url], SECRET);
    let (p, _) = Nostr::publish_within(&common::net(), &c, &Outgoing::text("react", key()), FAST).await.unwrap();
    let other = "ef".repeat(32);
    for (n, content) in [(1, "+"), (2, "+"), (3, "🔥"), (4, "-"), (5, "")] {
        a.insert(reaction(n, &p.id, content));
    }
    // b has two of the same and one of its own; a reaction to another note does not count.
    b.insert(reaction(1, &p.id, "+"));
    b.insert(reaction(3, &p.id, "🔥"));
    b.insert(reaction(6, &p.id, "🔥"));
    b.insert(reaction(7, &other, "+"));

    let m = Nostr::metrics_within(&common::net(), &c, &p.id, FAST).await.unwrap().expect("Nostr has reactions");
    assert_eq!(m.get("reactions"), Some(6));
    assert_eq!((m.get("reactions:+"), m.get("reactions:🔥"), m.get("reactions:-")), (Some(3), Some(2), Some(1)));
    let req = a.received().into_iter().find(|m| m[0] == "REQ").unwrap();
    assert_eq!(req[2]["kinds"], json!([7]));
    assert_eq!(req[2]["#e"], json!([p.id]));

    // One relay silent: the other's count stands.
    b.answer(Answer::Never);
    let m = Nostr::metrics_within(&common::net(), &c, &p.id, FAST).await.unwrap().unwrap();
    assert_eq!(m.get("reactions"), Some(5));
}

#[tokio::test]
async fn metrics_without_any_relay_answering_are_transient() {
    let a = fake::start().await;
    a.answer(Answer::Never);
    let c = conn(&[&a.url, &dead_relay().await], SECRET);
    let started = Instant::now();
    let e = Nostr::metrics_within(&common::net(), &c, &"ab".repeat(32), FAST).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(started.elapsed() < FAST * 3);
    // Not an event id: refused before any relay is asked.
    assert_eq!(Nostr.metrics(&common::net(), &c, "nope").await.unwrap_err().class, ErrorClass::Invalid);
}

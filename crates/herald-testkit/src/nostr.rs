//! A fake Nostr relay: a WebSocket server on 127.0.0.1 that speaks NIP-01. It answers `EVENT`
//! with `OK` (`true "duplicate: …"` for an id it has), `REQ` with its matching stored events then
//! `EOSE`, and can be told to refuse (`rate-limited:`, `invalid:`, `blocked:`) or to go silent.
//!
//! It checks an event's shape but not its id or signature (no hashing here); the real relay in CI
//! does that.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Message;

/// How the relay answers from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Store events and answer `OK true`.
    Accept,
    /// `OK false "rate-limited: …"`.
    RateLimited,
    /// `OK false "invalid: …"`.
    Invalid,
    /// `OK false "blocked: …"`.
    Blocked,
    /// Read everything, answer nothing.
    Never,
    /// Store events but never answer them: a lost `OK`.
    Swallow,
}

#[derive(Default)]
struct Relay {
    events: Mutex<Vec<Value>>,
    received: Mutex<Vec<Value>>,
    answer: Mutex<Option<Answer>>,
    connections: AtomicUsize,
}

/// A running fake relay; it stops when dropped.
pub struct FakeRelay {
    /// `ws://127.0.0.1:<port>/`.
    pub url: String,
    pub addr: SocketAddr,
    relay: Arc<Relay>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> FakeRelay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a fake relay");
    let addr = listener.local_addr().expect("local addr");
    let relay = Arc::new(Relay::default());
    let shared = relay.clone();
    let task = tokio::spawn(async move {
        // The connections live in the set, so aborting this task ends them too.
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            connections.spawn(serve(stream, shared.clone()));
        }
    });
    FakeRelay { url: format!("ws://{addr}/"), addr, relay, task }
}

impl FakeRelay {
    pub fn answer(&self, answer: Answer) {
        *self.relay.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
    }

    /// The events stored, in the order they came.
    pub fn events(&self) -> Vec<Value> {
        self.relay.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every message clients sent (`["EVENT", …]`, `["REQ", …]`, `["CLOSE", …]`).
    pub fn received(&self) -> Vec<Value> {
        self.relay.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many connections were opened.
    pub fn connections(&self) -> usize {
        self.relay.connections.load(Ordering::SeqCst)
    }

    /// Stores an event as if a client had published it.
    pub fn insert(&self, event: Value) {
        self.relay.events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}

async fn serve(stream: tokio::net::TcpStream, relay: Arc<Relay>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
    while let Some(Ok(message)) = ws.next().await {
        let text = match message {
            Message::Text(t) => t.as_str().to_string(),
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(Value::Array(msg)) = serde_json::from_str::<Value>(&text) else {
            let _ = ws.send(Message::text(json!(["NOTICE", "could not parse the message"]).to_string())).await;
            continue;
        };
        relay.received.lock().unwrap_or_else(|e| e.into_inner()).push(Value::Array(msg.clone()));
        let answer = relay.answer.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(Answer::Accept);
        if answer == Answer::Never {
            continue;
        }
        let is_event = msg.first().and_then(Value::as_str) == Some("EVENT");
        let replies = match msg.first().and_then(Value::as_str) {
            Some("EVENT") => vec![on_event(&relay, msg.get(1).cloned().unwrap_or_default(), answer)],
            Some("REQ") => on_req(&relay, &msg),
            Some("CLOSE") => vec![],
            _ => vec![json!(["NOTICE", "unknown message type"])],
        };
        if answer == Answer::Swallow && is_event {
            continue;
        }
        for reply in replies {
            if ws.send(Message::text(reply.to_string())).await.is_err() {
                return;
            }
        }
    }
}

fn hex_of(v: &Value, len: usize) -> bool {
    v.as_str().is_some_and(|s| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn on_event(relay: &Relay, event: Value, answer: Answer) -> Value {
    let id = event["id"].as_str().unwrap_or_default().to_string();
    let well_formed = hex_of(&event["id"], 64)
        && hex_of(&event["pubkey"], 64)
        && hex_of(&event["sig"], 128)
        && event["created_at"].is_i64()
        && event["kind"].is_u64()
        && event["content"].is_string()
        && event["tags"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t.as_array().is_some_and(|t| t.iter().all(Value::is_string))));
    if !well_formed {
        return json!(["OK", id, false, "invalid: the event is malformed"]);
    }
    match answer {
        Answer::RateLimited => return json!(["OK", id, false, "rate-limited: slow down there chief"]),
        Answer::Invalid => return json!(["OK", id, false, "invalid: event signature is bad"]),
        Answer::Blocked => return json!(["OK", id, false, "blocked: this pubkey is not admitted here"]),
        Answer::Accept | Answer::Never | Answer::Swallow => {}
    }
    let mut events = relay.events.lock().unwrap_or_else(|e| e.into_inner());
    if events.iter().any(|e| e["id"] == event["id"]) {
        return json!(["OK", id, true, "duplicate: already have this event"]);
    }
    events.push(event);
    json!(["OK", id, true, ""])
}

fn on_req(relay: &Relay, msg: &[Value]) -> Vec<Value> {
    let sub = msg.get(1).cloned().unwrap_or_default();
    let filters = &msg[2.min(msg.len())..];
    let events = relay.events.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for filter in filters {
        let limit = filter["limit"].as_u64().map_or(usize::MAX, |l| l as usize);
        let mut matching: Vec<&Value> = events.iter().filter(|e| matches(filter, e)).collect();
        matching.sort_by_key(|e| std::cmp::Reverse(e["created_at"].as_i64()));
        for event in matching.into_iter().take(limit) {
            if !out.iter().any(|o: &Value| o[2]["id"] == event["id"]) {
                out.push(json!(["EVENT", sub, event]));
            }
        }
    }
    out.push(json!(["EOSE", sub]));
    out
}

/// NIP-01 filter matching: every given condition holds.
fn matches(filter: &Value, event: &Value) -> bool {
    let one_of = |key: &str, value: &Value| filter[key].as_array().is_none_or(|list| list.contains(value));
    let mut ok = one_of("ids", &event["id"]) && one_of("authors", &event["pubkey"]) && one_of("kinds", &event["kind"]);
    if let Some(since) = filter["since"].as_i64() {
        ok &= event["created_at"].as_i64().is_some_and(|t| t >= since);
    }
    if let Some(until) = filter["until"].as_i64() {
        ok &= event["created_at"].as_i64().is_some_and(|t| t <= until);
    }
    if let Some(map) = filter.as_object() {
        for (key, wanted) in map.iter().filter(|(k, _)| k.starts_with('#') && k.len() == 2) {
            let name = &key[1..];
            let wanted = wanted.as_array().cloned().unwrap_or_default();
            ok &= event["tags"]
                .as_array()
                .is_some_and(|tags| tags.iter().any(|t| t[0].as_str() == Some(name) && wanted.contains(&t[1])));
        }
    }
    ok
}

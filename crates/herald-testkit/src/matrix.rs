//! A fake Matrix homeserver: password login with client-chosen devices, whoami, joined rooms,
//! aliases, media upload, `PUT …/send/{type}/{txnId}` with Synapse's per-device transaction
//! dedupe (a repeat returns the first event id, whatever its body), redactions, and
//! `/rooms/{room}/messages` for reading back, and `/relations/{event}/{rel_type}` paged as Synapse
//! pages it (reactions come from [`Homeserver::react`]). Errors are `{"errcode","error"}`; a rate limit is a
//! 429 with both `Retry-After` and `retry_after_ms`, as Synapse sends it.

use crate::{Failure, FakeServer, Shared, bearer, json, json_with};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

pub const SERVER_NAME: &str = "fake.local";
/// The account the fake knows, its password and a token already issued to it.
pub const USER: &str = "@herald:fake.local";
pub const LOCALPART: &str = "herald";
pub const PASSWORD: &str = "correct horse battery staple";
pub const TOKEN: &str = "syt_aGVyYWxk_fakeFakeFake_0";
pub const TOKEN_DEVICE: &str = "PHONE";
/// A room the account is in, its alias, and a room it is not in.
pub const ROOM: &str = "!herald:fake.local";
pub const ALIAS: &str = "#news:fake.local";
pub const OTHER_ROOM: &str = "!elsewhere:fake.local";

/// One accepted event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub sender: String,
    pub device_id: String,
    pub txn_id: String,
    pub content: Value,
    pub origin_server_ts: i64,
    /// The id of the redaction that removed it.
    pub redacted_by: Option<String>,
}

/// One uploaded file.
#[derive(Debug, Clone)]
pub struct Upload {
    pub content_uri: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub bytes: Bytes,
}

/// The homeserver's data.
pub struct Homeserver {
    /// Off: `/login` answers 404 `M_UNRECOGNIZED`, as an OAuth-only server does.
    pub password_login: bool,
    /// user id -> password.
    pub passwords: HashMap<String, String>,
    /// access token -> (user id, device id).
    pub tokens: HashMap<String, (String, String)>,
    /// room id -> members.
    pub rooms: HashMap<String, Vec<String>>,
    pub aliases: HashMap<String, String>,
    pub uploads: Vec<Upload>,
    /// Every event, in order, across rooms (redactions included).
    pub events: Vec<Event>,
    /// (user, device, transaction path) -> the event id first returned.
    txns: HashMap<(String, String, String), String>,
    next: u64,
}

impl Homeserver {
    /// The `m.room.message` events of a room, oldest first, redacted ones left out.
    pub fn messages(&self, room: &str) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.room_id == room && e.event_type == "m.room.message" && e.redacted_by.is_none())
            .cloned()
            .collect()
    }

    /// `sender` reacts to `event_id` with `key` (an `m.reaction` annotation); returns its id.
    pub fn react(&mut self, room: &str, event_id: &str, sender: &str, key: &str) -> String {
        let n = self.next_id();
        let id = format!("$reaction{n}");
        self.events.push(Event {
            event_id: id.clone(),
            room_id: room.to_string(),
            event_type: "m.reaction".into(),
            sender: sender.to_string(),
            device_id: "OTHER".into(),
            txn_id: format!("r{n}"),
            content: json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}),
            origin_server_ts: chrono::Utc::now().timestamp_millis(),
            redacted_by: None,
        });
        id
    }

    /// Logs every session of the account out, as a password change does.
    pub fn revoke_all(&mut self) {
        self.tokens.clear();
    }

    fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

pub async fn start() -> FakeServer<Homeserver> {
    let mut rooms = HashMap::new();
    rooms.insert(ROOM.to_string(), vec![USER.to_string()]);
    rooms.insert(OTHER_ROOM.to_string(), vec!["@someone:fake.local".to_string()]);
    let data = Homeserver {
        password_login: true,
        passwords: HashMap::from([(USER.to_string(), PASSWORD.to_string())]),
        tokens: HashMap::from([(TOKEN.to_string(), (USER.to_string(), TOKEN_DEVICE.to_string()))]),
        rooms,
        aliases: HashMap::from([(ALIAS.to_string(), ROOM.to_string())]),
        uploads: Vec::new(),
        events: Vec::new(),
        txns: HashMap::new(),
        next: 0,
    };
    let router = Router::new()
        .route("/_matrix/client/v3/login", post(login))
        .route("/_matrix/client/v3/account/whoami", get(whoami))
        .route("/_matrix/client/v3/joined_rooms", get(joined_rooms))
        .route("/_matrix/client/v3/directory/room/{alias}", get(directory))
        .route("/_matrix/media/v3/upload", post(upload))
        .route("/_matrix/client/v3/rooms/{room}/send/{event_type}/{txn}", put(send))
        .route("/_matrix/client/v3/rooms/{room}/redact/{event_id}/{txn}", put(redact))
        .route("/_matrix/client/v3/rooms/{room}/messages", get(messages))
        .route("/_matrix/client/v1/rooms/{room}/relations/{event_id}/{rel_type}", get(relations))
        .fallback(|| async { refuse(404, "M_UNRECOGNIZED", "Unrecognized request") });
    FakeServer::start(router, data, render).await
}

type Fake = State<Arc<Shared<Homeserver>>>;

/// A homeserver's `{"errcode","error"}` refusal.
pub struct MatrixError {
    status: u16,
    errcode: &'static str,
    error: String,
}

fn refuse(status: u16, errcode: &'static str, error: impl Into<String>) -> MatrixError {
    MatrixError { status, errcode, error: error.into() }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let mut body = json!({"errcode": self.errcode, "error": self.error});
        if self.errcode == "M_UNKNOWN_TOKEN" {
            body["soft_logout"] = json!(false);
        }
        json(self.status, body)
    }
}

type Answer = Result<Response, MatrixError>;

fn render(failure: &Failure) -> Response {
    match failure {
        Failure::RateLimited { retry_after_secs } => json_with(
            429,
            &[("retry-after", retry_after_secs.to_string())],
            json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests", "retry_after_ms": retry_after_secs * 1000}),
        ),
        Failure::Unauthorized => refuse(401, "M_UNKNOWN_TOKEN", "Invalid access token passed.").into_response(),
        Failure::ServerError(status) => refuse(*status, "M_UNKNOWN", "Internal server error").into_response(),
        // An older homeserver: the deprecated body field only, no header.
        Failure::Named("rate_limited_ms") => {
            json(429, json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests", "retry_after_ms": 2500}))
        }
        Failure::Named("forbidden") => {
            refuse(403, "M_FORBIDDEN", "You don't have permission to post that to the room.").into_response()
        }
        Failure::Named("too_large") => refuse(413, "M_TOO_LARGE", "Upload request body is too large").into_response(),
        _ => refuse(500, "M_UNKNOWN", "Internal server error").into_response(),
    }
}

/// The (user, device) of the request's token, or Synapse's 401.
fn session(fake: &Shared<Homeserver>, headers: &HeaderMap) -> Result<(String, String), MatrixError> {
    let token = bearer(headers).ok_or_else(|| refuse(401, "M_MISSING_TOKEN", "Missing access token"))?;
    fake.data()
        .tokens
        .get(&token)
        .cloned()
        .ok_or_else(|| refuse(401, "M_UNKNOWN_TOKEN", "Invalid access token passed."))
}

fn body_json(body: &Bytes) -> Result<Value, MatrixError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(refuse(400, "M_NOT_JSON", "Content not JSON.")),
    }
}

fn member(data: &Homeserver, user: &str, room: &str) -> Result<(), MatrixError> {
    match data.rooms.get(room) {
        Some(members) if members.iter().any(|m| m == user) => Ok(()),
        _ => Err(refuse(403, "M_FORBIDDEN", format!("User {user} not in room {room}"))),
    }
}

async fn login(State(fake): Fake, body: Bytes) -> Answer {
    let v = body_json(&body)?;
    let mut data = fake.data();
    if !data.password_login {
        return Err(refuse(404, "M_UNRECOGNIZED", "Unrecognized request"));
    }
    if v["type"] != "m.login.password" {
        return Err(refuse(400, "M_UNKNOWN", "Unknown login type"));
    }
    let user = v["identifier"]["user"].as_str().or_else(|| v["user"].as_str()).unwrap_or_default();
    let user_id = if user.starts_with('@') { user.to_string() } else { format!("@{user}:{SERVER_NAME}") };
    if data.passwords.get(&user_id).is_none_or(|p| Some(p.as_str()) != v["password"].as_str()) {
        return Err(refuse(403, "M_FORBIDDEN", "Invalid username or password"));
    }
    let n = data.next_id();
    let device_id = v["device_id"].as_str().map(str::to_string).unwrap_or_else(|| format!("DEV{n:07}"));
    let token = format!("syt_fake_{n}");
    data.tokens.insert(token.clone(), (user_id.clone(), device_id.clone()));
    Ok(json(
        200,
        json!({"user_id": user_id, "access_token": token, "device_id": device_id, "home_server": SERVER_NAME}),
    ))
}

async fn whoami(State(fake): Fake, headers: HeaderMap) -> Answer {
    let (user_id, device_id) = session(&fake, &headers)?;
    Ok(json(200, json!({"user_id": user_id, "device_id": device_id, "is_guest": false})))
}

async fn joined_rooms(State(fake): Fake, headers: HeaderMap) -> Answer {
    let (user, _) = session(&fake, &headers)?;
    let data = fake.data();
    let mut rooms: Vec<&String> = data.rooms.iter().filter(|(_, m)| m.contains(&user)).map(|(r, _)| r).collect();
    rooms.sort();
    Ok(json(200, json!({"joined_rooms": rooms})))
}

async fn directory(State(fake): Fake, headers: HeaderMap, Path(alias): Path<String>) -> Answer {
    session(&fake, &headers)?;
    match fake.data().aliases.get(&alias) {
        Some(room) => Ok(json(200, json!({"room_id": room, "servers": [SERVER_NAME]}))),
        None => Err(refuse(404, "M_NOT_FOUND", format!("Room alias {alias} not found"))),
    }
}

async fn upload(
    State(fake): Fake,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Answer {
    session(&fake, &headers)?;
    let mut data = fake.data();
    let n = data.next_id();
    let content_uri = format!("mxc://{SERVER_NAME}/media{n}");
    data.uploads.push(Upload {
        content_uri: content_uri.clone(),
        content_type: headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string),
        filename: query.get("filename").cloned(),
        bytes: body,
    });
    Ok(json(200, json!({"content_uri": content_uri})))
}

/// Creates an event once per (user, device, path); a repeat returns the first id.
fn create_event(
    data: &mut Homeserver,
    who: (String, String),
    room: &str,
    event_type: &str,
    txn: &str,
    content: Value,
) -> Result<String, MatrixError> {
    let (user, device) = who;
    member(data, &user, room)?;
    let key = (user.clone(), device.clone(), format!("{room}/{event_type}/{txn}"));
    if let Some(id) = data.txns.get(&key) {
        return Ok(id.clone());
    }
    let n = data.next_id();
    let event_id = format!("$event{n}");
    data.events.push(Event {
        event_id: event_id.clone(),
        room_id: room.to_string(),
        event_type: event_type.to_string(),
        sender: user,
        device_id: device,
        txn_id: txn.to_string(),
        content,
        origin_server_ts: chrono::Utc::now().timestamp_millis(),
        redacted_by: None,
    });
    data.txns.insert(key, event_id.clone());
    Ok(event_id)
}

async fn send(
    State(fake): Fake,
    headers: HeaderMap,
    Path((room, event_type, txn)): Path<(String, String, String)>,
    body: Bytes,
) -> Answer {
    let who = session(&fake, &headers)?;
    let content = body_json(&body)?;
    let event_id = create_event(&mut fake.data(), who, &room, &event_type, &txn, content)?;
    Ok(json(200, json!({"event_id": event_id})))
}

async fn redact(
    State(fake): Fake,
    headers: HeaderMap,
    Path((room, event_id, txn)): Path<(String, String, String)>,
    body: Bytes,
) -> Answer {
    let who = session(&fake, &headers)?;
    let content = body_json(&body)?;
    let mut data = fake.data();
    if !data.events.iter().any(|e| e.event_id == event_id && e.room_id == room) {
        return Err(refuse(404, "M_NOT_FOUND", "Event not found"));
    }
    let redaction = create_event(&mut data, who, &room, "m.room.redaction", &txn, content)?;
    if let Some(e) = data.events.iter_mut().find(|e| e.event_id == event_id) {
        e.redacted_by.get_or_insert(redaction.clone());
    }
    Ok(json(200, json!({"event_id": redaction})))
}

async fn messages(
    State(fake): Fake,
    headers: HeaderMap,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let (user, device) = session(&fake, &headers)?;
    let data = fake.data();
    member(&data, &user, &room)?;
    let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10usize);
    let mut events: Vec<&Event> = data.events.iter().filter(|e| e.room_id == room).collect();
    if query.get("dir").map(String::as_str) != Some("f") {
        events.reverse();
    }
    let chunk: Vec<Value> = events
        .into_iter()
        .take(limit)
        .map(|e| {
            let mut unsigned = json!({});
            // Synapse shows the transaction id only to the device that sent the event.
            if e.sender == user && e.device_id == device {
                unsigned["transaction_id"] = json!(e.txn_id);
            }
            if let Some(r) = &e.redacted_by {
                unsigned["redacted_because"] = json!({"event_id": r});
            }
            let mut v = client_event(e);
            if e.redacted_by.is_some() {
                v["content"] = json!({});
            }
            v["unsigned"] = unsigned;
            v
        })
        .collect();
    Ok(json(200, json!({"chunk": chunk, "start": "s0", "end": "s1"})))
}

/// The events relating to `event_id` with `rel_type`, newest first, `limit` (default 5, as in
/// Synapse) a page; `next_batch` is the offset of the next page. Redacted relations are gone.
async fn relations(
    State(fake): Fake,
    headers: HeaderMap,
    Path((room, event_id, rel_type)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let (user, _) = session(&fake, &headers)?;
    let data = fake.data();
    member(&data, &user, &room)?;
    if !data.events.iter().any(|e| e.event_id == event_id && e.room_id == room) {
        return Err(refuse(404, "M_NOT_FOUND", "Event not found"));
    }
    let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(5usize).clamp(1, 1000);
    let from = query.get("from").and_then(|f| f.parse().ok()).unwrap_or(0usize);
    let related: Vec<&Event> = data
        .events
        .iter()
        .rev()
        .filter(|e| e.room_id == room && e.redacted_by.is_none())
        .filter(|e| {
            let r = &e.content["m.relates_to"];
            r["event_id"] == event_id.as_str() && r["rel_type"] == rel_type.as_str()
        })
        .collect();
    let chunk: Vec<Value> = related.iter().skip(from).take(limit).map(|e| client_event(e)).collect();
    let mut body = json!({"chunk": chunk});
    if from + limit < related.len() {
        body["next_batch"] = json!((from + limit).to_string());
    }
    Ok(json(200, body))
}

/// An event in the client-server API's format.
fn client_event(e: &Event) -> Value {
    json!({
        "type": e.event_type,
        "room_id": e.room_id,
        "sender": e.sender,
        "event_id": e.event_id,
        "origin_server_ts": e.origin_server_ts,
        "content": e.content,
    })
}

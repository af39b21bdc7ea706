//! A fake Discord REST API (v10, `reference/platforms.md` §3): a bot with `Authorization: Bot`,
//! channels it can or cannot use, incoming webhooks with their token in the path, messages as
//! JSON or multipart (`payload_json` + `files[n]`), `nonce` + `enforce_nonce` deduplication, and
//! Discord's error bodies and rate-limit headers.
//!
//! Routes answer both at the root and under `/api/v10`, so a test may use either as the base.
//!
//! `Failure::RateLimited { retry_after_secs: n }` answers 429 with `Retry-After: n` and the
//! `X-RateLimit-*` headers, and a body `retry_after` of `n - 0.5` (Discord's exact float).
//! Named failures: `missing_permissions` (403 50013), `missing_access` (403 50001),
//! `unknown_webhook` (404 10015), `unknown_channel` (404 10003), `invalid_token` (401 50014),
//! `invalid_form_body` (400 50035 with nested field errors), `global_rate_limit` (429, global).

// Helpers return ready-made error responses; their size does not matter in a fake.
#![allow(clippy::result_large_err)]

use crate::telegram::{Upload, read_params};
use crate::{Failure, FakeServer, Shared, json, json_with};
use axum::Router;
use axum::extract::{self, Path, Request};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BOT_TOKEN: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4.fake.herald-bot-token";
pub const BOT_ID: &str = "1100000000000000001";
pub const BOT_USERNAME: &str = "Herald";
pub const GUILD_ID: &str = "1200000000000000001";
/// A text channel the bot may post in.
pub const CHANNEL_ID: &str = "1300000000000000001";
/// A channel the bot can see but may not post in (no Send Messages).
pub const READ_ONLY_CHANNEL_ID: &str = "1300000000000000002";
/// A channel the bot cannot see.
pub const HIDDEN_CHANNEL_ID: &str = "1300000000000000003";
pub const WEBHOOK_ID: &str = "1400000000000000001";
pub const WEBHOOK_TOKEN: &str = "herald-webhook-token_abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: String,
    pub guild_id: String,
    pub name: String,
    /// Discord's channel type: 0 text, 5 announcement, 15 forum, …
    pub kind: u8,
    /// VIEW_CHANNEL for the bot.
    pub can_view: bool,
    /// SEND_MESSAGES for the bot.
    pub can_send: bool,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub token: String,
    pub name: String,
    pub channel_id: String,
    pub guild_id: String,
}

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub channel_id: String,
    /// The bot's id, or the webhook's for webhook messages.
    pub author_id: String,
    pub content: String,
    pub nonce: Option<String>,
    pub files: Vec<Upload>,
    /// The `attachments` metadata sent with the files (descriptions are alt text).
    pub attachments: Vec<Value>,
    pub reply_to: Option<String>,
    pub allowed_mentions: Option<Value>,
    created: Instant,
}

#[derive(Debug)]
pub struct State {
    pub bot_token: String,
    pub channels: Vec<Channel>,
    pub webhooks: Vec<Webhook>,
    /// Every message made, in order.
    pub messages: Vec<Message>,
    /// How long a nonce deduplicates ("the past few minutes").
    pub nonce_window: Duration,
    pub max_content: usize,
    next_id: u64,
}

impl Default for State {
    fn default() -> Self {
        let channel = |id: &str, name: &str, can_view, can_send| Channel {
            id: id.to_string(),
            guild_id: GUILD_ID.to_string(),
            name: name.to_string(),
            kind: 0,
            can_view,
            can_send,
        };
        State {
            bot_token: BOT_TOKEN.to_string(),
            channels: vec![
                channel(CHANNEL_ID, "announcements", true, true),
                channel(READ_ONLY_CHANNEL_ID, "rules", true, false),
                channel(HIDDEN_CHANNEL_ID, "staff", false, false),
            ],
            webhooks: vec![Webhook {
                id: WEBHOOK_ID.to_string(),
                token: WEBHOOK_TOKEN.to_string(),
                name: "Herald Hook".to_string(),
                channel_id: CHANNEL_ID.to_string(),
                guild_id: GUILD_ID.to_string(),
            }],
            messages: Vec::new(),
            nonce_window: Duration::from_secs(300),
            max_content: 2000,
            next_id: 1_500_000_000_000_000_000,
        }
    }
}

type Ctx = Arc<Shared<State>>;

pub async fn start() -> FakeServer<State> {
    start_with(State::default()).await
}

pub async fn start_with(state: State) -> FakeServer<State> {
    let routes = Router::new()
        .route("/users/@me", get(me))
        .route("/channels/{id}", get(channel))
        .route("/channels/{id}/messages", post(create_message))
        .route("/webhooks/{id}/{token}", get(webhook).post(execute_webhook));
    let router = Router::new().merge(routes.clone()).nest("/api/v10", routes);
    FakeServer::start(router, state, render).await
}

/// Discord's error body: `{"message","code"}` (plus `errors` for form errors).
fn error(status: u16, code: u32, message: &str) -> Response {
    json(status, json!({"message": message, "code": code}))
}

fn form_error(errors: Value) -> Response {
    json(400, json!({"message": "Invalid Form Body", "code": 50035, "errors": errors}))
}

fn render(failure: &Failure) -> Response {
    match failure {
        Failure::RateLimited { retry_after_secs: n } => {
            // The body's float is exact; the header is whole seconds, rounded up.
            let exact = (*n as f64 - 0.5).max(0.0);
            let reset = chrono::Utc::now().timestamp_millis() as f64 / 1000.0 + exact;
            json_with(
                429,
                &[
                    ("retry-after", n.to_string()),
                    ("x-ratelimit-limit", "5".into()),
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", format!("{reset:.3}")),
                    ("x-ratelimit-reset-after", format!("{exact:.3}")),
                    ("x-ratelimit-bucket", "a06de9a4b5f7e1b0c0e7b4d5f6a7b8c9".into()),
                    ("x-ratelimit-scope", "user".into()),
                ],
                json!({"message": "You are being rate limited.", "retry_after": exact, "global": false}),
            )
        }
        Failure::Unauthorized => error(401, 0, "401: Unauthorized"),
        Failure::ServerError(502) => error(502, 0, "502: Bad Gateway"),
        Failure::ServerError(s) => error(*s, 0, &format!("{s}: Internal Server Error")),
        Failure::Named("missing_permissions") => error(403, 50013, "Missing Permissions"),
        Failure::Named("missing_access") => error(403, 50001, "Missing Access"),
        Failure::Named("unknown_webhook") => error(404, 10015, "Unknown Webhook"),
        Failure::Named("unknown_channel") => error(404, 10003, "Unknown Channel"),
        Failure::Named("invalid_token") => error(401, 50014, "Invalid authentication token provided"),
        Failure::Named("global_rate_limit") => json_with(
            429,
            &[
                ("retry-after", "1".into()),
                ("x-ratelimit-global", "true".into()),
                ("x-ratelimit-scope", "global".into()),
            ],
            json!({"message": "You are being rate limited.", "retry_after": 0.75, "global": true}),
        ),
        Failure::Named("invalid_form_body") => form_error(json!({
            "content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]},
            "embeds": {"0": {"description": {"_errors": [{"code": "BASE_TYPE_REQUIRED", "message": "This field is required"}]}}},
        })),
        Failure::Named(other) => error(400, 0, other),
        Failure::AnswerLate(_) | Failure::Hang(_) => error(500, 0, "500: Internal Server Error"),
    }
}

fn bot_authorized(data: &State, headers: &HeaderMap) -> bool {
    let v = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    v.strip_prefix("Bot ").is_some_and(|t| t == data.bot_token)
}

fn unauthorized() -> Response {
    error(401, 0, "401: Unauthorized")
}

async fn me(extract::State(shared): extract::State<Ctx>, headers: HeaderMap) -> Response {
    if !bot_authorized(&shared.data(), &headers) {
        return unauthorized();
    }
    json(
        200,
        json!({"id": BOT_ID, "username": BOT_USERNAME, "discriminator": "0", "global_name": null, "avatar": null, "bot": true, "verified": true, "flags": 0}),
    )
}

fn channel_json(c: &Channel) -> Value {
    json!({"id": c.id, "type": c.kind, "guild_id": c.guild_id, "name": c.name, "position": 0, "nsfw": false, "parent_id": null})
}

async fn channel(extract::State(shared): extract::State<Ctx>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let data = shared.data();
    if !bot_authorized(&data, &headers) {
        return unauthorized();
    }
    match data.channels.iter().find(|c| c.id == id) {
        None => error(404, 10003, "Unknown Channel"),
        Some(c) if !c.can_view => error(403, 50001, "Missing Access"),
        Some(c) => json(200, channel_json(c)),
    }
}

fn webhook_json(w: &Webhook, with_token: bool) -> Value {
    let mut v = json!({
        "id": w.id, "type": 1, "name": w.name, "avatar": null, "channel_id": w.channel_id,
        "guild_id": w.guild_id, "application_id": null,
    });
    if with_token {
        v["token"] = json!(w.token);
    }
    v
}

/// The webhook a path names: 10015 when the id is unknown, 50027 when the token is wrong.
fn find_webhook(data: &State, id: &str, token: &str) -> Result<Webhook, Response> {
    match data.webhooks.iter().find(|w| w.id == id) {
        None => Err(error(404, 10015, "Unknown Webhook")),
        Some(w) if w.token != token => Err(error(401, 50027, "Invalid Webhook Token")),
        Some(w) => Ok(w.clone()),
    }
}

async fn webhook(extract::State(shared): extract::State<Ctx>, Path((id, token)): Path<(String, String)>) -> Response {
    match find_webhook(&shared.data(), &id, &token) {
        Ok(w) => json(200, webhook_json(&w, true)),
        Err(r) => r,
    }
}

/// The message fields from a JSON body or a multipart body's `payload_json`, with its files.
async fn message_body(request: Request) -> Result<(Map<String, Value>, Vec<Upload>), Response> {
    let is_json = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (mut params, uploads) =
        read_params(request).await.map_err(|_| error(400, 50109, "The request body contains invalid JSON."))?;
    if !is_json && let Some(Value::String(payload)) = params.remove("payload_json") {
        match serde_json::from_str::<Value>(&payload) {
            Ok(Value::Object(map)) => params.extend(map),
            _ => return Err(error(400, 50109, "The request body contains invalid JSON.")),
        }
    }
    Ok((params, uploads))
}

/// Creates the message, or returns the one an enforced nonce already made.
fn make_message(
    data: &mut State,
    channel: &Channel,
    author_id: &str,
    params: &Map<String, Value>,
    uploads: Vec<Upload>,
    dedupe: bool,
) -> Response {
    let content = params.get("content").and_then(Value::as_str).unwrap_or_default().to_string();
    let nonce = match params.get("nonce") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if content.chars().count() > data.max_content {
        return form_error(
            json!({"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": format!("Must be {} or fewer in length.", data.max_content)}]}}),
        );
    }
    if nonce.as_ref().is_some_and(|n| n.chars().count() > 25) {
        return form_error(
            json!({"nonce": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 25 or fewer in length."}]}}),
        );
    }
    let files: Vec<Upload> = uploads.into_iter().filter(|u| u.field.starts_with("files[")).collect();
    let has_embeds = params.get("embeds").and_then(Value::as_array).is_some_and(|e| !e.is_empty());
    if content.trim().is_empty() && files.is_empty() && !has_embeds {
        return error(400, 50006, "Cannot send an empty message");
    }
    let enforce = params.get("enforce_nonce").and_then(Value::as_bool).unwrap_or(false);
    if dedupe
        && enforce
        && let Some(n) = &nonce
        && let Some(existing) = data.messages.iter().find(|m| {
            m.author_id == author_id && m.nonce.as_ref() == Some(n) && m.created.elapsed() < data.nonce_window
        })
    {
        return json(200, message_json(existing, channel));
    }
    let reply_to = params.get("message_reference").and_then(|r| r.get("message_id")).and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    if let Some(r) = &reply_to {
        let fail = params["message_reference"].get("fail_if_not_exists").and_then(Value::as_bool).unwrap_or(true);
        if fail && !data.messages.iter().any(|m| &m.id == r && m.channel_id == channel.id) {
            return form_error(
                json!({"message_reference": {"_errors": [{"code": "REPLIES_UNKNOWN_MESSAGE", "message": "Unknown message"}]}}),
            );
        }
    }
    data.next_id += 1;
    let message = Message {
        id: data.next_id.to_string(),
        channel_id: channel.id.clone(),
        author_id: author_id.to_string(),
        content,
        nonce,
        files,
        attachments: params.get("attachments").and_then(Value::as_array).cloned().unwrap_or_default(),
        reply_to,
        allowed_mentions: params.get("allowed_mentions").cloned(),
        created: Instant::now(),
    };
    let body = message_json(&message, channel);
    data.messages.push(message);
    json(200, body)
}

fn message_json(m: &Message, channel: &Channel) -> Value {
    let attachments: Vec<Value> = m
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let filename = f.filename.clone().unwrap_or_default();
            json!({
                "id": format!("{}{i}", m.id),
                "filename": filename,
                "size": f.bytes.len(),
                "content_type": f.content_type,
                "url": format!("https://cdn.discordapp.com/attachments/{}/{}{i}/{filename}", m.channel_id, m.id),
            })
        })
        .collect();
    let mut v = json!({
        "id": m.id,
        "type": if m.reply_to.is_some() { 19 } else { 0 },
        "channel_id": m.channel_id,
        "guild_id": channel.guild_id,
        "content": m.content,
        "author": {"id": m.author_id, "username": BOT_USERNAME, "bot": true},
        "attachments": attachments,
        "embeds": [],
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "tts": false,
        "pinned": false,
    });
    if let Some(n) = &m.nonce {
        v["nonce"] = json!(n);
    }
    if let Some(r) = &m.reply_to {
        v["message_reference"] = json!({"message_id": r, "channel_id": m.channel_id, "guild_id": channel.guild_id});
    }
    v
}

async fn create_message(
    extract::State(shared): extract::State<Ctx>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    if !bot_authorized(&shared.data(), request.headers()) {
        return unauthorized();
    }
    let (params, uploads) = match message_body(request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut data = shared.data();
    let channel = match data.channels.iter().find(|c| c.id == id) {
        None => return error(404, 10003, "Unknown Channel"),
        Some(c) if !c.can_view => return error(403, 50001, "Missing Access"),
        Some(c) if !c.can_send => return error(403, 50013, "Missing Permissions"),
        Some(c) => c.clone(),
    };
    make_message(&mut data, &channel, BOT_ID, &params, uploads, true)
}

async fn execute_webhook(
    extract::State(shared): extract::State<Ctx>,
    Path((id, token)): Path<(String, String)>,
    request: Request,
) -> Response {
    let wait = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "wait=true" || p == "wait=1"));
    let (params, uploads) = match message_body(request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut data = shared.data();
    let hook = match find_webhook(&data, &id, &token) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(channel) = data.channels.iter().find(|c| c.id == hook.channel_id).cloned() else {
        return error(404, 10003, "Unknown Channel");
    };
    // Webhooks take no nonce: every execution is a new message.
    let response = make_message(&mut data, &channel, &hook.id, &params, uploads, false);
    if wait || response.status() != 200 { response } else { axum::http::StatusCode::NO_CONTENT.into_response() }
}

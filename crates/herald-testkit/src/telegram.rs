//! A fake Telegram Bot API: `/bot<token>/<method>` with JSON, form or multipart bodies, the
//! `{"ok":…}` envelope, and the Bot API server's own error strings (`reference/platforms.md` §2).
//!
//! It knows one bot and a few chats ([`State::default`]): a public channel where the bot is an
//! administrator that may post, a private supergroup, a basic group and a private chat. Text sent
//! with a `parse_mode` is parsed the way Telegram does before it is stored and measured, so a test
//! can check that escaped text arrives literally. The fake parses escapes only: formatting
//! entities (bold, links) are not supported, and an unescaped reserved character is the error
//! Telegram gives for it.
//!
//! Named failures: `chat_not_found` (400), `bot_kicked` and `not_member` (403), `migrated` (400
//! with `migrate_to_chat_id` = [`MIGRATED_TO`]); any other name is a 400 `Bad Request: <name>`.

// Helpers return ready-made error responses; their size does not matter in a fake.
#![allow(clippy::result_large_err)]

use crate::{Failure, FakeServer, Shared, json};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{self, FromRequest, Multipart, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The token the fake accepts.
pub const TOKEN: &str = "123456:AAHerald-fake-token_0123456789abcdefgh";
pub const BOT_ID: i64 = 123456;
pub const BOT_USERNAME: &str = "herald_test_bot";
/// A public channel (`@herald_news`) where the bot is an administrator that may post.
pub const CHANNEL: &str = "@herald_news";
pub const CHANNEL_ID: i64 = -1001234567890;
/// A private supergroup (no username) where the bot is a member.
pub const SUPERGROUP_ID: i64 = -1009876543210;
/// A basic group where the bot is a member.
pub const GROUP_ID: i64 = -4567;
/// A private chat with a user.
pub const PRIVATE_ID: i64 = 42;
/// The chat id a `Failure::Named("migrated")` names.
pub const MIGRATED_TO: i64 = -1001999888777;

/// A chat the fake knows, with the bot's membership in it.
#[derive(Debug, Clone)]
pub struct Chat {
    pub id: i64,
    /// `private`, `group`, `supergroup` or `channel`.
    pub kind: &'static str,
    pub title: String,
    pub username: Option<String>,
    /// The bot's `ChatMember.status`: `creator`, `administrator`, `member`, `restricted`, `left`,
    /// `kicked`.
    pub bot_status: &'static str,
    /// `can_post_messages` (channel administrators).
    pub can_post: bool,
    /// `can_send_messages` (restricted members).
    pub can_send: bool,
}

/// A file part of a multipart request.
#[derive(Debug, Clone)]
pub struct Upload {
    pub field: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: i64,
    pub chat_id: i64,
    pub method: String,
    /// `text`, `photo` or `video`.
    pub kind: &'static str,
    /// The text or caption as users see it (entities parsed).
    pub text: Option<String>,
    /// The text or caption as it was sent.
    pub raw: Option<String>,
    pub parse_mode: Option<String>,
    /// The uploaded file, when the media came as a multipart part.
    pub upload: Option<Upload>,
    pub thread_id: Option<i64>,
    pub reply_to: Option<i64>,
    pub media_group_id: Option<String>,
    /// `link_preview_options.url`.
    pub preview_url: Option<String>,
}

/// The fake's data.
#[derive(Debug)]
pub struct State {
    pub token: String,
    pub bot_id: i64,
    pub bot_username: String,
    pub chats: Vec<Chat>,
    /// Every message made, in order.
    pub messages: Vec<Sent>,
    /// Message text limit in UTF-16 units after entity parsing.
    pub max_text: usize,
    /// Caption limit in UTF-16 units after entity parsing.
    pub max_caption: usize,
    next_message_id: i64,
    next_group_id: u64,
}

impl Default for State {
    fn default() -> Self {
        let chat = |id, kind, title: &str, username: Option<&str>, bot_status| Chat {
            id,
            kind,
            title: title.to_string(),
            username: username.map(str::to_string),
            bot_status,
            can_post: kind == "channel",
            can_send: true,
        };
        State {
            token: TOKEN.to_string(),
            bot_id: BOT_ID,
            bot_username: BOT_USERNAME.to_string(),
            chats: vec![
                chat(CHANNEL_ID, "channel", "Herald News", Some("herald_news"), "administrator"),
                chat(SUPERGROUP_ID, "supergroup", "Herald Team", None, "member"),
                chat(GROUP_ID, "group", "Herald Friends", None, "member"),
                chat(PRIVATE_ID, "private", "Ada", Some("ada"), "member"),
            ],
            messages: Vec::new(),
            max_text: 4096,
            max_caption: 1024,
            next_message_id: 100,
            next_group_id: 13_000_000_000_000_000,
        }
    }
}

impl State {
    /// The chat a `chat_id` parameter names: a number or `@username`.
    pub fn chat(&self, chat_id: &str) -> Option<&Chat> {
        match chat_id.strip_prefix('@') {
            Some(name) => {
                self.chats.iter().find(|c| c.username.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(name)))
            }
            None => chat_id.parse::<i64>().ok().and_then(|id| self.chats.iter().find(|c| c.id == id)),
        }
    }

    pub fn chat_mut(&mut self, id: i64) -> Option<&mut Chat> {
        self.chats.iter_mut().find(|c| c.id == id)
    }
}

type Ctx = Arc<Shared<State>>;

/// Starts the fake with the default bot and chats.
pub async fn start() -> FakeServer<State> {
    start_with(State::default()).await
}

pub async fn start_with(state: State) -> FakeServer<State> {
    let router = Router::new().route("/{bot}/{method}", any(handle));
    FakeServer::start(router, state, render).await
}

/// The Bot API error envelope.
fn error(code: u16, description: &str) -> Response {
    json(code, json!({"ok": false, "error_code": code, "description": description}))
}

fn ok(result: Value) -> Response {
    json(200, json!({"ok": true, "result": result}))
}

fn render(failure: &Failure) -> Response {
    match failure {
        Failure::RateLimited { retry_after_secs: n } => json(
            429,
            json!({
                "ok": false,
                "error_code": 429,
                "description": format!("Too Many Requests: retry after {n}"),
                "parameters": {"retry_after": n},
            }),
        ),
        Failure::Unauthorized => error(401, "Unauthorized"),
        // The front nginx answers a dead backend with its own page, not the envelope.
        Failure::ServerError(502) => (
            axum::http::StatusCode::BAD_GATEWAY,
            [(CONTENT_TYPE, "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
        )
            .into_response(),
        Failure::ServerError(s) => error(*s, "Internal Server Error"),
        Failure::Named("chat_not_found") => error(400, "Bad Request: chat not found"),
        Failure::Named("bot_kicked") => error(403, "Forbidden: bot was kicked from the channel chat"),
        Failure::Named("not_member") => error(403, "Forbidden: bot is not a member of the channel chat"),
        Failure::Named("migrated") => json(
            400,
            json!({
                "ok": false,
                "error_code": 400,
                "description": "Bad Request: group chat was upgraded to a supergroup chat",
                "parameters": {"migrate_to_chat_id": MIGRATED_TO},
            }),
        ),
        Failure::Named(other) => error(400, &format!("Bad Request: {other}")),
        Failure::AnswerLate(_) | Failure::Hang(_) => error(500, "Internal Server Error"),
    }
}

/// A request's parameters from the query string and a JSON, form or multipart body, with the
/// file parts of a multipart body. Form and multipart values stay strings, as Telegram reads them.
pub(crate) async fn read_params(request: Request) -> Result<(Map<String, Value>, Vec<Upload>), String> {
    let mut params = Map::new();
    if let Ok(Query(q)) = Query::<HashMap<String, String>>::try_from_uri(request.uri()) {
        params.extend(q.into_iter().map(|(k, v)| (k, Value::String(v))));
    }
    let content_type =
        request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    let mut uploads = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| e.body_text())?;
        while let Some(field) = multipart.next_field().await.map_err(|e| e.body_text())? {
            let name = field.name().unwrap_or_default().to_string();
            let filename = field.file_name().map(str::to_string);
            let part_type = field.content_type().map(str::to_string);
            let bytes = field.bytes().await.map_err(|e| e.body_text())?;
            if filename.is_some() {
                uploads.push(Upload { field: name, filename, content_type: part_type, bytes });
            } else {
                params.insert(name, Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        let axum::Form(form) =
            axum::Form::<HashMap<String, String>>::from_request(request, &()).await.map_err(|e| e.body_text())?;
        params.extend(form.into_iter().map(|(k, v)| (k, Value::String(v))));
    } else {
        let body = axum::body::to_bytes(request.into_body(), 64 << 20).await.map_err(|e| e.to_string())?;
        if !body.is_empty() {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(map)) => params.extend(map),
                _ => return Err("can't parse JSON object".to_string()),
            }
        }
    }
    Ok((params, uploads))
}

/// A parameter as a string, whether it came as a JSON string or number.
fn text_param(params: &Map<String, Value>, key: &str) -> Option<String> {
    match params.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn int_param(params: &Map<String, Value>, key: &str) -> Option<i64> {
    text_param(params, key)?.trim().parse().ok()
}

/// A parameter that is a JSON-serialised object (multipart and forms send it as a string).
fn object_param(params: &Map<String, Value>, key: &str) -> Option<Value> {
    match params.get(key)? {
        Value::String(s) => serde_json::from_str(s).ok(),
        Value::Null => None,
        other => Some(other.clone()),
    }
}

async fn handle(
    extract::State(shared): extract::State<Ctx>,
    Path((bot, method)): Path<(String, String)>,
    request: Request,
) -> Response {
    let Some(token) = bot.strip_prefix("bot") else {
        return error(404, "Not Found");
    };
    if token != shared.data().token {
        return error(401, "Unauthorized");
    }
    let (params, uploads) = match read_params(request).await {
        Ok(p) => p,
        Err(e) => return error(400, &format!("Bad Request: {e}")),
    };
    let mut data = shared.data();
    match method.as_str() {
        "getMe" => ok(json!({
            "id": data.bot_id,
            "is_bot": true,
            "first_name": "Herald Test",
            "username": data.bot_username,
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
        })),
        "getChat" => match chat_of(&data, &params) {
            Ok(chat) => ok(chat_json(&chat)),
            Err(r) => r,
        },
        "getChatMember" => get_chat_member(&data, &params),
        "sendMessage" | "sendPhoto" | "sendVideo" => send(&mut data, &method, &params, &uploads),
        "sendMediaGroup" => send_media_group(&mut data, &params, &uploads),
        _ => error(404, "Not Found: method not found"),
    }
}

fn chat_of(data: &State, params: &Map<String, Value>) -> Result<Chat, Response> {
    let Some(chat_id) = text_param(params, "chat_id") else {
        return Err(error(400, "Bad Request: chat_id is empty"));
    };
    data.chat(&chat_id).cloned().ok_or_else(|| error(400, "Bad Request: chat not found"))
}

fn chat_json(chat: &Chat) -> Value {
    let mut v = json!({"id": chat.id, "type": chat.kind});
    if chat.kind == "private" {
        v["first_name"] = json!(chat.title);
    } else {
        v["title"] = json!(chat.title);
    }
    if let Some(u) = &chat.username {
        v["username"] = json!(u);
    }
    v
}

fn get_chat_member(data: &State, params: &Map<String, Value>) -> Response {
    let chat = match chat_of(data, params) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(user_id) = int_param(params, "user_id") else {
        return error(400, "Bad Request: user_id is empty");
    };
    if user_id != data.bot_id {
        return error(400, "Bad Request: user not found");
    }
    let mut member = json!({
        "status": chat.bot_status,
        "user": {"id": data.bot_id, "is_bot": true, "first_name": "Herald Test", "username": data.bot_username},
    });
    match chat.bot_status {
        "administrator" => {
            member["can_be_edited"] = json!(false);
            member["can_manage_chat"] = json!(true);
            if chat.kind == "channel" {
                member["can_post_messages"] = json!(chat.can_post);
                member["can_edit_messages"] = json!(chat.can_post);
            }
        }
        "restricted" => {
            member["is_member"] = json!(true);
            member["can_send_messages"] = json!(chat.can_send);
        }
        _ => {}
    }
    ok(member)
}

/// Why the bot may not post in `chat`, as Telegram says it.
fn cannot_post(chat: &Chat) -> Option<Response> {
    let kind = match chat.kind {
        "channel" => "channel chat",
        "supergroup" => "supergroup chat",
        "group" => "group chat",
        _ => "chat",
    };
    match chat.bot_status {
        "kicked" => Some(error(403, &format!("Forbidden: bot was kicked from the {kind}"))),
        "left" => Some(error(403, &format!("Forbidden: bot is not a member of the {kind}"))),
        _ if chat.kind == "channel"
            && !(chat.bot_status == "creator" || chat.bot_status == "administrator" && chat.can_post) =>
        {
            Some(error(400, "Bad Request: need administrator rights in the channel chat"))
        }
        "restricted" if !chat.can_send => {
            Some(error(400, "Bad Request: not enough rights to send text messages to the chat"))
        }
        _ => None,
    }
}

/// The text a user sees after Telegram parsed `raw` in `mode`, or the Bot API's error.
pub fn parse_entities(raw: &str, mode: Option<&str>) -> Result<String, String> {
    match mode {
        None | Some("") => Ok(raw.to_string()),
        Some("MarkdownV2") => markdown_v2(raw),
        Some("HTML") => html(raw),
        // Legacy Markdown: not modelled; stored as sent.
        Some("Markdown") => Ok(raw.to_string()),
        Some(other) => Err(format!("Bad Request: unsupported parse_mode \"{other}\"")),
    }
}

fn markdown_v2(raw: &str) -> Result<String, String> {
    const RESERVED: &str = "_*[]()~`>#+-=|{}.!";
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next) => out.push(next),
                None => return Err("Bad Request: can't parse entities: Character '\\' is reserved and must be escaped with the preceding '\\'".to_string()),
            }
        } else if RESERVED.contains(c) {
            return Err(format!(
                "Bad Request: can't parse entities: Character '{c}' is reserved and must be escaped with the preceding '\\'"
            ));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn html(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['<', '&']) {
        out.push_str(&rest[..i]);
        let at = raw.len() - rest.len() + i;
        if rest[i..].starts_with('<') {
            let tag: String = rest[i + 1..].chars().take_while(|c| c.is_alphanumeric()).collect();
            return Err(format!(
                "Bad Request: can't parse entities: Unsupported start tag \"{tag}\" at byte offset {at}"
            ));
        }
        let entity_end = rest[i..].find(';').filter(|&n| n <= 10);
        let decoded = entity_end.and_then(|n| match &rest[i + 1..i + n] {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            num => num
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| num.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        });
        match (decoded, entity_end) {
            (Some(c), Some(n)) => {
                out.push(c);
                rest = &rest[i + n + 1..];
            }
            _ => {
                return Err(format!(
                    "Bad Request: can't parse entities: Character '&' at byte offset {at} must be escaped as \"&amp;\""
                ));
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// A `reply_parameters` check: the message must exist in the chat unless the sender allows a
/// missing one.
fn reply_target(data: &State, chat_id: i64, params: &Map<String, Value>) -> Result<Option<i64>, Response> {
    let Some(reply) = object_param(params, "reply_parameters") else {
        return Ok(None);
    };
    let Some(id) = reply.get("message_id").and_then(Value::as_i64) else {
        return Err(error(400, "Bad Request: can't parse reply parameters JSON object"));
    };
    let exists = data.messages.iter().any(|m| m.chat_id == chat_id && m.message_id == id);
    let allow_missing = reply.get("allow_sending_without_reply").and_then(Value::as_bool).unwrap_or(false);
    if exists || allow_missing { Ok(Some(id)) } else { Err(error(400, "Bad Request: message to be replied not found")) }
}

fn message_json(data: &State, sent: &Sent, chat: &Chat) -> Value {
    let mut m = json!({
        "message_id": sent.message_id,
        "date": chrono::Utc::now().timestamp(),
        "chat": chat_json(chat),
    });
    if chat.kind == "channel" {
        m["sender_chat"] = chat_json(chat);
    } else {
        m["from"] =
            json!({"id": data.bot_id, "is_bot": true, "first_name": "Herald Test", "username": data.bot_username});
    }
    let size = sent.upload.as_ref().map(|u| u.bytes.len()).unwrap_or(0);
    match sent.kind {
        "text" => m["text"] = json!(sent.text),
        "photo" => {
            m["photo"] = json!([{"file_id": format!("AgAC{}", sent.message_id), "file_unique_id": format!("AQAD{}", sent.message_id), "width": 1280, "height": 720, "file_size": size}]);
        }
        _ => {
            m["video"] = json!({"file_id": format!("BAAC{}", sent.message_id), "file_unique_id": format!("AgAD{}", sent.message_id), "width": 1280, "height": 720, "duration": 1, "file_size": size});
        }
    }
    if sent.kind != "text" && sent.text.is_some() {
        m["caption"] = json!(sent.text);
    }
    if let Some(t) = sent.thread_id {
        m["message_thread_id"] = json!(t);
        m["is_topic_message"] = json!(true);
    }
    if let Some(g) = &sent.media_group_id {
        m["media_group_id"] = json!(g);
    }
    if let Some(r) = sent.reply_to {
        m["reply_to_message"] = json!({"message_id": r, "chat": chat_json(chat), "date": 0});
    }
    m
}

/// The media of a `photo`/`video` parameter: an `attach://` or field upload, or a file id / URL.
fn media_of(value: Option<String>, field: &str, uploads: &[Upload]) -> Option<Option<Upload>> {
    match value {
        Some(v) => match v.strip_prefix("attach://") {
            Some(name) => uploads.iter().find(|u| u.field == name).cloned().map(Some),
            None => Some(None),
        },
        None => uploads.iter().find(|u| u.field == field).cloned().map(Some),
    }
}

fn send(data: &mut State, method: &str, params: &Map<String, Value>, uploads: &[Upload]) -> Response {
    let chat = match chat_of(data, params) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some(r) = cannot_post(&chat) {
        return r;
    }
    let parse_mode = text_param(params, "parse_mode");
    let (kind, field, text_key) = match method {
        "sendMessage" => ("text", "", "text"),
        "sendPhoto" => ("photo", "photo", "caption"),
        _ => ("video", "video", "caption"),
    };
    let raw = text_param(params, text_key);
    let upload = if kind == "text" {
        None
    } else {
        match media_of(text_param(params, field), field, uploads) {
            Some(u) => u,
            None => return error(400, &format!("Bad Request: there is no {field} in the request")),
        }
    };
    let text = match raw.as_deref().map(|r| parse_entities(r, parse_mode.as_deref())).transpose() {
        Ok(t) => t,
        Err(e) => return error(400, &e),
    };
    if kind == "text" {
        match &text {
            None => return error(400, "Bad Request: message text is empty"),
            Some(t) if t.trim().is_empty() => return error(400, "Bad Request: message text is empty"),
            Some(t) if utf16_len(t) > data.max_text => return error(400, "Bad Request: message is too long"),
            _ => {}
        }
    } else if text.as_deref().is_some_and(|t| utf16_len(t) > data.max_caption) {
        return error(400, "Bad Request: message caption is too long");
    }
    let reply_to = match reply_target(data, chat.id, params) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let preview_url = object_param(params, "link_preview_options")
        .and_then(|o| o.get("url").and_then(Value::as_str).map(str::to_string));
    data.next_message_id += 1;
    let sent = Sent {
        message_id: data.next_message_id,
        chat_id: chat.id,
        method: method.to_string(),
        kind,
        text: text.filter(|t| !t.is_empty()),
        raw,
        parse_mode,
        upload,
        thread_id: int_param(params, "message_thread_id"),
        reply_to,
        media_group_id: None,
        preview_url,
    };
    let body = message_json(data, &sent, &chat);
    data.messages.push(sent);
    ok(body)
}

fn send_media_group(data: &mut State, params: &Map<String, Value>, uploads: &[Upload]) -> Response {
    let chat = match chat_of(data, params) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some(r) = cannot_post(&chat) {
        return r;
    }
    let Some(Value::Array(media)) = object_param(params, "media") else {
        return error(400, "Bad Request: can't parse media JSON object");
    };
    if !(2..=10).contains(&media.len()) {
        return error(400, "Bad Request: wrong number of media items: must include 2-10 items");
    }
    let mut items = Vec::new();
    for item in &media {
        let kind = match item.get("type").and_then(Value::as_str) {
            Some("photo") => "photo",
            Some("video") => "video",
            _ => return error(400, "Bad Request: can't parse InputMedia: media type is invalid"),
        };
        let upload = match media_of(item.get("media").and_then(Value::as_str).map(str::to_string), "", uploads) {
            Some(u) => u,
            None => return error(400, "Bad Request: can't parse InputMedia: file not found in the request"),
        };
        let raw = item.get("caption").and_then(Value::as_str).map(str::to_string);
        let parse_mode = item.get("parse_mode").and_then(Value::as_str).map(str::to_string);
        let text = match raw.as_deref().map(|r| parse_entities(r, parse_mode.as_deref())).transpose() {
            Ok(t) => t,
            Err(e) => return error(400, &e),
        };
        if text.as_deref().is_some_and(|t| utf16_len(t) > data.max_caption) {
            return error(400, "Bad Request: message caption is too long");
        }
        items.push((kind, upload, raw, parse_mode, text));
    }
    let reply_to = match reply_target(data, chat.id, params) {
        Ok(r) => r,
        Err(r) => return r,
    };
    data.next_group_id += 1;
    let group = data.next_group_id.to_string();
    let thread_id = int_param(params, "message_thread_id");
    let mut out = Vec::new();
    for (kind, upload, raw, parse_mode, text) in items {
        data.next_message_id += 1;
        let sent = Sent {
            message_id: data.next_message_id,
            chat_id: chat.id,
            method: "sendMediaGroup".to_string(),
            kind,
            text: text.filter(|t| !t.is_empty()),
            raw,
            parse_mode,
            upload,
            thread_id,
            reply_to,
            media_group_id: Some(group.clone()),
            preview_url: None,
        };
        out.push(message_json(data, &sent, &chat));
        data.messages.push(sent);
    }
    ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_v2_needs_escapes() {
        assert_eq!(markdown_v2(r"a\.b\\c").unwrap(), r"a.b\c");
        assert!(markdown_v2("a.b").unwrap_err().contains("Character '.' is reserved"));
    }

    #[test]
    fn html_decodes_entities_and_refuses_raw_markup() {
        assert_eq!(html("a &lt;b&gt; &amp; &#39;c&#x27;").unwrap(), "a <b> & 'c'");
        assert!(html("a <b>").unwrap_err().contains("Unsupported start tag \"b\""));
        assert!(html("fish & chips").is_err());
    }
}

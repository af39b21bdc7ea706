//! Telegram Bot API (`reference/platforms.md` §2): a bot posts to a channel, a group or a private
//! chat. Every call is `POST {base}/bot{token}/{method}`; the token sits in the path, so a URL
//! never reaches an error message, and any text Telegram sends back is scrubbed of it too.
//!
//! Telegram has no idempotency key: a lost answer to a send is `unknown_outcome`.

use crate::net::Idempotent;
use crate::{
    Adapter, Connection, Media, MediaKind, Net, Outgoing, Pacing, Platform, PlatformError, Published, Reply, Verified,
};
use async_trait::async_trait;
use herald_http::Method;
use herald_http::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::{Value, json};

pub const DEFAULT_BASE: &str = "https://api.telegram.org";

pub struct Telegram;

#[derive(Deserialize)]
struct Creds {
    bot_token: String,
}

/// A chat as the settings name it: a numeric id or `@channelusername`.
#[derive(Debug, Clone, PartialEq)]
enum ChatId {
    Id(i64),
    Name(String),
}

impl ChatId {
    fn parse(v: &Value) -> Result<ChatId, PlatformError> {
        let bad = || {
            PlatformError::invalid("the Telegram chat_id must be a number (e.g. -1001234567890) or @channelname")
                .code("bad_settings")
        };
        match v {
            Value::Number(n) => n.as_i64().map(ChatId::Id).ok_or_else(bad),
            Value::String(s) => {
                let s = s.trim();
                if let Ok(id) = s.parse::<i64>() {
                    Ok(ChatId::Id(id))
                } else if s.len() > 1
                    && s.starts_with('@')
                    && s[1..].chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    Ok(ChatId::Name(s.to_string()))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }

    fn json(&self) -> Value {
        match self {
            ChatId::Id(id) => json!(id),
            ChatId::Name(n) => json!(n),
        }
    }

    fn key(&self) -> String {
        match self {
            ChatId::Id(id) => id.to_string(),
            ChatId::Name(n) => n.to_ascii_lowercase(),
        }
    }
}

/// How Telegram parses the text. Herald's text is plain, so it is escaped for the mode and posts
/// literally either way.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub enum ParseMode {
    #[serde(rename = "HTML")]
    Html,
    MarkdownV2,
}

impl ParseMode {
    fn as_str(self) -> &'static str {
        match self {
            ParseMode::Html => "HTML",
            ParseMode::MarkdownV2 => "MarkdownV2",
        }
    }
}

#[derive(Deserialize)]
struct RawSettings {
    chat_id: Value,
    #[serde(default)]
    message_thread_id: Option<i64>,
    #[serde(default)]
    parse_mode: Option<ParseMode>,
    /// Stored by `verify`: `private`, `group`, `supergroup` or `channel`.
    #[serde(default)]
    chat_type: Option<String>,
}

struct Settings {
    chat: ChatId,
    thread: Option<i64>,
    parse_mode: Option<ParseMode>,
    chat_type: Option<String>,
}

fn settings(conn: &Connection) -> Result<Settings, PlatformError> {
    let raw: RawSettings = crate::settings(&conn.settings, "Telegram")?;
    Ok(Settings {
        chat: ChatId::parse(&raw.chat_id)?,
        thread: raw.message_thread_id,
        parse_mode: raw.parse_mode,
        chat_type: raw.chat_type,
    })
}

/// The bot token, checked to be one path segment. Telegram answers a malformed token with 401,
/// so a malformed one is refused the same way before it leaves.
fn token(conn: &Connection) -> Result<String, PlatformError> {
    let creds: Creds = conn.credentials.parse("Telegram")?;
    let t = creds.bot_token.trim().to_string();
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')) {
        return Err(PlatformError::auth("the Telegram bot token is malformed; copy it again from @BotFather")
            .code("malformed_token"));
    }
    Ok(t)
}

/// What goes in a request body.
enum Body {
    Json(Value),
    Multipart(Form),
}

/// One Bot API call: the `result` of `{"ok":true,"result":…}`, or the error in its class.
async fn call(
    net: &Net,
    token: &str,
    method: &str,
    body: Body,
    idempotent: Idempotent,
) -> Result<Value, PlatformError> {
    let url = format!("{}/bot{token}/{method}", net.base("telegram", DEFAULT_BASE));
    let request = net.trusted().request(Method::POST, &url)?;
    let request = match body {
        Body::Json(v) => request.json(&v),
        Body::Multipart(f) => request.multipart(f),
    };
    let reply = net.trusted().send(request, idempotent).await.map_err(|e| scrub(e, token))?;
    let body = reply.json();
    if reply.is_success() && body["ok"].as_bool() == Some(true) {
        return Ok(body["result"].clone());
    }
    Err(scrub(error(&reply), token))
}

/// Belt and braces: Telegram never echoes the token, but a proxy in front of it might.
fn scrub(mut e: PlatformError, token: &str) -> PlatformError {
    if e.message.contains(token) {
        e.message = e.message.replace(token, "<token>");
    }
    e
}

/// A failed call in its class, from the `{"ok":false,"error_code","description","parameters"}`
/// envelope (or the bare status when a proxy answered instead).
fn error(reply: &Reply) -> PlatformError {
    let body = reply.json();
    let code = body["error_code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(reply.status);
    let description = body["description"].as_str().map(str::to_string).unwrap_or_else(|| {
        if reply.status >= 500 { format!("Telegram is unavailable (HTTP {})", reply.status) } else { reply.snippet() }
    });
    let params = &body["parameters"];
    let e = match code {
        429 => PlatformError::rate_limited(description, crate::net::secs(&params["retry_after"])),
        // 404 on a fixed method path means Telegram did not recognise the token.
        401 | 404 => PlatformError::auth(format!(
            "Telegram refused the bot token ({description}); create a new one with @BotFather and reconnect"
        )),
        403 => PlatformError::auth(format!(
            "{description}: the bot lost access to the chat; add it back (for a channel, as an administrator \
             allowed to post messages) and reconnect"
        )),
        400 => match params["migrate_to_chat_id"].as_i64() {
            Some(new) => PlatformError::invalid(format!(
                "{description}: the group is now a supergroup with chat id {new}; change the connection's chat id to {new}"
            )),
            None => PlatformError::invalid(description),
        },
        500..=599 => PlatformError::transient(description),
        other => PlatformError::from_status(other, description, None),
    };
    e.status(reply.status).code(code)
}

/// Escapes plain text so Telegram shows it literally in `mode`.
pub fn escape(text: &str, mode: Option<ParseMode>) -> String {
    match mode {
        None => text.to_string(),
        Some(ParseMode::Html) => {
            let mut out = String::with_capacity(text.len() + 8);
            for c in text.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    c => out.push(c),
                }
            }
            out
        }
        Some(ParseMode::MarkdownV2) => {
            let mut out = String::with_capacity(text.len() + 8);
            for c in text.chars() {
                if "_*[]()~`>#+-=|{}.!\\".contains(c) {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }
    }
}

/// A link to a message, where Telegram has one: `t.me/<username>/<id>` for public channels and
/// supergroups, `t.me/c/<internal id>/<id>` for private ones (`-100…` ids).
pub fn message_url(chat: &Value, message_id: i64) -> Option<String> {
    if !matches!(chat["type"].as_str(), Some("channel" | "supergroup")) {
        return None;
    }
    if let Some(username) = chat["username"].as_str() {
        return Some(format!("https://t.me/{username}/{message_id}"));
    }
    let id = chat["id"].as_i64()?.to_string();
    id.strip_prefix("-100").map(|internal| format!("https://t.me/c/{internal}/{message_id}"))
}

/// `reply_parameters` for a reply; a deleted parent does not stop the reply from going out.
fn reply_parameters(reply_to: Option<&str>) -> Result<Option<Value>, PlatformError> {
    reply_to
        .map(|id| {
            id.trim()
                .parse::<i64>()
                .map(|id| json!({"message_id": id, "allow_sending_without_reply": true}))
                .map_err(|_| PlatformError::invalid("a Telegram reply needs a numeric message id").code("bad_reply_to"))
        })
        .transpose()
}

fn file_part(media: &Media) -> Result<Part, PlatformError> {
    Part::bytes(media.bytes.to_vec())
        .file_name(media.filename.clone())
        .mime_str(&media.mime)
        .map_err(|_| PlatformError::invalid(format!("{} has an unusable media type", media.filename)))
}

/// Fields common to every multipart send.
fn base_form(s: &Settings, reply: &Option<Value>) -> Form {
    let chat = match &s.chat {
        ChatId::Id(id) => id.to_string(),
        ChatId::Name(n) => n.clone(),
    };
    let mut form = Form::new().text("chat_id", chat);
    if let Some(t) = s.thread {
        form = form.text("message_thread_id", t.to_string());
    }
    if let Some(r) = reply {
        form = form.text("reply_parameters", r.to_string());
    }
    form
}

/// Checks that the bot may post in the chat, from its `ChatMember` record.
fn check_rights(chat_type: &str, member: &Value) -> Result<(), PlatformError> {
    let status = member["status"].as_str().unwrap_or("");
    let flag = |k: &str| member[k].as_bool().unwrap_or(false);
    let refused = |msg: &str| Err(PlatformError::invalid(msg.to_string()).code("bot_cannot_post"));
    match (chat_type, status) {
        (_, "creator") => Ok(()),
        ("channel", "administrator") if flag("can_post_messages") => Ok(()),
        ("channel", "administrator") => {
            refused("the bot is an administrator of the channel but may not post; give it the \"Post messages\" right")
        }
        ("channel", _) => refused("the bot must be an administrator of the channel with the \"Post messages\" right"),
        (_, "administrator" | "member") => Ok(()),
        (_, "restricted") if flag("is_member") && flag("can_send_messages") => Ok(()),
        (_, "restricted") => refused("the bot is restricted from sending messages in this group; lift the restriction"),
        _ => refused("the bot is not a member of this chat; add it to the chat first"),
    }
}

#[async_trait]
impl Adapter for Telegram {
    fn platform(&self) -> &'static Platform {
        crate::registry("telegram")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let token = token(conn)?;
        let s = settings(conn)?;
        let me = call(net, &token, "getMe", Body::Json(json!({})), Idempotent::Yes).await?;
        let bot_id = me["id"].as_i64().ok_or_else(|| PlatformError::transient("Telegram's getMe had no bot id"))?;
        let username = me["username"].as_str().unwrap_or_default().to_string();
        let chat = call(net, &token, "getChat", Body::Json(json!({"chat_id": s.chat.json()})), Idempotent::Yes).await?;
        let chat_type = chat["type"].as_str().unwrap_or("private").to_string();
        if chat_type != "private" {
            let member = call(
                net,
                &token,
                "getChatMember",
                Body::Json(json!({"chat_id": s.chat.json(), "user_id": bot_id})),
                Idempotent::Yes,
            )
            .await?;
            check_rights(&chat_type, &member)?;
        }
        let mut settings = match &conn.settings {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        settings.insert("chat_type".into(), json!(chat_type));
        settings.insert(
            "chat_title".into(),
            chat.get("title").or_else(|| chat.get("first_name")).cloned().unwrap_or(Value::Null),
        );
        settings.insert("chat_username".into(), chat.get("username").cloned().unwrap_or(Value::Null));
        settings.insert("resolved_chat_id".into(), chat.get("id").cloned().unwrap_or(Value::Null));
        settings.insert("bot_id".into(), json!(bot_id));
        settings.insert("bot_username".into(), json!(username));
        Ok(Verified {
            account: format!("@{username}"),
            credentials: conn.credentials.clone(),
            settings: Value::Object(settings),
        })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let token = token(conn)?;
        let s = settings(conn)?;
        let text = escape(&post.text_with_link(), s.parse_mode);
        let reply = reply_parameters(post.reply_to.as_deref())?;
        let mode = s.parse_mode.map(ParseMode::as_str);

        let result = match post.media.as_slice() {
            [] => {
                let mut body = json!({"chat_id": s.chat.json(), "text": text});
                if let Some(m) = mode {
                    body["parse_mode"] = json!(m);
                }
                if let Some(t) = s.thread {
                    body["message_thread_id"] = json!(t);
                }
                if let Some(r) = &reply {
                    body["reply_parameters"] = r.clone();
                }
                if let Some(l) = &post.link {
                    // Preview the post's link even when the text carries other URLs.
                    body["link_preview_options"] = json!({"url": l});
                }
                call(net, &token, "sendMessage", Body::Json(body), Idempotent::No).await?
            }
            [one] => {
                let (method, field) = match one.kind {
                    MediaKind::Image => ("sendPhoto", "photo"),
                    MediaKind::Video => ("sendVideo", "video"),
                };
                let mut form = base_form(&s, &reply).part(field, file_part(one)?);
                if !text.is_empty() {
                    form = form.text("caption", text);
                    if let Some(m) = mode {
                        form = form.text("parse_mode", m);
                    }
                }
                call(net, &token, method, Body::Multipart(form), Idempotent::No).await?
            }
            many if many.len() <= 10 => {
                let mut form = base_form(&s, &reply);
                let mut items = Vec::with_capacity(many.len());
                for (i, m) in many.iter().enumerate() {
                    let name = format!("file{i}");
                    let kind = match m.kind {
                        MediaKind::Image => "photo",
                        MediaKind::Video => "video",
                    };
                    let mut item = json!({"type": kind, "media": format!("attach://{name}")});
                    // The album caption is the first item's.
                    if i == 0 && !text.is_empty() {
                        item["caption"] = json!(text);
                        if let Some(m) = mode {
                            item["parse_mode"] = json!(m);
                        }
                    }
                    items.push(item);
                    form = form.part(name, file_part(m)?);
                }
                form = form.text("media", Value::Array(items).to_string());
                call(net, &token, "sendMediaGroup", Body::Multipart(form), Idempotent::No).await?
            }
            _ => return Err(PlatformError::invalid("a Telegram post takes at most 10 images or videos")),
        };

        let first = match &result {
            Value::Array(messages) => messages.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        let id = first["message_id"].as_i64().ok_or_else(|| {
            PlatformError::unknown_outcome("Telegram accepted the message but returned no message id")
        })?;
        Ok(Published { id: id.to_string(), url: message_url(&first["chat"], id), credentials: None })
    }

    /// Always `None`: the Bot API has no method that reads a sent message back, and channel view
    /// counts reach a bot only on posts forwarded to it, never on its own. Only MTProto (a user
    /// session, not a bot token) sees them.
    async fn metrics(
        &self,
        _net: &Net,
        _conn: &Connection,
        _id: &str,
    ) -> Result<Option<crate::Metrics>, PlatformError> {
        Ok(None)
    }

    /// One bucket per chat: about a message a second in private chats and channels, 20 a minute
    /// in groups (Bot FAQ). A `-100…` id may be a channel or a supergroup; without the chat type
    /// `verify` stored, the stricter group rate applies.
    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let s = settings(conn).ok()?;
        let group = match s.chat_type.as_deref() {
            Some("private" | "channel") => false,
            Some(_) => true,
            None => match &s.chat {
                ChatId::Id(id) => *id < 0,
                ChatId::Name(_) => true,
            },
        };
        let per_second = if group { 20.0 / 60.0 } else { 1.0 };
        Some(Pacing { bucket: format!("telegram:chat:{}", s.chat.key()), capacity: 1.0, per_second })
    }
}

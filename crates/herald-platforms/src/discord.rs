//! Discord (`reference/platforms.md` §3), in two modes:
//!
//! - **Bot**: `Authorization: Bot <token>` posts to a channel with `nonce` + `enforce_nonce`, so a
//!   retry after a lost answer returns the message already made instead of a second one.
//! - **Webhook**: an incoming webhook URL (`/webhooks/{id}/{token}`, no Authorization). Webhooks
//!   take no nonce, so a lost answer is `unknown_outcome`.
//!
//! Every call goes to the trusted API base (`HERALD_DISCORD_API_BASE`); a webhook URL is only
//! parsed for its id and token. Its token is a secret: the URL never reaches an error.

use crate::net::Idempotent;
use crate::{Adapter, Connection, Media, Net, Outgoing, Pacing, Platform, PlatformError, Published, Reply, Verified};
use async_trait::async_trait;
use herald_http::Method;
use herald_http::header::{AUTHORIZATION, USER_AGENT};
use herald_http::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const DEFAULT_BASE: &str = "https://discord.com/api/v10";
/// Discord requires `DiscordBot ($url, $version)`; without it Cloudflare may refuse the call.
const AGENT: &str = "DiscordBot (https://github.com/herald, 0.1)";
/// Hosts that issue webhook URLs.
const WEBHOOK_HOSTS: &[&str] = &[
    "discord.com",
    "discordapp.com",
    "ptb.discord.com",
    "canary.discord.com",
    "ptb.discordapp.com",
    "canary.discordapp.com",
];

pub struct Discord;

#[derive(Deserialize)]
struct Creds {
    #[serde(default)]
    bot_token: Option<String>,
    #[serde(default)]
    webhook_url: Option<String>,
}

#[derive(Deserialize, Default)]
struct Settings {
    #[serde(default)]
    channel_id: Option<String>,
    /// Stored by `verify`, for message links.
    #[serde(default)]
    guild_id: Option<String>,
}

/// How a connection reaches Discord.
enum Mode {
    Bot { token: String, channel_id: String },
    Webhook { id: String, token: String },
}

fn is_snowflake(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The id and token of a webhook URL: `https://discord.com/api[/vN]/webhooks/{id}/{token}` (or
/// discordapp.com, ptb., canary.), or a URL under the operator's API base.
pub fn parse_webhook_url(url: &str, base: &str) -> Result<(String, String), PlatformError> {
    let refused = || {
        PlatformError::invalid(
            "the Discord webhook URL must look like https://discord.com/api/webhooks/<id>/<token>; \
             copy it from the channel's Integrations → Webhooks",
        )
        .code("bad_webhook_url")
    };
    let url = url.trim();
    let rest = match url.strip_prefix(&format!("{}/webhooks/", base.trim_end_matches('/'))) {
        Some(rest) => rest.to_string(),
        None => {
            let parsed = url::Url::parse(url).map_err(|_| refused())?;
            let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
            if parsed.scheme() != "https" || !WEBHOOK_HOSTS.contains(&host.as_str()) || parsed.port().is_some() {
                return Err(refused());
            }
            let path = parsed.path();
            let after_api = path.strip_prefix("/api/").ok_or_else(refused)?;
            let after_version = match after_api.split_once('/') {
                Some((v, rest)) if v.len() > 1 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit()) => {
                    rest
                }
                _ => after_api,
            };
            after_version.strip_prefix("webhooks/").ok_or_else(refused)?.to_string()
        }
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
    let (id, token) = rest.split_once('/').ok_or_else(refused)?;
    let token_ok = !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !is_snowflake(id) || !token_ok {
        return Err(refused());
    }
    Ok((id.to_string(), token.to_string()))
}

/// The settings; a webhook connection may have none at all.
fn settings(conn: &Connection) -> Result<Settings, PlatformError> {
    if conn.settings.is_null() { Ok(Settings::default()) } else { crate::settings(&conn.settings, "Discord") }
}

fn mode(net: &Net, conn: &Connection) -> Result<Mode, PlatformError> {
    let creds: Creds = conn.credentials.parse("Discord")?;
    let settings = settings(conn)?;
    match (creds.bot_token, creds.webhook_url) {
        (Some(token), _) if !token.trim().is_empty() => {
            let channel_id = settings.channel_id.unwrap_or_default().trim().to_string();
            if !is_snowflake(&channel_id) {
                return Err(PlatformError::invalid(
                    "a Discord bot connection needs the channel_id (a number; enable Developer Mode and Copy Channel ID)",
                )
                .code("bad_settings"));
            }
            Ok(Mode::Bot { token: token.trim().to_string(), channel_id })
        }
        (_, Some(url)) => {
            let (id, token) = parse_webhook_url(&url, &base(net))?;
            Ok(Mode::Webhook { id, token })
        }
        _ => {
            Err(PlatformError::invalid("the Discord credentials need a bot_token or a webhook_url")
                .code("bad_credentials"))
        }
    }
}

fn base(net: &Net) -> String {
    net.base("discord", DEFAULT_BASE)
}

/// The nonce for an idempotency key: Discord takes at most 25 characters, so a long key becomes
/// 25 hex digits of its SHA-256 (100 bits; the same key always gives the same nonce).
pub fn nonce(key: &str) -> String {
    if key.len() <= 25 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return key.to_string();
    }
    hex::encode(Sha256::digest(key.as_bytes()))[..25].to_string()
}

async fn call(
    net: &Net,
    method: Method,
    path: &str,
    bot_token: Option<&str>,
    body: Option<Body>,
    idempotent: Idempotent,
) -> Result<Value, PlatformError> {
    let url = format!("{}{path}", base(net));
    let mut request = net.trusted().request(method, &url)?.header(USER_AGENT, AGENT);
    if let Some(t) = bot_token {
        request = request.header(AUTHORIZATION, format!("Bot {t}"));
    }
    request = match body {
        Some(Body::Json(v)) => request.json(&v),
        Some(Body::Multipart(f)) => request.multipart(f),
        None => request,
    };
    let reply = net.trusted().send(request, idempotent).await?;
    if reply.is_success() {
        return Ok(reply.json());
    }
    Err(error(&reply))
}

enum Body {
    Json(Value),
    Multipart(Form),
}

/// The field errors of a 50035 body, as `path: message` lines.
fn form_errors(errors: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    let Value::Object(map) = errors else { return };
    for (key, value) in map {
        if key == "_errors" {
            for e in value.as_array().into_iter().flatten() {
                let message = e["message"].as_str().unwrap_or("invalid");
                if path.is_empty() {
                    out.push(message.to_string());
                } else {
                    out.push(format!("{}: {message}", path.join(".")));
                }
            }
        } else {
            path.push(key.clone());
            form_errors(value, path, out);
            path.pop();
        }
    }
}

/// A failed call in its class, from Discord's `{"message","code"}` body and rate-limit signals.
fn error(reply: &Reply) -> PlatformError {
    let body = reply.json();
    let code = body["code"].as_u64();
    let said = body["message"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP {}", reply.status));
    let e = match (reply.status, code) {
        (429, _) => {
            // The body's float is exact; Retry-After is rounded up to whole seconds.
            let wait =
                crate::net::secs(&body["retry_after"]).or_else(|| crate::net::retry_after_header(&reply.headers));
            let scope = if body["global"].as_bool() == Some(true) { " (global limit)" } else { "" };
            PlatformError::rate_limited(format!("{said}{scope}"), wait)
        }
        (_, Some(50014 | 50027 | 40001)) | (401, _) => PlatformError::auth(format!(
            "Discord refused the credentials ({said}); create a new bot token or webhook and reconnect"
        )),
        (_, Some(10015)) => PlatformError::auth(format!(
            "{said}: the webhook was deleted; create a new one and reconnect (Discord restricts clients that keep using it)"
        )),
        (_, Some(50013)) => PlatformError::invalid(format!(
            "{said}: the bot needs the View Channel and Send Messages permissions in this channel \
             (plus Attach Files for images and Read Message History for replies)"
        )),
        (_, Some(50001)) => PlatformError::invalid(format!(
            "{said}: the bot cannot see this channel; invite it to the server and give it View Channel there"
        )),
        (_, Some(50035)) => {
            let mut lines = Vec::new();
            form_errors(&body["errors"], &mut Vec::new(), &mut lines);
            if lines.is_empty() {
                PlatformError::invalid(said)
            } else {
                PlatformError::invalid(format!("{said}: {}", lines.join("; ")))
            }
        }
        (500..=599, _) => PlatformError::transient(said),
        (status, _) if (400..500).contains(&status) => PlatformError::invalid(said),
        (status, _) => PlatformError::from_status(status, said, None),
    };
    let e = e.status(reply.status);
    match code {
        Some(c) if c != 0 => e.code(c),
        _ => e,
    }
}

fn content(post: &Outgoing) -> String {
    // Discord unfurls a link in the content into its own card.
    post.text_with_link()
}

fn file_part(media: &Media) -> Result<Part, PlatformError> {
    Part::bytes(media.bytes.to_vec())
        .file_name(media.filename.clone())
        .mime_str(&media.mime)
        .map_err(|_| PlatformError::invalid(format!("{} has an unusable media type", media.filename)))
}

/// The message as JSON, or as `payload_json` + `files[n]` when it carries media.
fn body(mut payload: Value, media: &[Media]) -> Result<Body, PlatformError> {
    if media.is_empty() {
        return Ok(Body::Json(payload));
    }
    let attachments: Vec<Value> = media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut a = json!({"id": i, "filename": m.filename});
            if let Some(alt) = &m.alt {
                a["description"] = json!(alt);
            }
            a
        })
        .collect();
    payload["attachments"] = Value::Array(attachments);
    let mut form = Form::new().text("payload_json", payload.to_string());
    for (i, m) in media.iter().enumerate() {
        form = form.part(format!("files[{i}]"), file_part(m)?);
    }
    Ok(Body::Multipart(form))
}

/// `https://discord.com/channels/{guild}/{channel}/{message}` when the guild is known.
fn message_url(guild: Option<&str>, message: &Value) -> Option<String> {
    let guild = guild.map(str::to_string).or_else(|| message["guild_id"].as_str().map(str::to_string))?;
    let channel = message["channel_id"].as_str()?;
    let id = message["id"].as_str()?;
    Some(format!("https://discord.com/channels/{guild}/{channel}/{id}"))
}

#[async_trait]
impl Adapter for Discord {
    fn platform(&self) -> &'static Platform {
        crate::registry("discord")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let mut settings = match &conn.settings {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        let account = match mode(net, conn)? {
            Mode::Bot { token, channel_id } => {
                let me = call(net, Method::GET, "/users/@me", Some(&token), None, Idempotent::Yes).await?;
                // Seeing the channel proves View Channel; Send Messages depends on role overwrites
                // and shows on the first post (50013, with what to grant).
                let channel =
                    call(net, Method::GET, &format!("/channels/{channel_id}"), Some(&token), None, Idempotent::Yes)
                        .await?;
                if matches!(channel["type"].as_u64(), Some(4 | 13 | 15 | 16)) {
                    return Err(PlatformError::invalid(
                        "that Discord channel is a category, stage, forum or media channel; pick a text or announcement channel",
                    )
                    .code("bad_settings"));
                }
                for key in ["guild_id", "name"] {
                    if let Some(v) = channel.get(key).filter(|v| !v.is_null()) {
                        settings.insert(if key == "name" { "channel_name".into() } else { key.into() }, v.clone());
                    }
                }
                settings.insert("bot_id".into(), me["id"].clone());
                format!("@{}", me["username"].as_str().unwrap_or("bot"))
            }
            Mode::Webhook { id, token } => {
                let hook =
                    call(net, Method::GET, &format!("/webhooks/{id}/{token}"), None, None, Idempotent::Yes).await?;
                settings.insert("webhook_id".into(), json!(id));
                for key in ["channel_id", "guild_id"] {
                    if let Some(v) = hook.get(key).filter(|v| !v.is_null()) {
                        settings.insert(key.into(), v.clone());
                    }
                }
                format!("webhook {}", hook["name"].as_str().unwrap_or(&id))
            }
        };
        Ok(Verified { account, credentials: conn.credentials.clone(), settings: Value::Object(settings) })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let settings = settings(conn)?;
        // Automated posts never ping @everyone, roles or users.
        let mut payload = json!({"content": content(post), "allowed_mentions": {"parse": []}});
        let message = match mode(net, conn)? {
            Mode::Bot { token, channel_id } => {
                payload["nonce"] = json!(nonce(&post.idempotency_key));
                payload["enforce_nonce"] = json!(true);
                if let Some(parent) = &post.reply_to {
                    payload["message_reference"] = json!({"message_id": parent, "fail_if_not_exists": false});
                }
                let path = format!("/channels/{channel_id}/messages");
                call(net, Method::POST, &path, Some(&token), Some(body(payload, &post.media)?), Idempotent::Yes).await?
            }
            // Webhooks cannot reply; thread parts go out in order instead.
            Mode::Webhook { id, token } => {
                let path = format!("/webhooks/{id}/{token}?wait=true");
                call(net, Method::POST, &path, None, Some(body(payload, &post.media)?), Idempotent::No).await?
            }
        };
        let id = message["id"]
            .as_str()
            .ok_or_else(|| PlatformError::unknown_outcome("Discord accepted the message but returned no id"))?;
        Ok(Published {
            id: id.to_string(),
            url: message_url(settings.guild_id.as_deref(), &message),
            credentials: None,
        })
    }

    /// A bot's `nonce` with `enforce_nonce` is honoured for "a few minutes"; webhooks have none.
    fn idempotency(&self, conn: &Connection) -> crate::Idempotency {
        let creds: Option<Creds> = conn.credentials.parse("Discord").ok();
        match creds.and_then(|c| c.bot_token).filter(|t| !t.trim().is_empty()) {
            Some(_) => crate::Idempotency::Window(std::time::Duration::from_secs(3 * 60)),
            None => crate::Idempotency::None,
        }
    }

    /// One bucket per channel (or webhook) at 5 messages per 5 s, the usual per-route limit and far
    /// under the global 50 requests/s.
    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let creds: Creds = conn.credentials.parse("Discord").ok()?;
        let bucket = match (creds.bot_token.filter(|t| !t.trim().is_empty()), creds.webhook_url) {
            (Some(_), _) => {
                format!("discord:channel:{}", settings(conn).ok()?.channel_id?.trim())
            }
            // The id is the URL's first segment after /webhooks/, whatever the host.
            (None, Some(url)) => {
                let id = url.split("/webhooks/").nth(1)?.split('/').next()?.to_string();
                if !is_snowflake(&id) {
                    return None;
                }
                format!("discord:webhook:{id}")
            }
            _ => return None,
        };
        Some(Pacing { bucket, capacity: 5.0, per_second: 1.0 })
    }
}

//! A fake Mastodon instance: `verify_credentials`, `/api/v2/instance` with configurable limits,
//! media upload with asynchronous processing (202, then 206 on the first polls, then 200),
//! statuses with `Idempotency-Key` (one status per key and account for an hour), over-length text
//! counted the Mastodon way (every link counts `characters_reserved_per_url`), a status read back
//! with the engagement counts a test sets (`favourites`, `reblogs`, `replies`), and Mastodon's own
//! error bodies and `X-RateLimit-*` headers.

use crate::{Failure, FakeServer, Shared, bearer, json, json_with};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{self, Multipart, Path};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The token the fake accepts.
pub const TOKEN: &str = "mastodon-fake-token";
const USERNAME: &str = "herald";

type Sh = Arc<Shared<State>>;

/// What an instance configures; forks change all of it.
#[derive(Debug, Clone)]
pub struct Config {
    pub domain: String,
    pub max_characters: usize,
    pub characters_reserved_per_url: usize,
    pub max_media_attachments: usize,
    pub image_size_limit: u64,
    pub video_size_limit: u64,
    /// Process images asynchronously too (202), as videos always are.
    pub async_images: bool,
    /// How many polls of an asynchronously processed file answer 206 before it is ready.
    pub processing_polls: u32,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "fake.social".into(),
            max_characters: 500,
            characters_reserved_per_url: 23,
            max_media_attachments: 4,
            image_size_limit: 16_777_216,
            video_size_limit: 103_809_024,
            async_images: false,
            processing_polls: 1,
            idempotency_ttl: Duration::from_secs(3600),
        }
    }
}

/// A status the fake accepted.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: String,
    pub text: String,
    pub visibility: String,
    pub language: Option<String>,
    pub in_reply_to_id: Option<String>,
    pub spoiler_text: String,
    pub sensitive: bool,
    pub media_ids: Vec<String>,
    pub idempotency_key: Option<String>,
    pub deleted: bool,
    /// What `favourites_count`, `reblogs_count` and `replies_count` answer; tests set them.
    pub favourites: u64,
    pub reblogs: u64,
    pub replies: u64,
}

/// An uploaded file.
#[derive(Debug, Clone)]
pub struct MediaFile {
    pub id: String,
    pub filename: String,
    pub mime: String,
    pub size: usize,
    pub description: Option<String>,
    /// Polls still to answer 206.
    pub polls_left: u32,
    /// The client has been told it is ready (a 200 with a URL); only then may it be attached.
    pub ready: bool,
}

pub struct State {
    pub config: Config,
    pub tokens: Vec<String>,
    pub account_id: String,
    pub statuses: Vec<Status>,
    pub media: Vec<MediaFile>,
    idempotency: HashMap<String, (Instant, String)>,
    next_id: u64,
}

impl State {
    fn id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    /// The statuses not deleted.
    pub fn live(&self) -> Vec<&Status> {
        self.statuses.iter().filter(|s| !s.deleted).collect()
    }

    /// Sets a status's engagement counts, as if people had favourited, boosted and answered it.
    pub fn engage(&mut self, id: &str, favourites: u64, reblogs: u64, replies: u64) {
        let s = self.statuses.iter_mut().find(|s| s.id == id).expect("a status with this id");
        (s.favourites, s.reblogs, s.replies) = (favourites, reblogs, replies);
    }
}

pub async fn start() -> FakeServer<State> {
    start_with(Config::default()).await
}

pub async fn start_with(config: Config) -> FakeServer<State> {
    let state = State {
        config,
        tokens: vec![TOKEN.to_string()],
        account_id: "109000000000000001".into(),
        statuses: Vec::new(),
        media: Vec::new(),
        idempotency: HashMap::new(),
        next_id: 110_000_000_000_000_000,
    };
    let router = Router::new()
        .route("/api/v1/accounts/verify_credentials", get(verify_credentials))
        .route("/api/v2/instance", get(instance))
        .route("/api/v2/media", post(create_media))
        .route("/api/v1/media/{id}", get(get_media))
        .route("/api/v1/statuses", post(create_status))
        .route("/api/v1/statuses/{id}", get(get_status).delete(delete_status));
    FakeServer::start(router, state, render).await
}

fn error(status: u16, message: &str) -> Response {
    json(status, json!({ "error": message }))
}

/// Mastodon's answers to the failures tests ask for. `Named`: `scope` (403 missing scope),
/// `forbidden` (403 other), `not_found` (404), `invalid_media` (422), `retry_after` (429 with
/// only `Retry-After`, as a proxy in front of an instance sends), `bare_429` (no headers at all).
pub fn render(f: &Failure) -> Response {
    match f {
        Failure::RateLimited { retry_after_secs } => {
            let reset = chrono::Utc::now() + chrono::Duration::seconds(*retry_after_secs as i64);
            json_with(
                429,
                &[
                    ("X-RateLimit-Limit", "300".into()),
                    ("X-RateLimit-Remaining", "0".into()),
                    // Time#iso8601(6): six fractional digits.
                    ("X-RateLimit-Reset", reset.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
                ],
                json!({ "error": "Too many requests" }),
            )
        }
        Failure::Unauthorized => error(401, "The access token is invalid"),
        Failure::ServerError(s) => error(*s, "We're sorry, but something went wrong on our end."),
        Failure::Named("scope") => error(403, "This action is outside the authorized scopes"),
        Failure::Named("forbidden") => error(403, "This action is not allowed"),
        Failure::Named("not_found") => error(404, "Record not found"),
        Failure::Named("invalid_media") => {
            error(422, "Validation failed: File content type is invalid, File is invalid")
        }
        Failure::Named("retry_after") => {
            json_with(429, &[("Retry-After", "7".into())], json!({ "error": "Too many requests" }))
        }
        Failure::Named("bare_429") => error(429, "Too many requests"),
        other => error(500, &format!("the fake cannot render {other:?}")),
    }
}

/// Mastodon's 401 when the bearer token is not one the instance knows.
fn unauthorized(sh: &Sh, headers: &HeaderMap) -> Option<Response> {
    match bearer(headers) {
        Some(t) if sh.data().tokens.contains(&t) => None,
        _ => Some(error(401, "The access token is invalid")),
    }
}

fn account(sh: &Sh) -> Value {
    let id = sh.data().account_id.clone();
    json!({
        "id": id,
        "username": USERNAME,
        "acct": USERNAME,
        "display_name": "Herald",
        "url": format!("{}/@{USERNAME}", sh.url),
        "source": { "privacy": "public", "language": "en" },
    })
}

async fn verify_credentials(extract::State(sh): extract::State<Sh>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&sh, &headers) {
        return r;
    }
    json(200, account(&sh))
}

async fn instance(extract::State(sh): extract::State<Sh>) -> Response {
    let c = sh.data().config.clone();
    json(
        200,
        json!({
            "domain": c.domain,
            "title": "Fake Social",
            "version": "4.3.0",
            "configuration": {
                "statuses": {
                    "max_characters": c.max_characters,
                    "max_media_attachments": c.max_media_attachments,
                    "characters_reserved_per_url": c.characters_reserved_per_url,
                },
                "media_attachments": {
                    "supported_mime_types": ["image/jpeg", "image/png", "image/gif", "image/webp", "video/mp4"],
                    "image_size_limit": c.image_size_limit,
                    "image_matrix_limit": 33_177_600,
                    "video_size_limit": c.video_size_limit,
                    "video_frame_rate_limit": 120,
                    "video_matrix_limit": 8_294_400,
                },
                "polls": { "max_options": 4, "max_characters_per_option": 50 },
            },
        }),
    )
}

fn media_json(sh: &Sh, m: &MediaFile, with_url: bool) -> Value {
    let kind = if m.mime.starts_with("video/") { "video" } else { "image" };
    json!({
        "id": m.id,
        "type": kind,
        "url": with_url.then(|| format!("{}/system/media/{}/original", sh.url, m.id)),
        "preview_url": format!("{}/system/media/{}/small", sh.url, m.id),
        "remote_url": null,
        "description": m.description,
        "blurhash": null,
    })
}

async fn create_media(extract::State(sh): extract::State<Sh>, headers: HeaderMap, mut form: Multipart) -> Response {
    if let Some(r) = unauthorized(&sh, &headers) {
        return r;
    }
    let (mut file, mut description) = (None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("file") => {
                let name = field.file_name().unwrap_or("file").to_string();
                let mime = field.content_type().unwrap_or("application/octet-stream").to_string();
                let Ok(bytes) = field.bytes().await else { return error(422, "Validation failed: File is invalid") };
                file = Some((name, mime, bytes.len()));
            }
            Some("description") => description = field.text().await.ok(),
            _ => {}
        }
    }
    let Some((filename, mime, size)) = file else { return error(422, "Validation failed: File can't be blank") };
    let mut d = sh.data();
    let video = mime.starts_with("video/");
    let limit = if video { d.config.video_size_limit } else { d.config.image_size_limit };
    if !(video || mime.starts_with("image/")) {
        return error(422, "Validation failed: File content type is invalid, File is invalid");
    }
    if size as u64 > limit {
        return error(422, &format!("Validation failed: File file size must be less than {limit} Bytes"));
    }
    let processing = video || d.config.async_images;
    let polls_left = if processing { d.config.processing_polls } else { 0 };
    let id = d.id();
    let m = MediaFile { id, filename, mime, size, description, polls_left, ready: !processing };
    d.media.push(m.clone());
    drop(d);
    json(if processing { 202 } else { 200 }, media_json(&sh, &m, !processing))
}

async fn get_media(extract::State(sh): extract::State<Sh>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = unauthorized(&sh, &headers) {
        return r;
    }
    let mut d = sh.data();
    let Some(m) = d.media.iter_mut().find(|m| m.id == id) else { return error(404, "Record not found") };
    if m.polls_left > 0 {
        m.polls_left -= 1;
        let m = m.clone();
        drop(d);
        return json(206, media_json(&sh, &m, false));
    }
    m.ready = true;
    let m = m.clone();
    drop(d);
    json(200, media_json(&sh, &m, true))
}

/// Characters the Mastodon way: each http(s) link counts `url_weight`.
fn count(text: &str, url_weight: usize) -> usize {
    text.split_inclusive(char::is_whitespace)
        .map(|w| {
            let bare = w.trim_end_matches(char::is_whitespace);
            let lower = bare.to_ascii_lowercase();
            let is_url = ["http://", "https://"].iter().any(|p| lower.starts_with(p) && lower.len() > p.len());
            if is_url { url_weight + (w.chars().count() - bare.chars().count()) } else { w.chars().count() }
        })
        .sum()
}

/// The request's parameters, from JSON or a form (`media_ids[]` repeated).
fn params(headers: &HeaderMap, body: &[u8]) -> Value {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.starts_with("application/json") {
        return serde_json::from_slice(body).unwrap_or(Value::Null);
    }
    let mut out = json!({});
    for (k, v) in crate::vk::form_pairs(body) {
        if let Some(k) = k.strip_suffix("[]") {
            if !out[k].is_array() {
                out[k] = json!([]);
            }
            out[k].as_array_mut().expect("array").push(json!(v));
        } else {
            out[k.as_str()] = json!(v);
        }
    }
    out
}

fn status_json(sh: &Sh, s: &Status) -> Value {
    let escaped = s.text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let media: Vec<Value> = {
        let d = sh.data();
        s.media_ids.iter().filter_map(|id| d.media.iter().find(|m| &m.id == id).cloned()).collect::<Vec<_>>()
    }
    .iter()
    .map(|m| media_json(sh, m, true))
    .collect();
    json!({
        "id": s.id,
        "created_at": chrono::Utc::now().to_rfc3339(),
        "in_reply_to_id": s.in_reply_to_id,
        "sensitive": s.sensitive,
        "spoiler_text": s.spoiler_text,
        "visibility": s.visibility,
        "language": s.language,
        "uri": format!("{}/users/{USERNAME}/statuses/{}", sh.url, s.id),
        "url": format!("{}/@{USERNAME}/{}", sh.url, s.id),
        "content": format!("<p>{escaped}</p>"),
        "replies_count": s.replies,
        "reblogs_count": s.reblogs,
        "favourites_count": s.favourites,
        "media_attachments": media,
        "account": account(sh),
        "application": { "name": "Herald", "website": null },
    })
}

async fn create_status(extract::State(sh): extract::State<Sh>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unauthorized(&sh, &headers) {
        return r;
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let p = params(&headers, &body);
    let mut d = sh.data();
    let ttl = d.config.idempotency_ttl;
    if let Some(k) = &key
        && let Some((at, id)) = d.idempotency.get(k)
        && at.elapsed() < ttl
    {
        let id = id.clone();
        let s = d.statuses.iter().find(|s| s.id == id).cloned().expect("a remembered status exists");
        drop(d);
        return json(200, status_json(&sh, &s));
    }

    let text = p["status"].as_str().unwrap_or("").to_string();
    let ids: Vec<String> = p["media_ids"]
        .as_array()
        .map(|a| {
            a.iter().filter_map(|v| v.as_str().map(str::to_string).or(v.as_u64().map(|n| n.to_string()))).collect()
        })
        .unwrap_or_default();
    let max_media = d.config.max_media_attachments;
    if ids.len() > max_media {
        return error(422, &format!("Cannot attach more than {max_media} files"));
    }
    // Mastodon quietly drops ids that are not the account's unattached files.
    let media: Vec<MediaFile> = ids.iter().filter_map(|id| d.media.iter().find(|m| &m.id == id).cloned()).collect();
    if media.iter().any(|m| !m.ready) {
        return error(422, "Cannot attach files that have not finished processing. Try again in a moment!");
    }
    if text.trim().is_empty() && media.is_empty() {
        return error(422, "Validation failed: Text can't be blank");
    }
    let max = d.config.max_characters;
    if count(&text, d.config.characters_reserved_per_url) > max {
        return error(422, &format!("Validation failed: Text character limit of {max} exceeded"));
    }
    let visibility = p["visibility"].as_str().unwrap_or("public").to_string();
    if !["public", "unlisted", "private", "direct"].contains(&visibility.as_str()) {
        return error(422, &format!("'{visibility}' is not a valid visibility"));
    }
    let in_reply_to_id = p["in_reply_to_id"].as_str().map(str::to_string);
    if let Some(r) = &in_reply_to_id
        && !d.statuses.iter().any(|s| &s.id == r && !s.deleted)
    {
        return error(404, "Record not found");
    }
    let sensitive = match &p["sensitive"] {
        Value::Bool(b) => *b,
        Value::String(s) => s == "true" || s == "1",
        _ => false,
    };
    let id = d.id();
    let status = Status {
        id: id.clone(),
        text,
        visibility,
        language: p["language"].as_str().map(str::to_string),
        in_reply_to_id,
        spoiler_text: p["spoiler_text"].as_str().unwrap_or("").to_string(),
        sensitive,
        media_ids: media.iter().map(|m| m.id.clone()).collect(),
        idempotency_key: key.clone(),
        deleted: false,
        favourites: 0,
        reblogs: 0,
        replies: 0,
    };
    d.statuses.push(status.clone());
    if let Some(k) = key {
        d.idempotency.insert(k, (Instant::now(), id));
    }
    drop(d);
    json(200, status_json(&sh, &status))
}

/// A status by id. Public and unlisted ones read without a token, as on a stock instance; a token
/// that is sent must be valid.
async fn get_status(extract::State(sh): extract::State<Sh>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let anonymous = bearer(&headers).is_none();
    if !anonymous && let Some(r) = unauthorized(&sh, &headers) {
        return r;
    }
    let found = sh.data().statuses.iter().find(|s| s.id == id && !s.deleted).cloned();
    match found {
        Some(s) if !anonymous || matches!(s.visibility.as_str(), "public" | "unlisted") => {
            json(200, status_json(&sh, &s))
        }
        _ => error(404, "Record not found"),
    }
}

async fn delete_status(extract::State(sh): extract::State<Sh>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = unauthorized(&sh, &headers) {
        return r;
    }
    let mut d = sh.data();
    let Some(s) = d.statuses.iter_mut().find(|s| s.id == id && !s.deleted) else {
        return error(404, "Record not found");
    };
    s.deleted = true;
    let s = s.clone();
    drop(d);
    json(200, status_json(&sh, &s))
}

#[cfg(test)]
mod tests {
    #[test]
    fn links_count_as_reserved_width() {
        assert_eq!(super::count("see https://example.com/a/long/path now", 23), 4 + 23 + 4);
        assert_eq!(super::count("héllo", 23), 5);
    }
}

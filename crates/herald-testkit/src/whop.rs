//! A fake Whop REST API (`/api/v1`, `reference/platforms.md` §8): Bearer API keys, experiences,
//! companies and chat channels to check, forum posts and chat messages, and the file upload flow
//! (`POST /files` hands out a presigned URL on this server; a `PUT` there stores the bytes; the
//! file turns `ready` after [`State::processing_polls`] reads of `GET /files/{id}`).
//!
//! Error bodies are `{"error":{"type","message"}}` as Whop's troubleshooting page shows them; the
//! 429 carries `retry-after` (and `retry-after-ms` for the named failure that tests it).
//! Routes answer both at the root and under `/api/v1`.
//!
//! Named failures: `rate_limited_ms` (429 with `retry-after-ms: 1500` and `retry-after: 2`),
//! `rate_limited_bare` (429 with only the body's "Try again in 12 seconds."), `forbidden` (403),
//! `not_found` (404); any other name is a 400 `invalid_request` with the name as its message.

// Helpers return ready-made error responses; their size does not matter in a fake.
#![allow(clippy::result_large_err)]

use crate::{Failure, FakeServer, Shared, bearer, json, json_with};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{self, Path};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use std::sync::Arc;

pub const API_KEY: &str = "apik_fake_herald_0123456789abcdefghijklmnop";
pub const COMPANY_ID: &str = "biz_herald1";
/// A forum experience.
pub const FORUM_EXPERIENCE: &str = "exp_forum1";
/// A chat channel (its experience is `exp_chat1`).
pub const CHAT_CHANNEL: &str = "chat_feed_1";

#[derive(Debug, Clone)]
pub struct File {
    pub id: String,
    pub filename: String,
    pub visibility: String,
    pub bytes: Option<Bytes>,
    pub content_type: Option<String>,
    /// Reads of `GET /files/{id}` since the upload.
    pub polls: u32,
    pub status: &'static str,
}

/// A forum post or chat message the fake accepted.
#[derive(Debug, Clone)]
pub struct Post {
    pub id: String,
    /// `forum_post` or `message`.
    pub kind: &'static str,
    /// The experience (forum) or channel (chat).
    pub target: String,
    pub content: String,
    pub title: Option<String>,
    pub attachments: Vec<String>,
    /// `parent_id` (forum) or `replying_to_message_id` (chat).
    pub reply_to: Option<String>,
}

#[derive(Debug)]
pub struct State {
    pub api_key: String,
    pub posts: Vec<Post>,
    pub files: Vec<File>,
    /// How many `GET /files/{id}` answers say `processing` before `ready`.
    pub processing_polls: u32,
    next_id: u64,
}

impl Default for State {
    fn default() -> Self {
        State { api_key: API_KEY.to_string(), posts: Vec::new(), files: Vec::new(), processing_polls: 1, next_id: 1000 }
    }
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{:x}", self.next_id * 7919)
    }
}

type Ctx = Arc<Shared<State>>;

pub async fn start() -> FakeServer<State> {
    start_with(State::default()).await
}

pub async fn start_with(state: State) -> FakeServer<State> {
    let api = Router::new()
        .route("/experiences/{id}", get(experience))
        .route("/companies/{id}", get(company))
        .route("/chat_channels/{id}", get(chat_channel))
        .route("/forum_posts", post(create_forum_post))
        .route("/messages", post(create_message))
        .route("/files", post(create_file))
        .route("/files/{id}", get(retrieve_file));
    let router = Router::new().merge(api.clone()).nest("/api/v1", api).route("/_storage/{id}", put(upload));
    FakeServer::start(router, state, render).await
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    json(status, json!({"error": {"type": kind, "message": message}}))
}

fn render(failure: &Failure) -> Response {
    match failure {
        Failure::RateLimited { retry_after_secs: n } => json_with(
            429,
            &[("retry-after", n.to_string())],
            json!({"error": {"type": "rate_limit_exceeded", "message": format!("Try again in {n} seconds.")}}),
        ),
        Failure::Named("rate_limited_ms") => json_with(
            429,
            &[("retry-after-ms", "1500".into()), ("retry-after", "2".into())],
            json!({"error": {"type": "rate_limit_exceeded", "message": "Try again in 2 seconds."}}),
        ),
        Failure::Named("rate_limited_bare") => {
            json(429, json!({"error": {"type": "rate_limit_exceeded", "message": "Try again in 12 seconds."}}))
        }
        Failure::Unauthorized => error(401, "unauthorized", "The API key is invalid or has been revoked."),
        Failure::Named("forbidden") => {
            error(403, "forbidden", "You do not have the forum:post:create permission for this resource.")
        }
        Failure::Named("not_found") => error(404, "not_found", "Experience not found."),
        Failure::Named(other) => error(400, "invalid_request", other),
        Failure::ServerError(s) => error(*s, "internal_server_error", "Something went wrong on our end."),
        Failure::AnswerLate(_) | Failure::Hang(_) => error(500, "internal_server_error", "Something went wrong."),
    }
}

fn authorized(data: &State, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|k| k == data.api_key)
}

fn unauthorized() -> Response {
    error(401, "unauthorized", "The API key is invalid or has been revoked.")
}

fn experience_json(id: &str) -> Option<Value> {
    let (name, app) = match id {
        FORUM_EXPERIENCE => ("Announcements", "Forums"),
        "exp_chat1" => ("Community chat", "Chat"),
        _ => return None,
    };
    Some(json!({
        "id": id,
        "name": name,
        "app": {"id": "app_forums", "name": app},
        "company": {"id": COMPANY_ID, "route": "herald", "title": "Herald HQ"},
        "created_at": "2026-01-01T00:00:00Z",
        "order": null,
        "products": [],
    }))
}

async fn experience(
    extract::State(shared): extract::State<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared.data(), &headers) {
        return unauthorized();
    }
    match experience_json(&id) {
        Some(e) => json(200, e),
        None => error(404, "not_found", "Experience not found."),
    }
}

async fn company(extract::State(shared): extract::State<Ctx>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !authorized(&shared.data(), &headers) {
        return unauthorized();
    }
    if id != COMPANY_ID {
        return error(404, "not_found", "Company not found.");
    }
    json(200, json!({"id": COMPANY_ID, "title": "Herald HQ", "route": "herald"}))
}

async fn chat_channel(
    extract::State(shared): extract::State<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared.data(), &headers) {
        return unauthorized();
    }
    if id != CHAT_CHANNEL {
        return error(404, "not_found", "Chat channel not found.");
    }
    json(
        200,
        json!({
            "id": CHAT_CHANNEL,
            "ban_media": false,
            "ban_urls": false,
            "banned_words": [],
            "experience": {"id": "exp_chat1", "name": "Community chat"},
            "user_posts_cooldown_seconds": null,
            "who_can_post": "everyone",
            "who_can_react": "everyone",
        }),
    )
}

/// The ids of `attachments: [{id}]`, each a file that finished uploading.
fn attachments(data: &State, body: &Value) -> Result<Vec<String>, Response> {
    let mut ids = Vec::new();
    for a in body["attachments"].as_array().into_iter().flatten() {
        let Some(id) = a["id"].as_str() else {
            return Err(error(400, "invalid_request", "Each attachment needs an id."));
        };
        match data.files.iter().find(|f| f.id == id) {
            Some(f) if f.status == "ready" => ids.push(id.to_string()),
            Some(_) => return Err(error(422, "invalid_request", "The attachment has not finished uploading.")),
            None => return Err(error(404, "not_found", "Attachment not found.")),
        }
    }
    Ok(ids)
}

fn post_json(p: &Post) -> Value {
    let user = json!({"id": "user_bot", "name": "Herald", "username": "herald"});
    let attachments: Vec<Value> = p
        .attachments
        .iter()
        .map(|id| json!({"id": id, "content_type": "image/png", "filename": "image.png", "url": format!("https://media.whop.test/{id}")}))
        .collect();
    if p.kind == "forum_post" {
        json!({
            "id": p.id, "title": p.title, "content": p.content, "attachments": attachments, "comment_count": 0,
            "like_count": 0, "is_pinned": false, "is_edited": false, "is_poster_admin": true, "parent_id": p.reply_to,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "user": user, "view_count": 0,
        })
    } else {
        json!({
            "id": p.id, "content": p.content, "created_at": "2026-01-01T00:00:00Z", "is_edited": false,
            "is_pinned": false, "message_type": "regular", "poll": null, "poll_votes": [], "reaction_counts": [],
            "replying_to_message_id": p.reply_to, "updated_at": "2026-01-01T00:00:00Z", "user": user, "view_count": 0,
        })
    }
}

fn body_json(body: &Bytes) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(error(400, "invalid_request", "The request body must be a JSON object.")),
    }
}

async fn create_forum_post(extract::State(shared): extract::State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let mut data = shared.data();
    if !authorized(&data, &headers) {
        return unauthorized();
    }
    let body = match body_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(experience_id) = body["experience_id"].as_str() else {
        return error(400, "invalid_request", "Missing required parameter: experience_id");
    };
    let target = if experience_id == "public" {
        match body["company_id"].as_str() {
            Some(COMPANY_ID) => format!("public:{COMPANY_ID}"),
            Some(_) => return error(404, "not_found", "Company not found."),
            None => return error(400, "invalid_request", "Missing required parameter: company_id"),
        }
    } else if experience_json(experience_id).is_some() {
        experience_id.to_string()
    } else {
        return error(404, "not_found", "Experience not found.");
    };
    let files = match attachments(&data, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let content = body["content"].as_str().unwrap_or_default().to_string();
    if content.trim().is_empty() && files.is_empty() {
        return error(400, "invalid_request", "A post needs content or attachments.");
    }
    let id = data.id("post");
    let post = Post {
        id,
        kind: "forum_post",
        target,
        content,
        title: body["title"].as_str().map(str::to_string),
        attachments: files,
        reply_to: body["parent_id"].as_str().map(str::to_string),
    };
    let out = post_json(&post);
    data.posts.push(post);
    json(200, out)
}

async fn create_message(extract::State(shared): extract::State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let mut data = shared.data();
    if !authorized(&data, &headers) {
        return unauthorized();
    }
    let body = match body_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(channel_id) = body["channel_id"].as_str() else {
        return error(400, "invalid_request", "Missing required parameter: channel_id");
    };
    if channel_id != CHAT_CHANNEL && channel_id != "exp_chat1" {
        return error(404, "not_found", "Channel not found.");
    }
    let Some(content) = body["content"].as_str() else {
        return error(400, "invalid_request", "Missing required parameter: content");
    };
    let files = match attachments(&data, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let id = data.id("msg");
    let post = Post {
        id,
        kind: "message",
        target: channel_id.to_string(),
        content: content.to_string(),
        title: None,
        attachments: files,
        reply_to: body["replying_to_message_id"].as_str().map(str::to_string),
    };
    let out = post_json(&post);
    data.posts.push(post);
    json(200, out)
}

fn file_json(f: &File, base: &str, with_upload: bool) -> Value {
    let ready = f.status == "ready";
    let mut v = json!({
        "id": f.id,
        "upload_status": f.status,
        "filename": f.filename,
        "content_type": f.content_type,
        "size": if ready { f.bytes.as_ref().map(|b| b.len().to_string()) } else { None },
        "url": if ready { Some(format!("https://media.whop.test/{}/{}", f.id, f.filename)) } else { None },
        "visibility": f.visibility,
    });
    if with_upload {
        v["upload_url"] = json!(format!("{base}/_storage/{}", f.id));
        v["upload_headers"] = json!({"x-amz-acl": f.visibility.replace("public", "public-read")});
    }
    v
}

async fn create_file(extract::State(shared): extract::State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let mut data = shared.data();
    if !authorized(&data, &headers) {
        return unauthorized();
    }
    let body = match body_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(filename) = body["filename"].as_str().filter(|f| !f.is_empty()) else {
        return error(400, "invalid_request", "Missing required parameter: filename");
    };
    let id = data.id("file");
    let file = File {
        id,
        filename: filename.to_string(),
        visibility: body["visibility"].as_str().unwrap_or("public").to_string(),
        bytes: None,
        content_type: None,
        polls: 0,
        status: "pending",
    };
    let out = file_json(&file, &shared.url, true);
    data.files.push(file);
    json(200, out)
}

/// The presigned upload target: no Authorization, the URL is the credential.
async fn upload(
    extract::State(shared): extract::State<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut data = shared.data();
    let Some(file) = data.files.iter_mut().find(|f| f.id == id) else {
        return (axum::http::StatusCode::FORBIDDEN, "<Error><Code>AccessDenied</Code></Error>").into_response();
    };
    if headers.contains_key("authorization") {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
        )
            .into_response();
    }
    file.content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    file.bytes = Some(body);
    file.status = "processing";
    (axum::http::StatusCode::OK, "").into_response()
}

async fn retrieve_file(
    extract::State(shared): extract::State<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut data = shared.data();
    if !authorized(&data, &headers) {
        return unauthorized();
    }
    let after = data.processing_polls;
    let Some(file) = data.files.iter_mut().find(|f| f.id == id) else {
        return error(404, "not_found", "File not found.");
    };
    if file.status == "processing" {
        file.polls += 1;
        if file.polls > after {
            file.status = "ready";
        }
    }
    let file = file.clone();
    json(200, file_json(&file, &shared.url, false))
}

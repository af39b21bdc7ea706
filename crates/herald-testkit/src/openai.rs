//! A fake OpenAI-compatible chat-completions server (what OpenAI, Ollama, vLLM and LiteLLM all
//! speak): `POST /v1/chat/completions` (also without `/v1`, as some gateways mount it) and
//! `GET /v1/models`, with OpenAI's own answer and error shapes and its rate-limit headers.
//!
//! The reply to a completion is, in order: the next text queued with [`FakeOpenAi::push_reply`],
//! else what the function set with [`FakeOpenAi::reply_with`] makes of the request body, else an
//! echo of the text to rewrite ([`marked_text`]). Usage counts about four characters a token, and a
//! reply longer than the request's `max_tokens` is cut there with `finish_reason: "length"`, as a
//! real server does. Streaming (`stream: true`) is refused: Herald does not ask for it.
//!
//! ```ignore
//! let ai = FakeOpenAi::start().await;
//! ai.require_key("sk-test");
//! ai.push_reply("A shorter post #news");
//! ai.fail_next(Failure::RateLimited { retry_after_secs: 3 });
//! // ... call the endpoint at ai.base_url() ...
//! assert_eq!(ai.chat_requests()[0]["model"], "gpt-4o-mini");
//! ```
//!
//! Failures render as OpenAI does: `RateLimited` is a 429 with `retry-after` and
//! `x-ratelimit-*` headers, `Unauthorized` a 401 `invalid_api_key`, `ServerError(s)` an
//! `s` with `server_error`. Named failures:
//! - `insufficient_quota`: 429 that no waiting fixes (the account is out of credit);
//! - `reset_only`: 429 with no `retry-after`, only `x-ratelimit-reset-requests: 6m0s` (requests
//!   used up) and `x-ratelimit-reset-tokens: 1s`;
//! - `context_length_exceeded` (400), `model_not_found` (404);
//! - `html`: a 502 HTML page from a proxy in front;
//! - answers that are 200 but unusable: `tool_call` (a tool call and no content), `refusal`,
//!   `truncated` (`finish_reason: "length"`), `empty` (content `""`), `not_json`.

// Helpers return ready-made error responses; their size does not matter in a fake.
#![allow(clippy::result_large_err)]

use crate::{Failure, FakeServer, Shared, bearer, json, json_with};
use axum::Router;
use axum::body::Bytes;
use axum::extract;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::Arc;

type Sh = Arc<Shared<State>>;

/// Makes a reply from a request body.
pub type ReplyFn = Arc<dyn Fn(&Value) -> String + Send + Sync>;

/// The model named in answers the fake makes without a request at hand (named failures, models).
pub const MODEL: &str = "fake-model";

/// One completion the fake answered.
#[derive(Debug, Clone)]
pub struct Completion {
    pub request: Value,
    /// The reply as sent (after any cut at `max_tokens`).
    pub reply: String,
}

pub struct State {
    /// The key every request must carry as `Authorization: Bearer`; `None` takes any or none.
    pub key: Option<String>,
    /// Replies to give next, in order, before `reply` is asked.
    pub queued: VecDeque<String>,
    /// The reply when none is queued.
    pub reply: ReplyFn,
    /// Every completion answered 200, in order.
    pub completions: Vec<Completion>,
    next_id: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            key: None,
            queued: VecDeque::new(),
            reply: Arc::new(|body| marked_text(body).unwrap_or_default()),
            completions: Vec::new(),
            next_id: 0,
        }
    }
}

/// A running fake. It dereferences to its [`FakeServer`], so `requests()`, `fail_next()`,
/// `data()` and `url` are there too.
pub struct FakeOpenAi {
    server: FakeServer<State>,
}

impl Deref for FakeOpenAi {
    type Target = FakeServer<State>;

    fn deref(&self) -> &FakeServer<State> {
        &self.server
    }
}

impl FakeOpenAi {
    /// Starts a fake that takes any key (or none) and echoes the text to rewrite.
    pub async fn start() -> FakeOpenAi {
        let router = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/chat/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/models", get(models));
        FakeOpenAi { server: FakeServer::start(router, State::default(), render).await }
    }

    /// `http://127.0.0.1:<port>/v1`, the base a client is configured with.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.url)
    }

    /// From now on, refuses requests without `Authorization: Bearer <key>`.
    pub fn require_key(&self, key: &str) {
        self.data().key = Some(key.to_string());
    }

    /// The next completion answers `text` (queued after any already pushed).
    pub fn push_reply(&self, text: impl Into<String>) {
        self.data().queued.push_back(text.into());
    }

    /// Completions with nothing queued answer what `f` makes of the request body.
    pub fn reply_with(&self, f: impl Fn(&Value) -> String + Send + Sync + 'static) {
        self.data().reply = Arc::new(f);
    }

    /// The next `n` requests fail this way.
    pub fn fail_times(&self, n: usize, failure: Failure) {
        for _ in 0..n {
            self.server.fail_next(failure.clone());
        }
    }

    /// The JSON bodies of every chat-completions request received, failed ones included.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.server.requests_to("chat/completions").iter().map(|r| r.json()).collect()
    }

    /// Every completion answered 200, with its request and reply.
    pub fn completions(&self) -> Vec<Completion> {
        self.data().completions.clone()
    }
}

/// The text Herald asks to rewrite: in the last user message, the lines between a line
/// `<<<TEXT <id>>>` and the last line `<<<END <id>>>` with the same id; the whole last user message
/// when it has no such markers. `None` without a user message.
pub fn marked_text(body: &Value) -> Option<String> {
    let user = body["messages"].as_array()?.iter().rev().find(|m| m["role"] == "user")?;
    let content = content_text(&user["content"]);
    let lines: Vec<&str> = content.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("<<<TEXT "));
    let end = start.and_then(|s| {
        let id = lines[s].strip_prefix("<<<TEXT ")?;
        let closing = format!("<<<END {id}");
        lines.iter().rposition(|l| *l == closing).filter(|e| *e > s)
    });
    Some(match (start, end) {
        (Some(s), Some(e)) => lines[s + 1..e].join("\n"),
        _ => content,
    })
}

/// A message's content: a string, or the text parts of an array of parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// About four characters a token, as OpenAI's rule of thumb has it.
fn tokens(text: &str) -> u64 {
    text.chars().count().div_ceil(4) as u64
}

/// OpenAI's error envelope.
fn error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Response {
    json(status, json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

fn completion(id: &str, model: &str, message: Value, finish_reason: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "system_fingerprint": "fp_fake",
    })
}

fn render(failure: &Failure) -> Response {
    let text = |content: Value, finish: &str| {
        let message = json!({"role": "assistant", "content": content, "refusal": null});
        json(200, completion("chatcmpl-fake-failure", MODEL, message, finish, 20, 5))
    };
    match failure {
        Failure::RateLimited { retry_after_secs: n } => json_with(
            429,
            &[
                ("retry-after", n.to_string()),
                ("x-ratelimit-limit-requests", "500".into()),
                ("x-ratelimit-remaining-requests", "0".into()),
                ("x-ratelimit-reset-requests", format!("{n}s")),
                ("x-ratelimit-limit-tokens", "200000".into()),
                ("x-ratelimit-remaining-tokens", "199000".into()),
                ("x-ratelimit-reset-tokens", "300ms".into()),
            ],
            json!({"error": {
                "message": format!("Rate limit reached for {MODEL} in organization org-fake on requests per min (RPM): \
                    Limit 500, Used 500, Requested 1. Please try again in {n}s."),
                "type": "requests",
                "param": null,
                "code": "rate_limit_exceeded",
            }}),
        ),
        Failure::Unauthorized => error(
            401,
            "Incorrect API key provided: sk-****. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        Failure::ServerError(s) => {
            error(*s, "The server had an error while processing your request. Sorry about that!", "server_error", None)
        }
        Failure::Named("insufficient_quota") => error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
        ),
        Failure::Named("reset_only") => json_with(
            429,
            &[
                ("x-ratelimit-limit-requests", "10000".into()),
                ("x-ratelimit-remaining-requests", "0".into()),
                ("x-ratelimit-reset-requests", "6m0s".into()),
                ("x-ratelimit-limit-tokens", "200000".into()),
                ("x-ratelimit-remaining-tokens", "150000".into()),
                ("x-ratelimit-reset-tokens", "1s".into()),
            ],
            json!({"error": {
                "message": "Rate limit reached on requests per day (RPD).",
                "type": "requests",
                "param": null,
                "code": "rate_limit_exceeded",
            }}),
        ),
        Failure::Named("context_length_exceeded") => error(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
            "invalid_request_error",
            Some("context_length_exceeded"),
        ),
        Failure::Named("model_not_found") => error(
            404,
            &format!("The model `{MODEL}` does not exist or you do not have access to it."),
            "invalid_request_error",
            Some("model_not_found"),
        ),
        Failure::Named("html") => (
            axum::http::StatusCode::BAD_GATEWAY,
            [(CONTENT_TYPE, "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
        Failure::Named("tool_call") => {
            let message = json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": "call_fake",
                    "type": "function",
                    "function": {"name": "post_to_all_accounts", "arguments": "{\"text\":\"X\"}"},
                }],
            });
            json(200, completion("chatcmpl-fake-failure", MODEL, message, "tool_calls", 20, 5))
        }
        Failure::Named("refusal") => {
            let message =
                json!({"role": "assistant", "content": null, "refusal": "I'm sorry, I can't help with that."});
            json(200, completion("chatcmpl-fake-failure", MODEL, message, "stop", 20, 5))
        }
        Failure::Named("truncated") => text(json!("This answer was cut off in the mid"), "length"),
        Failure::Named("empty") => text(json!(""), "stop"),
        Failure::Named("not_json") => (axum::http::StatusCode::OK, "this is not a chat completion").into_response(),
        other => error(500, &format!("the fake cannot render {other:?}"), "server_error", None),
    }
}

/// OpenAI's 401s: no key, or a key it does not know (shown masked, as OpenAI does).
fn unauthorized(sh: &Sh, headers: &HeaderMap) -> Option<Response> {
    let key = sh.data().key.clone()?;
    match bearer(headers) {
        Some(k) if k == key => None,
        None => Some(error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using \
             Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
        )),
        Some(k) => {
            let tail: String = k.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
            Some(error(
                401,
                &format!(
                    "Incorrect API key provided: sk-****{tail}. You can find your API key at https://platform.openai.com/account/api-keys."
                ),
                "invalid_request_error",
                Some("invalid_api_key"),
            ))
        }
    }
}

fn bad_request(message: &str, param: Option<&str>) -> Response {
    json(400, json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}))
}

/// What a real server checks before it answers; `Err` is its 400.
fn check(body: &Value) -> Result<(), Response> {
    if !body.is_object() {
        return Err(bad_request("We could not parse the JSON body of your request.", None));
    }
    if body["model"].as_str().is_none_or(str::is_empty) {
        return Err(bad_request("you must provide a model parameter", Some("model")));
    }
    let Some(messages) = body["messages"].as_array() else {
        return Err(bad_request("'messages' is a required property", Some("messages")));
    };
    if messages.is_empty() {
        return Err(bad_request("[] is too short - 'messages'", Some("messages")));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            return Err(bad_request(&format!("Invalid value: '{role}'."), Some(&format!("messages[{i}].role"))));
        }
        if !(m["content"].is_string() || m["content"].is_array()) && role != "assistant" {
            return Err(bad_request(
                &format!("Invalid type for 'messages[{i}].content'."),
                Some(&format!("messages[{i}].content")),
            ));
        }
    }
    let temperature = &body["temperature"];
    if !temperature.is_null() && !temperature.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
        return Err(bad_request("temperature must be a number between 0 and 2", Some("temperature")));
    }
    if body["stream"] == true {
        return Err(bad_request("the fake does not stream", Some("stream")));
    }
    Ok(())
}

async fn completions(extract::State(sh): extract::State<Sh>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unauthorized(&sh, &headers) {
        return r;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Err(r) = check(&body) {
        return r;
    }
    let (queued, reply_fn) = {
        let mut data = sh.data();
        (data.queued.pop_front(), data.reply.clone())
    };
    // The function runs without the lock: it may be anything a test wrote.
    let mut reply = queued.unwrap_or_else(|| reply_fn(&body));
    let limit = body["max_completion_tokens"].as_u64().or(body["max_tokens"].as_u64());
    let mut finish = "stop";
    if let Some(limit) = limit.filter(|l| tokens(&reply) > *l) {
        reply = reply.chars().take(limit as usize * 4).collect();
        finish = "length";
    }
    let prompt: u64 = body["messages"]
        .as_array()
        .map(|ms| ms.iter().map(|m| 4 + tokens(&content_text(&m["content"]))).sum())
        .unwrap_or(0);
    let id = {
        let mut data = sh.data();
        data.next_id += 1;
        data.completions.push(Completion { request: body.clone(), reply: reply.clone() });
        format!("chatcmpl-fake{:08}", data.next_id)
    };
    let message = json!({"role": "assistant", "content": reply, "refusal": null});
    let model = body["model"].as_str().unwrap_or(MODEL);
    json(200, completion(&id, model, message, finish, prompt, tokens(&reply)))
}

async fn models(extract::State(sh): extract::State<Sh>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&sh, &headers) {
        return r;
    }
    json(
        200,
        json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1_700_000_000, "owned_by": "herald"}]}),
    )
}

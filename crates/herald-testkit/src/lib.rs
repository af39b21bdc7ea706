//! Fake platform servers for tests. Each platform module builds an axum router that speaks the
//! platform's wire protocol (paths, bodies, error shapes and rate-limit signals from
//! `reference/platforms.md`); [`FakeServer`] runs it on 127.0.0.1, records every request, and
//! injects failures in the platform's own format.
//!
//! ```ignore
//! let fake = herald_testkit::telegram::start().await;
//! fake.fail_next(Failure::RateLimited { retry_after_secs: 3 });
//! // ... call the adapter against fake.url ...
//! assert_eq!(fake.requests().len(), 2);
//! ```
#![forbid(unsafe_code)]

pub mod bluesky;
pub mod discord;
pub mod mastodon;
pub mod matrix;
pub mod moto;
pub mod nostr;
pub mod openai;
pub mod telegram;
pub mod vk;
pub mod webhook;
pub mod whop;
pub mod youtube;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A way to fail, rendered by each fake in its platform's own format.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The platform's own 429 (or VK's HTTP-200 error 6) asking to wait this long.
    RateLimited { retry_after_secs: u64 },
    /// The platform's answer to a revoked or wrong token.
    Unauthorized,
    /// A server error with this status.
    ServerError(u16),
    /// Apply the request (the post is made) but answer only after this long: a lost answer.
    AnswerLate(Duration),
    /// Wait this long, then handle the request normally.
    Hang(Duration),
    /// A platform-specific failure the fake knows by name (e.g. Telegram `chat_not_found`).
    Named(&'static str),
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a fake renders a [`Failure`] that is an answer (not a delay).
pub type Render = fn(&Failure) -> Response;

struct Rule {
    path_contains: Option<String>,
    failure: Failure,
}

/// State shared by the fake's handlers: the record, the queued failures, and the platform's data.
pub struct Shared<S> {
    recorded: Mutex<Vec<Recorded>>,
    rules: Mutex<VecDeque<Rule>>,
    data: Mutex<S>,
    render: Render,
    /// The fake's own base URL (for URLs it hands out, such as upload URLs).
    pub url: String,
}

impl<S> Shared<S> {
    /// The platform's data (posts made, tokens known, ...).
    pub fn data(&self) -> MutexGuard<'_, S> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_failure(&self, path: &str) -> Option<Failure> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let i = rules.iter().position(|r| r.path_contains.as_deref().is_none_or(|p| path.contains(p)))?;
        rules.remove(i).map(|r| r.failure)
    }
}

/// A running fake.
pub struct FakeServer<S> {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub url: String,
    pub addr: SocketAddr,
    pub shared: Arc<Shared<S>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Drop for FakeServer<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Send + 'static> FakeServer<S> {
    /// Serves `router` with the recording and failure layers around it.
    pub async fn start(router: Router<Arc<Shared<S>>>, data: S, render: Render) -> FakeServer<S> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a fake server");
        let addr = listener.local_addr().expect("local addr");
        let url = format!("http://{addr}");
        let shared = Arc::new(Shared {
            recorded: Mutex::new(Vec::new()),
            rules: Mutex::new(VecDeque::new()),
            data: Mutex::new(data),
            render,
            url: url.clone(),
        });
        let app = router
            .layer(middleware::from_fn_with_state(shared.clone(), record_and_fail::<S>))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeServer { url, addr, shared, task }
    }

    /// The next request fails this way.
    pub fn fail_next(&self, failure: Failure) {
        self.push_rule(None, failure);
    }

    /// The next request whose path contains `path` fails this way.
    pub fn fail_next_on(&self, path: &str, failure: Failure) {
        self.push_rule(Some(path.to_string()), failure);
    }

    fn push_rule(&self, path_contains: Option<String>, failure: Failure) {
        self.shared.rules.lock().unwrap_or_else(|e| e.into_inner()).push_back(Rule { path_contains, failure });
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The requests whose path contains `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.contains(path)).collect()
    }

    pub fn data(&self) -> MutexGuard<'_, S> {
        self.shared.data()
    }
}

async fn record_and_fail<S>(State(shared): State<Arc<Shared<S>>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "body too large for the fake").into_response(),
    };
    let path = parts.uri.path().to_string();
    shared.recorded.lock().unwrap_or_else(|e| e.into_inner()).push(Recorded {
        method: parts.method.clone(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let request = Request::from_parts(parts, Body::from(body));
    match shared.next_failure(&path) {
        None => next.run(request).await,
        Some(Failure::Hang(d)) => {
            tokio::time::sleep(d).await;
            next.run(request).await
        }
        Some(Failure::AnswerLate(d)) => {
            let response = next.run(request).await;
            tokio::time::sleep(d).await;
            response
        }
        Some(f) => (shared.render)(&f),
    }
}

/// A JSON response with a status.
pub fn json(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// A JSON response with extra headers.
pub fn json_with(status: u16, headers: &[(&str, String)], body: serde_json::Value) -> Response {
    let mut response = json(status, body);
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) =
            (axum::http::HeaderName::from_bytes(name.as_bytes()), axum::http::HeaderValue::from_str(value))
        {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::to_string)
}

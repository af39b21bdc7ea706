//! Inbound hooks: WebSub for YouTube sources (`/hooks/websub/{id}`) and signed webhooks
//! (`/hooks/in/{id}`). They are public (the hub and senders carry no API key); the signature
//! or the pending subscription is the credential. Bodies are capped before anything reads them.

use crate::error::ApiError;
use crate::router::AppState;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::ErrorCode;
use herald_triggers::inbound::Received;
use herald_triggers::websub::{Notified, Verification};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

/// Reads at most `limit` bytes: 413 when `Content-Length` says more, or once more arrives.
async fn read_capped(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(ErrorCode::PayloadTooLarge, format!("the body is larger than {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_large())
}

/// The hub's verification of intent: the challenge, as plain text, only for a subscription we
/// asked for; 404 otherwise.
pub async fn websub_verify(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else { return StatusCode::NOT_FOUND.into_response() };
    let get = |k: &str| q.get(k).map(String::as_str);
    match state
        .sources
        .websub_verify(
            id,
            get("hub.mode"),
            get("hub.topic"),
            get("hub.challenge"),
            get("hub.lease_seconds"),
            get("hub.reason"),
        )
        .await
    {
        Ok(Verification::Challenge(c)) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], c).into_response(),
        Ok(Verification::Noted) => StatusCode::OK.into_response(),
        Ok(Verification::Refused) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// A hub notification. 2xx whenever the source exists, even for a bad signature (WebSub §7:
/// no oracle); 410 for a source that is gone, so the hub stops.
pub async fn websub_notify(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else { return StatusCode::GONE.into_response() };
    let body = match read_capped(&headers, body, herald_triggers::MAX_HOOK_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let signature = headers.get("x-hub-signature").and_then(|v| v.to_str().ok());
    match state.sources.websub_notify(id, signature, &body).await {
        Ok(Notified::Gone) => StatusCode::GONE.into_response(),
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A signed webhook: JSON only (415), capped (413), signature and timestamp checked (401), a
/// replayed `webhook-id` acknowledged without a second event.
pub async fn inbound(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no webhook source has this address");
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let limit = state.sources.webhook_limit(id).await?.ok_or_else(not_found)?;
    if !is_json(&headers) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "webhooks take JSON; send Content-Type: application/json",
        ));
    }
    let body = read_capped(&headers, body, limit).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok(match state.sources.receive_webhook(id, &header, &body).await? {
        Received::Stored(event) => {
            (StatusCode::ACCEPTED, Json(json!({"status": "accepted", "event": event}))).into_response()
        }
        Received::Duplicate => (StatusCode::OK, Json(json!({"status": "duplicate"}))).into_response(),
    })
}

/// A decision through an approval's one-time link.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkDecision {
    /// `approve` or `reject`.
    pub decision: String,
    #[serde(flatten)]
    pub rest: herald_workflows::Decision,
}

/// What an approval link shows: the proposal, who may decide, and until when. Reading it decides
/// nothing (link scanners open links). A browser gets a page that reads the same JSON and decides
/// with a button; the page itself is the same for every token, so it tells nothing about one.
pub async fn approval_show(State(state): State<AppState>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    let private = [(header::REFERRER_POLICY, "no-referrer"), (header::CACHE_CONTROL, "no-store")];
    if wants_html(&headers) {
        let page = crate::router::page("approve a post", include_str!("pages/approve.html"));
        return (private, page).into_response();
    }
    match state.workflows.approval_by_token(&token).await {
        Ok(approval) => (private, Json(approval)).into_response(),
        Err(e) => (private, ApiError(e)).into_response(),
    }
}

/// A browser's navigation (its `Accept` names `text/html`), not an API call.
fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| {
        a.split(',').any(|m| m.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("text/html"))
    })
}

/// Decides through the link: the token is the credential, and works once.
pub async fn approval_decide(
    State(state): State<AppState>,
    Path(token): Path<String>,
    crate::body::Body(d): crate::body::Body<LinkDecision>,
) -> Result<Response, ApiError> {
    let approve = match d.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(ApiError::new(ErrorCode::ValidationFailed, "decision is `approve` or `reject`")),
    };
    Ok(Json(state.workflows.decide_by_token(&token, approve, d.rest).await?).into_response())
}

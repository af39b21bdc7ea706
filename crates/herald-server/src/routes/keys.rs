//! API keys and the audit log.

use crate::auth::Auth;
use crate::body::Body;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_accounts::{ApiKey, AuditEvent, AuditQuery, CreatedApiKey, authorize};
use herald_core::{Action, TeamRole};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[utoipa::path(get, path = "/api-keys", tag = "api-keys", responses((status = 200, body = Vec<ApiKey>), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<ApiKey>>, ApiError> {
    let (team, _) = authorize(&p, Action::ManageApiKeys)?;
    Ok(Json(state.accounts.api_keys(team).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    /// At most admin, and no higher than the caller's role.
    #[schema(value_type = String, example = "editor")]
    pub role: TeamRole,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new API key for the caller's team. The key is in this response only.
#[utoipa::path(post, path = "/api-keys", tag = "api-keys", request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.accounts.create_api_key(&p, &r.name, r.role, r.expires_at).await?)))
}

#[utoipa::path(get, path = "/api-keys/{key_id}", tag = "api-keys", params(("key_id" = Uuid, Path)),
    responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, Auth(p): Auth, Path(id): Path<Uuid>) -> Result<Json<ApiKey>, ApiError> {
    let (team, _) = authorize(&p, Action::ManageApiKeys)?;
    Ok(Json(state.accounts.api_key(team, id).await?))
}

/// Revokes a key; it fails on the very next request.
#[utoipa::path(delete, path = "/api-keys/{key_id}", tag = "api-keys", params(("key_id" = Uuid, Path)),
    responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(state.accounts.revoke_api_key(&p, id).await?))
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next: Option<Uuid>,
}

/// The team's audit log, newest first (`read_audit`).
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let (team, _) = authorize(&p, Action::ReadAudit)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200) as usize;
    let events = state.accounts.audit_events(team, &q).await?;
    let next = (events.len() == limit).then(|| events.last().map(|e| e.id)).flatten();
    Ok(Json(AuditPage { events, next }))
}

/// The platform registry: capabilities, text limits with each platform's counting rule, media
/// limits and how retries avoid duplicates.
#[utoipa::path(get, path = "/platforms", tag = "platforms",
    responses((status = 200, description = "every platform", body = Object), (status = 401, body = ErrorBody)))]
pub async fn platforms(Auth(_): Auth) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "platforms": herald_core::platforms::REGISTRY }))
}

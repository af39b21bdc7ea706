//! Platform connections: credentials checked live before they are saved, never returned.

use crate::auth::Auth;
use crate::body::Body;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use herald_accounts::authorize;
use herald_connections::{ConnectionUpdate, ConnectionView, NewConnection};
use herald_core::Action;
use herald_posts::{Slot, SlotsInput};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only this platform's connections.
    pub platform: Option<String>,
}

/// The team's connections, without their credentials.
#[utoipa::path(get, path = "/connections", tag = "connections", params(ListQuery),
    responses((status = 200, body = Vec<ConnectionView>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ConnectionView>>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    Ok(Json(state.connections.list(team, q.platform.as_deref()).await?))
}

/// Connects an account. The credentials are checked live against the platform first (Telegram
/// `getMe` and the bot's rights in the chat, Mastodon `verify_credentials`, Bluesky
/// `createSession`, Matrix `whoami` and room membership, ...); nothing is saved if they fail.
#[utoipa::path(post, path = "/connections", tag = "connections", request_body = NewConnection,
    responses((status = 201, body = ConnectionView), (status = 403, body = ErrorBody),
        (status = 422, description = "validation_failed, platform_auth_failed, platform_rejected or ssrf_blocked_destination", body = ErrorBody),
        (status = 502, description = "the platform could not be reached", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<NewConnection>,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.connections.create(&p, r).await?)))
}

#[utoipa::path(get, path = "/connections/{connection_id}", tag = "connections", params(("connection_id" = Uuid, Path)),
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<ConnectionView>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    Ok(Json(state.connections.get(team, id).await?))
}

/// Renames or re-configures a connection; new settings or credentials are checked live first.
#[utoipa::path(patch, path = "/connections/{connection_id}", tag = "connections", params(("connection_id" = Uuid, Path)),
    request_body = ConnectionUpdate,
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<ConnectionUpdate>,
) -> Result<Json<ConnectionView>, ApiError> {
    Ok(Json(state.connections.update(&p, id, r).await?))
}

#[utoipa::path(delete, path = "/connections/{connection_id}", tag = "connections", params(("connection_id" = Uuid, Path)),
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<ConnectionView>, ApiError> {
    Ok(Json(state.connections.delete(&p, id).await?))
}

/// Checks the stored credentials live again. The answer is the connection with its new status:
/// `active`, `needs_reauth` (the platform refused the credentials) or `error`, and the last error.
#[utoipa::path(post, path = "/connections/{connection_id}/test", tag = "connections", params(("connection_id" = Uuid, Path)),
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody)))]
pub async fn test(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<ConnectionView>, ApiError> {
    Ok(Json(state.posts.test_connection(&p, id).await?))
}
#[utoipa::path(get, path = "/connections/{connection_id}/slots", tag = "connections", params(("connection_id" = Uuid, Path)),
    responses((status = 200, body = Vec<Slot>), (status = 404, body = ErrorBody)))]
pub async fn slots(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<Slot>>, ApiError> {
    Ok(Json(state.posts.slots(&p, id).await?))
}
#[utoipa::path(put, path = "/connections/{connection_id}/slots", tag = "connections", params(("connection_id" = Uuid, Path)),
    request_body = SlotsInput,
    responses((status = 200, body = Vec<Slot>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_slots(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<SlotsInput>,
) -> Result<Json<Vec<Slot>>, ApiError> {
    Ok(Json(state.posts.set_slots(&p, id, r).await?))
}

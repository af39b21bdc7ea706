//! Outgoing event webhooks and notifications.

use crate::auth::Auth;
use crate::body::Body;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use herald_accounts::authorize;
use herald_core::Action;
use herald_posts::{EndpointView, NewEndpoint, NotificationView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The team's webhook endpoints (`manage_team`).
#[utoipa::path(get, path = "/webhooks", tag = "webhooks", responses((status = 200, body = Vec<EndpointView>), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<EndpointView>>, ApiError> {
    Ok(Json(state.posts.endpoints(&p).await?))
}

/// Adds an endpoint that receives the team's events (`post.created`, `post.scheduled`,
/// `post.published`, `post.partially_published`, `post.failed`, `post.cancelled`,
/// `delivery.failed`, `delivery.unconfirmed`, `connection.needs_reauth`; all when `events` is
/// empty), signed with Standard Webhooks headers and retried. The secret is in this answer only.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = NewEndpoint,
    responses((status = 201, body = EndpointView), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<NewEndpoint>,
) -> Result<(StatusCode, Json<EndpointView>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.posts.create_endpoint(&p, r).await?)))
}

#[utoipa::path(delete, path = "/webhooks/{webhook_id}", tag = "webhooks", params(("webhook_id" = Uuid, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<EndpointView>, ApiError> {
    Ok(Json(state.posts.delete_endpoint(&p, id).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct NotificationQuery {
    /// Only the ones not yet read.
    #[serde(default)]
    pub unread: bool,
}

/// What needs a person: failed and unconfirmed deliveries, failed posts, connections that need
/// re-authorising. Newest first.
#[utoipa::path(get, path = "/notifications", tag = "webhooks", params(NotificationQuery),
    responses((status = 200, body = Vec<NotificationView>)))]
pub async fn notifications(
    State(state): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<NotificationQuery>,
) -> Result<Json<Vec<NotificationView>>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    Ok(Json(state.posts.notifications(team, q.unread).await?))
}

#[utoipa::path(post, path = "/notifications/{notification_id}/read", tag = "webhooks", params(("notification_id" = Uuid, Path)),
    responses((status = 204, description = "marked read"), (status = 404, body = ErrorBody)))]
pub async fn read(State(state): State<AppState>, Auth(p): Auth, Path(id): Path<Uuid>) -> Result<StatusCode, ApiError> {
    state.posts.mark_read(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's notification e-mail in the team they act in.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// Mail me about this team's notifications. Only owners and admins are mailed, and only when
    /// the server has SMTP (HERALD_SMTP_URL); on by default.
    pub email: bool,
}

/// Whether the signed-in person gets notification e-mail in the current team. API keys have no
/// mailbox: 422.
#[utoipa::path(get, path = "/notifications/settings", tag = "webhooks",
    responses((status = 200, body = NotificationSettings), (status = 422, body = ErrorBody)))]
pub async fn mail_settings(
    State(state): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<NotificationSettings>, ApiError> {
    Ok(Json(NotificationSettings { email: state.accounts.notify_mail_setting(&p).await? }))
}

/// Turns the signed-in person's notification e-mail in the current team on or off (any role;
/// it matters for owners and admins, the ones mailed).
#[utoipa::path(put, path = "/notifications/settings", tag = "webhooks", request_body = NotificationSettings,
    responses((status = 200, body = NotificationSettings), (status = 422, body = ErrorBody)))]
pub async fn set_mail_settings(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<NotificationSettings>,
) -> Result<Json<NotificationSettings>, ApiError> {
    Ok(Json(NotificationSettings { email: state.accounts.set_notify_mail(&p, r.email).await? }))
}

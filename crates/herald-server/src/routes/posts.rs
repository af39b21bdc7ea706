//! Posts and deliveries.

use crate::auth::Auth;
use crate::body::Body;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_accounts::authorize;
use herald_core::Action;
use herald_posts::{NewPost, PostQuery, PostStats, PostUpdate, PostView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Serialize, ToSchema)]
pub struct PostPage {
    pub posts: Vec<PostView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next: Option<Uuid>,
}

/// The team's posts, newest first, with their deliveries.
#[utoipa::path(get, path = "/posts", tag = "posts", params(PostQuery),
    responses((status = 200, body = PostPage), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<PostQuery>,
) -> Result<Json<PostPage>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    let (posts, next) = state.posts.list(team, &q).await?;
    Ok(Json(PostPage { posts, next }))
}

/// Creates a post: a draft, now, or at `schedule_at`. Every target is checked against its
/// platform's rules first (422 with `details.targets`); the post, its deliveries and their jobs
/// commit together. With an `Idempotency-Key` header a repeated request answers the same post
/// (200, `Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/posts", tag = "posts", request_body = NewPost,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes a retried create return the same post")),
    responses((status = 201, body = PostView), (status = 200, description = "a replay of an earlier request with the same key", body = PostView),
        (status = 409, description = "the key was used for a different request", body = ErrorBody),
        (status = 422, description = "platform rules broken, per target", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    Body(r): Body<NewPost>,
) -> Result<Response, ApiError> {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    let (post, replayed) = state.posts.create(&p, r, key).await?;
    let mut response = if replayed {
        (StatusCode::OK, Json(post)).into_response()
    } else {
        (StatusCode::CREATED, Json(post)).into_response()
    };
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A post with its deliveries and every attempt.
#[utoipa::path(get, path = "/posts/{post_id}", tag = "posts", params(("post_id" = Uuid, Path)),
    responses((status = 200, body = PostView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<PostView>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    Ok(Json(state.posts.get(team, id).await?))
}

/// The engagement of each delivery over time: one snapshot per fetch (often in the first hours,
/// then every 6 hours, then daily, up to `HERALD_STATS_MAX_AGE`), oldest first. Deliveries to
/// platforms that give no counts have none.
#[utoipa::path(get, path = "/posts/{post_id}/stats", tag = "posts", params(("post_id" = Uuid, Path)),
    responses((status = 200, body = PostStats), (status = 404, body = ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<PostStats>, ApiError> {
    Ok(Json(state.posts.stats(&p, id).await?))
}

/// Changes a post while nothing of it has gone out. A new `schedule_at` moves its jobs;
/// `draft: false` publishes a draft.
#[utoipa::path(patch, path = "/posts/{post_id}", tag = "posts", params(("post_id" = Uuid, Path)), request_body = PostUpdate,
    responses((status = 200, body = PostView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<PostUpdate>,
) -> Result<Json<PostView>, ApiError> {
    Ok(Json(state.posts.update(&p, id, r).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Also delete what was published, where the platform allows it.
    #[serde(default)]
    pub from_platforms: bool,
}

/// Deletes a post and its pending jobs; with `from_platforms=true`, first deletes it from the
/// platforms that allow it and reports each.
#[utoipa::path(delete, path = "/posts/{post_id}", tag = "posts", params(("post_id" = Uuid, Path), DeleteQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.posts.delete(&p, id, q.from_platforms).await?))
}

/// Cancels every delivery that has not started; nothing more is sent.
#[utoipa::path(post, path = "/posts/{post_id}/cancel", tag = "posts", params(("post_id" = Uuid, Path)),
    responses((status = 200, body = PostView), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<PostView>, ApiError> {
    Ok(Json(state.posts.cancel(&p, id).await?))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Required for an unconfirmed delivery: you checked, and it is not on the platform.
    #[serde(default)]
    pub confirm_not_posted: bool,
}

/// Sends a failed or unconfirmed delivery again.
#[utoipa::path(post, path = "/deliveries/{delivery_id}/retry", tag = "posts", params(("delivery_id" = Uuid, Path)), request_body = Retry,
    responses((status = 200, body = PostView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<Retry>,
) -> Result<Json<PostView>, ApiError> {
    Ok(Json(state.posts.retry(&p, id, r.confirm_not_posted).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// Whether the post is on the platform.
    pub published: bool,
    /// Its URL, when it is.
    pub url: Option<String>,
}

/// Settles an unconfirmed delivery: published (with its URL) or not published.
#[utoipa::path(post, path = "/deliveries/{delivery_id}/resolve", tag = "posts", params(("delivery_id" = Uuid, Path)), request_body = Resolve,
    responses((status = 200, body = PostView), (status = 409, body = ErrorBody)))]
pub async fn resolve(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<Resolve>,
) -> Result<Json<PostView>, ApiError> {
    Ok(Json(state.posts.resolve(&p, id, r.published, r.url).await?))
}

//! The media library: multipart uploads streamed to storage.

use crate::auth::Auth;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use herald_accounts::authorize;
use herald_core::{Action, Error, ErrorCode};
use herald_posts::MediaView;
use uuid::Uuid;

fn bad(msg: impl Into<String>) -> ApiError {
    Error::new(ErrorCode::BadRequest, msg).into()
}

/// Uploads a file (multipart field `file`, optional field `alt` before it). The type is sniffed
/// from the content (JPEG, PNG, GIF, WebP, MP4, QuickTime, WebM); the upload streams to storage and
/// is refused past `HERALD_MEDIA_MAX_BYTES` or the team's `media_bytes` quota, leaving nothing.
#[utoipa::path(post, path = "/media", tag = "media",
    request_body(content_type = "multipart/form-data", description = "`file` (and optionally `alt`)"),
    responses((status = 201, body = MediaView), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 403, description = "quota_exceeded", body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    Auth(p): Auth,
    mut form: Multipart,
) -> Result<(StatusCode, Json<MediaView>), ApiError> {
    authorize(&p, Action::WriteContent)?;
    let mut alt = None;
    while let Some(field) = form.next_field().await.map_err(|e| bad(format!("the multipart body is malformed: {e}")))? {
        match field.name() {
            Some("alt") => {
                let text = field.text().await.map_err(|e| bad(format!("the alt field is unreadable: {e}")))?;
                alt = Some(text.chars().take(1500).collect::<String>()).filter(|a| !a.trim().is_empty());
            }
            Some("file") => {
                let filename = field.file_name().unwrap_or("upload").to_string();
                let view = state.posts.upload(&p, &filename, alt, Box::pin(field), state.media_max_bytes).await?;
                return Ok((StatusCode::CREATED, Json(view)));
            }
            _ => {}
        }
    }
    Err(bad("the form has no `file` field"))
}

#[utoipa::path(get, path = "/media", tag = "media", responses((status = 200, body = Vec<MediaView>)))]
pub async fn list(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<MediaView>>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    Ok(Json(state.posts.media_list(team).await?))
}

#[utoipa::path(get, path = "/media/{media_id}", tag = "media", params(("media_id" = Uuid, Path)),
    responses((status = 200, body = MediaView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<MediaView>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    Ok(Json(state.posts.media_item(team, id).await?))
}

/// Deletes a file no unsent post uses.
#[utoipa::path(delete, path = "/media/{media_id}", tag = "media", params(("media_id" = Uuid, Path)),
    responses((status = 200, body = MediaView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<MediaView>, ApiError> {
    Ok(Json(state.posts.media_delete(&p, id).await?))
}

//! The media library: multipart uploads streamed to storage, and the signed public route
//! platforms fetch files from.

use crate::auth::Auth;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
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

/// What a signed media URL carries besides the file id (see `herald_media::signing`).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Signed {
    /// The team the file belongs to.
    team: Option<String>,
    /// When the URL stops working, in Unix seconds.
    expires: Option<String>,
    /// HMAC-SHA256 (hex) of the team, file and expiry under a key derived from Herald's master key.
    sig: Option<String>,
}

/// Streams a library file to whoever holds a signed URL for it, with no sign-in: the URLs Herald
/// hands to platforms that fetch media themselves (Nostr). Only Herald makes them (from
/// `HERALD_PUBLIC_URL`, valid for `HERALD_MEDIA_URL_TTL`); a changed team, file or expiry is
/// `media_url_invalid`, an old one `media_url_expired`, a deleted file 404.
#[utoipa::path(get, path = "/media/{media_id}/file", tag = "media", security(()),
    params(("media_id" = Uuid, Path), Signed),
    responses((status = 200, description = "the file, with its sniffed Content-Type",
            content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, description = "media_url_invalid or media_url_expired", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn file(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(q): Query<Signed>,
) -> Result<Response, ApiError> {
    let invalid = || ApiError::from(herald_media::UrlError::Invalid);
    let team: Uuid = q.team.as_deref().and_then(|t| t.parse().ok()).ok_or_else(invalid)?;
    let expires: i64 = q.expires.as_deref().and_then(|e| e.parse().ok()).ok_or_else(invalid)?;
    let now = herald_media::signing::unix_now();
    state.media_signer.verify(team, id, expires, q.sig.as_deref().unwrap_or(""), now)?;
    let (view, stream, len) = state.posts.media_file(team, id).await?;
    let body = axum::body::Body::from_stream(stream);
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    let mime = HeaderValue::from_str(&view.mime).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, mime);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let max_age = (expires - now).max(0);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_str(&format!("private, max-age={max_age}")).expect("ascii"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_DISPOSITION, content_disposition(&view.filename));
    Ok(resp)
}

/// `inline; filename="…"; filename*=UTF-8''…`: an ASCII fallback with quotes, backslashes and
/// anything unprintable replaced, and the exact name percent-encoded (RFC 6266).
fn content_disposition(name: &str) -> HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' { c } else { '_' })
        .collect();
    let mut exact = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            exact.push(b as char);
        } else {
            exact.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!("inline; filename=\"{fallback}\"; filename*=UTF-8''{exact}"))
        .unwrap_or(HeaderValue::from_static("inline"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn filenames_are_quoted_safely() {
        let h = |n: &str| super::content_disposition(n).to_str().unwrap().to_string();
        assert_eq!(h("cat.png"), "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png");
        assert_eq!(h("a \"b\"\\c;.png"), "inline; filename=\"a _b__c;.png\"; filename*=UTF-8''a%20%22b%22%5Cc%3B.png");
        assert_eq!(h("chat é.png"), "inline; filename=\"chat _.png\"; filename*=UTF-8''chat%20%C3%A9.png");
    }
}

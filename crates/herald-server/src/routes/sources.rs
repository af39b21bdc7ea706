//! Sources and the events they produce.

use crate::auth::Auth;
use crate::body::Body;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use herald_triggers::{EventPage, EventQuery, EventView, NewEvent, NewSource, PollReport, SourceUpdate, SourceView};
use uuid::Uuid;

/// The team's sources with their status: last run and error, next run, event count, and for
/// YouTube channels the WebSub state and lease.
#[utoipa::path(get, path = "/sources", tag = "sources", responses((status = 200, body = Vec<SourceView>)))]
pub async fn list(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<SourceView>>, ApiError> {
    Ok(Json(state.sources.list(&p).await?))
}

/// Adds a source. `config` depends on `kind`: `feed` takes `url`, `interval_secs`, `backfill`,
/// `max_new_per_poll`; `youtube_channel` takes `channel` (an id, @handle or URL); `schedule`
/// takes `cron`, `timezone`, `missed` (`run_once` or `skip`), `payload`; `webhook` takes
/// `verify` (`standard` or `hmac`), `signature_header`, `max_bytes`. A webhook source's secret is
/// in this answer only.
#[utoipa::path(post, path = "/sources", tag = "sources", request_body = NewSource,
    responses((status = 201, body = SourceView), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<NewSource>,
) -> Result<(StatusCode, Json<SourceView>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.sources.create(&p, r).await?)))
}

#[utoipa::path(get, path = "/sources/{source_id}", tag = "sources", params(("source_id" = Uuid, Path)),
    responses((status = 200, body = SourceView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<SourceView>, ApiError> {
    Ok(Json(state.sources.get(&p, id).await?))
}

/// Renames, reconfigures, pauses (`active: false`) or resumes a source. A new URL, channel or
/// cron starts over: polled now and baselined again.
#[utoipa::path(patch, path = "/sources/{source_id}", tag = "sources", params(("source_id" = Uuid, Path)), request_body = SourceUpdate,
    responses((status = 200, body = SourceView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<SourceUpdate>,
) -> Result<Json<SourceView>, ApiError> {
    Ok(Json(state.sources.update(&p, id, r).await?))
}

/// Deletes a source and its events; a subscribed YouTube channel is unsubscribed at the hub.
#[utoipa::path(delete, path = "/sources/{source_id}", tag = "sources", params(("source_id" = Uuid, Path)),
    responses((status = 200, body = SourceView), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<SourceView>, ApiError> {
    Ok(Json(state.sources.delete(&p, id).await?))
}

/// Polls a feed or YouTube channel now and says what it found. 409 while a node is polling it.
#[utoipa::path(post, path = "/sources/{source_id}/poll", tag = "sources", params(("source_id" = Uuid, Path)),
    responses((status = 200, body = PollReport), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn poll(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<PollReport>, ApiError> {
    Ok(Json(state.sources.poll_now(&p, id).await?))
}

/// Adds an event by hand (scripts, tests). The same `external_id` twice is a 409.
#[utoipa::path(post, path = "/sources/{source_id}/events", tag = "sources", params(("source_id" = Uuid, Path)), request_body = NewEvent,
    responses((status = 201, body = EventView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_event(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<NewEvent>,
) -> Result<(StatusCode, Json<EventView>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.sources.add_event(&p, id, r).await?)))
}

/// The team's events, newest first, filtered by source, kind and time.
#[utoipa::path(get, path = "/events", tag = "sources", params(EventQuery), responses((status = 200, body = EventPage)))]
pub async fn events(
    State(state): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
    Ok(Json(state.sources.events(&p, q).await?))
}

#[utoipa::path(get, path = "/events/{event_id}", tag = "sources", params(("event_id" = Uuid, Path)),
    responses((status = 200, body = EventView), (status = 404, body = ErrorBody)))]
pub async fn event(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<EventView>, ApiError> {
    Ok(Json(state.sources.event(&p, id).await?))
}

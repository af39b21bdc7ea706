use crate::error::ApiError;
use crate::router::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use herald_core::ErrorCode;
use serde_json::{Value, json};

/// The process is alive. Touches nothing else, so it answers even when the database does not.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers and every migration is applied: the process can take traffic.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.db.is_ready().await {
        Ok(Json(json!({"status": "ready", "database": state.db.backend().as_str(), "role": state.role.as_str()})))
    } else {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "the database is unreachable or its migrations are not applied; run `herald migrate` or check HERALD_DATABASE_URL",
        ))
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.metrics.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

pub mod health;

use crate::router::AppState;
use axum::Router;

/// The JSON API. Resources arrive with their issues (teams and keys first, since every other
/// route needs authentication).
pub fn api_v1() -> Router<AppState> {
    Router::new()
}

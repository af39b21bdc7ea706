//! Herald's HTTP surface: the axum router, the one error format, health and readiness, and
//! Prometheus metrics. It reaches storage only through `herald-store` and `herald-queue`.
#![forbid(unsafe_code)]

mod error;
pub mod metrics;
mod router;
mod routes;

pub use error::ApiError;
pub use router::{AppState, Role, router};

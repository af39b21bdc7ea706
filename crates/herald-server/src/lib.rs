//! Herald's HTTP surface: the axum router, the one error format, health and readiness, and
//! Prometheus metrics. It reaches storage only through `herald-store`, `herald-queue` and
//! `herald-accounts`.
#![forbid(unsafe_code)]

mod auth;
mod body;
mod error;
mod hooks;
pub mod metrics;
mod router;
mod routes;

pub use routes::mail::{MAIL_PASSWORD_RESET, password_reset_binding};

pub use auth::{CSRF_HEADER, SESSION_COOKIE};
pub use error::ApiError;
pub use router::{AppState, Role, openapi, router};

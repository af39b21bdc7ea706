use crate::error::ApiError;
use crate::routes;
use axum::Router;
use axum::routing::get;
use herald_core::ErrorCode;
use herald_queue::Queue;
use herald_store::Db;
use metrics_exporter_prometheus::PrometheusHandle;

/// What a process does. `all` is the default single-binary mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// API, dashboard, workers and schedulers.
    All,
    /// The API and dashboard; enqueues but runs no jobs.
    Api,
    /// Runs jobs and schedulers; serves only health and metrics.
    Worker,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "all" => Some(Role::All),
            "api" => Some(Role::Api),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }

    pub fn runs_jobs(self) -> bool {
        self != Role::Api
    }

    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub accounts: herald_accounts::Accounts,
    pub connections: herald_connections::Connections,
    pub posts: herald_posts::Posts,
    /// Sources and their events; also serves the public `/hooks/…` routes.
    pub sources: herald_triggers::Sources,
    /// Workflows, runs and approvals; also serves the public approval links (`/approve/…`).
    pub workflows: herald_workflows::Workflows,
    /// HERALD_MEDIA_MAX_BYTES: the largest upload.
    pub media_max_bytes: u64,
    /// Checks the signed media URLs of `GET /api/v1/media/{id}/file`; the same key (derived from
    /// the master key) as the workers that make them, so every node accepts every node's URLs.
    pub media_signer: herald_media::UrlSigner,
    /// HERALD_PUBLIC_URL: the origin allowed to send cookie requests, and https makes cookies Secure.
    pub public_url: Option<String>,
    /// SMTP is configured: password-reset links are mailed by a `mail.password_reset` job, and
    /// notifications by `mail.notification` jobs (see `herald_posts::notify_mail`).
    pub mail_enabled: bool,
    pub queue: Queue,
    pub metrics: PrometheusHandle,
    pub role: Role,
}

/// Every route, in one place.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics));
    if state.role.serves_api() {
        let (api, doc) = routes::api_v1();
        let doc = std::sync::Arc::new(doc);
        app = app
            .nest("/api/v1", api)
            .route("/api/openapi.json", get(move || std::future::ready(axum::Json(doc.as_ref().clone()))))
            .route("/setup", get(setup_page))
            .route("/reset-password", get(reset_page))
            .route("/invite", get(invite_page))
            .route("/hooks/websub/{id}", get(crate::hooks::websub_verify).post(crate::hooks::websub_notify))
            .route("/hooks/in/{id}", axum::routing::post(crate::hooks::inbound))
            .route("/approve/{token}", get(crate::hooks::approval_show).post(crate::hooks::approval_decide));
    }
    app.fallback(not_found).layer(axum::middleware::from_fn(crate::metrics::track_http)).with_state(state)
}

/// A small page in the shared shell (title, viewport, style).
pub(crate) fn page(title: &str, body: &str) -> axum::response::Html<String> {
    axum::response::Html(include_str!("pages/shell.html").replace("{title}", title).replace("{body}", body))
}

/// The first-run page the setup link opens; it posts to `/api/v1/session/setup`.
async fn setup_page() -> axum::response::Html<String> {
    page("first-run setup", include_str!("pages/setup.html"))
}

/// The page a mailed reset link opens; it posts to `/api/v1/password-reset/complete`.
async fn reset_page() -> axum::response::Html<String> {
    page("reset your password", include_str!("pages/reset.html"))
}

/// The page an invite link opens; it posts to `/api/v1/invites/accept`.
async fn invite_page() -> axum::response::Html<String> {
    page("join a team", include_str!("pages/invite.html"))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see /api/openapi.json for the API")
}

/// The OpenAPI document of `/api/v1`, as `/api/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::api_v1().1
}

mod connections;
mod events;
pub mod health;
mod keys;
mod media;
mod posts;
mod session;
mod sources;
mod workflows;

/// What the binary's mail job needs from the reset route.
pub mod mail {
    pub use super::session::{MAIL_PASSWORD_RESET, password_reset_binding};
}
mod teams;

use crate::router::AppState;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald API", description = "Herald's REST API. Authenticate with `Authorization: Bearer hk_…` (an API key) \
        or the dashboard's `herald_session` cookie plus `X-CSRF-Token` on state-changing requests. Every object belongs to \
        one team; another team's object answers 404. Errors are `{\"error\":{\"code\",\"message\",\"details\"}}`."),
    servers((url = "/api/v1")),
    modifiers(&Security),
    security(("api_key" = []), ("session" = [])),
    tags((name = "session"), (name = "me"), (name = "teams"), (name = "members"), (name = "invites"), (name = "api-keys"), (name = "audit"), (name = "platforms"), (name = "connections"), (name = "posts"), (name = "media"), (name = "webhooks"), (name = "sources"), (name = "workflows"))
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("hk_…").build()),
        );
        components
            .add_security_scheme("session", SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("herald_session"))));
    }
}

/// The JSON API and its OpenAPI document, built from the same route list so they cannot drift.
pub fn api_v1() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(session::login))
        .routes(routes!(session::logout))
        .routes(routes!(session::current))
        .routes(routes!(session::select_team))
        .routes(routes!(session::setup))
        .routes(routes!(session::reset_request))
        .routes(routes!(session::reset_complete))
        .routes(routes!(session::me, session::update_me))
        .routes(routes!(session::change_password))
        .routes(routes!(session::my_sessions))
        .routes(routes!(session::end_session))
        .routes(routes!(session::enrol))
        .routes(routes!(session::confirm))
        .routes(routes!(session::disable))
        .routes(routes!(teams::list, teams::create))
        .routes(routes!(teams::get, teams::update))
        .routes(routes!(teams::set_quotas))
        .routes(routes!(teams::members))
        .routes(routes!(teams::member, teams::update_member, teams::remove_member))
        .routes(routes!(teams::invites, teams::create_invite))
        .routes(routes!(teams::invite, teams::revoke_invite))
        .routes(routes!(teams::accept))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::get, keys::revoke))
        .routes(routes!(keys::audit))
        .routes(routes!(keys::platforms))
        .routes(routes!(connections::list, connections::create))
        .routes(routes!(connections::get, connections::update, connections::remove))
        .routes(routes!(connections::test))
        .routes(routes!(connections::slots, connections::set_slots))
        .routes(routes!(posts::list, posts::create))
        .routes(routes!(posts::get, posts::update, posts::remove))
        .routes(routes!(posts::stats))
        .routes(routes!(posts::cancel))
        .routes(routes!(posts::retry))
        .routes(routes!(posts::resolve))
        .routes(routes!(media::get, media::remove))
        // Public: a signed, expiring URL is the credential (see herald_media::signing).
        .routes(routes!(media::file))
        .routes(routes!(events::list, events::create))
        .routes(routes!(events::remove))
        .routes(routes!(events::notifications))
        .routes(routes!(events::mail_settings, events::set_mail_settings))
        .routes(routes!(events::read))
        .routes(routes!(sources::list, sources::create))
        .routes(routes!(sources::get, sources::update, sources::remove))
        .routes(routes!(sources::poll))
        .routes(routes!(sources::add_event))
        .routes(routes!(sources::events))
        .routes(routes!(sources::event))
        .routes(routes!(workflows::list, workflows::create))
        .routes(routes!(workflows::get, workflows::replace, workflows::patch, workflows::remove))
        .routes(routes!(workflows::versions))
        .routes(routes!(workflows::run))
        .routes(routes!(workflows::runs))
        .routes(routes!(workflows::get_run))
        .routes(routes!(workflows::cancel_run))
        .routes(routes!(workflows::rerun))
        .routes(routes!(workflows::approvals))
        .routes(routes!(workflows::approval))
        .routes(routes!(workflows::approve))
        .routes(routes!(workflows::reject))
        .routes(routes!(workflows::settings, workflows::set_settings))
        // The upload streams with its own cap (HERALD_MEDIA_MAX_BYTES), not the JSON body limit;
        // the listing shares its path and takes no body.
        .merge(
            OpenApiRouter::new()
                .routes(routes!(media::list, media::upload))
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .split_for_parts()
}

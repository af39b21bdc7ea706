//! Sign-in and the signed-in user: `/session/*`, `/password-reset/*` and `/me/*`.

use crate::auth::{Auth, SESSION_COOKIE, check_origin, cleared_cookies, client_of, cookie, session_cookies};
use crate::body::Body;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_accounts::{LoggedIn, SecondFactor, Session, Team, TotpEnrolment, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// The 6-digit code from the authenticator app, when the user has two-factor on.
    pub totp_code: Option<String>,
    /// Or one of the recovery codes (each works once).
    pub recovery_code: Option<String>,
}

/// A signed-in session. The session token itself travels only in the HttpOnly cookie.
#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    pub user: User,
    pub session: Session,
    /// Send it back as `X-CSRF-Token` on every state-changing request made with the cookie.
    pub csrf_token: Option<String>,
    /// The teams the user belongs to; `session.team_id` is the one requests act in.
    pub teams: Vec<Team>,
}

async fn signed_in(state: &AppState, li: LoggedIn) -> Result<Response, ApiError> {
    let teams = state.accounts.teams_of(li.user.id).await?;
    let cookies = session_cookies(state, &li);
    let body = SessionResponse { csrf_token: Some(li.csrf_token), user: li.user, session: li.session, teams };
    Ok((cookies, Json(body)).into_response())
}

/// Signs in. The same `invalid_credentials` answers an unknown email and a wrong password;
/// repeated failures get `rate_limited` with a rising delay. Rotates the session: any session the
/// browser held before ends.
#[utoipa::path(post, path = "/session/login", tag = "session", request_body = LoginRequest,
    responses((status = 200, body = SessionResponse, description = "signed in; sets the herald_session and herald_csrf cookies"),
        (status = 401, body = ErrorBody, description = "invalid_credentials or two_factor_required"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many failures; details.retry_after_secs")))]
pub async fn login(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    check_origin(&parts, &state)?;
    let client = client_of(&parts);
    let old = cookie(&parts.headers, SESSION_COOKIE);
    let Body(r) = Body::<LoginRequest>::from_request(Request::from_parts(parts, body), &state).await?;
    let second = SecondFactor { totp_code: r.totp_code, recovery_code: r.recovery_code };
    let li = state.accounts.login(&r.email, &r.password, &second, &client, old.as_deref()).await?;
    signed_in(&state, li).await
}

/// Ends the current session.
#[utoipa::path(post, path = "/session/logout", tag = "session",
    responses((status = 204, description = "signed out; clears the cookies"), (status = 401, body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, Auth(p): Auth) -> Result<Response, ApiError> {
    state.accounts.logout(&p).await?;
    Ok((StatusCode::NO_CONTENT, cleared_cookies()).into_response())
}

/// The current session, its user and their teams.
#[utoipa::path(get, path = "/session", tag = "session",
    responses((status = 200, body = SessionResponse), (status = 401, body = ErrorBody)))]
pub async fn current(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<SessionResponse>, ApiError> {
    let user_id = p.user_id.ok_or_else(|| {
        ApiError::new(herald_core::ErrorCode::BadRequest, "API keys have no session; see GET /api/v1/me")
    })?;
    let user = state.accounts.user(user_id).await?;
    let session =
        state.accounts.sessions(user_id).await?.into_iter().find(|s| Some(s.id) == p.session_id).ok_or_else(|| {
            ApiError::new(herald_core::ErrorCode::Unauthorized, "the session has ended; sign in again")
        })?;
    let teams = state.accounts.teams_of(user_id).await?;
    Ok(Json(SessionResponse { user, session, csrf_token: None, teams }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectTeam {
    pub team_id: Uuid,
}

/// Chooses the team the session acts in.
#[utoipa::path(put, path = "/session/team", tag = "session", request_body = SelectTeam,
    responses((status = 204), (status = 404, body = ErrorBody, description = "not a member of that team")))]
pub async fn select_team(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<SelectTeam>,
) -> Result<StatusCode, ApiError> {
    state.accounts.select_team(&p, r.team_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The token from the setup link `herald serve` logs on first run.
    pub token: String,
    pub email: String,
    pub display_name: String,
    pub password: String,
}

/// First run: creates the first owner (an instance admin) with the one-time setup token.
#[utoipa::path(post, path = "/session/setup", tag = "session", request_body = SetupRequest,
    responses((status = 200, body = SessionResponse), (status = 404, body = ErrorBody, description = "the token is used, expired or unknown"),
        (status = 422, body = ErrorBody)))]
pub async fn setup(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    check_origin(&parts, &state)?;
    let client = client_of(&parts);
    let Body(r) = Body::<SetupRequest>::from_request(Request::from_parts(parts, body), &state).await?;
    let li = state.accounts.setup(&r.token, &r.email, &r.display_name, &r.password, &client).await?;
    signed_in(&state, li).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    pub email: String,
}

/// Starts a password reset. Always 202, whether or not the email is known. Without SMTP the
/// link is not sent; an admin gets it with `herald user reset-link --email …`.
#[utoipa::path(post, path = "/password-reset/request", tag = "session", request_body = ResetRequest,
    responses((status = 202, description = "accepted")))]
pub async fn reset_request(State(state): State<AppState>, Body(r): Body<ResetRequest>) -> Result<StatusCode, ApiError> {
    // Unknown and known emails get the same answer at once; the mail goes out from a job.
    let Some((user, token)) = state.accounts.issue_reset_token(&r.email).await.unwrap_or(None) else {
        return Ok(StatusCode::ACCEPTED);
    };
    if !state.mail_enabled {
        tracing::info!(user = %user.id, "password reset requested; no SMTP configured, so an admin must run `herald user reset-link`");
        return Ok(StatusCode::ACCEPTED);
    }
    // The token is a credential: the job's payload carries it sealed, never in clear.
    let sealed = state.accounts.vault().seal(&token, &password_reset_binding(user.id));
    let mut tx = state.db.begin().await?;
    herald_queue::enqueue(
        &mut tx,
        herald_queue::NewJob::new(MAIL_PASSWORD_RESET, serde_json::json!({"user_id": user.id, "token": sealed})),
    )
    .await
    .map_err(|e| ApiError::new(herald_core::ErrorCode::Internal, format!("queueing the reset mail failed: {e}")))?;
    tx.commit().await?;
    Ok(StatusCode::ACCEPTED)
}

/// The job kind that mails a password-reset link.
pub const MAIL_PASSWORD_RESET: &str = "mail.password_reset";

/// Where a sealed reset token in a job's payload belongs: to that user's reset mail only.
pub fn password_reset_binding(user: Uuid) -> String {
    herald_vault::binding("jobs", "mail.password_reset.token", None, &user)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetComplete {
    pub token: String,
    pub new_password: String,
}

/// Sets a new password with a reset token; ends every session of that user.
#[utoipa::path(post, path = "/password-reset/complete", tag = "session", request_body = ResetComplete,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn reset_complete(State(state): State<AppState>, req: Request) -> Result<StatusCode, ApiError> {
    let (parts, body) = req.into_parts();
    let client = client_of(&parts);
    let Body(r) = Body::<ResetComplete>::from_request(Request::from_parts(parts, body), &state).await?;
    state.accounts.reset_password(&r.token, &r.new_password, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller: a user (with their teams) or an API key (with its team and role).
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user: Option<User>,
    pub api_key_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    #[schema(value_type = Option<String>)]
    pub role: Option<herald_core::TeamRole>,
    pub teams: Vec<Team>,
}

#[utoipa::path(get, path = "/me", tag = "me", responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Me>, ApiError> {
    let (user, teams) = match p.user_id {
        Some(id) => (Some(state.accounts.user(id).await?), state.accounts.teams_of(id).await?),
        None => (None, Vec::new()),
    };
    Ok(Json(Me { user, api_key_id: p.key_id, team_id: p.team.map(|t| t.0), role: p.team.map(|t| t.1), teams }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    pub display_name: String,
}

#[utoipa::path(patch, path = "/me", tag = "me", request_body = UpdateMe, responses((status = 200, body = User), (status = 422, body = ErrorBody)))]
pub async fn update_me(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<UpdateMe>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.accounts.update_profile(&p, &r.display_name).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    pub new_password: String,
    /// Also end every other session of this user (recommended if the old password leaked).
    #[serde(default)]
    pub end_other_sessions: bool,
}

#[utoipa::path(post, path = "/me/password", tag = "me", request_body = ChangePassword,
    responses((status = 204), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn change_password(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    state.accounts.change_password(&p, &r.current_password, &r.new_password, r.end_other_sessions).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/me/sessions", tag = "me", responses((status = 200, body = Vec<Session>)))]
pub async fn my_sessions(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<Session>>, ApiError> {
    match p.user_id {
        Some(u) => Ok(Json(state.accounts.sessions(u).await?)),
        None => Ok(Json(Vec::new())),
    }
}

#[utoipa::path(delete, path = "/me/sessions/{session_id}", tag = "me", params(("session_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn end_session(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.accounts.end_session(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts two-factor enrolment: scan the QR code (or the otpauth URI), then confirm a code.
#[utoipa::path(post, path = "/me/2fa/enrol", tag = "me", responses((status = 200, body = TotpEnrolment), (status = 409, body = ErrorBody)))]
pub async fn enrol(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<TotpEnrolment>, ApiError> {
    Ok(Json(state.accounts.enrol_totp(&p).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    pub code: String,
}

#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten single-use codes, shown this once. Keep them somewhere safe.
    pub recovery_codes: Vec<String>,
}

/// Confirms enrolment with a first code; from then on sign-in needs a code.
#[utoipa::path(post, path = "/me/2fa/confirm", tag = "me", request_body = TotpCode,
    responses((status = 200, body = RecoveryCodes), (status = 422, body = ErrorBody)))]
pub async fn confirm(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<TotpCode>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    Ok(Json(RecoveryCodes { recovery_codes: state.accounts.confirm_totp(&p, &r.code).await? }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableTotp {
    pub password: String,
    /// A current code or a recovery code.
    pub code: String,
}

#[utoipa::path(post, path = "/me/2fa/disable", tag = "me", request_body = DisableTotp,
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn disable(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<DisableTotp>,
) -> Result<StatusCode, ApiError> {
    state.accounts.disable_totp(&p, &r.password, &r.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

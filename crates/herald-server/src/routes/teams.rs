//! Teams, members and invites.

use crate::auth::{Auth, client_of, session_cookies};
use crate::body::Body;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_accounts::{CreatedInvite, Invite, Member, Quotas, Team, authorize};
use herald_core::{Action, TeamRole};
use serde::Deserialize;
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// The teams the caller belongs to (an API key: its own team).
#[utoipa::path(get, path = "/teams", tag = "teams", responses((status = 200, body = Vec<Team>), (status = 401, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<Team>>, ApiError> {
    match (p.user_id, p.team) {
        (Some(user), _) => Ok(Json(state.accounts.teams_of(user).await?)),
        (None, Some((team, _))) => Ok(Json(vec![state.accounts.team(&p, team).await?])),
        (None, None) => Ok(Json(Vec::new())),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    pub name: String,
}

/// A new team, owned by the caller (users only).
#[utoipa::path(post, path = "/teams", tag = "teams", request_body = CreateTeam,
    responses((status = 201, body = Team), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<CreateTeam>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.accounts.create_team(&p, &r.name).await?)))
}

#[utoipa::path(get, path = "/teams/{team_id}", tag = "teams", params(("team_id" = Uuid, Path)),
    responses((status = 200, body = Team), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, Auth(p): Auth, Path(id): Path<Uuid>) -> Result<Json<Team>, ApiError> {
    Ok(Json(state.accounts.team(&p, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeam {
    pub name: Option<String>,
    /// Members must have two-factor on to act in this team.
    pub require_2fa: Option<bool>,
    /// The IANA timezone local schedule times are written in, e.g. `Europe/Berlin`.
    pub timezone: Option<String>,
    /// How late a delivery may still go out, e.g. `2h`; `none` publishes however late.
    pub late_limit: Option<String>,
}

/// Renames the team the caller acts in, or sets its 2FA rule (`manage_team`).
#[utoipa::path(patch, path = "/teams/{team_id}", tag = "teams", params(("team_id" = Uuid, Path)), request_body = UpdateTeam,
    responses((status = 200, body = Team), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<UpdateTeam>,
) -> Result<Json<Team>, ApiError> {
    Ok(Json(
        state
            .accounts
            .update_team(&p, id, r.name.as_deref(), r.require_2fa, r.timezone.as_deref(), r.late_limit.as_deref())
            .await?,
    ))
}

/// Sets a team's quotas; `null` is unlimited. Instance admins only.
#[utoipa::path(put, path = "/teams/{team_id}/quotas", tag = "teams", params(("team_id" = Uuid, Path)), request_body = Quotas,
    responses((status = 200, body = Quotas), (status = 404, body = ErrorBody)))]
pub async fn set_quotas(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(q): Body<Quotas>,
) -> Result<Json<Quotas>, ApiError> {
    Ok(Json(state.accounts.set_quotas(&p, id, &q).await?))
}

/// The members of the team the caller acts in.
#[utoipa::path(get, path = "/members", tag = "members", responses((status = 200, body = Vec<Member>)))]
pub async fn members(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<Member>>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    Ok(Json(state.accounts.members(team).await?))
}

#[utoipa::path(get, path = "/members/{user_id}", tag = "members", params(("user_id" = Uuid, Path)),
    responses((status = 200, body = Member), (status = 404, body = ErrorBody)))]
pub async fn member(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(user): Path<Uuid>,
) -> Result<Json<Member>, ApiError> {
    let (team, _) = authorize(&p, Action::Read)?;
    Ok(Json(state.accounts.member(team, user).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    #[schema(value_type = String, example = "editor")]
    pub role: TeamRole,
}

/// Changes a member's role (`manage_members`; to or from owner needs `manage_owners`).
#[utoipa::path(patch, path = "/members/{user_id}", tag = "members", params(("user_id" = Uuid, Path)), request_body = UpdateMember,
    responses((status = 200, body = Member), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_member(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(user): Path<Uuid>,
    Body(r): Body<UpdateMember>,
) -> Result<Json<Member>, ApiError> {
    Ok(Json(state.accounts.set_member_role(&p, user, r.role).await?))
}

/// Removes a member, or leaves the team when it is the caller.
#[utoipa::path(delete, path = "/members/{user_id}", tag = "members", params(("user_id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(user): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.accounts.remove_member(&p, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/invites", tag = "invites", responses((status = 200, body = Vec<Invite>), (status = 403, body = ErrorBody)))]
pub async fn invites(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<Invite>>, ApiError> {
    let (team, _) = authorize(&p, Action::ManageMembers)?;
    Ok(Json(state.accounts.invites(team).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvite {
    /// When set, only this address can accept.
    pub email: Option<String>,
    #[schema(value_type = String, example = "editor")]
    pub role: TeamRole,
    /// Lifetime in seconds (default 7 days, at most 30).
    pub expires_in_secs: Option<u64>,
}

/// A new invite link (`manage_members`). The token is shown once.
#[utoipa::path(post, path = "/invites", tag = "invites", request_body = CreateInvite,
    responses((status = 201, body = CreatedInvite), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_invite(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(r): Body<CreateInvite>,
) -> Result<(StatusCode, Json<CreatedInvite>), ApiError> {
    let ttl = r.expires_in_secs.map(Duration::from_secs);
    Ok((StatusCode::CREATED, Json(state.accounts.create_invite(&p, r.email.as_deref(), r.role, ttl).await?)))
}

#[utoipa::path(get, path = "/invites/{invite_id}", tag = "invites", params(("invite_id" = Uuid, Path)),
    responses((status = 200, body = Invite), (status = 404, body = ErrorBody)))]
pub async fn invite(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<Invite>, ApiError> {
    let (team, _) = authorize(&p, Action::ManageMembers)?;
    Ok(Json(state.accounts.invite(team, id).await?))
}

#[utoipa::path(delete, path = "/invites/{invite_id}", tag = "invites", params(("invite_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_invite(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.accounts.revoke_invite(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvite {
    pub token: String,
    /// For someone without an account: these three create it.
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub password: Option<String>,
}

/// Accepts an invite: signed in, the caller joins the team; otherwise `email`, `display_name`
/// and `password` create an account that joins it (and signs in).
#[utoipa::path(post, path = "/invites/accept", tag = "invites", request_body = AcceptInvite,
    responses((status = 200, body = Team), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn accept(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let auth = if parts.headers.contains_key(axum::http::header::COOKIE)
        || parts.headers.contains_key(axum::http::header::AUTHORIZATION)
    {
        Some(<Auth as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, &state).await?)
    } else {
        None
    };
    crate::auth::check_origin(&parts, &state)?;
    let client = client_of(&parts);
    let Body(r) = Body::<AcceptInvite>::from_request(Request::from_parts(parts, body), &state).await?;
    if let Some(Auth(p)) = auth {
        return Ok(Json(state.accounts.accept_invite_as(&p, &r.token).await?).into_response());
    }
    let (Some(email), Some(name), Some(password)) = (r.email, r.display_name, r.password) else {
        return Err(ApiError::new(
            herald_core::ErrorCode::Unauthorized,
            "sign in to accept, or send email, display_name and password to create an account",
        ));
    };
    let li = state.accounts.sign_up_with_invite(&r.token, &email, &name, &password, &client).await?;
    let team = li.session.team_id.unwrap_or_default();
    let cookies = session_cookies(&state, &li);
    let p = herald_accounts::Principal {
        user_id: Some(li.user.id),
        key_id: None,
        session_id: Some(li.session.id),
        label: li.user.email.clone(),
        is_admin: false,
        team: None,
        needs_2fa_enrolment: false,
        client,
    };
    Ok((cookies, Json(state.accounts.team(&p, team).await?)).into_response())
}

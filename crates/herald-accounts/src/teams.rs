//! Teams, members, invites and quotas. Every function takes the team it acts in from the caller's
//! [`Principal`], and every query filters on it: another team's id is simply not found.

use crate::audit::{self, Actor, Event};
use crate::crypto::{hash_token, new_token};
use crate::model::{CreatedInvite, Invite, Member, Principal, Quotas, Team};
use crate::service::{Accounts, after, check_name, conflict, invalid, normalize_email, not_found, store, store_err};
use herald_core::{Action, Error, ErrorCode, TeamRole};
use herald_store::{Ts, Tx, exec, on_read, on_tx};
use std::time::Duration;
use uuid::Uuid;

pub const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(7 * 86_400);
pub const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 86_400);

/// The quotas a team can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    Connections,
    Members,
    PostsPerMonth,
    AiCallsPerMonth,
    MediaBytes,
}

impl Quota {
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Connections => "connections",
            Quota::Members => "members",
            Quota::PostsPerMonth => "posts_per_month",
            Quota::AiCallsPerMonth => "ai_calls_per_month",
            Quota::MediaBytes => "media_bytes",
        }
    }

    pub fn parse(s: &str) -> Option<Quota> {
        [Quota::Connections, Quota::Members, Quota::PostsPerMonth, Quota::AiCallsPerMonth, Quota::MediaBytes]
            .into_iter()
            .find(|q| q.as_str() == s)
    }

    fn column(self) -> &'static str {
        match self {
            Quota::Connections => "quota_connections",
            Quota::Members => "quota_members",
            Quota::PostsPerMonth => "quota_posts_month",
            Quota::AiCallsPerMonth => "quota_ai_calls_month",
            Quota::MediaBytes => "quota_media_bytes",
        }
    }
}

pub fn quota_exceeded(q: Quota, limit: i64, used: i64, wanted: i64) -> Error {
    Error::new(
        ErrorCode::QuotaExceeded,
        format!(
            "the team's {} quota is {limit}; {used} used, {wanted} more asked. An instance admin can raise it",
            q.as_str()
        ),
    )
    .with_details(serde_json::json!({"quota": q.as_str(), "limit": limit, "used": used, "requested": wanted}))
}

#[derive(sqlx::FromRow)]
struct TeamRow {
    id: Uuid,
    name: String,
    require_2fa: bool,
    timezone: String,
    late_limit_secs: Option<i64>,
    quota_connections: Option<i64>,
    quota_members: Option<i64>,
    quota_posts_month: Option<i64>,
    quota_ai_calls_month: Option<i64>,
    quota_media_bytes: Option<i64>,
    created_at: Ts,
    role: String,
}

impl TeamRow {
    fn team(self) -> Team {
        Team {
            id: self.id,
            name: self.name,
            require_2fa: self.require_2fa,
            timezone: self.timezone,
            late_limit_secs: self.late_limit_secs,
            quotas: Quotas {
                connections: self.quota_connections,
                members: self.quota_members,
                posts_per_month: self.quota_posts_month,
                ai_calls_per_month: self.quota_ai_calls_month,
                media_bytes: self.quota_media_bytes,
            },
            created_at: self.created_at.0,
            role: TeamRole::parse(&self.role).unwrap_or(TeamRole::Viewer),
        }
    }
}

const TEAM_COLS: &str = "t.id, t.name, t.require_2fa, t.timezone, t.late_limit_secs, t.quota_connections, t.quota_members, t.quota_posts_month, \
                         t.quota_ai_calls_month, t.quota_media_bytes, t.created_at, m.role";

#[derive(sqlx::FromRow)]
struct InviteRow {
    id: Uuid,
    email: Option<String>,
    role: String,
    created_by: Option<Uuid>,
    created_at: Ts,
    expires_at: Ts,
    accepted_at: Option<Ts>,
    revoked_at: Option<Ts>,
}

impl InviteRow {
    fn invite(self) -> Invite {
        Invite {
            id: self.id,
            email: self.email,
            role: TeamRole::parse(&self.role).unwrap_or(TeamRole::Viewer),
            created_by: self.created_by,
            created_at: self.created_at.0,
            expires_at: self.expires_at.0,
            accepted_at: self.accepted_at.map(|t| t.0),
            revoked_at: self.revoked_at.map(|t| t.0),
        }
    }
}

const INVITE_COLS: &str = "id, email, role, created_by, created_at, expires_at, accepted_at, revoked_at";

/// The team the caller acts in, if its role allows `action`: the one permission check.
pub fn authorize(p: &Principal, action: Action) -> Result<(Uuid, TeamRole), Error> {
    let Some((team, role)) = p.team else {
        return Err(Error::new(
            ErrorCode::NotFound,
            "no team selected; create one (POST /api/v1/teams) or accept an invite",
        ));
    };
    if p.needs_2fa_enrolment {
        return Err(Error::new(
            ErrorCode::TwoFactorEnrollmentRequired,
            "this team requires two-factor authentication; enrol at POST /api/v1/me/2fa/enrol",
        ));
    }
    if !role.allows(action) {
        return Err(Error::new(
            ErrorCode::Forbidden,
            format!("the {role} role cannot {}", action.as_str().replace('_', " ")),
        )
        .with_details(serde_json::json!({"role": role, "needs": action.as_str()})));
    }
    Ok((team, role))
}

impl Accounts {
    pub(crate) async fn insert_team(&self, tx: &mut Tx, name: &str, owner: Uuid) -> Result<Uuid, Error> {
        let name = check_name("name", name)?;
        let id = Uuid::now_v7();
        let now = Ts::now();
        exec!(tx, "INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)", id, &name, now).map_err(store)?;
        exec!(
            tx,
            "INSERT INTO memberships (team_id, user_id, role, created_at) VALUES ($1, $2, 'owner', $3)",
            id,
            owner,
            now
        )
        .map_err(store)?;
        Ok(id)
    }

    /// Every team the user belongs to, with their role in each.
    pub async fn teams_of(&self, user: Uuid) -> Result<Vec<Team>, Error> {
        let sql = format!(
            "SELECT {TEAM_COLS} FROM teams t JOIN memberships m ON m.team_id = t.id WHERE m.user_id = $1 ORDER BY t.created_at"
        );
        let rows: Vec<TeamRow> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(user).fetch_all(c).await)
                .map_err(store)?;
        Ok(rows.into_iter().map(TeamRow::team).collect())
    }

    /// A team the caller can see: one they belong to, or the API key's own team.
    pub async fn team(&self, p: &Principal, team: Uuid) -> Result<Team, Error> {
        let row: Option<TeamRow> = match p.user_id {
            Some(user) => {
                let sql = format!(
                    "SELECT {TEAM_COLS} FROM teams t JOIN memberships m ON m.team_id = t.id WHERE t.id = $1 AND m.user_id = $2"
                );
                on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).bind(user).fetch_optional(c).await).map_err(store)?
            }
            None if p.team.map(|t| t.0) == Some(team) => {
                let role = p.team.map(|t| t.1.as_str()).unwrap_or("viewer");
                let sql = format!("SELECT {} FROM teams t WHERE t.id = $1", TEAM_COLS.replace("m.role", "$2 AS role"));
                on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).bind(role).fetch_optional(c).await).map_err(store)?
            }
            None => None,
        };
        row.map(TeamRow::team).ok_or_else(|| not_found("team"))
    }

    /// A new team with the caller as its owner.
    pub async fn create_team(&self, p: &Principal, name: &str) -> Result<Team, Error> {
        let user =
            p.user_id.ok_or_else(|| Error::new(ErrorCode::Forbidden, "API keys cannot create teams; sign in"))?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let id = self.insert_team(&mut tx, name, user).await?;
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(id), "team.created").target("team", id)).await?;
        tx.commit().await.map_err(store_err)?;
        self.team(p, id).await
    }

    /// Renames a team or sets its 2FA rule. Only the team the caller acts in.
    pub async fn update_team(
        &self,
        p: &Principal,
        team: Uuid,
        name: Option<&str>,
        require_2fa: Option<bool>,
        timezone: Option<&str>,
        late_limit: Option<&str>,
    ) -> Result<Team, Error> {
        self.team(p, team).await?;
        let (acting, _) = authorize(p, Action::ManageTeam)?;
        if acting != team {
            return Err(not_found("team"));
        }
        let name = name.map(|n| check_name("name", n)).transpose()?;
        let timezone = timezone
            .map(|z| herald_core::time::parse_timezone(z).map(|tz| tz.name().to_string()))
            .transpose()
            .map_err(|e| invalid("timezone", e))?;
        // "" or "none" publishes however late; a duration such as 2h is the limit.
        let late: Option<Option<i64>> = match late_limit.map(str::trim) {
            None => None,
            Some("" | "none") => Some(None),
            Some(d) => {
                Some(Some(herald_core::time::parse_duration(d).map_err(|e| invalid("late_limit", e))?.as_secs() as i64))
            }
        };
        let mut tx = self.db.begin().await.map_err(store_err)?;
        exec!(
            tx,
            "UPDATE teams SET name = COALESCE($2, name), require_2fa = COALESCE($3, require_2fa), \
             timezone = COALESCE($4, timezone), late_limit_secs = CASE WHEN $5 THEN $6 ELSE late_limit_secs END WHERE id = $1",
            team,
            &name,
            require_2fa,
            &timezone,
            late.is_some(),
            late.flatten()
        )
        .map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "team.updated")
                .target("team", team)
                .details(serde_json::json!({"name": name, "require_2fa": require_2fa, "timezone": timezone})),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        self.team(p, team).await
    }

    /// Sets a team's quotas (instance admins only; any team).
    pub async fn set_quotas(&self, p: &Principal, team: Uuid, quotas: &Quotas) -> Result<Quotas, Error> {
        if !p.is_admin {
            return Err(not_found("team"));
        }
        for (name, v) in [
            ("connections", quotas.connections),
            ("members", quotas.members),
            ("posts_per_month", quotas.posts_per_month),
            ("ai_calls_per_month", quotas.ai_calls_per_month),
            ("media_bytes", quotas.media_bytes),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(invalid(name, format!("{name} must be 0 or more, or null for unlimited")));
            }
        }
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let done = exec!(tx, "UPDATE teams SET quota_connections = $2, quota_members = $3, quota_posts_month = $4, quota_ai_calls_month = $5, \
             quota_media_bytes = $6 WHERE id = $1", team, quotas.connections, quotas.members, quotas.posts_per_month, quotas.ai_calls_per_month, quotas.media_bytes)
        .map_err(store)?;
        if done == 0 {
            return Err(not_found("team"));
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "team.quotas_changed")
                .target("team", team)
                .details(serde_json::to_value(quotas).unwrap_or_default()),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(quotas.clone())
    }

    /// Fails with `quota_exceeded` if a team that has `used` of `quota` cannot take `more`.
    /// Call it inside the transaction that adds the thing, so the check and the write commit together.
    pub async fn check_quota(&self, tx: &mut Tx, team: Uuid, quota: Quota, used: i64, more: i64) -> Result<(), Error> {
        let sql = format!("SELECT {} FROM teams WHERE id = $1", quota.column());
        let limit: Option<Option<i64>> =
            on_tx!(tx, c => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).bind(team).fetch_optional(&mut *c).await).map_err(store)?;
        match limit.flatten() {
            Some(limit) if used + more > limit => Err(quota_exceeded(quota, limit, used, more)),
            _ => Ok(()),
        }
    }

    /// Counts `n` uses of a monthly quota (posts, AI calls) in the caller's transaction, or fails
    /// with `quota_exceeded` and counts nothing.
    pub async fn consume_monthly(&self, tx: &mut Tx, team: Uuid, quota: Quota, n: i64) -> Result<i64, Error> {
        consume_monthly(tx, team, quota, n).await
    }

    pub async fn members(&self, team: Uuid) -> Result<Vec<Member>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            user_id: Uuid,
            email: String,
            display_name: String,
            role: String,
            created_at: Ts,
        }
        let rows: Vec<Row> = on_read!(self.db, c => sqlx::query_as(
            "SELECT m.user_id, u.email, u.display_name, m.role, m.created_at FROM memberships m \
             JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 ORDER BY m.created_at, m.user_id")
            .bind(team).fetch_all(c).await)
        .map_err(store)?;
        Ok(rows
            .into_iter()
            .map(|r| Member {
                user_id: r.user_id,
                email: r.email,
                display_name: r.display_name,
                role: TeamRole::parse(&r.role).unwrap_or(TeamRole::Viewer),
                joined_at: r.created_at.0,
            })
            .collect())
    }

    pub async fn member(&self, team: Uuid, user: Uuid) -> Result<Member, Error> {
        self.members(team).await?.into_iter().find(|m| m.user_id == user).ok_or_else(|| not_found("member"))
    }

    /// Changes a member's role. Granting or taking `owner` needs `manage_owners`, and the last
    /// owner keeps the role.
    pub async fn set_member_role(&self, p: &Principal, user: Uuid, role: TeamRole) -> Result<Member, Error> {
        let (team, _) = authorize(p, Action::ManageMembers)?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let current = member_role(&mut tx, team, user).await?.ok_or_else(|| not_found("member"))?;
        if (current == TeamRole::Owner || role == TeamRole::Owner) && current != role {
            authorize(p, Action::ManageOwners)?;
        }
        if current == TeamRole::Owner && role != TeamRole::Owner {
            ensure_another_owner(&mut tx, team).await?;
        }
        exec!(tx, "UPDATE memberships SET role = $3 WHERE team_id = $1 AND user_id = $2", team, user, role.as_str())
            .map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "member.role_changed")
                .target("user", user)
                .details(serde_json::json!({"from": current, "to": role})),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        self.member(team, user).await
    }

    /// Removes a member (or the caller leaves). Owners can be removed only by owners, and the last
    /// owner cannot leave. Their sessions stop acting in this team at once.
    pub async fn remove_member(&self, p: &Principal, user: Uuid) -> Result<(), Error> {
        let leaving = p.user_id == Some(user);
        let (team, _) = if leaving { authorize(p, Action::Read)? } else { authorize(p, Action::ManageMembers)? };
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let current = member_role(&mut tx, team, user).await?.ok_or_else(|| not_found("member"))?;
        if current == TeamRole::Owner {
            if !leaving {
                authorize(p, Action::ManageOwners)?;
            }
            ensure_another_owner(&mut tx, team).await?;
        }
        exec!(tx, "DELETE FROM memberships WHERE team_id = $1 AND user_id = $2", team, user).map_err(store)?;
        exec!(tx, "UPDATE sessions SET team_id = NULL WHERE team_id = $1 AND user_id = $2", team, user)
            .map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "member.removed")
                .target("user", user)
                .details(serde_json::json!({"role": current, "left": leaving})),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    pub async fn invites(&self, team: Uuid) -> Result<Vec<Invite>, Error> {
        let sql = format!("SELECT {INVITE_COLS} FROM invites WHERE team_id = $1 ORDER BY created_at DESC");
        let rows: Vec<InviteRow> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).fetch_all(c).await)
                .map_err(store)?;
        Ok(rows.into_iter().map(InviteRow::invite).collect())
    }

    pub async fn invite(&self, team: Uuid, id: Uuid) -> Result<Invite, Error> {
        let sql = format!("SELECT {INVITE_COLS} FROM invites WHERE team_id = $1 AND id = $2");
        let row: Option<InviteRow> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).bind(id).fetch_optional(c).await).map_err(store)?;
        row.map(InviteRow::invite).ok_or_else(|| not_found("invite"))
    }

    /// A new invite link for `role` (an owner invite needs `manage_owners`).
    pub async fn create_invite(
        &self,
        p: &Principal,
        email: Option<&str>,
        role: TeamRole,
        ttl: Option<Duration>,
    ) -> Result<CreatedInvite, Error> {
        let (team, _) = authorize(p, Action::ManageMembers)?;
        if role == TeamRole::Owner {
            authorize(p, Action::ManageOwners)?;
        }
        let email = email.map(normalize_email).transpose()?;
        let ttl = ttl.unwrap_or(DEFAULT_INVITE_TTL);
        if ttl.is_zero() || ttl > MAX_INVITE_TTL {
            return Err(invalid("expires_in_secs", "an invite lasts from 1 second to 30 days"));
        }
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let members = count_members(&mut tx, team).await?;
        self.check_quota(&mut tx, team, Quota::Members, members, 1).await?;
        let token = new_token("");
        let id = Uuid::now_v7();
        exec!(
            tx,
            "INSERT INTO invites (id, team_id, email, role, token_hash, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            id,
            team,
            &email,
            role.as_str(),
            hash_token(&token),
            p.user_id,
            Ts::now(),
            after(ttl)
        )
        .map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "invite.created")
                .target("invite", id)
                .details(serde_json::json!({"role": role, "email": email})),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        let invite = self.invite(team, id).await?;
        let url = self.config.public_url.as_ref().map(|_| self.link(&format!("/invite?token={token}")));
        Ok(CreatedInvite { token, url, invite })
    }

    pub async fn revoke_invite(&self, p: &Principal, id: Uuid) -> Result<(), Error> {
        let (team, _) = authorize(p, Action::ManageMembers)?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let done = exec!(tx, "UPDATE invites SET revoked_at = $3 WHERE team_id = $1 AND id = $2 AND revoked_at IS NULL AND accepted_at IS NULL", team, id, Ts::now())
        .map_err(store)?;
        if done == 0 {
            return Err(not_found("pending invite"));
        }
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(team), "invite.revoked").target("invite", id)).await?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    /// Joins the invite's team as `user`. The token is spent only if the join succeeds.
    pub async fn accept_invite(
        &self,
        tx: &mut Tx,
        token: &str,
        user: Uuid,
        email: &str,
        actor: &Actor,
    ) -> Result<Uuid, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            team_id: Uuid,
            email: Option<String>,
            role: String,
        }
        let now = Ts::now();
        let row: Option<Row> = on_tx!(tx, c => sqlx::query_as(
            "UPDATE invites SET accepted_at = $2, accepted_by = $3 \
             WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
             RETURNING id, team_id, email, role")
            .bind(hash_token(token)).bind(now).bind(user).fetch_optional(&mut *c).await)
        .map_err(store)?;
        let gone =
            || Error::new(ErrorCode::NotFound, "this invite is used, revoked, expired or unknown; ask for a new one");
        let row = row.ok_or_else(gone)?;
        if row.email.as_deref().is_some_and(|e| e != email) {
            return Err(gone());
        }
        if member_role(tx, row.team_id, user).await?.is_some() {
            return Err(conflict("you are already a member of this team"));
        }
        let members = count_members(tx, row.team_id).await?;
        self.check_quota(tx, row.team_id, Quota::Members, members, 1).await?;
        exec!(
            tx,
            "INSERT INTO memberships (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
            row.team_id,
            user,
            &row.role,
            now
        )
        .map_err(store)?;
        audit::record(
            tx,
            actor,
            Event::new(Some(row.team_id), "member.joined")
                .target("user", user)
                .details(serde_json::json!({"invite": row.id, "role": row.role})),
        )
        .await?;
        Ok(row.team_id)
    }

    /// Accepts an invite as the signed-in caller, and switches their session to that team.
    pub async fn accept_invite_as(&self, p: &Principal, token: &str) -> Result<Team, Error> {
        let user = p.user_id.ok_or_else(|| Error::new(ErrorCode::Forbidden, "sign in to accept an invite"))?;
        let email = self.user(user).await?.email;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let team = self.accept_invite(&mut tx, token, user, &email, &Actor::of(p)).await?;
        if let Some(session) = p.session_id {
            exec!(tx, "UPDATE sessions SET team_id = $2 WHERE id = $1", session, team).map_err(store)?;
        }
        tx.commit().await.map_err(store_err)?;
        let mut p = p.clone();
        p.team = None;
        self.team(&p, team).await
    }

    /// Signs up with an invite: a new user who joins the invite's team (and gets no team of
    /// their own).
    pub async fn sign_up_with_invite(
        &self,
        token: &str,
        email: &str,
        display_name: &str,
        password: &str,
        client: &crate::model::Client,
    ) -> Result<crate::model::LoggedIn, Error> {
        let new = crate::users::NewUser::prepare(email, display_name, password).await?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let user = crate::users::insert_user(
            &mut tx,
            &new,
            false,
            "a user with that email exists; sign in and accept the invite",
        )
        .await?;
        let actor = Actor { user: Some(user.id), label: user.email.clone(), ip: client.ip.clone(), ..Actor::default() };
        let team = self.accept_invite(&mut tx, token, user.id, &user.email, &actor).await?;
        let logged_in = self.start_session_in(&mut tx, user, Some(team), client).await?;
        tx.commit().await.map_err(store_err)?;
        Ok(logged_in)
    }
}

async fn member_role(tx: &mut Tx, team: Uuid, user: Uuid) -> Result<Option<TeamRole>, Error> {
    let role: Option<String> =
        on_tx!(tx, c => sqlx::query_scalar("SELECT role FROM memberships WHERE team_id = $1 AND user_id = $2")
        .bind(team).bind(user).fetch_optional(&mut *c).await)
        .map_err(store)?;
    Ok(role.and_then(|r| TeamRole::parse(&r)))
}

async fn count_members(tx: &mut Tx, team: Uuid) -> Result<i64, Error> {
    on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE team_id = $1").bind(team).fetch_one(&mut *c).await)
        .map_err(store)
}

async fn ensure_another_owner(tx: &mut Tx, team: Uuid) -> Result<(), Error> {
    let owners: i64 =
        on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE team_id = $1 AND role = 'owner'")
        .bind(team).fetch_one(&mut *c).await)
        .map_err(store)?;
    if owners <= 1 {
        return Err(conflict("a team always keeps at least one owner; make someone else owner first"));
    }
    Ok(())
}

/// [`consume_monthly`] for a transaction that fails as a whole when over the limit, without
/// reading the count. On PostgreSQL the count and its check are deferred as one statement
/// ([`Tx::defer_part`]), so they go with the transaction's other writes (a post's rows and jobs)
/// instead of a round trip of their own: over the limit that statement fails (SQLSTATE HQ001 from
/// `herald_within_quota`), at the transaction's next read or its commit, and [`quota_error`] tells
/// the error from others. On SQLite it is [`consume_monthly`] (there the first statement carries
/// the transaction's `BEGIN`, so it costs no trip of its own).
pub async fn consume_monthly_deferred(tx: &mut Tx, team: Uuid, quota: Quota, n: i64) -> Result<(), Error> {
    if tx.backend() == herald_store::Backend::Sqlite {
        return consume_monthly(tx, team, quota, n).await.map(drop);
    }
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let sql = format!(
        "INSERT INTO team_usage (team_id, metric, period, used) \
         VALUES ($1, $2, $3, herald_within_quota($4, $5, (SELECT {col} FROM teams WHERE id = $6), $7)) \
         ON CONFLICT (team_id, metric, period) DO UPDATE SET used = herald_within_quota(excluded.metric, \
           team_usage.used + excluded.used, (SELECT {col} FROM teams WHERE id = excluded.team_id), excluded.used)",
        col = quota.column()
    );
    tx.defer_part(&sql).bind(team).bind(quota.as_str()).bind(period).bind(quota.as_str()).bind(n).bind(team).bind(n);
    Ok(())
}

/// The quota error a statement of [`consume_monthly_deferred`] failed with, if that is what `e` is.
pub fn quota_error(e: &herald_store::StoreError) -> Option<Error> {
    let herald_store::StoreError::Sqlx(sqlx::Error::Database(db)) = e else { return None };
    if db.code().as_deref() != Some("HQ001") {
        return None;
    }
    let detail = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?.detail()?;
    let mut words = detail.split(' ');
    let quota = words.next().and_then(Quota::parse)?;
    let mut number = || words.next().and_then(|w| w.parse::<i64>().ok());
    let (limit, used, wanted) = (number()?, number()?, number()?);
    Some(quota_exceeded(quota, limit, used, wanted))
}

/// [`Accounts::consume_monthly`] for callers without an `Accounts` (a repeating post scheduling
/// its next occurrence inside the delivery worker's transaction).
pub async fn consume_monthly(tx: &mut Tx, team: Uuid, quota: Quota, n: i64) -> Result<i64, Error> {
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    // Count first and read the limit in the same statement (one round trip on the hot path of
    // every post); over the limit, the count is taken back.
    let sql = format!(
        "INSERT INTO team_usage (team_id, metric, period, used) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (team_id, metric, period) DO UPDATE SET used = team_usage.used + $4 \
         RETURNING used, (SELECT {} FROM teams WHERE id = $1)",
        quota.column()
    );
    let (used, limit): (i64, Option<i64>) = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(team).bind(quota.as_str()).bind(&period).bind(n).fetch_one(&mut *c).await)
    .map_err(store)?;
    match limit {
        Some(limit) if used > limit => {
            exec!(
                tx,
                "UPDATE team_usage SET used = used - $4 WHERE team_id = $1 AND metric = $2 AND period = $3",
                team,
                quota.as_str(),
                &period,
                n
            )
            .map_err(store)?;
            Err(quota_exceeded(quota, limit, used - n, n))
        }
        _ => Ok(used),
    }
}

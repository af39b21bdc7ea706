//! Users: first-run setup, sign-in with throttling and two-factor, sessions, passwords.

use crate::audit::{self, Actor, Event};
use crate::crypto::{self, hash_token, new_token};
use crate::model::{Client, LoggedIn, Principal, Session, TotpEnrolment, User};
use crate::service::{Accounts, after, check_name, conflict, invalid, normalize_email, not_found, store, store_err};
use crate::{throttle, totp};
use herald_core::{Error, ErrorCode, TeamRole};
use herald_store::{Ts, Tx, exec, on_read, on_tx};
use std::time::Duration;
use uuid::Uuid;

pub const SETUP_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
pub const RESET_TOKEN_TTL: Duration = Duration::from_secs(3600);
pub const RECOVERY_CODES: usize = 10;
/// Sessions are touched at most this often, so reads do not each cost a write.
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: Uuid,
    email: String,
    display_name: String,
    password_hash: String,
    is_admin: bool,
    disabled: bool,
    totp_secret: Option<String>,
    totp_enabled: bool,
    totp_last_step: i64,
    created_at: Ts,
}

impl UserRow {
    fn user(&self) -> User {
        User {
            id: self.id,
            email: self.email.clone(),
            display_name: self.display_name.clone(),
            is_admin: self.is_admin,
            disabled: self.disabled,
            totp_enabled: self.totp_enabled,
            created_at: self.created_at.0,
        }
    }
}

const USER_COLS: &str = "id, email, display_name, password_hash, is_admin, disabled, totp_secret, totp_enabled, \
                         totp_last_step, created_at";

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    team_id: Option<Uuid>,
    created_at: Ts,
    last_seen_at: Ts,
    expires_at: Ts,
    ip: Option<String>,
    user_agent: Option<String>,
}

impl SessionRow {
    fn session(self) -> Session {
        Session {
            id: self.id,
            team_id: self.team_id,
            created_at: self.created_at.0,
            last_seen_at: self.last_seen_at.0,
            expires_at: self.expires_at.0,
            ip: self.ip,
            user_agent: self.user_agent,
        }
    }
}

/// How the second factor was given at sign-in.
#[derive(Debug, Clone, Default)]
pub struct SecondFactor {
    pub totp_code: Option<String>,
    pub recovery_code: Option<String>,
}

fn totp_binding(user: Uuid) -> String {
    herald_vault::binding("users", "totp_secret", None, &user)
}

impl Accounts {
    pub async fn user_count(&self) -> Result<i64, Error> {
        on_read!(self.db, c => sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(c).await).map_err(store)
    }

    pub(crate) async fn user_row(&self, id: Uuid) -> Result<Option<UserRow>, Error> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await)
            .map_err(store)
    }

    pub async fn user(&self, id: Uuid) -> Result<User, Error> {
        self.user_row(id).await?.map(|r| r.user()).ok_or_else(|| not_found("user"))
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, Error> {
        let email = normalize_email(email)?;
        let sql = format!("SELECT {USER_COLS} FROM users WHERE email = $1");
        let row: Option<UserRow> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(&email).fetch_optional(c).await).map_err(store)?;
        Ok(row.map(|r| r.user()))
    }

    /// A fresh first-run setup token (24 h, single use), or `None` once any user exists.
    pub async fn issue_setup_token(&self) -> Result<Option<String>, Error> {
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let users: i64 = on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *c).await)
            .map_err(store)?;
        if users > 0 {
            return Ok(None);
        }
        let token = new_token("");
        insert_auth_token(&mut tx, &token, "setup", None, SETUP_TOKEN_TTL).await?;
        tx.commit().await.map_err(store_err)?;
        Ok(Some(token))
    }

    /// Creates a user with their own team, where they are the owner (`herald user create`).
    pub async fn create_user(
        &self,
        tx: &mut Tx,
        email: &str,
        display_name: &str,
        password: &str,
        is_admin: bool,
    ) -> Result<(User, Uuid), Error> {
        let new = NewUser::prepare(email, display_name, password).await?;
        self.create_owner(tx, &new, is_admin).await
    }

    async fn create_owner(&self, tx: &mut Tx, new: &NewUser, is_admin: bool) -> Result<(User, Uuid), Error> {
        let user = insert_user(tx, new, is_admin, "a user with that email already exists").await?;
        let team = self.insert_team(tx, &format!("{}'s team", user.display_name), user.id).await?;
        Ok((user, team))
    }

    /// First-run setup: spends the setup token and creates the first owner, an instance admin.
    pub async fn setup(
        &self,
        token: &str,
        email: &str,
        display_name: &str,
        password: &str,
        client: &Client,
    ) -> Result<LoggedIn, Error> {
        let new = NewUser::prepare(email, display_name, password).await?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let users: i64 = on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *c).await)
            .map_err(store)?;
        if users > 0 || !spend_auth_token(&mut tx, token, "setup").await?.0 {
            return Err(Error::new(
                ErrorCode::NotFound,
                "this setup link is used, expired or unknown; create users with `herald user create`",
            ));
        }
        let (user, team) = self.create_owner(&mut tx, &new, true).await?;
        let actor = Actor { user: Some(user.id), label: user.email.clone(), ip: client.ip.clone(), ..Actor::default() };
        audit::record(&mut tx, &actor, Event::new(Some(team), "user.created").target("user", user.id)).await?;
        let logged_in = self.start_session_in(&mut tx, user, Some(team), client).await?;
        tx.commit().await.map_err(store_err)?;
        Ok(logged_in)
    }

    /// Signs in with email and password, plus a TOTP or recovery code when the user has 2FA.
    /// An unknown email and a wrong password get the same error after the same Argon2 work.
    /// `replaces` is the session the browser held before, which ends (rotation at sign-in).
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        second: &SecondFactor,
        client: &Client,
        replaces: Option<&str>,
    ) -> Result<LoggedIn, Error> {
        let account = throttle::account_key(email);
        let mut keys = vec![account.clone()];
        keys.extend(client.ip.as_deref().map(throttle::ip_key));
        throttle::check(&self.db, &keys).await?;

        let row = match normalize_email(email) {
            Ok(email) => {
                let sql = format!("SELECT {USER_COLS} FROM users WHERE email = $1");
                on_read!(self.db, c => sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(&email).fetch_optional(c).await)
                    .map_err(store)?
            }
            Err(_) => None,
        };
        let hash = row.as_ref().filter(|r| !r.disabled).map(|r| r.password_hash.clone());
        let ok = crypto::verify_password(password.to_string(), hash).await;
        let actor = Actor {
            user: row.as_ref().map(|r| r.id),
            label: email.trim().to_lowercase().chars().take(254).collect(),
            ip: client.ip.clone(),
            ..Actor::default()
        };
        let default_team = match &row {
            Some(r) => self.default_team(r.id).await?,
            None => None,
        };
        let wrong = || Error::new(ErrorCode::InvalidCredentials, "the email or password is wrong");
        let (true, Some(row)) = (ok, row) else {
            let mut tx = self.db.begin().await.map_err(store_err)?;
            throttle::fail(&mut tx, &keys).await?;
            audit::record(&mut tx, &actor, Event::new(default_team, "login.failed")).await?;
            tx.commit().await.map_err(store_err)?;
            return Err(wrong());
        };

        let mut tx = self.db.begin().await.map_err(store_err)?;
        if row.totp_enabled {
            let how = match (&second.totp_code, &second.recovery_code) {
                (Some(code), _) => self.spend_totp(&mut tx, &row, code).await?.then_some("totp"),
                (None, Some(code)) => spend_recovery_code(&mut tx, row.id, code).await?.then_some("recovery_code"),
                (None, None) => {
                    return Err(Error::new(
                        ErrorCode::TwoFactorRequired,
                        "enter the code from your authenticator app (totp_code) or a recovery code",
                    ));
                }
            };
            let Some(how) = how else {
                throttle::fail(&mut tx, &keys).await?;
                audit::record(&mut tx, &actor, Event::new(default_team, "login.2fa_failed")).await?;
                tx.commit().await.map_err(store_err)?;
                return Err(Error::new(ErrorCode::InvalidCredentials, "the two-factor code is wrong or already used"));
            };
            audit::record(
                &mut tx,
                &actor,
                Event::new(default_team, "login.2fa_succeeded").details(serde_json::json!({"method": how})),
            )
            .await?;
        }
        throttle::clear(&mut tx, &account).await?;
        if let Some(old) = replaces {
            exec!(tx, "DELETE FROM sessions WHERE token_hash = $1", hash_token(old)).map_err(store)?;
        }
        audit::record(&mut tx, &actor, Event::new(default_team, "login.succeeded")).await?;
        let logged_in = self.start_session_in(&mut tx, row.user(), default_team, client).await?;
        tx.commit().await.map_err(store_err)?;
        Ok(logged_in)
    }

    pub(crate) async fn start_session_in(
        &self,
        tx: &mut Tx,
        user: User,
        team: Option<Uuid>,
        client: &Client,
    ) -> Result<LoggedIn, Error> {
        let token = new_token("");
        let csrf = new_token("");
        let now = Ts::now();
        let expires = after(self.config.session_max);
        let id = Uuid::now_v7();
        let ua: Option<String> = client.user_agent.as_ref().map(|u| u.chars().take(300).collect());
        exec!(tx, "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, team_id, created_at, last_seen_at, expires_at, ip, user_agent) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9)", id, hash_token(&token), hash_token(&csrf), user.id, team, now, expires, &client.ip, &ua)
        .map_err(store)?;
        let session = Session {
            id,
            team_id: team,
            created_at: now.0,
            last_seen_at: now.0,
            expires_at: expires.0,
            ip: client.ip.clone(),
            user_agent: ua,
        };
        Ok(LoggedIn { user, session, session_token: token, csrf_token: csrf })
    }

    /// The team a fresh session acts in: the user's oldest membership.
    async fn default_team(&self, user: Uuid) -> Result<Option<Uuid>, Error> {
        on_read!(self.db, c => sqlx::query_scalar(
            "SELECT team_id FROM memberships WHERE user_id = $1 ORDER BY created_at, team_id LIMIT 1")
            .bind(user).fetch_optional(c).await)
        .map_err(store)
    }

    /// The caller behind a session cookie, if the session is live. `csrf` is checked when given.
    pub async fn authenticate_session(
        &self,
        token: &str,
        client: &Client,
    ) -> Result<Option<(Principal, Vec<u8>)>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            csrf_hash: Vec<u8>,
            user_id: Uuid,
            team_id: Option<Uuid>,
            last_seen_at: Ts,
            expires_at: Ts,
            email: String,
            is_admin: bool,
            disabled: bool,
            totp_enabled: bool,
            role: Option<String>,
            require_2fa: Option<bool>,
        }
        // One read per request: the session, its user, and the role in the team it acts in.
        let row: Option<Row> = on_read!(self.db, c => sqlx::query_as(
            "SELECT s.id, s.csrf_hash, s.user_id, s.team_id, s.last_seen_at, s.expires_at, u.email, u.is_admin, \
             u.disabled, u.totp_enabled, m.role, t.require_2fa FROM sessions s JOIN users u ON u.id = s.user_id \
             LEFT JOIN memberships m ON m.team_id = s.team_id AND m.user_id = s.user_id \
             LEFT JOIN teams t ON t.id = m.team_id WHERE s.token_hash = $1")
            .bind(hash_token(token)).fetch_optional(c).await)
        .map_err(store)?;
        let Some(row) = row else { return Ok(None) };
        let now = Ts::now();
        let idle = chrono::Duration::from_std(self.config.session_idle).unwrap_or(chrono::Duration::MAX);
        if row.disabled || now >= row.expires_at || now.0 - row.last_seen_at.0 >= idle {
            let mut tx = self.db.begin().await.map_err(store_err)?;
            exec!(tx, "DELETE FROM sessions WHERE id = $1", row.id).map_err(store)?;
            tx.commit().await.map_err(store_err)?;
            return Ok(None);
        }
        if now.0 - row.last_seen_at.0 >= TOUCH_EVERY {
            let mut tx = self.db.begin().await.map_err(store_err)?;
            exec!(tx, "UPDATE sessions SET last_seen_at = $2 WHERE id = $1", row.id, now).map_err(store)?;
            tx.commit().await.map_err(store_err)?;
        }
        let team = match (row.team_id, row.role.as_deref().and_then(TeamRole::parse)) {
            (Some(t), Some(role)) => Some((t, role, row.require_2fa.unwrap_or(false))),
            _ => None,
        };
        let principal = Principal {
            user_id: Some(row.user_id),
            key_id: None,
            session_id: Some(row.id),
            label: row.email,
            is_admin: row.is_admin,
            team: team.map(|(t, role, _)| (t, role)),
            needs_2fa_enrolment: team.is_some_and(|(_, _, req)| req) && !row.totp_enabled,
            client: client.clone(),
        };
        Ok(Some((principal, row.csrf_hash)))
    }

    async fn is_member(&self, team: Uuid, user: Uuid) -> Result<bool, Error> {
        let n: i64 = on_read!(self.db, c => sqlx::query_scalar(
            "SELECT COUNT(*) FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team).bind(user).fetch_one(c).await)
        .map_err(store)?;
        Ok(n > 0)
    }

    pub async fn logout(&self, p: &Principal) -> Result<(), Error> {
        let Some(session) = p.session_id else { return Ok(()) };
        let mut tx = self.db.begin().await.map_err(store_err)?;
        exec!(tx, "DELETE FROM sessions WHERE id = $1", session).map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(p.team.map(|t| t.0), "session.ended").target("session", session),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    /// Switches the team a session acts in; 404 unless the user is a member.
    pub async fn select_team(&self, p: &Principal, team: Uuid) -> Result<(), Error> {
        let (Some(user), Some(session)) = (p.user_id, p.session_id) else {
            return Err(Error::new(ErrorCode::BadRequest, "API keys act in their own team and cannot switch"));
        };
        if !self.is_member(team, user).await? {
            return Err(not_found("team"));
        }
        let mut tx = self.db.begin().await.map_err(store_err)?;
        exec!(tx, "UPDATE sessions SET team_id = $2 WHERE id = $1", session, team).map_err(store)?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    pub async fn sessions(&self, user: Uuid) -> Result<Vec<Session>, Error> {
        let rows: Vec<SessionRow> = on_read!(self.db, c => sqlx::query_as(
            "SELECT id, team_id, created_at, last_seen_at, expires_at, ip, user_agent FROM sessions \
             WHERE user_id = $1 ORDER BY created_at DESC")
            .bind(user).fetch_all(c).await)
        .map_err(store)?;
        Ok(rows.into_iter().map(SessionRow::session).collect())
    }

    /// Ends one of the caller's own sessions; another user's session id is 404.
    pub async fn end_session(&self, p: &Principal, session: Uuid) -> Result<(), Error> {
        let user = p.user_id.ok_or_else(|| not_found("session"))?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let done = exec!(tx, "DELETE FROM sessions WHERE id = $1 AND user_id = $2", session, user).map_err(store)?;
        if done == 0 {
            return Err(not_found("session"));
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(p.team.map(|t| t.0), "session.ended").target("session", session),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    pub async fn update_profile(&self, p: &Principal, display_name: &str) -> Result<User, Error> {
        let user = p.user_id.ok_or_else(|| not_found("user"))?;
        let name = check_name("display_name", display_name)?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        exec!(tx, "UPDATE users SET display_name = $2 WHERE id = $1", user, &name).map_err(store)?;
        tx.commit().await.map_err(store_err)?;
        self.user(user).await
    }

    /// Changes the caller's password after checking the current one; ends the other sessions when
    /// asked (the current one always survives, with a new token, since the old may have leaked).
    pub async fn change_password(
        &self,
        p: &Principal,
        current: &str,
        new: &str,
        end_other_sessions: bool,
    ) -> Result<(), Error> {
        let user = p.user_id.ok_or_else(|| not_found("user"))?;
        let row = self.user_row(user).await?.ok_or_else(|| not_found("user"))?;
        if !crypto::verify_password(current.to_string(), Some(row.password_hash)).await {
            return Err(Error::new(ErrorCode::InvalidCredentials, "the current password is wrong"));
        }
        crypto::check_password_rules(new)?;
        let hash = crypto::hash_password(new.to_string()).await?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        set_password(&mut tx, user, &hash).await?;
        if end_other_sessions {
            exec!(tx, "DELETE FROM sessions WHERE user_id = $1 AND id <> $2", user, p.session_id.unwrap_or_default())
                .map_err(store)?;
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(p.team.map(|t| t.0), "user.password_changed")
                .target("user", user)
                .details(serde_json::json!({"ended_other_sessions": end_other_sessions})),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    /// A password-reset token for `email` (1 h, single use), or `None` for an unknown email.
    /// The caller mails the link, or an admin hands it over (`herald user reset-link`).
    pub async fn issue_reset_token(&self, email: &str) -> Result<Option<(User, String)>, Error> {
        let Some(user) = self.user_by_email(email).await? else { return Ok(None) };
        if user.disabled {
            return Ok(None);
        }
        let token = new_token("");
        let mut tx = self.db.begin().await.map_err(store_err)?;
        insert_auth_token(&mut tx, &token, "password_reset", Some(user.id), RESET_TOKEN_TTL).await?;
        let team = self.default_team(user.id).await?;
        audit::record(
            &mut tx,
            &Actor::system(),
            Event::new(team, "user.password_reset_requested").target("user", user.id),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(Some((user, token)))
    }

    /// Sets a new password with a reset token, and ends every session of that user.
    pub async fn reset_password(&self, token: &str, new: &str, client: &Client) -> Result<(), Error> {
        crypto::check_password_rules(new)?;
        let hash = crypto::hash_password(new.to_string()).await?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let (ok, user) = spend_auth_token(&mut tx, token, "password_reset").await?;
        let (true, Some(user)) = (ok, user) else {
            return Err(Error::new(
                ErrorCode::NotFound,
                "this reset link is used, expired or unknown; ask for a new one",
            ));
        };
        set_password(&mut tx, user, &hash).await?;
        exec!(tx, "DELETE FROM sessions WHERE user_id = $1", user).map_err(store)?;
        let team = self.default_team(user).await?;
        let actor =
            Actor { user: Some(user), label: "password reset".into(), ip: client.ip.clone(), ..Actor::default() };
        audit::record(&mut tx, &actor, Event::new(team, "user.password_reset").target("user", user)).await?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    /// Disables or re-enables a user (instance admin, CLI). Disabling ends every session.
    pub async fn set_disabled(&self, user: Uuid, disabled: bool) -> Result<(), Error> {
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let done = exec!(tx, "UPDATE users SET disabled = $2 WHERE id = $1", user, disabled).map_err(store)?;
        if done == 0 {
            return Err(not_found("user"));
        }
        if disabled {
            exec!(tx, "DELETE FROM sessions WHERE user_id = $1", user).map_err(store)?;
        }
        let team = self.default_team(user).await?;
        let action = if disabled { "user.disabled" } else { "user.enabled" };
        audit::record(&mut tx, &Actor::system(), Event::new(team, action).target("user", user)).await?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    /// Starts 2FA enrolment: a new secret, sealed in the user's row, not yet enforced.
    pub async fn enrol_totp(&self, p: &Principal) -> Result<TotpEnrolment, Error> {
        let user = self.user(p.user_id.ok_or_else(|| not_found("user"))?).await?;
        if user.totp_enabled {
            return Err(conflict("two-factor authentication is already on; disable it first to enrol a new device"));
        }
        let secret = totp::new_secret();
        let sealed = self.vault.seal(&secret, &totp_binding(user.id));
        let mut tx = self.db.begin().await.map_err(store_err)?;
        exec!(tx, "UPDATE users SET totp_secret = $2, totp_last_step = 0 WHERE id = $1", user.id, &sealed)
            .map_err(store)?;
        tx.commit().await.map_err(store_err)?;
        let uri = totp::otpauth_uri(&secret, &user.email);
        Ok(TotpEnrolment { qr_svg: totp::qr_svg(&uri), otpauth_uri: uri, secret })
    }

    /// Confirms enrolment with a first code; returns the ten recovery codes, shown once.
    pub async fn confirm_totp(&self, p: &Principal, code: &str) -> Result<Vec<String>, Error> {
        let user = p.user_id.ok_or_else(|| not_found("user"))?;
        let row = self.user_row(user).await?.ok_or_else(|| not_found("user"))?;
        if row.totp_enabled {
            return Err(conflict("two-factor authentication is already on"));
        }
        if row.totp_secret.is_none() {
            return Err(conflict("start enrolment first (POST /api/v1/me/2fa/enrol)"));
        }
        let mut tx = self.db.begin().await.map_err(store_err)?;
        if !self.spend_totp(&mut tx, &row, code).await? {
            return Err(invalid("code", "that code is wrong; check the device's clock and try the next code"));
        }
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        exec!(tx, "DELETE FROM recovery_codes WHERE user_id = $1", user).map_err(store)?;
        for code in &codes {
            exec!(
                tx,
                "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)",
                user,
                hash_token(&normalize_recovery(code))
            )
            .map_err(store)?;
        }
        exec!(tx, "UPDATE users SET totp_enabled = TRUE WHERE id = $1", user).map_err(store)?;
        audit::record(&mut tx, &Actor::of(p), Event::new(p.team.map(|t| t.0), "user.2fa_enabled").target("user", user))
            .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(codes)
    }

    /// Turns 2FA off; needs the password and a current code (or a recovery code).
    pub async fn disable_totp(&self, p: &Principal, password: &str, code: &str) -> Result<(), Error> {
        let user = p.user_id.ok_or_else(|| not_found("user"))?;
        let row = self.user_row(user).await?.ok_or_else(|| not_found("user"))?;
        if !row.totp_enabled {
            return Err(conflict("two-factor authentication is not on"));
        }
        if !crypto::verify_password(password.to_string(), Some(row.password_hash.clone())).await {
            return Err(Error::new(ErrorCode::InvalidCredentials, "the password is wrong"));
        }
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let ok = self.spend_totp(&mut tx, &row, code).await? || spend_recovery_code(&mut tx, user, code).await?;
        if !ok {
            return Err(Error::new(ErrorCode::InvalidCredentials, "the two-factor code is wrong or already used"));
        }
        exec!(tx, "UPDATE users SET totp_enabled = FALSE, totp_secret = NULL WHERE id = $1", user).map_err(store)?;
        exec!(tx, "DELETE FROM recovery_codes WHERE user_id = $1", user).map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(p.team.map(|t| t.0), "user.2fa_disabled").target("user", user),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(())
    }

    /// Checks a TOTP code and records its step, so it cannot be used again. The step is claimed
    /// with a compare-and-set, so two requests racing with one code cannot both win.
    async fn spend_totp(&self, tx: &mut Tx, row: &UserRow, code: &str) -> Result<bool, Error> {
        let Some(sealed) = &row.totp_secret else { return Ok(false) };
        let secret = self.vault.open(sealed, &totp_binding(row.id)).map_err(|e| {
            tracing::error!(user = %row.id, error = %e, "cannot open a TOTP secret");
            Error::internal("the two-factor secret cannot be read; the server log has the cause")
        })?;
        let now = chrono::Utc::now().timestamp();
        let Some(step) = totp::verify(secret.expose(), code, now, row.totp_last_step) else { return Ok(false) };
        let claimed =
            exec!(tx, "UPDATE users SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2", row.id, step)
                .map_err(store)?;
        Ok(claimed == 1)
    }
}

/// A checked sign-up with its password already hashed. Hash before opening a transaction: on
/// SQLite a transaction holds the only writer, and Argon2 takes tens of milliseconds.
pub(crate) struct NewUser {
    email: String,
    display_name: String,
    password_hash: String,
}

impl NewUser {
    pub(crate) async fn prepare(email: &str, display_name: &str, password: &str) -> Result<NewUser, Error> {
        let email = normalize_email(email)?;
        let display_name = check_name("display_name", display_name)?;
        crypto::check_password_rules(password)?;
        let password_hash = crypto::hash_password(password.to_string()).await?;
        Ok(NewUser { email, display_name, password_hash })
    }
}

/// Inserts the user, or fails with `conflict` (and `taken` as its message) when the email is in use.
pub(crate) async fn insert_user(tx: &mut Tx, new: &NewUser, is_admin: bool, taken: &str) -> Result<User, Error> {
    let id = Uuid::now_v7();
    let now = Ts::now();
    let inserted = exec!(
        tx,
        "INSERT INTO users (id, email, display_name, password_hash, is_admin, created_at, password_changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (email) DO NOTHING",
        id,
        &new.email,
        &new.display_name,
        &new.password_hash,
        is_admin,
        now
    )
    .map_err(store)?;
    if inserted == 0 {
        return Err(conflict(taken));
    }
    Ok(User {
        id,
        email: new.email.clone(),
        display_name: new.display_name.clone(),
        is_admin,
        disabled: false,
        totp_enabled: false,
        created_at: now.0,
    })
}

async fn set_password(tx: &mut Tx, user: Uuid, hash: &str) -> Result<(), Error> {
    exec!(tx, "UPDATE users SET password_hash = $2, password_changed_at = $3 WHERE id = $1", user, hash, Ts::now())
        .map_err(store)?;
    Ok(())
}

async fn insert_auth_token(
    tx: &mut Tx,
    token: &str,
    purpose: &str,
    user: Option<Uuid>,
    ttl: Duration,
) -> Result<(), Error> {
    exec!(
        tx,
        "INSERT INTO auth_tokens (token_hash, purpose, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        hash_token(token),
        purpose,
        user,
        Ts::now(),
        after(ttl)
    )
    .map_err(store)?;
    Ok(())
}

/// Marks a live token of `purpose` used; true (and its user) when it was live.
async fn spend_auth_token(tx: &mut Tx, token: &str, purpose: &str) -> Result<(bool, Option<Uuid>), Error> {
    let now = Ts::now();
    let user: Option<Option<Uuid>> = on_tx!(tx, c => sqlx::query_scalar(
        "UPDATE auth_tokens SET used_at = $3 WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
         RETURNING user_id")
        .bind(hash_token(token)).bind(purpose).bind(now).fetch_optional(&mut *c).await)
    .map_err(store)?;
    Ok((user.is_some(), user.flatten()))
}

fn recovery_code() -> String {
    let raw = totp::new_secret();
    format!("{}-{}-{}", &raw[0..4], &raw[4..8], &raw[8..12]).to_lowercase()
}

fn normalize_recovery(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase()
}

async fn spend_recovery_code(tx: &mut Tx, user: Uuid, code: &str) -> Result<bool, Error> {
    let done = exec!(
        tx,
        "UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        user,
        hash_token(&normalize_recovery(code)),
        Ts::now()
    )
    .map_err(store)?;
    Ok(done == 1)
}

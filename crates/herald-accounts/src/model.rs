//! What the accounts API returns. None of these types holds a secret: tokens and keys appear only
//! in the one-time results (`Created*`, `LoggedIn`) that hand them over.

use chrono::{DateTime, Utc};
use herald_core::TeamRole;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    /// Instance admin: may set team quotas. Grants nothing inside a team.
    pub is_admin: bool,
    pub disabled: bool,
    pub totp_enabled: bool,
    pub created_at: DateTime<Utc>,
}

/// A team quota; `null` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    pub connections: Option<i64>,
    pub members: Option<i64>,
    pub posts_per_month: Option<i64>,
    pub ai_calls_per_month: Option<i64>,
    pub media_bytes: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    /// Members must enrol in two-factor authentication to act in this team.
    pub require_2fa: bool,
    /// How the team writes local times (IANA name); schedules without an offset are in it.
    pub timezone: String,
    /// Seconds past its time after which a delivery is marked failed instead of sent; `None`
    /// publishes however late.
    pub late_limit_secs: Option<i64>,
    pub quotas: Quotas,
    pub created_at: DateTime<Utc>,
    /// The caller's role here.
    #[schema(value_type = String, example = "owner")]
    pub role: TeamRole,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Member {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    #[schema(value_type = String, example = "editor")]
    pub role: TeamRole,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = String, example = "editor")]
    pub role: TeamRole,
    /// The key's first characters, to tell keys apart; not enough to use it.
    pub prefix: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new API key: `key` is shown here once and never again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub key: String,
    #[serde(flatten)]
    pub api_key: ApiKey,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invite {
    pub id: Uuid,
    pub email: Option<String>,
    #[schema(value_type = String, example = "editor")]
    pub role: TeamRole,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new invite: `token` (and `url`, when HERALD_PUBLIC_URL is set) are shown once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedInvite {
    pub token: String,
    pub url: Option<String>,
    #[serde(flatten)]
    pub invite: Invite,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: Uuid,
    pub team_id: Option<Uuid>,
    pub actor_user_id: Option<Uuid>,
    pub actor_key_id: Option<Uuid>,
    /// An email, an API key's name, or `system`.
    pub actor: String,
    /// e.g. `login.succeeded`, `api_key.revoked`, `member.role_changed`.
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub ip: Option<String>,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub team_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What a sign-in hands over. The session token travels only in the cookie; the CSRF token goes
/// back in the `X-CSRF-Token` header of every state-changing request.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub user: User,
    pub session: Session,
    pub session_token: String,
    pub csrf_token: String,
}

/// Two-factor enrolment: show `otpauth_uri` (or `qr_svg`) to an authenticator app, then confirm
/// with a first code.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TotpEnrolment {
    pub secret: String,
    pub otpauth_uri: String,
    pub qr_svg: String,
}

/// Who is calling, and where from.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// An authenticated caller: a dashboard session or an API key, acting in one team.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: Option<Uuid>,
    pub key_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    /// An email or a key's name, for the audit log.
    pub label: String,
    pub is_admin: bool,
    /// The team it acts in and its role there; `None` for a user in no team yet.
    pub team: Option<(Uuid, TeamRole)>,
    /// The team requires 2FA and this user has not enrolled: only `/me` routes work.
    pub needs_2fa_enrolment: bool,
    pub client: Client,
}

impl Principal {
    /// A caller acting as `user` with `role` in `team`, without a session or key: for the CLI,
    /// benchmarks and tests that call the services directly.
    pub fn acting(user: Option<Uuid>, team: Uuid, role: TeamRole, label: &str) -> Principal {
        Principal {
            user_id: user,
            key_id: None,
            session_id: None,
            label: label.to_string(),
            is_admin: false,
            team: Some((team, role)),
            needs_2fa_enrolment: false,
            client: Client::default(),
        }
    }
}

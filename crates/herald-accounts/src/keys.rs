//! API keys: per team, with a role, shown once and stored as a SHA-256 hash. A revoked or expired
//! key fails on the very next request, since every request looks the key up.

use crate::audit::{self, Actor, Event};
use crate::crypto::{hash_token, new_token};
use crate::model::{ApiKey, Client, CreatedApiKey, Principal};
use crate::service::{Accounts, check_name, invalid, not_found, store, store_err};
use crate::teams::authorize;
use chrono::{DateTime, Utc};
use herald_core::{Action, Error, ErrorCode, TeamRole};
use herald_store::{Ts, exec, on_read};
use uuid::Uuid;

pub const KEY_PREFIX: &str = "hk_";
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    role: String,
    prefix: String,
    created_by: Option<Uuid>,
    created_at: Ts,
    last_used_at: Option<Ts>,
    expires_at: Option<Ts>,
    revoked_at: Option<Ts>,
}

impl Row {
    fn key(self) -> ApiKey {
        ApiKey {
            id: self.id,
            name: self.name,
            role: TeamRole::parse(&self.role).unwrap_or(TeamRole::Viewer),
            prefix: self.prefix,
            created_by: self.created_by,
            created_at: self.created_at.0,
            last_used_at: self.last_used_at.map(|t| t.0),
            expires_at: self.expires_at.map(|t| t.0),
            revoked_at: self.revoked_at.map(|t| t.0),
        }
    }
}

const COLS: &str = "id, name, role, prefix, created_by, created_at, last_used_at, expires_at, revoked_at";

impl Accounts {
    pub async fn api_keys(&self, team: Uuid) -> Result<Vec<ApiKey>, Error> {
        let sql = format!("SELECT {COLS} FROM api_keys WHERE team_id = $1 ORDER BY created_at DESC");
        let rows: Vec<Row> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).fetch_all(c).await)
                .map_err(store)?;
        Ok(rows.into_iter().map(Row::key).collect())
    }

    pub async fn api_key(&self, team: Uuid, id: Uuid) -> Result<ApiKey, Error> {
        let sql = format!("SELECT {COLS} FROM api_keys WHERE team_id = $1 AND id = $2");
        let row: Option<Row> = on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).bind(id).fetch_optional(c).await).map_err(store)?;
        row.map(Row::key).ok_or_else(|| not_found("API key"))
    }

    /// A new key in the caller's team, with a role no higher than the caller's (and never owner).
    pub async fn create_api_key(
        &self,
        p: &Principal,
        name: &str,
        role: TeamRole,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<CreatedApiKey, Error> {
        let (team, my_role) = authorize(p, Action::ManageApiKeys)?;
        if role == TeamRole::Owner || !my_role.covers(role) {
            return Err(invalid(
                "role",
                format!("an API key's role can be at most admin, and no higher than yours ({my_role})"),
            ));
        }
        if expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(invalid("expires_at", "expires_at must be in the future"));
        }
        self.insert_api_key(team, name, role, expires_at, &Actor::of(p)).await
    }

    /// Creates a key for `team` without a caller (the CLI, run by the operator).
    pub async fn insert_api_key(
        &self,
        team: Uuid,
        name: &str,
        role: TeamRole,
        expires_at: Option<DateTime<Utc>>,
        actor: &Actor,
    ) -> Result<CreatedApiKey, Error> {
        let name = check_name("name", name)?;
        let key = new_token(KEY_PREFIX);
        let id = Uuid::now_v7();
        let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
        let mut tx = self.db.begin().await.map_err(store_err)?;
        exec!(
            tx,
            "INSERT INTO api_keys (id, team_id, name, role, key_hash, prefix, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            id,
            team,
            &name,
            role.as_str(),
            hash_token(&key),
            &prefix,
            actor.user,
            Ts::now(),
            expires_at.map(Ts)
        )
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => not_found("team"),
            _ => store(e),
        })?;
        audit::record(
            &mut tx,
            actor,
            Event::new(Some(team), "api_key.created")
                .target("api_key", id)
                .details(serde_json::json!({"name": name, "role": role})),
        )
        .await?;
        tx.commit().await.map_err(store_err)?;
        Ok(CreatedApiKey { key, api_key: self.api_key(team, id).await? })
    }

    pub async fn revoke_api_key(&self, p: &Principal, id: Uuid) -> Result<ApiKey, Error> {
        let (team, _) = authorize(p, Action::ManageApiKeys)?;
        let mut tx = self.db.begin().await.map_err(store_err)?;
        let done = exec!(
            tx,
            "UPDATE api_keys SET revoked_at = $3 WHERE team_id = $1 AND id = $2 AND revoked_at IS NULL",
            team,
            id,
            Ts::now()
        )
        .map_err(store)?;
        if done == 0 {
            return Err(not_found("active API key"));
        }
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(team), "api_key.revoked").target("api_key", id)).await?;
        tx.commit().await.map_err(store_err)?;
        self.api_key(team, id).await
    }

    /// The caller behind a Bearer key, or `None` for an unknown, revoked or expired key.
    pub async fn authenticate_key(&self, key: &str, client: &Client) -> Result<Option<Principal>, Error> {
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        #[derive(sqlx::FromRow)]
        struct KeyRow {
            id: Uuid,
            team_id: Uuid,
            name: String,
            role: String,
            last_used_at: Option<Ts>,
            expires_at: Option<Ts>,
            revoked_at: Option<Ts>,
        }
        let row: Option<KeyRow> = on_read!(self.db, c => sqlx::query_as(
            "SELECT id, team_id, name, role, last_used_at, expires_at, revoked_at FROM api_keys WHERE key_hash = $1")
            .bind(hash_token(key)).fetch_optional(c).await)
        .map_err(store)?;
        let now = Ts::now();
        let Some(row) = row.filter(|r| r.revoked_at.is_none() && r.expires_at.is_none_or(|e| e > now)) else {
            return Ok(None);
        };
        let role = TeamRole::parse(&row.role)
            .ok_or_else(|| Error::new(ErrorCode::Internal, "an API key has an unknown role"))?;
        if row.last_used_at.is_none_or(|t| now.0 - t.0 >= TOUCH_EVERY) {
            let mut tx = self.db.begin().await.map_err(store_err)?;
            exec!(tx, "UPDATE api_keys SET last_used_at = $2 WHERE id = $1", row.id, now).map_err(store)?;
            tx.commit().await.map_err(store_err)?;
        }
        Ok(Some(Principal {
            user_id: None,
            key_id: Some(row.id),
            session_id: None,
            label: format!("api key {}", row.name),
            is_admin: false,
            team: Some((row.team_id, role)),
            needs_2fa_enrolment: false,
            client: client.clone(),
        }))
    }
}

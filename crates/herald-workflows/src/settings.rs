//! A team's workflow settings: the error workflow, and its own AI endpoint, model, key (sealed,
//! never returned) and daily budget.

use crate::effects::ai_key_binding;
use crate::store::{Workflows, invalid, store};
use herald_accounts::audit::{self, Actor, Event};
use herald_accounts::{Principal, authorize};
use herald_core::{Action, Error};
use herald_store::{Ts, exec, on_read};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

/// `GET /api/v1/workflow-settings`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SettingsView {
    /// Runs when any of the team's runs fails, with the failed run as its input (`failed_run`).
    pub error_workflow: Option<Uuid>,
    /// The team's own OpenAI-compatible endpoint; HERALD_AI_BASE_URL when absent.
    pub ai_base_url: Option<String>,
    pub ai_model: String,
    /// Whether a key is stored (it is never shown).
    pub ai_api_key_set: bool,
    pub ai_daily_calls: i64,
    pub ai_daily_tokens: i64,
    /// Today's use (UTC).
    pub ai_calls_today: i64,
    pub ai_tokens_today: i64,
}

/// `PUT /api/v1/workflow-settings`: absent fields keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    /// A workflow id, or null to clear.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub error_workflow: Option<Option<Uuid>>,
    /// An http(s) URL, or "" to use the operator's.
    pub ai_base_url: Option<String>,
    pub ai_model: Option<String>,
    /// A key, or "" to remove it.
    pub ai_api_key: Option<String>,
    pub ai_daily_calls: Option<i64>,
    pub ai_daily_tokens: Option<i64>,
}

/// Tells a null (clear it) from an absent field (keep it).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Uuid>>, D::Error> {
    Option::<Uuid>::deserialize(d).map(Some)
}

impl Workflows {
    pub async fn settings(&self, p: &Principal) -> Result<SettingsView, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let error_workflow: Option<(Option<Uuid>,)> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT error_workflow FROM teams WHERE id = $1").bind(team).fetch_optional(c).await)
        .map_err(store)?;
        let ai = self.ai_settings(team).await?;
        let own: Option<(Option<String>, Option<String>)> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT base_url, api_key FROM ai_settings WHERE team_id = $1").bind(team).fetch_optional(c).await)
        .map_err(store)?;
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let used: Option<(i64, i64)> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT calls, tokens FROM ai_usage WHERE team_id = $1 AND day = $2").bind(team).bind(&day).fetch_optional(c).await)
        .map_err(store)?;
        let (base, key) = own.unwrap_or_default();
        Ok(SettingsView {
            error_workflow: error_workflow.and_then(|e| e.0),
            ai_base_url: base,
            ai_model: ai.model,
            ai_api_key_set: key.is_some() || (ai.api_key.is_some() && !ai.team_endpoint),
            ai_daily_calls: ai.daily_calls,
            ai_daily_tokens: ai.daily_tokens,
            ai_calls_today: used.map_or(0, |u| u.0),
            ai_tokens_today: used.map_or(0, |u| u.1),
        })
    }

    pub async fn set_settings(&self, p: &Principal, u: SettingsUpdate) -> Result<SettingsView, Error> {
        let (team, _) = authorize(p, Action::ManageTeam)?;
        if let Some(Some(w)) = u.error_workflow {
            self.row(team, w).await?;
        }
        let current = self.ai_settings(team).await?;
        let own: Option<(Option<String>, Option<String>)> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT base_url, api_key FROM ai_settings WHERE team_id = $1").bind(team).fetch_optional(c).await)
        .map_err(store)?;
        let (mut base, mut sealed) = own.unwrap_or_default();
        if let Some(b) = &u.ai_base_url {
            base = match b.trim() {
                "" => None,
                b => {
                    // The team chose this host: the SSRF rules that need no lookup apply now, and
                    // every call goes through the guarded client.
                    let _checked = self
                        .inner
                        .safe
                        .request(herald_http::Method::POST, b)
                        .map_err(|e| invalid("ai_base_url", e.to_string()))?;
                    Some(b.trim_end_matches('/').to_string())
                }
            };
        }
        if let Some(k) = &u.ai_api_key {
            sealed = match k.trim() {
                "" => None,
                k => Some(self.inner.vault.seal(k, &ai_key_binding(team))),
            };
        }
        let model = u.ai_model.clone().unwrap_or(current.model);
        if model.trim().is_empty() || model.len() > 200 {
            return Err(invalid("ai_model", "ai_model is 1 to 200 characters"));
        }
        let calls = u.ai_daily_calls.unwrap_or(current.daily_calls);
        let tokens = u.ai_daily_tokens.unwrap_or(current.daily_tokens);
        if !(0..=1_000_000).contains(&calls) || !(0..=1_000_000_000).contains(&tokens) {
            return Err(invalid(
                "ai_daily_calls",
                "ai_daily_calls is 0 to 1000000 and ai_daily_tokens 0 to 1000000000",
            ));
        }
        let mut tx = self.inner.db.begin().await?;
        if let Some(w) = u.error_workflow {
            exec!(tx, "UPDATE teams SET error_workflow = $2 WHERE id = $1", team, w).map_err(store)?;
        }
        exec!(
            tx,
            "INSERT INTO ai_settings (team_id, base_url, model, api_key, daily_calls, daily_tokens, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (team_id) DO UPDATE SET base_url = excluded.base_url, \
             model = excluded.model, api_key = excluded.api_key, daily_calls = excluded.daily_calls, \
             daily_tokens = excluded.daily_tokens, updated_at = excluded.updated_at",
            team,
            &base,
            model.trim(),
            &sealed,
            calls,
            tokens,
            Ts::now()
        )
        .map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "workflow.settings").details(json!({
                "error_workflow": u.error_workflow, "ai_base_url": base, "ai_model": model.trim(),
                "ai_api_key_changed": u.ai_api_key.is_some(), "ai_daily_calls": calls, "ai_daily_tokens": tokens,
            })),
        )
        .await?;
        tx.commit().await?;
        self.settings(p).await
    }
}

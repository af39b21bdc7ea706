//! The steps that reach outside Herald: `http` (through the SSRF-guarded client) and
//! `ai_rewrite` (an OpenAI-compatible endpoint, within the team's daily budget).

use crate::engine::{Outcome, RunState};
use crate::model::*;
use crate::path::Path;
use crate::store::{RunRow, Workflows, store};
use crate::template;
use herald_core::Error;
use herald_http::{FetchError, Method};
use herald_store::{exec, on_read};
use serde_json::{Value, json};
use std::time::Duration;

/// The most of an http step's answer kept for later steps.
const MAX_HTTP_BODY: usize = 256 * 1024;

fn fail(code: &str, message: impl Into<String>) -> Outcome {
    Outcome::Fail { code: code.into(), message: message.into() }
}

fn retry(code: &str, message: impl Into<String>, after: Duration) -> Outcome {
    Outcome::Retry { code: code.into(), message: message.into(), after }
}

pub(crate) async fn http_step(
    w: &Workflows,
    run: &RunRow,
    path: &Path,
    h: &Http,
    vars: &Value,
    dry: bool,
) -> (Outcome, Option<Value>) {
    let render = |src: &str| template::render(src, vars);
    let url = match render(&h.url) {
        Ok(u) => u.trim().to_string(),
        Err(e) => return (fail(e.code(), format!("url: {e}")), None),
    };
    let mut headers = Vec::new();
    for (k, v) in &h.headers {
        match render(v) {
            Ok(v) => headers.push((k.clone(), v)),
            Err(e) => return (fail(e.code(), format!("headers.{k}: {e}")), None),
        }
    }
    let body = match &h.body {
        Some(b) => match render(b) {
            Ok(b) => Some(b),
            Err(e) => return (fail(e.code(), format!("body: {e}")), None),
        },
        None => None,
    };
    // Header values may carry secrets: the step run shows their names only.
    let input = json!({"method": h.method, "url": url, "headers": headers.iter().map(|(k, _)| k).collect::<Vec<_>>()});
    if dry {
        return (Outcome::Next { output: json!({"would_call": input}), next: None, post: None }, Some(input));
    }
    let method = Method::from_bytes(h.method.as_bytes()).unwrap_or(Method::POST);
    let mut req = match w.inner.safe.request(method, &url) {
        Ok(r) => r,
        Err(e) => return (fail("ssrf_blocked_destination", e.to_string()), Some(input)),
    };
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    req = req.timeout(Duration::from_secs(h.timeout_secs.unwrap_or(15)));
    if !has("idempotency-key") {
        // The same call after a crash carries the same key, for receivers that deduplicate.
        req = req.header("Idempotency-Key", format!("{}:{}", run.id, path.display()));
    }
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(b) = body {
        if !has("content-type") {
            let json = serde_json::from_str::<Value>(&b).is_ok();
            req = req.header("Content-Type", if json { "application/json" } else { "text/plain; charset=utf-8" });
        }
        req = req.body(b);
    }
    let response = match w.inner.safe.send(req).await {
        Ok(r) => r,
        Err(FetchError::Blocked(b)) => return (fail("ssrf_blocked_destination", b.to_string()), Some(input)),
        Err(e) => return (retry("http_unavailable", e.to_string(), Duration::from_secs(2)), Some(input)),
    };
    let status = response.status();
    let after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let bytes = match herald_http::read_limited(response, MAX_HTTP_BODY).await {
        Ok(b) => b,
        Err(FetchError::TooLarge { limit }) => {
            return (fail("http_response_too_large", format!("the answer is larger than {limit} bytes")), Some(input));
        }
        Err(e) => return (retry("http_unavailable", e.to_string(), Duration::from_secs(2)), Some(input)),
    };
    let text = String::from_utf8_lossy(&bytes).to_string();
    let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text.clone()));
    let code = status.as_u16();
    if status.is_success() {
        return (Outcome::Next { output: json!({"status": code, "body": body}), next: None, post: None }, Some(input));
    }
    let snippet: String = text.chars().take(300).collect();
    if code == 429 || status.is_server_error() || code == 408 {
        return (
            retry(
                "http_unavailable",
                format!("{url} answered {code}: {snippet}"),
                after.unwrap_or(Duration::from_secs(2)),
            ),
            Some(input),
        );
    }
    (fail("http_failed", format!("{url} answered {code}: {snippet}")), Some(input))
}

/// The team's AI endpoint, model, key and daily budget.
pub(crate) struct AiSettings {
    pub base_url: Option<String>,
    /// Whether the base URL is the team's own (so it goes through the SSRF guard).
    pub team_endpoint: bool,
    pub model: String,
    pub api_key: Option<String>,
    pub daily_calls: i64,
    pub daily_tokens: i64,
}

/// base_url, model, sealed api_key, daily_calls, daily_tokens.
type SettingsRow = (Option<String>, String, Option<String>, i64, i64);

impl Workflows {
    pub(crate) async fn ai_settings(&self, team: uuid::Uuid) -> Result<AiSettings, Error> {
        let c = &self.inner.config;
        let row: Option<SettingsRow> = on_read!(self.inner.db, db => sqlx::query_as(
            "SELECT base_url, model, api_key, daily_calls, daily_tokens FROM ai_settings WHERE team_id = $1")
            .bind(team).fetch_optional(db).await)
        .map_err(store)?;
        Ok(match row {
            Some((base, model, key, calls, tokens)) => {
                let key = match key {
                    Some(sealed) => Some(
                        self.inner
                            .vault
                            .open(&sealed, &ai_key_binding(team))
                            .map_err(|e| Error::internal(e.to_string()))?
                            .expose()
                            .to_string(),
                    ),
                    None => None,
                };
                let team_endpoint = base.is_some();
                // On the operator's endpoint (and key), the operator's budget is a cap a team can
                // lower but not raise; on its own endpoint a team sets what it likes.
                let (calls, tokens) = match team_endpoint {
                    true => (calls, tokens),
                    false => (calls.min(c.ai_daily_calls), tokens.min(c.ai_daily_tokens)),
                };
                AiSettings {
                    base_url: base.or_else(|| c.ai_base_url.clone()),
                    team_endpoint,
                    model,
                    api_key: if team_endpoint { key } else { key.or_else(|| c.ai_api_key.clone()) },
                    daily_calls: calls,
                    daily_tokens: tokens,
                }
            }
            None => AiSettings {
                base_url: c.ai_base_url.clone(),
                team_endpoint: false,
                model: c.ai_model.clone(),
                api_key: c.ai_api_key.clone(),
                daily_calls: c.ai_daily_calls,
                daily_tokens: c.ai_daily_tokens,
            },
        })
    }

    /// Takes one call from today's budget; `false` when it is spent.
    pub(crate) async fn take_ai_call(&self, team: uuid::Uuid, s: &AiSettings) -> Result<bool, Error> {
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let mut tx = self.inner.db.begin().await?;
        exec!(
            tx,
            "INSERT INTO ai_usage (team_id, day, calls, tokens) VALUES ($1, $2, 0, 0) ON CONFLICT (team_id, day) DO NOTHING",
            team,
            &day
        )
        .map_err(store)?;
        let n = exec!(
            tx,
            "UPDATE ai_usage SET calls = calls + 1 WHERE team_id = $1 AND day = $2 AND calls < $3 AND tokens < $4",
            team,
            &day,
            s.daily_calls,
            s.daily_tokens
        )
        .map_err(store)?;
        tx.commit().await?;
        Ok(n == 1)
    }

    pub(crate) async fn add_ai_tokens(&self, team: uuid::Uuid, tokens: u64) -> Result<(), Error> {
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let mut tx = self.inner.db.begin().await?;
        exec!(
            tx,
            "UPDATE ai_usage SET tokens = tokens + $3 WHERE team_id = $1 AND day = $2",
            team,
            &day,
            tokens as i64
        )
        .map_err(store)?;
        tx.commit().await?;
        Ok(())
    }
}

pub(crate) fn ai_key_binding(team: uuid::Uuid) -> String {
    herald_vault::binding("ai_settings", "api_key", Some(&team), &team)
}

/// Rewrites the run's text with the team's AI endpoint: one variant per platform, or one text.
/// The model's answer is only text: it is cleaned and checked against each platform's limit,
/// and it never chooses targets, URLs or tools. A failure falls back to the input text or fails
/// the run, as the step says; a rate limit or an outage retries first.
pub(crate) async fn ai_step(
    w: &Workflows,
    run: &RunRow,
    path: &Path,
    policy: RetryPolicy,
    a: &AiRewrite,
    state: &mut RunState,
    vars: &Value,
) -> (Outcome, Option<Value>) {
    let input = match &a.input {
        Some(src) => match template::render(src, vars) {
            Ok(t) => t,
            Err(e) => return (fail(e.code(), format!("input: {e}")), None),
        },
        None => state.text.clone().unwrap_or_default(),
    };
    let step_input = json!({"text": input, "platforms": a.platforms});
    let fallback = |code: &str, message: String, state: &mut RunState| match a.on_failure {
        OnFailure::Fail => fail(code, message),
        OnFailure::Fallback => {
            state.text = Some(input.clone());
            Outcome::Next {
                output: json!({"fallback": true, "code": code, "reason": message, "text": input}),
                next: None,
                post: None,
            }
        }
    };
    if input.trim().is_empty() {
        return (fallback("ai_invalid", "there is no text to rewrite".into(), state), Some(step_input));
    }
    let settings = match w.ai_settings(run.team_id).await {
        Ok(s) => s,
        Err(e) => return (retry("store", e.message, Duration::from_secs(2)), Some(step_input)),
    };
    let Some(base_url) = settings.base_url.clone() else {
        let why = "no AI endpoint is configured: set HERALD_AI_BASE_URL, or the team's own endpoint".to_string();
        return (fallback("ai_unavailable", why, state), Some(step_input));
    };
    let endpoint =
        crate::ai::Endpoint { base_url: &base_url, model: &settings.model, api_key: settings.api_key.as_deref() };
    let via = if settings.team_endpoint {
        crate::ai::Via::Safe(&w.inner.safe)
    } else {
        crate::ai::Via::Trusted(&w.inner.trusted)
    };
    let platforms: Vec<Option<&str>> =
        if a.platforms.is_empty() { vec![None] } else { a.platforms.iter().map(|p| Some(p.as_str())).collect() };
    let mut variants = serde_json::Map::new();
    let mut tokens = 0;
    // Why the rest of the platforms keep the input text, when a call fails for good.
    let mut gave_up: Option<(&'static str, String)> = None;
    for platform in platforms {
        match w.take_ai_call(run.team_id, &settings).await {
            Ok(true) => {}
            Ok(false) => {
                let why = format!(
                    "the team's daily AI budget ({} calls, {} tokens) is spent; it renews at midnight UTC",
                    settings.daily_calls, settings.daily_tokens
                );
                gave_up = Some(("ai_budget_exceeded", why));
                break;
            }
            Err(e) => return (retry("store", e.message, Duration::from_secs(2)), Some(step_input)),
        }
        let ask = crate::ai::Rewrite {
            text: &input,
            platform,
            max_chars: a.max_length,
            tone: a.tone.as_deref(),
            hashtags: a.hashtags,
            emojis: a.emojis,
            instructions: a.instructions.as_deref(),
        };
        match crate::ai::rewrite(via, &endpoint, &ask).await {
            Ok(answer) => {
                tokens += answer.tokens();
                if let Err(e) = w.add_ai_tokens(run.team_id, answer.tokens()).await {
                    tracing::warn!(run = %run.id, error = %e.message, "could not count AI tokens");
                }
                variants.insert(platform.unwrap_or("all").to_string(), Value::String(answer.text));
            }
            Err(e @ (crate::ai::AiError::Transient(_) | crate::ai::AiError::RateLimited(..))) => {
                let after = match &e {
                    crate::ai::AiError::RateLimited(_, Some(d)) => *d,
                    _ => Duration::from_secs(2),
                };
                // Retry while the step's policy allows; its last failure falls back or fails.
                let attempt = state.attempts.get(&path.display()).copied().unwrap_or(0) + 1;
                if attempt < policy.max_attempts {
                    return (retry(e.code(), e.to_string(), after), Some(step_input));
                }
                gave_up = Some((e.code(), e.to_string()));
                break;
            }
            Err(e) => {
                gave_up = Some((e.code(), e.to_string()));
                break;
            }
        }
    }
    if let Some((code, why)) = &gave_up
        && (a.on_failure == OnFailure::Fail || variants.is_empty())
    {
        return (fallback(code, why.clone(), state), Some(step_input));
    }
    let mut output = json!({"tokens": tokens});
    if let Some((code, why)) = gave_up {
        // The platforms done keep their variants; the others post the input text.
        output["fallback"] = json!(true);
        output["code"] = json!(code);
        output["reason"] = json!(why);
        state.text = Some(input.clone());
    }
    match variants.remove("all") {
        Some(Value::String(text)) => {
            state.text = Some(text.clone());
            output["text"] = json!(text);
        }
        _ => {
            for (platform, text) in &variants {
                if let Value::String(t) = text {
                    state.variants.insert(platform.clone(), t.clone());
                }
            }
            output["variants"] = Value::Object(variants);
        }
    }
    (Outcome::Next { output, next: None, post: None }, Some(step_input))
}

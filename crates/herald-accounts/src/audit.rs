//! The audit log: security and admin events, written in the same transaction as what they record.

use crate::model::{AuditEvent, Principal};
use crate::service::{Accounts, store};
use herald_core::Error;
use herald_store::{Ts, Tx, on_read};
use uuid::Uuid;

/// Who did it.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub user: Option<Uuid>,
    pub key: Option<Uuid>,
    pub label: String,
    pub ip: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor { label: "system".into(), ..Actor::default() }
    }

    pub fn of(p: &Principal) -> Actor {
        Actor { user: p.user_id, key: p.key_id, label: p.label.clone(), ip: p.client.ip.clone() }
    }
}

/// One event to record.
pub struct Event<'a> {
    pub team: Option<Uuid>,
    pub action: &'a str,
    pub target: Option<(&'a str, String)>,
    pub details: serde_json::Value,
}

impl<'a> Event<'a> {
    pub fn new(team: Option<Uuid>, action: &'a str) -> Self {
        Event { team, action, target: None, details: serde_json::json!({}) }
    }

    pub fn target(mut self, kind: &'a str, id: impl ToString) -> Self {
        self.target = Some((kind, id.to_string()));
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

pub async fn record(tx: &mut Tx, actor: &Actor, event: Event<'_>) -> Result<(), Error> {
    record_many(tx, &[(actor, event)]).await
}

/// Records several events in one statement: a batch of posts created together logs them all
/// at once.
pub async fn record_many(tx: &mut Tx, events: &[(&Actor, Event<'_>)]) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let now = Ts::now();
    // Deferred: it goes with the transaction's next read or its commit, and fails the commit if
    // it fails.
    if tx.backend() == herald_store::Backend::Sqlite {
        defer_sqlite(tx, events, now);
    } else {
        defer_pg(tx, events, now);
    }
    log(events);
    Ok(())
}

/// The events as one JSONB parameter ([`herald_store::jsonb`]): the statement's text is the same
/// whatever their number, so SQLite's writer compiles it once and keeps it.
fn defer_sqlite(tx: &mut Tx, events: &[(&Actor, Event<'_>)], now: Ts) {
    let mut input = herald_store::jsonb::Rows::default();
    for (actor, e) in events {
        input
            .id(Uuid::now_v7())
            .opt_id(e.team)
            .opt_id(actor.user)
            .opt_id(actor.key)
            .text(&actor.label)
            .text(e.action)
            .opt_text(e.target.as_ref().map(|(t, _)| *t))
            .opt_text(e.target.as_ref().map(|(_, id)| id.as_str()))
            .opt_text(actor.ip.as_deref())
            .text(&e.details.to_string())
            .end_row();
    }
    tx.defer(
        "INSERT INTO audit_events (id, team_id, actor_user, actor_key, actor, action, target_type, target_id, ip, \
         details, created_at) \
         SELECT unhex(value ->> 0), unhex(value ->> 1), unhex(value ->> 2), unhex(value ->> 3), value ->> 4, \
                value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9, $1 \
         FROM jsonb_each($2)",
    )
    .bind(now)
    .bind(input.finish());
}

/// The events as arrays ([`herald_store::column`]): one statement text whatever their number.
fn defer_pg(tx: &mut Tx, events: &[(&Actor, Event<'_>)], now: Ts) {
    use herald_store::column;
    tx.defer(
        "INSERT INTO audit_events (id, team_id, actor_user, actor_key, actor, action, target_type, target_id, ip, \
         details, created_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], \
           $8::text[], $9::text[], $10::text[], $11::timestamptz[])",
    )
    .bind_pg(column(events, |_| Uuid::now_v7()))
    .bind_pg(column(events, |(_, e)| e.team))
    .bind_pg(column(events, |(a, _)| a.user))
    .bind_pg(column(events, |(a, _)| a.key))
    .bind_pg(column(events, |(a, _)| a.label.as_str()))
    .bind_pg(column(events, |(_, e)| e.action))
    .bind_pg(column(events, |(_, e)| e.target.as_ref().map(|(t, _)| *t)))
    .bind_pg(column(events, |(_, e)| e.target.as_ref().map(|(_, id)| id.as_str())))
    .bind_pg(column(events, |(a, _)| a.ip.as_deref()))
    .bind_pg(column(events, |(_, e)| e.details.to_string()))
    .bind_pg(vec![now.0; events.len()]);
}

fn log(events: &[(&Actor, Event<'_>)]) {
    for (actor, e) in events {
        tracing::info!(
            target: "herald::audit",
            action = e.action,
            actor = %actor.label,
            team = ?e.team,
            target_id = e.target.as_ref().map(|(_, id)| id.as_str()).unwrap_or(""),
            ip = actor.ip.as_deref().unwrap_or(""),
            "audit"
        );
    }
}

/// Filters for reading the log; newest first, paged by `before` (an event id).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this action, e.g. `login.failed`; a trailing `*` matches a prefix (`api_key.*`).
    pub action: Option<String>,
    /// Only events by this user.
    pub actor_user_id: Option<Uuid>,
    /// Only events older than this event id (the `next` cursor of the previous page).
    pub before: Option<Uuid>,
    /// At most this many events (1 to 200, default 50).
    pub limit: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    team_id: Option<Uuid>,
    actor_user: Option<Uuid>,
    actor_key: Option<Uuid>,
    actor: String,
    action: String,
    target_type: Option<String>,
    target_id: Option<String>,
    ip: Option<String>,
    details: String,
    created_at: Ts,
}

/// Escapes LIKE's wildcards so a prefix matches literally.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

impl Accounts {
    /// One team's events, newest first.
    pub async fn audit_events(&self, team: Uuid, q: &AuditQuery) -> Result<Vec<AuditEvent>, Error> {
        let limit = q.limit.unwrap_or(50).clamp(1, 200) as i64;
        let (action_exact, action_prefix) = match q.action.as_deref() {
            Some(a) if a.ends_with('*') => (None, Some(format!("{}%", like_escape(a.trim_end_matches('*'))))),
            Some(a) => (Some(a.to_string()), None),
            None => (None, None),
        };
        const SQL: &str = "SELECT id, team_id, actor_user, actor_key, actor, action, target_type, target_id, ip, details, \
                           created_at FROM audit_events WHERE team_id = $1 \
                           AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR action LIKE $3 ESCAPE '\\') \
                           AND ($4 IS NULL OR actor_user = $4) AND ($5 IS NULL OR id < $5) \
                           ORDER BY id DESC LIMIT $6";
        let rows: Vec<Row> = on_read!(self.db, c => sqlx::query_as(SQL)
            .bind(team).bind(&action_exact).bind(&action_prefix).bind(q.actor_user_id).bind(q.before).bind(limit)
            .fetch_all(c).await)
        .map_err(store)?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEvent {
                id: r.id,
                team_id: r.team_id,
                actor_user_id: r.actor_user,
                actor_key_id: r.actor_key,
                actor: r.actor,
                action: r.action,
                target_type: r.target_type,
                target_id: r.target_id,
                ip: r.ip,
                details: serde_json::from_str(&r.details).unwrap_or_default(),
                created_at: r.created_at.0,
            })
            .collect())
    }
}

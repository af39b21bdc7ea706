//! What happened to a team's posts, told to the team: every event can go to the team's webhook
//! endpoints (Standard Webhooks, signed, retried by the queue, disabled on 410), and the events
//! that need a person (a failed or unconfirmed delivery, a connection that needs re-authorising)
//! also become notifications (and, with SMTP, e-mail to the team's owners and admins: see
//! [`crate::notify_mail`]). Events are written in the same transaction as what they report.

use crate::store::{Posts, store};
use chrono::{DateTime, Utc};
use herald_accounts::audit::{self, Actor, Event};
use herald_accounts::{Principal, authorize};
use herald_core::{Action, Error, ErrorCode};
use herald_queue::{Job, JobError, NewJob};
use herald_store::{Ts, Tx, exec, on_read, on_tx};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

pub const EVENT_JOB: &str = "event.deliver";

/// Every event type, for endpoint filters and documentation.
pub const EVENT_TYPES: &[&str] = &[
    "post.created",
    "post.scheduled",
    "post.published",
    "post.partially_published",
    "post.failed",
    "post.cancelled",
    "post.repeat_stopped",
    "delivery.failed",
    "delivery.unconfirmed",
    "connection.needs_reauth",
    "run.failed",
    "approval.requested",
];

/// The events a person must act on.
const NEEDS_A_PERSON: &[&str] = &[
    "post.failed",
    "post.repeat_stopped",
    "delivery.failed",
    "delivery.unconfirmed",
    "connection.needs_reauth",
    "run.failed",
    "approval.requested",
];

fn vault_binding(team: Uuid, id: Uuid) -> String {
    herald_vault::binding("event_endpoints", "secret", Some(&team), &id)
}

/// Records `kind` about `(subject_type, subject)`: a notification when a person must act, and one
/// webhook job per endpoint that wants it, all in the caller's transaction. Workflows emit
/// `run.failed` and `approval.requested` through it too.
pub async fn emit(
    tx: &mut Tx,
    team: Uuid,
    kind: &str,
    subject: (&str, Uuid),
    message: &str,
    data: Value,
) -> Result<(), Error> {
    let endpoints = endpoints(tx, team).await?;
    emit_to(tx, &endpoints, team, kind, subject, message, data).await
}

/// A team's active endpoints with the event types each wants (JSON).
const ACTIVE_ENDPOINTS: &str = "SELECT id, events FROM event_endpoints WHERE team_id = $1 AND active = $2";

/// The team's active endpoints with the event types each wants (JSON), for [`emit_to`]; a batch
/// that emits many events for one team reads them once.
pub(crate) async fn endpoints(tx: &mut Tx, team: Uuid) -> Result<Vec<(Uuid, String)>, Error> {
    on_tx!(tx, c => sqlx::query_as(ACTIVE_ENDPOINTS)
        .bind(team).bind(true).fetch_all(&mut *c).await)
    .map_err(store)
}

/// The [`Tx::changed`] topic of writes to `event_endpoints`.
pub(crate) const CHANGED: &str = "event_endpoints";

/// A team's active event endpoints: each one's id and the events it takes.
pub(crate) type Endpoints = Arc<Vec<(Uuid, String)>>;

/// The team's active endpoints, read outside a transaction and kept for a moment
/// ([`Posts::endpoints`]): a post's create reads them before it takes SQLite's writer, which then
/// has one trip fewer to make. An endpoint made or turned off meanwhile is a race the post might
/// have lost or won a moment later anyway; on this node the change shows at once.
pub(crate) async fn endpoints_now(posts: &Posts, team: Uuid) -> Result<Endpoints, Error> {
    let db = &posts.db;
    posts
        .endpoints
        .get_or_load(team, async {
            on_read!(db, c => sqlx::query_as(ACTIVE_ENDPOINTS).bind(team).bind(true).fetch_all(c).await)
                .map(Arc::new)
                .map_err(store)
        })
        .await
}

/// [`emit`] to endpoints already read in this transaction.
pub(crate) async fn emit_to(
    tx: &mut Tx,
    endpoints: &[(Uuid, String)],
    team: Uuid,
    kind: &str,
    subject: (&str, Uuid),
    message: &str,
    data: Value,
) -> Result<(), Error> {
    let now = Ts::now();
    if NEEDS_A_PERSON.contains(&kind) {
        exec!(
            tx,
            "INSERT INTO notifications (id, team_id, kind, subject_type, subject_id, message, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            Uuid::now_v7(),
            team,
            kind,
            subject.0,
            subject.1,
            message,
            now
        )
        .map_err(store)?;
        crate::notify_mail::notified(tx, team, kind).await?;
        tracing::warn!(%team, kind, subject = %subject.1, "{message}");
    }
    for (endpoint, events) in endpoints {
        let wanted: Vec<String> = serde_json::from_str(events).unwrap_or_default();
        if !wanted.is_empty() && !wanted.iter().any(|w| w == kind) {
            continue;
        }
        let event = Uuid::now_v7();
        let payload = json!({
            "endpoint": endpoint, "team": team, "event": event, "type": kind, "timestamp": now.0,
            "data": data,
        });
        let job = NewJob::new(EVENT_JOB, payload).max_attempts(10);
        herald_queue::enqueue(tx, job).await.map_err(Error::from)?;
    }
    Ok(())
}

/// A webhook endpoint as the API shows it (never its secret, except once at creation).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointView {
    pub id: Uuid,
    pub url: String,
    /// Event types sent; empty means all of them.
    pub events: Vec<String>,
    pub active: bool,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Only in the answer to the create: verify signatures with it (Standard Webhooks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub url: String,
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct NotificationView {
    pub id: Uuid,
    pub kind: String,
    pub subject_type: String,
    pub subject_id: Uuid,
    pub message: String,
    #[sqlx(skip)]
    pub created_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub read_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: Uuid,
    url: String,
    secret: String,
    events: String,
    active: bool,
    disabled_reason: Option<String>,
    created_at: Ts,
}

impl EndpointRow {
    fn view(self) -> EndpointView {
        EndpointView {
            id: self.id,
            url: self.url,
            events: serde_json::from_str(&self.events).unwrap_or_default(),
            active: self.active,
            disabled_reason: self.disabled_reason,
            created_at: self.created_at.0,
            secret: None,
        }
    }
}

const ENDPOINT_COLS: &str = "id, url, secret, events, active, disabled_reason, created_at";

impl Posts {
    /// Tells the team a connection needs re-authorising (call it once, when the status flips).
    pub(crate) async fn connection_needs_reauth(
        &self,
        team: Uuid,
        connection: Uuid,
        platform: &str,
        why: &str,
    ) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        let message = format!("the {platform} connection needs re-authorising: {why}");
        let data = json!({"connection": connection, "platform": platform, "error": why});
        emit(&mut tx, team, "connection.needs_reauth", ("connection", connection), &message, data).await?;
        tx.commit().await.map_err(Error::from)
    }

    /// Re-checks a connection live ([`herald_connections::Connections::test`]); when the check
    /// finds the credentials refused, the team is told, as when a delivery finds it.
    pub async fn test_connection(&self, p: &Principal, id: Uuid) -> Result<herald_connections::ConnectionView, Error> {
        let (team, _) = authorize(p, Action::Publish)?;
        let before = self.connections.get(team, id).await?;
        let after = self.connections.test(p, id).await?;
        let reauth = herald_connections::Status::NeedsReauth;
        if after.status == reauth && before.status != reauth {
            let why =
                after.last_error.as_ref().map(|e| e.message.as_str()).unwrap_or("the platform refused its credentials");
            self.connection_needs_reauth(team, id, &after.platform, why).await?;
        }
        Ok(after)
    }
    /// Adds a webhook endpoint (`manage_team`). The URL goes through the SSRF guard on every send.
    pub async fn create_endpoint(&self, p: &Principal, new: NewEndpoint) -> Result<EndpointView, Error> {
        let (team, _) = authorize(p, Action::ManageTeam)?;
        let invalid = |m: String| Error::new(ErrorCode::ValidationFailed, m);
        match url::Url::parse(&new.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(invalid(format!("`{}` is not an http(s) URL", new.url))),
        }
        for e in &new.events {
            if !EVENT_TYPES.contains(&e.as_str()) {
                return Err(invalid(format!("`{e}` is not an event type; one of: {}", EVENT_TYPES.join(", "))));
            }
        }
        let id = Uuid::now_v7();
        let secret = herald_platforms::webhook::generate_secret();
        let sealed = self.accounts.vault().seal(&secret, &vault_binding(team, id));
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        tx.changed(CHANGED);
        exec!(
            tx,
            "INSERT INTO event_endpoints (id, team_id, url, secret, events, active, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            id,
            team,
            &new.url,
            &sealed,
            serde_json::to_string(&new.events).unwrap_or_default(),
            true,
            p.user_id,
            Ts::now()
        )
        .map_err(store)?;
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(team), "webhook.created").target("webhook", id)).await?;
        tx.commit().await.map_err(Error::from)?;
        let mut view = self.endpoint(team, id).await?;
        view.secret = Some(secret);
        Ok(view)
    }

    async fn endpoint_row(&self, team: Uuid, id: Uuid) -> Result<EndpointRow, Error> {
        let sql = format!("SELECT {ENDPOINT_COLS} FROM event_endpoints WHERE team_id = $1 AND id = $2");
        let row: Option<EndpointRow> = on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(id).fetch_optional(c).await)
        .map_err(store)?;
        row.ok_or_else(|| Error::not_found("webhook"))
    }

    pub async fn endpoint(&self, team: Uuid, id: Uuid) -> Result<EndpointView, Error> {
        Ok(self.endpoint_row(team, id).await?.view())
    }

    pub async fn endpoints(&self, p: &Principal) -> Result<Vec<EndpointView>, Error> {
        let (team, _) = authorize(p, Action::ManageTeam)?;
        let sql = format!("SELECT {ENDPOINT_COLS} FROM event_endpoints WHERE team_id = $1 ORDER BY created_at");
        let rows: Vec<EndpointRow> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).fetch_all(c).await)
                .map_err(store)?;
        Ok(rows.into_iter().map(EndpointRow::view).collect())
    }

    pub async fn delete_endpoint(&self, p: &Principal, id: Uuid) -> Result<EndpointView, Error> {
        let (team, _) = authorize(p, Action::ManageTeam)?;
        let view = self.endpoint(team, id).await?;
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        tx.changed(CHANGED);
        exec!(tx, "DELETE FROM event_endpoints WHERE team_id = $1 AND id = $2", team, id).map_err(store)?;
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(team), "webhook.deleted").target("webhook", id)).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(view)
    }

    /// The team's notifications, newest first; `unread` leaves out the read ones.
    pub async fn notifications(&self, team: Uuid, unread: bool) -> Result<Vec<NotificationView>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            view: NotificationView,
            created: Ts,
            read: Option<Ts>,
        }
        let rows: Vec<Row> = on_read!(self.db, c => sqlx::query_as(
            "SELECT id, kind, subject_type, subject_id, message, created_at AS created, read_at AS read FROM notifications \
             WHERE team_id = $1 AND ($2 = FALSE OR read_at IS NULL) ORDER BY created_at DESC, id DESC LIMIT 200")
            .bind(team).bind(unread).fetch_all(c).await)
        .map_err(store)?;
        Ok(rows
            .into_iter()
            .map(|r| NotificationView { created_at: r.created.0, read_at: r.read.map(|t| t.0), ..r.view })
            .collect())
    }

    pub async fn mark_read(&self, p: &Principal, id: Uuid) -> Result<(), Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let n = exec!(
            tx,
            "UPDATE notifications SET read_at = COALESCE(read_at, $3) WHERE team_id = $1 AND id = $2",
            team,
            id,
            Ts::now()
        )
        .map_err(store)?;
        if n == 0 {
            return Err(Error::not_found("notification"));
        }
        tx.commit().await.map_err(Error::from)
    }
}

/// Sends one event to one endpoint, signed; the event id is the `webhook-id`, the same on every
/// try, so a receiver can drop repeats.
#[derive(Clone)]
pub struct EventHandler {
    pub(crate) posts: Posts,
}

impl EventHandler {
    pub fn new(posts: Posts) -> EventHandler {
        EventHandler { posts }
    }
}

#[async_trait::async_trait]
impl herald_queue::Handler for EventHandler {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let p = &job.payload;
        let uuid = |k: &str| p[k].as_str().and_then(|s| s.parse::<Uuid>().ok());
        let (Some(team), Some(endpoint), Some(event)) = (uuid("team"), uuid("endpoint"), uuid("event")) else {
            return Err(JobError::Permanent("the event job is malformed".into()));
        };
        let row = match self.posts.endpoint_row(team, endpoint).await {
            Ok(r) if r.active => r,
            Ok(_) => return Ok(()), // disabled since
            Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
            Err(e) => return Err(JobError::retry(e)),
        };
        let secret = self
            .posts
            .accounts
            .vault()
            .open(&row.secret, &vault_binding(team, endpoint))
            .map_err(|e| JobError::Permanent(format!("the endpoint's secret cannot be opened: {e}")))?;
        let body = json!({"type": p["type"], "timestamp": p["timestamp"], "data": p["data"]});
        let id = format!("evt_{}", event.simple());
        let net = self.posts.connections.net();
        let sent = herald_platforms::webhook::deliver(
            net,
            &row.url,
            &Default::default(),
            secret.expose(),
            &id,
            serde_json::to_vec(&body).expect("JSON serialises"),
        )
        .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.code.as_deref() == Some("gone") => {
                let mut tx = self.posts.db.begin().await.map_err(|e| JobError::retry(Error::from(e)))?;
                tx.changed(CHANGED);
                exec!(
                    tx,
                    "UPDATE event_endpoints SET active = $3, disabled_reason = $4 WHERE team_id = $1 AND id = $2",
                    team,
                    endpoint,
                    false,
                    "the receiver answered 410 Gone"
                )
                .map_err(|e| JobError::retry(store(e)))?;
                tx.commit().await.map_err(|e| JobError::retry(Error::from(e)))?;
                Err(JobError::Permanent("the receiver answered 410 Gone; the endpoint is disabled".into()))
            }
            // A refusal (401/403) may be fixed on the receiver's side: keep trying within the attempts.
            Err(e) if e.class == herald_platforms::ErrorClass::Auth => Err(JobError::Retry(e.to_string())),
            Err(e) => Err(herald_connections::delivery::job_error(&e)),
        }
    }
}

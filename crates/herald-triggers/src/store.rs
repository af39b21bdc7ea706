//! The sources service: create, read, change and delete sources; store events; manual events.

use crate::intake::{self, Incoming, Intake, NewEventRow};
use crate::model::*;
use crate::schedule;
use crate::youtube;
use chrono::{DateTime, Utc};
use herald_accounts::audit::{self, Actor, Event};
use herald_accounts::{Principal, authorize};
use herald_core::{Action, Error, ErrorCode};
use herald_http::{HttpClient, SafeClient};
use herald_store::{Backend, Db, ReadCache, StoreError, Ts, Tx, exec, on_read};
use herald_vault::Vault;
use rand::Rng;
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use uuid::Uuid;

/// What the operator configured.
#[derive(Debug, Clone)]
pub struct TriggerConfig {
    /// HERALD_PUBLIC_URL, without a trailing slash: WebSub callbacks and webhook URLs hang off it.
    pub public_url: Option<String>,
    /// HERALD_WEBSUB_HUB: where YouTube subscriptions are made.
    pub websub_hub: String,
    /// HERALD_YOUTUBE_BASE: where channel feeds and handle pages are fetched (tests point it at a fake).
    pub youtube_base: String,
    /// The largest feed body read (HERALD_FEED_MAX_BYTES, 5 MiB).
    pub feed_max_bytes: usize,
    /// The lease a node holds on a source while it polls it.
    pub poll_lease: Duration,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            public_url: None,
            websub_hub: "https://pubsubhubbub.appspot.com/subscribe".into(),
            youtube_base: "https://www.youtube.com".into(),
            feed_max_bytes: 5 << 20,
            poll_lease: Duration::from_secs(120),
        }
    }
}

/// The largest inbound webhook or WebSub body.
pub const MAX_HOOK_BYTES: usize = 1 << 20;
const MAX_NAME: usize = 200;

#[derive(Clone)]
pub struct Sources {
    pub(crate) db: Db,
    pub(crate) vault: Vault,
    /// For hosts a user chose: feed URLs.
    pub(crate) safe: SafeClient,
    /// For hosts the operator configured: the hub and YouTube.
    pub(crate) trusted: HttpClient,
    pub(crate) config: Arc<TriggerConfig>,
    /// Writes manual events and webhooks that arrive together in one transaction; started with
    /// the first.
    intake: Arc<OnceLock<Intake>>,
    /// Events the intake wrote lately, for their `source.event` jobs (see [`Recent`]).
    recent: Arc<Recent>,
    /// The (team, source) pairs a manual event was lately added to, so the next one does not
    /// read the source again: kept a second, or until a source is deleted in this process.
    live: ReadCache<(Uuid, Uuid), ()>,
}

/// The [`herald_store::Tx::changed`] topic of deleting a source.
const DELETED: &str = "sources_deleted";

/// Events the intake wrote, by id, with their team, until their `source.event` job takes them:
/// nearly always that job runs in this process a moment later, and takes its event from here
/// rather than read it back (one read fewer per event). Only what the intake wrote comes here,
/// and nothing changes those events, so a copy is as good as the row. A job that finds nothing
/// (run after a restart, on another node, or again) reads the row. Bounded: when full, it
/// forgets everything (entries whose jobs ran on another node would otherwise stay).
#[derive(Default)]
pub(crate) struct Recent(std::sync::Mutex<std::collections::HashMap<Uuid, (Uuid, EventView)>>);

/// The most events [`Recent`] holds (a few MB at most).
const RECENT_MAX: usize = 4096;

impl Recent {
    /// Keeps an event of `team`.
    fn put(&self, team: Uuid, e: EventView) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= RECENT_MAX {
            map.clear();
        }
        map.insert(e.id, (team, e));
    }

    fn take(&self, id: Uuid) -> Option<(Uuid, EventView)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }
}

pub(crate) fn store(e: sqlx::Error) -> Error {
    StoreError::Sqlx(e).into()
}

#[derive(sqlx::FromRow, Clone, Debug)]
pub(crate) struct SourceRow {
    pub id: Uuid,
    pub team_id: Uuid,
    pub kind: String,
    pub name: String,
    pub config: String,
    pub secret: Option<String>,
    pub active: bool,
    pub next_run_at: Option<Ts>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub body_hash: Option<String>,
    pub baselined: bool,
    pub failures: i64,
    pub last_run_at: Option<Ts>,
    pub last_ok_at: Option<Ts>,
    pub last_error: Option<String>,
    pub last_error_code: Option<String>,
    pub event_count: i64,
    pub websub_state: String,
    pub websub_topic: Option<String>,
    pub websub_lease_until: Option<Ts>,
    pub websub_error: Option<String>,
    pub created_at: Ts,
    pub updated_at: Ts,
}

pub(crate) const SOURCE_COLS: &str = "id, team_id, kind, name, config, secret, active, next_run_at, etag, last_modified, \
    body_hash, baselined, failures, last_run_at, last_ok_at, last_error, last_error_code, event_count, \
    websub_state, websub_topic, websub_lease_until, websub_error, created_at, updated_at";

impl SourceRow {
    pub fn kind(&self) -> Kind {
        Kind::parse(&self.kind).unwrap_or(Kind::Manual)
    }

    pub fn settings(&self) -> Settings {
        serde_json::from_str(&self.config).unwrap_or_default()
    }

    pub fn secret_binding(&self) -> String {
        secret_binding(self.team_id, self.id)
    }
}

pub(crate) fn secret_binding(team: Uuid, id: Uuid) -> String {
    herald_vault::binding("sources", "secret", Some(&team), &id)
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub id: Uuid,
    pub source_id: Uuid,
    pub kind: String,
    pub external_id: String,
    pub data: String,
    pub received_at: Ts,
    pub updated_at: Option<Ts>,
}

pub(crate) const EVENT_COLS: &str = "id, source_id, kind, external_id, data, received_at, updated_at";

impl EventRow {
    pub fn view(self) -> EventView {
        EventView {
            id: self.id,
            source_id: self.source_id,
            kind: self.kind,
            external_id: self.external_id,
            data: serde_json::from_str(&self.data).unwrap_or(Value::Null),
            received_at: self.received_at.0,
            updated_at: self.updated_at.map(|t| t.0),
        }
    }
}

/// Filters for `GET /api/v1/events`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    pub source: Option<Uuid>,
    pub kind: Option<String>,
    /// Received at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Received before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    /// 1–200, default 50.
    pub limit: Option<u32>,
}

/// One page of events, newest first.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    pub next_cursor: Option<Uuid>,
}

impl Sources {
    pub fn new(db: Db, vault: Vault, safe: SafeClient, trusted: HttpClient, config: TriggerConfig) -> Sources {
        let mut config = config;
        config.public_url = config.public_url.map(|u| u.trim_end_matches('/').to_string());
        let live = ReadCache::new(&db, DELETED);
        Sources {
            db,
            vault,
            safe,
            trusted,
            config: Arc::new(config),
            intake: Arc::default(),
            recent: Arc::default(),
            live,
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn config(&self) -> &TriggerConfig {
        &self.config
    }

    pub(crate) async fn row(&self, id: Uuid) -> Result<Option<SourceRow>, Error> {
        let sql = format!("SELECT {SOURCE_COLS} FROM sources WHERE id = $1 AND deleted = $2");
        on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).bind(false).fetch_optional(c).await).map_err(store)
    }

    pub(crate) async fn team_row(&self, team: Uuid, id: Uuid) -> Result<SourceRow, Error> {
        match self.row(id).await? {
            Some(r) if r.team_id == team => Ok(r),
            _ => Err(Error::not_found("source")),
        }
    }

    async fn team_timezone(&self, team: Uuid) -> Result<String, Error> {
        let tz: Option<(String,)> = on_read!(self.db, c => sqlx::query_as("SELECT timezone FROM teams WHERE id = $1")
            .bind(team).fetch_optional(c).await)
        .map_err(store)?;
        Ok(tz.map(|t| t.0).unwrap_or_else(|| "UTC".into()))
    }

    /// Whether WebSub can work here, and if not, why: the hub must be able to reach
    /// HERALD_PUBLIC_URL. A loopback or private public URL only works with a hub on the same
    /// network (a test hub, a self-hosted one).
    pub fn push_unavailable(&self) -> Option<String> {
        let Some(public) = &self.config.public_url else {
            return Some(
                "HERALD_PUBLIC_URL is not set, so the hub cannot call back; the channel is polled only".into(),
            );
        };
        let local = |u: &str| url::Url::parse(u).ok().and_then(|u| u.host_str().map(is_local_host)).unwrap_or(false);
        if local(public) && !local(&self.config.websub_hub) {
            return Some(format!(
                "HERALD_PUBLIC_URL ({public}) is not reachable from the internet, so the hub cannot call back; \
                 the channel is polled only"
            ));
        }
        None
    }

    pub(crate) fn callback(&self, id: Uuid) -> Option<String> {
        self.config.public_url.as_ref().map(|p| format!("{p}/hooks/websub/{id}"))
    }

    pub(crate) fn view(&self, r: SourceRow, secret: Option<String>) -> SourceView {
        let kind = r.kind();
        let last_error = r
            .last_error_code
            .clone()
            .map(|code| SourceError { code, message: r.last_error.clone().unwrap_or_default() });
        let websub = (kind == Kind::YoutubeChannel).then(|| WebSubStatus {
            state: r.websub_state.clone(),
            topic: r.websub_topic.clone(),
            callback: self.callback(r.id),
            lease_expires_at: r.websub_lease_until.map(|t| t.0),
            note: r
                .websub_error
                .clone()
                .or_else(|| self.push_unavailable().filter(|_| r.websub_state == "unavailable")),
        });
        let hook_url = (kind == Kind::Webhook).then(|| {
            let path = format!("/hooks/in/{}", r.id);
            self.config.public_url.as_ref().map_or(path.clone(), |p| format!("{p}{path}"))
        });
        SourceView {
            id: r.id,
            kind,
            name: r.name.clone(),
            config: r.settings(),
            active: r.active,
            status: SourceStatus {
                next_run_at: r.next_run_at.filter(|_| r.active && kind.is_timed()).map(|t| t.0),
                last_run_at: r.last_run_at.map(|t| t.0),
                last_ok_at: r.last_ok_at.map(|t| t.0),
                last_error,
                failures: r.failures,
                event_count: r.event_count,
                websub,
            },
            hook_url,
            secret,
            created_at: r.created_at.0,
            updated_at: r.updated_at.0,
        }
    }

    /// Checks and normalises `settings` for `kind`: resolves a YouTube channel, parses a cron
    /// expression, checks a feed URL against the SSRF rules.
    async fn normalise(&self, team: Uuid, kind: Kind, mut s: Settings) -> Result<Settings, Error> {
        s.check_fields(kind)?;
        if let Some(i) = s.interval_secs
            && !(60..=86_400).contains(&i)
        {
            return Err(invalid("config.interval_secs", "interval_secs must be between 60 and 86400 seconds"));
        }
        match kind {
            Kind::Feed => {
                let url = s.url.as_deref().map(str::trim).filter(|u| !u.is_empty()).ok_or_else(|| {
                    invalid("config.url", "a feed source needs `url`: the address of an RSS, Atom or JSON feed")
                })?;
                let parsed = url::Url::parse(url).map_err(|e| {
                    invalid("config.url", format!("`{url}` is not a URL ({e}); give an http(s) feed address"))
                })?;
                // The SSRF rules that can be checked without a lookup: scheme, port, literal addresses.
                let _checked = self.safe.request(herald_http::Method::GET, parsed.as_str()).map_err(|e| {
                    invalid("config.url", e.to_string())
                        .with_details(json!({"field": "config.url", "code": "ssrf_blocked_destination"}))
                })?;
                s.url = Some(parsed.to_string());
                if s.backfill.is_some_and(|b| b > 100) {
                    return Err(invalid("config.backfill", "backfill is at most 100 items"));
                }
            }
            Kind::YoutubeChannel => {
                let given = s.channel.clone().or_else(|| s.channel_id.clone()).ok_or_else(|| {
                    invalid("config.channel", "a youtube_channel source needs `channel`: a channel id (UC…), a handle (@name) or a channel URL")
                })?;
                s.channel_id = Some(youtube::resolve_channel(&self.trusted, &self.config.youtube_base, &given).await?);
                s.channel = Some(given);
            }
            Kind::Schedule => {
                let cron = s.cron.as_deref().ok_or_else(|| {
                    invalid("config.cron", "a schedule source needs `cron`, e.g. \"0 9 * * 1-5\" for 09:00 on weekdays")
                })?;
                schedule::parse(cron).map_err(|e| invalid("config.cron", e))?;
                let tz = match &s.timezone {
                    Some(tz) => tz.clone(),
                    None => self.team_timezone(team).await?,
                };
                let tz = herald_core::time::parse_timezone(&tz).map_err(|e| invalid("config.timezone", e))?;
                s.timezone = Some(tz.name().to_string());
                s.missed.get_or_insert_default();
            }
            Kind::Webhook => {
                s.verify.get_or_insert_default();
                if let Some(max) = s.max_bytes
                    && !(1..=MAX_HOOK_BYTES as u64).contains(&max)
                {
                    return Err(invalid(
                        "config.max_bytes",
                        format!("max_bytes must be between 1 and {MAX_HOOK_BYTES}"),
                    ));
                }
                if let Some(h) = &s.signature_header
                    && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
                {
                    return Err(invalid("config.signature_header", "signature_header must be an HTTP header name"));
                }
            }
            Kind::Manual => {}
        }
        Ok(s)
    }

    /// The first run: now for polls; the next cron time for schedules.
    fn first_run(kind: Kind, s: &Settings, now: DateTime<Utc>) -> Option<Ts> {
        match kind {
            Kind::Feed | Kind::YoutubeChannel => Some(Ts(now)),
            Kind::Schedule => schedule::next_after(s, now).map(Ts),
            Kind::Webhook | Kind::Manual => None,
        }
    }

    pub async fn create(&self, p: &Principal, new: NewSource) -> Result<SourceView, Error> {
        let (team, _) = authorize(p, Action::WriteContent)?;
        let name = check_name(&new.name)?;
        let settings = self.normalise(team, new.kind, new.config).await?;
        let id = Uuid::now_v7();
        let now = Ts::now();
        let (secret, shown) = match new.kind {
            // The hub signs with it; < 200 bytes as WebSub requires.
            Kind::YoutubeChannel => (Some(hex::encode(rand::rng().random::<[u8; 24]>())), None),
            Kind::Webhook => {
                use base64::Engine;
                let s = format!(
                    "whsec_{}",
                    base64::engine::general_purpose::STANDARD.encode(rand::rng().random::<[u8; 24]>())
                );
                (Some(s.clone()), Some(s))
            }
            _ => (None, None),
        };
        let sealed = secret.as_ref().map(|s| self.vault.seal(s, &secret_binding(team, id)));
        let (websub_state, topic) = match (&settings.channel_id, self.push_unavailable()) {
            (Some(channel), None) => ("pending", Some(youtube::topic(channel))),
            (Some(channel), Some(_)) => ("unavailable", Some(youtube::topic(channel))),
            _ => ("off", None),
        };
        let mut tx = self.db.begin().await?;
        exec!(
            tx,
            "INSERT INTO sources (id, team_id, kind, name, config, secret, active, next_run_at, websub_state, websub_topic, \
             created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
            id,
            team,
            new.kind.as_str(),
            &name,
            serde_json::to_string(&settings).unwrap_or_default(),
            &sealed,
            new.active,
            Self::first_run(new.kind, &settings, now.0),
            websub_state,
            &topic,
            p.user_id,
            now
        )
        .map_err(store)?;
        if websub_state == "pending" && new.active {
            crate::websub::enqueue(&mut tx, id, "subscribe", None).await?;
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "source.create")
                .target("source", id)
                .details(json!({"kind": new.kind.as_str(), "name": name})),
        )
        .await?;
        tx.commit().await?;
        self.db.wakeups().ring(crate::poll::WAKE);
        let row = self.team_row(team, id).await?;
        Ok(self.view(row, shown))
    }

    pub async fn list(&self, p: &Principal) -> Result<Vec<SourceView>, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let sql = format!(
            "SELECT {SOURCE_COLS} FROM sources WHERE team_id = $1 AND deleted = $2 ORDER BY created_at DESC, id DESC"
        );
        let rows: Vec<SourceRow> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).bind(false).fetch_all(c).await).map_err(store)?;
        Ok(rows.into_iter().map(|r| self.view(r, None)).collect())
    }

    pub async fn get(&self, p: &Principal, id: Uuid) -> Result<SourceView, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        Ok(self.view(self.team_row(team, id).await?, None))
    }

    pub async fn update(&self, p: &Principal, id: Uuid, upd: SourceUpdate) -> Result<SourceView, Error> {
        let (team, _) = authorize(p, Action::WriteContent)?;
        let row = self.team_row(team, id).await?;
        let kind = row.kind();
        let name = upd.name.as_deref().map(check_name).transpose()?.unwrap_or(row.name.clone());
        let settings = match upd.config {
            Some(s) => self.normalise(team, kind, s).await?,
            None => row.settings(),
        };
        let active = upd.active.unwrap_or(row.active);
        let changed_target = settings != row.settings();
        let now = Ts::now();
        // A new URL, channel or cron starts over: the next run is now (or the next cron time),
        // and a new feed or channel is baselined again.
        let next_run = if changed_target || (active && !row.active) {
            Self::first_run(kind, &settings, now.0)
        } else {
            row.next_run_at
        };
        let rebaseline = changed_target && matches!(kind, Kind::Feed | Kind::YoutubeChannel);
        let topic = settings.channel_id.as_deref().map(youtube::topic);
        let mut tx = self.db.begin().await?;
        exec!(
            tx,
            "UPDATE sources SET name = $2, config = $3, active = $4, next_run_at = $5, updated_at = $6, \
             baselined = CASE WHEN $7 THEN $8 ELSE baselined END, etag = CASE WHEN $7 THEN NULL ELSE etag END, \
             last_modified = CASE WHEN $7 THEN NULL ELSE last_modified END, body_hash = CASE WHEN $7 THEN NULL ELSE body_hash END, \
             websub_topic = COALESCE($9, websub_topic) WHERE id = $1",
            id,
            &name,
            serde_json::to_string(&settings).unwrap_or_default(),
            active,
            next_run,
            now,
            rebaseline,
            false,
            &topic
        )
        .map_err(store)?;
        if kind == Kind::YoutubeChannel && self.push_unavailable().is_none() {
            let wanted = active && (changed_target || !matches!(row.websub_state.as_str(), "pending" | "subscribed"));
            if wanted {
                exec!(tx, "UPDATE sources SET websub_state = $2, websub_error = NULL WHERE id = $1", id, "pending")
                    .map_err(store)?;
                crate::websub::enqueue(&mut tx, id, "subscribe", None).await?;
            } else if !active && matches!(row.websub_state.as_str(), "pending" | "subscribed") {
                // Paused: stop the pushes; resuming subscribes again.
                exec!(tx, "UPDATE sources SET websub_state = $2 WHERE id = $1", id, "off").map_err(store)?;
                crate::websub::enqueue(&mut tx, id, "unsubscribe", row.websub_topic.clone()).await?;
            }
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "source.update")
                .target("source", id)
                .details(json!({"name": name, "active": active})),
        )
        .await?;
        tx.commit().await?;
        self.db.wakeups().ring(crate::poll::WAKE);
        self.get(p, id).await
    }

    /// Deletes a source and its events. A subscribed YouTube channel is unsubscribed at the hub
    /// first: the row stays hidden until the hub confirms (or an hour passes).
    pub async fn delete(&self, p: &Principal, id: Uuid) -> Result<SourceView, Error> {
        let (team, _) = authorize(p, Action::DeleteContent)?;
        let row = self.team_row(team, id).await?;
        let view = self.view(row.clone(), None);
        let mut tx = self.db.begin().await?;
        tx.changed(DELETED);
        if matches!(row.websub_state.as_str(), "pending" | "subscribed") {
            exec!(
                tx,
                "UPDATE sources SET deleted = $2, active = $3, websub_state = $4, next_run_at = NULL, updated_at = $5 WHERE id = $1",
                id,
                true,
                false,
                "unsubscribing",
                Ts::now()
            )
            .map_err(store)?;
            crate::websub::enqueue(&mut tx, id, "unsubscribe", row.websub_topic.clone()).await?;
        } else {
            exec!(tx, "DELETE FROM sources WHERE id = $1", id).map_err(store)?;
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "source.delete").target("source", id).details(json!({"name": row.name})),
        )
        .await?;
        tx.commit().await?;
        Ok(view)
    }

    /// A manual event (any kind of source takes them; scripts and tests use it).
    pub async fn add_event(&self, p: &Principal, id: Uuid, new: NewEvent) -> Result<EventView, Error> {
        let (team, _) = authorize(p, Action::WriteContent)?;
        // Only that the source is the team's (and not deleted) matters here. One deleted through
        // another process (another node, the CLI) can still take events for up to a second.
        self.live.get_or_load((team, id), async { self.team_row(team, id).await.map(drop) }).await?;
        let external = new.external_id.unwrap_or_else(|| Uuid::now_v7().to_string());
        if external.is_empty() || external.len() > 500 {
            return Err(invalid("external_id", "external_id must be 1 to 500 characters"));
        }
        if serde_json::to_vec(&new.data).map(|v| v.len()).unwrap_or(0) > MAX_HOOK_BYTES {
            return Err(Error::new(ErrorCode::PayloadTooLarge, "an event's data is at most 1 MiB"));
        }
        let incoming =
            Incoming { team, source: id, kind: "manual", external_id: external, data: new.data, touch: false };
        let external = incoming.external_id.clone();
        match self.receive(incoming).await? {
            Some(event) => Ok(event),
            None => Err(Error::new(ErrorCode::Conflict, format!("this source already has an event `{external}`"))),
        }
    }

    /// Stores a manual event or an inbound webhook through the intake (`None`: the source had
    /// it already), and keeps it for its `source.event` job ([`Recent`]). On SQLite it is kept
    /// here, on the caller's task, rather than by the intake, whose loop holds SQLite's writer;
    /// on PostgreSQL the intake keeps it before its commit, which may start the job at once
    /// (the queue's hand-off), before this task runs again.
    pub(crate) async fn receive(&self, incoming: Incoming) -> Result<Option<EventView>, Error> {
        let team = incoming.team;
        // The intake's task gets a handle without the intake, which it would otherwise keep open
        // (and itself running, and these sources alive) after every other handle was dropped.
        let stored = self
            .intake
            .get_or_init(|| intake::spawn(Sources { intake: Arc::default(), ..self.clone() }))
            .write(incoming)
            .await?;
        if let Some(e) = &stored
            && self.db.backend() == Backend::Sqlite
        {
            self.recent.put(team, e.clone());
        }
        Ok(stored)
    }

    /// Keeps events for their jobs ahead of the commit that writes them (see [`Sources::receive`]).
    /// Should the commit fail, nothing asks for them: no job of theirs exists.
    pub(crate) fn keep_recent(&self, team: Uuid, e: &EventView) {
        self.recent.put(team, e.clone());
    }

    pub async fn event(&self, p: &Principal, id: Uuid) -> Result<EventView, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let sql = format!("SELECT {EVENT_COLS} FROM events WHERE id = $1 AND team_id = $2");
        let row: Option<EventRow> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).bind(team).fetch_optional(c).await).map_err(store)?;
        row.map(EventRow::view).ok_or_else(|| Error::not_found("event"))
    }

    /// An event by id, whatever its team, for its dispatch job: taken from [`Recent`] when the
    /// intake wrote it lately (so only once), else read.
    pub async fn event_by_id(&self, id: Uuid) -> Result<Option<(Uuid, EventView)>, Error> {
        if let Some(found) = self.recent.take(id) {
            return Ok(Some(found));
        }
        let sql = format!("SELECT team_id, {EVENT_COLS} FROM events WHERE id = $1");
        #[derive(sqlx::FromRow)]
        struct Row {
            team_id: Uuid,
            #[sqlx(flatten)]
            event: EventRow,
        }
        let row: Option<Row> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await)
                .map_err(store)?;
        Ok(row.map(|r| (r.team_id, r.event.view())))
    }

    pub async fn events(&self, p: &Principal, q: EventQuery) -> Result<EventPage, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let limit = q.limit.unwrap_or(50).clamp(1, 200) as i64;
        let mut sql = format!("SELECT {EVENT_COLS} FROM events WHERE team_id = $1");
        let mut n = 1;
        let mut next = |sql: &mut String, cond: &str| {
            n += 1;
            sql.push_str(&format!(" AND {cond} ${n}"));
        };
        if q.source.is_some() {
            next(&mut sql, "source_id =");
        }
        if q.kind.is_some() {
            next(&mut sql, "kind =");
        }
        if q.since.is_some() {
            next(&mut sql, "received_at >=");
        }
        if q.until.is_some() {
            next(&mut sql, "received_at <");
        }
        if q.cursor.is_some() {
            // Ids are UUIDv7, so they sort by time like received_at.
            next(&mut sql, "id <");
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        macro_rules! run {
            ($c:expr) => {{
                let mut query = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(team);
                if let Some(v) = q.source {
                    query = query.bind(v);
                }
                if let Some(v) = &q.kind {
                    query = query.bind(v.clone());
                }
                if let Some(v) = q.since {
                    query = query.bind(Ts(v));
                }
                if let Some(v) = q.until {
                    query = query.bind(Ts(v));
                }
                if let Some(v) = q.cursor {
                    query = query.bind(v);
                }
                query.fetch_all($c).await
            }};
        }
        let mut rows: Vec<EventRow> = on_read!(self.db, c => run!(c)).map_err(store)?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more { rows.last().map(|r| r.id) } else { None };
        Ok(EventPage { events: rows.into_iter().map(EventRow::view).collect(), next_cursor })
    }
}

fn check_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(invalid("name", format!("name must be 1 to {MAX_NAME} characters")));
    }
    Ok(name.to_string())
}

/// Loopback, private, link-local or `localhost`: a host the internet cannot reach.
pub(crate) fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost") || host.ends_with(".local") {
        return true;
    }
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| herald_http::guard::forbidden_reason(ip).is_some())
}

/// Stores an event unless (source, external id) exists, and enqueues its hand-off in the same
/// transaction when `dispatch`. Returns the new event, or `None` for a duplicate. One row of
/// [`insert_events`](crate::intake::insert_events).
pub(crate) async fn insert_event(
    tx: &mut Tx,
    source: &SourceRow,
    kind: &str,
    external_id: &str,
    data: &Value,
    dispatch: bool,
) -> Result<Option<EventView>, Error> {
    let row = NewEventRow { team: source.team_id, source: source.id, kind, external_id, data };
    Ok(crate::intake::insert_events(tx, &[row], dispatch).await?.pop().flatten())
}

/// Counts `n` new events of `source`. Deferred ([`Tx::defer`]): it goes with the commit, and
/// fails it if it fails.
pub(crate) fn bump_count(tx: &mut Tx, source: Uuid, n: i64) {
    if n > 0 {
        tx.defer("UPDATE sources SET event_count = event_count + $1 WHERE id = $2").bind(n).bind(source);
    }
}

/// A push source (an inbound webhook) ran, and ran well, now. Deferred, like [`bump_count`].
pub(crate) fn touch(tx: &mut Tx, source: Uuid) {
    let now = Ts::now();
    tx.defer("UPDATE sources SET last_run_at = $1, last_ok_at = $2 WHERE id = $3").bind(now).bind(now).bind(source);
}

#[cfg(test)]
mod tests {
    use super::{RECENT_MAX, Recent};
    use crate::model::EventView;
    use uuid::Uuid;

    fn event() -> EventView {
        EventView {
            id: Uuid::now_v7(),
            source_id: Uuid::now_v7(),
            kind: "manual".into(),
            external_id: "x".into(),
            data: serde_json::json!({"item": {"title": "t"}}),
            received_at: chrono::Utc::now(),
            updated_at: None,
        }
    }

    #[test]
    fn a_recent_event_is_taken_once_with_its_team_and_a_full_cache_starts_over() {
        let recent = Recent::default();
        let (team, e) = (Uuid::now_v7(), event());
        recent.put(team, e.clone());
        let (t, got) = recent.take(e.id).expect("kept");
        assert_eq!((t, got.id, got.data), (team, e.id, e.data));
        assert!(recent.take(e.id).is_none(), "taken once: a job run again reads the row");

        let first = event();
        recent.put(team, first.clone());
        (1..RECENT_MAX).for_each(|_| recent.put(team, event()));
        assert!(recent.take(first.id).is_some(), "{RECENT_MAX} fit");
        (0..2).for_each(|_| recent.put(team, event()));
        let last = event();
        recent.put(team, last.clone());
        assert!(recent.take(last.id).is_some(), "after a clear, new events are kept");
        assert!(recent.0.lock().unwrap().len() < RECENT_MAX, "a full cache forgets what it held");
    }
}

//! Platform connections: one account on one platform, owned by a team.
//!
//! Credentials are checked live against the platform before anything is saved, sealed with
//! `herald-vault` (the row's team and id are the associated data, so a sealed value moved to
//! another row does not open), and never returned. A connection is `active`, `needs_reauth`
//! (the platform refused its credentials; deliveries to it stop until it is fixed) or `error`
//! (the last check failed for another reason). Every change is audited, and the team's
//! `connections` quota is checked in the same transaction as the insert.
#![forbid(unsafe_code)]

pub mod delivery;

use chrono::{DateTime, Utc};
use herald_accounts::audit::{self, Actor, Event};
use herald_accounts::{Accounts, Principal, Quota, authorize};
use herald_core::{Action, Error, ErrorCode};
use herald_platforms::{Adapter, Connection, Credentials, ErrorClass, Net, PlatformError};
use herald_store::{Db, Ids, ReadCache, StoreError, Ts, exec, on_read, on_tx};
use herald_vault::{Vault, binding};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

/// A connection's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    NeedsReauth,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::NeedsReauth => "needs_reauth",
            Status::Error => "error",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "active" => Status::Active,
            "needs_reauth" => Status::NeedsReauth,
            _ => Status::Error,
        }
    }

    /// The status a failed check or delivery leaves behind.
    pub fn after(e: &PlatformError) -> Status {
        match e.class {
            ErrorClass::Auth => Status::NeedsReauth,
            _ => Status::Error,
        }
    }
}

/// The last failure, as the platform explained it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastError {
    /// `auth`, `invalid`, `transient`, `rate_limited` or `unknown_outcome`.
    pub class: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// A connection as the API shows it: never its credentials.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionView {
    pub id: Uuid,
    pub platform: String,
    pub name: String,
    /// The account as the platform names it (`@bot`, `@me@instance`, a DID, an npub).
    pub account: String,
    pub status: Status,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub last_error: Option<LastError>,
    pub verified_at: Option<DateTime<Utc>>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What creating a connection takes.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    /// A platform id from `GET /api/v1/platforms`.
    pub platform: String,
    /// Defaults to the account name the platform reports.
    pub name: Option<String>,
    /// The secret part: tokens, passwords, keys. Checked live, sealed, never returned.
    #[schema(value_type = Object)]
    pub credentials: serde_json::Value,
    /// The non-secret part: chat, channel, instance, room, relays.
    #[schema(value_type = Object)]
    #[serde(default = "empty_object")]
    pub settings: serde_json::Value,
}

/// A change to a connection. New credentials or settings are checked live before they are saved.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionUpdate {
    pub name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub credentials: Option<serde_json::Value>,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

#[derive(Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    platform: String,
    name: String,
    account: String,
    status: String,
    settings: String,
    credentials: String,
    last_error: Option<String>,
    last_error_class: Option<String>,
    last_error_at: Option<Ts>,
    verified_at: Option<Ts>,
    created_by: Option<Uuid>,
    created_at: Ts,
    updated_at: Ts,
}

const COLS: &str = "id, platform, name, account, status, settings, credentials, last_error, \
                    last_error_class, last_error_at, verified_at, created_by, created_at, updated_at";

impl Row {
    fn view(&self) -> ConnectionView {
        ConnectionView {
            id: self.id,
            platform: self.platform.clone(),
            name: self.name.clone(),
            account: self.account.clone(),
            status: Status::parse(&self.status),
            settings: serde_json::from_str(&self.settings).unwrap_or_else(|_| empty_object()),
            last_error: match (&self.last_error, &self.last_error_class, &self.last_error_at) {
                (Some(m), Some(c), Some(at)) => Some(LastError { class: c.clone(), message: m.clone(), at: at.0 }),
                _ => None,
            },
            verified_at: self.verified_at.map(|t| t.0),
            created_by: self.created_by,
            created_at: self.created_at.0,
            updated_at: self.updated_at.0,
        }
    }
}

fn store(e: sqlx::Error) -> Error {
    StoreError::Sqlx(e).into()
}

fn invalid(field: &str, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ValidationFailed, msg).with_details(serde_json::json!({"field": field}))
}

fn aad(team: Uuid, id: Uuid) -> String {
    binding("connections", "credentials", Some(&team), &id)
}

/// The connections service.
#[derive(Clone)]
pub struct Connections {
    db: Db,
    vault: Vault,
    accounts: Accounts,
    net: Net,
    /// Buckets this process already sized, so pacing a busy connection costs no write.
    paced: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (f64, f64)>>>,
    /// Each team's rows (credentials still sealed), read once a second rather than once a post,
    /// for checking content against them; see [`Connections::load_many_kept`].
    kept: ReadCache<Uuid, Arc<Vec<Row>>>,
}

/// The [`herald_store::Tx::changed`] topic of writes to `connections`: every transaction that
/// writes the table marks it.
const CHANGED: &str = "connections";

/// A connection loaded for a delivery: the decrypted credentials live only in this value.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub view: ConnectionView,
    pub team: Uuid,
    pub connection: Connection,
}

impl Connections {
    pub fn new(accounts: Accounts, net: Net) -> Connections {
        Connections {
            db: accounts.db().clone(),
            vault: accounts.vault().clone(),
            kept: ReadCache::new(accounts.db(), CHANGED),
            accounts,
            net,
            paced: Default::default(),
        }
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    fn adapter(platform: &str) -> Result<&'static dyn Adapter, Error> {
        herald_platforms::adapter(platform).ok_or_else(|| {
            let known: Vec<&str> = herald_platforms::adapters().iter().map(|a| a.platform().id).collect();
            invalid("platform", format!("unknown platform `{platform}`; one of: {}", known.join(", ")))
        })
    }

    /// Checks the credentials live, then saves the connection (`manage_connections`).
    pub async fn create(&self, p: &Principal, new: NewConnection) -> Result<ConnectionView, Error> {
        let (team, _) = authorize(p, Action::ManageConnections)?;
        self.create_in(team, &Actor::of(p), new).await
    }

    /// Creates a connection in `team` for `actor` (the CLI on the local data dir uses this).
    pub async fn create_in(&self, team: Uuid, actor: &Actor, new: NewConnection) -> Result<ConnectionView, Error> {
        let adapter = Self::adapter(&new.platform)?;
        if !new.credentials.is_object() {
            return Err(invalid("credentials", "credentials must be a JSON object"));
        }
        if !new.settings.is_object() {
            return Err(invalid("settings", "settings must be a JSON object"));
        }
        let name = new.name.as_deref().map(check_name).transpose()?;
        // Fail fast on the quota before calling the platform; the insert checks it again.
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        self.check_quota(&mut tx, team).await?;
        drop(tx);
        let id = Uuid::now_v7();
        let probe = Connection { id, settings: new.settings, credentials: Credentials(new.credentials) };
        let verified = adapter.verify(&self.net, &probe).await.map_err(Error::from)?;
        let name = name.unwrap_or_else(|| verified.account.chars().take(100).collect());
        let now = Ts::now();
        let sealed = self.vault.seal(&verified.credentials.0.to_string(), &aad(team, id));
        let settings = verified.settings.to_string();
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        tx.changed(CHANGED);
        self.check_quota(&mut tx, team).await?;
        exec!(
            tx,
            "INSERT INTO connections (id, team_id, platform, name, account, status, settings, credentials, \
             verified_at, created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $8, $8)",
            id,
            team,
            adapter.platform().id,
            &name,
            &verified.account,
            &settings,
            &sealed,
            now,
            actor.user
        )
        .map_err(store)?;
        audit::record(
            &mut tx,
            actor,
            Event::new(Some(team), "connection.created").target("connection", id).details(serde_json::json!({
                "platform": adapter.platform().id, "name": name, "account": verified.account,
            })),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        self.get(team, id).await
    }

    /// Room for one more connection under the team's quota, counted in `tx`.
    async fn check_quota(&self, tx: &mut herald_store::Tx, team: Uuid) -> Result<(), Error> {
        let used: i64 = on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM connections WHERE team_id = $1")
            .bind(team).fetch_one(&mut *c).await)
        .map_err(store)?;
        self.accounts.check_quota(tx, team, Quota::Connections, used, 1).await
    }

    async fn row(&self, team: Uuid, id: Uuid) -> Result<Row, Error> {
        let sql = format!("SELECT {COLS} FROM connections WHERE team_id = $1 AND id = $2");
        let row: Option<Row> = on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(id).fetch_optional(c).await)
        .map_err(store)?;
        row.ok_or_else(|| Error::not_found("connection"))
    }

    pub async fn get(&self, team: Uuid, id: Uuid) -> Result<ConnectionView, Error> {
        Ok(self.row(team, id).await?.view())
    }

    /// The team's connections, oldest first, optionally of one platform.
    pub async fn list(&self, team: Uuid, platform: Option<&str>) -> Result<Vec<ConnectionView>, Error> {
        let sql = format!(
            "SELECT {COLS} FROM connections WHERE team_id = $1 AND ($2 IS NULL OR platform = $2) ORDER BY created_at, id"
        );
        let rows: Vec<Row> = on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(platform).fetch_all(c).await)
        .map_err(store)?;
        Ok(rows.iter().map(Row::view).collect())
    }

    /// Loads a connection with its credentials opened, for a delivery or a check.
    pub async fn load(&self, team: Uuid, id: Uuid) -> Result<Loaded, Error> {
        let row = self.row(team, id).await?;
        self.open(team, row)
    }

    /// Opens a row's credentials in memory.
    fn open(&self, team: Uuid, row: Row) -> Result<Loaded, Error> {
        let id = row.id;
        let secret = self.vault.open(&row.credentials, &aad(team, id)).map_err(|e| {
            Error::internal(format!("the credentials of connection {id} cannot be opened ({e}); is the key missing?"))
        })?;
        let credentials = serde_json::from_str(secret.expose())
            .map_err(|_| Error::internal(format!("the stored credentials of connection {id} are not JSON")))?;
        let view = row.view();
        let connection = Connection { id, settings: view.settings.clone(), credentials: Credentials(credentials) };
        Ok(Loaded { view, team, connection })
    }

    /// [`load`](Self::load) for many connections of one team in one query. Connections that are
    /// gone, or whose credentials do not open, are left out: [`load`](Self::load) says why.
    pub async fn load_many(&self, team: Uuid, ids: &[Uuid]) -> Result<HashMap<Uuid, Loaded>, Error> {
        let rows = self.rows(team, ids).await?;
        Ok(rows.into_iter().filter_map(|row| Some((row.id, self.open(team, row).ok()?))).collect())
    }

    /// [`get`](Self::get) for many connections of one team in one query; those that are gone are
    /// left out.
    pub async fn get_many(&self, team: Uuid, ids: &[Uuid]) -> Result<HashMap<Uuid, ConnectionView>, Error> {
        Ok(self.rows(team, ids).await?.iter().map(|row| (row.id, row.view())).collect())
    }

    async fn rows(&self, team: Uuid, ids: &[Uuid]) -> Result<Vec<Row>, Error> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let backend = self.db.backend();
        let sql =
            backend.sql(format!("SELECT {COLS} FROM connections WHERE team_id = $1 AND id {}", backend.in_ids(2)));
        on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).bind(Ids(&ids)).fetch_all(c).await)
            .map_err(store)
    }

    /// [`load_many`](Self::load_many) for checking content against connections (a post's
    /// create, a workflow's publish step), from the team's rows as read at most a second ago:
    /// a change made through this process shows at once, one made elsewhere (another node, the
    /// CLI on the same SQLite file) within the second. Never for calling a platform: a delivery
    /// loads the row as it is now, since another node may have just rotated its credentials.
    pub async fn load_many_kept(&self, team: Uuid, ids: &[Uuid]) -> Result<HashMap<Uuid, Loaded>, Error> {
        let rows = self.team_rows_kept(team).await?;
        Ok(rows
            .iter()
            .filter(|row| ids.contains(&row.id))
            .filter_map(|row| Some((row.id, self.open(team, row.clone()).ok()?)))
            .collect())
    }

    /// [`list`](Self::list) from the team's rows as read at most a second ago (see
    /// [`load_many_kept`](Self::load_many_kept)).
    pub async fn list_kept(&self, team: Uuid, platform: Option<&str>) -> Result<Vec<ConnectionView>, Error> {
        let rows = self.team_rows_kept(team).await?;
        Ok(rows.iter().filter(|r| platform.is_none_or(|p| r.platform == p)).map(Row::view).collect())
    }

    /// All the team's rows, oldest first, kept for a second.
    async fn team_rows_kept(&self, team: Uuid) -> Result<Arc<Vec<Row>>, Error> {
        let db = &self.db;
        self.kept
            .get_or_load(team, async {
                let sql = format!("SELECT {COLS} FROM connections WHERE team_id = $1 ORDER BY created_at, id");
                on_read!(db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).fetch_all(c).await)
                    .map(Arc::new)
                    .map_err(store)
            })
            .await
    }

    /// Renames, re-configures or re-authorises a connection. New settings or credentials are checked
    /// live first; a connection that passes becomes `active` again.
    pub async fn update(&self, p: &Principal, id: Uuid, change: ConnectionUpdate) -> Result<ConnectionView, Error> {
        let (team, _) = authorize(p, Action::ManageConnections)?;
        let actor = Actor::of(p);
        let name = change.name.as_deref().map(check_name).transpose()?;
        let mut loaded = self.load(team, id).await?;
        let credentials_changed = change.credentials.is_some();
        let reverify = change.settings.is_some() || credentials_changed;
        if let Some(s) = change.settings {
            if !s.is_object() {
                return Err(invalid("settings", "settings must be a JSON object"));
            }
            loaded.connection.settings = s;
        }
        if let Some(c) = change.credentials {
            if !c.is_object() {
                return Err(invalid("credentials", "credentials must be a JSON object"));
            }
            loaded.connection.credentials = Credentials(c);
        }
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        tx.changed(CHANGED);
        if let Some(name) = &name {
            exec!(
                tx,
                "UPDATE connections SET name = $3, updated_at = $4 WHERE team_id = $1 AND id = $2",
                team,
                id,
                name,
                Ts::now()
            )
            .map_err(store)?;
        }
        if reverify {
            let adapter = Self::adapter(&loaded.view.platform)?;
            let verified = adapter.verify(&self.net, &loaded.connection).await.map_err(Error::from)?;
            let sealed = self.vault.seal(&verified.credentials.0.to_string(), &aad(team, id));
            exec!(
                tx,
                "UPDATE connections SET account = $3, settings = $4, credentials = $5, status = 'active', \
                 last_error = NULL, last_error_class = NULL, last_error_at = NULL, verified_at = $6, updated_at = $6 \
                 WHERE team_id = $1 AND id = $2",
                team,
                id,
                &verified.account,
                verified.settings.to_string(),
                &sealed,
                Ts::now()
            )
            .map_err(store)?;
        }
        audit::record(
            &mut tx,
            &actor,
            Event::new(Some(team), "connection.updated").target("connection", id).details(serde_json::json!({
                "name": name, "settings_changed": reverify, "credentials_changed": credentials_changed,
            })),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        self.get(team, id).await
    }

    /// Deletes a connection; its sealed credentials go with the row.
    pub async fn delete(&self, p: &Principal, id: Uuid) -> Result<ConnectionView, Error> {
        let (team, _) = authorize(p, Action::ManageConnections)?;
        self.delete_in(team, &Actor::of(p), id).await
    }

    pub async fn delete_in(&self, team: Uuid, actor: &Actor, id: Uuid) -> Result<ConnectionView, Error> {
        let view = self.get(team, id).await?;
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        tx.changed(CHANGED);
        let n = exec!(tx, "DELETE FROM connections WHERE team_id = $1 AND id = $2", team, id).map_err(store)?;
        if n == 0 {
            return Err(Error::not_found("connection"));
        }
        audit::record(
            &mut tx,
            actor,
            Event::new(Some(team), "connection.deleted")
                .target("connection", id)
                .details(serde_json::json!({"platform": view.platform, "name": view.name})),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(view)
    }

    /// Checks the stored credentials live again and records the outcome: `active`, or
    /// `needs_reauth` when the platform refuses them, or `error` for other failures. Answers the
    /// connection either way; the outcome is in its status and last error.
    pub async fn test(&self, p: &Principal, id: Uuid) -> Result<ConnectionView, Error> {
        // Editors and up: a check calls the platform and can change the connection's status.
        let (team, _) = authorize(p, Action::Publish)?;
        self.test_in(team, &Actor::of(p), id).await
    }

    pub async fn test_in(&self, team: Uuid, actor: &Actor, id: Uuid) -> Result<ConnectionView, Error> {
        let loaded = self.load(team, id).await?;
        let adapter = Self::adapter(&loaded.view.platform)?;
        match adapter.verify(&self.net, &loaded.connection).await {
            Ok(verified) => {
                let sealed = self.vault.seal(&verified.credentials.0.to_string(), &aad(team, id));
                let mut tx = self.db.begin().await.map_err(Error::from)?;
                tx.changed(CHANGED);
                exec!(
                    tx,
                    "UPDATE connections SET account = $3, settings = $4, credentials = $5, status = 'active', \
                     last_error = NULL, last_error_class = NULL, last_error_at = NULL, verified_at = $6, \
                     updated_at = $6 WHERE team_id = $1 AND id = $2",
                    team,
                    id,
                    &verified.account,
                    verified.settings.to_string(),
                    &sealed,
                    Ts::now()
                )
                .map_err(store)?;
                tx.commit().await.map_err(Error::from)?;
            }
            Err(e) => {
                tracing::info!(connection = %id, class = e.class.as_str(), "connection check failed: {}", e.message);
                self.record_failure_in(team, id, &e, Some(actor)).await?;
            }
        }
        self.get(team, id).await
    }

    /// Records a failed call on a connection (a check, or a delivery): an auth failure flips it to
    /// `needs_reauth`, which stops its deliveries until it is fixed; other classes only note it.
    pub async fn record_failure(&self, team: Uuid, id: Uuid, e: &PlatformError) -> Result<(), Error> {
        self.record_failure_in(team, id, e, None).await
    }

    async fn record_failure_in(
        &self,
        team: Uuid,
        id: Uuid,
        e: &PlatformError,
        actor: Option<&Actor>,
    ) -> Result<(), Error> {
        let status = match e.class {
            ErrorClass::Auth => Status::NeedsReauth,
            // A passing failure during a delivery says nothing about the connection.
            ErrorClass::Transient | ErrorClass::RateLimited | ErrorClass::UnknownOutcome if actor.is_none() => {
                return Ok(());
            }
            _ => Status::Error,
        };
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        tx.changed(CHANGED);
        let before: Option<String> =
            on_tx!(tx, c => sqlx::query_scalar("SELECT status FROM connections WHERE team_id = $1 AND id = $2")
            .bind(team).bind(id).fetch_optional(&mut *c).await)
            .map_err(store)?;
        let Some(before) = before else { return Err(Error::not_found("connection")) };
        let message: String = e.message.chars().take(1000).collect();
        exec!(
            tx,
            "UPDATE connections SET status = $3, last_error = $4, last_error_class = $5, last_error_at = $6, \
             updated_at = $6 WHERE team_id = $1 AND id = $2",
            team,
            id,
            status.as_str(),
            &message,
            e.class.as_str(),
            Ts::now()
        )
        .map_err(store)?;
        if before != status.as_str() {
            let system = Actor::system();
            audit::record(
                &mut tx,
                actor.unwrap_or(&system),
                Event::new(Some(team), "connection.status_changed").target("connection", id).details(
                    serde_json::json!({"from": before, "to": status.as_str(), "class": e.class.as_str(), "message": message}),
                ),
            )
            .await?;
        }
        tx.commit().await.map_err(Error::from)
    }

    /// Stores credentials a platform rotated during a call (a Bluesky session).
    pub async fn store_credentials(&self, team: Uuid, id: Uuid, credentials: &Credentials) -> Result<(), Error> {
        let sealed = self.vault.seal(&credentials.0.to_string(), &aad(team, id));
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        tx.changed(CHANGED);
        exec!(tx, "UPDATE connections SET credentials = $3 WHERE team_id = $1 AND id = $2", team, id, &sealed)
            .map_err(store)?;
        tx.commit().await.map_err(Error::from)
    }
}

fn check_name(name: &str) -> Result<String, Error> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
        return Err(invalid("name", "name must be 1 to 100 characters, without control characters"));
    }
    Ok(n.to_string())
}

//! The workflows service: definitions and their versions, runs and their step runs, approvals.

use crate::model::*;
use crate::path::Path;
use crate::validate::{self, TeamFacts};
use chrono::{DateTime, Utc};
use herald_accounts::audit::{self, Actor, Event};
use herald_accounts::{Principal, authorize};
use herald_connections::Connections;
use herald_core::{Action, Error, ErrorCode};
use herald_http::{HttpClient, SafeClient};
use herald_posts::Posts;
use herald_store::{Db, ReadCache, StoreError, Ts, Tx, TxConn, exec, on_read};
use herald_vault::Vault;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

pub const RUN_JOB: &str = "workflow.run";

/// What the operator configured.
#[derive(Debug, Clone)]
pub struct WorkflowConfig {
    /// HERALD_PUBLIC_URL: approval links hang off it.
    pub public_url: Option<String>,
    /// HERALD_AI_BASE_URL: the OpenAI-compatible endpoint teams use unless they set their own.
    pub ai_base_url: Option<String>,
    /// HERALD_AI_MODEL.
    pub ai_model: String,
    /// HERALD_AI_API_KEY.
    pub ai_api_key: Option<String>,
    /// The default daily budget per team: calls and tokens (HERALD_AI_DAILY_CALLS, _TOKENS).
    pub ai_daily_calls: i64,
    pub ai_daily_tokens: i64,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        WorkflowConfig {
            public_url: None,
            ai_base_url: None,
            ai_model: "gpt-4o-mini".into(),
            ai_api_key: None,
            ai_daily_calls: 500,
            ai_daily_tokens: 1_000_000,
        }
    }
}

#[derive(Clone)]
pub struct Workflows {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub db: Db,
    pub posts: Posts,
    pub connections: Connections,
    /// For hosts a user chose: http steps, a team's own AI endpoint.
    pub safe: SafeClient,
    /// For hosts the operator configured: HERALD_AI_BASE_URL.
    pub trusted: HttpClient,
    pub vault: Vault,
    pub config: WorkflowConfig,
    /// Versions never change, so each is parsed once.
    pub defs: Mutex<HashMap<(Uuid, i64), Arc<Definition>>>,
    /// Writes first commits that arrive together in one transaction; started with the first.
    pub commits: std::sync::OnceLock<crate::commits::Commits>,
    /// Each source's active workflows, read once a second rather than once an event (see
    /// [`herald_store::cache`]); every write to workflows or their sources marks [`CHANGED`].
    pub by_source: ReadCache<(Uuid, Uuid), Arc<Vec<WorkflowRow>>>,
}

/// The [`Tx::changed`] topic of writes to `workflows` and `workflow_sources`.
pub(crate) const CHANGED: &str = "workflows";

pub(crate) fn store(e: sqlx::Error) -> Error {
    StoreError::Sqlx(e).into()
}

pub(crate) fn invalid(field: &str, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ValidationFailed, msg).with_details(json!({"field": field}))
}

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct WorkflowRow {
    pub id: Uuid,
    pub name: String,
    pub active: bool,
    pub version: i64,
    pub created_at: Ts,
    pub updated_at: Ts,
}

const WORKFLOW_COLS: &str = "id, name, active, version, created_at, updated_at";

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct RunRow {
    pub id: Uuid,
    pub team_id: Uuid,
    pub workflow_id: Uuid,
    pub version: i64,
    pub event_id: Option<Uuid>,
    pub trigger: String,
    pub rerun_of: Option<Uuid>,
    pub status: String,
    pub input: String,
    pub state: String,
    pub cursor: String,
    pub seq: i64,
    pub wait_until: Option<Ts>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub created_at: Ts,
    pub updated_at: Ts,
    pub finished_at: Option<Ts>,
}

pub(crate) const RUN_COLS: &str = "id, team_id, workflow_id, version, event_id, trigger, rerun_of, status, input, state, \
    cursor, seq, wait_until, error, error_code, created_at, updated_at, finished_at";

impl RunRow {
    /// A pending run, not stored, with no cursor; callers set what differs.
    pub fn new(team: Uuid, workflow: Uuid, version: i64, input: String, now: Ts) -> RunRow {
        RunRow {
            id: Uuid::now_v7(),
            team_id: team,
            workflow_id: workflow,
            version,
            event_id: None,
            trigger: String::new(),
            rerun_of: None,
            status: RunStatus::Pending.as_str().to_string(),
            input,
            state: "{}".to_string(),
            cursor: String::new(),
            seq: 0,
            wait_until: None,
            error: None,
            error_code: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    pub fn status(&self) -> RunStatus {
        RunStatus::parse(&self.status).unwrap_or(RunStatus::Failed)
    }

    pub fn view(&self, steps: Option<Vec<StepRunView>>) -> RunView {
        RunView {
            id: self.id,
            workflow_id: self.workflow_id,
            version: self.version,
            event_id: self.event_id,
            trigger: self.trigger.clone(),
            rerun_of: self.rerun_of,
            status: self.status(),
            cursor: Some(self.cursor.clone()).filter(|c| !c.is_empty() && !self.status().is_final()),
            wait_until: self.wait_until.map(|t| t.0),
            error: self.error.clone(),
            error_code: self.error_code.clone(),
            input: serde_json::from_str(&self.input).unwrap_or(Value::Null),
            created_at: self.created_at.0,
            updated_at: self.updated_at.0,
            finished_at: self.finished_at.map(|t| t.0),
            steps,
        }
    }
}

#[derive(sqlx::FromRow)]
struct StepRunRow {
    path: String,
    step_id: String,
    kind: String,
    status: String,
    input: Option<String>,
    output: Option<String>,
    error: Option<String>,
    error_code: Option<String>,
    attempts: i64,
    started_at: Ts,
    finished_at: Option<Ts>,
}

impl StepRunRow {
    fn view(self) -> StepRunView {
        let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        StepRunView {
            path: self.path,
            step_id: self.step_id,
            kind: self.kind,
            status: self.status,
            input: json(self.input),
            output: json(self.output),
            error: self.error,
            error_code: self.error_code,
            attempts: self.attempts,
            started_at: self.started_at.0,
            finished_at: self.finished_at.map(|t| t.0),
        }
    }
}

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct ApprovalRow {
    pub id: Uuid,
    pub team_id: Uuid,
    pub run_id: Uuid,
    pub path: String,
    pub status: String,
    pub approvers: String,
    pub proposal: String,
    pub on_timeout: String,
    pub expires_at: Ts,
    pub decided_by: Option<Uuid>,
    pub decided_via: Option<String>,
    pub edits: Option<String>,
    pub comment: Option<String>,
    pub decided_at: Option<Ts>,
    pub created_at: Ts,
}

pub(crate) const APPROVAL_COLS: &str = "id, team_id, run_id, path, status, approvers, proposal, on_timeout, expires_at, \
    decided_by, decided_via, edits, comment, decided_at, created_at";

/// Filters for `GET /api/v1/runs`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    pub workflow: Option<Uuid>,
    /// pending, running, waiting, succeeded, failed, skipped or cancelled.
    pub status: Option<String>,
    /// Created at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    /// 1–200, default 50.
    pub limit: Option<u32>,
}

/// One page of runs, newest first.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    pub next_cursor: Option<Uuid>,
}

/// `PATCH /api/v1/workflows/{id}`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowPatch {
    pub active: Option<bool>,
}

impl Workflows {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        posts: Posts,
        connections: Connections,
        safe: SafeClient,
        trusted: HttpClient,
        vault: Vault,
        mut config: WorkflowConfig,
    ) -> Workflows {
        config.public_url = config.public_url.map(|u| u.trim_end_matches('/').to_string());
        Workflows {
            inner: Arc::new(Inner {
                posts,
                connections,
                safe,
                trusted,
                vault,
                config,
                defs: Mutex::new(HashMap::new()),
                commits: std::sync::OnceLock::new(),
                by_source: ReadCache::new(&db, CHANGED),
                db,
            }),
        }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) async fn facts(&self, team: Uuid) -> Result<TeamFacts, Error> {
        let db = &self.inner.db;
        let sources: Vec<(Uuid,)> = on_read!(db, c => sqlx::query_as(
            "SELECT id FROM sources WHERE team_id = $1 AND deleted = $2").bind(team).bind(false).fetch_all(c).await)
        .map_err(store)?;
        let connections: Vec<(Uuid, String)> = on_read!(db, c => sqlx::query_as(
            "SELECT id, platform FROM connections WHERE team_id = $1").bind(team).fetch_all(c).await)
        .map_err(store)?;
        let members: Vec<(Uuid, String)> = on_read!(db, c => sqlx::query_as(
            "SELECT user_id, role FROM memberships WHERE team_id = $1").bind(team).fetch_all(c).await)
        .map_err(store)?;
        Ok(TeamFacts {
            sources: sources.into_iter().map(|s| s.0).collect(),
            connections: connections.into_iter().collect(),
            members: members.into_iter().collect(),
        })
    }

    /// Parses, names and checks a definition for `team`.
    pub async fn prepare(&self, team: Uuid, v: Value) -> Result<Definition, Error> {
        let mut def = validate::parse(v)?;
        def.name = def.name.trim().to_string();
        validate::fill_ids(&mut def);
        let problems = validate::check(&def, &self.facts(team).await?);
        if !problems.is_empty() {
            return Err(validate::failed(problems));
        }
        Ok(def)
    }

    pub(crate) async fn row(&self, team: Uuid, id: Uuid) -> Result<WorkflowRow, Error> {
        let sql = format!("SELECT {WORKFLOW_COLS} FROM workflows WHERE team_id = $1 AND id = $2");
        let row: Option<WorkflowRow> = on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(id).fetch_optional(c).await)
        .map_err(store)?;
        row.ok_or_else(|| Error::not_found("workflow"))
    }

    /// The team's active workflows that `source` starts, from [`Inner::by_source`].
    pub(crate) async fn source_workflows(&self, team: Uuid, source: Uuid) -> Result<Arc<Vec<WorkflowRow>>, Error> {
        self.inner
            .by_source
            .get_or_load((team, source), async {
                let cols = WORKFLOW_COLS.split(", ").map(|c| format!("w.{c}")).collect::<Vec<_>>().join(", ");
                let sql = format!(
                    "SELECT {cols} FROM workflow_sources s JOIN workflows w ON w.id = s.workflow_id \
                     WHERE s.source_id = $1 AND w.team_id = $2 AND w.active = $3 ORDER BY w.id"
                );
                on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(source).bind(team).bind(true).fetch_all(c).await)
                .map(Arc::new)
                .map_err(store)
            })
            .await
    }

    /// A version's definition, parsed once per process.
    pub(crate) async fn definition(&self, workflow: Uuid, version: i64) -> Result<Arc<Definition>, Error> {
        if let Some(d) = self.inner.defs.lock().unwrap_or_else(|p| p.into_inner()).get(&(workflow, version)) {
            return Ok(d.clone());
        }
        let row: Option<(String,)> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT definition FROM workflow_versions WHERE workflow_id = $1 AND version = $2")
            .bind(workflow).bind(version).fetch_optional(c).await)
        .map_err(store)?;
        let text = row.ok_or_else(|| Error::not_found("workflow version"))?.0;
        let def: Definition = serde_json::from_str(&text)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("stored workflow version is unreadable: {e}")))?;
        let def = Arc::new(def);
        self.inner.defs.lock().unwrap_or_else(|p| p.into_inner()).insert((workflow, version), def.clone());
        Ok(def)
    }

    fn view(row: &WorkflowRow, def: &Definition) -> WorkflowView {
        let mut definition = def.clone();
        definition.active = row.active;
        WorkflowView {
            id: row.id,
            name: row.name.clone(),
            active: row.active,
            version: row.version,
            definition,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
        }
    }

    async fn set_sources(tx: &mut Tx, workflow: Uuid, def: &Definition) -> Result<(), Error> {
        tx.changed(CHANGED);
        exec!(tx, "DELETE FROM workflow_sources WHERE workflow_id = $1", workflow).map_err(store)?;
        let mut seen = std::collections::HashSet::new();
        for s in def.sources.iter().filter(|s| seen.insert(**s)) {
            exec!(tx, "INSERT INTO workflow_sources (source_id, workflow_id) VALUES ($1, $2)", *s, workflow)
                .map_err(store)?;
        }
        Ok(())
    }

    async fn insert_version(
        tx: &mut Tx,
        id: Uuid,
        version: i64,
        def: &Definition,
        by: Option<Uuid>,
    ) -> Result<(), Error> {
        exec!(
            tx,
            "INSERT INTO workflow_versions (workflow_id, version, definition, created_by, created_at) VALUES ($1, $2, $3, $4, $5)",
            id,
            version,
            serde_json::to_string(def).unwrap_or_default(),
            by,
            Ts::now()
        )
        .map_err(store)?;
        Ok(())
    }

    pub async fn create(&self, p: &Principal, v: Value) -> Result<WorkflowView, Error> {
        let (team, _) = authorize(p, Action::WriteContent)?;
        let def = self.prepare(team, v).await?;
        let id = Uuid::now_v7();
        let now = Ts::now();
        let mut tx = self.inner.db.begin().await?;
        tx.changed(CHANGED);
        let inserted = exec!(
            tx,
            "INSERT INTO workflows (id, team_id, name, active, version, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            id,
            team,
            &def.name,
            def.active,
            1i64,
            p.user_id,
            now
        );
        if let Err(e) = inserted {
            if let sqlx::Error::Database(d) = &e
                && d.is_unique_violation()
            {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("a workflow named `{}` exists; change it with PUT /api/v1/workflows/{{id}}", def.name),
                ));
            }
            return Err(store(e));
        }
        Self::insert_version(&mut tx, id, 1, &def, p.user_id).await?;
        Self::set_sources(&mut tx, id, &def).await?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "workflow.create").target("workflow", id).details(json!({"name": def.name})),
        )
        .await?;
        tx.commit().await?;
        self.get(p, id).await
    }

    pub async fn list(&self, p: &Principal) -> Result<Vec<WorkflowView>, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let sql = format!("SELECT {WORKFLOW_COLS} FROM workflows WHERE team_id = $1 ORDER BY name, id");
        let rows: Vec<WorkflowRow> = on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).fetch_all(c).await)
        .map_err(store)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let def = self.definition(r.id, r.version).await?;
            out.push(Self::view(&r, &def));
        }
        Ok(out)
    }

    pub async fn get(&self, p: &Principal, id: Uuid) -> Result<WorkflowView, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let row = self.row(team, id).await?;
        let def = self.definition(id, row.version).await?;
        Ok(Self::view(&row, &def))
    }

    /// Replaces the definition: a new version when the steps, sources or name changed. Runs
    /// already started keep their version.
    pub async fn replace(&self, p: &Principal, id: Uuid, v: Value) -> Result<(WorkflowView, bool), Error> {
        let (team, _) = authorize(p, Action::WriteContent)?;
        let row = self.row(team, id).await?;
        // A body without `active` keeps the workflow as it is (paused stays paused).
        let says_active = v.get("active").is_some();
        let mut def = self.prepare(team, v).await?;
        if !says_active {
            def.active = row.active;
        }
        let current = self.definition(id, row.version).await?;
        let same = {
            let (mut a, mut b) = ((*current).clone(), def.clone());
            a.active = true;
            b.active = true;
            a == b
        };
        if same && def.active == row.active && def.name == row.name {
            return Ok((self.get(p, id).await?, false));
        }
        let version = if same { row.version } else { row.version + 1 };
        let mut tx = self.inner.db.begin().await?;
        tx.changed(CHANGED);
        let changed = exec!(
            tx,
            "UPDATE workflows SET name = $3, active = $4, version = $5, updated_at = $6 WHERE id = $1 AND version = $2",
            id,
            row.version,
            &def.name,
            def.active,
            version,
            Ts::now()
        );
        match changed {
            Ok(0) => {
                return Err(Error::new(ErrorCode::Conflict, "the workflow changed meanwhile; read it and try again"));
            }
            Ok(_) => {}
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                return Err(Error::new(ErrorCode::Conflict, format!("another workflow is named `{}`", def.name)));
            }
            Err(e) => return Err(store(e)),
        }
        if !same {
            Self::insert_version(&mut tx, id, version, &def, p.user_id).await?;
            Self::set_sources(&mut tx, id, &def).await?;
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "workflow.update")
                .target("workflow", id)
                .details(json!({"version": version, "new_version": !same, "active": def.active})),
        )
        .await?;
        tx.commit().await?;
        Ok((self.get(p, id).await?, !same))
    }

    /// Pauses or resumes a workflow without a new version.
    pub async fn patch(&self, p: &Principal, id: Uuid, patch: WorkflowPatch) -> Result<WorkflowView, Error> {
        let (team, _) = authorize(p, Action::WriteContent)?;
        self.row(team, id).await?;
        if let Some(active) = patch.active {
            let mut tx = self.inner.db.begin().await?;
            tx.changed(CHANGED);
            exec!(tx, "UPDATE workflows SET active = $2, updated_at = $3 WHERE id = $1", id, active, Ts::now())
                .map_err(store)?;
            audit::record(
                &mut tx,
                &Actor::of(p),
                Event::new(Some(team), "workflow.update").target("workflow", id).details(json!({"active": active})),
            )
            .await?;
            tx.commit().await?;
        }
        self.get(p, id).await
    }

    /// Deletes a workflow with its versions and runs.
    pub async fn delete(&self, p: &Principal, id: Uuid) -> Result<WorkflowView, Error> {
        let (team, _) = authorize(p, Action::DeleteContent)?;
        let view = self.get(p, id).await?;
        let mut tx = self.inner.db.begin().await?;
        tx.changed(CHANGED);
        exec!(tx, "DELETE FROM workflows WHERE id = $1 AND team_id = $2", id, team).map_err(store)?;
        exec!(tx, "UPDATE teams SET error_workflow = NULL WHERE id = $1 AND error_workflow = $2", team, id)
            .map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "workflow.delete").target("workflow", id).details(json!({"name": view.name})),
        )
        .await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn versions(&self, p: &Principal, id: Uuid) -> Result<Vec<VersionView>, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        self.row(team, id).await?;
        let rows: Vec<(i64, String, Option<Uuid>, Ts)> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT version, definition, created_by, created_at FROM workflow_versions WHERE workflow_id = $1 ORDER BY version DESC")
            .bind(id).fetch_all(c).await)
        .map_err(store)?;
        Ok(rows
            .into_iter()
            .filter_map(|(version, def, by, at)| {
                Some(VersionView {
                    version,
                    definition: serde_json::from_str(&def).ok()?,
                    created_by: by,
                    created_at: at.0,
                })
            })
            .collect())
    }

    // ----- runs -----

    /// Adds a run in `tx`: for an event, once per (workflow, event); `None` when it existed. The
    /// row it answers is the one stored, so the run can start without reading it back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn insert_run(
        tx: &mut Tx,
        team: Uuid,
        workflow: Uuid,
        version: i64,
        def: &Definition,
        event: Option<Uuid>,
        trigger: &str,
        rerun_of: Option<Uuid>,
        input: &Value,
    ) -> Result<Option<RunRow>, Error> {
        let row = RunRow {
            event_id: event,
            trigger: trigger.to_string(),
            rerun_of,
            cursor: Path::first(&def.steps).map(|p| p.display()).unwrap_or_default(),
            ..RunRow::new(team, workflow, version, input.to_string(), Ts::now())
        };
        Ok(Self::store_run(tx, &row).await?.then_some(row))
    }

    /// Stores `row` as it is; `false` when the run was there already (its id, or its workflow
    /// and event for an event's run).
    pub(crate) async fn store_run(tx: &mut Tx, row: &RunRow) -> Result<bool, Error> {
        Ok(!Self::store_runs(tx, &[row]).await?.is_empty())
    }

    /// Inserts runs, each unless one with its id is stored already (another executor of the same
    /// event was first); answers the ids it inserted. The only statement that inserts runs.
    pub(crate) async fn store_runs(tx: &mut Tx, rows: &[&RunRow]) -> Result<Vec<Uuid>, Error> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let c = match tx.conn().await.map_err(store)? {
            TxConn::Sqlite(c) => return store_runs_sqlite(c, rows).await,
            TxConn::Postgres(c) => c,
        };
        // Arrays ([`herald_store::column`]): one statement text whatever the number of rows.
        use herald_store::column;
        let sql = format!(
            "INSERT INTO workflow_runs ({RUN_COLS}) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::uuid[], $6::text[], $7::uuid[], \
               $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[], $13::timestamptz[], $14::text[], \
               $15::text[], $16::timestamptz[], $17::timestamptz[], $18::timestamptz[]) \
             ON CONFLICT DO NOTHING RETURNING id"
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(column(rows, |r| r.id))
            .bind(column(rows, |r| r.team_id))
            .bind(column(rows, |r| r.workflow_id))
            .bind(column(rows, |r| r.version))
            .bind(column(rows, |r| r.event_id))
            .bind(column(rows, |r| r.trigger.as_str()))
            .bind(column(rows, |r| r.rerun_of))
            .bind(column(rows, |r| r.status.as_str()))
            .bind(column(rows, |r| r.input.as_str()))
            .bind(column(rows, |r| r.state.as_str()))
            .bind(column(rows, |r| r.cursor.as_str()))
            .bind(column(rows, |r| r.seq))
            .bind(column(rows, |r| r.wait_until.map(|t| t.0)))
            .bind(column(rows, |r| r.error.as_deref()))
            .bind(column(rows, |r| r.error_code.as_deref()))
            .bind(column(rows, |r| r.created_at.0))
            .bind(column(rows, |r| r.updated_at.0))
            .bind(column(rows, |r| r.finished_at.map(|t| t.0)))
            .fetch_all(&mut *c)
            .await
            .map_err(store)
    }

    pub(crate) async fn run_row(&self, id: Uuid) -> Result<Option<RunRow>, Error> {
        let sql = format!("SELECT {RUN_COLS} FROM workflow_runs WHERE id = $1");
        on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await)
            .map_err(store)
    }

    async fn team_run(&self, team: Uuid, id: Uuid) -> Result<RunRow, Error> {
        match self.run_row(id).await? {
            Some(r) if r.team_id == team => Ok(r),
            _ => Err(Error::not_found("run")),
        }
    }

    pub(crate) async fn step_runs(&self, run: Uuid) -> Result<Vec<StepRunView>, Error> {
        let rows: Vec<StepRunRow> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT path, step_id, kind, status, input, output, error, error_code, attempts, started_at, finished_at \
             FROM workflow_step_runs WHERE run_id = $1 ORDER BY started_at, id")
            .bind(run).fetch_all(c).await)
        .map_err(store)?;
        Ok(rows.into_iter().map(StepRunRow::view).collect())
    }

    /// A run with its step runs.
    pub async fn run(&self, p: &Principal, id: Uuid) -> Result<RunView, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let row = self.team_run(team, id).await?;
        Ok(row.view(Some(self.step_runs(id).await?)))
    }

    pub async fn runs(&self, p: &Principal, q: &RunQuery) -> Result<RunPage, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let limit = q.limit.unwrap_or(50).clamp(1, 200) as i64;
        let mut sql = format!("SELECT {RUN_COLS} FROM workflow_runs WHERE team_id = $1");
        let mut n = 1;
        let mut arg = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&clause.replace('?', &format!("${n}")));
        };
        if q.workflow.is_some() {
            arg(&mut sql, " AND workflow_id = ?");
        }
        let status = match &q.status {
            Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
                invalid("status", "status is pending, running, waiting, succeeded, failed, skipped or cancelled")
            })?),
            None => None,
        };
        if status.is_some() {
            arg(&mut sql, " AND status = ?");
        }
        if q.since.is_some() {
            arg(&mut sql, " AND created_at >= ?");
        }
        if q.until.is_some() {
            arg(&mut sql, " AND created_at < ?");
        }
        if q.cursor.is_some() {
            arg(&mut sql, " AND id < ?");
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        macro_rules! bind_all {
            ($q:expr) => {{
                let mut x = $q.bind(team);
                if let Some(w) = q.workflow {
                    x = x.bind(w);
                }
                if let Some(s) = status {
                    x = x.bind(s.as_str());
                }
                if let Some(t) = q.since {
                    x = x.bind(Ts(t));
                }
                if let Some(t) = q.until {
                    x = x.bind(Ts(t));
                }
                if let Some(c) = q.cursor {
                    x = x.bind(c);
                }
                x
            }};
        }
        let mut rows: Vec<RunRow> = on_read!(self.inner.db, c => bind_all!(sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))).fetch_all(c).await)
            .map_err(store)?;
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.id)
        } else {
            None
        };
        Ok(RunPage { runs: rows.iter().map(|r| r.view(None)).collect(), next_cursor })
    }

    /// Cancels a run that is not over: a waiting delay or approval never resumes it.
    pub async fn cancel_run(&self, p: &Principal, id: Uuid) -> Result<RunView, Error> {
        let (team, _) = authorize(p, Action::Publish)?;
        let row = self.team_run(team, id).await?;
        if row.status().is_final() {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("the run is already {}; only a run that is not over can be cancelled", row.status),
            ));
        }
        let now = Ts::now();
        let mut tx = self.inner.db.begin().await?;
        let n = exec!(
            tx,
            "UPDATE workflow_runs SET status = $2, error = $3, error_code = $4, seq = seq + 1, updated_at = $5, finished_at = $5 \
             WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'skipped', 'cancelled')",
            id,
            RunStatus::Cancelled.as_str(),
            format!("cancelled by {}", p.label),
            "cancelled",
            now
        )
        .map_err(store)?;
        if n == 0 {
            return Err(Error::new(ErrorCode::Conflict, "the run ended meanwhile"));
        }
        exec!(
            tx,
            "UPDATE approvals SET status = 'cancelled', decided_at = $2 WHERE run_id = $1 AND status = 'pending'",
            id,
            now
        )
        .map_err(store)?;
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(team), "run.cancel").target("run", id)).await?;
        tx.commit().await?;
        self.run(p, id).await
    }

    /// Starts a new run of the workflow's current version on the same input.
    pub async fn rerun(&self, p: &Principal, id: Uuid) -> Result<RunView, Error> {
        let (team, _) = authorize(p, Action::Publish)?;
        let old = self.team_run(team, id).await?;
        let wf = self.row(team, old.workflow_id).await?;
        let def = self.definition(wf.id, wf.version).await?;
        let input: Value = serde_json::from_str(&old.input).unwrap_or(Value::Null);
        let mut tx = self.inner.db.begin().await?;
        let new = Self::insert_run(&mut tx, team, wf.id, wf.version, &def, old.event_id, "rerun", Some(id), &input)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::Internal, "the rerun was not stored"))?
            .id;
        crate::engine::enqueue_run(&mut tx, new, None).await?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "run.rerun").target("run", new).details(json!({"rerun_of": id})),
        )
        .await?;
        tx.commit().await?;
        self.run(p, new).await
    }

    /// Starts a run on a given payload, or with `dry_run` runs it in memory and answers what it
    /// would post.
    pub async fn start_manual(
        &self,
        p: &Principal,
        id: Uuid,
        m: ManualRun,
    ) -> Result<Result<RunView, DryRunView>, Error> {
        let (team, _) = authorize(p, if m.dry_run { Action::WriteContent } else { Action::Publish })?;
        let wf = self.row(team, id).await?;
        let def = self.definition(id, wf.version).await?;
        let input = match m.payload {
            Value::Null => json!({}),
            v @ Value::Object(_) => v,
            _ => return Err(invalid("payload", "payload is a JSON object")),
        };
        if m.dry_run {
            return Ok(Err(self.dry_run(team, &wf, &def, input).await));
        }
        let mut tx = self.inner.db.begin().await?;
        let run = Self::insert_run(&mut tx, team, id, wf.version, &def, None, "manual", None, &input)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::Internal, "the run was not stored"))?
            .id;
        crate::engine::enqueue_run(&mut tx, run, None).await?;
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(team), "run.start").target("run", run)).await?;
        tx.commit().await?;
        Ok(Ok(self.run(p, run).await?))
    }

    // ----- approvals -----

    pub(crate) async fn approval_row(&self, id: Uuid) -> Result<Option<ApprovalRow>, Error> {
        let sql = format!("SELECT {APPROVAL_COLS} FROM approvals WHERE id = $1");
        on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await)
            .map_err(store)
    }

    async fn approval_view(&self, r: ApprovalRow) -> Result<ApprovalView, Error> {
        let run = self.run_row(r.run_id).await?.ok_or_else(|| Error::not_found("run"))?;
        let def = self.definition(run.workflow_id, run.version).await?;
        let step = Path::parse(&r.path).and_then(|p| p.step(&def.steps).cloned());
        let message = step.as_ref().and_then(|s| match &s.kind {
            StepKind::Approval(a) => a.message.clone(),
            _ => None,
        });
        let proposal: Value = serde_json::from_str(&r.proposal).unwrap_or(Value::Null);
        Ok(ApprovalView {
            id: r.id,
            run_id: r.run_id,
            workflow_id: run.workflow_id,
            step_id: step.map(|s| s.id).unwrap_or_default(),
            status: r.status,
            approvers: serde_json::from_str(&r.approvers).unwrap_or(Value::Null),
            message: proposal.get("message").and_then(Value::as_str).map(str::to_string).or(message),
            proposal,
            on_timeout: r.on_timeout,
            expires_at: r.expires_at.0,
            decided_by: r.decided_by,
            decided_via: r.decided_via,
            edits: r.edits.and_then(|e| serde_json::from_str(&e).ok()),
            comment: r.comment,
            decided_at: r.decided_at.map(|t| t.0),
            created_at: r.created_at.0,
        })
    }

    /// The team's approvals, pending first when `status` is absent.
    pub async fn approvals(&self, p: &Principal, status: Option<&str>) -> Result<Vec<ApprovalView>, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        let sql = match status {
            Some(_) => format!(
                "SELECT {APPROVAL_COLS} FROM approvals WHERE team_id = $1 AND status = $2 ORDER BY created_at DESC LIMIT 200"
            ),
            // Pending ones first, so a long history never hides one that waits.
            None => format!(
                "SELECT {APPROVAL_COLS} FROM approvals WHERE team_id = $1 AND status <> $2 \
                 ORDER BY CASE WHEN status = 'pending' THEN 0 ELSE 1 END, created_at DESC LIMIT 200"
            ),
        };
        let st = status.unwrap_or("");
        let rows: Vec<ApprovalRow> = on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(st).fetch_all(c).await)
        .map_err(store)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.approval_view(r).await?);
        }
        out.sort_by_key(|a| (a.status != "pending", std::cmp::Reverse(a.created_at)));
        Ok(out)
    }

    pub async fn approval(&self, p: &Principal, id: Uuid) -> Result<ApprovalView, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        match self.approval_row(id).await? {
            Some(r) if r.team_id == team => self.approval_view(r).await,
            _ => Err(Error::not_found("approval")),
        }
    }

    /// Approves or rejects through the API: the caller must be one of the step's approvers.
    pub async fn decide(&self, p: &Principal, id: Uuid, approve: bool, d: Decision) -> Result<ApprovalView, Error> {
        let (team, role) = authorize(p, Action::Publish)?;
        let row = match self.approval_row(id).await? {
            Some(r) if r.team_id == team => r,
            _ => return Err(Error::not_found("approval")),
        };
        let approvers: Value = serde_json::from_str(&row.approvers).unwrap_or(Value::Null);
        let named = p.user_id.is_some_and(|u| {
            approvers["users"].as_array().is_some_and(|us| us.iter().any(|x| x.as_str() == Some(&u.to_string())))
        });
        let by_role = approvers["role"]
            .as_str()
            .and_then(herald_core::TeamRole::parse)
            .is_some_and(|need| rank(role) <= rank(need));
        if !named && !by_role {
            return Err(Error::new(ErrorCode::Forbidden, "you are not one of this approval's approvers"));
        }
        self.settle(row, approve, d, p.user_id, "api", Some(&Actor::of(p))).await?;
        self.approval(p, id).await
    }

    /// Approves or rejects through a signed one-time link.
    pub async fn decide_by_token(&self, token: &str, approve: bool, d: Decision) -> Result<ApprovalView, Error> {
        let hash = token_hash(token);
        let sql = format!("SELECT {APPROVAL_COLS} FROM approvals WHERE token_hash = $1");
        let row: Option<ApprovalRow> = on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&hash).fetch_optional(c).await)
        .map_err(store)?;
        let row = row.ok_or_else(|| Error::new(ErrorCode::NotFound, "this approval link is not valid"))?;
        let id = row.id;
        self.settle(row, approve, d, None, "link", None).await?;
        let r = self.approval_row(id).await?.ok_or_else(|| Error::not_found("approval"))?;
        self.approval_view(r).await
    }

    /// What a one-time link shows before deciding.
    pub async fn approval_by_token(&self, token: &str) -> Result<ApprovalView, Error> {
        let sql = format!("SELECT {APPROVAL_COLS} FROM approvals WHERE token_hash = $1");
        let row: Option<ApprovalRow> = on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(token_hash(token)).fetch_optional(c).await)
        .map_err(store)?;
        self.approval_view(row.ok_or_else(|| Error::new(ErrorCode::NotFound, "this approval link is not valid"))?).await
    }

    async fn settle(
        &self,
        row: ApprovalRow,
        approve: bool,
        d: Decision,
        by: Option<Uuid>,
        via: &str,
        actor: Option<&Actor>,
    ) -> Result<(), Error> {
        if row.status != "pending" {
            return Err(Error::new(ErrorCode::Conflict, format!("this approval is already {}", row.status)));
        }
        if row.expires_at.0 <= Utc::now() {
            return Err(Error::new(ErrorCode::Conflict, "this approval has expired"));
        }
        if d.text.as_ref().is_some_and(|t| t.trim().is_empty()) || d.targets.values().any(|t| t.trim().is_empty()) {
            return Err(invalid("text", "an edited text cannot be empty"));
        }
        if d.comment.as_ref().is_some_and(|c| c.chars().count() > 2000) {
            return Err(invalid("comment", "a comment is at most 2000 characters"));
        }
        let edits = json!({"text": d.text, "targets": d.targets});
        let status = if approve { "approved" } else { "rejected" };
        let now = Ts::now();
        let mut tx = self.inner.db.begin().await?;
        let n = exec!(
            tx,
            "UPDATE approvals SET status = $2, decided_by = $3, decided_via = $4, edits = $5, comment = $6, decided_at = $7 \
             WHERE id = $1 AND status = 'pending'",
            row.id,
            status,
            by,
            via,
            edits.to_string(),
            &d.comment,
            now
        )
        .map_err(store)?;
        if n == 0 {
            return Err(Error::new(ErrorCode::Conflict, "this approval was decided meanwhile"));
        }
        let link_actor;
        let actor = match actor {
            Some(a) => a,
            None => {
                link_actor = Actor { label: "approval link".into(), ..Actor::system() };
                &link_actor
            }
        };
        audit::record(
            &mut tx,
            actor,
            Event::new(Some(row.team_id), if approve { "approval.approve" } else { "approval.reject" })
                .target("approval", row.id)
                .details(json!({"run": row.run_id, "via": via, "edited": d.text.is_some() || !d.targets.is_empty(), "comment": d.comment})),
        )
        .await?;
        crate::engine::enqueue_run(&mut tx, row.run_id, None).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Owner 0, admin 1, editor 2, viewer 3: a lower rank may do what a higher one may.
fn rank(r: herald_core::TeamRole) -> u8 {
    use herald_core::TeamRole::*;
    match r {
        Owner => 0,
        Admin => 1,
        Editor => 2,
        Viewer => 3,
    }
}

pub(crate) fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// [`Workflows::store_runs`] on SQLite: the runs as one JSON parameter, so the statement's text is
/// the same whatever their number, and SQLite's writer compiles it once and keeps it.
async fn store_runs_sqlite(c: &mut herald_store::SqliteTx, rows: &[&RunRow]) -> Result<Vec<Uuid>, Error> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: uuid::fmt::Simple,
        team: uuid::fmt::Simple,
        workflow: uuid::fmt::Simple,
        version: i64,
        event: Option<uuid::fmt::Simple>,
        trigger: &'a str,
        rerun_of: Option<uuid::fmt::Simple>,
        status: &'a str,
        input: &'a str,
        state: &'a str,
        cursor: &'a str,
        seq: i64,
        wait_until: Option<i64>,
        error: Option<&'a str>,
        error_code: Option<&'a str>,
        created_at: i64,
        updated_at: i64,
        finished_at: Option<i64>,
    }
    let micros = |t: Ts| herald_store::to_micros(t.0);
    let input: Vec<Row<'_>> = rows
        .iter()
        .map(|r| Row {
            id: r.id.simple(),
            team: r.team_id.simple(),
            workflow: r.workflow_id.simple(),
            version: r.version,
            event: r.event_id.map(Uuid::simple),
            trigger: &r.trigger,
            rerun_of: r.rerun_of.map(Uuid::simple),
            status: &r.status,
            input: &r.input,
            state: &r.state,
            cursor: &r.cursor,
            seq: r.seq,
            wait_until: r.wait_until.map(micros),
            error: r.error.as_deref(),
            error_code: r.error_code.as_deref(),
            created_at: micros(r.created_at),
            updated_at: micros(r.updated_at),
            finished_at: r.finished_at.map(micros),
        })
        .collect();
    // `WHERE true`: without a WHERE, SQLite would read `ON CONFLICT` as a join's `ON`.
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO workflow_runs ({RUN_COLS}) \
         SELECT unhex(value ->> 'id'), unhex(value ->> 'team'), unhex(value ->> 'workflow'), value ->> 'version', \
                unhex(value ->> 'event'), value ->> 'trigger', unhex(value ->> 'rerun_of'), value ->> 'status', \
                value ->> 'input', value ->> 'state', value ->> 'cursor', value ->> 'seq', value ->> 'wait_until', \
                value ->> 'error', value ->> 'error_code', value ->> 'created_at', value ->> 'updated_at', \
                value ->> 'finished_at' \
         FROM jsonb_each(?1) WHERE true ON CONFLICT DO NOTHING RETURNING id"
    )))
    .bind(serde_json::to_string(&input).unwrap_or_default())
    .fetch_all(&mut *c)
    .await
    .map_err(store)
}

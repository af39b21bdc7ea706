//! Running workflows durably. A run executes step by step from its cursor. Pure steps (filter,
//! condition, template, delay arithmetic) are committed together with the next step that reaches
//! outside (publish, http, AI, approval), and that step's result is committed before the run goes
//! on, so a completed step never runs again. On SQLite a publish step's post is written in the
//! transaction of the commit that records the step, so a run and its post are stored together or
//! not at all. The post also carries an idempotency key made of the run and the step: on
//! PostgreSQL, and for a post scheduled into its connections' next free slots (read in its own
//! transaction), the post is written on its own first, and a crash before the run's commit still
//! makes one post. Delays and approvals end the job: the run waits as a queued job with a
//! `run_at` and holds no memory. Every commit bumps the run's `seq`; an executor whose `seq` is
//! stale (the run was cancelled, or another job advanced it) stops.

use crate::commits::FirstCommit;
use crate::cond;
use crate::model::*;
use crate::path::Path;
use crate::store::{RUN_JOB, RunRow, WorkflowRow, Workflows, store};
use crate::template;
use chrono::{DateTime, Datelike, TimeDelta, Utc};
use herald_accounts::Principal;
use herald_core::{Error, ErrorCode, TeamRole};
use herald_posts::{NewPost, Posts, Staged, StagedPost, TargetInput, Thread};
use herald_queue::{Handler, Job, JobError, NewJob};
use herald_store::{Backend, Ts, Tx, exec, on_read};
use herald_triggers::{EventSink, EventView};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// What a run carries from step to step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RunState {
    /// The post text so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Per-platform (or per-connection) texts: AI variants, approvers' edits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, String>,
    /// Approvers' edits: `*` for every target, or a connection id or platform. They win over
    /// every other text, so what was approved is what is posted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub edits: BTreeMap<String, String>,
    /// Each finished step's output, by id.
    #[serde(default)]
    pub steps: BTreeMap<String, Value>,
    /// Tries so far of a step that failed transiently, by path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attempts: BTreeMap<String, u32>,
}

impl RunState {
    /// The variables templates and conditions see: the input (event data or payload), plus
    /// `text`, `variants`, `steps`, `run`, and AmpFlow's flat aliases (`video_title`, …).
    fn vars(&self, input: &Value, run: Uuid, workflow: Uuid) -> Value {
        let mut v = match input {
            Value::Object(o) => Value::Object(o.clone()),
            _ => json!({}),
        };
        // The run's text once a step has made one; before that, an input's own `text` (a
        // webhook body's, say) shows through.
        match &self.text {
            Some(t) => v["text"] = json!(t),
            None if v.get("text").is_some() => {}
            None => v["text"] = json!(""),
        }
        v["variants"] = json!(self.variants);
        v["steps"] = json!(self.steps);
        v["run"] = json!({"id": run, "workflow_id": workflow});
        template::with_aliases(v)
    }
}

pub(crate) enum Outcome {
    /// Done; go on at `next` (the following step when `None`). A publish step's `post`, checked,
    /// is written with the commit that records the step.
    Next { output: Value, next: Option<Option<Path>>, post: Option<Box<StagedPost>> },
    /// A filter said no: the run ends `skipped`.
    Skip { output: Value, reason: String },
    /// Sleep until then, and run this step again.
    Wait { output: Value, until: DateTime<Utc> },
    /// A transient failure: try this step again later.
    Retry { code: String, message: String, after: Duration },
    /// The run fails.
    Fail { code: String, message: String },
    /// The run ends with this status (an approval rejected or expired).
    End { status: RunStatus, code: String, message: String, output: Value },
}

fn fail(code: &str, message: impl Into<String>) -> Outcome {
    Outcome::Fail { code: code.into(), message: message.into() }
}

/// An error's message with its details, for a step run's error.
fn with_details(e: &Error) -> String {
    match &e.details {
        Some(d) => format!("{} {d}", e.message),
        None => e.message.clone(),
    }
}

fn next(output: Value) -> Outcome {
    Outcome::Next { output, next: None, post: None }
}

/// One step run to write.
#[derive(Clone)]
pub(crate) struct Record {
    path: String,
    step_id: String,
    kind: &'static str,
    status: &'static str,
    input: Option<Value>,
    output: Option<Value>,
    error: Option<String>,
    code: Option<String>,
    attempts: u32,
    started_at: DateTime<Utc>,
    finished: bool,
}

/// How a commit went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    Written,
    /// The run moved on without this executor (cancelled, or advanced by another job).
    Lost,
    /// The publish step's post was refused; the run was written failed at that step.
    Refused,
}

impl From<bool> for Committed {
    fn from(written: bool) -> Self {
        if written { Committed::Written } else { Committed::Lost }
    }
}

/// How a step runs: for a dry run (every step but publish and http), or for real.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Dry,
    /// `fresh`: a run not stored yet, driven by the first try of its event's job, so none of its
    /// steps can have made a post yet: its first commit writes the run with its post (or, when
    /// the run was stored already, neither), and that commit has not been tried before.
    Live {
        fresh: bool,
    },
}
use Mode::{Dry, Live};

/// What a commit writes to the run.
#[derive(Clone)]
struct Commit {
    status: RunStatus,
    cursor: String,
    wait_until: Option<DateTime<Utc>>,
    error: Option<(String, String)>,
    /// Enqueue a job to go on at this time (or now).
    wake: Option<DateTime<Utc>>,
}

/// Writes the step runs of one commit, or of several runs' commits, in one statement; a step run stored before (a retried or waiting step) is updated. Each run's records go
/// in order, one row per (run, path), the latest: a statement may not update a row twice.
pub(crate) async fn insert_step_runs(tx: &mut Tx, runs: &[(Uuid, &[Record])], now: DateTime<Utc>) -> Result<(), Error> {
    let mut rows: Vec<(Uuid, &Record)> = Vec::new();
    for (run, records) in runs {
        let first = rows.len();
        for r in *records {
            let mut i = first;
            while i < rows.len() {
                if rows[i].1.path == r.path {
                    rows.remove(i);
                } else {
                    i += 1;
                }
            }
            rows.push((*run, r));
        }
    }
    if tx.backend() == Backend::Sqlite {
        defer_step_runs_sqlite(tx, &rows, now);
        return Ok(());
    }
    if rows.is_empty() {
        return Ok(());
    }
    // Arrays ([`herald_store::column`]): one statement text whatever the number of rows. Deferred:
    // it goes with the commit, and fails it if it fails.
    use herald_store::column;
    tx.defer(
        "INSERT INTO workflow_step_runs (id, run_id, path, step_id, kind, status, input, output, error, error_code, \
         attempts, started_at, finished_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
           $8::text[], $9::text[], $10::text[], $11::int8[], $12::timestamptz[], $13::timestamptz[]) \
         ON CONFLICT (run_id, path) DO UPDATE SET status = excluded.status, input = excluded.input, \
         output = excluded.output, error = excluded.error, error_code = excluded.error_code, \
         attempts = excluded.attempts, finished_at = excluded.finished_at",
    )
    .bind_pg(column(&rows, |_| Uuid::now_v7()))
    .bind_pg(column(&rows, |(run, _)| *run))
    .bind_pg(column(&rows, |(_, r)| r.path.as_str()))
    .bind_pg(column(&rows, |(_, r)| r.step_id.as_str()))
    .bind_pg(column(&rows, |(_, r)| r.kind))
    .bind_pg(column(&rows, |(_, r)| r.status))
    .bind_pg(column(&rows, |(_, r)| r.input.as_ref().map(Value::to_string)))
    .bind_pg(column(&rows, |(_, r)| r.output.as_ref().map(Value::to_string)))
    .bind_pg(column(&rows, |(_, r)| r.error.as_deref()))
    .bind_pg(column(&rows, |(_, r)| r.code.as_deref()))
    .bind_pg(column(&rows, |(_, r)| r.attempts as i64))
    .bind_pg(column(&rows, |(_, r)| r.started_at))
    .bind_pg(column(&rows, |(_, r)| r.finished.then_some(now)));
    Ok(())
}

/// [`insert_step_runs`] on SQLite: the rows go as one JSON parameter, so the statement's text is
/// the same whatever their number, and SQLite's writer compiles it once (see
/// `herald_posts::store::defer_insert_deliveries_sqlite`).
fn defer_step_runs_sqlite(tx: &mut Tx, rows: &[(Uuid, &Record)], now: DateTime<Utc>) {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: uuid::fmt::Simple,
        run: uuid::fmt::Simple,
        path: &'a str,
        step: &'a str,
        kind: &'a str,
        status: &'a str,
        input: Option<String>,
        output: Option<String>,
        error: Option<&'a str>,
        code: Option<&'a str>,
        attempts: u32,
        started_at: i64,
        finished_at: Option<i64>,
    }
    let input: Vec<Row<'_>> = rows
        .iter()
        .map(|(run, r)| Row {
            id: Uuid::now_v7().simple(),
            run: run.simple(),
            path: &r.path,
            step: &r.step_id,
            kind: r.kind,
            status: r.status,
            input: r.input.as_ref().map(Value::to_string),
            output: r.output.as_ref().map(Value::to_string),
            error: r.error.as_deref(),
            code: r.code.as_deref(),
            attempts: r.attempts,
            started_at: herald_store::to_micros(r.started_at),
            finished_at: r.finished.then(|| herald_store::to_micros(now)),
        })
        .collect();
    // `WHERE true`: without a WHERE, SQLite would read `ON CONFLICT` as a join's `ON`.
    tx.defer(
        "INSERT INTO workflow_step_runs (id, run_id, path, step_id, kind, status, input, output, error, error_code, \
         attempts, started_at, finished_at) \
         SELECT unhex(value ->> 'id'), unhex(value ->> 'run'), value ->> 'path', value ->> 'step', value ->> 'kind', \
                value ->> 'status', value ->> 'input', value ->> 'output', value ->> 'error', value ->> 'code', \
                value ->> 'attempts', value ->> 'started_at', value ->> 'finished_at' \
         FROM jsonb_each($1) WHERE true \
         ON CONFLICT (run_id, path) DO UPDATE SET status = excluded.status, input = excluded.input, \
         output = excluded.output, error = excluded.error, error_code = excluded.error_code, \
         attempts = excluded.attempts, finished_at = excluded.finished_at",
    )
    .bind(serde_json::to_string(&input).unwrap_or_default());
}

/// Enqueues a job that advances `run` (at `at`, or now).
pub(crate) async fn enqueue_run(tx: &mut Tx, run: Uuid, at: Option<DateTime<Utc>>) -> Result<(), Error> {
    let mut job = NewJob::new(RUN_JOB, json!({"run": run})).max_attempts(25);
    if let Some(at) = at {
        job = job.run_at(at);
    }
    herald_queue::enqueue(tx, job).await.map_err(Error::from)?;
    Ok(())
}

/// Only the crash tests set it: `HERALD_FAILPOINT=workflow.after_publish` dies after a publish
/// step, before the commit that records it (which on SQLite writes its post too; on PostgreSQL
/// and for a post into its connections' slots, the post is written on its own first).
fn failpoint_after_publish() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("HERALD_FAILPOINT").is_ok_and(|v| v == "workflow.after_publish"))
}

/// `HH:MM` → minutes after midnight.
pub(crate) fn parse_time_of_day(s: &str) -> Option<(u32, u32)> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.trim().len() <= 5).then_some((h, m))
}

fn job_error(e: Error) -> JobError {
    JobError::retry(e.message)
}

impl Workflows {
    /// Advances a run as far as it goes now. Safe to call twice at once, or again after a crash.
    pub async fn advance(&self, run: Uuid) -> Result<(), Error> {
        let Some(row) = self.run_row(run).await? else { return Ok(()) };
        if row.status().is_final() {
            return Ok(());
        }
        let wf = self.workflow_row(row.workflow_id).await?;
        self.drive(row, &wf, true, false, None).await.map(|_| ())
    }

    /// Advances a run from `row`: as read or as just stored, or (`stored` false) not stored yet,
    /// and then its first commit stores it. `false` when another executor stored or advanced the
    /// run first, and this one left it to them. `job`: the `source.event` job that started this
    /// run, whose success a final first commit records (see [`Workflows::on_event`]).
    /// `first_try`: driven by the first try of its event's job, so nothing of the run can have
    /// been written yet (see [`Mode::Live`]).
    async fn drive(
        &self,
        row: RunRow,
        wf: &WorkflowRow,
        mut stored: bool,
        first_try: bool,
        job: Option<&Job>,
    ) -> Result<bool, Error> {
        let def = self.definition(row.workflow_id, row.version).await?;
        let input: Value = serde_json::from_str(&row.input).unwrap_or(Value::Null);
        let mut state: RunState = serde_json::from_str(&row.state).unwrap_or_default();
        let mut seq = row.seq;
        let mut cursor = Path::parse(&row.cursor).filter(|_| !row.cursor.is_empty());
        let mut records: Vec<Record> = Vec::new();
        // A publish step's post, written by the commit that records the step.
        let mut post: Option<Box<StagedPost>> = None;
        // Steps run until one ends the run or makes it wait; that commit ends this drive.
        let last = loop {
            let Some(path) = cursor.clone() else {
                let c = Commit {
                    status: RunStatus::Succeeded,
                    cursor: String::new(),
                    wait_until: None,
                    error: None,
                    wake: None,
                };
                break c;
            };
            let Some(step) = path.step(&def.steps) else {
                let c = Commit {
                    status: RunStatus::Failed,
                    cursor: path.display(),
                    wait_until: None,
                    error: Some((
                        "definition_mismatch".into(),
                        format!("version {} has no step at {}", row.version, path.display()),
                    )),
                    wake: None,
                };
                break c;
            };
            let started_at = Utc::now();
            let key = path.display();
            let attempts = state.attempts.get(&key).copied().unwrap_or(0) + 1;
            let vars = state.vars(&input, row.id, row.workflow_id);
            let (outcome, step_input) =
                self.exec(&row, wf, &def, &path, step, &mut state, &vars, Live { fresh: !stored && first_try }).await;
            let mut rec = Record {
                path: key.clone(),
                step_id: step.id.clone(),
                kind: step.kind.name(),
                status: "succeeded",
                input: step_input,
                output: None,
                error: None,
                code: None,
                attempts,
                started_at,
                finished: true,
            };
            let here = path.display();
            match outcome {
                Outcome::Next { output, next, post: staged } => {
                    post = staged;
                    if matches!(step.kind, StepKind::Publish(_)) && failpoint_after_publish() {
                        tracing::error!("failpoint workflow.after_publish: aborting before the run's commit");
                        std::process::abort();
                    }
                    state.attempts.remove(&key);
                    state.steps.insert(step.id.clone(), output.clone());
                    rec.output = Some(output);
                    records.push(rec);
                    cursor = next.unwrap_or_else(|| path.next(&def.steps));
                    // The last step's result commits with the run's end, in one transaction.
                    if step.kind.is_effect() && cursor.is_some() {
                        let c = Commit {
                            status: RunStatus::Running,
                            cursor: cursor.as_ref().map(Path::display).unwrap_or_default(),
                            wait_until: None,
                            error: None,
                            wake: None,
                        };
                        match self.commit(&row, &mut seq, &mut stored, &state, &mut records, &mut post, c, job).await? {
                            Committed::Written => {}
                            Committed::Lost => return Ok(false),
                            // The run ended failed at this step.
                            Committed::Refused => return Ok(true),
                        }
                    }
                }
                Outcome::Skip { output, reason } => {
                    state.steps.insert(step.id.clone(), output.clone());
                    rec.output = Some(output);
                    records.push(rec);
                    let c = Commit {
                        status: RunStatus::Skipped,
                        cursor: here,
                        wait_until: None,
                        error: Some(("filtered_out".into(), reason)),
                        wake: None,
                    };
                    break c;
                }
                Outcome::Wait { output, until } => {
                    state.steps.insert(step.id.clone(), output.clone());
                    rec.status = "waiting";
                    rec.output = Some(output);
                    rec.finished = false;
                    records.push(rec);
                    let c = Commit {
                        status: RunStatus::Waiting,
                        cursor: here,
                        wait_until: Some(until),
                        error: None,
                        wake: Some(until),
                    };
                    break c;
                }
                Outcome::Retry { code, message, after } => {
                    let policy = step.retry.unwrap_or_default();
                    rec.error = Some(message.clone());
                    rec.code = Some(code.clone());
                    if attempts >= policy.max_attempts {
                        rec.status = "failed";
                        records.push(rec);
                        let msg = format!("{} failed after {attempts} tries: {message}", step.id);
                        let c = Commit {
                            status: RunStatus::Failed,
                            cursor: here,
                            wait_until: None,
                            error: Some((code, msg)),
                            wake: None,
                        };
                        break c;
                    }
                    state.attempts.insert(key, attempts);
                    rec.status = "retrying";
                    rec.finished = false;
                    records.push(rec);
                    let at = Utc::now() + after.max(policy.backoff(attempts));
                    let c = Commit {
                        status: RunStatus::Running,
                        cursor: here,
                        wait_until: Some(at),
                        error: None,
                        wake: Some(at),
                    };
                    break c;
                }
                Outcome::Fail { code, message } => {
                    rec.status = "failed";
                    rec.error = Some(message.clone());
                    rec.code = Some(code.clone());
                    records.push(rec);
                    let msg = format!("{}: {message}", step.id);
                    let c = Commit {
                        status: RunStatus::Failed,
                        cursor: here,
                        wait_until: None,
                        error: Some((code, msg)),
                        wake: None,
                    };
                    break c;
                }
                Outcome::End { status, code, message, output } => {
                    state.steps.insert(step.id.clone(), output.clone());
                    rec.output = Some(output);
                    records.push(rec);
                    let c = Commit { status, cursor: here, wait_until: None, error: Some((code, message)), wake: None };
                    break c;
                }
            }
        };
        let committed = self.commit(&row, &mut seq, &mut stored, &state, &mut records, &mut post, last, job).await?;
        Ok(committed != Committed::Lost)
    }

    pub(crate) async fn workflow_row(&self, id: Uuid) -> Result<WorkflowRow, Error> {
        let row: Option<WorkflowRow> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT id, name, active, version, created_at, updated_at FROM workflows WHERE id = $1")
            .bind(id).fetch_optional(c).await)
        .map_err(store)?;
        row.ok_or_else(|| Error::not_found("workflow"))
    }

    /// Writes the run, its pending step runs and a publish step's post if nobody advanced the run
    /// meanwhile; `false` when the run moved on without us (cancelled, or advanced by another job).
    /// A post refused as it is written (its team over the monthly quota) fails the publish step,
    /// and the run is written failed instead, without it.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        row: &RunRow,
        seq: &mut i64,
        stored: &mut bool,
        state: &RunState,
        records: &mut Vec<Record>,
        post: &mut Option<Box<StagedPost>>,
        c: Commit,
        job: Option<&Job>,
    ) -> Result<Committed, Error> {
        let Some(staged) = post.take() else {
            return self.write_commit(row, seq, stored, state, records, None, c, job).await.map(Committed::from);
        };
        // Kept to record the publish step's failure, should its post be refused.
        let kept = records.clone();
        let e = match self.write_commit(row, seq, stored, state, records, Some(staged), c, job).await {
            Err(e) if !matches!(e.code, ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::Conflict) => e,
            // Written; or a failure a retry may not meet (the job runs the step again, and a post
            // that another executor wrote meanwhile is found by its key).
            written => return written.map(Committed::from),
        };
        *records = kept;
        let Some(rec) = records.last_mut() else { return Err(e) };
        let message = with_details(&e);
        rec.status = "failed";
        rec.output = None;
        rec.error = Some(message.clone());
        rec.code = Some(e.code.as_str().to_string());
        let mut state = state.clone();
        state.steps.remove(&rec.step_id);
        let c = Commit {
            status: RunStatus::Failed,
            cursor: rec.path.clone(),
            wait_until: None,
            error: Some((e.code.as_str().to_string(), format!("{}: {message}", rec.step_id))),
            wake: None,
        };
        match self.write_commit(row, seq, stored, &state, records, None, c, job).await? {
            true => Ok(Committed::Refused),
            false => Ok(Committed::Lost),
        }
    }

    /// [`Workflows::commit`], for one try.
    #[allow(clippy::too_many_arguments)]
    async fn write_commit(
        &self,
        row: &RunRow,
        seq: &mut i64,
        stored: &mut bool,
        state: &RunState,
        records: &mut Vec<Record>,
        post: Option<Box<StagedPost>>,
        c: Commit,
        job: Option<&Job>,
    ) -> Result<bool, Error> {
        let now = Utc::now();
        // The run as this commit leaves it.
        let (code, error) = c.error.clone().unzip();
        let after = RunRow {
            status: c.status.as_str().to_string(),
            state: serde_json::to_string(state).unwrap_or_default(),
            cursor: c.cursor.clone(),
            seq: *seq + 1,
            wait_until: c.wait_until.map(Ts),
            error,
            error_code: code,
            updated_at: Ts(now),
            finished_at: c.status.is_final().then_some(Ts(now)),
            ..row.clone()
        };
        if !*stored && c.wake.is_none() && c.status != RunStatus::Failed {
            // Written with other runs' first commits (see `commits`).
            let first = FirstCommit {
                run: after,
                records: std::mem::take(records),
                job: job.filter(|_| c.status.is_final()).map(Job::succeeded),
                post,
            };
            let db = &self.inner.db;
            if !self.inner.commits.get_or_init(|| crate::commits::spawn(db.clone())).write(first).await? {
                return Ok(false);
            }
            *seq += 1;
            *stored = true;
            return Ok(true);
        }
        let mut tx = self.inner.db.begin().await?;
        let moved = if *stored {
            exec!(
                tx,
                "UPDATE workflow_runs SET status = $3, state = $4, cursor = $5, seq = seq + 1, wait_until = $6, error = $7, \
                 error_code = $8, updated_at = $9, finished_at = $10 WHERE id = $1 AND seq = $2",
                row.id,
                *seq,
                &after.status,
                &after.state,
                &after.cursor,
                after.wait_until,
                &after.error,
                &after.error_code,
                after.updated_at,
                after.finished_at
            )
            .map_err(store)?
                == 1
        } else {
            // Its first commit stores the run, unless another executor of the event did first.
            Self::store_run(&mut tx, &after).await?
        };
        if !moved {
            records.clear();
            return Ok(false);
        }
        insert_step_runs(&mut tx, &[(row.id, records.as_slice())], now).await?;
        if let Some(p) = &post {
            Posts::write_in(&mut tx, &[p]).await?;
        }
        records.clear();
        if let Some(at) = c.wake {
            enqueue_run(&mut tx, row.id, Some(at)).await?;
        }
        if c.status == RunStatus::Failed {
            let (code, message) = c.error.unwrap_or_default();
            herald_posts::events::emit(
                &mut tx,
                row.team_id,
                "run.failed",
                ("run", row.id),
                &format!("a workflow run failed: {message}"),
                json!({"run": row.id, "workflow": row.workflow_id, "code": code, "error": message}),
            )
            .await?;
        }
        tx.commit().await?;
        *seq += 1;
        *stored = true;
        // Only the executor whose commit ended the run starts the error workflow.
        if c.status == RunStatus::Failed {
            self.after_failure(row).await;
        }
        Ok(true)
    }

    /// Starts the team's error workflow, if it has one, on the failed run.
    async fn after_failure(&self, row: &RunRow) {
        let result: Result<(), Error> = async {
            let target: Option<(Option<Uuid>,)> = on_read!(self.inner.db, c => sqlx::query_as(
                "SELECT error_workflow FROM teams WHERE id = $1").bind(row.team_id).fetch_optional(c).await)
            .map_err(store)?;
            let Some(target) = target.and_then(|t| t.0) else { return Ok(()) };
            // An error workflow that fails does not start itself again.
            if target == row.workflow_id {
                return Ok(());
            }
            let ewf = self.workflow_row(target).await?;
            if !ewf.active {
                return Ok(());
            }
            let def = self.definition(ewf.id, ewf.version).await?;
            let failed = self.run_row(row.id).await?.map(|r| r.view(None));
            let wf = self.workflow_row(row.workflow_id).await?;
            let input = json!({"failed_run": failed, "workflow": {"id": wf.id, "name": wf.name}});
            let mut tx = self.inner.db.begin().await?;
            if let Some(run) =
                Self::insert_run(&mut tx, row.team_id, ewf.id, ewf.version, &def, None, "error", Some(row.id), &input)
                    .await?
            {
                enqueue_run(&mut tx, run.id, None).await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(run = %row.id, error = %e.message, "could not start the team's error workflow");
        }
    }

    /// Runs one step. Pure steps change `state`; effects return their output.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn exec(
        &self,
        run: &RunRow,
        wf: &WorkflowRow,
        def: &Definition,
        path: &Path,
        step: &Step,
        state: &mut RunState,
        vars: &Value,
        mode: Mode,
    ) -> (Outcome, Option<Value>) {
        let dry = mode == Dry;
        let render = |src: &str| template::render(src, vars);
        match &step.kind {
            StepKind::Filter { when } => {
                if cond::eval(when, vars) {
                    (next(json!({"passed": true})), None)
                } else {
                    (
                        Outcome::Skip {
                            output: json!({"passed": false}),
                            reason: format!("filter `{}` did not pass", step.id),
                        },
                        None,
                    )
                }
            }
            StepKind::Condition { when, .. } => {
                let then = cond::eval(when, vars);
                let output = json!({"branch": if then { "then" } else { "else" }});
                (Outcome::Next { output, next: Some(path.enter(then, &def.steps)), post: None }, None)
            }
            StepKind::Template { template: src, per_platform } => {
                let text = match render(src) {
                    Ok(t) => t,
                    Err(e) => return (fail(e.code(), e.to_string()), None),
                };
                let mut variants = BTreeMap::new();
                for (platform, src) in per_platform {
                    match render(src) {
                        Ok(t) => {
                            variants.insert(platform.clone(), t);
                        }
                        Err(e) => return (fail(e.code(), format!("per_platform.{platform}: {e}")), None),
                    }
                }
                state.text = Some(text.clone());
                state.variants.extend(variants.clone());
                (next(json!({"text": text, "variants": variants})), None)
            }
            StepKind::Delay(d) => {
                // The time is fixed when the step is first reached, so waking early or late
                // (or twice) never moves it.
                let until = match state.steps.get(&step.id).and_then(|o| o.get("until")).and_then(|u| u.as_str()) {
                    Some(u) => DateTime::parse_from_rfc3339(u).map(|t| t.with_timezone(&Utc)).ok(),
                    None => None,
                };
                let until = match until {
                    Some(u) => u,
                    None => match self.delay_until(run.team_id, d).await {
                        Ok(u) => u,
                        Err(e) => return (fail("delay_invalid", e.message), None),
                    },
                };
                if dry || Utc::now() >= until {
                    (next(json!({"until": until, "waited": !dry})), None)
                } else {
                    (Outcome::Wait { output: json!({"until": until}), until }, None)
                }
            }
            StepKind::Approval(a) => {
                if dry {
                    let output = json!({"would_ask": {"users": a.users, "role": a.role, "timeout": a.timeout}});
                    return (next(output), None);
                }
                self.approval_step(run, wf, path, step, a, state, vars).await
            }
            StepKind::Publish(p) => self.publish_step(run, wf, path, p, state, vars, mode).await,
            StepKind::Http(h) => crate::effects::http_step(self, run, path, h, vars, dry).await,
            StepKind::AiRewrite(a) => {
                crate::effects::ai_step(self, run, path, step.retry.unwrap_or_default(), a, state, vars).await
            }
        }
    }

    async fn team_zone(&self, team: Uuid, given: Option<&str>) -> Result<chrono_tz::Tz, Error> {
        self.inner.posts.team_timezone(team, given).await
    }

    /// When a delay ends, reckoned from now.
    async fn delay_until(&self, team: Uuid, d: &Delay) -> Result<DateTime<Utc>, Error> {
        let now = Utc::now();
        if let Some(f) = &d.duration {
            let dur = herald_core::time::parse_duration(f).map_err(|e| Error::new(ErrorCode::ValidationFailed, e))?;
            return Ok(now + TimeDelta::from_std(dur).unwrap_or(TimeDelta::zero()));
        }
        if let Some(conn) = d.next_slot {
            return self.inner.posts.next_free_slot(team, conn).await?.ok_or_else(|| {
                Error::new(
                    ErrorCode::ValidationFailed,
                    format!("connection {conn} has no free posting slot in the next 12 weeks; add some with PUT /api/v1/connections/{conn}/slots"),
                )
            });
        }
        let tz = self.team_zone(team, d.timezone.as_deref()).await?;
        let (h, m) = d.until_time.as_deref().and_then(parse_time_of_day).unwrap_or((0, 0));
        let weekday = d.weekday.as_deref().and_then(|w| w.parse::<chrono::Weekday>().ok());
        next_local(now, tz, h, m, weekday)
            .ok_or_else(|| Error::new(ErrorCode::ValidationFailed, "no such local time in the next two weeks"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn approval_step(
        &self,
        run: &RunRow,
        wf: &WorkflowRow,
        path: &Path,
        step: &Step,
        a: &Approval,
        state: &mut RunState,
        vars: &Value,
    ) -> (Outcome, Option<Value>) {
        let found: Result<Option<crate::store::ApprovalRow>, Error> = async {
            let sql = format!("SELECT {} FROM approvals WHERE run_id = $1 AND path = $2", crate::store::APPROVAL_COLS);
            on_read!(self.inner.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(run.id).bind(path.display()).fetch_optional(c).await)
            .map_err(store)
        }
        .await;
        let row = match found {
            Ok(r) => r,
            Err(e) => {
                return (
                    Outcome::Retry { code: "store".into(), message: e.message, after: Duration::from_secs(2) },
                    None,
                );
            }
        };
        let Some(mut row) = row else {
            return match self.ask(run, wf, path, step, a, state, vars).await {
                Ok((id, until)) => {
                    (Outcome::Wait { output: json!({"approval": id, "expires_at": until}), until }, None)
                }
                Err(e) => {
                    (Outcome::Retry { code: "store".into(), message: e.message, after: Duration::from_secs(2) }, None)
                }
            };
        };
        if row.status == "pending" && row.expires_at.0 <= Utc::now() {
            let to = match a.on_timeout {
                OnTimeout::Approve => "approved",
                OnTimeout::Reject => "rejected",
                OnTimeout::Expire => "expired",
            };
            let settled: Result<u64, Error> = async {
                let mut tx = self.inner.db.begin().await?;
                let n = exec!(
                    tx,
                    "UPDATE approvals SET status = $2, decided_via = 'timeout', decided_at = $3 WHERE id = $1 AND status = 'pending'",
                    row.id,
                    to,
                    Ts::now()
                )
                .map_err(store)?;
                tx.commit().await?;
                Ok(n)
            }
            .await;
            match settled {
                Ok(_) => match self.approval_row(row.id).await {
                    Ok(Some(r)) => row = r,
                    _ => row.status = to.into(),
                },
                Err(e) => {
                    return (
                        Outcome::Retry { code: "store".into(), message: e.message, after: Duration::from_secs(2) },
                        None,
                    );
                }
            }
        }
        let decided = json!({
            "approval": row.id, "decision": row.status, "by": row.decided_by, "via": row.decided_via,
            "comment": row.comment, "decided_at": row.decided_at.map(|t| t.0),
        });
        match row.status.as_str() {
            "approved" => {
                if let Some(edits) = row.edits.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()) {
                    if let Some(t) = edits["text"].as_str() {
                        state.text = Some(t.to_string());
                        // A new text for every target replaces earlier edits and variants.
                        state.variants.clear();
                        state.edits.clear();
                        state.edits.insert("*".into(), t.to_string());
                    }
                    if let Some(targets) = edits["targets"].as_object() {
                        for (k, v) in targets {
                            if let Some(v) = v.as_str() {
                                state.edits.insert(k.clone(), v.to_string());
                            }
                        }
                    }
                }
                (next(decided), None)
            }
            "rejected" => {
                let message = format!("approval `{}` was rejected", step.id);
                (
                    Outcome::End {
                        status: RunStatus::Cancelled,
                        code: "approval_rejected".into(),
                        message,
                        output: decided,
                    },
                    None,
                )
            }
            "expired" => {
                let message = format!("approval `{}` expired unanswered at {}", step.id, row.expires_at.0.to_rfc3339());
                (
                    Outcome::End {
                        status: RunStatus::Cancelled,
                        code: "approval_expired".into(),
                        message,
                        output: decided,
                    },
                    None,
                )
            }
            "cancelled" => (
                Outcome::End {
                    status: RunStatus::Cancelled,
                    code: "cancelled".into(),
                    message: "cancelled".into(),
                    output: decided,
                },
                None,
            ),
            _ => (
                Outcome::Wait {
                    output: json!({"approval": row.id, "expires_at": row.expires_at.0}),
                    until: row.expires_at.0,
                },
                None,
            ),
        }
    }

    /// Opens an approval (once per run and step) and tells the team.
    #[allow(clippy::too_many_arguments)]
    async fn ask(
        &self,
        run: &RunRow,
        wf: &WorkflowRow,
        path: &Path,
        step: &Step,
        a: &Approval,
        state: &RunState,
        vars: &Value,
    ) -> Result<(Uuid, DateTime<Utc>), Error> {
        use rand::Rng;
        let timeout =
            herald_core::time::parse_duration(&a.timeout).map_err(|e| Error::new(ErrorCode::ValidationFailed, e))?;
        let expires = Utc::now() + TimeDelta::from_std(timeout).unwrap_or(TimeDelta::days(1));
        let message = match &a.message {
            Some(m) => template::render(m, vars).ok(),
            None => None,
        };
        let proposal = json!({"text": state.text, "variants": state.variants, "message": message});
        let token = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 32]>())
        };
        let id = Uuid::now_v7();
        let mut tx = self.inner.db.begin().await?;
        let n = exec!(
            tx,
            "INSERT INTO approvals (id, team_id, run_id, path, status, approvers, proposal, on_timeout, expires_at, token_hash, created_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, $10) ON CONFLICT (run_id, path) DO NOTHING",
            id,
            run.team_id,
            run.id,
            path.display(),
            json!({"users": a.users, "role": a.role}).to_string(),
            proposal.to_string(),
            serde_json::to_value(a.on_timeout).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            Ts(expires),
            crate::store::token_hash(&token),
            Ts::now()
        )
        .map_err(store)?;
        if n == 1 {
            // The link is in the webhook data (the team's own, signed endpoints), not in the
            // notification text every member can read.
            let link = self.inner.config.public_url.as_ref().map(|p| format!("{p}/approve/{token}"));
            herald_posts::events::emit(
                &mut tx,
                run.team_id,
                "approval.requested",
                ("approval", id),
                &format!("workflow `{}` waits for approval at step `{}`", wf.name, step.id),
                json!({"approval": id, "run": run.id, "workflow": wf.id, "step": step.id, "approvers": {"users": a.users, "role": a.role},
                       "proposal": proposal, "expires_at": expires, "link": link}),
            )
            .await?;
        }
        tx.commit().await?;
        if n == 1 {
            return Ok((id, expires));
        }
        let existing: Option<(Uuid, Ts)> = on_read!(self.inner.db, c => sqlx::query_as(
            "SELECT id, expires_at FROM approvals WHERE run_id = $1 AND path = $2").bind(run.id).bind(path.display()).fetch_optional(c).await)
        .map_err(store)?;
        existing.map(|(i, t)| (i, t.0)).ok_or_else(|| Error::internal("the approval vanished"))
    }

    /// Creates the step's post through the posts pipeline, once.
    #[allow(clippy::too_many_arguments)]
    async fn publish_step(
        &self,
        run: &RunRow,
        wf: &WorkflowRow,
        path: &Path,
        p: &Publish,
        state: &RunState,
        vars: &Value,
        mode: Mode,
    ) -> (Outcome, Option<Value>) {
        let dry = mode == Dry;
        let render = |src: &str| template::render(src, vars);
        let text = match &p.text {
            Some(src) => match render(src) {
                Ok(t) => t,
                Err(e) => return (fail(e.code(), format!("text: {e}")), None),
            },
            None => state.text.clone().unwrap_or_default(),
        };
        // The targets: named connections (from the team's rows kept for a second, handed to the
        // post's create so it does not read them again), and every connection of a named platform.
        let named: Vec<Uuid> = p.targets.iter().filter_map(|t| t.connection).collect();
        let loaded = match self.inner.connections.load_many_kept(run.team_id, &named).await {
            Ok(l) => l,
            Err(e) => {
                return (
                    Outcome::Retry { code: "store".into(), message: e.message, after: Duration::from_secs(2) },
                    None,
                );
            }
        };
        // A named connection whose credentials do not open is still a target: the post's create
        // says what is wrong with it.
        let unopened: Vec<Uuid> = named.iter().filter(|id| !loaded.contains_key(id)).copied().collect();
        let mut views: std::collections::HashMap<Uuid, herald_connections::ConnectionView> =
            loaded.iter().map(|(id, l)| (*id, l.view.clone())).collect();
        if !unopened.is_empty() {
            match self.inner.connections.get_many(run.team_id, &unopened).await {
                Ok(v) => views.extend(v),
                Err(e) => {
                    return (
                        Outcome::Retry { code: "store".into(), message: e.message, after: Duration::from_secs(2) },
                        None,
                    );
                }
            }
        }
        let mut targets: Vec<(Uuid, String, Option<String>)> = Vec::new();
        for (i, t) in p.targets.iter().enumerate() {
            let own = match &t.text {
                Some(src) => match render(src) {
                    Ok(x) => Some(x),
                    Err(e) => return (fail(e.code(), format!("targets[{i}].text: {e}")), None),
                },
                None => None,
            };
            let found = match (&t.connection, &t.platform) {
                (Some(c), _) => match views.get(c) {
                    Some(v) => Ok(vec![(v.id, v.platform.clone())]),
                    None => Err(Error::not_found("connection")),
                },
                (None, Some(pl)) => self
                    .inner
                    .connections
                    .list_kept(run.team_id, Some(pl))
                    .await
                    .map(|vs| vs.into_iter().map(|v| (v.id, v.platform)).collect()),
                _ => Ok(vec![]),
            };
            match found {
                Ok(list) => {
                    for (id, platform) in list {
                        if !targets.iter().any(|(x, ..)| *x == id) {
                            targets.push((id, platform, own.clone()));
                        }
                    }
                }
                Err(e) if e.code == ErrorCode::NotFound => {
                    return (
                        fail("connection_missing", format!("targets[{i}]: the connection no longer exists")),
                        None,
                    );
                }
                Err(e) => {
                    return (
                        Outcome::Retry { code: "store".into(), message: e.message, after: Duration::from_secs(2) },
                        None,
                    );
                }
            }
        }
        if targets.is_empty() {
            return (fail("no_targets", "no connection matches the step's targets"), None);
        }
        let link = match &p.link {
            Some(src) => match render(src) {
                Ok(l) if !l.trim().is_empty() => Some(l.trim().to_string()),
                Ok(_) => None,
                Err(e) => return (fail(e.code(), format!("link: {e}")), None),
            },
            None => None,
        };
        let mut media = Vec::new();
        for (i, src) in p.media.iter().enumerate() {
            match render(src).map(|m| m.trim().to_string()) {
                Ok(m) if m.is_empty() => {}
                Ok(m) => match m.parse::<Uuid>() {
                    Ok(id) => media.push(id),
                    Err(_) => {
                        return (fail("media_invalid", format!("media[{i}] rendered `{m}`, not a media id")), None);
                    }
                },
                Err(e) => return (fail(e.code(), format!("media[{i}]: {e}")), None),
            }
        }
        let schedule_at = match &p.schedule {
            When::Now => None,
            When::NextSlot => Some("next_slot".to_string()),
            When::At(src) => match render(src) {
                Ok(t) => Some(t.trim().to_string()),
                Err(e) => return (fail(e.code(), format!("schedule.at: {e}")), None),
            },
            When::In(d) => match herald_core::time::parse_duration(d) {
                Ok(d) => Some((Utc::now() + TimeDelta::from_std(d).unwrap_or_default()).to_rfc3339()),
                Err(e) => return (fail("schedule_invalid", e), None),
            },
        };
        let per_target: Vec<Value> = targets
            .iter()
            .map(|(id, platform, own)| {
                // An approver's edit wins; then the target's own text; then a variant (AI, a
                // template's per-platform text); then the step's text or the run's.
                let t = state
                    .edits
                    .get(&id.to_string())
                    .or_else(|| state.edits.get(platform))
                    .or_else(|| state.edits.get("*"))
                    .cloned()
                    .or_else(|| own.clone())
                    .or_else(|| state.variants.get(&id.to_string()).cloned())
                    .or_else(|| state.variants.get(platform).cloned())
                    .unwrap_or_else(|| text.clone());
                json!({"connection_id": id, "platform": platform, "text": t})
            })
            .collect();
        let request =
            json!({"text": text, "link": link, "media": media, "schedule_at": schedule_at, "targets": per_target});
        if dry {
            return (next(json!({"would_post": request})), Some(request));
        }
        let new = NewPost {
            text: text.clone(),
            link,
            options: p.options.clone(),
            thread: Thread::default(),
            media,
            targets: per_target
                .iter()
                .map(|t| {
                    let own = t["text"].as_str().unwrap_or_default().to_string();
                    TargetInput {
                        connection_id: t["connection_id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_default(),
                        text: (own != text).then_some(own),
                        options: None,
                    }
                })
                .collect(),
            schedule_at,
            timezone: None,
            draft: false,
            campaign: p.campaign.clone(),
            tags: p.tags.clone(),
            repeat_every_days: None,
        };
        let key = format!("wf:{}:{}", run.id, path.display());
        let principal = Principal::acting(None, run.team_id, TeamRole::Editor, &format!("workflow {}", wf.name));
        let mut new = new;
        // Targets that break their platform's rules (a video over Telegram's size limit) are left
        // out, and the rest publish; only when every target breaks a rule does the step fail.
        let mut skipped = Vec::new();
        let made = loop {
            // A fresh run has made no post (see [`Mode::Live`]), so its key is not looked up
            // first (a read per event). Were a post holding it after all, a post written on its
            // own finds the key taken, a conflict the lookup below answers; one written with
            // the run's commit fails that commit, and the job's next try looks the key up.
            let staged = match mode {
                Live { fresh: true } => self.inner.posts.stage_new(&principal, new.clone(), &key, Some(&loaded)).await,
                _ => self.inner.posts.stage(&principal, new.clone(), Some(&key), Some(&loaded)).await,
            };
            let attempt = match staged {
                // Into its connections' next free slots, which only a transaction of its own reads.
                // And on PostgreSQL, whose transactions run side by side, posts written together
                // (their own group commit) go beside the runs' commits rather than queue in them.
                Ok(Staged::Ready(post))
                    if !post.writes_with_caller() || self.inner.db.backend() == Backend::Postgres =>
                {
                    self.inner.posts.write_staged(*post).await.map(|(view, _)| Staged::Existing(Box::new(view)))
                }
                // Made already; or to be written with the commit that records this step.
                staged => staged,
            };
            let attempt = match attempt {
                // The post was made before a crash, from a request that differs only in what
                // time made it (`in: 2h`): it is still this step's post.
                Err(e) if e.code == ErrorCode::Conflict => {
                    match self.inner.posts.by_idempotency_key(run.team_id, &key).await {
                        Ok(Some(v)) => Ok(Staged::Existing(Box::new(v))),
                        Ok(None) => Err(e),
                        Err(e2) => Err(e2),
                    }
                }
                other => other,
            };
            let bad: Vec<Value> = match &attempt {
                Err(e) if e.code == ErrorCode::ValidationFailed => {
                    e.details.as_ref().and_then(|d| d["targets"].as_array().cloned()).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            let bad_ids: Vec<String> =
                bad.iter().filter_map(|t| t["connection_id"].as_str().map(str::to_string)).collect();
            let before = new.targets.len();
            new.targets.retain(|t| !bad_ids.contains(&t.connection_id.to_string()));
            if bad_ids.is_empty() || new.targets.is_empty() || new.targets.len() == before {
                break attempt;
            }
            skipped.extend(bad);
        };
        match made {
            Ok(made) => {
                let view = match &made {
                    Staged::Existing(v) => (**v).clone(),
                    Staged::Ready(p) => p.view(),
                };
                let deliveries: Vec<Value> = view
                    .deliveries
                    .iter()
                    .map(|d| json!({"id": d.id, "connection_id": d.connection_id, "platform": d.platform, "state": d.state}))
                    .collect();
                let mut output = json!({"post_id": view.id, "state": view.state, "deliveries": deliveries});
                if !skipped.is_empty() {
                    output["skipped"] = Value::Array(skipped);
                }
                match made {
                    Staged::Existing(_) => (next(output), Some(request)),
                    Staged::Ready(post) => (Outcome::Next { output, next: None, post: Some(post) }, Some(request)),
                }
            }
            Err(e) => match e.code {
                ErrorCode::Internal | ErrorCode::Unavailable => (
                    Outcome::Retry { code: "store".into(), message: e.message, after: Duration::from_secs(2) },
                    Some(request),
                ),
                code => {
                    let message = with_details(&e);
                    (fail(code.as_str(), message), Some(request))
                }
            },
        }
    }

    /// Runs a workflow in memory: every step but publish and http, nothing kept.
    pub(crate) async fn dry_run(&self, team: Uuid, wf: &WorkflowRow, def: &Definition, input: Value) -> DryRunView {
        let now = Ts::now();
        let run = RunRow {
            trigger: "dry_run".into(),
            status: "running".into(),
            ..RunRow::new(team, wf.id, wf.version, input.to_string(), now)
        };
        let mut state = RunState::default();
        let mut steps = Vec::new();
        let mut would_post = Vec::new();
        let mut cursor = Path::first(&def.steps);
        let (mut status, mut error, mut error_code) = (RunStatus::Succeeded, None, None);
        while let Some(path) = cursor.clone() {
            let Some(step) = path.step(&def.steps) else { break };
            let started = Utc::now();
            let vars = state.vars(&input, run.id, wf.id);
            let (outcome, step_input) = self.exec_dry(&run, wf, def, &path, step, &mut state, &vars).await;
            let mut view = StepRunView {
                path: path.display(),
                step_id: step.id.clone(),
                kind: step.kind.name().into(),
                status: "succeeded".into(),
                input: step_input,
                output: None,
                error: None,
                error_code: None,
                attempts: 1,
                started_at: started,
                finished_at: Some(Utc::now()),
            };
            match outcome {
                Outcome::Next { output, next, .. } => {
                    if let Some(w) = output.get("would_post") {
                        would_post.push(w.clone());
                    }
                    state.steps.insert(step.id.clone(), output.clone());
                    view.output = Some(output);
                    cursor = next.unwrap_or_else(|| path.next(&def.steps));
                }
                Outcome::Skip { output, reason } => {
                    view.output = Some(output);
                    (status, error, error_code) = (RunStatus::Skipped, Some(reason), Some("filtered_out".to_string()));
                    cursor = None;
                }
                Outcome::Wait { output, .. } => {
                    view.output = Some(output);
                    cursor = path.next(&def.steps);
                }
                Outcome::Retry { code, message, .. } | Outcome::Fail { code, message } => {
                    view.status = "failed".into();
                    view.error = Some(message.clone());
                    view.error_code = Some(code.clone());
                    (status, error, error_code) = (RunStatus::Failed, Some(message), Some(code));
                    cursor = None;
                }
                Outcome::End { status: s, code, message, output } => {
                    view.output = Some(output);
                    (status, error, error_code) = (s, Some(message), Some(code));
                    cursor = None;
                }
            }
            steps.push(view);
        }
        DryRunView { status, error, error_code, steps, would_post }
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_dry(
        &self,
        run: &RunRow,
        wf: &WorkflowRow,
        def: &Definition,
        path: &Path,
        step: &Step,
        state: &mut RunState,
        vars: &Value,
    ) -> (Outcome, Option<Value>) {
        Box::pin(self.exec(run, wf, def, path, step, state, vars, Dry)).await
    }

    /// Starts the runs an event calls for (once per workflow and event) and advances them. With
    /// `job` (the `source.event` job carrying the event), a lone quick run that ends in its first
    /// commit records the job's success in that commit.
    pub async fn on_event(&self, team: Uuid, event: &EventView, job: Option<&Job>) -> Result<(), Error> {
        let wfs = self.source_workflows(team, event.source_id).await?;
        tracing::info!(%team, source = %event.source_id, event = %event.id, kind = %event.kind, workflows = wfs.len(), "event received");
        if wfs.is_empty() {
            return Ok(());
        }
        let input = event_input(event);
        let now = Ts::now();
        // A run whose steps are all quick starts unstored, and its first commit stores it (one
        // transaction fewer per event). The others are stored first, so they show while a slow
        // step runs. A run stored before (this job is running again after a crash, or another
        // executor got there first) is read back and goes on from where it is.
        let (mut unstored, mut fresh, mut again) = (Vec::new(), Vec::new(), Vec::new());
        let mut tx = None;
        for wf in wfs.iter() {
            let def = self.definition(wf.id, wf.version).await?;
            if def.starts_unstored() {
                let row = RunRow {
                    id: event_run_id(wf.id, event.id),
                    event_id: Some(event.id),
                    trigger: "event".into(),
                    cursor: Path::first(&def.steps).map(|p| p.display()).unwrap_or_default(),
                    ..RunRow::new(team, wf.id, wf.version, input.to_string(), now)
                };
                unstored.push((row, wf));
                continue;
            }
            let tx = match &mut tx {
                Some(tx) => tx,
                None => tx.insert(self.inner.db.begin().await?),
            };
            match Self::insert_run(tx, team, wf.id, wf.version, &def, Some(event.id), "event", None, &input).await? {
                Some(run) => fresh.push((run, wf)),
                None => again.push(wf.id),
            }
        }
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        // Nothing of a run can have been written before its event's job first runs.
        let first_try = job.is_some_and(|j| j.attempt <= 1);
        // The job is done once the run is over, so it may only ride along with a lone run.
        let job = job.filter(|_| wfs.len() == 1);
        for (run, wf) in unstored {
            if !self.drive(run, wf, false, first_try, job).await? {
                again.push(wf.id);
            }
        }
        for (run, wf) in fresh {
            self.drive(run, wf, true, false, None).await?;
        }
        for wf in again {
            let found: Option<(Uuid,)> = on_read!(self.inner.db, c => sqlx::query_as(
                "SELECT id FROM workflow_runs WHERE workflow_id = $1 AND event_id = $2 AND trigger = 'event'")
                .bind(wf).bind(event.id).fetch_optional(c).await)
            .map_err(store)?;
            if let Some((run,)) = found {
                self.advance(run).await?;
            }
        }
        Ok(())
    }
}

/// An event's run of a workflow has one id, whichever executor starts it, so a publish step's
/// idempotency key (`wf:{run}:{path}`) is the same again after a crash before the run was
/// stored. UUIDv7-shaped: the event's time (runs still sort by it), then a hash of the two ids.
fn event_run_id(workflow: Uuid, event: Uuid) -> Uuid {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest([workflow.as_bytes().as_slice(), event.as_bytes().as_slice()].concat());
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&event.as_bytes()[..6]);
    b[6..].copy_from_slice(&h[..10]);
    b[6] = (b[6] & 0x0f) | 0x70; // version 7
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
    Uuid::from_bytes(b)
}

/// A run's input from an event: its data, plus `event` (id, kind, source, external id, time).
pub fn event_input(event: &EventView) -> Value {
    let mut v = match &event.data {
        Value::Object(o) => Value::Object(o.clone()),
        Value::Null => json!({}),
        other => json!({"data": other}),
    };
    v["event"] = json!({
        "id": event.id, "kind": event.kind, "source_id": event.source_id,
        "external_id": event.external_id, "received_at": event.received_at,
    });
    v
}

/// The next `h:m` local time in `tz` after `now` (on `weekday` if given). A time the clocks skip
/// that day moves an hour on (02:30 becomes 03:30 when 02:00 jumps to 03:00).
pub(crate) fn next_local(
    now: DateTime<Utc>,
    tz: chrono_tz::Tz,
    h: u32,
    m: u32,
    weekday: Option<chrono::Weekday>,
) -> Option<DateTime<Utc>> {
    let today = now.with_timezone(&tz).date_naive();
    for offset in 0..15 {
        let day = today + TimeDelta::days(offset);
        if weekday.is_some_and(|w| day.weekday() != w) {
            continue;
        }
        let local = day.and_hms_opt(h, m, 0)?;
        let at = match herald_core::time::local_to_utc(local, tz) {
            Ok(t) => t,
            Err(_) => herald_core::time::local_to_utc(local + TimeDelta::hours(1), tz).ok()?,
        };
        if at > now {
            return Some(at);
        }
    }
    None
}

/// The `workflow.run` job: advances its run.
pub struct RunHandler {
    workflows: Workflows,
}

impl RunHandler {
    pub fn new(workflows: Workflows) -> RunHandler {
        RunHandler { workflows }
    }
}

#[async_trait::async_trait]
impl Handler for RunHandler {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let run: Uuid = job
            .payload
            .get("run")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| JobError::permanent("the job names no run"))?;
        self.workflows.advance(run).await.map_err(job_error)
    }
}

/// Events go to workflows.
#[async_trait::async_trait]
impl EventSink for Workflows {
    async fn event(&self, team: Uuid, event: &EventView) -> Result<(), JobError> {
        self.on_event(team, event, None).await.map_err(job_error)
    }

    async fn event_of_job(&self, team: Uuid, event: &EventView, job: &Job) -> Result<(), JobError> {
        self.on_event(team, event, Some(job)).await.map_err(job_error)
    }
}

/// A sink that hands events to workflows, shared behind an `Arc`.
pub fn sink(w: &Workflows) -> Arc<dyn EventSink> {
    Arc::new(w.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_run_id_is_one_per_workflow_and_sorts_by_the_events_time() {
        let (wf, other) = (Uuid::now_v7(), Uuid::now_v7());
        let event = Uuid::now_v7();
        let id = event_run_id(wf, event);
        assert_eq!(id, event_run_id(wf, event), "whoever starts it");
        assert_ne!(id, event_run_id(other, event));
        assert_ne!(id, event_run_id(wf, Uuid::now_v7()));
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(id.get_timestamp(), event.get_timestamp(), "the event's time, to the millisecond");
    }

    #[test]
    fn next_local_time_handles_weekdays_and_dst() {
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        // Saturday 2026-03-28 10:00 UTC; 09:00 local has passed, so Sunday 09:00 (summer time).
        let now = DateTime::parse_from_rfc3339("2026-03-28T10:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(next_local(now, berlin, 9, 0, None).unwrap().to_rfc3339(), "2026-03-29T07:00:00+00:00");
        // 02:30 does not exist on 2026-03-29 in Berlin: 03:30 instead.
        assert_eq!(next_local(now, berlin, 2, 30, None).unwrap().to_rfc3339(), "2026-03-29T01:30:00+00:00");
        // The next Monday at 08:00.
        assert_eq!(
            next_local(now, berlin, 8, 0, Some(chrono::Weekday::Mon)).unwrap().to_rfc3339(),
            "2026-03-30T06:00:00+00:00"
        );
        assert_eq!(parse_time_of_day("09:30"), Some((9, 30)));
        assert_eq!(parse_time_of_day("24:00"), None);
        assert_eq!(parse_time_of_day("9:3x"), None);
    }
}

//! A workflow's definition (what the API and YAML files take) and what the API shows.

use crate::cond::Cond;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

fn yes() -> bool {
    true
}

/// A workflow as written: its sources and its steps. `POST /api/v1/workflows` takes it, and so
/// do the YAML files of `herald workflows apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The sources whose events start a run.
    #[serde(default)]
    pub sources: Vec<Uuid>,
    /// The steps, in order.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Step>,
    #[serde(default = "yes")]
    pub active: bool,
}

/// One step. `id` names it (later steps read its output as `steps.<id>`); it defaults to the
/// step's type, numbered when the type repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    #[serde(default)]
    pub id: String,
    #[serde(flatten)]
    pub kind: StepKind,
    /// How a transient failure retries (publish, http, ai_rewrite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepKind {
    /// Go on when `when` holds; otherwise the run ends as `skipped`.
    Filter {
        when: Cond,
    },
    /// Run `then` when `when` holds, else `else`; then go on after the condition.
    Condition {
        when: Cond,
        #[serde(default)]
        then: Vec<Step>,
        #[serde(default, rename = "else")]
        otherwise: Vec<Step>,
    },
    /// Renders the run's text (and optionally per-platform variants) with MiniJinja.
    Template {
        template: String,
        /// Platform id → a template for that platform's variant.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        per_platform: BTreeMap<String, String>,
    },
    AiRewrite(AiRewrite),
    Delay(Delay),
    Approval(Approval),
    Publish(Publish),
    Http(Http),
}

impl Definition {
    /// Every step is quick and writes nothing that refers to the run before the run's commit (no
    /// AI or HTTP call, no approval), so an event's run can be stored at its first commit,
    /// milliseconds after it starts, rather than in a transaction of its own before its first step.
    pub fn starts_unstored(&self) -> bool {
        fn quick(steps: &[Step]) -> bool {
            steps.iter().all(|s| match &s.kind {
                StepKind::Filter { .. } | StepKind::Template { .. } | StepKind::Delay(_) | StepKind::Publish(_) => true,
                StepKind::Condition { then, otherwise, .. } => quick(then) && quick(otherwise),
                StepKind::AiRewrite(_) | StepKind::Approval(_) | StepKind::Http(_) => false,
            })
        }
        quick(&self.steps)
    }
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Filter { .. } => "filter",
            StepKind::Condition { .. } => "condition",
            StepKind::Template { .. } => "template",
            StepKind::AiRewrite(_) => "ai_rewrite",
            StepKind::Delay(_) => "delay",
            StepKind::Approval(_) => "approval",
            StepKind::Publish(_) => "publish",
            StepKind::Http(_) => "http",
        }
    }

    /// Whether the step reaches outside Herald or costs something: its result is committed before
    /// the run goes on, so it never runs twice. Other steps are pure and are committed with the
    /// next one that is not.
    pub fn is_effect(&self) -> bool {
        matches!(self, StepKind::AiRewrite(_) | StepKind::Publish(_) | StepKind::Http(_) | StepKind::Approval(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries in all, 1–20 (default 5).
    #[serde(default = "RetryPolicy::default_attempts")]
    pub max_attempts: u32,
    /// The first wait in seconds (default 2); it doubles on each try, up to 100 times it.
    #[serde(default = "RetryPolicy::default_backoff")]
    pub backoff_secs: u64,
}

impl RetryPolicy {
    fn default_attempts() -> u32 {
        5
    }
    fn default_backoff() -> u64 {
        2
    }
    /// The wait before try `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> std::time::Duration {
        let base = self.backoff_secs.max(1);
        let secs = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(16)).min(base * 100);
        std::time::Duration::from_secs(secs)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: Self::default_attempts(), backoff_secs: Self::default_backoff() }
    }
}

/// What a failed AI call does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep the input text and go on.
    #[default]
    Fallback,
    /// Fail the run.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiRewrite {
    /// One variant per platform; empty: one text for all.
    #[serde(default)]
    pub platforms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tone: Option<String>,
    /// At most this many characters (each platform's own limit applies anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(default = "yes")]
    pub hashtags: bool,
    #[serde(default)]
    pub emojis: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// A template for the text to rewrite; the run's text by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// A durable wait: the run sleeps as a job and holds no memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// A duration: `90s`, `10m`, `2h`, `1d`.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// A local time of day, `HH:MM`: the next time it comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_time: Option<String>,
    /// A weekday (`monday`…): the next such day, at `until_time` or midnight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekday: Option<String>,
    /// A connection: wait for its next free posting slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_slot: Option<Uuid>,
    /// The zone of `until_time` and `weekday`; the team's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Approve,
    Reject,
    /// Nothing is posted; the run ends `cancelled` with `approval_expired`.
    #[default]
    Expire,
}

/// Waits for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Users who may decide.
    #[serde(default)]
    pub users: Vec<Uuid>,
    /// Or anyone with this role or above (`owner`, `admin`, `editor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// How long to wait: `30m`, `24h`, `3d`.
    pub timeout: String,
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Shown to approvers (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a publish step posts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A connection of the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Uuid>,
    /// Or every connection of this platform in the team (one that needs re-authorising gets its
    /// delivery, which waits for the fix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// A template for this target's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// When a publish step's post goes out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    #[default]
    Now,
    /// Each target's next free posting slot.
    NextSlot,
    /// A time: an instant, or a wall-clock time in the team's zone (a template).
    At(String),
    /// After a duration (`2h`).
    In(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub targets: Vec<Target>,
    /// A template for the post's text; the run's text (or its platform variant) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A template for the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Templates that render to media library ids (`{{payload.media}}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<String>,
    #[serde(default)]
    pub schedule: When,
    /// Per-platform options, as for `POST /api/v1/posts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    #[serde(default = "Http::post")]
    pub method: String,
    /// A template.
    pub url: String,
    /// Header values are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A template; sent as JSON when it renders to JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Seconds, 1–60 (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl Http {
    fn post() -> String {
        "POST".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Skipped,
        RunStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Skipped | RunStatus::Cancelled)
    }
}

/// A workflow as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkflowView {
    pub id: Uuid,
    pub name: String,
    pub active: bool,
    pub version: i64,
    pub definition: Definition,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One version of a workflow.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionView {
    pub version: i64,
    pub definition: Definition,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// One step's run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepRunView {
    /// Where the step is: `2`, or `3.then.0` inside a condition.
    pub path: String,
    pub step_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `succeeded`, `failed`, `skipped`, `waiting` or `retrying`.
    pub status: String,
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub attempts: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub version: i64,
    pub event_id: Option<Uuid>,
    /// `event`, `manual`, `rerun`, or `error` (the team's error workflow, with `rerun_of` naming
    /// the failed run).
    pub trigger: String,
    pub rerun_of: Option<Uuid>,
    pub status: RunStatus,
    /// The next step to run, while the run is not over.
    pub cursor: Option<String>,
    pub wait_until: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    #[schema(value_type = Object)]
    pub input: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Only on `GET /api/v1/runs/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepRunView>>,
}

/// `POST /api/v1/workflows/{id}/run`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualRun {
    /// The run's input, as an event's data would be (`{"video": {...}}`, `{"payload": {...}}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Run every step except publish and http, keep nothing, and answer what would be posted.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a dry run did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DryRunView {
    /// `succeeded`, `skipped` or `failed`.
    pub status: RunStatus,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub steps: Vec<StepRunView>,
    /// Each publish step's post: per target, the text it would get.
    #[schema(value_type = Vec<Object>)]
    pub would_post: Vec<Value>,
}

/// An approval as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApprovalView {
    pub id: Uuid,
    pub run_id: Uuid,
    pub workflow_id: Uuid,
    pub step_id: String,
    /// `pending`, `approved`, `rejected`, `expired` or `cancelled`.
    pub status: String,
    #[schema(value_type = Object)]
    pub approvers: Value,
    /// The text and each target's text, as the run would post them.
    #[schema(value_type = Object)]
    pub proposal: Value,
    pub message: Option<String>,
    pub on_timeout: OnTimeoutView,
    pub expires_at: DateTime<Utc>,
    pub decided_by: Option<Uuid>,
    pub decided_via: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub edits: Option<Value>,
    pub comment: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// `approve`, `reject` or `expire`.
pub type OnTimeoutView = String;

/// `POST /api/v1/approvals/{id}/approve` and `/reject`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// A new text for every target.
    #[serde(default)]
    pub text: Option<String>,
    /// Per-target texts: a connection id or a platform id → text.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    #[serde(default)]
    pub comment: Option<String>,
}

//! Workflows, their runs and approvals.

use crate::auth::Auth;
use crate::body::Body;
use crate::error::{ApiError, ErrorBody};
use crate::router::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_workflows::{
    ApprovalView, Decision, Definition, DryRunView, ManualRun, RunPage, RunQuery, RunView, SettingsUpdate,
    SettingsView, VersionView, WorkflowPatch, WorkflowView,
};
use serde_json::Value;
use uuid::Uuid;

/// The team's workflows with their current definitions.
#[utoipa::path(get, path = "/workflows", tag = "workflows", responses((status = 200, body = Vec<WorkflowView>)))]
pub async fn list(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<WorkflowView>>, ApiError> {
    Ok(Json(state.workflows.list(&p).await?))
}

/// Adds a workflow. Every problem (an unknown connection or source, a template syntax error, a
/// branch that reads a step it cannot have run, an approval without approvers) comes back at once
/// as a 422 with `details.problems[].path`.
#[utoipa::path(post, path = "/workflows", tag = "workflows", request_body = Definition,
    responses((status = 201, body = WorkflowView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(v): Body<Value>,
) -> Result<(StatusCode, Json<WorkflowView>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.workflows.create(&p, v).await?)))
}

#[utoipa::path(get, path = "/workflows/{workflow_id}", tag = "workflows", params(("workflow_id" = Uuid, Path)),
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(state.workflows.get(&p, id).await?))
}

/// Replaces the definition. A change makes a new version (runs already started keep theirs);
/// the same definition again changes nothing. `Herald-New-Version: true|false` says which.
#[utoipa::path(put, path = "/workflows/{workflow_id}", tag = "workflows", params(("workflow_id" = Uuid, Path)), request_body = Definition,
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn replace(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(v): Body<Value>,
) -> Result<Response, ApiError> {
    let (view, new_version) = state.workflows.replace(&p, id, v).await?;
    Ok(([("Herald-New-Version", if new_version { "true" } else { "false" })], Json(view)).into_response())
}

/// Pauses (`active: false`) or resumes a workflow; no new version.
#[utoipa::path(patch, path = "/workflows/{workflow_id}", tag = "workflows", params(("workflow_id" = Uuid, Path)), request_body = WorkflowPatch,
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<WorkflowPatch>,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(state.workflows.patch(&p, id, r).await?))
}

/// Deletes a workflow with its versions and runs.
#[utoipa::path(delete, path = "/workflows/{workflow_id}", tag = "workflows", params(("workflow_id" = Uuid, Path)),
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(state.workflows.delete(&p, id).await?))
}

/// Every version, newest first.
#[utoipa::path(get, path = "/workflows/{workflow_id}/versions", tag = "workflows", params(("workflow_id" = Uuid, Path)),
    responses((status = 200, body = Vec<VersionView>), (status = 404, body = ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<VersionView>>, ApiError> {
    Ok(Json(state.workflows.versions(&p, id).await?))
}

/// Runs the workflow on a payload: 202 with the run, which goes on in the background; or with
/// `dry_run`, 200 with every step's result and what would be posted (no publish, no http).
#[utoipa::path(post, path = "/workflows/{workflow_id}/run", tag = "workflows", params(("workflow_id" = Uuid, Path)), request_body = ManualRun,
    responses((status = 202, body = RunView), (status = 200, body = DryRunView), (status = 404, body = ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(r): Body<ManualRun>,
) -> Result<Response, ApiError> {
    Ok(match state.workflows.start_manual(&p, id, r).await? {
        Ok(run) => (StatusCode::ACCEPTED, Json(run)).into_response(),
        Err(dry) => (StatusCode::OK, Json(dry)).into_response(),
    })
}

/// Runs, newest first, by workflow, status and time.
#[utoipa::path(get, path = "/runs", tag = "workflows", params(RunQuery), responses((status = 200, body = RunPage)))]
pub async fn runs(
    State(state): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<RunQuery>,
) -> Result<Json<RunPage>, ApiError> {
    Ok(Json(state.workflows.runs(&p, &q).await?))
}

/// A run with every step run: input, output, error, attempts and timings.
#[utoipa::path(get, path = "/runs/{run_id}", tag = "workflows", params(("run_id" = Uuid, Path)),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody)))]
pub async fn get_run(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(state.workflows.run(&p, id).await?))
}

/// Cancels a run that is not over; a waiting delay or approval never resumes it.
#[utoipa::path(post, path = "/runs/{run_id}/cancel", tag = "workflows", params(("run_id" = Uuid, Path)),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_run(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(state.workflows.cancel_run(&p, id).await?))
}

/// Starts a new run of the workflow's current version on the same event or payload.
#[utoipa::path(post, path = "/runs/{run_id}/rerun", tag = "workflows", params(("run_id" = Uuid, Path)),
    responses((status = 202, body = RunView), (status = 404, body = ErrorBody)))]
pub async fn rerun(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(state.workflows.rerun(&p, id).await?)))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// pending, approved, rejected, expired or cancelled; pending first when absent.
    pub status: Option<String>,
}

/// The team's approvals.
#[utoipa::path(get, path = "/approvals", tag = "workflows", params(ApprovalQuery), responses((status = 200, body = Vec<ApprovalView>)))]
pub async fn approvals(
    State(state): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<ApprovalQuery>,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    Ok(Json(state.workflows.approvals(&p, q.status.as_deref()).await?))
}

#[utoipa::path(get, path = "/approvals/{approval_id}", tag = "workflows", params(("approval_id" = Uuid, Path)),
    responses((status = 200, body = ApprovalView), (status = 404, body = ErrorBody)))]
pub async fn approval(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<ApprovalView>, ApiError> {
    Ok(Json(state.workflows.approval(&p, id).await?))
}

/// Approves, optionally with a new text (for every target, or per target by connection id or
/// platform) and a comment. Only the step's approvers may.
#[utoipa::path(post, path = "/approvals/{approval_id}/approve", tag = "workflows", params(("approval_id" = Uuid, Path)), request_body = Decision,
    responses((status = 200, body = ApprovalView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(d): Body<Decision>,
) -> Result<Json<ApprovalView>, ApiError> {
    Ok(Json(state.workflows.decide(&p, id, true, d).await?))
}

/// Rejects: the run ends `cancelled` and nothing is posted.
#[utoipa::path(post, path = "/approvals/{approval_id}/reject", tag = "workflows", params(("approval_id" = Uuid, Path)), request_body = Decision,
    responses((status = 200, body = ApprovalView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
    Body(d): Body<Decision>,
) -> Result<Json<ApprovalView>, ApiError> {
    Ok(Json(state.workflows.decide(&p, id, false, d).await?))
}

/// The team's workflow settings: the error workflow, and its AI endpoint, model and daily
/// budget with today's use. The key is never shown.
#[utoipa::path(get, path = "/workflow-settings", tag = "workflows", responses((status = 200, body = SettingsView)))]
pub async fn settings(State(state): State<AppState>, Auth(p): Auth) -> Result<Json<SettingsView>, ApiError> {
    Ok(Json(state.workflows.settings(&p).await?))
}

/// Sets the error workflow (null clears it), the team's own AI endpoint (through the SSRF guard),
/// model, key (sealed; "" removes it) and daily budget.
#[utoipa::path(put, path = "/workflow-settings", tag = "workflows", request_body = SettingsUpdate,
    responses((status = 200, body = SettingsView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_settings(
    State(state): State<AppState>,
    Auth(p): Auth,
    Body(u): Body<SettingsUpdate>,
) -> Result<Json<SettingsView>, ApiError> {
    Ok(Json(state.workflows.set_settings(&p, u).await?))
}

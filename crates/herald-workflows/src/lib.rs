//! Workflows: sources → steps → posts. A workflow is a versioned definition (its sources and
//! steps); each event of its sources starts a **run**, which executes the steps durably:
//! completed steps never run again, delays and approvals wait as queued jobs and survive
//! restarts, and every step run is recorded with its input, output, error and timings.
//!
//! - [`Workflows`] is the service: CRUD and versions, runs, approvals, dry runs.
//! - [`engine`] advances runs; [`RunHandler`] is the `workflow.run` job; `Workflows` is also the
//!   [`herald_triggers::EventSink`] that starts runs from events.
//! - [`template`] renders MiniJinja in a sandbox with fuel and output limits; [`cond`] evaluates
//!   filter and branch conditions.
//! - [`validate`] checks a definition up front and names each problem by its path.
#![forbid(unsafe_code)]

pub mod ai;
mod commits;
pub mod cond;
mod effects;
pub mod engine;
pub mod model;
pub mod path;
mod settings;
mod store;
pub mod template;
pub mod validate;

pub use engine::{RunHandler, event_input, sink};
pub use model::*;
pub use settings::{SettingsUpdate, SettingsView};
pub use store::{RUN_JOB, RunPage, RunQuery, WorkflowConfig, WorkflowPatch, Workflows};

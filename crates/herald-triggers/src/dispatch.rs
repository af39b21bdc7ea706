//! Handing events on. Each stored event enqueues one `source.event` job in the transaction that
//! stored it; the job gives the event to an [`EventSink`]. Workflows will be the sink; until then
//! [`LogSink`] records that the event arrived, and tests plug in their own to observe events.

use crate::model::EventView;
use crate::store::Sources;
use herald_queue::{Handler, Job, JobError};
use std::sync::Arc;
use uuid::Uuid;

pub const EVENT_JOB: &str = "source.event";

/// Receives each event once its transaction committed. A failure retries the job (with backoff);
/// the sink must be idempotent on the event id, since a crash after it ran and before the job
/// completed runs it again.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn event(&self, team: Uuid, event: &EventView) -> Result<(), JobError>;

    /// The event, from the `source.event` job that carries it. A sink may record the job's
    /// success in the transaction of its own work (`Queue::complete_in`), so the runner writes
    /// nothing more for it; by default it only handles the event.
    async fn event_of_job(&self, team: Uuid, event: &EventView, _job: &Job) -> Result<(), JobError> {
        self.event(team, event).await
    }
}

/// Logs each event: the sink while no workflow consumes them.
pub struct LogSink;

#[async_trait::async_trait]
impl EventSink for LogSink {
    async fn event(&self, team: Uuid, event: &EventView) -> Result<(), JobError> {
        tracing::info!(%team, source = %event.source_id, event = %event.id, kind = %event.kind, "event received");
        Ok(())
    }
}

/// The `source.event` job handler.
pub struct EventDispatcher {
    sources: Sources,
    sink: Arc<dyn EventSink>,
}

impl EventDispatcher {
    pub fn new(sources: Sources, sink: Arc<dyn EventSink>) -> EventDispatcher {
        EventDispatcher { sources, sink }
    }
}

#[async_trait::async_trait]
impl Handler for EventDispatcher {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let id: Uuid = job
            .payload
            .get("event")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| JobError::permanent("the job names no event"))?;
        match self.sources.event_by_id(id).await.map_err(|e| JobError::retry(e.message))? {
            Some((team, event)) => self.sink.event_of_job(team, &event, job).await,
            // Its source was deleted since: nothing to hand on.
            None => Err(JobError::Cancel("the event no longer exists".into())),
        }
    }
}

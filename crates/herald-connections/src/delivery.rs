//! What the queue needs to publish through a connection: the pacing bucket, the status gate, and
//! the translation of a platform failure into what the queue does next. The posts pipeline's
//! delivery job is built on [`Connections::publish`].

use crate::{Connections, Loaded, Status};
use herald_core::Error;
use herald_platforms::{ErrorClass, Outgoing, PlatformError, Published};
use herald_queue::{JobError, Queue};
use std::time::Duration;
use uuid::Uuid;

/// How long a delivery to a connection that needs re-authorising waits before it looks again.
/// The wait spends no attempt, so a fixed connection picks its work up where it stopped.
pub const REAUTH_RECHECK: Duration = Duration::from_secs(300);

/// What the queue does after a failed platform call:
/// - `auth` and `invalid` will not succeed by retrying: the job fails for good;
/// - `transient` retries with backoff (or the platform's own wait);
/// - `rate_limited` waits the platform's time without spending an attempt, and blocks the job's
///   bucket so the connection's other jobs wait too;
/// - `unknown_outcome` must not be retried blindly: the job stops, and the delivery becomes
///   `unconfirmed` until a person says whether the post went out.
pub fn job_error(e: &PlatformError) -> JobError {
    let msg = e.to_string();
    match e.class {
        ErrorClass::Auth | ErrorClass::Invalid | ErrorClass::UnknownOutcome => JobError::Permanent(msg),
        ErrorClass::Transient => match e.retry_after {
            Some(d) => JobError::RetryAfter(msg, d),
            None => JobError::Retry(msg),
        },
        ErrorClass::RateLimited => {
            JobError::RateLimited { reason: msg, retry_after: e.retry_after.unwrap_or(Duration::from_secs(60)) }
        }
    }
}

impl Connections {
    /// Creates (or re-sizes) the connection's pacing bucket in the queue and returns its key, to
    /// put on every job that publishes through this connection.
    pub async fn pace(&self, queue: &Queue, loaded: &Loaded) -> Result<Option<String>, Error> {
        let Some(adapter) = herald_platforms::adapter(&loaded.view.platform) else { return Ok(None) };
        let Some(p) = adapter.pacing(&loaded.connection) else { return Ok(None) };
        let sized = (p.capacity, p.per_second);
        if self.paced.lock().expect("paced").get(&p.bucket) != Some(&sized) {
            queue.set_bucket(&p.bucket, p.capacity, p.per_second).await.map_err(Error::from)?;
            self.paced.lock().expect("paced").insert(p.bucket.clone(), sized);
        }
        Ok(Some(p.bucket))
    }

    /// Publishes through a connection from inside a job: loads it and opens its credentials in
    /// memory, refuses to call the platform while it needs re-authorising, stores credentials the
    /// platform rotated, and records auth failures on the connection (which stops its other jobs).
    pub async fn publish(&self, team: Uuid, id: Uuid, post: &Outgoing) -> Result<Published, JobError> {
        let loaded = self.load(team, id).await.map_err(|e| match e.code {
            herald_core::ErrorCode::NotFound => JobError::Permanent(format!("connection {id} no longer exists")),
            _ => JobError::retry(e),
        })?;
        if loaded.view.status == Status::NeedsReauth {
            return Err(JobError::RateLimited {
                reason: format!("connection {id} needs re-authorising; fix it and this delivery continues"),
                retry_after: REAUTH_RECHECK,
            });
        }
        let adapter = herald_platforms::adapter(&loaded.view.platform)
            .ok_or_else(|| JobError::Permanent(format!("unknown platform {}", loaded.view.platform)))?;
        match adapter.publish(self.net(), &loaded.connection, post).await {
            Ok(published) => {
                if let Some(c) = &published.credentials {
                    self.store_credentials(team, id, c).await.map_err(JobError::retry)?;
                }
                Ok(published)
            }
            Err(e) => {
                tracing::info!(connection = %id, class = e.class.as_str(), "publish failed: {}", e.message);
                if let Err(store) = self.record_failure(team, id, &e).await {
                    tracing::warn!(connection = %id, "could not record the failure: {store}");
                }
                Err(job_error(&e))
            }
        }
    }
}

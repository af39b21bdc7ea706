//! Posts and the delivery pipeline. A post goes to one or more connections; each (post,
//! connection) is a delivery that runs as one queue job. The post, its deliveries and their jobs
//! commit in one transaction; every delivery's idempotency key is stored before any call; the
//! worker marks a call in flight before it makes it, so a crash between the platform's answer and
//! the commit is resent only where the platform deduplicates, and is `unconfirmed` elsewhere.
#![forbid(unsafe_code)]

mod batch;
mod create;
pub mod events;
mod media;
pub mod model;
pub mod notify_mail;
mod slots;
mod stats;
mod store;
pub mod worker;

pub use events::{EVENT_JOB, EVENT_TYPES, EndpointView, EventHandler, NewEndpoint, NotificationView};
pub use media::MediaView;
pub use model::*;
pub use notify_mail::{NOTIFY_MAIL_JOB, NotifyMailHandler, Pacing};
pub use slots::{Slot, SlotsInput};
pub use stats::{CollectReport, DeliveryStats, PostStats, Snapshot, next_fetch};
pub use store::{MAX_ATTEMPTS, PostQuery, Posts, Staged, StagedPost};
pub use worker::{DELIVERY_JOB, DeliveryHandler};

//! Sources and triggers: where new content comes from. A source is a YouTube channel (WebSub push
//! plus a slower poll of its feed), an RSS/Atom/JSON feed, a cron schedule, a signed inbound
//! webhook, or manual events. Each new item becomes an **event**, stored once under
//! (source, external id) and handed on through a `source.event` job enqueued in the same
//! transaction, so an event is never lost and never handed on twice.
//!
//! - [`Sources`] is the service: the API's CRUD, polling, push and webhook intake.
//! - [`Poller`] runs due polls and schedule firings on worker nodes. A lease on the source row
//!   keeps two nodes (or two loops) from polling one source at once.
//! - [`feed`] parses and normalises feeds; it is safe against XXE and entity expansion.
//! - [`websub`] subscribes, verifies, renews and unsubscribes at the hub.
//! - [`inbound`] checks Standard Webhooks and plain HMAC signatures.
#![forbid(unsafe_code)]

mod apply;
pub mod dispatch;
pub mod feed;
pub mod inbound;
mod intake;
pub mod model;
mod poll;
pub mod schedule;
mod store;
pub mod websub;
pub mod youtube;

pub use dispatch::{EVENT_JOB, EventDispatcher, EventSink, LogSink};
pub use model::*;
pub use poll::Poller;
pub use store::{EventPage, EventQuery, MAX_HOOK_BYTES, Sources, TriggerConfig};
pub use websub::{WEBSUB_JOB, WebSubHandler};

//! Herald's storage: one [`Db`] handle over SQLite (embedded, the default) or PostgreSQL, chosen by
//! the URL scheme. Each backend has its own migrations; both must behave the same, which the
//! shared test suite (see [`testing`]) checks.
//!
//! Writes go through [`Tx`], so a caller can make several changes (a post, its deliveries, their
//! jobs) commit or roll back together.
#![forbid(unsafe_code)]

mod db;
mod error;
mod migrations;
mod portable;
pub mod testing;
mod tx;
mod url;
mod wakeups;

pub use db::{Backend, Db, Pools, StoreOptions};
pub use error::StoreError;
pub use portable::Ts;
pub use tx::{Snapshot, Tx, TxConn};
pub use url::DatabaseUrl;
pub use wakeups::Wakeups;

/// `$first, $first+1, …` for an `IN (…)` list of `n` values; both backends take `$N` parameters.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Microseconds since the Unix epoch, UTC: how SQLite stores every time.
pub fn to_micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`].
pub fn from_micros(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

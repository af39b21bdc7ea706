//! Who may do what: users and their sign-in (Argon2id passwords, sessions, TOTP two-factor,
//! throttling, resets), teams and roles, invites, API keys, quotas, the audit log, and the
//! re-encryption of stored secrets. It stores through `herald-store` with SQL both backends run,
//! seals secrets with `herald-vault`, and knows nothing of HTTP.
#![forbid(unsafe_code)]

pub mod audit;
pub mod crypto;
mod keys;
pub mod model;
pub mod notify_mail;
pub mod secrets;
mod service;
mod teams;
pub mod throttle;
pub mod totp;
mod users;

pub use audit::{Actor, AuditQuery};
pub use keys::KEY_PREFIX;
pub use model::*;
pub use secrets::{RotateReport, SECRET_COLUMNS, SecretColumn};
pub use service::{Accounts, AccountsConfig};
pub use teams::{Quota, authorize, consume_monthly, consume_monthly_deferred, quota_error, quota_exceeded};
pub use users::SecondFactor;

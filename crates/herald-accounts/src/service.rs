//! The accounts service: one handle over the database and the vault, used by the API and the CLI.

use herald_core::{Error, ErrorCode};
use herald_store::{Db, StoreError, Ts};
use herald_vault::Vault;
use std::time::Duration;

/// Session lifetimes and links.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// A session unused for this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub session_max: Duration,
    /// The public base URL, for invite, setup and reset links.
    pub public_url: Option<String>,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            session_idle: Duration::from_secs(7 * 86_400),
            session_max: Duration::from_secs(30 * 86_400),
            public_url: None,
        }
    }
}

#[derive(Clone)]
pub struct Accounts {
    pub(crate) db: Db,
    pub(crate) vault: Vault,
    pub(crate) config: AccountsConfig,
}

impl Accounts {
    pub fn new(db: Db, vault: Vault, config: AccountsConfig) -> Accounts {
        Accounts { db, vault, config }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    pub fn config(&self) -> &AccountsConfig {
        &self.config
    }

    /// `{public_url}{path}`, or the bare path when no public URL is configured.
    pub fn link(&self, path: &str) -> String {
        match &self.config.public_url {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None => path.to_string(),
        }
    }
}

/// Maps a driver error into the product's error (logged there, never shown).
pub(crate) fn store(e: sqlx::Error) -> Error {
    StoreError::Sqlx(e).into()
}

pub(crate) fn store_err(e: StoreError) -> Error {
    e.into()
}

pub(crate) fn not_found(what: &str) -> Error {
    Error::not_found(what)
}

pub(crate) fn conflict(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::Conflict, msg)
}

pub(crate) fn invalid(field: &str, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ValidationFailed, msg).with_details(serde_json::json!({"field": field}))
}

pub(crate) fn after(d: Duration) -> Ts {
    Ts(chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

/// Trims and lower-cases an email, and checks it looks like one.
pub(crate) fn normalize_email(email: &str) -> Result<String, Error> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.starts_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok { Ok(e) } else { Err(invalid("email", "that is not an email address")) }
}

pub(crate) fn check_name(field: &str, name: &str) -> Result<String, Error> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
        return Err(invalid(field, format!("{field} must be 1 to 100 characters, without control characters")));
    }
    Ok(n.to_string())
}

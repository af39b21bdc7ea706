//! Sign-in throttling, per account and per address. After five failures on an account (twenty
//! from one address, which many people may share behind NAT) within an hour, each further failure
//! doubles the wait (1 s, 2 s, 4 s … at most 15 minutes); an hour without failures forgets them. Nobody is ever locked out for good, and an unknown email is throttled exactly like a
//! known one, so the answers do not tell them apart.

use crate::service::store;
use herald_core::{Error, ErrorCode};
use herald_store::{Db, Ts, Tx, exec, on_read, on_tx};

pub const FREE_FAILURES_ACCOUNT: i64 = 5;
pub const FREE_FAILURES_IP: i64 = 20;
pub const MAX_DELAY_SECS: i64 = 15 * 60;
const FORGET_AFTER_SECS: i64 = 3600;

pub fn account_key(email: &str) -> String {
    format!("account:{}", email.trim().to_lowercase())
}

pub fn ip_key(ip: &str) -> String {
    format!("ip:{ip}")
}

/// The delay after `failures` failures in a row, when the first `free` cost nothing.
pub fn delay_secs(failures: i64, free: i64) -> i64 {
    if failures < free { 0 } else { (1i64 << (failures - free).min(20)).min(MAX_DELAY_SECS) }
}

fn free_failures(key: &str) -> i64 {
    if key.starts_with("ip:") { FREE_FAILURES_IP } else { FREE_FAILURES_ACCOUNT }
}

/// Fails with `rate_limited` (and the seconds to wait) while any of `keys` is blocked.
pub async fn check(db: &Db, keys: &[String]) -> Result<(), Error> {
    let now = Ts::now();
    let mut wait = 0i64;
    for key in keys {
        let until: Option<Ts> =
            on_read!(db, c => sqlx::query_scalar("SELECT blocked_until FROM login_throttle WHERE key = $1")
                .bind(key).fetch_optional(c).await)
            .map_err(store)?;
        if let Some(until) = until.filter(|u| *u > now) {
            wait = wait.max((until.0 - now.0).num_seconds() + 1);
        }
    }
    if wait > 0 {
        return Err(Error::new(
            ErrorCode::RateLimited,
            format!("too many failed sign-ins; wait {wait} s and try again"),
        )
        .with_details(serde_json::json!({"retry_after_secs": wait})));
    }
    Ok(())
}

/// Counts a failure against each key.
pub async fn fail(tx: &mut Tx, keys: &[String]) -> Result<(), Error> {
    let now = Ts::now();
    let stale = Ts(now.0 - chrono::Duration::seconds(FORGET_AFTER_SECS));
    for key in keys {
        let failures: i64 = on_tx!(tx, c => sqlx::query_scalar(
            "INSERT INTO login_throttle (key, failures, last_failed_at, blocked_until) VALUES ($1, 1, $2, $2) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN login_throttle.last_failed_at < $3 THEN 1 ELSE login_throttle.failures + 1 END, \
               last_failed_at = $2 \
             RETURNING failures")
            .bind(key).bind(now).bind(stale).fetch_one(&mut *c).await)
        .map_err(store)?;
        let until = Ts(now.0 + chrono::Duration::seconds(delay_secs(failures, free_failures(key))));
        exec!(tx, "UPDATE login_throttle SET blocked_until = $2 WHERE key = $1", key, until).map_err(store)?;
    }
    Ok(())
}

/// Forgets the failures of `key` (after a successful sign-in).
pub async fn clear(tx: &mut Tx, key: &str) -> Result<(), Error> {
    exec!(tx, "DELETE FROM login_throttle WHERE key = $1", key).map_err(store)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_delay_rises_and_is_capped() {
        use super::delay_secs;
        assert_eq!((0..5).map(|n| delay_secs(n, 5)).sum::<i64>(), 0);
        assert_eq!([5, 6, 7, 8].map(|n| delay_secs(n, 5)), [1, 2, 4, 8]);
        assert_eq!(delay_secs(100, 5), super::MAX_DELAY_SECS);
        assert_eq!(super::free_failures("ip:127.0.0.1"), super::FREE_FAILURES_IP);
    }
}

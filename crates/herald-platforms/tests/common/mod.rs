//! Shared set-up for the adapter tests: clients with short timeouts (so a lost answer is quick to
//! provoke) that may reach the fakes on 127.0.0.1.
#![allow(dead_code)]

use herald_http::guard::{Cidr, GuardConfig};
use herald_http::{HttpClient, SafeClient};
use herald_platforms::{Connection, Credentials, Net};
use std::sync::Arc;
use std::time::Duration;

/// How long a test client waits for an answer; fakes told to answer late wait longer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A `Net` whose clients reach 127.0.0.1 (the fakes), with a short timeout.
pub fn net() -> Net {
    let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").unwrap()], allow_ports: vec![] };
    let safe = SafeClient::with_options(guard, Arc::new(herald_http::guard::SystemLookup), TIMEOUT).unwrap();
    Net::new(HttpClient::trusted_with_timeout(TIMEOUT).unwrap(), safe)
}

/// A `Net` with the production guard: nothing private is reachable.
pub fn strict_net() -> Net {
    let safe =
        SafeClient::with_options(GuardConfig::default(), Arc::new(herald_http::guard::SystemLookup), TIMEOUT).unwrap();
    Net::new(HttpClient::trusted_with_timeout(TIMEOUT).unwrap(), safe)
}

pub fn connection(settings: serde_json::Value, credentials: serde_json::Value) -> Connection {
    Connection { id: uuid::Uuid::now_v7(), settings, credentials: Credentials(credentials) }
}

/// Whether a real peer is configured; prints why a test is skipped when it is not.
pub fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set, and CI must run the real-peer tests (.ci/peers/start.sh sets it)")
        }
        _ => {
            eprintln!("skipped: {var} is not set (CI's .ci/run starts the real server and sets it)");
            None
        }
    }
}

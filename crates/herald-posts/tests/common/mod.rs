//! What the pipeline tests share.

use herald_http::guard::{Cidr, GuardConfig, SystemLookup};
use herald_http::{HttpClient, SafeClient};
use herald_platforms::Net;
use std::time::Duration;

/// Clients for the local fakes: loopback opened in the SSRF guard, and a 2 s timeout so lost
/// answers are quick.
pub fn net() -> Net {
    let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").unwrap()], allow_ports: vec![] };
    let timeout = Duration::from_secs(2);
    Net::new(
        HttpClient::trusted_with_timeout(timeout).unwrap(),
        SafeClient::with_options(guard, std::sync::Arc::new(SystemLookup), timeout).unwrap(),
    )
}

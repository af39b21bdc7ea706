//! Herald's one outgoing HTTP client. Every crate that talks to the network builds its client
//! here, so timeouts, redirect policy, TLS and (with the platforms issue) the SSRF guard apply
//! everywhere.
//!
//! Today it offers the client for hosts the operator configured (`trusted`). The SSRF-guarded
//! client for hosts a user chose lands with the platform adapters; until then no code path sends
//! requests to user-chosen hosts.
#![forbid(unsafe_code)]

use std::sync::Once;
use std::time::Duration;

pub use reqwest::{Method, Response, StatusCode, header};

pub const USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

/// A client for hosts named by the operator's configuration (platform API bases, diagnostics).
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // One TLS stack for the whole binary: rustls on ring, shared with sqlx.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl HttpClient {
    pub fn trusted() -> Result<Self, BuildError> {
        install_crypto_provider();
        let inner = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        Ok(HttpClient { inner })
    }

    pub fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.inner.request(method, url)
    }

    pub fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.inner.get(url)
    }

    pub fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.inner.post(url)
    }
}

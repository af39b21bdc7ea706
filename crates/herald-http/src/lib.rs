//! Herald's one outgoing HTTP client. Every crate that talks to the network builds its client
//! here, so timeouts, redirect policy, TLS and (with the platforms issue) the SSRF guard apply
//! everywhere.
//!
//! Two clients: [`HttpClient::trusted`] for hosts the operator configured (platform API bases,
//! diagnostics), and [`SafeClient`] for hosts a user chose (feeds, webhook targets, instance URLs,
//! AI base URLs), which goes through the SSRF [`guard`]. No other crate builds an HTTP client; a
//! test enforces it.
#![forbid(unsafe_code)]

pub mod guard;

use guard::{Blocked, Guard, GuardConfig, GuardedResolver, Lookup, SystemLookup, blocked_in};
use std::sync::{Arc, Once};
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

/// Why a request to a user-chosen host failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Blocked(Blocked),
    #[error("the response is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request failed: {0}")]
    Http(reqwest::Error),
}

impl FetchError {
    fn from_reqwest(e: reqwest::Error) -> FetchError {
        match blocked_in(&e) {
            Some(b) => FetchError::Blocked(b),
            None => FetchError::Http(e.without_url()),
        }
    }
}

impl From<FetchError> for herald_core::Error {
    fn from(e: FetchError) -> Self {
        use herald_core::ErrorCode;
        match &e {
            FetchError::Blocked(b) => herald_core::Error::new(ErrorCode::SsrfBlockedDestination, b.to_string()),
            FetchError::TooLarge { .. } => herald_core::Error::new(ErrorCode::PayloadTooLarge, e.to_string()),
            FetchError::Http(_) => herald_core::Error::new(ErrorCode::UpstreamFailed, e.to_string()),
        }
    }
}

/// The client for hosts a user chose. Every URL, every resolved address and every redirect hop is
/// checked by the [`guard`]; redirects stop after 3 hops; `Authorization` and cookies are dropped
/// when a redirect leaves the host (reqwest's rule, tested here); no proxy from the environment.
#[derive(Clone)]
pub struct SafeClient {
    inner: reqwest::Client,
    guard: Guard,
}

pub const MAX_REDIRECTS: usize = 3;

impl SafeClient {
    pub fn new(config: GuardConfig) -> Result<Self, BuildError> {
        Self::with_lookup(config, Arc::new(SystemLookup))
    }

    /// With a custom resolver (tests use one that changes its answer, as DNS rebinding does).
    pub fn with_lookup(config: GuardConfig, lookup: Arc<dyn Lookup>) -> Result<Self, BuildError> {
        install_crypto_provider();
        let guard = Guard::new(config);
        let hop_guard = guard.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(Blocked(format!("more than {MAX_REDIRECTS} redirects")));
            }
            match hop_guard.check_parsed(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(b) => {
                    let to = attempt.url().clone();
                    attempt.error(Blocked(format!("redirect to {to}: {}", b.0)))
                }
            }
        });
        let inner = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { guard: guard.clone(), lookup }))
            .redirect(policy)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(SafeClient { inner, guard })
    }

    /// A request to `url`, refused before any connection when the URL itself is not allowed.
    pub fn request(&self, method: Method, url: &str) -> Result<reqwest::RequestBuilder, FetchError> {
        let url = self.guard.check_url(url).map_err(FetchError::Blocked)?;
        Ok(self.inner.request(method, url))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, FetchError> {
        let response = request.send().await.map_err(FetchError::from_reqwest)?;
        // reqwest hands back, unfollowed, a redirect to a scheme it cannot fetch (file:, ftp:);
        // say so instead of passing a 3xx on as if it were the answer.
        if response.status().is_redirection()
            && let Some(to) = response.headers().get(header::LOCATION)
        {
            let to = String::from_utf8_lossy(to.as_bytes()).chars().take(200).collect::<String>();
            return Err(FetchError::Blocked(Blocked(format!("redirect to {to}: only http and https are allowed"))));
        }
        Ok(response)
    }

    /// GETs `url` and reads at most `limit` bytes of its body.
    pub async fn get_limited(&self, url: &str, limit: usize) -> Result<(StatusCode, Vec<u8>), FetchError> {
        let response = self.send(self.request(Method::GET, url)?).await?;
        let status = response.status();
        Ok((status, read_limited(response, limit).await?))
    }
}

/// Reads a body up to `limit` bytes, failing as soon as it would pass it, whatever
/// `Content-Length` claims. (No `Accept-Encoding` is sent, so bodies arrive uncompressed; if that
/// changes, the limit still counts the decoded bytes this reads.)
pub async fn read_limited(mut response: Response, limit: usize) -> Result<Vec<u8>, FetchError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(FetchError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::from_reqwest)? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

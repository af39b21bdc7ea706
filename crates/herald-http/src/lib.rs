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

pub use reqwest::{Body, Error, Method, RequestBuilder, Response, StatusCode, header, multipart};

pub const USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

/// A client for hosts named by the operator's configuration (platform API bases, diagnostics).
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

/// Installs rustls on ring as the process's TLS provider (once); clients built by other crates
/// (the media object store's) need it too.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // One TLS stack for the whole binary: rustls on ring, shared with sqlx.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl HttpClient {
    pub fn trusted() -> Result<Self, BuildError> {
        Self::trusted_with_timeout(Duration::from_secs(30))
    }

    /// With a whole-request timeout other than 30 s (tests make lost answers quick).
    pub fn trusted_with_timeout(timeout: Duration) -> Result<Self, BuildError> {
        install_crypto_provider();
        let inner = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
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
    #[error("{0}")]
    Connect(String),
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
            FetchError::Http(_) | FetchError::Connect(_) => {
                herald_core::Error::new(ErrorCode::UpstreamFailed, e.to_string())
            }
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
    lookup: Arc<dyn Lookup>,
}

pub const MAX_REDIRECTS: usize = 3;

impl SafeClient {
    pub fn new(config: GuardConfig) -> Result<Self, BuildError> {
        Self::with_lookup(config, Arc::new(SystemLookup))
    }

    /// With a custom resolver (tests use one that changes its answer, as DNS rebinding does).
    pub fn with_lookup(config: GuardConfig, lookup: Arc<dyn Lookup>) -> Result<Self, BuildError> {
        Self::with_options(config, lookup, Duration::from_secs(30))
    }

    /// With a resolver and a whole-request timeout of choice.
    pub fn with_options(config: GuardConfig, lookup: Arc<dyn Lookup>, timeout: Duration) -> Result<Self, BuildError> {
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
            .dns_resolver(Arc::new(GuardedResolver { guard: guard.clone(), lookup: lookup.clone() }))
            .redirect(policy)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(10).min(timeout))
            .timeout(timeout)
            .build()?;
        Ok(SafeClient { inner, guard, lookup })
    }

    /// Opens a TCP connection for a protocol that is not HTTP (a Nostr relay's `ws(s)://`, an SMTP
    /// server a user chose). The URL gets the same checks as an HTTP one, with its own schemes and
    /// `default_port`, and the socket goes only to an address the guard checked.
    pub async fn connect_tcp(
        &self,
        url: &url::Url,
        schemes: &[&str],
        default_port: u16,
    ) -> Result<tokio::net::TcpStream, FetchError> {
        if !schemes.contains(&url.scheme()) {
            return Err(FetchError::Blocked(Blocked(format!(
                "the scheme `{}` is not allowed here; use {}",
                url.scheme(),
                schemes.join(" or ")
            ))));
        }
        let port = url.port().unwrap_or(default_port);
        // Reuse the HTTP URL checks (userinfo, port, literal addresses) on an equivalent URL.
        let mut probe = url::Url::parse("http://placeholder/").expect("static URL");
        probe.set_host(url.host_str()).map_err(|e| FetchError::Blocked(Blocked(format!("bad host ({e})"))))?;
        let _ = probe.set_port(Some(port));
        let _ = probe.set_username(url.username());
        let _ = probe.set_password(url.password());
        if port == default_port && default_port != 80 && default_port != 443 {
            // The protocol's own default port (e.g. 25 for SMTP) is not an "odd" port.
            let _ = probe.set_port(None);
        }
        self.guard.check_parsed(&probe).map_err(FetchError::Blocked)?;
        let host = url.host_str().unwrap_or_default();
        let addrs = self.guard.resolve(self.lookup.as_ref(), host, port).await.map_err(FetchError::Blocked)?;
        let connect = tokio::net::TcpStream::connect(&addrs[..]);
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(FetchError::Connect(format!("cannot connect to {host}:{port}: {e}"))),
            Err(_) => Err(FetchError::Connect(format!("connecting to {host}:{port} timed out"))),
        }
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

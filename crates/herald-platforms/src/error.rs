//! How a platform call failed, in the five classes the delivery pipeline acts on.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// What the caller must do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The credentials are refused: the connection needs re-authorising; retrying cannot help.
    Auth,
    /// The platform rejected the content or the settings: fail with its message.
    Invalid,
    /// A passing failure (5xx, a connection refused before anything was sent): retry with backoff.
    Transient,
    /// The platform said "not yet": wait `retry_after`, without spending an attempt.
    RateLimited,
    /// The request may have been applied but no answer came back, on a platform with no
    /// idempotency: the delivery becomes `unconfirmed` and is never retried blindly.
    UnknownOutcome,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Auth => "auth",
            ErrorClass::Invalid => "invalid",
            ErrorClass::Transient => "transient",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::UnknownOutcome => "unknown_outcome",
        }
    }
}

/// A failed platform call. `message` is the platform's own explanation (never a secret);
/// `code` its error code where it has one (`M_LIMIT_EXCEEDED`, `50013`, `6`, `ExpiredToken`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlatformError {
    pub class: ErrorClass,
    pub message: String,
    pub status: Option<u16>,
    pub code: Option<String>,
    #[serde(with = "secs_opt")]
    pub retry_after: Option<Duration>,
}

mod secs_opt {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

impl PlatformError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        PlatformError { class, message: message.into(), status: None, code: None, retry_after: None }
    }

    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Auth, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Invalid, message)
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }

    pub fn unknown_outcome(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::UnknownOutcome, message)
    }

    /// A rate limit; with no signal from the platform, a minute is a safe wait.
    pub fn rate_limited(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        let mut e = Self::new(ErrorClass::RateLimited, message);
        e.retry_after = Some(retry_after.unwrap_or(Duration::from_secs(60)));
        e
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn code(mut self, code: impl ToString) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// The generic class of an HTTP status, for platforms whose bodies say nothing more.
    pub fn from_status(status: u16, message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        let message = message.into();
        match status {
            401 | 403 => Self::auth(message),
            429 => Self::rate_limited(message, retry_after),
            408 | 500..=599 => {
                let mut e = Self::transient(message);
                e.retry_after = retry_after;
                e
            }
            _ => Self::invalid(message),
        }
        .status(status)
    }
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.message)?;
        if let Some(s) = self.status {
            write!(f, " (HTTP {s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlatformError {}

impl From<PlatformError> for herald_core::Error {
    fn from(e: PlatformError) -> Self {
        use herald_core::ErrorCode;
        let code = match e.class {
            ErrorClass::Auth => ErrorCode::PlatformAuthFailed,
            ErrorClass::Invalid => ErrorCode::PlatformRejected,
            ErrorClass::RateLimited => ErrorCode::RateLimited,
            ErrorClass::Transient | ErrorClass::UnknownOutcome => ErrorCode::UpstreamFailed,
        };
        let details = serde_json::to_value(&e).unwrap_or_default();
        herald_core::Error::new(code, format!("the platform said: {}", e.message)).with_details(details)
    }
}

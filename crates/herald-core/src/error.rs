//! One error type for the whole product. The `code` is a stable, snake_case machine string that
//! API clients, the CLI and scripts match on; the message is for people and says what to do.

use serde::Serialize;
use std::fmt;

/// Stable error codes. Adding one is fine; renaming or removing one breaks clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed (bad JSON, a bad parameter).
    BadRequest,
    /// The input parsed but broke a rule; `details` says which.
    ValidationFailed,
    /// No such object in this team (also used for other teams' objects).
    NotFound,
    /// No or bad credentials.
    Unauthorized,
    /// Authenticated, but the role does not allow this.
    Forbidden,
    /// The email and password do not match an active account (the same answer for both cases).
    InvalidCredentials,
    /// The password was right; now send the TOTP or a recovery code.
    TwoFactorRequired,
    /// The team requires two-factor authentication and this user has not enrolled.
    TwoFactorEnrollmentRequired,
    /// A team quota would be exceeded; `details` names the quota and its limit.
    QuotaExceeded,
    /// The object changed state in a way that makes the request impossible.
    Conflict,
    /// The body is larger than the endpoint accepts.
    PayloadTooLarge,
    /// The body's Content-Type is not one this endpoint takes.
    UnsupportedMediaType,
    /// Too many requests; retry after the time in `details`.
    RateLimited,
    /// An outgoing request to a user-chosen URL was refused: a private, loopback or metadata
    /// address, a bad scheme or port, or too many redirects. The message names the reason.
    SsrfBlockedDestination,
    /// The platform refused the connection's credentials: fix them or re-authorise.
    PlatformAuthFailed,
    /// The platform rejected the request (content, settings, a missing right); the message
    /// carries the platform's own words.
    PlatformRejected,
    /// A remote server (a platform, a feed, a webhook target) failed or could not be reached.
    UpstreamFailed,
    /// A signed media URL whose signature does not match (altered, or not made by this Herald).
    MediaUrlInvalid,
    /// A signed media URL past its expiry.
    MediaUrlExpired,
    /// An inbound webhook's signature is missing or wrong, or its timestamp is more than five
    /// minutes off: sign with the source's secret (Standard Webhooks or the configured HMAC header).
    WebhookSignatureInvalid,
    /// The database is unreachable or not migrated.
    Unavailable,
    /// A bug or an unexpected failure; the server log has the cause.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and for the test that checks each is used.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::ValidationFailed,
        ErrorCode::NotFound,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::InvalidCredentials,
        ErrorCode::TwoFactorRequired,
        ErrorCode::TwoFactorEnrollmentRequired,
        ErrorCode::QuotaExceeded,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::SsrfBlockedDestination,
        ErrorCode::PlatformAuthFailed,
        ErrorCode::PlatformRejected,
        ErrorCode::UpstreamFailed,
        ErrorCode::MediaUrlInvalid,
        ErrorCode::MediaUrlExpired,
        ErrorCode::WebhookSignatureInvalid,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::TwoFactorRequired => "two_factor_required",
            ErrorCode::TwoFactorEnrollmentRequired => "two_factor_enrollment_required",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SsrfBlockedDestination => "ssrf_blocked_destination",
            ErrorCode::PlatformAuthFailed => "platform_auth_failed",
            ErrorCode::PlatformRejected => "platform_rejected",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::MediaUrlInvalid => "media_url_invalid",
            ErrorCode::MediaUrlExpired => "media_url_expired",
            ErrorCode::WebhookSignatureInvalid => "webhook_signature_invalid",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status this code travels with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::ValidationFailed => 422,
            ErrorCode::NotFound => 404,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::InvalidCredentials => 401,
            ErrorCode::TwoFactorRequired => 401,
            ErrorCode::TwoFactorEnrollmentRequired => 403,
            ErrorCode::QuotaExceeded => 403,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::SsrfBlockedDestination => 422,
            ErrorCode::PlatformAuthFailed => 422,
            ErrorCode::PlatformRejected => 422,
            ErrorCode::UpstreamFailed => 502,
            ErrorCode::MediaUrlInvalid => 403,
            ErrorCode::MediaUrlExpired => 403,
            ErrorCode::WebhookSignatureInvalid => 401,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with a stable code, a message for people, and optional structured details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), details: None }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(what: &str) -> Self {
        Error::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_serialise_as_their_string() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s} is not snake_case");
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(s));
            assert!((400..600).contains(&code.http_status()));
        }
    }
}

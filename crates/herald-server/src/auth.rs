//! Authentication for `/api/v1`: a Bearer API key, or the dashboard's session cookie. Cookie
//! requests that change state must also carry the session's CSRF token in `X-CSRF-Token`, and
//! any request with an `Origin` header must come from this server's own origin.

use crate::error::ApiError;
use crate::router::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::AppendHeaders;
use herald_accounts::{Client, LoggedIn, Principal};
use herald_core::ErrorCode;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

pub const SESSION_COOKIE: &str = "herald_session";
pub const CSRF_COOKIE: &str = "herald_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The authenticated caller of a request.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = client_of(parts);
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let key = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).unwrap_or("");
            return match state.accounts.authenticate_key(key, &client).await? {
                Some(p) => Ok(Auth(p)),
                None => Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "the API key is unknown, revoked or expired; send `Authorization: Bearer hk_…` with a live key",
                )),
            };
        }
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "sign in (POST /api/v1/session/login) or send `Authorization: Bearer hk_…`",
            ));
        };
        let Some((principal, csrf_hash)) = state.accounts.authenticate_session(&token, &client).await? else {
            return Err(ApiError::new(ErrorCode::Unauthorized, "the session has ended; sign in again"));
        };
        check_origin(parts, state)?;
        if !parts.method.is_safe() {
            let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            let sent_hash = Sha256::digest(sent.as_bytes());
            // Both sides are hashes, so comparing them leaks nothing useful; still, do it in
            // constant time.
            let same = sent_hash.len() == csrf_hash.len()
                && sent_hash.iter().zip(&csrf_hash).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if sent.is_empty() || !same {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "missing or wrong X-CSRF-Token header; send the csrf_token from sign-in (also in the herald_csrf cookie)",
                ));
            }
        }
        Ok(Auth(principal))
    }
}

/// Refuses a request whose `Origin` is not this server (cross-site requests with the cookie).
pub fn check_origin(parts: &Parts, state: &AppState) -> Result<(), ApiError> {
    let Some(origin) = parts.headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return Ok(()) };
    let own_public = state.public_url.as_deref().map(origin_of);
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let same_host = origin.split_once("://").is_some_and(|(_, rest)| rest == host);
    if same_host || own_public.as_deref() == Some(origin) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "cross-site request refused: the Origin is not this server"))
    }
}

fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    format!("{scheme}://{}", rest.split('/').next().unwrap_or(""))
}

pub fn client_of(parts: &Parts) -> Client {
    Client {
        ip: parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()),
        user_agent: parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string),
    }
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The Set-Cookie headers that start a session.
pub fn session_cookies(
    state: &AppState,
    logged_in: &LoggedIn,
) -> AppendHeaders<[(header::HeaderName, HeaderValue); 2]> {
    let max_age = state.accounts.config().session_max.as_secs();
    let secure = if state.public_url.as_deref().is_some_and(|u| u.starts_with("https://")) { "; Secure" } else { "" };
    let session = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        logged_in.session_token
    );
    let csrf = format!("{CSRF_COOKIE}={}; Path=/; SameSite=Lax; Max-Age={max_age}{secure}", logged_in.csrf_token);
    // Appended, not inserted: two Set-Cookie headers.
    AppendHeaders([
        (header::SET_COOKIE, HeaderValue::from_str(&session).expect("a token is a valid header value")),
        (header::SET_COOKIE, HeaderValue::from_str(&csrf).expect("a token is a valid header value")),
    ])
}

/// The Set-Cookie headers that end a session.
pub fn cleared_cookies() -> AppendHeaders<[(header::HeaderName, HeaderValue); 2]> {
    AppendHeaders([
        (header::SET_COOKIE, HeaderValue::from_static("herald_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")),
        (header::SET_COOKIE, HeaderValue::from_static("herald_csrf=; Path=/; SameSite=Lax; Max-Age=0")),
    ])
}

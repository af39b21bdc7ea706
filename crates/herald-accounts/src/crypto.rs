//! Tokens, hashes and passwords. Every bearer credential Herald hands out (session cookies, API
//! keys, invite, setup and reset links, recovery codes) is 256 random bits from the OS CSPRNG, and
//! only its SHA-256 is stored: a database leak yields nothing that signs in, and lookups by hash
//! need no constant-time comparison.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::{Error, ErrorCode};
use sha2::{Digest, Sha256};

/// A fresh 256-bit token, base64url, with an optional prefix that tells what it is (`hk_` for
/// API keys) so secret scanners and people can recognise it.
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub const MIN_PASSWORD: usize = 10;
pub const MAX_PASSWORD: usize = 1024;

/// Length rules only (ASVS 6.2): at least 10 characters, at most 1024, no composition rules.
pub fn check_password_rules(password: &str) -> Result<(), Error> {
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(Error::new(
            ErrorCode::ValidationFailed,
            format!("a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long"),
        )
        .with_details(serde_json::json!({"field": "password", "min": MIN_PASSWORD, "max": MAX_PASSWORD})));
    }
    Ok(())
}

fn argon2() -> Argon2<'static> {
    // Argon2id, v19, m=19 MiB, t=2, p=1: OWASP's recommended minimum.
    Argon2::default()
}

/// Hashes a password with Argon2id on the blocking pool, so a login never stalls the runtime.
pub async fn hash_password(password: String) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || {
        argon2()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("hashing a password failed: {e}")))
    })
    .await
    .map_err(|e| Error::internal(format!("the password hasher stopped: {e}")))?
}

/// The hash of a random password nobody knows, with the same parameters as real ones, so an
/// unknown email costs the same Argon2 work as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$MxFnRfuPVDU6RejHyBITBA$zEFjJklM11MlMnooD96tjOpufVw2bdgISF0iLYvoYd4";

/// Checks `password` against `hash`; with no hash (unknown user) it checks against a dummy one
/// and fails, taking the same time.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let Ok(parsed) = PasswordHash::new(&hash) else { return false };
        argon2().verify_password(password.as_bytes(), &parsed).is_ok() && known
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dummy_hash_has_the_parameters_of_real_hashes() {
        use argon2::password_hash::PasswordHasher;
        let real = super::argon2().hash_password(b"x").unwrap().to_string();
        let params = |h: &str| h.split('$').take(4).collect::<Vec<_>>().join("$");
        assert_eq!(params(super::DUMMY_HASH), params(&real));
    }
}

//! Signed, expiring URLs for platforms that fetch media themselves (Nostr links them by URL).
//!
//! A URL names the team, the file and an expiry (Unix seconds) and carries an HMAC-SHA256 of the
//! three under a key derived from Herald's master key ([`LABEL`]), so every node that shares the
//! key signs and checks the same URLs and nothing else can mint one. The server's public route
//! (`GET /api/v1/media/{media_id}/file`) checks it before streaming the file.

use hmac::{Hmac, KeyInit as _, Mac};
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The label the signing key is derived under (see `herald_vault::Vault::derive`).
pub const LABEL: &str = "media-url v1";

/// The path a signed URL points at, relative to the public base URL.
pub fn path(media: Uuid) -> String {
    format!("/api/v1/media/{media}/file")
}

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the media URL's signature does not match; ask for a new link")]
    Invalid,
    #[error("the media URL has expired; ask for a new link")]
    Expired,
}

impl From<UrlError> for herald_core::Error {
    fn from(e: UrlError) -> Self {
        use herald_core::ErrorCode;
        let code = match e {
            UrlError::Invalid => ErrorCode::MediaUrlInvalid,
            UrlError::Expired => ErrorCode::MediaUrlExpired,
        };
        herald_core::Error::new(code, e.to_string())
    }
}

/// Signs with the first key and accepts any of them, so URLs signed before a key rotation keep
/// working until they expire. Its `Debug` never shows a key.
#[derive(Clone)]
pub struct UrlSigner {
    keys: Arc<[[u8; 32]]>,
}

impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UrlSigner({} keys)", self.keys.len())
    }
}

fn mac(key: &[u8; 32], team: Uuid, media: Uuid, expires: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("herald media url\0{team}\0{media}\0{expires}").as_bytes());
    mac
}

impl UrlSigner {
    /// `keys`: the active key first (as `Vault::derive(LABEL)` gives them).
    pub fn new(keys: Vec<[u8; 32]>) -> UrlSigner {
        assert!(!keys.is_empty(), "a URL signer needs a key");
        UrlSigner { keys: keys.into() }
    }

    /// The signature (hex) for `media` of `team`, valid until `expires` (Unix seconds).
    pub fn sign(&self, team: Uuid, media: Uuid, expires: i64) -> String {
        hex::encode(mac(&self.keys[0], team, media, expires).finalize().into_bytes())
    }

    /// Checks a signature in constant time, then the expiry against `now` (Unix seconds): a
    /// changed team, file or expiry is `Invalid`, a genuine but old URL `Expired`.
    pub fn verify(&self, team: Uuid, media: Uuid, expires: i64, sig: &str, now: i64) -> Result<(), UrlError> {
        let sig = hex::decode(sig).map_err(|_| UrlError::Invalid)?;
        let genuine = self.keys.iter().any(|k| mac(k, team, media, expires).verify_slice(&sig).is_ok());
        if !genuine {
            return Err(UrlError::Invalid);
        }
        if expires <= now { Err(UrlError::Expired) } else { Ok(()) }
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// How Herald hands out its media: the public base URL (HERALD_PUBLIC_URL), the signer and how
/// long a URL lives (HERALD_MEDIA_URL_TTL).
#[derive(Debug, Clone)]
pub struct PublicMedia {
    base: String,
    signer: UrlSigner,
    ttl: Duration,
}

/// Expiries are rounded up to this, so a retry soon after the first try makes the same URL (and
/// Nostr, whose event id hashes the content, the same note).
const ROUND: i64 = 3600;

impl PublicMedia {
    pub fn new(base: &str, signer: UrlSigner, ttl: Duration) -> PublicMedia {
        PublicMedia { base: base.trim_end_matches('/').to_string(), signer, ttl }
    }

    /// A URL for `media` of `team` that works for at least the TTL from `now` (and less than an
    /// hour more).
    pub fn url_at(&self, team: Uuid, media: Uuid, now: i64) -> String {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 4);
        let expires = (now.saturating_add(ttl) / ROUND + 1) * ROUND;
        let sig = self.signer.sign(team, media, expires);
        format!("{}{}?team={team}&expires={expires}&sig={sig}", self.base, path(media))
    }

    pub fn url(&self, team: Uuid, media: Uuid) -> String {
        self.url_at(team, media, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner::new(vec![[7u8; 32]])
    }

    #[test]
    fn a_signature_checks_only_for_its_team_file_and_expiry() {
        let s = signer();
        let (team, media, now) = (Uuid::now_v7(), Uuid::now_v7(), 1_000_000);
        let sig = s.sign(team, media, now + 60);
        assert_eq!(sig.len(), 64);
        assert_eq!(s.verify(team, media, now + 60, &sig, now), Ok(()));
        assert_eq!(s.verify(Uuid::now_v7(), media, now + 60, &sig, now), Err(UrlError::Invalid), "another team");
        assert_eq!(s.verify(team, Uuid::now_v7(), now + 60, &sig, now), Err(UrlError::Invalid), "another file");
        assert_eq!(s.verify(team, media, now + 61, &sig, now), Err(UrlError::Invalid), "a later expiry");
        assert_eq!(s.verify(team, media, now + 60, &sig[..62], now), Err(UrlError::Invalid), "truncated");
        assert_eq!(s.verify(team, media, now + 60, &sig[..63], now), Err(UrlError::Invalid), "odd length");
        assert_eq!(s.verify(team, media, now + 60, "", now), Err(UrlError::Invalid));
        let mut flipped = sig.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(s.verify(team, media, now + 60, &flipped, now), Err(UrlError::Invalid));
        // Another key (another installation) does not accept it.
        let other = UrlSigner::new(vec![[8u8; 32]]);
        assert_eq!(other.verify(team, media, now + 60, &sig, now), Err(UrlError::Invalid));
    }

    #[test]
    fn genuine_urls_expire() {
        let s = signer();
        let (team, media) = (Uuid::now_v7(), Uuid::now_v7());
        let sig = s.sign(team, media, 500);
        assert_eq!(s.verify(team, media, 500, &sig, 499), Ok(()));
        assert_eq!(s.verify(team, media, 500, &sig, 500), Err(UrlError::Expired));
        assert_eq!(s.verify(team, media, 500, &sig, 10_000), Err(UrlError::Expired));
    }

    #[test]
    fn old_keys_still_check_new_key_signs() {
        let (team, media) = (Uuid::now_v7(), Uuid::now_v7());
        let old = signer().sign(team, media, 900);
        let rotated = UrlSigner::new(vec![[9u8; 32], [7u8; 32]]);
        assert_eq!(rotated.verify(team, media, 900, &old, 0), Ok(()));
        assert_ne!(rotated.sign(team, media, 900), old);
        assert!(!format!("{rotated:?}").contains("9, 9"), "no key in Debug");
    }

    #[test]
    fn urls_name_the_file_and_round_the_expiry_up() {
        let p = PublicMedia::new("https://herald.example/", signer(), Duration::from_secs(86_400));
        let (team, media) = (Uuid::now_v7(), Uuid::now_v7());
        let now = 1_700_000_123;
        let url = p.url_at(team, media, now);
        let prefix = format!("https://herald.example/api/v1/media/{media}/file?team={team}&expires=");
        assert!(url.starts_with(&prefix), "{url}");
        let rest = &url[prefix.len()..];
        let (expires, sig) = rest.split_once("&sig=").unwrap();
        let expires: i64 = expires.parse().unwrap();
        assert!(expires >= now + 86_400 && expires < now + 86_400 + 3600 && expires % 3600 == 0);
        assert_eq!(signer().verify(team, media, expires, sig, now), Ok(()));
        assert_eq!(p.url_at(team, media, now + 5), url, "a retry moments later makes the same URL");
    }
}

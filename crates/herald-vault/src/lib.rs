//! Herald's secret box. Every credential Herald stores is sealed here before it reaches the
//! database, with AES-256-GCM under the active master key.
//!
//! A sealed value is text, `hv1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`, so each one says
//! which key opens it and keys can be rotated row by row. The key id is derived from the key itself
//! (no registry to keep in step). The associated data names the column, team and row the value
//! belongs to ([`binding`]), so a ciphertext copied into another row or team fails to open.
//!
//! The ring holds one active key (sealing) and any number of older ones (opening only). It comes
//! from `HERALD_SECRET_KEY` (comma-separated hex keys, the first active) or from a key file with one
//! hex key per line; a ring backed by a file re-reads it when it meets a key id it does not know,
//! so a node keeps working while `herald secrets rotate` re-encrypts rows under a new key.
//!
//! Other secrets Herald needs to be stable across restarts and nodes (the key that signs public
//! media URLs) are derived from the master keys with [`Vault::derive`], one fixed label each.
#![forbid(unsafe_code)]

mod keyfile;

pub use keyfile::{KeyFile, KeyFileError};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

const PREFIX: &str = "hv1";
const NONCE_LEN: usize = 12;

/// Why a sealed value could not be opened. None of these carry the secret or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("the stored secret is not in Herald's sealed format")]
    Malformed,
    #[error(
        "the stored secret was sealed with key {0}, which this node does not have; add that key to HERALD_SECRET_KEY or the key file"
    )]
    UnknownKey(String),
    #[error("the stored secret does not open: it was altered, or it belongs to another row or team")]
    Tampered,
    #[error("a master key must be 64 hex characters (32 bytes); generate one with `openssl rand -hex 32`")]
    BadKey,
}

/// A decrypted secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it (a platform call, a MAC).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// "set, ending in …abcd": what an API may say about a secret.
    pub fn hint(&self) -> String {
        let tail: String = self.0.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
        if self.0.chars().count() >= 12 { format!("…{tail}") } else { "set".to_string() }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The associated data for a secret stored in `table.column` of `row`, owned by `team` (or by no
/// team, for per-user secrets like a TOTP seed). Opening with any other binding fails.
pub fn binding(table: &str, column: &str, team: Option<&dyn fmt::Display>, row: &dyn fmt::Display) -> String {
    match team {
        Some(team) => format!("herald:{table}.{column}:team={team}:row={row}"),
        None => format!("herald:{table}.{column}:row={row}"),
    }
}

/// A 32-byte master key.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        MasterKey(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    pub fn parse_hex(s: &str) -> Result<Self, VaultError> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return Err(VaultError::BadKey);
        }
        let mut key = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(|_| VaultError::BadKey)?;
            key[i] = u8::from_str_radix(pair, 16).map_err(|_| VaultError::BadKey)?;
        }
        Ok(MasterKey(key))
    }

    /// Comma-separated hex keys, as `HERALD_SECRET_KEY` holds them; the first is the active one.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, VaultError> {
        let keys: Vec<_> =
            s.split(',').filter(|k| !k.trim().is_empty()).map(MasterKey::parse_hex).collect::<Result<_, _>>()?;
        if keys.is_empty() { Err(VaultError::BadKey) } else { Ok(keys) }
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A short public name for the key: 8 hex characters of a domain-separated SHA-256, which
    /// reveals nothing useful about the key.
    pub fn id(&self) -> String {
        let digest = Sha256::new().chain_update(b"herald-vault key id\0").chain_update(self.0).finalize();
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A 32-byte subkey for one purpose: HMAC-SHA256 under this key of a domain-separated `label`.
    /// Different labels give unrelated keys, and none reveals the master key.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"herald-vault derive\0");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

struct Key {
    id: String,
    master: MasterKey,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(k: &MasterKey) -> Key {
        Key { id: k.id(), master: k.clone(), cipher: Aes256Gcm::new(&k.0.into()) }
    }
}

/// The key ring: seals with the active key, opens with any. Cheap to clone.
#[derive(Clone)]
pub struct Vault {
    keys: Arc<RwLock<Vec<Key>>>,
    file: Option<PathBuf>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("keys", &self.key_ids()).finish()
    }
}

impl Vault {
    /// A ring of fixed keys; the first seals.
    pub fn new(keys: &[MasterKey]) -> Vault {
        assert!(!keys.is_empty(), "a vault needs at least one key");
        Vault { keys: Arc::new(RwLock::new(keys.iter().map(Key::new).collect())), file: None }
    }

    /// A ring read from a key file, re-read when an unknown key id turns up.
    pub fn from_file(file: &KeyFile) -> Result<Vault, KeyFileError> {
        let keys = file.read()?;
        let mut vault = Vault::new(&keys);
        vault.file = Some(file.path().to_path_buf());
        Ok(vault)
    }

    /// The id of the key that seals.
    pub fn active_id(&self) -> String {
        self.keys.read().expect("vault lock").first().map(|k| k.id.clone()).unwrap_or_default()
    }

    /// The subkey for `label` under each key of the ring, the active key's first: sign with the
    /// first, accept any, so values made before a rotation still check.
    pub fn derive(&self, label: &str) -> Vec<[u8; 32]> {
        self.keys.read().expect("vault lock").iter().map(|k| k.master.derive(label)).collect()
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.keys.read().expect("vault lock").iter().map(|k| k.id.clone()).collect()
    }

    /// Seals `plaintext` for the place `aad` names (see [`binding`]).
    pub fn seal(&self, plaintext: &str, aad: &str) -> String {
        let keys = self.keys.read().expect("vault lock");
        let key = &keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let ct = key
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce_bytes);
        blob.extend_from_slice(&ct);
        format!("{PREFIX}.{}.{}", key.id, URL_SAFE_NO_PAD.encode(blob))
    }

    /// Opens a value sealed for `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<Secret, VaultError> {
        let (kid, blob) = parse(sealed)?;
        match self.open_with(kid, &blob, aad) {
            Err(VaultError::UnknownKey(_)) if self.reload() => self.open_with(kid, &blob, aad),
            other => other,
        }
    }

    fn open_with(&self, kid: &str, blob: &[u8], aad: &str) -> Result<Secret, VaultError> {
        let keys = self.keys.read().expect("vault lock");
        let key = keys.iter().find(|k| k.id == kid).ok_or_else(|| VaultError::UnknownKey(kid.to_string()))?;
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| VaultError::Malformed)?;
        let plain =
            key.cipher.decrypt(&nonce, Payload { msg: ct, aad: aad.as_bytes() }).map_err(|_| VaultError::Tampered)?;
        String::from_utf8(plain).map(Secret).map_err(|_| VaultError::Tampered)
    }

    /// Re-reads the key file, if there is one; true when the ring changed.
    pub fn reload(&self) -> bool {
        let Some(path) = &self.file else { return false };
        let Ok(keys) = KeyFile::at(path).read() else { return false };
        let fresh: Vec<Key> = keys.iter().map(Key::new).collect();
        let mut ring = self.keys.write().expect("vault lock");
        let changed = fresh.len() != ring.len() || fresh.iter().zip(ring.iter()).any(|(a, b)| a.id != b.id);
        if changed {
            *ring = fresh;
        }
        changed
    }

    /// Whether `sealed` is under the active key already (rotation skips those rows).
    pub fn is_current(&self, sealed: &str) -> bool {
        key_id_of(sealed) == Some(self.active_id().as_str())
    }
}

/// The key id a sealed value names, without opening it.
pub fn key_id_of(sealed: &str) -> Option<&str> {
    parse_parts(sealed).map(|(kid, _)| kid)
}

fn parse_parts(sealed: &str) -> Option<(&str, &str)> {
    let mut parts = sealed.splitn(3, '.');
    (parts.next()? == PREFIX).then_some(())?;
    Some((parts.next()?, parts.next()?))
}

fn parse(sealed: &str) -> Result<(&str, Vec<u8>), VaultError> {
    let (kid, body) = parse_parts(sealed).ok_or(VaultError::Malformed)?;
    let blob = URL_SAFE_NO_PAD.decode(body).map_err(|_| VaultError::Malformed)?;
    if blob.len() < NONCE_LEN + 16 {
        return Err(VaultError::Malformed);
    }
    Ok((kid, blob))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_for_the_same_binding_only() {
        let v = Vault::new(&[MasterKey::generate()]);
        let here = binding("connections", "token", Some(&"team-a"), &"row-1");
        let sealed = v.seal("canary-7f3a", &here);
        assert!(!sealed.contains("canary"));
        assert_eq!(v.open(&sealed, &here).unwrap().expose(), "canary-7f3a");
        // Another row, another team: the copied ciphertext must not open.
        assert_eq!(
            v.open(&sealed, &binding("connections", "token", Some(&"team-a"), &"row-2")),
            Err(VaultError::Tampered)
        );
        assert_eq!(
            v.open(&sealed, &binding("connections", "token", Some(&"team-b"), &"row-1")),
            Err(VaultError::Tampered)
        );
        // Two seals of one value differ (fresh nonce).
        assert_ne!(v.seal("x", &here), v.seal("x", &here));
    }

    #[test]
    fn a_flipped_bit_or_garbage_is_refused() {
        let v = Vault::new(&[MasterKey::generate()]);
        let sealed = v.seal("secret", "aad");
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(v.open(&flipped, "aad"), Err(VaultError::Tampered));
        assert_eq!(v.open("plain text", "aad"), Err(VaultError::Malformed));
        assert_eq!(v.open("hv1.abcd.%%", "aad"), Err(VaultError::Malformed));
    }

    #[test]
    fn old_keys_open_new_key_seals() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let before = Vault::new(std::slice::from_ref(&old));
        let sealed_old = before.seal("s", "aad");
        let after = Vault::new(&[new.clone(), old.clone()]);
        assert_eq!(after.open(&sealed_old, "aad").unwrap().expose(), "s");
        assert!(!after.is_current(&sealed_old));
        let sealed_new = after.seal("s", "aad");
        assert_eq!(key_id_of(&sealed_new), Some(new.id().as_str()));
        assert!(after.is_current(&sealed_new));
        assert_eq!(before.open(&sealed_new, "aad"), Err(VaultError::UnknownKey(new.id())));
    }

    #[test]
    fn derived_keys_are_stable_per_label_and_follow_the_ring() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        assert_eq!(a.derive("media-url"), MasterKey::from_bytes(a.0).derive("media-url"), "stable");
        assert_ne!(a.derive("media-url"), a.derive("other"));
        assert_ne!(a.derive("media-url"), b.derive("media-url"));
        assert_ne!(a.derive("media-url"), a.0, "not the master key itself");
        let ring = Vault::new(&[b.clone(), a.clone()]);
        assert_eq!(ring.derive("media-url"), vec![b.derive("media-url"), a.derive("media-url")]);
    }

    #[test]
    fn keys_parse_from_hex_lists() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        let list = MasterKey::parse_list(&format!("{}, {}", a.to_hex(), b.to_hex())).unwrap();
        assert_eq!(list.iter().map(MasterKey::id).collect::<Vec<_>>(), vec![a.id(), b.id()]);
        assert_eq!(MasterKey::parse_hex("short").unwrap_err(), VaultError::BadKey);
        assert_eq!(MasterKey::parse_list(" , ").unwrap_err(), VaultError::BadKey);
        assert!(!format!("{a:?}").contains(&a.to_hex()));
        assert_eq!(format!("{:?}", Secret::new("tok")), "Secret(***)");
        assert_eq!(Secret::new("abcdefghijklmnop").hint(), "…mnop");
        assert_eq!(Secret::new("short").hint(), "set");
    }
}

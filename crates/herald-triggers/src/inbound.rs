//! Inbound webhooks (`POST /hooks/in/{id}`, security.md 10, 11, 14). The route answers 415 for a
//! body that is not JSON and 413 past the size cap before anything here runs; this checks the
//! signature over the raw bytes in constant time, refuses a timestamp more than five minutes off,
//! and stores the payload as an event whose external id is the `webhook-id`, so a replay is
//! acknowledged and not processed again.

use crate::intake::Incoming;
use crate::model::{Kind, Verify};
use crate::store::{MAX_HOOK_BYTES, Sources};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use herald_core::{Error, ErrorCode};
use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How far a signed timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;
pub const DEFAULT_HMAC_HEADER: &str = "x-hub-signature-256";

/// What happened to a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Stored as this event.
    Stored(Uuid),
    /// This webhook-id was processed before: acknowledged, nothing done.
    Duplicate,
}

fn refused(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::WebhookSignatureInvalid, message)
}

/// Standard Webhooks: `v1,<base64>` entries (space-separated) over `{id}.{timestamp}.{body}`,
/// keyed with the base64 part of the `whsec_` secret.
pub fn standard_ok(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let Ok(key) = B64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)) else { return false };
    signatures.split_whitespace().filter_map(|s| s.strip_prefix("v1,")).filter_map(|s| B64.decode(s).ok()).any(|sig| {
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(&key) else { return false };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

/// A plain HMAC header: `sha256=<hex>`, `sha1=`, `sha512=`, or bare hex (SHA-256).
pub fn hmac_ok(secret: &str, header: &str, body: &[u8]) -> bool {
    let header = header.trim();
    let with_algo = if header.contains('=') { header.to_string() } else { format!("sha256={header}") };
    crate::websub::signature_ok(secret.as_bytes(), Some(&with_algo), body)
}

fn check_timestamp(ts: &str) -> Result<(), Error> {
    let t: i64 = ts.trim().parse().map_err(|_| refused("webhook-timestamp must be Unix seconds"))?;
    let skew = (chrono::Utc::now().timestamp() - t).abs();
    if skew > TOLERANCE_SECS {
        return Err(refused(format!(
            "webhook-timestamp is {skew} s from now (at most {TOLERANCE_SECS} s allowed); check the sender's clock, or this is a replay"
        )));
    }
    Ok(())
}

impl Sources {
    /// The body cap of a webhook source, for the route to answer 413 before reading further.
    /// `None` when no active webhook source has this id (404).
    pub async fn webhook_limit(&self, id: Uuid) -> Result<Option<usize>, Error> {
        Ok(self
            .row(id)
            .await?
            .filter(|r| r.kind() == Kind::Webhook && r.active)
            .map(|r| r.settings().max_bytes.map_or(MAX_HOOK_BYTES, |m| (m as usize).min(MAX_HOOK_BYTES))))
    }

    /// Verifies and stores one delivery. `header` looks a request header up by lower-case name.
    pub async fn receive_webhook(
        &self,
        id: Uuid,
        header: &(dyn Fn(&str) -> Option<String> + Sync),
        body: &[u8],
    ) -> Result<Received, Error> {
        let row = self
            .row(id)
            .await?
            .filter(|r| r.kind() == Kind::Webhook && r.active)
            .ok_or_else(|| Error::not_found("webhook source"))?;
        let settings = row.settings();
        let sealed = row.secret.as_deref().ok_or_else(|| Error::internal("the webhook source has no secret"))?;
        let secret = self.vault.open(sealed, &row.secret_binding()).map_err(|e| Error::internal(e.to_string()))?;
        let external = match settings.verify.unwrap_or_default() {
            Verify::Standard => {
                let (Some(wid), Some(ts), Some(sigs)) =
                    (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"))
                else {
                    return Err(refused(
                        "send webhook-id, webhook-timestamp and webhook-signature (Standard Webhooks)",
                    ));
                };
                check_timestamp(&ts)?;
                if !standard_ok(secret.expose(), &wid, &ts, &sigs, body) {
                    tracing::warn!(target: "herald::security", source = %id, "an inbound webhook's signature does not match");
                    return Err(refused("the webhook-signature does not match; sign with the source's secret"));
                }
                if wid.is_empty() || wid.len() > 500 {
                    return Err(Error::new(ErrorCode::BadRequest, "webhook-id must be 1 to 500 characters"));
                }
                wid
            }
            Verify::Hmac => {
                let name = settings.signature_header.as_deref().unwrap_or(DEFAULT_HMAC_HEADER).to_ascii_lowercase();
                let Some(sig) = header(&name) else {
                    return Err(refused(format!("send the signature in the {name} header")));
                };
                if let Some(ts) = header("webhook-timestamp") {
                    check_timestamp(&ts)?;
                }
                if !hmac_ok(secret.expose(), &sig, body) {
                    tracing::warn!(target: "herald::security", source = %id, "an inbound webhook's signature does not match");
                    return Err(refused(format!(
                        "the {name} signature does not match; sign the raw body with the source's secret"
                    )));
                }
                // Without an id header the body itself is the identity: a replay is a repeat.
                header("webhook-id")
                    .or_else(|| header("x-request-id"))
                    .filter(|v| !v.is_empty() && v.len() <= 500)
                    .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body))))
            }
        };
        let data: Value = serde_json::from_slice(body)
            .map_err(|e| Error::new(ErrorCode::BadRequest, format!("the body is not valid JSON: {e}")))?;
        let incoming = Incoming {
            team: row.team_id,
            source: row.id,
            kind: "webhook.received",
            external_id: external,
            data,
            touch: true,
        };
        let stored = self.receive(incoming).await?;
        Ok(stored.map_or(Received::Duplicate, |e| Received::Stored(e.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
        let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn standard_signatures() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = sign(secret, "msg_1", "1700000000", b"{}");
        assert!(standard_ok(secret, "msg_1", "1700000000", &sig, b"{}"));
        // Any one of several signatures (key rotation) is enough.
        assert!(standard_ok(secret, "msg_1", "1700000000", &format!("v1,AAAA {sig}"), b"{}"));
        assert!(!standard_ok(secret, "msg_2", "1700000000", &sig, b"{}"));
        assert!(!standard_ok(secret, "msg_1", "1700000001", &sig, b"{}"));
        assert!(!standard_ok(secret, "msg_1", "1700000000", &sig, b"{ }"));
        assert!(!standard_ok(secret, "msg_1", "1700000000", &sig.replace("v1,", "v2,"), b"{}"));
    }

    #[test]
    fn timestamps_within_five_minutes() {
        let now = chrono::Utc::now().timestamp();
        assert!(check_timestamp(&now.to_string()).is_ok());
        assert!(check_timestamp(&(now - 299).to_string()).is_ok());
        assert!(check_timestamp(&(now - 301).to_string()).is_err());
        assert!(check_timestamp(&(now + 301).to_string()).is_err());
        assert!(check_timestamp("yesterday").is_err());
    }
}

//! RFC 6238 time-based one-time passwords: HMAC-SHA1, 6 digits, 30-second steps, as every
//! authenticator app expects. A code is accepted one step early or late (clock drift), and never
//! twice: the caller stores the step it matched and refuses that step and older ones.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

pub const STEP_SECS: i64 = 30;
pub const DIGITS: u32 = 6;
const ISSUER: &str = "Herald";

/// A fresh 160-bit secret (RFC 4226's recommended length), as base32 without padding.
pub fn new_secret() -> String {
    let bytes: [u8; 20] = rand::random();
    base32(&bytes)
}

/// The code for `secret` (base32) at time step `step`.
pub fn code_at(secret: &str, step: i64) -> Option<String> {
    let key = unbase32(secret)?;
    let mut mac = Hmac::<Sha1>::new_from_slice(&key).ok()?;
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[digest.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
    Some(format!("{:0width$}", bin % 10u32.pow(DIGITS), width = DIGITS as usize))
}

pub fn step_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// The step `code` matches at `unix_secs` (±1 step), if it is later than `last_step`.
pub fn verify(secret: &str, code: &str, unix_secs: i64, last_step: i64) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_of(unix_secs);
    [now - 1, now, now + 1].into_iter().filter(|s| *s > last_step).find(|s| {
        code_at(secret, *s).is_some_and(|expected| {
            // Constant-time comparison of two 6-digit strings.
            expected.bytes().zip(code.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        })
    })
}

/// The `otpauth://` URI authenticator apps scan.
pub fn otpauth_uri(secret: &str, account: &str) -> String {
    let label = format!("{ISSUER}:{account}");
    format!(
        "otpauth://totp/{}?secret={secret}&issuer={ISSUER}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        percent(&label)
    )
}

/// The URI as an SVG QR code, for the enrolment screen.
pub fn qr_svg(uri: &str) -> String {
    qrcode::QrCode::new(uri.as_bytes())
        .map(|code| code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).build())
        .unwrap_or_default()
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=' && *c != b' ') {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_6238_sha1_vectors() {
        // RFC 6238 Appendix B: secret "12345678901234567890", 8 digits; the last 6 are ours.
        let secret = base32(b"12345678901234567890");
        for (t, eight) in
            [(59, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"), (2000000000, "69279037")]
        {
            assert_eq!(code_at(&secret, step_of(t)).unwrap(), eight[2..], "t={t}");
        }
        assert_eq!(unbase32(&secret).unwrap(), b"12345678901234567890");
    }

    #[test]
    fn accepts_drift_of_one_step_and_never_a_used_step() {
        let secret = new_secret();
        let now = 1_800_000_000;
        let code = code_at(&secret, step_of(now)).unwrap();
        let step = verify(&secret, &code, now, 0).expect("the current code");
        assert_eq!(verify(&secret, &code, now, step), None, "replay of the same step");
        assert_eq!(verify(&secret, &code, now + STEP_SECS, 0), Some(step), "one step late");
        assert_eq!(verify(&secret, &code, now + 3 * STEP_SECS, 0), None, "too late");
        assert_eq!(verify(&secret, "12345", now, 0), None);
        assert_eq!(verify(&secret, "abcdef", now, 0), None);
        assert!(otpauth_uri(&secret, "a@b.c").starts_with("otpauth://totp/Herald:a@b.c?secret="));
        assert!(qr_svg("otpauth://totp/x").starts_with("<?xml"));
    }
}

//! A fake webhook receiver that checks Standard Webhooks signatures the way the spec's libraries
//! do: `webhook-id`, `webhook-timestamp` (within 5 minutes) and at least one `v1,<base64>` in
//! `webhook-signature` matching HMAC-SHA256 over `{id}.{timestamp}.{body}` with the base64-decoded
//! `whsec_` secret. Bad or missing signatures get 401; a `webhook-id` seen before gets the first
//! answer again and is not recorded twice.
//!
//! SHA-256 and HMAC are written out here (the testkit has no crypto dependency), which also makes
//! the check independent of the adapter's own signing code.

use crate::{Failure, FakeServer, Shared, json, json_with};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{self, OriginalUri};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The secret the default fake checks.
pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

type Sh = Arc<Shared<State>>;

/// What a successful delivery is answered with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    /// 200 `{"id": "evt_<n>", "url": "<fake>/events/evt_<n>"}`.
    IdAndUrl,
    /// 204 with no body.
    Empty,
}

/// One accepted delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub headers: HeaderMap,
    pub raw: Bytes,
    pub body: Value,
}

/// A token bucket standing for a receiver's documented rate limit.
#[derive(Debug, Clone)]
pub struct Limit {
    pub capacity: f64,
    pub per_second: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Limit {
    pub fn new(capacity: f64, per_second: f64) -> Limit {
        Limit { capacity, per_second, tokens: capacity, at: std::time::Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Random failures on a share of requests: a 429 with `Retry-After: 1`, a 500, or an answer that
/// comes after the request was applied, too late for the client (a lost answer).
#[derive(Debug, Clone)]
pub struct Faults {
    pub rate: f64,
    pub late_by: std::time::Duration,
    seed: u64,
    /// How many of each were injected: (429s, 500s, late answers).
    pub injected: (usize, usize, usize),
}

impl Faults {
    pub fn new(rate: f64, late_by: std::time::Duration, seed: u64) -> Faults {
        Faults { rate, late_by, seed: seed.max(1), injected: (0, 0, 0) }
    }

    fn next(&mut self) -> f64 {
        // xorshift64*: reproducible from the seed.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        (self.seed.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct State {
    /// The receiver's documented limit; requests past it are answered 429 and counted in
    /// `over_limit`, so a test can assert a client never exceeded it.
    pub limit: Option<Limit>,
    pub over_limit: usize,
    pub faults: Option<Faults>,
    /// The secret to check; `None` accepts anything (a receiver not configured yet).
    pub secret: Option<String>,
    /// How far `webhook-timestamp` may be from now, in seconds.
    pub tolerance_secs: i64,
    pub answer: Answer,
    pub deliveries: Vec<Delivery>,
    /// Why requests were refused, in order.
    pub rejected: Vec<String>,
    seen: HashMap<String, (u16, Value)>,
}

pub async fn start() -> FakeServer<State> {
    start_with(Some(SECRET)).await
}

pub async fn start_with(secret: Option<&str>) -> FakeServer<State> {
    let state = State {
        limit: None,
        over_limit: 0,
        faults: None,
        secret: secret.map(str::to_string),
        tolerance_secs: 300,
        answer: Answer::IdAndUrl,
        deliveries: Vec::new(),
        rejected: Vec::new(),
        seen: HashMap::new(),
    };
    let router = Router::new().route("/", post(receive)).route("/{*path}", post(receive));
    FakeServer::start(router, state, render).await
}

/// The receiver's answers to the failures tests ask for. `Named`: `gone` (410), `forbidden`
/// (403), `bad_request` (400).
pub fn render(f: &Failure) -> Response {
    match f {
        Failure::RateLimited { retry_after_secs } => {
            json_with(429, &[("Retry-After", retry_after_secs.to_string())], json!({ "error": "slow down" }))
        }
        Failure::Unauthorized => json(401, json!({ "error": "invalid signature" })),
        Failure::ServerError(s) => {
            let status = axum::http::StatusCode::from_u16(*s).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            (status, "upstream exploded").into_response()
        }
        Failure::Named("gone") => json(410, json!({ "error": "this endpoint is disabled" })),
        Failure::Named("forbidden") => json(403, json!({ "error": "forbidden" })),
        Failure::Named("bad_request") => json(400, json!({ "error": "unsupported event type" })),
        other => json(500, json!({ "error": format!("the fake cannot render {other:?}") })),
    }
}

/// Checks a Standard Webhooks signature header against the message; `Err` says why not.
pub fn check(secret: &str, headers: &HeaderMap, body: &[u8], now: i64, tolerance_secs: i64) -> Result<(), String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let id = h("webhook-id").ok_or("missing webhook-id")?;
    let ts = h("webhook-timestamp").ok_or("missing webhook-timestamp")?;
    let sigs = h("webhook-signature").ok_or("missing webhook-signature")?;
    let ts_num: i64 = ts.trim().parse().map_err(|_| "webhook-timestamp is not an integer")?;
    if (now - ts_num).abs() > tolerance_secs {
        return Err(format!("webhook-timestamp {ts_num} is more than {tolerance_secs} s from now"));
    }
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = B64.decode(b64).map_err(|_| "the fake's secret is not base64")?;
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = hmac_sha256(&key, &signed);
    let ok = sigs.split(' ').filter_map(|s| s.strip_prefix("v1,")).filter_map(|s| B64.decode(s).ok()).any(|got| {
        // Constant-time, as the spec asks of receivers.
        got.len() == expected.len() && got.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok { Ok(()) } else { Err("no signature matches".into()) }
}

async fn receive(
    extract::State(sh): extract::State<Sh>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    // The lock is held only in `handle`; a late answer waits after it is released.
    let (response, late) = handle(&sh, uri, headers, raw);
    if let Some(wait) = late {
        tokio::time::sleep(wait).await;
    }
    response
}

fn handle(sh: &Sh, uri: axum::http::Uri, headers: HeaderMap, raw: Bytes) -> (Response, Option<std::time::Duration>) {
    let mut d = sh.data();
    if let Some(secret) = d.secret.clone() {
        let now = chrono::Utc::now().timestamp();
        if let Err(why) = check(&secret, &headers, &raw, now, d.tolerance_secs) {
            d.rejected.push(why.clone());
            return (json(401, json!({ "error": why })), None);
        }
    }
    if let Some(limit) = d.limit.as_mut()
        && !limit.take()
    {
        d.over_limit += 1;
        return (json_with(429, &[("Retry-After", "1".into())], json!({ "error": "rate limit exceeded" })), None);
    }
    let mut late = None;
    if let Some(f) = d.faults.as_mut()
        && f.next() < f.rate
    {
        match (f.next() * 3.0) as u8 {
            0 => {
                f.injected.0 += 1;
                return (json_with(429, &[("Retry-After", "1".into())], json!({ "error": "slow down" })), None);
            }
            1 => {
                f.injected.1 += 1;
                return ((axum::http::StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response(), None);
            }
            _ => {
                f.injected.2 += 1;
                late = Some(f.late_by);
            }
        }
    }
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if let Some((status, answer)) = d.seen.get(&id) {
        return (answer_with(*status, answer.clone()), late);
    }
    let n = d.deliveries.len() + 1;
    d.deliveries.push(Delivery {
        path: uri.path().to_string(),
        id: id.clone(),
        timestamp: headers.get("webhook-timestamp").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0),
        signature: headers.get("webhook-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
        headers: headers.clone(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
    });
    let (status, answer) = match d.answer {
        Answer::IdAndUrl => {
            let evt = format!("evt_{n}");
            (200, json!({ "id": evt, "url": format!("{}/events/{evt}", sh.url) }))
        }
        Answer::Empty => (204, Value::Null),
    };
    if !id.is_empty() {
        d.seen.insert(id, (status, answer.clone()));
    }
    (answer_with(status, answer), late)
}

fn answer_with(status: u16, body: Value) -> Response {
    if status == 204 { axum::http::StatusCode::NO_CONTENT.into_response() } else { json(status, body) }
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    hmac(sha256, key, message)
}

/// HMAC (RFC 2104) over a hash with a 64-byte block, such as SHA-1 and SHA-256.
pub(crate) fn hmac<const N: usize>(hash: fn(&[u8]) -> [u8; N], key: &[u8], message: &[u8]) -> [u8; N] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..N].copy_from_slice(&hash(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(message);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&hash(&inner));
    hash(&outer)
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// SHA-256 (FIPS 180-4).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, v) in out.chunks_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha256_and_hmac_match_published_vectors() {
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hex(&sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_spec_libraries_signature_verifies() {
        // From standard-webhooks/libraries/go/webhook_test.go (TestWebhookSign).
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap());
        headers.insert("webhook-timestamp", "1614265330".parse().unwrap());
        headers.insert("webhook-signature", "v2,xx v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".parse().unwrap());
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(check(secret, &headers, body, 1614265330, 300), Ok(()));
        assert!(check(secret, &headers, br#"{"test": 2432232315}"#, 1614265330, 300).is_err());
        assert!(check(secret, &headers, body, 1614265330 + 301, 300).unwrap_err().contains("from now"));
    }
}

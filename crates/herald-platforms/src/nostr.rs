//! Nostr: signed kind-1 notes sent over WebSocket to the relays the user chose (platforms.md
//! §9.2, NIP-01).
//!
//! An event's id is the hash of its content, and `created_at` comes from the delivery, so a retry
//! rebuilds the same event and a relay that has it answers `OK true "duplicate:"`. Relays are
//! dialled through the SSRF guard (`SafeClient::connect_tcp`), wrapped in TLS for `wss://`, and
//! every step has a time limit.

use crate::{Adapter, Connection, Metrics, Net, Outgoing, Pacing, Platform, PlatformError, Published, Verified};
use async_trait::async_trait;
use bech32::{Bech32, Hrp};
use futures::{SinkExt, StreamExt};
use herald_http::FetchError;
use k256::schnorr::SigningKey;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub struct Nostr;

/// How long one relay gets for the whole exchange (connect, TLS, handshake, answer).
pub const WAIT: Duration = Duration::from_secs(15);
/// The bound on each step inside it.
const STEP: Duration = Duration::from_secs(10);
pub const MAX_RELAYS: usize = 10;
/// Relay messages are small; a REQ with `limit: 1` answers with one event at most.
const MAX_MESSAGE: usize = 1 << 20;
/// How long reading reactions may take per relay: stats are not worth a publish's patience.
pub const REACTIONS_WAIT: Duration = Duration::from_secs(8);
/// The most reactions asked of a relay (relays cap a subscription's stored events anyway).
const MAX_REACTIONS: u64 = 5000;

const NPUB: Hrp = Hrp::parse_unchecked("npub");
const NSEC: Hrp = Hrp::parse_unchecked("nsec");
const NOTE: Hrp = Hrp::parse_unchecked("note");

#[derive(Deserialize)]
struct Settings {
    relays: Vec<String>,
}

/// No `Debug`: the field is the secret key.
#[derive(Deserialize)]
struct Creds {
    secret_key: String,
}

/// A signing key and its x-only public key in hex.
pub struct Keys {
    signing: SigningKey,
    pub pubkey: String,
}

impl Keys {
    /// From 64 hex characters or a NIP-19 `nsec1…`. The message never shows the key.
    pub fn parse(secret: &str) -> Result<Keys, PlatformError> {
        let bad = |why: &str| {
            PlatformError::invalid(format!("the Nostr secret key {why}; give it as 64 hex characters or as nsec1…"))
                .code("bad_credentials")
        };
        let secret = secret.trim();
        let bytes = if secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(secret).map_err(|_| bad("is not valid hex"))?
        } else if secret.to_ascii_lowercase().starts_with("npub1") {
            return Err(bad("is a public key (npub); Herald needs the secret key to sign"));
        } else if secret.to_ascii_lowercase().starts_with("nsec1") {
            let (hrp, data) = bech32::decode(secret).map_err(|_| bad("has a bad nsec checksum"))?;
            if hrp != NSEC || data.len() != 32 {
                return Err(bad("is not an nsec key"));
            }
            data
        } else {
            return Err(bad("is not in a known form"));
        };
        let signing = SigningKey::from_bytes(&bytes).map_err(|_| bad("is not a valid secp256k1 key"))?;
        let pubkey = hex::encode(signing.verifying_key().to_bytes());
        Ok(Keys { signing, pubkey })
    }

    /// The NIP-19 `npub1…` of the public key.
    pub fn npub(&self) -> String {
        let bytes = hex::decode(&self.pubkey).unwrap_or_default();
        bech32::encode::<Bech32>(NPUB, &bytes).unwrap_or_default()
    }

    /// The event with its id and BIP-340 signature, as relays take it.
    pub fn sign(&self, event: &Event) -> Result<Value, PlatformError> {
        let id = event.id();
        let aux: [u8; 32] = rand::random();
        let sig = self
            .signing
            .sign_raw(&id, &aux)
            .map_err(|_| PlatformError::invalid("the event could not be signed with this key"))?;
        Ok(json!({
            "id": hex::encode(id),
            "pubkey": event.pubkey,
            "created_at": event.created_at,
            "kind": event.kind,
            "tags": event.tags,
            "content": event.content,
            "sig": hex::encode(sig.to_bytes()),
        }))
    }
}

/// An unsigned event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub pubkey: String,
    pub created_at: i64,
    pub kind: u16,
    pub tags: Vec<Vec<String>>,
    pub content: String,
}

impl Event {
    /// Control characters other than `\n \t \r \b \f` are dropped from the content and tags.
    /// NIP-01 puts them "verbatim" into the id's serialisation, while serde_json (and relays built
    /// on it, and JSON.stringify) write `\u00XX`; without them every reading agrees.
    pub fn new(pubkey: String, created_at: i64, kind: u16, tags: Vec<Vec<String>>, content: &str) -> Event {
        let tags = tags.into_iter().map(|t| t.iter().map(|v| clean(v)).collect()).collect();
        Event { pubkey, created_at, kind, tags, content: clean(content) }
    }

    /// NIP-01's serialisation for the id: `[0,pubkey,created_at,kind,tags,content]`, compact,
    /// non-ASCII verbatim. serde_json's compact output is exactly that once [`Event::new`] has
    /// removed the characters where the two differ.
    pub fn serialize(&self) -> String {
        json!([0, self.pubkey, self.created_at, self.kind, self.tags, self.content]).to_string()
    }

    pub fn id(&self) -> [u8; 32] {
        Sha256::digest(self.serialize().as_bytes()).into()
    }
}

fn clean(s: &str) -> String {
    s.chars().filter(|&c| c >= ' ' || matches!(c, '\n' | '\t' | '\r' | '\u{8}' | '\u{c}')).collect()
}

/// The kind-1 note for a post: the link appended when the text lacks it and tagged `r`, a NIP-10
/// reply tag, and a `t` tag per hashtag.
pub fn note(keys: &Keys, post: &Outgoing) -> Result<Event, PlatformError> {
    let link = post.link.as_deref().map(str::trim).filter(|l| !l.is_empty());
    let mut content = post.text_with_link().trim_end().to_string();
    let mut tags: Vec<Vec<String>> = Vec::new();
    // Media travel by URL: each on its own line (clients show it inline) with a NIP-92 `imeta` tag.
    for m in &post.media {
        let url = m
            .url
            .as_deref()
            .map(str::trim)
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| {
                PlatformError::invalid(
                "Nostr notes link media by URL, and this file has none; set HERALD_PUBLIC_URL so Herald can serve it",
            )
            .code("media_url")
            })?;
        if !content.contains(url) {
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(url);
        }
        let mut imeta = vec![format!("url {url}"), format!("m {}", m.mime)];
        if let Some(alt) = m.alt.as_deref().filter(|a| !a.trim().is_empty()) {
            imeta.push(format!("alt {}", clean(alt)));
        }
        tags.push(std::iter::once("imeta".to_string()).chain(imeta).collect());
    }
    if let Some(parent) = post.reply_to.as_deref().filter(|p| !p.is_empty()) {
        tags.push(vec!["e".into(), event_id_hex(parent)?, String::new(), "reply".into()]);
    }
    if let Some(l) = link {
        tags.push(vec!["r".into(), l.to_string()]);
    }
    for tag in hashtags(&content) {
        tags.push(vec!["t".into(), tag]);
    }
    Ok(Event::new(keys.pubkey.clone(), post.created_at.timestamp(), 1, tags, &content))
}

/// An event id given as hex or as `note1…`.
fn event_id_hex(id: &str) -> Result<String, PlatformError> {
    let id = id.trim().strip_prefix("nostr:").unwrap_or(id.trim());
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(id.to_ascii_lowercase());
    }
    match bech32::decode(id) {
        Ok((hrp, data)) if hrp == NOTE && data.len() == 32 => Ok(hex::encode(data)),
        _ => Err(PlatformError::invalid("the post to answer is not a Nostr event id").code("bad_reply_to")),
    }
}

/// `#word` after a space or at the start, lowercased (NIP-24), each once.
fn hashtags(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        if c == '#' && prev.is_none_or(|p| p.is_whitespace() || "([{\"'".contains(p)) {
            let word: String = text[i + 1..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let tag = word.to_lowercase();
            if tag.chars().any(char::is_alphabetic) && !out.contains(&tag) {
                out.push(tag);
            }
        }
        prev = Some(c);
    }
    out
}

/// The relays of the settings, parsed and without repeats.
fn relays(settings: &Settings) -> Result<Vec<url::Url>, PlatformError> {
    let mut out: Vec<url::Url> = Vec::new();
    for raw in &settings.relays {
        let url = url::Url::parse(raw.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some())
            .ok_or_else(|| {
                let shown: String = raw.chars().take(100).collect();
                PlatformError::invalid(format!("the relay `{shown}` is not a ws:// or wss:// URL")).code("bad_settings")
            })?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.is_empty() || out.len() > MAX_RELAYS {
        return Err(PlatformError::invalid(format!("give between 1 and {MAX_RELAYS} relays")).code("bad_settings"));
    }
    Ok(out)
}

/// What one relay did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `OK true` (the message may be `duplicate: …`); for a subscription, EOSE or CLOSED.
    Accepted(String),
    /// `OK false` with the relay's message.
    Refused(String),
    /// No connection, no handshake, or no answer in time.
    Down(String),
    /// The guard refused the address.
    Blocked(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelayResult {
    pub relay: String,
    pub outcome: Outcome,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Socket = WebSocketStream<Box<dyn Io>>;

/// Dials a relay through the guard, adds TLS for `wss://`, and opens the WebSocket.
async fn open(net: &Net, relay: &url::Url) -> Result<Socket, Outcome> {
    let tls = relay.scheme() == "wss";
    let tcp = net.safe.connect_tcp(relay, &["ws", "wss"], if tls { 443 } else { 80 }).await.map_err(|e| match e {
        FetchError::Blocked(b) => Outcome::Blocked(b.to_string()),
        other => Outcome::Down(other.to_string()),
    })?;
    let stream: Box<dyn Io> = if tls {
        use rustls_platform_verifier::ConfigVerifierExt;
        let host = relay.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| Outcome::Down(e.to_string()))?;
        let config = rustls::ClientConfig::with_platform_verifier().map_err(|e| Outcome::Down(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        match tokio::time::timeout(STEP, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => return Err(Outcome::Down(format!("TLS failed: {e}"))),
            Err(_) => return Err(Outcome::Down("the TLS handshake timed out".into())),
        }
    } else {
        Box::new(tcp)
    };
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    match tokio::time::timeout(STEP, tokio_tungstenite::client_async_with_config(relay.as_str(), stream, Some(config)))
        .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(Outcome::Down(format!("the WebSocket handshake failed: {e}"))),
        Err(_) => Err(Outcome::Down("the WebSocket handshake timed out".into())),
    }
}

/// The next JSON array from the relay; `Err` when the connection ends.
async fn next_array(ws: &mut Socket) -> Result<Vec<Value>, Outcome> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(t.as_str()) {
                    return Ok(a);
                }
            }
            Some(Ok(Message::Close(_))) | None => return Err(Outcome::Down("the relay closed the connection".into())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Outcome::Down(format!("the connection failed: {e}"))),
        }
    }
}

async fn goodbye(mut ws: Socket) {
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Sends the event to one relay and waits for its `OK`.
async fn send_event(net: &Net, relay: &url::Url, event: &Value) -> Outcome {
    let mut ws = match open(net, relay).await {
        Ok(ws) => ws,
        Err(o) => return o,
    };
    let id = event["id"].as_str().unwrap_or_default();
    if let Err(e) = ws.send(Message::text(json!(["EVENT", event]).to_string())).await {
        return Outcome::Down(format!("sending failed: {e}"));
    }
    let mut notice = String::new();
    let outcome = loop {
        match next_array(&mut ws).await {
            Ok(a)
                if a.first().and_then(Value::as_str) == Some("OK") && a.get(1).and_then(Value::as_str) == Some(id) =>
            {
                let msg = a.get(3).and_then(Value::as_str).unwrap_or_default().to_string();
                break if a.get(2).and_then(Value::as_bool) == Some(true) {
                    Outcome::Accepted(msg)
                } else {
                    Outcome::Refused(msg)
                };
            }
            Ok(a) if a.first().and_then(Value::as_str) == Some("NOTICE") => {
                notice = a.get(1).and_then(Value::as_str).unwrap_or_default().chars().take(200).collect();
            }
            Ok(_) => {}
            Err(Outcome::Down(why)) if !notice.is_empty() => break Outcome::Down(format!("{why} ({notice})")),
            Err(o) => break o,
        }
    };
    goodbye(ws).await;
    outcome
}

/// Asks one relay for the account's latest note and waits for the end of stored events.
async fn probe(net: &Net, relay: &url::Url, pubkey: &str) -> Outcome {
    let mut ws = match open(net, relay).await {
        Ok(ws) => ws,
        Err(o) => return o,
    };
    let sub = format!("herald-{}", &pubkey[..8]);
    let req = json!(["REQ", sub, {"authors": [pubkey], "kinds": [1], "limit": 1}]);
    if let Err(e) = ws.send(Message::text(req.to_string())).await {
        return Outcome::Down(format!("sending failed: {e}"));
    }
    let outcome = loop {
        match next_array(&mut ws).await {
            Ok(a) if a.get(1).and_then(Value::as_str) == Some(sub.as_str()) => match a[0].as_str() {
                Some("EOSE") => break Outcome::Accepted(String::new()),
                Some("CLOSED") => break Outcome::Accepted(a.get(2).and_then(Value::as_str).unwrap_or("").to_string()),
                _ => {}
            },
            Ok(_) => {}
            Err(o) => break o,
        }
    };
    let _ = ws.send(Message::text(json!(["CLOSE", sub]).to_string())).await;
    goodbye(ws).await;
    outcome
}

/// Asks one relay for the kind-7 reactions to `target` and collects them until EOSE.
async fn reactions(net: &Net, relay: &url::Url, target: &str) -> Result<Vec<Value>, Outcome> {
    let mut ws = open(net, relay).await?;
    let sub = format!("herald-r-{}", &target[..8]);
    let req = json!(["REQ", sub, {"kinds": [7], "#e": [target], "limit": MAX_REACTIONS}]);
    if let Err(e) = ws.send(Message::text(req.to_string())).await {
        return Err(Outcome::Down(format!("sending failed: {e}")));
    }
    let mut events = Vec::new();
    let outcome = loop {
        match next_array(&mut ws).await {
            Ok(a) if a.get(1).and_then(Value::as_str) == Some(sub.as_str()) => match a[0].as_str() {
                Some("EVENT") => events.extend(a.get(2).cloned().filter(|e| e["kind"] == 7)),
                Some("EOSE") => break Ok(events),
                // A relay that will not serve the filter (auth-required:, restricted:).
                Some("CLOSED") => {
                    break Err(Outcome::Refused(a.get(2).and_then(Value::as_str).unwrap_or("closed").to_string()));
                }
                _ => {}
            },
            Ok(_) => {}
            Err(o) => break Err(o),
        }
    };
    let _ = ws.send(Message::text(json!(["CLOSE", sub]).to_string())).await;
    goodbye(ws).await;
    outcome
}

/// Runs `f` against every relay at once, each bounded by `wait`.
async fn each_relay<'a, F, Fut>(relays: &'a [url::Url], wait: Duration, f: F) -> Vec<RelayResult>
where
    F: Fn(&'a url::Url) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let calls = relays.iter().map(|r| {
        let call = f(r);
        async move {
            let outcome = tokio::time::timeout(wait, call)
                .await
                .unwrap_or_else(|_| Outcome::Down(format!("no answer within {} s", wait.as_secs_f32())));
            RelayResult { relay: r.to_string(), outcome }
        }
    });
    futures::future::join_all(calls).await
}

impl Outcome {
    /// What the relay said, or what went wrong reaching it.
    pub fn message(&self) -> &str {
        match self {
            Outcome::Accepted(m) if m.is_empty() => "accepted",
            Outcome::Accepted(m) | Outcome::Refused(m) | Outcome::Down(m) | Outcome::Blocked(m) => m,
        }
    }
}

fn summary(results: &[RelayResult]) -> String {
    results.iter().map(|r| format!("{}: {}", r.relay, r.outcome.message())).collect::<Vec<_>>().join("; ")
}

/// No relay answered: the guard refused them all (the user's setting), or they may come back.
fn unreachable(results: &[RelayResult]) -> PlatformError {
    let said = summary(results);
    if results.iter().all(|r| matches!(r.outcome, Outcome::Blocked(_))) {
        PlatformError::invalid(format!("no relay may be reached from here: {said}")).code("ssrf_blocked_destination")
    } else {
        PlatformError::transient(format!("no relay answered: {said}"))
    }
}

/// One accepting relay is enough. Otherwise: any rate limit means wait; refusals from every relay
/// mean the event is unwelcome as it is; anything else (a relay down, `error:`) may pass.
fn judge(results: &[RelayResult]) -> Result<(), PlatformError> {
    if results.iter().any(|r| matches!(r.outcome, Outcome::Accepted(_))) {
        return Ok(());
    }
    let said = summary(results);
    if results.iter().any(|r| matches!(&r.outcome, Outcome::Refused(m) if m.starts_with("rate-limited:"))) {
        return Err(
            PlatformError::rate_limited(format!("the relays ask to slow down: {said}"), None).code("rate-limited")
        );
    }
    let permanent = |r: &RelayResult| match &r.outcome {
        Outcome::Blocked(_) => true,
        Outcome::Refused(m) => !m.starts_with("error:"),
        _ => false,
    };
    if results.iter().all(permanent) {
        let code = if results.iter().all(|r| matches!(r.outcome, Outcome::Blocked(_))) {
            "ssrf_blocked_destination"
        } else {
            "relay_refused"
        };
        return Err(PlatformError::invalid(format!("every relay refused the event: {said}")).code(code));
    }
    Err(PlatformError::transient(format!("no relay took the event: {said}")))
}

impl Nostr {
    /// [`Adapter::publish`] with a chosen wait per relay, and what each relay said.
    pub async fn publish_within(
        net: &Net,
        conn: &Connection,
        post: &Outgoing,
        wait: Duration,
    ) -> Result<(Published, Vec<RelayResult>), PlatformError> {
        let settings: Settings = crate::settings(&conn.settings, "Nostr")?;
        let relays = relays(&settings)?;
        let creds: Creds = conn.credentials.parse("Nostr")?;
        let keys = Keys::parse(&creds.secret_key)?;
        let event = note(&keys, post)?;
        if event.content.trim().is_empty() {
            return Err(PlatformError::invalid("the post has no text or link").code("empty_post"));
        }
        let signed = keys.sign(&event)?;
        let results = each_relay(&relays, wait, |r| send_event(net, r, &signed)).await;
        for r in &results {
            tracing::info!(relay = %r.relay, outcome = ?r.outcome, "nostr relay answered");
        }
        judge(&results)?;
        let id = event.id();
        let note = bech32::encode::<Bech32>(NOTE, &id).unwrap_or_default();
        Ok((Published { id: hex::encode(id), url: Some(format!("nostr:{note}")), credentials: None }, results))
    }

    /// [`Adapter::verify`] with a chosen wait per relay.
    pub async fn verify_within(net: &Net, conn: &Connection, wait: Duration) -> Result<Verified, PlatformError> {
        let settings: Settings = crate::settings(&conn.settings, "Nostr")?;
        let relays = relays(&settings)?;
        let creds: Creds = conn.credentials.parse("Nostr")?;
        let keys = Keys::parse(&creds.secret_key)?;
        let results = each_relay(&relays, wait, |r| probe(net, r, &keys.pubkey)).await;
        let failed: Vec<&RelayResult> = results.iter().filter(|r| !matches!(r.outcome, Outcome::Accepted(_))).collect();
        if failed.len() == results.len() {
            return Err(unreachable(&results));
        }
        let mut out = json!({
            "relays": relays.iter().map(url::Url::as_str).collect::<Vec<_>>(),
            "pubkey": keys.pubkey,
        });
        if !failed.is_empty() {
            out["unreachable_relays"] =
                failed.iter().map(|r| json!({"relay": r.relay, "error": r.outcome.message()})).collect();
        }
        Ok(Verified { account: keys.npub(), credentials: conn.credentials.clone(), settings: out })
    }

    /// [`Adapter::delete`] with a chosen wait per relay: a NIP-09 deletion request.
    pub async fn delete_within(net: &Net, conn: &Connection, id: &str, wait: Duration) -> Result<(), PlatformError> {
        let settings: Settings = crate::settings(&conn.settings, "Nostr")?;
        let relays = relays(&settings)?;
        let creds: Creds = conn.credentials.parse("Nostr")?;
        let keys = Keys::parse(&creds.secret_key)?;
        let target = event_id_hex(id)?;
        let tags = vec![vec!["e".to_string(), target], vec!["k".to_string(), "1".to_string()]];
        let event = Event::new(keys.pubkey.clone(), chrono::Utc::now().timestamp(), 5, tags, "");
        let signed = keys.sign(&event)?;
        let results = each_relay(&relays, wait, |r| send_event(net, r, &signed)).await;
        judge(&results)
    }
}

impl Nostr {
    /// [`Adapter::metrics`] with a chosen wait per relay: the kind-7 reactions to the note on
    /// every relay, each counted once, by content (`+` is a like, `-` a dislike, else an emoji).
    pub async fn metrics_within(
        net: &Net,
        conn: &Connection,
        id: &str,
        wait: Duration,
    ) -> Result<Option<Metrics>, PlatformError> {
        let settings: Settings = crate::settings(&conn.settings, "Nostr")?;
        let relays = relays(&settings)?;
        let target = event_id_hex(id)?;
        let calls = relays.iter().map(|r| async {
            tokio::time::timeout(wait, reactions(net, r, &target))
                .await
                .unwrap_or_else(|_| Err(Outcome::Down(format!("no EOSE within {} s", wait.as_secs_f32()))))
        });
        let answers = futures::future::join_all(calls).await;
        let mut seen: Vec<Value> = Vec::new();
        let mut failed = Vec::new();
        for (relay, answer) in relays.iter().zip(answers) {
            match answer {
                Ok(events) => {
                    for e in events {
                        if !seen.iter().any(|s| s["id"] == e["id"]) {
                            seen.push(e);
                        }
                    }
                }
                Err(o) => failed.push(RelayResult { relay: relay.to_string(), outcome: o }),
            }
        }
        if failed.len() == relays.len() {
            return Err(unreachable(&failed));
        }
        let keys = seen.iter().map(|e| match e["content"].as_str().map(str::trim) {
            None | Some("") => "+",
            Some(c) => c,
        });
        Ok(Some(Metrics::default().reactions(keys)))
    }
}

#[async_trait]
impl Adapter for Nostr {
    fn platform(&self) -> &'static Platform {
        crate::registry("nostr")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        Nostr::verify_within(net, conn, WAIT).await
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        Nostr::publish_within(net, conn, post, WAIT).await.map(|(p, _)| p)
    }

    async fn delete(&self, net: &Net, conn: &Connection, id: &str) -> Result<(), PlatformError> {
        Nostr::delete_within(net, conn, id, WAIT).await
    }

    async fn metrics(&self, net: &Net, conn: &Connection, id: &str) -> Result<Option<Metrics>, PlatformError> {
        Nostr::metrics_within(net, conn, id, REACTIONS_WAIT).await
    }

    /// Public relays throttle per key and per connection (often a few events a second); one a
    /// second with a burst of five stays under them.
    fn idempotency(&self, _conn: &Connection) -> crate::Idempotency {
        // The event id is the content's hash, and created_at is fixed per delivery.
        crate::Idempotency::Forever
    }

    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let creds: Creds = conn.credentials.parse("Nostr").ok()?;
        let keys = Keys::parse(&creds.secret_key).ok()?;
        Some(Pacing { bucket: format!("nostr:{}", keys.pubkey), capacity: 5.0, per_second: 1.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::schnorr::{Signature, VerifyingKey};

    // NIP-19's example pair.
    const SECRET_HEX: &str = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa";
    const NSEC_KEY: &str = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5";
    const PUBKEY: &str = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";
    const NPUB_KEY: &str = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";

    #[test]
    fn keys_parse_from_hex_and_nsec() {
        let a = Keys::parse(SECRET_HEX).unwrap();
        let b = Keys::parse(NSEC_KEY).unwrap();
        assert_eq!((a.pubkey.as_str(), b.pubkey.as_str()), (PUBKEY, PUBKEY));
        assert_eq!(a.npub(), NPUB_KEY);
        for bad in [NPUB_KEY, "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe6", "xyz", &"0".repeat(64)]
        {
            let e = Keys::parse(bad).err().unwrap();
            assert_eq!(e.code.as_deref(), Some("bad_credentials"));
            assert!(!e.message.contains(bad), "{e}");
        }
    }

    #[test]
    fn bip340_signing_matches_the_reference_vector() {
        // BIP-340 test vector 1.
        let key = SigningKey::from_bytes(
            &hex::decode("B7E151628AED2A6ABF7158809CF4F3C762E7160F38B4DA56A784D9045190CFEF").unwrap(),
        )
        .unwrap();
        let mut aux = [0u8; 32];
        aux[31] = 1;
        let msg = hex::decode("243F6A8885A308D313198A2E03707344A4093822299F31D0082EFA98EC4E6C89").unwrap();
        let sig = key.sign_raw(&msg, &aux).unwrap();
        assert_eq!(
            hex::encode_upper(sig.to_bytes()),
            "6896BD60EEAE296DB48A229FF71DFE071BDE413E6D43F917DC8DCF8C78DE33418906D11AC976ABCCB20B091292BFF4EA897EFCB639EA871CFA95F6DE339E4B0A"
        );
    }

    fn sample() -> Event {
        Event::new(
            PUBKEY.to_string(),
            1_700_000_000,
            1,
            vec![vec!["t".into(), "herald".into()], vec!["r".into(), "https://ex.org/a?b=1&c=\"2\"".into()]],
            "Hello \"world\" \\ / <b>\n\tПривет 🎉\u{1}\u{7f}\u{8}\u{c}\r",
        )
    }

    #[test]
    fn serialisation_follows_nip01_and_the_id_matches_an_independent_hash() {
        let ev = sample();
        assert_eq!(
            ev.serialize(),
            concat!(
                r#"[0,"7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e",1700000000,1,"#,
                r#"[["t","herald"],["r","https://ex.org/a?b=1&c=\"2\""]],"#,
                "\"Hello \\\"world\\\" \\\\ / <b>\\n\\tПривет 🎉\u{7f}\\b\\f\\r\"]"
            )
        );
        // sha256 of the string above, computed with Python's hashlib over
        // json.dumps(..., separators=(",", ":"), ensure_ascii=False).
        assert_eq!(hex::encode(ev.id()), "ecaf403f41634b0628451591efc6a1b6185f4e6996be5be5d1409bb09fea98f8");
    }

    #[test]
    fn the_signature_verifies_against_the_public_key() {
        let keys = Keys::parse(SECRET_HEX).unwrap();
        let ev = sample();
        let signed = keys.sign(&ev).unwrap();
        assert_eq!(signed["id"], hex::encode(ev.id()));
        assert_eq!(signed["content"], ev.content);
        let vk = VerifyingKey::from_bytes(&hex::decode(PUBKEY).unwrap()).unwrap();
        let sig = Signature::try_from(hex::decode(signed["sig"].as_str().unwrap()).unwrap().as_slice()).unwrap();
        vk.verify_raw(&ev.id(), &sig).unwrap();
        // A signature over another id does not.
        let mut other = ev.clone();
        other.content.push('!');
        assert!(vk.verify_raw(&other.id(), &sig).is_err());
    }

    #[test]
    fn a_note_carries_link_reply_and_hashtags() {
        let keys = Keys::parse(SECRET_HEX).unwrap();
        let mut post = Outgoing::text("New #Release and #rust_lang, see url#frag #42 #release", "k");
        post.link = Some("https://ex.org/r".into());
        post.reply_to = Some("AB".repeat(32));
        let ev = note(&keys, &post).unwrap();
        assert_eq!(ev.content, "New #Release and #rust_lang, see url#frag #42 #release\n\nhttps://ex.org/r");
        assert_eq!(ev.created_at, post.created_at.timestamp());
        let tags: Vec<Vec<&str>> = ev.tags.iter().map(|t| t.iter().map(String::as_str).collect()).collect();
        let parent = "ab".repeat(32);
        assert_eq!(
            tags,
            vec![
                vec!["e", parent.as_str(), "", "reply"],
                vec!["r", "https://ex.org/r"],
                vec!["t", "release"],
                vec!["t", "rust_lang"],
            ]
        );
        // The same post builds the same id (a retry is a duplicate, not a second note).
        assert_eq!(note(&keys, &post).unwrap().id(), ev.id());
    }

    fn result(outcome: Outcome) -> RelayResult {
        RelayResult { relay: "wss://r/".into(), outcome }
    }

    #[test]
    fn relay_answers_decide_the_class() {
        use crate::ErrorClass::*;
        let ok = result(Outcome::Accepted("duplicate: have it".into()));
        let limited = result(Outcome::Refused("rate-limited: slow".into()));
        let invalid = result(Outcome::Refused("invalid: bad sig".into()));
        let down = result(Outcome::Down("timeout".into()));
        assert!(judge(&[invalid.clone(), ok]).is_ok());
        assert_eq!(judge(&[limited.clone(), down.clone()]).unwrap_err().class, RateLimited);
        assert_eq!(judge(&[limited]).unwrap_err().retry_after, Some(Duration::from_secs(60)));
        assert_eq!(judge(&[invalid.clone(), invalid.clone()]).unwrap_err().class, Invalid);
        assert_eq!(judge(&[invalid, down.clone()]).unwrap_err().class, Transient);
        assert_eq!(judge(&[down]).unwrap_err().class, Transient);
    }
}

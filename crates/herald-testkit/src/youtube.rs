//! A fake of Google's WebSub hub (`pubsubhubbub.appspot.com`) and of the public YouTube pages a
//! push trigger reads, on one server: tests set the hub to [`FakeYouTube::hub_url`] and the YouTube
//! base to [`FakeYouTube::url`]. Facts come from `reference/platforms.md` §1.
//!
//! The hub answers 202 and verifies intent afterwards, as Google's does: a GET that follows no
//! redirect and succeeds only on a 2xx whose body is exactly the challenge, with the lease clamped
//! to 10 days. Until a re-subscribe is verified the previous subscription stands. Content goes out
//! signed with `sha1` only. YouTube pinging the hub is [`FakeYouTube::publish`] or
//! [`FakeYouTube::notify_video`]; the real hub does not push by itself, and neither does this one.
//!
//! SHA-1 and HMAC are written out (as in `webhook`), so a test checks signatures independently of
//! the adapter's own code.

use crate::{Failure, FakeServer, Recorded, Shared};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{self, Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use herald_http::HttpClient;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Google's `DEFAULT_LEASE_SECONDS` (5 days), granted when the subscriber asks for none.
pub const DEFAULT_LEASE_SECONDS: u64 = 5 * 24 * 60 * 60;
/// Google's `MAX_LEASE_SECONDS` (10 days); longer requests are clamped to it.
pub const MAX_LEASE_SECONDS: u64 = 10 * 24 * 60 * 60;
/// The channel feed shows only the newest uploads (observed, not documented: platforms.md 1.9).
pub const FEED_ENTRIES: usize = 15;
/// The hub URL YouTube's own payloads name; the fake's is [`FakeYouTube::hub_url`].
pub const GOOGLE_HUB: &str = "https://pubsubhubbub.appspot.com";
/// Google's hub gives up on a callback after 10 s (`MAX_FETCH_SECONDS`).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

const SYNC_FAILED: &str = "Error trying to confirm subscription";

type Sh = Arc<Shared<State>>;

/// A video as YouTube knows it. The feed shows every field; a push only id, title and dates.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    pub id: String,
    pub title: String,
    pub description: String,
    pub published: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub views: u64,
    pub likes: u64,
    /// A Short: its feed link is `/shorts/<id>` rather than `/watch?v=<id>`.
    pub shorts: bool,
}

impl Video {
    /// A long-form video published now, with no description and no views.
    pub fn new(id: &str, title: &str) -> Video {
        let now = Utc::now();
        Video {
            id: id.into(),
            title: title.into(),
            description: String::new(),
            published: now,
            updated: now,
            views: 0,
            likes: 0,
            shorts: false,
        }
    }
}

/// How the hub answers a subscription request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Today's hub (WebSub): 202 at once, verification afterwards, whatever `hub.verify` says.
    Async,
    /// The old Google hub with `hub.verify=sync`: verify first, then 204, or 409
    /// `Error trying to confirm subscription`; unsubscribing from nothing is 204 with no GET.
    Sync,
}

/// A verified subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub callback: String,
    /// As the subscriber sent it; the `/feeds/` and `/xml/feeds/` forms name the same channel.
    pub topic: String,
    pub secret: Option<String>,
    /// As granted (after the clamp), counted from `verified_at`.
    pub lease_seconds: u64,
    pub verified_at: DateTime<Utc>,
    /// False once the lease has run out (or [`FakeYouTube::expire`]): the hub then stops
    /// delivering without telling anyone, as Google's does.
    pub active: bool,
}

/// One POST to the hub and how it was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct HubRequest {
    /// The form parameters in order, unknown ones included.
    pub params: Vec<(String, String)>,
    pub status: u16,
    /// The plain-text body of the answer (empty for 202 and 204).
    pub answer: String,
}

impl HubRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        first(&self.params, name)
    }
}

/// One verification of intent: the GET the hub sent and what came back.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// `subscribe` or `unsubscribe`.
    pub mode: String,
    /// The callback as subscribed, without the hub's parameters.
    pub callback: String,
    /// The URL fetched: the callback with the hub's parameters appended.
    pub url: String,
    pub topic: String,
    pub challenge: String,
    /// Sent for `subscribe` only.
    pub lease_seconds: Option<u64>,
    pub verify_token: Option<String>,
    /// `None` when nothing came back (refused, timed out).
    pub status: Option<u16>,
    pub body: String,
    /// The client followed a redirect; the real hub follows none, so this fails the check.
    pub redirected: bool,
    /// The body was exactly the challenge.
    pub echoed: bool,
    /// The subscriber confirmed: 2xx, no redirect, challenge echoed.
    pub verified: bool,
}

/// One content POST the hub made.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub callback: String,
    pub body: String,
    /// The whole `X-Hub-Signature` value (`sha1=<hex>`), if one was sent.
    pub signature: Option<String>,
    /// 0 when nothing usable came back: no answer, or a redirect (which the hub does not follow).
    pub status: u16,
}

#[derive(Debug, Clone)]
struct Channel {
    id: String,
    /// Without the `@`.
    handle: String,
    name: String,
    published: DateTime<Utc>,
    /// The feed's `Last-Modified`: any add, edit or removal moves it.
    modified: DateTime<Utc>,
    videos: Vec<Video>,
}

#[derive(Debug, Clone)]
struct Stored {
    callback: String,
    topic: String,
    channel: String,
    secret: Option<String>,
    lease_seconds: u64,
    verified_at: DateTime<Utc>,
    expired: bool,
}

impl Stored {
    fn active(&self, now: DateTime<Utc>) -> bool {
        !self.expired && self.verified_at + chrono::Duration::seconds(self.lease_seconds as i64) > now
    }
}

struct State {
    http: HttpClient,
    verify: Verify,
    default_lease: u64,
    max_lease: u64,
    failures: VecDeque<u16>,
    channels: Vec<Channel>,
    subscriptions: Vec<Stored>,
    hub_requests: Vec<HubRequest>,
    verifications: Vec<Verification>,
    pushes: Vec<Push>,
}

impl State {
    fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.id == id)
    }

    fn channel_mut(&mut self, id: &str) -> &mut Channel {
        self.channels.iter_mut().find(|c| c.id == id).unwrap_or_else(|| panic!("no channel {id}: add_channel it first"))
    }
}

/// The running fake; it stops when dropped.
pub struct FakeYouTube {
    /// `http://127.0.0.1:<port>`, no trailing slash: the YouTube base.
    pub url: String,
    server: FakeServer<State>,
}

pub async fn start() -> FakeYouTube {
    let http = HttpClient::trusted_with_timeout(FETCH_TIMEOUT).expect("build the hub's HTTP client");
    let state = State {
        http,
        verify: Verify::Async,
        default_lease: DEFAULT_LEASE_SECONDS,
        max_lease: MAX_LEASE_SECONDS,
        failures: VecDeque::new(),
        channels: Vec::new(),
        subscriptions: Vec::new(),
        hub_requests: Vec::new(),
        verifications: Vec::new(),
        pushes: Vec::new(),
    };
    let router = Router::new()
        .route("/", post(subscribe))
        .route("/subscribe", post(subscribe))
        .route("/feeds/videos.xml", get(feed))
        .route("/channel/{id}", get(channel_page))
        .route("/c/{name}", get(legacy_page))
        .route("/user/{name}", get(legacy_page))
        .route("/{handle}", get(handle_page));
    let server = FakeServer::start(router, state, render).await;
    FakeYouTube { url: server.url.clone(), server }
}

/// What `fail_next_on` renders: Google answers in plain text.
fn render(f: &Failure) -> Response {
    match f {
        Failure::RateLimited { retry_after_secs } => {
            let mut r = text(429, "Too Many Requests".into());
            if let Ok(v) = retry_after_secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Failure::ServerError(s) => text(*s, failure_text(*s)),
        other => text(500, format!("the fake cannot render {other:?}")),
    }
}

impl FakeYouTube {
    /// Where a subscriber POSTs (`{url}/subscribe`, the path YouTube's docs link to).
    pub fn hub_url(&self) -> String {
        format!("{}/subscribe", self.url)
    }

    /// The topic YouTube's docs give, with `/xml/`: the one adapters should subscribe to.
    pub fn topic(channel_id: &str) -> String {
        format!("https://www.youtube.com/xml/feeds/videos.xml?channel_id={channel_id}")
    }

    fn data(&self) -> std::sync::MutexGuard<'_, State> {
        self.server.data()
    }

    // --- hub configuration ---

    pub fn set_verify(&self, verify: Verify) {
        self.data().verify = verify;
    }

    /// The cap on granted leases; tests lower it to exercise renewal.
    pub fn set_max_lease(&self, seconds: u64) {
        self.data().max_lease = seconds;
    }

    /// The lease granted when the subscriber asks for none.
    pub fn set_default_lease(&self, seconds: u64) {
        self.data().default_lease = seconds;
    }

    /// The next hub POST is answered with this status and a plain-text body, and not acted on.
    pub fn fail_next_subscribe(&self, status: u16) {
        self.data().failures.push_back(status);
    }

    /// Ends the leases of `callback`'s subscriptions now, as if the time had passed.
    pub fn expire(&self, callback: &str) {
        self.data().subscriptions.iter_mut().filter(|s| s.callback == callback).for_each(|s| s.expired = true);
    }

    // --- what the hub saw and did ---

    /// Every verified subscription, expired ones included (with `active: false`).
    pub fn subscriptions(&self) -> Vec<Subscription> {
        let now = Utc::now();
        self.data()
            .subscriptions
            .iter()
            .map(|s| Subscription {
                callback: s.callback.clone(),
                topic: s.topic.clone(),
                secret: s.secret.clone(),
                lease_seconds: s.lease_seconds,
                verified_at: s.verified_at,
                active: s.active(now),
            })
            .collect()
    }

    pub fn hub_requests(&self) -> Vec<HubRequest> {
        self.data().hub_requests.clone()
    }

    /// Completed verifications, in the order they finished. The subscription state is updated
    /// before one is recorded, so a test that has waited for it can look at `subscriptions()`.
    pub fn verifications(&self) -> Vec<Verification> {
        self.data().verifications.clone()
    }

    pub fn pushes(&self) -> Vec<Push> {
        self.data().pushes.clone()
    }

    /// Waits until at least `n` verifications have completed; false on timeout. Verification runs
    /// after the 202, so tests wait on this instead of sleeping.
    pub async fn wait_for_verifications(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.data().verifications.len() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every request the fake received (hub POSTs, feed polls, page loads), in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }

    /// The requests whose path contains `path`, e.g. `/feeds/videos.xml` to count polls.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.server.requests_to(path)
    }

    /// The next request whose path contains `path` fails this way (`ServerError`, `RateLimited`),
    /// e.g. a feed outage.
    pub fn fail_next_on(&self, path: &str, failure: Failure) {
        self.server.fail_next_on(path, failure);
    }

    // --- the hub pushing ---

    /// Delivers `atom_body` to every active subscriber of `topic` (either form), signed when the
    /// subscription has a secret, and returns each callback's status. One attempt each; a 410
    /// deletes the subscription, as WebSub allows.
    pub async fn publish(&self, topic: &str, atom_body: &str) -> Vec<(String, u16)> {
        let channel = channel_of(topic);
        let now = Utc::now();
        let targets: Vec<Stored> = self
            .data()
            .subscriptions
            .iter()
            .filter(|s| s.active(now) && channel.as_deref().map_or(s.topic == topic, |c| s.channel == c))
            .cloned()
            .collect();
        let mut answers = Vec::new();
        for s in targets {
            let signature = s.secret.as_deref().map(|secret| signature(secret, atom_body.as_bytes()));
            let status = self.post(&s.callback, Some(topic), atom_body, signature).await;
            if status == 410 {
                self.data().subscriptions.retain(|x| !(x.callback == s.callback && x.channel == s.channel));
            }
            answers.push((s.callback, status));
        }
        answers
    }

    /// POSTs `body` to `callback` with exactly this `X-Hub-Signature` (or none), subscribed or not:
    /// for tests of forged and unsigned pushes.
    pub async fn publish_raw(&self, callback: &str, body: &str, signature: Option<String>) -> u16 {
        let topic = self.data().subscriptions.iter().find(|s| s.callback == callback).map(|s| s.topic.clone());
        self.post(callback, topic.as_deref(), body, signature).await
    }

    /// What the hub does when YouTube pings it about an upload or an edit: the one-entry push
    /// body, on the channel's topic, to every subscriber.
    pub async fn notify_video(&self, channel_id: &str, video_id: &str) -> Vec<(String, u16)> {
        let body = {
            let d = self.data();
            let channel = d.channel(channel_id).unwrap_or_else(|| panic!("no channel {channel_id}"));
            let video =
                channel.videos.iter().find(|v| v.id == video_id).unwrap_or_else(|| panic!("no video {video_id}"));
            push_body(channel_id, &channel.name, video)
        };
        self.publish(&FakeYouTube::topic(channel_id), &body).await
    }

    /// What the hub sends when a video is deleted or made private: a tombstone. The video stays
    /// in the feed unless [`FakeYouTube::remove_video`] takes it out.
    pub async fn notify_deleted(&self, channel_id: &str, video_id: &str) -> Vec<(String, u16)> {
        let name = self.data().channel(channel_id).map(|c| c.name.clone()).unwrap_or_default();
        self.publish(&FakeYouTube::topic(channel_id), &deleted_body(channel_id, video_id, &name)).await
    }

    /// The hub refusing a subscription: `GET callback?hub.mode=denied&hub.topic=…&hub.reason=…`.
    /// The subscription, if any, is dropped. Returns the status (0: no answer).
    pub async fn deny(&self, callback: &str, topic: &str, reason: &str) -> u16 {
        let channel = channel_of(topic);
        self.data().subscriptions.retain(|s| !(s.callback == callback && Some(&s.channel) == channel.as_ref()));
        let Ok(mut url) = Url::parse(callback) else { return 0 };
        url.query_pairs_mut()
            .append_pair("hub.mode", "denied")
            .append_pair("hub.topic", topic)
            .append_pair("hub.reason", reason);
        let http = self.data().http.clone();
        match http.get(url.as_str()).send().await {
            Ok(r) if r.url().as_str() == url.as_str() => r.status().as_u16(),
            _ => 0,
        }
    }

    async fn post(&self, callback: &str, topic: Option<&str>, body: &str, signature: Option<String>) -> u16 {
        let http = self.data().http.clone();
        let mut link = format!("<{}>; rel=hub", self.hub_url());
        if let Some(topic) = topic {
            let _ = write!(link, ", <{topic}>; rel=self");
        }
        let mut request = http
            .post(callback)
            .header(header::CONTENT_TYPE, "application/atom+xml")
            .header(header::LINK, link)
            .body(body.to_string());
        if let Some(s) = &signature {
            request = request.header("X-Hub-Signature", s);
        }
        let sent = Url::parse(callback).ok();
        let status = match request.send().await {
            Ok(r) if Some(r.url()) == sent.as_ref() => r.status().as_u16(),
            _ => 0,
        };
        self.data().pushes.push(Push { callback: callback.into(), body: body.into(), signature, status });
        status
    }

    // --- YouTube's pages ---

    /// Adds a channel (or renames it). `handle` may carry its `@`.
    pub fn add_channel(&self, channel_id: &str, handle: &str, name: &str) {
        let mut d = self.data();
        let handle = handle.trim_start_matches('@').to_string();
        let now = Utc::now();
        match d.channels.iter_mut().find(|c| c.id == channel_id) {
            Some(c) => {
                c.handle = handle;
                c.name = name.into();
                c.modified = now;
            }
            None => d.channels.push(Channel {
                id: channel_id.into(),
                handle,
                name: name.into(),
                published: now,
                modified: now,
                videos: Vec::new(),
            }),
        }
    }

    /// Uploads a video (or replaces the one with its id). Panics on an unknown channel.
    pub fn add_video(&self, channel_id: &str, video: Video) {
        let mut d = self.data();
        let channel = d.channel_mut(channel_id);
        channel.videos.retain(|v| v.id != video.id);
        channel.videos.push(video);
        channel.modified = Utc::now();
    }

    /// Edits a video. `updated` is set to now first, as YouTube does on an edit; `edit` may
    /// override it. Panics on an unknown channel or video.
    pub fn edit_video(&self, channel_id: &str, video_id: &str, edit: impl FnOnce(&mut Video)) {
        let mut d = self.data();
        let channel = d.channel_mut(channel_id);
        let now = Utc::now();
        let video =
            channel.videos.iter_mut().find(|v| v.id == video_id).unwrap_or_else(|| panic!("no video {video_id}"));
        video.updated = now;
        edit(video);
        channel.modified = now;
    }

    /// Deletes a video from the channel (and so from its feed).
    pub fn remove_video(&self, channel_id: &str, video_id: &str) -> Option<Video> {
        let mut d = self.data();
        let channel = d.channel_mut(channel_id);
        let i = channel.videos.iter().position(|v| v.id == video_id)?;
        channel.modified = Utc::now();
        Some(channel.videos.remove(i))
    }
}

// --- the hub ---

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Subscribe,
    Unsubscribe,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Subscribe => "subscribe",
            Mode::Unsubscribe => "unsubscribe",
        }
    }
}

/// A subscription request that parsed.
struct Intent {
    mode: Mode,
    callback: String,
    topic: String,
    channel: String,
    lease_seconds: Option<u64>,
    secret: Option<String>,
    verify_token: Option<String>,
}

fn first<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Reads a request the way Google's hub does; `Err` is its 400 message. Unknown parameters,
/// `hub.verify` included, are ignored (WebSub).
fn parse_intent(params: &[(String, String)]) -> Result<Intent, String> {
    let get = |name| first(params, name).filter(|v| !v.is_empty());
    let callback = get("hub.callback")
        .filter(|c| Url::parse(c).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.fragment().is_none()))
        .ok_or("Invalid parameter: hub.callback; must be valid URI with no fragment")?;
    let topic = get("hub.topic").ok_or("Invalid parameter: hub.topic; must be valid URI with no fragment")?;
    let channel = channel_of(topic).ok_or_else(|| {
        format!(
            "Invalid parameter: hub.topic; not a YouTube channel feed: {topic} (expected {})",
            FakeYouTube::topic("UC…")
        )
    })?;
    let mode = match get("hub.mode") {
        Some("subscribe") => Mode::Subscribe,
        Some("unsubscribe") => Mode::Unsubscribe,
        other => return Err(format!("Invalid value for hub.mode: {}", other.unwrap_or_default())),
    };
    let lease_seconds = match get("hub.lease_seconds") {
        None => None,
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if n > 0 && n.to_string() == raw => Some(n),
            _ => return Err(format!("Invalid value for hub.lease_seconds: {raw}")),
        },
    };
    let secret = get("hub.secret").map(str::to_string);
    if secret.as_ref().is_some_and(|s| s.len() >= 200) {
        return Err("Invalid parameter: hub.secret; must be less than 200 bytes".into());
    }
    Ok(Intent {
        mode,
        callback: callback.into(),
        topic: topic.into(),
        channel,
        lease_seconds,
        secret,
        verify_token: get("hub.verify_token").map(str::to_string),
    })
}

/// The channel a YouTube topic names, from either the `/xml/feeds/` or the `/feeds/` form.
fn channel_of(topic: &str) -> Option<String> {
    let url = Url::parse(topic).ok()?;
    let known_path = matches!(url.path(), "/xml/feeds/videos.xml" | "/feeds/videos.xml");
    if url.scheme() != "https" || url.host_str() != Some("www.youtube.com") || !known_path {
        return None;
    }
    let (_, id) = url.query_pairs().find(|(k, _)| k == "channel_id")?;
    let valid = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then(|| id.into_owned())
}

async fn subscribe(extract::State(sh): extract::State<Sh>, body: Bytes) -> Response {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let injected = sh.data().failures.pop_front();
    let (status, answer) = match injected {
        Some(status) => (status, failure_text(status)),
        None => answer_intent(&sh, &params).await,
    };
    sh.data().hub_requests.push(HubRequest { params, status, answer: answer.clone() });
    text(status, answer)
}

async fn answer_intent(sh: &Sh, params: &[(String, String)]) -> (u16, String) {
    let intent = match parse_intent(params) {
        Ok(i) => i,
        Err(message) => return (400, message),
    };
    let mode = sh.data().verify;
    match mode {
        Verify::Async => {
            tokio::spawn(verify(sh.clone(), intent));
            (202, String::new())
        }
        Verify::Sync => {
            let exists =
                sh.data().subscriptions.iter().any(|s| s.callback == intent.callback && s.channel == intent.channel);
            if intent.mode == Mode::Unsubscribe && !exists {
                return (204, String::new());
            }
            if verify(sh.clone(), intent).await { (204, String::new()) } else { (409, SYNC_FAILED.into()) }
        }
    }
}

/// Verification of intent (platforms.md 1.3), then the state change it confirms.
async fn verify(sh: Sh, intent: Intent) -> bool {
    let challenge = uuid::Uuid::now_v7().simple().to_string();
    let (http, lease_seconds) = {
        let d = sh.data();
        let lease =
            (intent.mode == Mode::Subscribe).then(|| intent.lease_seconds.unwrap_or(d.default_lease).min(d.max_lease));
        (d.http.clone(), lease)
    };
    let mut url = Url::parse(&intent.callback).expect("checked in parse_intent");
    {
        // Appended after any query the callback already has.
        let mut query = url.query_pairs_mut();
        query.append_pair("hub.mode", intent.mode.as_str());
        query.append_pair("hub.topic", &intent.topic);
        query.append_pair("hub.challenge", &challenge);
        if let Some(lease) = lease_seconds {
            query.append_pair("hub.lease_seconds", &lease.to_string());
        }
        if let Some(token) = &intent.verify_token {
            query.append_pair("hub.verify_token", token);
        }
    }
    let (status, body, redirected) = match http.get(url.as_str()).send().await {
        Ok(r) => {
            let redirected = r.url().as_str() != url.as_str();
            let status = r.status().as_u16();
            (Some(status), r.text().await.unwrap_or_default(), redirected)
        }
        Err(_) => (None, String::new(), false),
    };
    let echoed = body == challenge;
    let verified = echoed && !redirected && status.is_some_and(|s| (200..300).contains(&s));

    let mut d = sh.data();
    let same = |s: &Stored| s.callback == intent.callback && s.channel == intent.channel;
    match (intent.mode, verified) {
        (Mode::Subscribe, true) => {
            d.subscriptions.retain(|s| !same(s));
            d.subscriptions.push(Stored {
                callback: intent.callback.clone(),
                topic: intent.topic.clone(),
                channel: intent.channel.clone(),
                secret: intent.secret.clone(),
                lease_seconds: lease_seconds.unwrap_or_default(),
                verified_at: Utc::now(),
                expired: false,
            });
        }
        (Mode::Unsubscribe, true) => d.subscriptions.retain(|s| !same(s)),
        // Google archives a subscription whose callback answers 404; any other failure leaves the
        // previous one (a renewal that failed once) in place.
        (Mode::Subscribe, false) if status == Some(404) => d.subscriptions.retain(|s| !same(s)),
        _ => {}
    }
    d.verifications.push(Verification {
        mode: intent.mode.as_str().into(),
        callback: intent.callback,
        url: url.into(),
        topic: intent.topic,
        challenge,
        lease_seconds,
        verify_token: intent.verify_token,
        status,
        body,
        redirected,
        echoed,
        verified,
    });
    verified
}

fn failure_text(status: u16) -> String {
    let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    format!("{status} {reason}")
}

fn text(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::NO_CONTENT {
        return status.into_response();
    }
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

// --- the pages ---

async fn feed(
    extract::State(sh): extract::State<Sh>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = query.get("channel_id") else {
        return text(400, "channel_id is required".into());
    };
    let (body, modified) = {
        let d = sh.data();
        let Some(channel) = d.channel(id) else {
            return (StatusCode::NOT_FOUND, Html("<!DOCTYPE html><title>404 Not Found</title>")).into_response();
        };
        (feed_xml(channel), channel.modified)
    };
    let etag = format!("\"{}\"", &hex(&sha1(body.as_bytes()))[..20]);
    let last_modified = modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    // Only the ETag can answer 304: `If-Modified-Since` has whole seconds, so it would hide an edit
    // made in the same second as the previous poll.
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag));
    let cache = [(header::ETAG, etag), (header::LAST_MODIFIED, last_modified)];
    if unchanged {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (StatusCode::OK, cache, [(header::CONTENT_TYPE, "text/xml; charset=UTF-8")], body).into_response()
}

/// The channel feed in the shape of platforms.md 1.9.
fn feed_xml(c: &Channel) -> String {
    let (id, name) = (&c.id, esc(&c.name));
    let channel_url = format!("https://www.youtube.com/channel/{id}");
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str("<feed xmlns:yt=\"http://www.youtube.com/xml/schemas/2015\" xmlns:media=\"http://search.yahoo.com/mrss/\" xmlns=\"http://www.w3.org/2005/Atom\">\n");
    let _ = write!(
        x,
        " <link rel=\"self\" href=\"http://www.youtube.com/feeds/videos.xml?channel_id={id}\"/>\n \
         <id>yt:channel:{id}</id>\n <yt:channelId>{id}</yt:channelId>\n <title>{name}</title>\n \
         <link rel=\"alternate\" href=\"{channel_url}\"/>\n \
         <author>\n  <name>{name}</name>\n  <uri>{channel_url}</uri>\n </author>\n \
         <published>{}</published>\n",
        secs(c.published)
    );
    // Newest first; of two published together, the later upload.
    let mut videos: Vec<&Video> = c.videos.iter().rev().collect();
    videos.sort_by_key(|v| std::cmp::Reverse(v.published));
    for v in videos.into_iter().take(FEED_ENTRIES) {
        let (vid, title) = (&v.id, esc(&v.title));
        let link = if v.shorts {
            format!("https://www.youtube.com/shorts/{vid}")
        } else {
            format!("https://www.youtube.com/watch?v={vid}")
        };
        let _ = write!(
            x,
            " <entry>\n  <id>yt:video:{vid}</id>\n  <yt:videoId>{vid}</yt:videoId>\n  \
             <yt:channelId>{id}</yt:channelId>\n  <title>{title}</title>\n  \
             <link rel=\"alternate\" href=\"{link}\"/>\n  \
             <author>\n   <name>{name}</name>\n   <uri>{channel_url}</uri>\n  </author>\n  \
             <published>{}</published>\n  <updated>{}</updated>\n  <media:group>\n   \
             <media:title>{title}</media:title>\n   \
             <media:content url=\"https://www.youtube.com/v/{vid}?version=3\" type=\"application/x-shockwave-flash\" width=\"640\" height=\"390\"/>\n   \
             <media:thumbnail url=\"https://i1.ytimg.com/vi/{vid}/hqdefault.jpg\" width=\"480\" height=\"360\"/>\n   \
             <media:description>{}</media:description>\n   <media:community>\n    \
             <media:starRating count=\"{}\" average=\"5.00\" min=\"1\" max=\"5\"/>\n    \
             <media:statistics views=\"{}\"/>\n   </media:community>\n  </media:group>\n </entry>\n",
            secs(v.published),
            secs(v.updated),
            esc(&v.description),
            v.likes,
            v.views,
        );
    }
    x.push_str("</feed>");
    x
}

async fn handle_page(extract::State(sh): extract::State<Sh>, Path(segment): Path<String>) -> Response {
    let Some(handle) = segment.strip_prefix('@') else { return not_found() };
    page(&sh, |c| c.handle.eq_ignore_ascii_case(handle))
}

/// `/c/<name>` and `/user/<name>`: the pre-handle vanity URLs, matched against the handle here.
async fn legacy_page(extract::State(sh): extract::State<Sh>, Path(name): Path<String>) -> Response {
    page(&sh, |c| c.handle.eq_ignore_ascii_case(&name))
}

async fn channel_page(extract::State(sh): extract::State<Sh>, Path(id): Path<String>) -> Response {
    page(&sh, |c| c.id == id)
}

fn page(sh: &Sh, matches: impl Fn(&Channel) -> bool) -> Response {
    let d = sh.data();
    match d.channels.iter().find(|c| matches(c)) {
        Some(c) => Html(channel_html(c)).into_response(),
        None => not_found(),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Html("<!DOCTYPE html><html lang=\"en\"><title>404 Not Found</title></html>"))
        .into_response()
}

/// A channel page carrying the id everywhere resolvers look for it on the real one: the canonical
/// link, `og:url`, `itemprop="identifier"`, the RSS link and `ytInitialData`.
fn channel_html(c: &Channel) -> String {
    let (id, name) = (&c.id, esc(&c.name));
    let channel_url = format!("https://www.youtube.com/channel/{id}");
    let data = serde_json::json!({
        "responseContext": { "serviceTrackingParams": [] },
        "metadata": { "channelMetadataRenderer": {
            "title": c.name,
            "externalId": id,
            "channelUrl": channel_url,
            "vanityChannelUrls": [format!("http://www.youtube.com/@{}", c.handle)],
            "rssUrl": format!("https://www.youtube.com/feeds/videos.xml?channel_id={id}"),
        }},
        "header": { "pageHeaderRenderer": { "pageTitle": c.name } },
        "channelId": id,
    });
    // `<` inside a string could close the script; YouTube escapes it too.
    let data = data.to_string().replace('<', "\\u003c");
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><title>{name} - YouTube</title>\
         <link rel=\"canonical\" href=\"{channel_url}\">\
         <meta property=\"og:url\" content=\"{channel_url}\">\
         <meta itemprop=\"identifier\" content=\"{id}\">\
         <link rel=\"alternate\" type=\"application/rss+xml\" title=\"RSS\" href=\"https://www.youtube.com/feeds/videos.xml?channel_id={id}\">\
         </head><body><script nonce=\"fake\">var ytInitialData = {data};</script></body></html>"
    )
}

// --- push bodies ---

/// The push for a new or edited video (platforms.md 1.6): one line, single-quoted XML
/// declaration, only the changed entry, nanosecond `updated`, `+00:00` offsets.
pub fn push_body(channel_id: &str, channel_name: &str, video: &Video) -> String {
    let vid = &video.id;
    format!(
        "<?xml version='1.0' encoding='UTF-8'?>\
         <feed xmlns:yt=\"http://www.youtube.com/xml/schemas/2015\" xmlns=\"http://www.w3.org/2005/Atom\">\
         <link rel=\"hub\" href=\"{GOOGLE_HUB}\"/>\
         <link rel=\"self\" href=\"{topic}\"/>\
         <title>YouTube video feed</title><updated>{now}</updated>\
         <entry><id>yt:video:{vid}</id><yt:videoId>{vid}</yt:videoId><yt:channelId>{channel_id}</yt:channelId>\
         <title>{title}</title><link rel=\"alternate\" href=\"http://www.youtube.com/watch?v={vid}\"/>\
         <author><name>{name}</name><uri>http://www.youtube.com/channel/{channel_id}</uri></author>\
         <published>{published}</published><updated>{updated}</updated></entry></feed>",
        topic = FakeYouTube::topic(channel_id),
        now = nanos(Utc::now()),
        title = esc(&video.title),
        name = esc(channel_name),
        published = secs(video.published),
        updated = nanos(video.updated),
    )
}

/// The push for a deleted or private video (platforms.md 1.7): an Atom tombstone, with the channel
/// only in `at:by`.
pub fn deleted_body(channel_id: &str, video_id: &str, channel_name: &str) -> String {
    format!(
        "<?xml version='1.0' encoding='UTF-8'?>\
         <feed xmlns:at=\"http://purl.org/atompub/tombstones/1.0\" xmlns=\"http://www.w3.org/2005/Atom\">\
         <at:deleted-entry ref=\"yt:video:{video_id}\" when=\"{when}\">\
         <link href=\"https://www.youtube.com/watch?v={video_id}\"/>\
         <at:by><name>{name}</name><uri>https://www.youtube.com/channel/{channel_id}</uri></at:by>\
         </at:deleted-entry></feed>",
        when = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false),
        name = esc(channel_name),
    )
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn nanos(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, false)
}

/// XML escaping as YouTube does it (`&#39;` for the apostrophe).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// --- signatures ---

/// The `X-Hub-Signature` value Google's hub sends: `sha1=<hex HMAC-SHA1(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    format!("sha1={}", hex(&hmac_sha1(secret.as_bytes(), body)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// HMAC-SHA1 (RFC 2104).
pub fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    crate::webhook::hmac(sha1, key, message)
}

/// SHA-1 (FIPS 180-4).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..20 => ((b & c) | (!b & d), 0x5A827999),
                20..40 => (b ^ c ^ d, 0x6ED9EBA1),
                40..60 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_and_hmac_match_published_vectors() {
        assert_eq!(hex(&sha1(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        // Two blocks after padding (FIPS 180 sample).
        assert_eq!(
            hex(&sha1(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        // RFC 2202 test cases 2 and 6 (a key longer than a block).
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex(&hmac_sha1(&[0xaa; 80], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    #[test]
    fn topics_name_a_channel_in_either_form() {
        let id = "UCXuqSBlHAE6Xw-yeJA0Tunw";
        assert_eq!(channel_of(&FakeYouTube::topic(id)).as_deref(), Some(id));
        assert_eq!(
            channel_of(&format!("https://www.youtube.com/feeds/videos.xml?channel_id={id}")).as_deref(),
            Some(id)
        );
        assert_eq!(channel_of(&format!("http://www.youtube.com/feeds/videos.xml?channel_id={id}")), None);
        assert_eq!(channel_of("https://www.youtube.com/feeds/videos.xml?user=someone"), None);
        assert_eq!(channel_of("https://example.com/feed.xml"), None);
    }

    #[test]
    fn bad_requests_get_googles_messages() {
        let p = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let topic = FakeYouTube::topic("UC1");
        let ok = [("hub.callback", "http://h/cb"), ("hub.mode", "subscribe"), ("hub.topic", topic.as_str())];
        assert!(parse_intent(&p(&ok)).is_ok());
        let without = |name: &str| p(&ok.iter().copied().filter(|(k, _)| *k != name).collect::<Vec<_>>());
        assert!(parse_intent(&without("hub.callback")).err().unwrap().starts_with("Invalid parameter: hub.callback"));
        assert!(parse_intent(&without("hub.topic")).err().unwrap().starts_with("Invalid parameter: hub.topic"));
        assert_eq!(parse_intent(&without("hub.mode")).err().unwrap(), "Invalid value for hub.mode: ");
        let with = |extra: (&str, &str)| p(&ok.iter().copied().chain([extra]).collect::<Vec<_>>());
        assert_eq!(
            parse_intent(&with(("hub.lease_seconds", "-5"))).err().unwrap(),
            "Invalid value for hub.lease_seconds: -5"
        );
        assert!(parse_intent(&with(("hub.secret", &"s".repeat(200)))).is_err());
        assert!(parse_intent(&with(("hub.secret", &"s".repeat(199)))).is_ok());
        assert!(parse_intent(&with(("hub.callback2", "x"))).is_ok());
    }

    #[test]
    fn the_feed_is_newest_first_escaped_and_capped() {
        let base = Utc::now();
        let mut c = Channel {
            id: "UC1".into(),
            handle: "h".into(),
            name: "Tom & Jerry's".into(),
            published: base,
            modified: base,
            videos: Vec::new(),
        };
        for i in 0..20 {
            let mut v = Video::new(&format!("v{i:02}"), &format!("<b>{i}</b>"));
            v.published = base + chrono::Duration::seconds(i);
            v.shorts = i == 19;
            c.videos.push(v);
        }
        let xml = feed_xml(&c);
        assert_eq!(xml.matches("<entry>").count(), FEED_ENTRIES);
        let first = xml.find("<yt:videoId>v19</yt:videoId>").unwrap();
        assert!(first < xml.find("<yt:videoId>v18</yt:videoId>").unwrap());
        assert!(!xml.contains("<yt:videoId>v04</yt:videoId>"));
        assert!(xml.contains("<title>Tom &amp; Jerry&#39;s</title>"));
        assert!(xml.contains("<title>&lt;b&gt;19&lt;/b&gt;</title>"));
        assert!(xml.contains("href=\"https://www.youtube.com/shorts/v19\""));
        assert!(xml.contains("href=\"https://www.youtube.com/watch?v=v18\""));
    }

    #[test]
    fn push_bodies_have_the_captured_shape() {
        let mut v = Video::new("dQw4w9WgXcQ", "A & B");
        v.published = DateTime::parse_from_rfc3339("2015-03-06T21:40:57Z").unwrap().to_utc();
        v.updated = DateTime::parse_from_rfc3339("2015-03-09T19:05:24.552394234Z").unwrap().to_utc();
        let body = push_body("UC1", "Chan", &v);
        assert!(body.starts_with("<?xml version='1.0' encoding='UTF-8'?><feed xmlns:yt="));
        assert!(!body.contains('\n'));
        assert!(body.contains("<published>2015-03-06T21:40:57+00:00</published>"));
        assert!(body.contains("<updated>2015-03-09T19:05:24.552394234+00:00</updated></entry>"));
        assert!(
            body.contains("<link rel=\"self\" href=\"https://www.youtube.com/xml/feeds/videos.xml?channel_id=UC1\"/>")
        );
        assert!(body.contains("<title>A &amp; B</title>"));
        let gone = deleted_body("UC1", "dQw4w9WgXcQ", "Chan");
        assert!(gone.contains("<at:deleted-entry ref=\"yt:video:dQw4w9WgXcQ\" when=\""));
        assert!(gone.contains("<at:by><name>Chan</name><uri>https://www.youtube.com/channel/UC1</uri></at:by>"));
        assert!(!gone.contains("<entry>") && !gone.contains("channelId"));
    }
}

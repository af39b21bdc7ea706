//! Matrix: the client-server API of a homeserver the user chose (platforms.md §9.1).
//!
//! Every message is a `PUT …/send/m.room.message/{txnId}` whose txnId comes from the delivery's
//! idempotency key, so a retry gets the first event back instead of posting twice. The homeserver
//! scopes transaction ids to a device, which is why a password login always names the device
//! [`DEVICE_ID`].

use crate::net::{Idempotent, Reply, retry_after_header};
use crate::{
    Adapter, Connection, Credentials, Media, MediaKind, Metrics, Net, Outgoing, Pacing, Platform, PlatformError,
    Published, Verified,
};
use async_trait::async_trait;
use herald_http::{Method, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

pub struct Matrix;

/// The device Herald logs in as, every time: transaction ids are scoped to a device, so a retry
/// after a re-login is still recognised as a retry.
pub const DEVICE_ID: &str = "HERALD";

/// Reactions are read a page of 100 at a time, at most this many pages: counting stays cheap, and
/// a post with more reactions than that shows the first thousand.
const REACTION_PAGES: usize = 10;

#[derive(Deserialize)]
struct Settings {
    homeserver: String,
    room_id: String,
}

/// Either an access token, or a user and password to log in with (kept so an expired token can be
/// renewed). No `Debug`: every field but `device_id` is secret.
#[derive(Deserialize, Default)]
struct Creds {
    access_token: Option<String>,
    device_id: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

impl Creds {
    fn login(&self) -> Option<(&str, &str)> {
        Some((self.user.as_deref().filter(|u| !u.is_empty())?, self.password.as_deref().filter(|p| !p.is_empty())?))
    }

    fn to_credentials(&self) -> Credentials {
        let mut c = serde_json::Map::new();
        for (k, v) in [
            ("access_token", &self.access_token),
            ("device_id", &self.device_id),
            ("user", &self.user),
            ("password", &self.password),
        ] {
            if let Some(v) = v {
                c.insert(k.to_string(), Value::String(v.clone()));
            }
        }
        Credentials(Value::Object(c))
    }
}

/// Which call failed, because the same status means different things at each.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Login,
    Whoami,
    Alias,
    Rooms,
    Upload,
    Send,
    Relations,
}

/// What a call sends.
enum Payload<'a> {
    None,
    Json(&'a Value),
    Bytes { mime: &'a str, bytes: &'a bytes::Bytes },
}

/// A logged-in client for one call of the adapter.
struct Session<'a> {
    net: &'a Net,
    base: String,
    creds: Creds,
    /// The token changed during the call: the caller stores the new credentials.
    rotated: bool,
}

impl<'a> Session<'a> {
    /// Uses the stored token, or logs in when there is only a password.
    async fn open(net: &'a Net, base: String, creds: Creds) -> Result<Session<'a>, PlatformError> {
        let mut s = Session { net, base, creds, rotated: false };
        if s.creds.access_token.as_deref().is_none_or(str::is_empty) {
            if s.creds.login().is_none() {
                return Err(PlatformError::invalid(
                    "the Matrix credentials need either an access_token, or a user and password",
                )
                .code("bad_credentials"));
            }
            s.login().await?;
        }
        Ok(s)
    }

    async fn login(&mut self) -> Result<(), PlatformError> {
        let (user, password) = self.creds.login().ok_or_else(|| {
            PlatformError::auth("the homeserver refused the access token and there is no password to log in again")
        })?;
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "device_id": DEVICE_ID,
            "initial_device_display_name": "Herald",
        });
        let url = format!("{}/_matrix/client/v3/login", self.base);
        let req = self.net.safe().request(Method::POST, &url)?.json(&body);
        let reply = self.net.safe().send(req, Idempotent::Yes).await?;
        if !reply.is_success() {
            return Err(error(&reply, Stage::Login));
        }
        let v = reply.json();
        let token = v["access_token"].as_str().filter(|t| !t.is_empty()).ok_or_else(|| {
            PlatformError::transient("the homeserver's login answer has no access_token").status(reply.status)
        })?;
        self.creds.access_token = Some(token.to_string());
        self.creds.device_id = Some(v["device_id"].as_str().unwrap_or(DEVICE_ID).to_string());
        self.rotated = true;
        Ok(())
    }

    /// One authenticated call; a refused token is renewed once when there is a password.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        payload: Payload<'_>,
        stage: Stage,
    ) -> Result<Value, PlatformError> {
        let mut relogged = false;
        loop {
            let url = format!("{}{path}", self.base);
            let mut req = self
                .net
                .safe()
                .request(method.clone(), &url)?
                .bearer_auth(self.creds.access_token.as_deref().unwrap_or(""));
            req = match &payload {
                Payload::None => req,
                Payload::Json(v) => req.json(v),
                Payload::Bytes { mime, bytes } => req.header(header::CONTENT_TYPE, *mime).body((*bytes).clone()),
            };
            // Sends carry a txnId and a lost upload only leaves an unused file, so a lost answer
            // is safe to retry everywhere here.
            let reply = self.net.safe().send(req, Idempotent::Yes).await?;
            if reply.is_success() {
                return Ok(reply.json());
            }
            let e = error(&reply, stage);
            let token_refused = matches!(e.code.as_deref(), Some("M_UNKNOWN_TOKEN"));
            if token_refused && !relogged && self.creds.login().is_some() {
                relogged = true;
                self.login().await?;
                continue;
            }
            return Err(e);
        }
    }

    /// `!id:server` as is; `#alias:server` through the room directory.
    async fn room_id(&mut self, room: &str) -> Result<String, PlatformError> {
        if !room.starts_with('#') {
            return Ok(room.to_string());
        }
        let path = format!("/_matrix/client/v3/directory/room/{}", seg(room));
        let v = self.call(Method::GET, &path, Payload::None, Stage::Alias).await?;
        v["room_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| PlatformError::transient("the homeserver's room directory answer has no room_id"))
    }

    async fn send(&mut self, room: &str, txn: &str, content: &Value) -> Result<String, PlatformError> {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", seg(room), seg(txn));
        let v = self.call(Method::PUT, &path, Payload::Json(content), Stage::Send).await?;
        v["event_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| PlatformError::transient("the homeserver's answer has no event_id"))
    }

    async fn upload(&mut self, media: &Media) -> Result<String, PlatformError> {
        let path = format!("/_matrix/media/v3/upload?filename={}", seg(&media.filename));
        let payload = Payload::Bytes { mime: &media.mime, bytes: &media.bytes };
        let v = self.call(Method::POST, &path, payload, Stage::Upload).await?;
        v["content_uri"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| PlatformError::transient("the homeserver's upload answer has no content_uri"))
    }

    fn rotated(&self) -> Option<Credentials> {
        self.rotated.then(|| self.creds.to_credentials())
    }
}

#[async_trait]
impl Adapter for Matrix {
    fn platform(&self) -> &'static Platform {
        crate::registry("matrix")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let settings: Settings = crate::settings(&conn.settings, "Matrix")?;
        let base = homeserver(&settings.homeserver)?;
        let room = room_setting(&settings.room_id)?;
        let mut s = Session::open(net, base.clone(), conn.credentials.parse("Matrix")?).await?;

        let me = s.call(Method::GET, "/_matrix/client/v3/account/whoami", Payload::None, Stage::Whoami).await?;
        let user_id = me["user_id"]
            .as_str()
            .ok_or_else(|| PlatformError::transient("the homeserver's whoami answer has no user_id"))?
            .to_string();
        if let Some(d) = me["device_id"].as_str() {
            s.creds.device_id = Some(d.to_string());
        }

        let room_id = s.room_id(room).await?;
        let joined = s.call(Method::GET, "/_matrix/client/v3/joined_rooms", Payload::None, Stage::Rooms).await?;
        let member = joined["joined_rooms"].as_array().is_some_and(|rooms| rooms.iter().any(|r| r == &room_id));
        if !member {
            return Err(PlatformError::invalid(format!(
                "{user_id} is not in the room {room}; invite the account to the room and accept the invite \
                 (or join it), then connect again"
            ))
            .code("not_in_room"));
        }

        let mut out = json!({"homeserver": base, "room_id": room_id, "user_id": user_id});
        if room != room_id {
            out["room_alias"] = json!(room);
        }
        Ok(Verified { account: user_id, credentials: s.creds.to_credentials(), settings: out })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let settings: Settings = crate::settings(&conn.settings, "Matrix")?;
        let base = homeserver(&settings.homeserver)?;
        let room = room_setting(&settings.room_id)?;
        let text = text_content(post);
        if post.media.is_empty() && text.is_none() {
            return Err(PlatformError::invalid("the post has no text, link or media").code("empty_post"));
        }
        let mut s = Session::open(net, base, conn.credentials.parse("Matrix")?).await?;
        let room_id = s.room_id(room).await?;

        let mut last = None;
        for (i, media) in post.media.iter().enumerate() {
            let mxc = s.upload(media).await?;
            let mut content = media_content(media, &mxc);
            in_reply_to(&mut content, post);
            last = Some(s.send(&room_id, &format!("{}-img{i}", post.idempotency_key), &content).await?);
        }
        if let Some(mut content) = text {
            in_reply_to(&mut content, post);
            last = Some(s.send(&room_id, &format!("{}-text", post.idempotency_key), &content).await?);
        }
        let event_id = last.unwrap_or_default();
        Ok(Published {
            url: Some(format!("https://matrix.to/#/{room_id}/{event_id}")),
            id: event_id,
            credentials: s.rotated(),
        })
    }

    /// Redacts the event. Only the event the post's id names goes: images sent as their own
    /// events stay.
    async fn delete(&self, net: &Net, conn: &Connection, id: &str) -> Result<(), PlatformError> {
        let settings: Settings = crate::settings(&conn.settings, "Matrix")?;
        let base = homeserver(&settings.homeserver)?;
        let room = room_setting(&settings.room_id)?;
        let mut s = Session::open(net, base, conn.credentials.parse("Matrix")?).await?;
        let room_id = s.room_id(room).await?;
        let txn: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/{}",
            seg(&room_id),
            seg(id),
            seg(&format!("herald-redact-{txn}"))
        );
        s.call(Method::PUT, &path, Payload::Json(&json!({})), Stage::Send).await?;
        Ok(())
    }

    /// `reactions` (and `reactions:<key>` for each emoji) from the event's `m.annotation`
    /// relations. A homeserver without the relations API (before Matrix 1.3) gives `None`.
    async fn metrics(&self, net: &Net, conn: &Connection, id: &str) -> Result<Option<Metrics>, PlatformError> {
        let settings: Settings = crate::settings(&conn.settings, "Matrix")?;
        let base = homeserver(&settings.homeserver)?;
        let room = room_setting(&settings.room_id)?;
        let mut s = Session::open(net, base, conn.credentials.parse("Matrix")?).await?;
        let room_id = s.room_id(room).await?;
        let mut keys: Vec<String> = Vec::new();
        let mut from: Option<String> = None;
        for _ in 0..REACTION_PAGES {
            let mut path =
                format!("/_matrix/client/v1/rooms/{}/relations/{}/m.annotation?limit=100", seg(&room_id), seg(id));
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", seg(f)));
            }
            let page = match s.call(Method::GET, &path, Payload::None, Stage::Relations).await {
                Ok(v) => v,
                Err(e) if e.code.as_deref() == Some("M_UNRECOGNIZED") => return Ok(None),
                Err(e) => return Err(e),
            };
            let chunk = page["chunk"].as_array().map(Vec::as_slice).unwrap_or_default();
            keys.extend(
                chunk
                    .iter()
                    .filter(|e| e["type"] == "m.reaction")
                    .filter_map(|e| e["content"]["m.relates_to"]["key"].as_str())
                    .map(str::to_string),
            );
            match page["next_batch"].as_str() {
                Some(next) if !chunk.is_empty() => from = Some(next.to_string()),
                _ => break,
            }
        }
        let mut m = Metrics::default().reactions(keys.iter().map(String::as_str));
        m.credentials = s.rotated();
        Ok(Some(m))
    }

    /// Homeservers rate-limit messages per user (Synapse: 0.2/s burst 10 by default, usually
    /// raised); one a second with a burst of five keeps a room readable and under most limits.
    fn idempotency(&self, _conn: &Connection) -> crate::Idempotency {
        // Synapse keeps transaction ids for about 30 minutes.
        crate::Idempotency::Window(std::time::Duration::from_secs(25 * 60))
    }

    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let settings: Settings = crate::settings(&conn.settings, "Matrix").ok()?;
        let base = homeserver(&settings.homeserver).ok()?;
        let host = url::Url::parse(&base).ok()?.host_str()?.to_string();
        Some(Pacing { bucket: format!("matrix:{host}:{}", settings.room_id), capacity: 5.0, per_second: 1.0 })
    }
}

/// The homeserver's base URL: `https://` when no scheme is given, without a trailing slash.
fn homeserver(raw: &str) -> Result<String, PlatformError> {
    let raw = raw.trim();
    let full = if raw.contains("://") { raw.to_string() } else { format!("https://{raw}") };
    let bad = || {
        PlatformError::invalid("the homeserver must be a URL such as https://matrix.example.org").code("bad_settings")
    };
    let mut url = url::Url::parse(&full).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad());
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn room_setting(room: &str) -> Result<&str, PlatformError> {
    let room = room.trim();
    if (room.starts_with('!') || room.starts_with('#')) && room.len() > 1 {
        Ok(room)
    } else {
        Err(PlatformError::invalid("room_id must be a room id (!abc:example.org) or an alias (#name:example.org)")
            .code("bad_settings"))
    }
}

/// Percent-encodes one path segment or query value: everything but RFC 3986's unreserved set.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `m.text` event, or `None` when there is neither text nor link. With a link, the body
/// carries it as text (appended when the text lacks it) and `formatted_body` as an anchor.
fn text_content(post: &Outgoing) -> Option<Value> {
    let text = post.text.trim_end();
    let link = post.link.as_deref().map(str::trim).filter(|l| !l.is_empty());
    let body = post.text_with_link().trim_end().to_string();
    if body.trim().is_empty() {
        return None;
    }
    let mut content = json!({"msgtype": "m.text", "body": body});
    if let Some(l) = link.filter(|l| l.starts_with("https://") || l.starts_with("http://")) {
        let anchor = format!("<a href=\"{0}\">{0}</a>", escape(l));
        let html = if text.contains(l) {
            escape(text).replace(&escape(l), &anchor)
        } else if text.trim().is_empty() {
            anchor
        } else {
            format!("{}\n\n{anchor}", escape(text))
        };
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(html.replace('\n', "<br>"));
    }
    Some(content)
}

fn media_content(media: &Media, mxc: &str) -> Value {
    let msgtype = match media.kind {
        MediaKind::Image => "m.image",
        MediaKind::Video => "m.video",
    };
    // `body` is the text shown where the media cannot be: the alt text when there is one.
    let body = media.alt.as_deref().filter(|a| !a.trim().is_empty()).unwrap_or(&media.filename);
    json!({
        "msgtype": msgtype,
        "body": body,
        "filename": media.filename,
        "url": mxc,
        "info": {"mimetype": media.mime, "size": media.bytes.len()},
    })
}

fn in_reply_to(content: &mut Value, post: &Outgoing) {
    if let Some(parent) = post.reply_to.as_deref().filter(|p| !p.is_empty()) {
        content["m.relates_to"] = json!({"m.in_reply_to": {"event_id": parent}});
    }
}

fn escape(s: &str) -> String {
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

/// A homeserver's `{"errcode","error"}` answer as an error class.
fn error(reply: &Reply, stage: Stage) -> PlatformError {
    let body = reply.json();
    let code = body["errcode"].as_str().unwrap_or_default().to_string();
    let status = reply.status;
    let said = match body["error"].as_str() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ if !code.is_empty() => code.clone(),
        _ => format!("HTTP {status}"),
    };
    let e = match (status, code.as_str()) {
        (429, _) | (_, "M_LIMIT_EXCEEDED") => {
            // `Retry-After` is the current signal; `retry_after_ms` the deprecated one.
            let wait = retry_after_header(&reply.headers).or_else(|| {
                let ms = body["retry_after_ms"].as_f64()?;
                (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
            });
            PlatformError::rate_limited(format!("the homeserver asks to slow down: {said}"), wait)
        }
        (_, "M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN") | (401, _) => {
            PlatformError::auth(format!("the homeserver refused the access token: {said}; sign in again"))
        }
        (_, "M_USER_DEACTIVATED") => PlatformError::auth(format!("the Matrix account is deactivated: {said}")),
        (404, "M_UNRECOGNIZED") if stage == Stage::Login => PlatformError::auth(
            "this homeserver has no password login (it may sign in only through OAuth); \
             create an access token in a Matrix client and connect with it instead",
        ),
        (403, _) if stage == Stage::Login => {
            PlatformError::auth(format!("the homeserver refused the user name or password: {said}"))
        }
        (403, "M_FORBIDDEN") if matches!(stage, Stage::Send | Stage::Upload) => PlatformError::invalid(format!(
            "the account may not post in this room ({said}); invite it to the room and accept the invite, \
             then try again"
        )),
        (404, _) if stage == Stage::Alias => {
            PlatformError::invalid(format!("the homeserver does not know this room alias: {said}"))
        }
        (404, "") if matches!(stage, Stage::Login | Stage::Whoami) => PlatformError::invalid(
            "there is no Matrix client API at this address; check the homeserver URL (it is the address your \
             Matrix client signs in to)",
        ),
        (408 | 500..=599, _) => {
            let mut e = PlatformError::transient(format!("the homeserver failed: {said}"));
            e.retry_after = retry_after_header(&reply.headers);
            e
        }
        _ => PlatformError::invalid(format!("the homeserver refused the request: {said}")),
    };
    let e = e.status(status);
    if code.is_empty() { e } else { e.code(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(text: &str, link: Option<&str>) -> Outgoing {
        let mut p = Outgoing::text(text, "k");
        p.link = link.map(str::to_string);
        p
    }

    #[test]
    fn a_link_is_appended_to_the_body_and_an_anchor_in_the_html() {
        let c = text_content(&post("Read <this> & that", Some("https://ex.org/a?b=1&c=2"))).unwrap();
        assert_eq!(c["body"], "Read <this> & that\n\nhttps://ex.org/a?b=1&c=2");
        assert_eq!(c["format"], "org.matrix.custom.html");
        assert_eq!(
            c["formatted_body"],
            "Read &lt;this&gt; &amp; that<br><br><a href=\"https://ex.org/a?b=1&amp;c=2\">https://ex.org/a?b=1&amp;c=2</a>"
        );
    }

    #[test]
    fn a_link_already_in_the_text_becomes_the_anchor_in_place() {
        let c = text_content(&post("see https://ex.org now", Some("https://ex.org"))).unwrap();
        assert_eq!(c["body"], "see https://ex.org now");
        assert_eq!(c["formatted_body"], "see <a href=\"https://ex.org\">https://ex.org</a> now");
    }

    #[test]
    fn plain_text_has_no_html_and_nothing_is_no_event() {
        let c = text_content(&post("hi\nthere", None)).unwrap();
        assert_eq!(c, json!({"msgtype": "m.text", "body": "hi\nthere"}));
        assert!(text_content(&post("  ", None)).is_none());
        assert_eq!(text_content(&post("", Some("https://ex.org"))).unwrap()["body"], "https://ex.org");
    }

    #[test]
    fn path_segments_are_fully_encoded() {
        assert_eq!(seg("!abc:ex.org"), "%21abc%3Aex.org");
        assert_eq!(seg("#room:ex.org"), "%23room%3Aex.org");
        assert_eq!(seg("herald-0a_b~c"), "herald-0a_b~c");
        assert_eq!(seg("a b/ü"), "a%20b%2F%C3%BC");
    }

    #[test]
    fn homeservers_are_normalised() {
        assert_eq!(homeserver("matrix.example.org").unwrap(), "https://matrix.example.org");
        assert_eq!(homeserver(" http://127.0.0.1:8008/ ").unwrap(), "http://127.0.0.1:8008");
        assert!(homeserver("ftp://x.org").is_err());
        assert!(room_setting("general").is_err());
    }
}

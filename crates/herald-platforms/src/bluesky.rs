//! Bluesky (AT Protocol). The PDS is the user's choice (`bsky.social` by default), so every call
//! goes through the guarded client. Sessions come from an app password; the access token is
//! refreshed on `400 ExpiredToken` and the rotated pair goes back to the caller. Posts are written
//! with `putRecord` under a TID derived from the delivery: the reference PDS treats a second put of
//! the same record as a no-op, so a retry after a lost answer cannot post twice.

use crate::net::{retry_after_header, until_epoch};
use crate::{
    Adapter, Connection, Credentials, Idempotent, MediaKind, Metrics, Net, Outgoing, Pacing, Platform, PlatformError,
    Published, Reply, Verified, Via,
};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use herald_http::{Method, header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub struct Bluesky;

const DEFAULT_SERVICE: &str = "https://bsky.social";
const POST: &str = "app.bsky.feed.post";
const MAX_IMAGES: usize = 4;
/// How much of a linked page is read for its card: the `<head>` is near the top.
const PAGE_CAP: usize = 256 << 10;
const PAGE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct Settings {
    #[serde(default)]
    service: Option<String>,
}

/// The stored credentials: the app password, and the session once one exists. No `Debug`, so it
/// cannot end up in a log.
#[derive(Deserialize, Clone)]
struct Creds {
    identifier: String,
    app_password: String,
    #[serde(default)]
    did: Option<String>,
    #[serde(default)]
    handle: Option<String>,
    #[serde(default)]
    access_jwt: Option<String>,
    #[serde(default)]
    refresh_jwt: Option<String>,
}

#[async_trait]
impl Adapter for Bluesky {
    fn platform(&self) -> &'static Platform {
        crate::registry("bluesky")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let mut session = Session::open(net, conn)?;
        session.login().await?;
        let handle = session.creds.handle.clone().unwrap_or_default();
        let did = session.creds.did.clone().unwrap_or_default();
        Ok(Verified {
            account: if handle.is_empty() { did.clone() } else { handle.clone() },
            credentials: session.credentials(&conn.credentials),
            settings: json!({ "service": session.service, "did": did, "handle": handle }),
        })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let mut session = Session::open(net, conn)?;
        if session.creds.access_jwt.is_none() || session.creds.did.is_none() {
            session.login().await?;
        }
        let record = record(net, &mut session, post).await?;
        let did = session.creds.did.clone().unwrap_or_default();
        let rkey = tid(post.created_at, &post.idempotency_key);
        let body = json!({ "repo": did, "collection": POST, "rkey": rkey, "record": record });
        let out = session.call("com.atproto.repo.putRecord", Call::Json(&body), Idempotent::Yes).await?;
        let uri = out["uri"].as_str().map(str::to_string).unwrap_or_else(|| format!("at://{did}/{POST}/{rkey}"));
        let who = session.creds.handle.clone().filter(|h| !h.is_empty()).unwrap_or(did);
        Ok(Published {
            id: uri,
            url: Some(format!("https://bsky.app/profile/{who}/post/{rkey}")),
            credentials: session.renewed.then(|| session.credentials(&conn.credentials)),
        })
    }

    async fn delete(&self, net: &Net, conn: &Connection, id: &str) -> Result<(), PlatformError> {
        let (repo, collection, rkey) =
            at_uri(id).ok_or_else(|| PlatformError::invalid(format!("`{id}` is not an at:// record URI")))?;
        let mut session = Session::open(net, conn)?;
        let body = json!({ "repo": repo, "collection": collection, "rkey": rkey });
        session.call("com.atproto.repo.deleteRecord", Call::Json(&body), Idempotent::Yes).await?;
        Ok(())
    }

    /// `likes`, `reposts`, `replies` and `quotes` from `app.bsky.feed.getPosts`, which the PDS
    /// answers through its AppView. `id` is the post's `at://` URI, as publish returns it.
    async fn metrics(&self, net: &Net, conn: &Connection, id: &str) -> Result<Option<Metrics>, PlatformError> {
        at_uri(id).ok_or_else(|| PlatformError::invalid(format!("`{id}` is not an at:// record URI")))?;
        let mut session = Session::open(net, conn)?;
        let out = session.call("app.bsky.feed.getPosts", Call::Query(&[("uris", id)]), Idempotent::Yes).await?;
        let posts = out["posts"].as_array().map(Vec::as_slice).unwrap_or_default();
        // The AppView leaves out posts it does not know (deleted, or not indexed yet).
        let Some(post) = posts.iter().find(|p| p["uri"] == id) else {
            return Err(PlatformError::invalid(format!("Bluesky does not show {id}; it may have been deleted"))
                .code("post_not_found"));
        };
        let mut m = Metrics::default()
            .with("likes", &post["likeCount"])
            .with("reposts", &post["repostCount"])
            .with("replies", &post["replyCount"])
            .with("quotes", &post["quoteCount"]);
        m.credentials = session.renewed.then(|| session.credentials(&conn.credentials));
        Ok(Some(m))
    }

    /// Repo writes are 5000 points an hour per account. Counting a post at a create's 3 points (a
    /// put costs 2; refreshes and uploads come on top) gives about 1666 an hour: 0.46 a second.
    fn idempotency(&self, _conn: &Connection) -> crate::Idempotency {
        // putRecord on the delivery's own rkey.
        crate::Idempotency::Forever
    }

    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let c = &conn.credentials.0;
        let who = c["did"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| c["identifier"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| conn.id.to_string());
        Some(Pacing { bucket: format!("bluesky:{who}"), capacity: 10.0, per_second: 0.46 })
    }
}

/// The rkey for a post: a TID (13 base32-sortable characters) from the post's creation time and
/// the idempotency key, so a retry writes the same key. The sub-millisecond digits come from the
/// key as well as the 10-bit clock id: thread parts share `created_at`, and ten bits alone would
/// let one part overwrite another about once in a thousand threads.
pub fn tid(created_at: DateTime<Utc>, idempotency_key: &str) -> String {
    const ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";
    let h = Sha256::digest(idempotency_key.as_bytes());
    let spread = u64::from(u16::from_be_bytes([h[0], h[1]])) % 1000;
    let clock = u64::from(u16::from_be_bytes([h[2], h[3]])) & 0x3ff;
    let micros = u64::try_from(created_at.timestamp_millis()).unwrap_or(0) * 1000 + spread;
    // 53 bits of microseconds, 10 of clock id, and the top bit always zero.
    let v = ((micros << 10) | clock) & (u64::MAX >> 1);
    (0..13).map(|i| ALPHABET[((v >> (60 - 5 * i)) & 31) as usize] as char).collect()
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// What an XRPC call sends.
enum Call<'b> {
    /// A POST with no body (`refreshSession`).
    Empty,
    Query(&'b [(&'b str, &'b str)]),
    Json(&'b Value),
    Blob(&'b bytes::Bytes, &'b str),
}

/// A session on one PDS, renewed as needed during one adapter call.
struct Session<'a> {
    via: Via<'a>,
    service: String,
    creds: Creds,
    /// The tokens changed (refreshed or a new login): the caller must store the new ones.
    renewed: bool,
}

/// How fresh the session behind a request is, to know what to try when the PDS refuses it.
#[derive(PartialEq)]
enum Freshness {
    Stored,
    Refreshed,
    LoggedIn,
}

impl<'a> Session<'a> {
    fn open(net: &'a Net, conn: &Connection) -> Result<Session<'a>, PlatformError> {
        let settings: Settings = if conn.settings.is_null() {
            Settings { service: None }
        } else {
            crate::settings(&conn.settings, "Bluesky")?
        };
        let service = service_url(settings.service.as_deref())?;
        let creds: Creds = conn.credentials.parse("Bluesky")?;
        if creds.identifier.trim().is_empty() || creds.app_password.is_empty() {
            return Err(
                PlatformError::invalid("the Bluesky handle and app password are both needed").code("bad_credentials")
            );
        }
        Ok(Session { via: net.safe(), service, creds, renewed: false })
    }

    /// The credentials to store: what was given, with the current session merged in.
    fn credentials(&self, given: &Credentials) -> Credentials {
        let mut c = match &given.0 {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        let now = &self.creds;
        c.insert("identifier".into(), json!(now.identifier));
        c.insert("app_password".into(), json!(now.app_password));
        let session = [
            ("did", &now.did),
            ("handle", &now.handle),
            ("access_jwt", &now.access_jwt),
            ("refresh_jwt", &now.refresh_jwt),
        ];
        for (k, v) in session {
            if let Some(v) = v {
                c.insert(k.into(), json!(v));
            }
        }
        Credentials(Value::Object(c))
    }

    /// `createSession` with the app password.
    async fn login(&mut self) -> Result<(), PlatformError> {
        let body = json!({ "identifier": self.creds.identifier.trim(), "password": self.creds.app_password });
        let reply = self.send("com.atproto.server.createSession", &Call::Json(&body), None, Idempotent::Yes).await?;
        if !reply.is_success() {
            let e = error(&reply);
            return Err(match e.code.as_deref() {
                Some("AuthFactorTokenRequired") => PlatformError::auth(
                    "this account asks for an emailed sign-in code; create an app password in Bluesky \
                     (Settings → Privacy and security → App passwords) and use it instead of the account password",
                )
                .status(reply.status)
                .code("AuthFactorTokenRequired"),
                _ if e.class == crate::ErrorClass::Auth => {
                    PlatformError { message: format!("Bluesky refused the login: {}", e.message), ..e }
                }
                _ => e,
            });
        }
        let out = reply.json();
        if out["active"] == json!(false) {
            let status = out["status"].as_str().unwrap_or("deactivated");
            return Err(PlatformError::auth(format!("the Bluesky account is {status}; reactivate it, then reconnect"))
                .code("AccountInactive"));
        }
        self.take(&out)
    }

    /// `refreshSession` with the refresh token. `Ok(false)` when the PDS no longer takes it.
    async fn refresh(&mut self) -> Result<bool, PlatformError> {
        let Some(refresh) = self.creds.refresh_jwt.clone() else { return Ok(false) };
        let reply =
            self.send("com.atproto.server.refreshSession", &Call::Empty, Some(&refresh), Idempotent::Yes).await?;
        if reply.is_success() {
            self.take(&reply.json())?;
            return Ok(true);
        }
        if stale(&reply) || reply.status == 401 {
            return Ok(false);
        }
        Err(error(&reply))
    }

    fn take(&mut self, out: &Value) -> Result<(), PlatformError> {
        let (Some(access), Some(refresh), Some(did)) =
            (out["accessJwt"].as_str(), out["refreshJwt"].as_str(), out["did"].as_str())
        else {
            return Err(PlatformError::transient("the PDS answered the login without a session"));
        };
        self.creds.access_jwt = Some(access.to_string());
        self.creds.refresh_jwt = Some(refresh.to_string());
        self.creds.did = Some(did.to_string());
        if let Some(h) = out["handle"].as_str() {
            self.creds.handle = Some(h.to_string());
        }
        self.renewed = true;
        Ok(())
    }

    /// An authenticated call. A refused token is refreshed, then replaced by a new login; a
    /// token refused right after a login means the account itself is refused.
    async fn call(&mut self, nsid: &str, call: Call<'_>, idempotent: Idempotent) -> Result<Value, PlatformError> {
        let mut freshness = Freshness::Stored;
        if self.creds.access_jwt.is_none() {
            self.login().await?;
            freshness = Freshness::LoggedIn;
        }
        loop {
            let token = self.creds.access_jwt.clone();
            let reply = self.send(nsid, &call, token.as_deref(), idempotent).await?;
            if reply.is_success() {
                return Ok(reply.json());
            }
            if !stale(&reply) || freshness == Freshness::LoggedIn {
                return Err(error(&reply));
            }
            if freshness == Freshness::Stored && self.refresh().await? {
                freshness = Freshness::Refreshed;
            } else {
                self.login().await?;
                freshness = Freshness::LoggedIn;
            }
        }
    }

    async fn send(
        &self,
        nsid: &str,
        call: &Call<'_>,
        token: Option<&str>,
        idempotent: Idempotent,
    ) -> Result<Reply, PlatformError> {
        let url = format!("{}/xrpc/{nsid}", self.service);
        let mut request = match call {
            Call::Empty => self.via.request(Method::POST, &url)?,
            Call::Query(q) => self.via.request(Method::GET, &url)?.query(q),
            Call::Json(v) => self.via.request(Method::POST, &url)?.json(v),
            Call::Blob(bytes, mime) => {
                self.via.request(Method::POST, &url)?.header(header::CONTENT_TYPE, *mime).body((*bytes).clone())
            }
        };
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        self.via.send(request, idempotent).await
    }
}

fn service_url(given: Option<&str>) -> Result<String, PlatformError> {
    let s = given.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_SERVICE);
    let bad = || {
        PlatformError::invalid("the Bluesky service must be an http(s) URL such as https://bsky.social")
            .code("bad_settings")
    };
    let url = url::Url::parse(s).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad());
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// The PDS refused the access token: expired, or one it cannot verify (rotated keys, a reset).
fn stale(reply: &Reply) -> bool {
    reply.status == 400 && matches!(reply.json()["error"].as_str(), Some("ExpiredToken" | "InvalidToken"))
}

/// An XRPC error body `{"error", "message"}` in Herald's classes.
fn error(reply: &Reply) -> PlatformError {
    let body = reply.json();
    let name = body["error"].as_str().unwrap_or_default().to_string();
    let message = body["message"]
        .as_str()
        .filter(|m| !m.trim().is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| if name.is_empty() { reply.snippet() } else { name.clone() });
    let e = match (reply.status, name.as_str()) {
        (429, _) => {
            let wait =
                reply.header("ratelimit-reset").and_then(until_epoch).or_else(|| retry_after_header(&reply.headers));
            PlatformError::rate_limited(message, wait)
        }
        (400, "ExpiredToken" | "InvalidToken" | "AccountTakedown") | (401 | 403, _) => PlatformError::auth(message),
        (400 | 404 | 413 | 415, _) => PlatformError::invalid(message),
        (status, _) => PlatformError::from_status(status, message, retry_after_header(&reply.headers)),
    }
    .status(reply.status);
    if name.is_empty() { e } else { e.code(name) }
}

/// `at://<repo>/<collection>/<rkey>`.
fn at_uri(uri: &str) -> Option<(&str, &str, &str)> {
    let mut parts = uri.strip_prefix("at://")?.splitn(3, '/');
    let (repo, collection, rkey) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = |s: &str| !s.is_empty() && !s.contains(['/', '?', '#']);
    (ok(repo) && ok(collection) && ok(rkey)).then_some((repo, collection, rkey))
}

// ---------------------------------------------------------------------------------------------
// The post record

async fn record(net: &Net, session: &mut Session<'_>, post: &Outgoing) -> Result<Value, PlatformError> {
    let mut record = json!({
        "$type": POST,
        "text": post.text,
        "createdAt": post.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    let facets = facets(&post.text);
    if !facets.is_empty() {
        record["facets"] = Value::Array(facets);
    }
    let langs = langs(&post.options)?;
    if !langs.is_empty() {
        record["langs"] = json!(langs);
    }
    if let Some(parent) = &post.reply_to {
        record["reply"] = reply_refs(session, parent).await?;
    }
    if !post.media.is_empty() {
        record["embed"] = images(session, post).await?;
    } else if let Some(link) = &post.link {
        record["embed"] = card(net, post, link).await;
    }
    Ok(record)
}

/// `options.langs`: a list, or one code, or a comma-separated string.
fn langs(options: &Value) -> Result<Vec<String>, PlatformError> {
    let langs: Vec<String> = match &options["langs"] {
        Value::Array(a) => a.iter().filter_map(|v| v.as_str()).map(str::to_string).collect(),
        Value::String(s) => s.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect(),
        _ => Vec::new(),
    };
    if langs.len() > 3 {
        return Err(PlatformError::invalid("a Bluesky post takes at most 3 languages").code("too_many_langs"));
    }
    Ok(langs)
}

/// `reply {root, parent}` for an answer to `parent`: the root is the parent's own root when the
/// parent is itself an answer.
async fn reply_refs(session: &mut Session<'_>, parent: &str) -> Result<Value, PlatformError> {
    let (repo, collection, rkey) = at_uri(parent).ok_or_else(|| {
        PlatformError::invalid(format!("the post to answer must be an at:// URI, not `{parent}`")).code("bad_reply_to")
    })?;
    let query = [("repo", repo), ("collection", collection), ("rkey", rkey)];
    let got = session.call("com.atproto.repo.getRecord", Call::Query(&query), Idempotent::Yes).await?;
    let Some(cid) = got["cid"].as_str() else {
        return Err(PlatformError::invalid(format!("the PDS gave no cid for {parent}")));
    };
    let uri = got["uri"].as_str().unwrap_or(parent);
    let parent = json!({ "uri": uri, "cid": cid });
    let root = &got["value"]["reply"]["root"];
    let root = if root["uri"].is_string() && root["cid"].is_string() {
        json!({ "uri": root["uri"], "cid": root["cid"] })
    } else {
        parent.clone()
    };
    Ok(json!({ "root": root, "parent": parent }))
}

/// Uploads the images and returns the `app.bsky.embed.images` embed.
async fn images(session: &mut Session<'_>, post: &Outgoing) -> Result<Value, PlatformError> {
    if post.media.iter().any(|m| m.kind != MediaKind::Image) {
        return Err(PlatformError::invalid("Bluesky posts from Herald take images only").code("unsupported_media"));
    }
    if post.media.len() > MAX_IMAGES {
        return Err(
            PlatformError::invalid(format!("a Bluesky post takes at most {MAX_IMAGES} images")).code("too_many_images")
        );
    }
    let mut images = Vec::with_capacity(post.media.len());
    for m in &post.media {
        let out = session.call("com.atproto.repo.uploadBlob", Call::Blob(&m.bytes, &m.mime), Idempotent::Yes).await?;
        if !out["blob"].is_object() {
            return Err(PlatformError::transient("the PDS took the image but returned no blob"));
        }
        images.push(json!({ "image": out["blob"], "alt": m.alt.clone().unwrap_or_default() }));
    }
    Ok(json!({ "$type": "app.bsky.embed.images", "images": images }))
}

/// The `app.bsky.embed.external` card for `link`: the title and description given in the
/// options, else read from the page, else the URL itself. A page that cannot be read never fails
/// the post.
async fn card(net: &Net, post: &Outgoing, link: &str) -> Value {
    let given_title = post.option_str("link_title").filter(|s| !s.trim().is_empty());
    let given_description = post.option_str("link_description");
    let page = match given_title {
        Some(_) => PageMeta::default(),
        None => page_meta(net, link).await,
    };
    let title = given_title.map(str::to_string).or(page.title).unwrap_or_else(|| link.to_string());
    let description = given_description.map(str::to_string).or(page.description).unwrap_or_default();
    json!({
        "$type": "app.bsky.embed.external",
        "external": { "uri": link, "title": title, "description": description },
    })
}

#[derive(Default, Debug, PartialEq)]
struct PageMeta {
    title: Option<String>,
    description: Option<String>,
}

/// Reads the start of a page through the guarded client and takes its card fields.
async fn page_meta(net: &Net, url: &str) -> PageMeta {
    let fetch = async {
        let request = net.safe.request(Method::GET, url).ok()?.header(header::ACCEPT, "text/html");
        let mut response = net.safe.send(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        // Only the head matters: stop at the cap instead of failing on a long page.
        let mut body = Vec::new();
        while body.len() < PAGE_CAP {
            match response.chunk().await.ok()? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        body.truncate(PAGE_CAP);
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    match tokio::time::timeout(PAGE_TIMEOUT, fetch).await {
        Ok(Some(html)) => parse_meta(&html),
        _ => PageMeta::default(),
    }
}

/// `og:title` / `og:description`, falling back to `<title>` and `<meta name=description>`.
fn parse_meta(html: &str) -> PageMeta {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `html`.
    let lower = html.to_ascii_lowercase();
    let (mut og_title, mut og_description, mut description) = (None, None, None);
    let mut at = 0;
    while let Some(i) = lower[at..].find("<meta") {
        let start = at + i;
        let Some(len) = lower[start..].find('>') else { break };
        let attrs = attributes(&html[start + 5..start + len]);
        let get = |name: &str| attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let key = get("property").or_else(|| get("name")).unwrap_or_default().to_ascii_lowercase();
        if let Some(content) = get("content").map(clean).filter(|c| !c.is_empty()) {
            match key.as_str() {
                "og:title" if og_title.is_none() => og_title = Some(content),
                "og:description" if og_description.is_none() => og_description = Some(content),
                "description" if description.is_none() => description = Some(content),
                _ => {}
            }
        }
        at = start + len;
    }
    let title = lower.find("<title").and_then(|i| {
        let open = i + lower[i..].find('>')? + 1;
        let close = open + lower[open..].find("</title")?;
        Some(clean(&html[open..close])).filter(|t| !t.is_empty())
    });
    PageMeta {
        title: og_title.or(title).map(|t| cut(&t, 300)),
        description: og_description.or(description).map(|d| cut(&d, 1000)),
    }
}

/// The attributes of one tag, names lowercased, values unquoted.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = tag.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace() || *c == '/').is_some() {}
        let Some(&(start, _)) = chars.peek() else { break };
        while chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=' && *c != '/').is_some() {}
        let end = chars.peek().map_or(tag.len(), |(i, _)| *i);
        let name = tag[start..end].to_ascii_lowercase();
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            if name.is_empty() {
                chars.next();
            }
            continue;
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let value = match chars.peek().copied() {
            Some((i, q @ ('"' | '\''))) => {
                chars.next();
                let mut end = tag.len();
                for (j, c) in chars.by_ref() {
                    if c == q {
                        end = j;
                        break;
                    }
                }
                &tag[i + 1..end]
            }
            Some((i, _)) => {
                while chars.next_if(|(_, c)| !c.is_whitespace()).is_some() {}
                &tag[i..chars.peek().map_or(tag.len(), |(j, _)| *j)]
            }
            None => "",
        };
        out.push((name, value.to_string()));
    }
    out
}

/// Decodes the common entities and folds whitespace.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let decoded = rest.find(';').filter(|&j| j <= 10).and_then(|j| {
            let entity = &rest[1..j];
            let c = match entity {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                "nbsp" => ' ',
                _ => {
                    let n = entity.strip_prefix('#')?;
                    let code = match n.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => n.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, j + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cut(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Facets: Bluesky does not link anything itself; the client marks links and tags by UTF-8 byte
// ranges (start inclusive, end exclusive).

/// Link facets for every http(s) URL and tag facets for every `#tag`, in text order.
pub fn facets(text: &str) -> Vec<Value> {
    let mut out: Vec<(usize, Value)> = Vec::new();
    for (start, end) in links(text) {
        out.push((
            start,
            facet(start, end, json!({ "$type": "app.bsky.richtext.facet#link", "uri": &text[start..end] })),
        ));
    }
    for (start, end) in tags(text) {
        let tag = text[start..end].trim_start_matches(['#', '＃']);
        out.push((start, facet(start, end, json!({ "$type": "app.bsky.richtext.facet#tag", "tag": tag }))));
    }
    out.sort_by_key(|(start, _)| *start);
    out.into_iter().map(|(_, f)| f).collect()
}

fn facet(start: usize, end: usize, feature: Value) -> Value {
    json!({ "index": { "byteStart": start, "byteEnd": end }, "features": [feature] })
}

/// Byte ranges of the http(s) URLs: from the scheme to the next space, less trailing punctuation
/// and unbalanced closing parentheses, so `(see https://x.org/a_(b))` keeps the inner pair.
fn links(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut prev: Option<char> = None;
    let mut skip_to = 0;
    for (i, c) in text.char_indices() {
        let boundary = prev.is_none_or(|p| p.is_whitespace() || p == '(');
        prev = Some(c);
        if i < skip_to || !boundary || !(c == 'h' || c == 'H') {
            continue;
        }
        let rest = &text[i..];
        let scheme = ["https://", "http://"]
            .into_iter()
            .find(|s| rest.get(..s.len()).is_some_and(|head| head.eq_ignore_ascii_case(s)));
        let Some(scheme) = scheme else { continue };
        let mut end = i + rest.find(char::is_whitespace).unwrap_or(rest.len());
        loop {
            let url = &text[i..end];
            let Some(last) = url.chars().last() else { break };
            let unbalanced = last == ')' && url.matches(')').count() > url.matches('(').count();
            if ".,;:!?\"'".contains(last) || unbalanced {
                end -= last.len_utf8();
            } else {
                break;
            }
        }
        if end > i + scheme.len() {
            out.push((i, end));
            skip_to = end;
        }
    }
    out
}

/// Byte ranges of `#tags` (the `#` included): after a space or at the start, up to the next space,
/// less trailing punctuation; not only digits; at most 64 characters.
fn tags(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        let boundary = prev.is_none_or(char::is_whitespace);
        prev = Some(c);
        if !boundary || !(c == '#' || c == '＃') {
            continue;
        }
        let body_start = i + c.len_utf8();
        let rest = &text[body_start..];
        // `#️⃣` is the keycap emoji, not a tag.
        if rest.starts_with(['\u{fe0f}', '\u{20e3}']) {
            continue;
        }
        let word = &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())];
        let tag = word.trim_end_matches(is_punctuation);
        let n = tag.chars().count();
        if n == 0 || n > 64 || !tag.chars().any(|c| !c.is_ascii_digit() && !is_punctuation(c)) {
            continue;
        }
        out.push((i, body_start + tag.len()));
    }
    out
}

/// Unicode punctuation (`\p{P}`) for the characters that end words in practice.
fn is_punctuation(c: char) -> bool {
    matches!(
        c,
        '!' | '"' | '#' | '%' | '&' | '\'' | '(' | ')' | '*' | ',' | '-' | '.' | '/' | ':' | ';' | '?' | '@' | '['
            | '\\' | ']' | '_' | '{' | '}' | '¡' | '§' | '«' | '¶' | '·' | '»' | '¿' | '‐'..='‧' | '‰'..='⁞'
            | '、' | '。' | '「' | '」' | '『' | '』' | '【' | '】' | '！' | '，' | '．' | '：' | '；' | '？'
    )
}

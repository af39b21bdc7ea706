//! A fake Bluesky PDS: the XRPC routes Herald uses, with the reference PDS's answers. Sessions
//! rotate on refresh (the old refresh token stops working at once, stricter than the real grace
//! period), access tokens can be expired on demand, `putRecord` of an unchanged record is a no-op
//! with the same cid, `createRecord` on a taken rkey is a 500 as in the real PDS, and records are
//! checked against the `app.bsky.feed.post` lexicon limits (300 graphemes, 3000 bytes, known
//! blobs, at most 4 images). `app.bsky.feed.getPosts` answers post views with the engagement
//! counts a test sets (`State::engage`), as the PDS does by proxying its AppView.
//!
//! ```ignore
//! let fake = herald_testkit::bluesky::start().await;
//! // settings {"service": fake.url}, credentials {"identifier": HANDLE, "app_password": PASSWORD}
//! fake.data().expire_access_tokens(); // the next call gets 400 ExpiredToken
//! assert_eq!(fake.data().posts().len(), 1);
//! ```

use crate::{Failure, FakeServer, Shared, bearer, json, json_with};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State as Ctx};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub const HANDLE: &str = "alice.test";
pub const DID: &str = "did:plc:alice4fake4pds4herald4";
pub const EMAIL: &str = "alice@test.invalid";
/// An app password in Bluesky's own shape.
pub const PASSWORD: &str = "abcd-efgh-ijkl-mnop";

const POST: &str = "app.bsky.feed.post";

type Sh = Arc<Shared<State>>;

pub struct Account {
    pub did: String,
    pub handle: String,
    pub email: String,
    pub password: String,
}

/// A token the fake handed out.
pub struct Token {
    pub did: String,
    pub expired: bool,
}

/// A record in a repo.
#[derive(Debug, Clone)]
pub struct Record {
    pub repo: String,
    pub collection: String,
    pub rkey: String,
    pub cid: String,
    pub value: Value,
}

impl Record {
    pub fn uri(&self) -> String {
        format!("at://{}/{}/{}", self.repo, self.collection, self.rkey)
    }
}

/// What the AppView counts for a post.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Engagement {
    pub likes: u64,
    pub reposts: u64,
    pub replies: u64,
    pub quotes: u64,
}

#[derive(Debug, Clone)]
pub struct Blob {
    pub cid: String,
    pub mime: String,
    pub bytes: Bytes,
}

pub struct State {
    pub accounts: Vec<Account>,
    pub access_tokens: HashMap<String, Token>,
    pub refresh_tokens: HashMap<String, Token>,
    /// Every record, in the order first written.
    pub records: Vec<Record>,
    pub blobs: Vec<Blob>,
    /// Web pages served at `/pages/<name>` (for link cards).
    pub pages: HashMap<String, String>,
    /// `createSession` answers 401 `AuthFactorTokenRequired` (email 2FA on, no app password).
    pub auth_factor_required: bool,
    pub max_graphemes: usize,
    pub max_bytes: usize,
    pub max_image_bytes: usize,
    /// The PDS's `blobUploadLimit`.
    pub blob_upload_limit: usize,
    /// A counter for commit revs and token ids.
    pub seq: u64,
    /// Post URI -> its counts in `getPosts` (zero when absent).
    pub engagement: HashMap<String, Engagement>,
}

impl Default for State {
    fn default() -> Self {
        State {
            accounts: vec![Account {
                did: DID.into(),
                handle: HANDLE.into(),
                email: EMAIL.into(),
                password: PASSWORD.into(),
            }],
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            records: Vec::new(),
            blobs: Vec::new(),
            pages: HashMap::new(),
            auth_factor_required: false,
            max_graphemes: 300,
            max_bytes: 3000,
            max_image_bytes: 2_000_000,
            blob_upload_limit: 5 << 20,
            seq: 0,
            engagement: HashMap::new(),
        }
    }
}

impl State {
    /// Every access token handed out so far now answers 400 `ExpiredToken`.
    pub fn expire_access_tokens(&mut self) {
        self.access_tokens.values_mut().for_each(|t| t.expired = true);
    }

    /// Every refresh token handed out so far now answers 400 `ExpiredToken`.
    pub fn expire_refresh_tokens(&mut self) {
        self.refresh_tokens.values_mut().for_each(|t| t.expired = true);
    }

    /// Forgets every session (as after a password change): tokens answer 400 `InvalidToken`.
    pub fn revoke_sessions(&mut self) {
        self.access_tokens.clear();
        self.refresh_tokens.clear();
    }

    /// The posts, in the order first written.
    pub fn posts(&self) -> Vec<Record> {
        self.records.iter().filter(|r| r.collection == POST).cloned().collect()
    }

    /// Sets what the AppView counts for the post at `uri`.
    pub fn engage(&mut self, uri: &str, engagement: Engagement) {
        self.engagement.insert(uri.to_string(), engagement);
    }

    pub fn record(&self, rkey: &str) -> Option<&Record> {
        self.records.iter().find(|r| r.rkey == rkey)
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn issue(&mut self, did: &str) -> (String, String) {
        let n = self.next();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let access = format!("fake-access.{n}.{id}");
        let refresh = format!("fake-refresh.{n}.{id}");
        self.access_tokens.insert(access.clone(), Token { did: did.into(), expired: false });
        self.refresh_tokens.insert(refresh.clone(), Token { did: did.into(), expired: false });
        (access, refresh)
    }

    fn account(&self, did: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.did == did)
    }

    /// The account a `repo` parameter names (a DID or a handle).
    fn repo(&self, repo: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.did == repo || a.handle.eq_ignore_ascii_case(repo))
    }
}

pub async fn start() -> FakeServer<State> {
    start_with(State::default()).await
}

pub async fn start_with(state: State) -> FakeServer<State> {
    let router = Router::new()
        .route("/xrpc/com.atproto.server.createSession", post(create_session))
        .route("/xrpc/com.atproto.server.refreshSession", post(refresh_session))
        .route("/xrpc/com.atproto.server.getSession", get(get_session))
        .route("/xrpc/com.atproto.repo.putRecord", post(put_record))
        .route("/xrpc/com.atproto.repo.createRecord", post(create_record))
        .route("/xrpc/com.atproto.repo.getRecord", get(get_record))
        .route("/xrpc/com.atproto.repo.deleteRecord", post(delete_record))
        .route("/xrpc/com.atproto.repo.listRecords", get(list_records))
        .route("/xrpc/com.atproto.repo.uploadBlob", post(upload_blob))
        .route("/xrpc/app.bsky.feed.getPosts", get(get_posts))
        .route("/pages/{name}", get(page))
        .fallback(|| async { xrpc(404, "XRPCNotSupported", "XRPCNotSupported") });
    FakeServer::start(router, state, render).await
}

/// An XRPC error body.
pub fn xrpc(status: u16, error: &str, message: &str) -> Response {
    json(status, json!({ "error": error, "message": message }))
}

/// Failures as the reference PDS sends them.
fn render(failure: &Failure) -> Response {
    match failure {
        Failure::RateLimited { retry_after_secs } => {
            let reset = chrono::Utc::now().timestamp() + *retry_after_secs as i64;
            json_with(
                429,
                &[
                    ("RateLimit-Limit", "5000".into()),
                    ("RateLimit-Remaining", "0".into()),
                    ("RateLimit-Reset", reset.to_string()),
                    ("RateLimit-Policy", "5000;w=3600".into()),
                ],
                json!({ "error": "RateLimitExceeded", "message": "Rate Limit Exceeded" }),
            )
        }
        Failure::Unauthorized => xrpc(401, "AuthenticationRequired", "Authentication Required"),
        Failure::ServerError(status) => {
            let (name, message) = match status {
                502 => ("UpstreamFailure", "Upstream Failure"),
                503 => ("NotEnoughResources", "Not Enough Resources"),
                504 => ("UpstreamTimeout", "Upstream Timeout"),
                _ => ("InternalServerError", "Internal Server Error"),
            };
            xrpc(*status, name, message)
        }
        Failure::Named("ExpiredToken") => xrpc(400, "ExpiredToken", "Token has expired"),
        Failure::Named("InvalidToken") => xrpc(400, "InvalidToken", "Token could not be verified"),
        Failure::Named("AuthFactorTokenRequired") => {
            xrpc(401, "AuthFactorTokenRequired", "A sign in code has been sent to your email address")
        }
        Failure::Named("AccountTakedown") => xrpc(401, "AccountTakedown", "Account has been taken down"),
        Failure::Named("PayloadTooLarge") => xrpc(413, "PayloadTooLarge", "request entity too large"),
        Failure::Named(name) => xrpc(400, name, name),
        Failure::AnswerLate(_) | Failure::Hang(_) => xrpc(500, "InternalServerError", "Internal Server Error"),
    }
}

/// An XRPC error on its way out: `{"error", "message"}` with its status.
pub struct XrpcError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

fn fail<T>(status: u16, error: &str, message: impl Into<String>) -> Result<T, XrpcError> {
    Err(XrpcError { status, error: error.into(), message: message.into() })
}

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        xrpc(self.status, &self.error, &self.message)
    }
}

type Answer = Result<Response, XrpcError>;

// ---------------------------------------------------------------------------------------------
// Sessions

fn session_body(account: &Account, access: &str, refresh: &str) -> Value {
    json!({
        "accessJwt": access,
        "refreshJwt": refresh,
        "handle": account.handle,
        "did": account.did,
        "email": account.email,
        "emailConfirmed": false,
        "active": true,
    })
}

fn body_json(body: &Bytes) -> Result<Value, XrpcError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => fail(400, "InvalidRequest", "Input must be an object"),
    }
}

async fn create_session(Ctx(sh): Ctx<Sh>, body: Bytes) -> Answer {
    let input = body_json(&body)?;
    let (Some(identifier), Some(password)) = (input["identifier"].as_str(), input["password"].as_str()) else {
        return fail(400, "InvalidRequest", "Input must have the property \"identifier\"");
    };
    let identifier = identifier.to_lowercase();
    let mut data = sh.data();
    let Some(account) = data
        .accounts
        .iter()
        .find(|a| a.handle == identifier || a.email == identifier || a.did == identifier)
        .filter(|a| a.password == password)
    else {
        return fail(401, "AuthenticationRequired", "Invalid identifier or password");
    };
    if data.auth_factor_required {
        return fail(401, "AuthFactorTokenRequired", "A sign in code has been sent to your email address");
    }
    let did = account.did.clone();
    let (access, refresh) = data.issue(&did);
    let account = data.account(&did).expect("the account just found");
    Ok(json(200, session_body(account, &access, &refresh)))
}

/// Who a token from `tokens` belongs to, or the PDS's answer to a missing, unknown or expired
/// one (a token of the other kind is a bad scope).
fn token_owner(
    tokens: &HashMap<String, Token>,
    other: &HashMap<String, Token>,
    headers: &HeaderMap,
) -> Result<String, XrpcError> {
    let Some(token) = bearer(headers) else {
        return fail(401, "AuthMissing", "Authentication Required");
    };
    match tokens.get(&token) {
        Some(t) if t.expired => fail(400, "ExpiredToken", "Token has expired"),
        Some(t) => Ok(t.did.clone()),
        None if other.contains_key(&token) => fail(400, "InvalidToken", "Bad token scope"),
        None => fail(400, "InvalidToken", "Token could not be verified"),
    }
}

fn authed(state: &State, headers: &HeaderMap) -> Result<String, XrpcError> {
    token_owner(&state.access_tokens, &state.refresh_tokens, headers)
}

async fn refresh_session(Ctx(sh): Ctx<Sh>, headers: HeaderMap) -> Answer {
    let mut data = sh.data();
    let did = token_owner(&data.refresh_tokens, &data.access_tokens, &headers)?;
    // Rotation: the old refresh token is spent.
    if let Some(old) = bearer(&headers) {
        data.refresh_tokens.remove(&old);
    }
    let (access, refresh) = data.issue(&did);
    match data.account(&did) {
        Some(account) => Ok(json(200, session_body(account, &access, &refresh))),
        None => fail(400, "InvalidToken", "Token could not be verified"),
    }
}

async fn get_session(Ctx(sh): Ctx<Sh>, headers: HeaderMap) -> Answer {
    let data = sh.data();
    let did = authed(&data, &headers)?;
    match data.account(&did) {
        Some(a) => Ok(json(200, json!({ "handle": a.handle, "did": a.did, "email": a.email, "active": true }))),
        None => fail(400, "InvalidToken", "Token could not be verified"),
    }
}

// ---------------------------------------------------------------------------------------------
// Records

/// The authenticated account's DID and the collection of a write to `repo`.
fn write_target(data: &State, headers: &HeaderMap, input: &Value) -> Result<(String, String), XrpcError> {
    let did = authed(data, headers)?;
    let (Some(repo), Some(collection)) = (input["repo"].as_str(), input["collection"].as_str()) else {
        return fail(400, "InvalidRequest", "Input must have the properties \"repo\" and \"collection\"");
    };
    match data.repo(repo) {
        None => fail(400, "InvalidRequest", format!("Could not find repo: {repo}")),
        Some(a) if a.did != did => fail(401, "AuthenticationRequired", "Authentication Required"),
        Some(_) => Ok((did, collection.to_string())),
    }
}

async fn put_record(Ctx(sh): Ctx<Sh>, headers: HeaderMap, body: Bytes) -> Answer {
    let input = body_json(&body)?;
    let mut data = sh.data();
    let (did, collection) = write_target(&data, &headers, &input)?;
    let Some(rkey) = input["rkey"].as_str().map(str::to_string) else {
        return fail(400, "InvalidRequest", "Input must have the property \"rkey\"");
    };
    check_rkey(&collection, &rkey)?;
    let value = input["record"].clone();
    validate(&data, &collection, &value)?;
    let cid = cid("bafyrei", value.to_string().as_bytes());
    let uri = format!("at://{did}/{collection}/{rkey}");
    let existing = data.records.iter_mut().find(|r| r.repo == did && r.collection == collection && r.rkey == rkey);
    match existing {
        // The reference PDS answers an unchanged put with the same cid and no commit.
        Some(r) if r.cid == cid => {
            return Ok(json(200, json!({ "uri": uri, "cid": cid, "validationStatus": "valid" })));
        }
        Some(r) => {
            r.value = value;
            r.cid = cid.clone();
        }
        None => data.records.push(Record { repo: did, collection, rkey, cid: cid.clone(), value }),
    }
    let rev = data.next();
    Ok(json(200, json!({ "uri": uri, "cid": cid, "commit": commit(rev), "validationStatus": "valid" })))
}

async fn create_record(Ctx(sh): Ctx<Sh>, headers: HeaderMap, body: Bytes) -> Answer {
    let input = body_json(&body)?;
    let mut data = sh.data();
    let (did, collection) = write_target(&data, &headers, &input)?;
    let rkey = match input["rkey"].as_str() {
        Some(k) => k.to_string(),
        None => {
            let n = data.next();
            tid(chrono::Utc::now().timestamp_micros() as u64, n)
        }
    };
    check_rkey(&collection, &rkey)?;
    if data.records.iter().any(|r| r.repo == did && r.collection == collection && r.rkey == rkey) {
        // "There is already a value at key": an unmapped error in the reference PDS.
        return fail(500, "InternalServerError", "Internal Server Error");
    }
    let value = input["record"].clone();
    validate(&data, &collection, &value)?;
    let cid = cid("bafyrei", value.to_string().as_bytes());
    let uri = format!("at://{did}/{collection}/{rkey}");
    data.records.push(Record { repo: did, collection, rkey, cid: cid.clone(), value });
    let rev = data.next();
    Ok(json(200, json!({ "uri": uri, "cid": cid, "commit": commit(rev), "validationStatus": "valid" })))
}

async fn get_record(Ctx(sh): Ctx<Sh>, Query(q): Query<HashMap<String, String>>) -> Answer {
    let data = sh.data();
    let (Some(repo), Some(collection), Some(rkey)) = (q.get("repo"), q.get("collection"), q.get("rkey")) else {
        return fail(
            400,
            "InvalidRequest",
            "Error: Params must have the properties \"repo\", \"collection\", \"rkey\"",
        );
    };
    let Some(account) = data.repo(repo) else {
        return fail(400, "InvalidRequest", format!("Could not find repo: {repo}"));
    };
    let found = data.records.iter().find(|r| r.repo == account.did && &r.collection == collection && &r.rkey == rkey);
    match found {
        Some(r) => Ok(json(200, json!({ "uri": r.uri(), "cid": r.cid, "value": r.value }))),
        None => {
            fail(400, "RecordNotFound", format!("Could not locate record: at://{}/{collection}/{rkey}", account.did))
        }
    }
}

async fn delete_record(Ctx(sh): Ctx<Sh>, headers: HeaderMap, body: Bytes) -> Answer {
    let input = body_json(&body)?;
    let mut data = sh.data();
    let (did, collection) = write_target(&data, &headers, &input)?;
    let rkey = input["rkey"].as_str().unwrap_or_default().to_string();
    let before = data.records.len();
    data.records.retain(|r| !(r.repo == did && r.collection == collection && r.rkey == rkey));
    // Deleting a record that is not there is a no-op, without a commit.
    if data.records.len() == before {
        return Ok(json(200, json!({})));
    }
    let rev = data.next();
    Ok(json(200, json!({ "commit": commit(rev) })))
}

async fn list_records(Ctx(sh): Ctx<Sh>, Query(q): Query<HashMap<String, String>>) -> Answer {
    let data = sh.data();
    let (Some(repo), Some(collection)) = (q.get("repo"), q.get("collection")) else {
        return fail(400, "InvalidRequest", "Error: Params must have the properties \"repo\", \"collection\"");
    };
    let Some(account) = data.repo(repo) else {
        return fail(400, "InvalidRequest", format!("Could not find repo: {repo}"));
    };
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50usize).min(100);
    // Newest first: the PDS lists by rkey, descending.
    let mut records: Vec<&Record> =
        data.records.iter().filter(|r| r.repo == account.did && &r.collection == collection).collect();
    records.sort_by(|a, b| b.rkey.cmp(&a.rkey));
    let records: Vec<Value> =
        records.into_iter().take(limit).map(|r| json!({ "uri": r.uri(), "cid": r.cid, "value": r.value })).collect();
    Ok(json(200, json!({ "records": records })))
}

async fn upload_blob(Ctx(sh): Ctx<Sh>, headers: HeaderMap, body: Bytes) -> Answer {
    let mut data = sh.data();
    authed(&data, &headers)?;
    if body.len() > data.blob_upload_limit {
        return fail(413, "PayloadTooLarge", "request entity too large");
    }
    let mime =
        headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/octet-stream").to_string();
    let cid = cid("bafkrei", &body);
    if !data.blobs.iter().any(|b| b.cid == cid) {
        data.blobs.push(Blob { cid: cid.clone(), mime: mime.clone(), bytes: body.clone() });
    }
    let blob = json!({ "$type": "blob", "ref": { "$link": cid }, "mimeType": mime, "size": body.len() });
    Ok(json(200, json!({ "blob": blob })))
}

/// `app.bsky.feed.getPosts?uris=…&uris=…` (at most 25): a `postView` for each post the AppView
/// knows, in the order asked; unknown ones are left out, not an error.
async fn get_posts(Ctx(sh): Ctx<Sh>, headers: HeaderMap, RawQuery(query): RawQuery) -> Answer {
    let data = sh.data();
    authed(&data, &headers)?;
    let uris: Vec<String> = crate::vk::form_pairs(query.unwrap_or_default().as_bytes())
        .into_iter()
        .filter(|(k, _)| k == "uris")
        .map(|(_, v)| v)
        .collect();
    if uris.is_empty() {
        return fail(400, "InvalidRequest", "Error: Params must have the property \"uris\"");
    }
    if uris.len() > 25 {
        return fail(400, "InvalidRequest", "Error: uris must not have more than 25 elements");
    }
    let posts: Vec<Value> = uris
        .iter()
        .filter_map(|uri| data.records.iter().find(|r| r.collection == POST && &r.uri() == uri))
        .map(|r| {
            let e = data.engagement.get(&r.uri()).copied().unwrap_or_default();
            let handle = data.account(&r.repo).map(|a| a.handle.clone()).unwrap_or_default();
            json!({
                "uri": r.uri(),
                "cid": r.cid,
                "author": { "did": r.repo, "handle": handle },
                "record": r.value,
                "replyCount": e.replies,
                "repostCount": e.reposts,
                "likeCount": e.likes,
                "quoteCount": e.quotes,
                "indexedAt": r.value["createdAt"],
                "labels": [],
            })
        })
        .collect();
    Ok(json(200, json!({ "posts": posts })))
}

async fn page(Ctx(sh): Ctx<Sh>, Path(name): Path<String>) -> Response {
    match sh.data().pages.get(&name) {
        Some(html) => ([("content-type", "text/html; charset=utf-8")], html.clone()).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "no such page").into_response(),
    }
}

fn commit(rev: u64) -> Value {
    json!({ "cid": cid("bafyrei", format!("commit-{rev}").as_bytes()), "rev": tid(rev, 0) })
}

/// Posts are keyed by TID: 13 base32-sortable characters, the first at most `j`.
fn check_rkey(collection: &str, rkey: &str) -> Result<(), XrpcError> {
    const S32: &str = "234567abcdefghijklmnopqrstuvwxyz";
    let ok = if collection == POST {
        rkey.len() == 13 && rkey.chars().all(|c| S32.contains(c)) && rkey.as_bytes()[0] <= b'j'
    } else {
        !rkey.is_empty() && rkey.len() <= 512 && rkey != "." && rkey != ".."
    };
    if ok { Ok(()) } else { fail(400, "InvalidRequest", format!("Invalid record key: {rkey}")) }
}

/// The `app.bsky.feed.post` lexicon checks a write fails on.
fn validate(data: &State, collection: &str, record: &Value) -> Result<(), XrpcError> {
    let Some(kind) = record["$type"].as_str() else {
        return fail(400, "InvalidRequest", "No $type provided");
    };
    if kind != collection {
        return fail(400, "InvalidRequest", format!("Invalid $type: expected {collection}, got {kind}"));
    }
    if collection != POST {
        return Ok(());
    }
    let bad = |what: String| fail(400, "InvalidRequest", format!("Invalid app.bsky.feed.post record: {what}"));
    let Some(text) = record["text"].as_str() else {
        return bad("Record must have the property \"text\"".into());
    };
    let graphemes = graphemes(text);
    if graphemes > data.max_graphemes {
        return bad(format!("grapheme too big (maximum {}, got {graphemes}) at $.record.text", data.max_graphemes));
    }
    if text.len() > data.max_bytes {
        return bad(format!("string too long (maximum {}, got {}) at $.record.text", data.max_bytes, text.len()));
    }
    match record["createdAt"].as_str() {
        Some(at) if chrono::DateTime::parse_from_rfc3339(at).is_ok() => {}
        _ => return bad("Record/createdAt must be an valid atproto datetime (both RFC-3339 and ISO-8601)".into()),
    }
    if record["langs"].as_array().is_some_and(|l| l.len() > 3) {
        return bad("Record/langs must not have more than 3 elements".into());
    }
    for facet in record["facets"].as_array().into_iter().flatten() {
        if facet["index"]["byteStart"].as_u64().is_none() || facet["index"]["byteEnd"].as_u64().is_none() {
            return bad("Record/facets/index must have the properties \"byteStart\" and \"byteEnd\"".into());
        }
        if facet["features"].as_array().is_none_or(|f| f.iter().any(|f| !f["$type"].is_string())) {
            return bad("Record/facets/features must be an array of typed objects".into());
        }
    }
    if !record["reply"].is_null() {
        for part in ["root", "parent"] {
            let r = &record["reply"][part];
            if !(r["uri"].is_string() && r["cid"].is_string()) {
                return bad(format!("Record/reply/{part} must be a strongRef {{uri, cid}}"));
            }
        }
    }
    let embed = &record["embed"];
    match embed["$type"].as_str() {
        None if embed.is_null() => {}
        Some("app.bsky.embed.images") => {
            let images = embed["images"].as_array().cloned().unwrap_or_default();
            if images.is_empty() || images.len() > 4 {
                return bad("Record/embed/images must not have more than 4 elements".into());
            }
            for image in &images {
                if !image["alt"].is_string() {
                    return bad("Record/embed/images/0 must have the property \"alt\"".into());
                }
                let link = image["image"]["ref"]["$link"].as_str().unwrap_or_default();
                let Some(blob) = data.blobs.iter().find(|b| b.cid == link) else {
                    return fail(400, "BlobNotFound", format!("Could not find blob: {link}"));
                };
                if !blob.mime.starts_with("image/") {
                    return bad(format!("Wrong type of file. It is {} but it must match image/*.", blob.mime));
                }
                if blob.bytes.len() > data.max_image_bytes {
                    return bad(format!(
                        "This file is too large. It is {} bytes but the maximum size is {} bytes.",
                        blob.bytes.len(),
                        data.max_image_bytes
                    ));
                }
            }
        }
        Some("app.bsky.embed.external") => {
            let ext = &embed["external"];
            if !(ext["uri"].is_string() && ext["title"].is_string() && ext["description"].is_string()) {
                return bad("Record/embed/external must have the properties \"uri\", \"title\", \"description\"".into());
            }
        }
        Some(_) => {}
        None => return bad("Record/embed must be an object which includes the \"$type\" property".into()),
    }
    Ok(())
}

/// Grapheme clusters, approximately (UAX #29 for what posts hold in practice): combining marks,
/// variation selectors, skin tones, tag characters and ZWJ sequences join the cluster before
/// them, and regional indicators pair into flags.
pub fn graphemes(text: &str) -> usize {
    let mut count = 0;
    let mut prev_zwj = false;
    let mut open_flag = false;
    for c in text.chars() {
        let u = c as u32;
        let extends = matches!(u,
            0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F
            | 0xFE00..=0xFE0F | 0x1F3FB..=0x1F3FF | 0xE0020..=0xE007F | 0x200D);
        let regional = (0x1F1E6..=0x1F1FF).contains(&u);
        let joins = extends || prev_zwj || (regional && open_flag);
        if !joins {
            count += 1;
        }
        open_flag = regional && !(joins && open_flag);
        prev_zwj = u == 0x200D;
    }
    count
}

/// A stand-in CID: stable for the same bytes, different for different ones.
fn cid(prefix: &str, bytes: &[u8]) -> String {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (bytes, 0x5eed_u32).hash(&mut b);
    format!("{prefix}{:016x}{:016x}", a.finish(), b.finish())
}

/// A TID from microseconds and a clock id.
fn tid(micros: u64, clock: u64) -> String {
    const S32: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";
    let v = ((micros << 10) | (clock & 0x3ff)) & (u64::MAX >> 1);
    (0..13).map(|i| S32[((v >> (60 - 5 * i)) & 31) as usize] as char).collect()
}

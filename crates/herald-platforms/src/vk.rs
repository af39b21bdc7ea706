//! VK: `wall.post` on a user's or a community's wall through `https://api.vk.com/method`, API
//! version 5.199. The token travels as a form field of a POST, never in a URL that could be
//! logged. VK answers errors with HTTP 200 and `{"error":{"error_code",...}}`; its upload servers
//! have a shape of their own. `guid` makes a retried `wall.post` return the first post.
//!
//! VK documents `wall.post`, `photos.getWallUploadServer` and `video.save` for user tokens only:
//! a community token gets error 27 there, so a community wall is posted to with the token of one
//! of its admins and `from_group`.

use crate::net::{Idempotent, Reply};
use crate::{Adapter, Connection, MediaKind, Net, Outgoing, Pacing, Platform, PlatformError, Published, Verified};
use async_trait::async_trait;
use herald_http::{Method, multipart};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

pub struct Vk;

pub const API_BASE: &str = "https://api.vk.com/method";
pub const VERSION: &str = "5.199";

#[derive(Deserialize)]
struct Credentials {
    access_token: String,
}

#[derive(Deserialize)]
struct RawSettings {
    owner_id: Value,
    from_group: Option<bool>,
    token_kind: Option<String>,
}

struct Settings {
    /// Negative for a community.
    owner_id: i64,
    from_group: bool,
    community_token: bool,
}

fn settings(raw: &Value) -> Result<Settings, PlatformError> {
    let s: RawSettings = crate::settings(raw, "VK")?;
    let bad = |m: &str| PlatformError::invalid(m.to_string()).code("bad_settings");
    let owner_id = match &s.owner_id {
        Value::Number(n) => n.as_i64(),
        Value::String(t) => t.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n != 0)
    .ok_or_else(|| bad("the VK owner_id must be a user id, or a community id with a minus sign (-123456)"))?;
    let community_token = match s.token_kind.as_deref() {
        None | Some("user") => false,
        Some("community") => true,
        Some(_) => return Err(bad("the VK token_kind must be `user` or `community`")),
    };
    Ok(Settings { owner_id, from_group: s.from_group.unwrap_or(owner_id < 0), community_token })
}

/// The `guid` VK de-duplicates `wall.post` on: the idempotency key when it is plain, else a digest
/// of it.
pub fn guid(idempotency_key: &str) -> String {
    let plain = idempotency_key.len() <= 64
        && idempotency_key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        idempotency_key.to_string()
    } else {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(idempotency_key.as_bytes())[..16])
    }
}

/// Time until the next UTC midnight, when VK's daily method quotas reset.
fn until_utc_midnight() -> Duration {
    let now = chrono::Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
    (midnight - now).to_std().unwrap_or(Duration::from_secs(60))
}

/// An API error (`{"error":{"error_code","error_msg"}}`) in its class.
fn api_error(e: &Value) -> PlatformError {
    let code = e["error_code"].as_i64().unwrap_or(0);
    let msg = e["error_msg"].as_str().unwrap_or("VK reported an error without a message").to_string();
    let err = match code {
        5 | 17 | 18 => PlatformError::auth(msg),
        6 => PlatformError::rate_limited(msg, Some(Duration::from_secs(1))),
        9 => PlatformError::rate_limited(msg, Some(Duration::from_secs(3600))),
        29 => PlatformError::rate_limited(msg, Some(until_utc_midnight())),
        1 | 10 => PlatformError::transient(msg),
        14 => PlatformError::invalid(format!(
            "VK asks for a captcha ({msg}): a person must sign in to VK with this account and pass the captcha \
             before Herald can post again"
        )),
        27 => PlatformError::invalid(format!(
            "{msg}. VK takes wall posts only with a user token: connect with the token of a community admin \
             and post with from_group"
        )),
        // 7, 15, 203, 214: permissions; 100, 219, 222, 224: the post itself. VK's words say which.
        _ => PlatformError::invalid(msg),
    };
    err.status(200).code(code)
}

/// An upload server's answer: `{"error": "...", "error_code", "error_descr"}` when it failed.
fn upload_result(reply: Reply) -> Result<Value, PlatformError> {
    if !reply.is_success() {
        return Err(PlatformError::from_status(reply.status, reply.snippet(), None));
    }
    let body = reply.json();
    match &body["error"] {
        Value::Null => Ok(body),
        Value::Object(_) => Err(api_error(&body["error"])),
        other => {
            let what = body["error_descr"].as_str().or(other.as_str()).unwrap_or("the upload failed");
            let mut e = PlatformError::invalid(format!("the VK upload server refused the file: {what}")).status(200);
            if let Some(c) = body["error_code"].as_i64() {
                e = e.code(c);
            }
            Err(e)
        }
    }
}

/// Calls an API method with a form body (token included) and returns its `response`.
async fn call(
    net: &Net,
    token: &str,
    method: &str,
    params: &[(&str, String)],
    idempotent: Idempotent,
) -> Result<Value, PlatformError> {
    let url = format!("{}/{method}", net.base("vk", API_BASE));
    let mut form: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    form.push(("v", VERSION));
    form.push(("access_token", token));
    let req = net.trusted().request(Method::POST, &url)?.form(&form);
    let reply = net.trusted().send(req, idempotent).await?;
    if !reply.is_success() {
        return Err(PlatformError::from_status(
            reply.status,
            reply.snippet(),
            crate::net::retry_after_header(&reply.headers),
        ));
    }
    let body = reply.json();
    if body["error"].is_object() {
        return Err(api_error(&body["error"]));
    }
    match body.get("response") {
        Some(r) => Ok(r.clone()),
        None => Err(PlatformError::transient(format!("VK answered without a response: {}", reply.snippet()))),
    }
}

/// POSTs a file to an upload URL VK handed out.
async fn upload_file(
    net: &Net,
    upload_url: &str,
    field: &'static str,
    media: &crate::Media,
    idempotent: Idempotent,
) -> Result<Value, PlatformError> {
    let part = multipart::Part::bytes(media.bytes.to_vec())
        .file_name(media.filename.clone())
        .mime_str(&media.mime)
        .map_err(|_| PlatformError::invalid(format!("the media type {} is not valid", media.mime)))?;
    let form = multipart::Form::new().part(field, part);
    let req = net.trusted().request(Method::POST, upload_url)?.multipart(form);
    upload_result(net.trusted().send(req, idempotent).await?)
}

fn group_param(s: &Settings) -> Vec<(&'static str, String)> {
    if s.owner_id < 0 { vec![("group_id", (-s.owner_id).to_string())] } else { Vec::new() }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    match &v[key] {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Uploads one image to the wall's album: `photo<owner>_<id>`. Repeating it leaves at most an
/// unused photo in the wall album, never a post.
async fn photo(net: &Net, token: &str, s: &Settings, media: &crate::Media) -> Result<String, PlatformError> {
    let server = call(net, token, "photos.getWallUploadServer", &group_param(s), Idempotent::Yes).await?;
    let upload_url =
        server["upload_url"].as_str().ok_or_else(|| PlatformError::transient("VK gave no upload_url for the photo"))?;
    let up = upload_file(net, upload_url, "photo", media, Idempotent::Yes).await?;
    let photo = up["photo"].as_str().unwrap_or("");
    if photo.is_empty() || photo == "[]" {
        return Err(PlatformError::invalid(format!("the VK upload server did not take {} as a photo", media.filename)));
    }
    let mut params = group_param(s);
    params.push(("server", str_field(&up, "server").unwrap_or_default()));
    params.push(("photo", photo.to_string()));
    params.push(("hash", str_field(&up, "hash").unwrap_or_default()));
    if let Some(alt) = media.alt.as_deref().filter(|a| !a.is_empty()) {
        params.push(("caption", alt.to_string()));
    }
    let saved = call(net, token, "photos.saveWallPhoto", &params, Idempotent::Yes).await?;
    let p = saved.get(0).ok_or_else(|| PlatformError::transient("VK saved the photo but returned nothing"))?;
    match (str_field(p, "owner_id"), str_field(p, "id")) {
        (Some(owner), Some(id)) => Ok(format!("photo{owner}_{id}")),
        _ => Err(PlatformError::transient("VK saved the photo without an id")),
    }
}

/// Uploads one video (or clip): `video<owner>_<id>`. A repeat would leave a second video in the
/// owner's video list, which people see, so a lost answer here is not retried blindly.
async fn video(net: &Net, token: &str, s: &Settings, media: &crate::Media) -> Result<String, PlatformError> {
    let mut params = group_param(s);
    params.push(("name", media.filename.clone()));
    if let Some(alt) = media.alt.as_deref().filter(|a| !a.is_empty()) {
        params.push(("description", alt.to_string()));
    }
    params.push(("wallpost", "0".into()));
    let saved = call(net, token, "video.save", &params, Idempotent::No).await?;
    let upload_url =
        saved["upload_url"].as_str().ok_or_else(|| PlatformError::transient("VK gave no upload_url for the video"))?;
    let up = upload_file(net, upload_url, "video_file", media, Idempotent::No).await?;
    let owner = str_field(&saved, "owner_id").or_else(|| str_field(&up, "owner_id"));
    let id = str_field(&saved, "video_id").or_else(|| str_field(&up, "video_id"));
    match (owner, id) {
        (Some(owner), Some(id)) => Ok(format!("video{owner}_{id}")),
        _ => Err(PlatformError::transient("VK saved the video without an id")),
    }
}

/// A display name: a community's `name`, a user's first and last names.
fn name(v: &Value) -> String {
    if let Some(n) = v["name"].as_str() {
        return n.to_string();
    }
    let full = format!("{} {}", v["first_name"].as_str().unwrap_or(""), v["last_name"].as_str().unwrap_or(""));
    full.trim().to_string()
}

/// The first group of a `groups.getById` answer (an object with `groups` since 5.139, an array
/// before).
fn first_group(r: &Value) -> Option<&Value> {
    r.get("groups").unwrap_or(r).get(0)
}

fn not_writable(wall: &str) -> PlatformError {
    PlatformError::invalid(format!("VK says this account cannot post on the wall of {wall}")).code("wall_not_writable")
}

#[async_trait]
impl Adapter for Vk {
    fn platform(&self) -> &'static Platform {
        crate::registry("vk")
    }

    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let creds: Credentials = conn.credentials.parse("VK")?;
        let s = settings(&conn.settings)?;
        let token = &creds.access_token;
        let mut out = conn.settings.clone();
        let account = if s.community_token {
            // A community token names its own community when asked without an id.
            let r = call(net, token, "groups.getById", &[], Idempotent::Yes).await?;
            let group = first_group(&r).ok_or_else(|| PlatformError::auth("VK did not say whose token this is"))?;
            if group["id"].as_i64() != Some(-s.owner_id) {
                return Err(PlatformError::invalid(format!(
                    "this token belongs to the community {} (id -{}), not to the wall {}",
                    name(group),
                    group["id"],
                    s.owner_id
                ))
                .code("bad_settings"));
            }
            // The token is good, but VK refuses community tokens on wall.post and the upload
            // methods (error 27): saving the connection would only fail every delivery.
            return Err(PlatformError::invalid(format!(
                "this is a community token of {}; VK takes wall posts only with a user token. Connect with                  the token of a community admin (token_kind user) and Herald posts as the community (from_group)",
                name(group)
            ))
            .code("community_token"));
        } else {
            let me = call(net, token, "users.get", &[], Idempotent::Yes).await?;
            let me = me.get(0).ok_or_else(|| PlatformError::auth("VK did not say whose token this is"))?;
            out["user_id"] = me["id"].clone();
            if s.owner_id < 0 {
                let params = [("group_id", (-s.owner_id).to_string()), ("fields", "can_post".into())];
                let r = call(net, token, "groups.getById", &params, Idempotent::Yes).await?;
                let group = first_group(&r).ok_or_else(|| PlatformError::invalid("VK does not know this community"))?;
                if group["can_post"].as_i64() == Some(0) {
                    return Err(not_writable(&name(group)));
                }
                name(group)
            } else if me["id"].as_i64() == Some(s.owner_id) {
                name(me)
            } else {
                let params = [("user_ids", s.owner_id.to_string()), ("fields", "can_post".into())];
                let r = call(net, token, "users.get", &params, Idempotent::Yes).await?;
                let user = r.get(0).ok_or_else(|| PlatformError::invalid("VK does not know this user"))?;
                if user["can_post"].as_i64() == Some(0) {
                    return Err(not_writable(&name(user)));
                }
                name(user)
            }
        };
        out["owner_id"] = json!(s.owner_id);
        out["from_group"] = json!(s.from_group);
        out["token_kind"] = json!(if s.community_token { "community" } else { "user" });
        Ok(Verified { account, credentials: conn.credentials.clone(), settings: out })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let creds: Credentials = conn.credentials.parse("VK")?;
        let s = settings(&conn.settings)?;
        let token = &creds.access_token;

        let mut attachments = Vec::new();
        for m in &post.media {
            attachments.push(match m.kind {
                MediaKind::Image => photo(net, token, &s, m).await?,
                MediaKind::Video => video(net, token, &s, m).await?,
            });
        }
        // VK renders one link attachment as a card.
        if let Some(link) = &post.link {
            attachments.push(link.clone());
        }

        let mut params = vec![("owner_id", s.owner_id.to_string())];
        if s.from_group && s.owner_id < 0 {
            params.push(("from_group", "1".into()));
        }
        if !post.text.is_empty() {
            params.push(("message", post.text.clone()));
        }
        if !attachments.is_empty() {
            params.push(("attachments", attachments.join(",")));
        }
        params.push(("guid", guid(&post.idempotency_key)));
        let r = call(net, token, "wall.post", &params, Idempotent::Yes).await?;
        let post_id =
            str_field(&r, "post_id").ok_or_else(|| PlatformError::transient("VK answered without a post_id"))?;
        let id = format!("{}_{post_id}", s.owner_id);
        Ok(Published { url: Some(format!("https://vk.com/wall{id}")), id, credentials: None })
    }

    async fn delete(&self, net: &Net, conn: &Connection, id: &str) -> Result<(), PlatformError> {
        let creds: Credentials = conn.credentials.parse("VK")?;
        let (owner, post) = id
            .rsplit_once('_')
            .ok_or_else(|| PlatformError::invalid(format!("`{id}` is not a VK post id (<owner>_<post>)")))?;
        let params = [("owner_id", owner.to_string()), ("post_id", post.to_string())];
        call(net, &creds.access_token, "wall.delete", &params, Idempotent::Yes).await.map(|_| ())
    }

    fn idempotency(&self, _conn: &Connection) -> crate::Idempotency {
        // VK's guid; its lifetime is not documented, so assume an hour.
        crate::Idempotency::Window(std::time::Duration::from_secs(60 * 60))
    }

    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let s = settings(&conn.settings).ok()?;
        // VK allows 3 calls/s for a user token, 20 for a community token, and one post can take
        // several calls (uploads), so deliveries go slower than that.
        let (capacity, per_second) = if s.community_token { (10.0, 5.0) } else { (3.0, 1.0) };
        Some(Pacing { bucket: format!("vk:{}", s.owner_id), capacity, per_second })
    }
}

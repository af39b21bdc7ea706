//! A fake VK API: `POST /method/<name>` with form (or query) parameters and `v=5.199`, errors as
//! HTTP 200 `{"error":{"error_code","error_msg","request_params"}}`, wall posts de-duplicated on
//! `guid`, and the upload servers for wall photos (`photo` field) and videos (`video_file` field)
//! with their own error shape. Like VK, it refuses the wall and upload methods to community
//! tokens (error 27).

use crate::{Failure, FakeServer, Shared, json};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{self, Multipart, Path, RawQuery};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// A user's token (the user is [`USER_ID`]).
pub const USER_TOKEN: &str = "vk1.a.fake-user-token";
/// The token of the community [`GROUP_ID`].
pub const COMMUNITY_TOKEN: &str = "vk1.a.fake-community-token";
pub const USER_ID: i64 = 1001;
pub const GROUP_ID: i64 = 2002;
/// A user whose wall nobody else may post on.
pub const CLOSED_USER_ID: i64 = 1003;

type Sh = Arc<Shared<State>>;

#[derive(Debug, Clone)]
pub struct WallPost {
    pub owner_id: i64,
    pub post_id: i64,
    pub from_group: bool,
    pub message: String,
    pub attachments: Vec<String>,
    pub guid: Option<String>,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub struct Photo {
    pub owner_id: i64,
    pub id: i64,
    pub filename: String,
    pub size: usize,
    pub caption: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Video {
    pub owner_id: i64,
    pub id: i64,
    pub name: String,
    pub size: Option<usize>,
}

pub struct State {
    /// Whether [`USER_ID`] may post on the community's wall (an admin may).
    pub can_post_on_group: bool,
    pub posts: Vec<WallPost>,
    pub photos: Vec<Photo>,
    pub videos: Vec<Video>,
    /// Photos uploaded but not saved yet: upload id -> (filename, size).
    uploads: HashMap<String, (String, usize)>,
    guids: HashMap<(i64, String), i64>,
    next_id: i64,
}

impl State {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn live_posts(&self) -> Vec<&WallPost> {
        self.posts.iter().filter(|p| !p.deleted).collect()
    }
}

pub async fn start() -> FakeServer<State> {
    let state = State {
        can_post_on_group: true,
        posts: Vec::new(),
        photos: Vec::new(),
        videos: Vec::new(),
        uploads: HashMap::new(),
        guids: HashMap::new(),
        next_id: 456_239_000,
    };
    let router = Router::new()
        .route("/method/{method}", post(method).get(method))
        .route("/upload/photo", post(upload_photo))
        // VK takes videos up to 256 GB; axum's default 2 MB body limit would refuse real clips.
        .route("/upload/video/{owner}/{id}", post(upload_video).layer(axum::extract::DefaultBodyLimit::max(512 << 20)));
    FakeServer::start(router, state, render).await
}

/// Decodes `application/x-www-form-urlencoded` pairs (also used for query strings).
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII hex digits");
                    out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn error_body(code: i64, msg: &str, method: &str) -> Value {
    json!({ "error": {
        "error_code": code,
        "error_msg": msg,
        "request_params": [ { "key": "method", "value": method }, { "key": "v", "value": "5.199" } ],
    }})
}

fn api_error(code: i64, msg: &str, method: &str) -> Response {
    json(200, error_body(code, msg, method))
}

/// VK's answers to the failures tests ask for. `RateLimited` is error 6 (VK has no wait signal);
/// `Named`: `flood` (9), `quota` (29), `captcha` (14), `internal` (10), `unknown` (1),
/// `permission` (7), `access_denied` (15), `group_denied` (203), `post_denied` (214),
/// `invalid_param` (100), `ads_recent` (219), `links_forbidden` (222), `too_many_ads` (224),
/// `validation` (17), `upload_error` (an upload server's own error shape).
pub fn render(f: &Failure) -> Response {
    let (code, msg) = match f {
        Failure::RateLimited { .. } => (6, "Too many requests per second"),
        Failure::Unauthorized => (5, "User authorization failed: invalid access_token (4)."),
        Failure::ServerError(s) => {
            let status = axum::http::StatusCode::from_u16(*s).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            return (status, "<html><body><h1>502 Bad Gateway</h1></body></html>").into_response();
        }
        Failure::Named("upload_error") => {
            return json(
                200,
                json!({
                    "error": "ERR_UPLOAD_BAD_IMAGE_SIZE: image is too small",
                    "error_code": 9,
                    "error_descr": "Image has a wrong size",
                    "error_is_logged": false,
                }),
            );
        }
        Failure::Named("flood") => (9, "Flood control: too much captcha requests"),
        Failure::Named("quota") => (29, "Rate limit reached"),
        Failure::Named("captcha") => {
            let mut body = error_body(14, "Captcha needed", "wall.post");
            body["error"]["captcha_sid"] = json!("238498023475");
            body["error"]["captcha_img"] = json!("https://api.vk.com/captcha.php?sid=238498023475");
            return json(200, body);
        }
        Failure::Named("internal") => (10, "Internal server error"),
        Failure::Named("unknown") => (1, "Unknown error occurred"),
        Failure::Named("permission") => (7, "Permission to perform this action is denied"),
        Failure::Named("access_denied") => (15, "Access denied: no access to call this method"),
        Failure::Named("group_denied") => (203, "Access to group denied: access to the group is denied"),
        Failure::Named("post_denied") => (214, "Access to adding post denied: you can't post on this wall"),
        Failure::Named("invalid_param") => {
            (100, "One of the parameters specified was missing or invalid: invalid message param")
        }
        Failure::Named("ads_recent") => (219, "Advertisement post was recently added"),
        Failure::Named("links_forbidden") => (222, "Hyperlinks are forbidden"),
        Failure::Named("too_many_ads") => (224, "Too many ads posts"),
        Failure::Named("validation") => (17, "Validation required: please open redirect_uri in browser"),
        other => return json(500, json!({ "fake": format!("cannot render {other:?}") })),
    };
    api_error(code, msg, "wall.post")
}

#[derive(Clone, Copy, PartialEq)]
enum Caller {
    User,
    Community,
}

async fn method(
    extract::State(sh): extract::State<Sh>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut p: HashMap<String, String> = form_pairs(query.unwrap_or_default().as_bytes()).into_iter().collect();
    p.extend(form_pairs(&body));
    let token = p.get("access_token").cloned().or_else(|| crate::bearer(&headers));
    let caller = match token.as_deref() {
        Some(USER_TOKEN) => Caller::User,
        Some(COMMUNITY_TOKEN) => Caller::Community,
        Some(_) => return api_error(5, "User authorization failed: invalid access_token (4).", &name),
        None => return api_error(5, "User authorization failed: no access_token passed.", &name),
    };
    match p.get("v").map(String::as_str) {
        None => return api_error(8, "Invalid request: v (version) is required", &name),
        Some(v) if v.parse::<f64>().is_err() => {
            return api_error(8, "Invalid request: versions below 5.0 are no longer supported", &name);
        }
        Some(_) => {}
    }
    let user_only = ["wall.post", "wall.delete", "photos.getWallUploadServer", "photos.saveWallPhoto", "video.save"];
    if caller == Caller::Community && user_only.contains(&name.as_str()) {
        return api_error(27, "Group authorization failed: method is unavailable with group auth.", &name);
    }
    let result = match name.as_str() {
        "users.get" => users_get(caller, &p),
        "groups.getById" => groups_get_by_id(&sh, caller, &p),
        "photos.getWallUploadServer" => Ok(json!({
            "upload_url": format!("{}/upload/photo?act=do_add&mid={USER_ID}", sh.url),
            "album_id": -14,
            "user_id": USER_ID,
        })),
        "photos.saveWallPhoto" => save_wall_photo(&sh, &p),
        "video.save" => video_save(&sh, &p),
        "wall.post" => wall_post(&sh, &p),
        "wall.delete" => wall_delete(&sh, &p),
        _ => Err((3, "Unknown method passed".to_string())),
    };
    match result {
        Ok(r) => json(200, json!({ "response": r })),
        Err((code, msg)) => api_error(code, &msg, &name),
    }
}

type Answer = Result<Value, (i64, String)>;

fn invalid(what: &str) -> (i64, String) {
    (100, format!("One of the parameters specified was missing or invalid: {what}"))
}

fn int(p: &HashMap<String, String>, key: &str) -> Option<i64> {
    p.get(key).and_then(|v| v.trim().parse().ok())
}

fn user(id: i64) -> Value {
    let (first, last, can_post) = match id {
        USER_ID => ("Ivan", "Petrov", 1),
        CLOSED_USER_ID => ("Olga", "Closed", 0),
        _ => ("Someone", "Else", 1),
    };
    json!({ "id": id, "first_name": first, "last_name": last, "can_access_closed": true, "is_closed": false, "can_post": can_post })
}

fn users_get(caller: Caller, p: &HashMap<String, String>) -> Answer {
    let ids: Vec<i64> = match p.get("user_ids") {
        Some(list) => list.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        // With a community token there is no current user.
        None if caller == Caller::Community => Vec::new(),
        None => vec![USER_ID],
    };
    let fields = p.get("fields").cloned().unwrap_or_default();
    Ok(ids
        .into_iter()
        .map(|id| {
            let mut u = user(id);
            if !fields.contains("can_post") {
                u.as_object_mut().expect("object").remove("can_post");
            }
            u
        })
        .collect())
}

fn groups_get_by_id(sh: &Sh, caller: Caller, p: &HashMap<String, String>) -> Answer {
    let id = match p.get("group_id").or(p.get("group_ids")) {
        Some(v) => v.trim().trim_start_matches('-').parse::<i64>().map_err(|_| invalid("group_ids is invalid"))?,
        None if caller == Caller::Community => GROUP_ID,
        None => return Err(invalid("group_ids is undefined")),
    };
    if id != GROUP_ID {
        return Err(invalid("group_ids is invalid"));
    }
    let mut group = json!({
        "id": GROUP_ID, "name": "Herald Test Community", "screen_name": "herald_test",
        "is_closed": 0, "type": "group",
    });
    if p.get("fields").is_some_and(|f| f.contains("can_post")) {
        let can = caller == Caller::Community || sh.data().can_post_on_group;
        group["can_post"] = json!(i64::from(can));
    }
    // The 5.199 shape: an object with `groups` and `profiles`.
    Ok(json!({ "groups": [group], "profiles": [] }))
}

fn save_wall_photo(sh: &Sh, p: &HashMap<String, String>) -> Answer {
    let upload = p.get("photo").cloned().unwrap_or_default();
    let list: Value = serde_json::from_str(&upload).map_err(|_| invalid("photos_list is invalid"))?;
    let key = list[0]["photo"].as_str().ok_or_else(|| invalid("photos_list is invalid"))?.to_string();
    let mut d = sh.data();
    let Some((filename, size)) = d.uploads.remove(&key) else { return Err(invalid("photos_list is invalid")) };
    if p.get("hash") != Some(&format!("h{key}")) || p.get("server").map(String::as_str) != Some("851234") {
        return Err(invalid("hash is invalid"));
    }
    let owner_id = match int(p, "group_id") {
        Some(g) => -g,
        None => USER_ID,
    };
    let id = d.id();
    d.photos.push(Photo { owner_id, id, filename, size, caption: p.get("caption").cloned() });
    Ok(
        json!([{ "id": id, "owner_id": owner_id, "album_id": -14, "date": chrono::Utc::now().timestamp(), "sizes": [] }]),
    )
}

fn video_save(sh: &Sh, p: &HashMap<String, String>) -> Answer {
    let owner_id = match int(p, "group_id") {
        Some(g) => -g,
        None => USER_ID,
    };
    let name = p.get("name").cloned().unwrap_or_default();
    let mut d = sh.data();
    let id = d.id();
    d.videos.push(Video { owner_id, id, name: name.clone(), size: None });
    Ok(json!({
        "upload_url": format!("{}/upload/video/{owner_id}/{id}", sh.url),
        "video_id": id,
        "owner_id": owner_id,
        "title": name,
        "description": p.get("description").cloned().unwrap_or_default(),
        "access_key": "a1b2c3",
    }))
}

fn wall_post(sh: &Sh, p: &HashMap<String, String>) -> Answer {
    let owner_id = int(p, "owner_id").unwrap_or(USER_ID);
    let from_group = p.get("from_group").map(String::as_str) == Some("1");
    let message = p.get("message").cloned().unwrap_or_default();
    let attachments: Vec<String> = p
        .get("attachments")
        .map(|a| a.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let guid = p.get("guid").cloned();
    let mut d = sh.data();
    if let Some(g) = &guid
        && let Some(post_id) = d.guids.get(&(owner_id, g.clone()))
    {
        return Ok(json!({ "post_id": post_id }));
    }
    match owner_id {
        USER_ID => {}
        o if o == -GROUP_ID && d.can_post_on_group => {}
        o if o == -GROUP_ID => return Err((214, "Access to adding post denied: you can't post on this wall".into())),
        CLOSED_USER_ID => return Err((214, "Access to adding post denied: you can't post on this wall".into())),
        _ => return Err((15, "Access denied: wall is not accessible".into())),
    }
    if message.trim().is_empty() && attachments.is_empty() {
        return Err(invalid("message is empty or invalid"));
    }
    let mut links = 0;
    for a in &attachments {
        let known = if let Some(rest) = a.strip_prefix("photo") {
            d.photos.iter().any(|p| format!("{}_{}", p.owner_id, p.id) == rest)
        } else if let Some(rest) = a.strip_prefix("video") {
            d.videos.iter().any(|v| format!("{}_{}", v.owner_id, v.id) == rest && v.size.is_some())
        } else if a.starts_with("http://") || a.starts_with("https://") {
            links += 1;
            links == 1
        } else {
            false
        };
        if !known {
            return Err(invalid("attachments param is invalid"));
        }
    }
    let post_id = d.id();
    d.posts.push(WallPost { owner_id, post_id, from_group, message, attachments, guid: guid.clone(), deleted: false });
    if let Some(g) = guid {
        d.guids.insert((owner_id, g), post_id);
    }
    Ok(json!({ "post_id": post_id }))
}

fn wall_delete(sh: &Sh, p: &HashMap<String, String>) -> Answer {
    let (owner_id, post_id) = (int(p, "owner_id").unwrap_or(USER_ID), int(p, "post_id").unwrap_or(0));
    let mut d = sh.data();
    let post = d.posts.iter_mut().find(|x| x.owner_id == owner_id && x.post_id == post_id && !x.deleted);
    match post {
        Some(x) => {
            x.deleted = true;
            Ok(json!(1))
        }
        None => Err(invalid("post_id is invalid")),
    }
}

/// The file field of an upload, if any: (filename, size).
async fn file_field(form: &mut Multipart, name: &str) -> Option<(String, usize)> {
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some(name) {
            let filename = field.file_name().unwrap_or("file").to_string();
            let bytes = field.bytes().await.ok()?;
            return Some((filename, bytes.len()));
        }
    }
    None
}

async fn upload_photo(extract::State(sh): extract::State<Sh>, mut form: Multipart) -> Response {
    // Like VK, a request without the `photo` field gets an empty photo list, not an error.
    let Some(file) = file_field(&mut form, "photo").await else {
        return json(200, json!({ "server": 851234, "photo": "[]", "hash": "00000000000000000000000000000000" }));
    };
    let mut d = sh.data();
    let key = format!("u{}", d.id());
    d.uploads.insert(key.clone(), file);
    let photo = json!([{ "photo": key, "sizes": [], "kid": "kid" }]).to_string();
    json(200, json!({ "server": 851234, "photo": photo, "hash": format!("h{key}") }))
}

async fn upload_video(
    extract::State(sh): extract::State<Sh>,
    Path((owner, id)): Path<(i64, i64)>,
    mut form: Multipart,
) -> Response {
    let Some((_, size)) = file_field(&mut form, "video_file").await else {
        return json(
            200,
            json!({
                "error": "ERR_UPLOAD_FILE_NOT_UPLOADED: file not uploaded",
                "error_code": 4,
                "error_descr": "No file was uploaded in the video_file field",
                "error_is_logged": false,
            }),
        );
    };
    let mut d = sh.data();
    let Some(v) = d.videos.iter_mut().find(|v| v.owner_id == owner && v.id == id) else {
        return json(
            200,
            json!({ "error": "ERR_UPLOAD_VIDEO_NOT_FOUND", "error_code": 6, "error_descr": "video not found" }),
        );
    };
    v.size = Some(size);
    json(
        200,
        json!({ "video_hash": "2609408b91c104324f", "size": size, "direct_link": "https://vkvd.example/?id=1", "owner_id": owner, "video_id": id }),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_pairs_decode_percent_and_plus() {
        let pairs = super::form_pairs(b"message=hello+w%C3%B6rld&attachments=photo1_2%2Cphoto1_3&empty=&50%=x");
        assert_eq!(pairs[0], ("message".into(), "hello wörld".into()));
        assert_eq!(pairs[1], ("attachments".into(), "photo1_2,photo1_3".into()));
        assert_eq!(pairs[2], ("empty".into(), "".into()));
        assert_eq!(pairs[3], ("50%".into(), "x".into()));
    }
}

//! YouTube channels: from what a user types (an id, a handle, a URL) to a channel id, its WebSub
//! topic and its public feed.

use herald_core::{Error, ErrorCode};
use herald_http::HttpClient;
use serde_json::json;

/// The topic YouTube's hub publishes on (the `/xml/` form; the other one does not deliver).
pub fn topic(channel_id: &str) -> String {
    format!("https://www.youtube.com/xml/feeds/videos.xml?channel_id={channel_id}")
}

/// The channel's public feed (the 15 newest uploads) at `base`.
pub fn feed_url(base: &str, channel_id: &str) -> String {
    format!("{}/feeds/videos.xml?channel_id={channel_id}", base.trim_end_matches('/'))
}

/// `UC` and 22 characters of base64url.
pub fn is_channel_id(s: &str) -> bool {
    s.len() == 24 && s.starts_with("UC") && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid(message: String) -> Error {
    Error::new(ErrorCode::ValidationFailed, message).with_details(json!({"field": "config.channel"}))
}

/// The page path for a handle or legacy name, or the channel id when the input holds one.
enum Given {
    Id(String),
    Page(String),
}

fn classify(input: &str) -> Result<Given, Error> {
    let input = input.trim();
    if is_channel_id(input) {
        return Ok(Given::Id(input.to_string()));
    }
    if let Some(handle) = input.strip_prefix('@') {
        return handle_page(handle).map(Given::Page);
    }
    let with_scheme = if input.contains("://") { input.to_string() } else { format!("https://{input}") };
    let url = url::Url::parse(&with_scheme).map_err(|_| bad(input))?;
    let host = url.host_str().unwrap_or_default().trim_start_matches("www.").trim_start_matches("m.");
    if host != "youtube.com" {
        return Err(bad(input));
    }
    let segments: Vec<&str> = url.path_segments().map(|s| s.filter(|p| !p.is_empty()).collect()).unwrap_or_default();
    match segments.as_slice() {
        ["channel", id, ..] if is_channel_id(id) => Ok(Given::Id(id.to_string())),
        [h, ..] if h.starts_with('@') => handle_page(&h[1..]).map(Given::Page),
        ["c" | "user", name, ..] if name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => {
            Ok(Given::Page(format!("/{}/{name}", segments[0])))
        }
        _ => Err(bad(input)),
    }
}

fn handle_page(handle: &str) -> Result<String, Error> {
    // Handles are 3–30 characters of letters, digits, `_`, `-` and `.`.
    if handle.is_empty()
        || handle.len() > 100
        || !handle.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad(&format!("@{handle}")));
    }
    Ok(format!("/@{handle}"))
}

fn bad(input: &str) -> Error {
    invalid(format!(
        "`{input}` is not a YouTube channel; give its id (UC…), its handle (@name) or its URL (https://www.youtube.com/@name)"
    ))
}

/// The channel id for an id, handle or URL. Handles and legacy names are looked up on the
/// channel's page at `base`.
pub async fn resolve_channel(http: &HttpClient, base: &str, input: &str) -> Result<String, Error> {
    let page = match classify(input)? {
        Given::Id(id) => return Ok(id),
        Given::Page(p) => p,
    };
    let url = format!("{}{page}", base.trim_end_matches('/'));
    let response = http.get(&url).send().await.map_err(|e| {
        Error::new(ErrorCode::UpstreamFailed, format!("cannot reach YouTube to look up {input}: {}", e.without_url()))
    })?;
    if response.status() == 404 {
        return Err(invalid(format!(
            "YouTube has no channel `{input}`; check the handle, or give the channel id (UC…)"
        )));
    }
    if !response.status().is_success() {
        return Err(Error::new(
            ErrorCode::UpstreamFailed,
            format!(
                "YouTube answered {} when looking up {input}; try again, or give the channel id (UC…)",
                response.status()
            ),
        ));
    }
    let body = herald_http::read_limited(response, 4 << 20).await.map_err(Error::from)?;
    channel_id_in_page(&String::from_utf8_lossy(&body)).ok_or_else(|| {
        invalid(format!("could not find the channel id of `{input}` on its page; give the channel id (UC…)"))
    })
}

/// Finds the channel id in a channel page: the canonical link, the identifier meta tag, or the
/// `channelId`/`externalId` in its embedded data.
pub fn channel_id_in_page(html: &str) -> Option<String> {
    let markers = ["/channel/", "itemprop=\"identifier\" content=\"", "\"externalId\":\"", "\"channelId\":\""];
    for marker in markers {
        let mut rest = html;
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            if let Some(candidate) = rest.get(..24)
                && is_channel_id(candidate)
            {
                return Some(candidate.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_classified() {
        let id = "UCabcdefghijklmnopqrstuv";
        assert!(matches!(classify(id), Ok(Given::Id(x)) if x == id));
        assert!(
            matches!(classify(&format!("https://www.youtube.com/channel/{id}/videos")), Ok(Given::Id(x)) if x == id)
        );
        assert!(matches!(classify("@some.one"), Ok(Given::Page(p)) if p == "/@some.one"));
        assert!(matches!(classify("youtube.com/@name"), Ok(Given::Page(p)) if p == "/@name"));
        assert!(matches!(classify("https://m.youtube.com/c/Legacy"), Ok(Given::Page(p)) if p == "/c/Legacy"));
        assert!(classify("https://evil.example/@name").is_err());
        assert!(classify("@na me").is_err());
        assert!(classify("UCshort").is_err());
    }

    #[test]
    fn the_id_is_found_in_a_channel_page() {
        let id = "UC_x5XG1OV2P6uZZ5FSM9Ttw";
        let page = format!(r#"<html><link rel="canonical" href="https://www.youtube.com/channel/{id}"></html>"#);
        assert_eq!(channel_id_in_page(&page).as_deref(), Some(id));
        let page = format!(r#"<script>var x = {{"channelId":"{id}"}}</script>"#);
        assert_eq!(channel_id_in_page(&page).as_deref(), Some(id));
        assert_eq!(channel_id_in_page("<html>/channel/UCtooshort</html>"), None);
    }
}

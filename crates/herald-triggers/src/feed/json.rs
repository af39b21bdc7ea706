//! JSON Feed 1.0 and 1.1 (<https://www.jsonfeed.org/version/1.1/>).
//!
//! Read field by field from a `serde_json::Value`, so one odd field (a numeric id, a tag that is
//! not a string) costs that field rather than the feed. serde_json's recursion limit guards
//! against deep nesting.

use std::collections::HashSet;

use serde_json::{Map, Value};
use url::Url;

use super::xml::{absolute, timestamp};
use super::{FeedError, Item, Media, MediaRole, ParsedFeed, html};

pub(super) fn parse(text: &str, base: Option<&Url>) -> Result<ParsedFeed, FeedError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FeedError::Malformed(format!("invalid JSON: {e}")))?;
    let Some(feed) = value.as_object() else {
        return Err(FeedError::NotAFeed("it is JSON, but not an object".into()));
    };
    let version = string(feed, "version").unwrap_or_default();
    if !version.starts_with("https://jsonfeed.org/version/1") && !version.starts_with("http://jsonfeed.org/version/1") {
        let version: String = version.chars().take(60).collect();
        return Err(FeedError::NotAFeed(format!(
            "it is JSON, but its \"version\" is {version:?}, not \"https://jsonfeed.org/version/1.1\" (or 1)"
        )));
    }
    let Some(items) = feed.get("items").and_then(Value::as_array) else {
        return Err(FeedError::NotAFeed("it is JSON Feed without an \"items\" array".into()));
    };

    let link = string(feed, "home_page_url").and_then(|u| absolute(u, &[base]));
    let bases = [link.as_ref(), base];
    let feed_author = author(feed);
    let items = items
        .iter()
        .filter_map(Value::as_object)
        .map(|item| {
            let mut parsed = entry(item, &bases);
            if parsed.author.is_none() {
                parsed.author.clone_from(&feed_author);
            }
            parsed
        })
        .collect();
    Ok(ParsedFeed { title: string(feed, "title").and_then(html::collapse), link: link.map(String::from), items })
}

fn entry(item: &Map<String, Value>, bases: &[Option<&Url>]) -> Item {
    let html_base = bases.iter().flatten().next().copied();
    // Ids are strings by the spec, but numbers are common.
    let guid = match item.get("id") {
        Some(Value::String(id)) => Some(id.trim().to_owned()),
        Some(Value::Number(id)) => Some(id.to_string()),
        _ => None,
    }
    .filter(|id| !id.is_empty());
    let url = ["url", "external_url"].into_iter().find_map(|key| string(item, key).and_then(|u| absolute(u, bases)));
    let content_html = string(item, "content_html")
        .and_then(|h| html::sanitize(h, html_base))
        .or_else(|| string(item, "content_text").and_then(html::escape));
    let summary = string(item, "summary");

    let mut seen = HashSet::new();
    let categories: Vec<String> = item
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|tag| tag.as_str().and_then(html::collapse))
        .filter(|tag| seen.insert(tag.clone()))
        .collect();

    let mut media = Vec::new();
    for key in ["image", "banner_image"] {
        if let Some(url) = string(item, key).and_then(|u| absolute(u, bases)) {
            media.push(Media {
                url: url.into(),
                role: MediaRole::Thumbnail,
                mime: None,
                length: None,
                width: None,
                height: None,
                duration_secs: None,
            });
        }
    }
    for attachment in
        item.get("attachments").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_object)
    {
        let Some(url) = string(attachment, "url").and_then(|u| absolute(u, bases)) else { continue };
        media.push(Media {
            url: url.into(),
            role: MediaRole::Enclosure,
            mime: string(attachment, "mime_type").map(str::to_owned),
            length: attachment.get("size_in_bytes").and_then(Value::as_u64),
            width: None,
            height: None,
            duration_secs: attachment.get("duration_in_seconds").and_then(seconds),
        });
    }

    let published = string(item, "date_published").and_then(timestamp);
    Item {
        guid,
        title: string(item, "title").and_then(html::collapse),
        url: url.map(String::from),
        summary_html: summary.and_then(html::escape),
        summary_text: summary.and_then(html::collapse),
        content_html,
        published,
        updated: string(item, "date_modified").and_then(timestamp),
        author: author(item),
        categories,
        media,
        youtube: None,
    }
}

/// JSON Feed 1.1 `authors` (the first with a name), else 1.0 `author`.
fn author(object: &Map<String, Value>) -> Option<String> {
    let authors = object.get("authors").and_then(Value::as_array).into_iter().flatten();
    authors
        .chain(object.get("author"))
        .filter_map(Value::as_object)
        .find_map(|a| string(a, "name").and_then(html::collapse))
}

fn string<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_f64().filter(|s| (0.0..1e12).contains(s)).map(|s| s.round() as u64))
}

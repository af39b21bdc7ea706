//! Feed parsing: RSS 0.9x, 1.0 (RDF) and 2.0, Atom 1.0 and JSON Feed 1.0/1.1, normalised into
//! [`Item`]s, plus YouTube's WebSub push payloads ([`parse_push`]).
//!
//! Feed bodies come from anywhere on the internet, so they pass these gates before a format
//! parser sees them (security requirement 34):
//!
//! 1. a size cap ([`MAX_BODY_BYTES`]);
//! 2. decoding to UTF-8 here, from a BOM, the UTF-16 byte pattern or the XML declaration, so
//!    feed-rs never switches encodings mid-stream (its reader panics if asked to late);
//! 3. an iterative quick-xml pre-scan that refuses `<!ENTITY` declarations (billion laughs, XXE)
//!    and nesting deeper than [`MAX_DEPTH`], without recursion.
//!
//! feed-rs then does the RSS/Atom work. It rejects whole feeds over things a reader shrugs at,
//! and panics on some inputs, so the pre-scan also repairs (a bare `&`, an `<rss>` without
//! `version`, YouTube's empty `<media:description>`), and feed-rs runs inside `catch_unwind`,
//! once more without people and durations if it panicked (the elements seen to make it panic).
//! The pre-scan doubles as a side pass for what feed-rs drops: YouTube's `yt:` elements,
//! `media:thumbnail` without `media:content`, relative enclosure URLs, `xml:base` scopes and
//! Atom tombstones. JSON Feed is read here with serde_json, because feed-rs rejects numeric ids
//! and folds attachments into links.
//!
//! Everything an [`Item`] carries is safe to show: HTML is sanitised with ammonia (no scripts,
//! styles, event handlers or `javascript:` URLs) and every URL is absolute `http(s)`. A field
//! that would make html5ever slower than linear (very deep markup, very many `&`) is read as
//! plain text instead, so even a hostile 8 MiB body takes seconds, not hours.

mod decode;
mod html;
mod html_guard;
mod json;
mod scan;
mod xml;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

/// Bodies larger than this are refused before parsing (`feed_too_large`).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Elements nested deeper than this are refused (`feed_too_deep`). Real feeds stay under 20.
pub const MAX_DEPTH: usize = 256;

/// Longer guids and links are hashed in [`Item::dedupe_key`], so keys fit a database index.
const MAX_KEY_VALUE_BYTES: usize = 1024;

/// A parsed feed: its own title and link, and its items in document order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedFeed {
    /// The feed's title, as plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The site the feed belongs to (its alternate link, else its self link), absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The entries, newest first when the feed orders them so (most do).
    #[serde(default)]
    pub items: Vec<Item>,
}

/// One feed entry, normalised across RSS, Atom and JSON Feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Item {
    /// The feed's own id for the entry: RSS `guid`, Atom `id`, JSON Feed `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    /// The title, as plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The entry's web page, absolute `http(s)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The summary (RSS `description`, Atom `summary`, JSON Feed `summary`) as sanitised HTML
    /// with absolute links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_html: Option<String>,
    /// The summary as plain text: tags stripped, entities decoded, whitespace collapsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_text: Option<String>,
    /// The full content (RSS `content:encoded`, Atom `content`, JSON Feed `content_html` or
    /// `content_text`) as sanitised HTML with absolute links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_html: Option<String>,
    /// When the entry was first published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<DateTime<Utc>>,
    /// When the entry last changed. RSS has no such field; there it equals `published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<DateTime<Utc>>,
    /// The author's name (or email when no name is given); the feed's author when the entry
    /// names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Categories or tags, in feed order, without duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Enclosures, thumbnails and media content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<Media>,
    /// Set for YouTube video entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub youtube: Option<YouTube>,
}

/// A media object attached to an [`Item`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Media {
    /// Absolute `http(s)` URL.
    pub url: String,
    pub role: MediaRole,
    /// The MIME type the feed declares, e.g. `audio/mpeg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Size in bytes, as the feed declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
}

/// What a [`Media`] is to its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MediaRole {
    /// RSS `enclosure`, Atom `link rel="enclosure"`, JSON Feed `attachments`.
    Enclosure,
    /// `media:thumbnail`, `itunes:image`, JSON Feed `image`.
    Thumbnail,
    /// `media:content`.
    Content,
}

/// What YouTube's feeds say about a video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct YouTube {
    /// `yt:videoId`, else the id after `yt:video:`.
    pub video_id: String,
    /// `yt:channelId`, else the `/channel/UC…` segment of the author's URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// The author's name, which YouTube sets to the channel's title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_name: Option<String>,
    /// `media:group/media:description`, plain text with its line breaks. Push payloads carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `media:statistics/@views`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<u64>,
    /// `media:starRating/@count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub likes: Option<u64>,
    /// The alternate link is a `/shorts/` URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shorts: bool,
}

impl Item {
    /// The key that tells whether an item was seen before:
    ///
    /// - `yt:<video_id>` for YouTube items, so a push and a poll of the same video agree;
    /// - else `guid:<guid>`;
    /// - else `link:<url>`;
    /// - else `hash:<hex SHA-256 of title, summary_html and content_html>`, each followed by a
    ///   0x1F separator (missing fields count as empty), which is stable across runs.
    ///
    /// A guid or link over 1 KiB becomes `guid:sha256:<hex>` / `link:sha256:<hex>`.
    pub fn dedupe_key(&self) -> String {
        if let Some(yt) = &self.youtube {
            return format!("yt:{}", yt.video_id);
        }
        if let Some(guid) = self.guid.as_deref().filter(|g| !g.is_empty()) {
            return keyed("guid", guid);
        }
        if let Some(url) = self.url.as_deref().filter(|u| !u.is_empty()) {
            return keyed("link", url);
        }
        let mut hasher = Sha256::new();
        for part in [&self.title, &self.summary_html, &self.content_html] {
            hasher.update(part.as_deref().unwrap_or_default().as_bytes());
            hasher.update([0x1f]);
        }
        format!("hash:{}", hex::encode(hasher.finalize()))
    }
}

fn keyed(prefix: &str, value: &str) -> String {
    if value.len() <= MAX_KEY_VALUE_BYTES {
        format!("{prefix}:{value}")
    } else {
        format!("{prefix}:sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
    }
}

/// What a YouTube WebSub notification says: entries that are new or changed (a title or
/// description edit pushes the same video again), and videos deleted or made private.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    #[serde(default)]
    pub entries: Vec<Item>,
    #[serde(default)]
    pub deleted: Vec<Deleted>,
}

/// An `<at:deleted-entry ref="yt:video:ID">` tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub video_id: String,
    /// From `at:by/uri` (`…/channel/UC…`); the tombstone carries no `yt:channelId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// The tombstone's `link/@href`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The `when` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<DateTime<Utc>>,
}

/// Why a body could not be read as a feed. [`FeedError::code`] is stable; the message says what
/// was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the body is empty: the server answered without a feed; check the URL, or try again later")]
    Empty,
    #[error("the body is {size} bytes, over the {limit}-byte limit for feeds; use a feed URL that lists fewer items")]
    TooLarge { size: usize, limit: usize },
    #[error("the feed's bytes cannot be decoded: {0}")]
    Encoding(String),
    #[error(
        "the document declares XML entities (<!ENTITY> in its DOCTYPE), which are refused because they enable \
         entity-expansion and XXE attacks; the feed must not declare entities"
    )]
    EntitiesRefused,
    #[error("the document nests elements more than {limit} deep, which no real feed does; it was refused")]
    TooDeep { limit: usize },
    #[error("the document is not RSS, Atom or JSON Feed: {0}")]
    NotAFeed(String),
    #[error("the feed is malformed: {0}; check it with a validator such as https://validator.w3.org/feed/")]
    Malformed(String),
    #[error(
        "the feed parser failed on this document (a parser bug, not necessarily a bad feed); \
         check it with https://validator.w3.org/feed/ and report it with the feed's URL"
    )]
    ParserFailed,
}

impl FeedError {
    /// Every code [`FeedError::code`] can return, for documentation and tests.
    pub const CODES: &'static [&'static str] = &[
        "feed_empty",
        "feed_too_large",
        "feed_encoding",
        "feed_entities_refused",
        "feed_too_deep",
        "feed_not_a_feed",
        "feed_malformed",
        "feed_parser_failed",
    ];

    /// A stable snake_case code for API clients and logs.
    pub fn code(&self) -> &'static str {
        match self {
            FeedError::Empty => "feed_empty",
            FeedError::TooLarge { .. } => "feed_too_large",
            FeedError::Encoding(_) => "feed_encoding",
            FeedError::EntitiesRefused => "feed_entities_refused",
            FeedError::TooDeep { .. } => "feed_too_deep",
            FeedError::NotAFeed(_) => "feed_not_a_feed",
            FeedError::Malformed(_) => "feed_malformed",
            FeedError::ParserFailed => "feed_parser_failed",
        }
    }
}

/// Parses a feed body, as raw bytes (do not decode it first: the encoding is read from the
/// document). `base` is the URL it was fetched from; relative links resolve against the
/// `xml:base` in scope, then the feed's own link, then `base`.
pub fn parse(body: &[u8], base: Option<&Url>) -> Result<ParsedFeed, FeedError> {
    match decode::decode(body)? {
        decode::Document::Json(text) => json::parse(&text, base),
        decode::Document::Xml(text) => xml::parse(text, base).map(|(feed, _)| feed),
    }
}

/// Parses the body of a YouTube WebSub notification (an Atom document): its entries, each with
/// [`Item::youtube`] set, and its `at:deleted-entry` tombstones.
pub fn parse_push(body: &[u8]) -> Result<Push, FeedError> {
    let text = match decode::decode(body)? {
        decode::Document::Xml(text) => text,
        decode::Document::Json(_) => {
            return Err(FeedError::NotAFeed("a WebSub notification from YouTube is Atom XML, and this is JSON".into()));
        }
    };
    let (feed, tombstones) = xml::parse(text, None)?;
    let deleted = tombstones.into_iter().filter_map(xml::deleted).collect();
    Ok(Push { entries: feed.items, deleted })
}

//! RSS and Atom: the pre-scan, then feed-rs, then normalisation into [`Item`]s.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use chrono::{DateTime, Utc};
use feed_rs::model::{Entry, Feed, Link, MediaObject, Person, Text};
use feed_rs::parser::{ParseErrorKind, ParseFeedError};
use url::Url;

use super::scan::{self, EntryScan, RawMedia, Root, Tombstone};
use super::{Deleted, FeedError, Item, Media, MediaRole, ParsedFeed, YouTube, html};

/// Parses a decoded XML document; also returns its tombstones, for [`super::parse_push`].
pub(super) fn parse(text: String, base: Option<&Url>) -> Result<(ParsedFeed, Vec<Tombstone>), FeedError> {
    let mut scan = scan::scan(&text)?;
    let feed = match run_feed_rs(&scan.rewrite(&text, false)) {
        // A panic in feed-rs so far always came from a person or a duration; without them the
        // feed still has everything else.
        Err(FeedError::ParserFailed) => {
            tracing::debug!("feed-rs panicked; retrying without people and durations");
            run_feed_rs(&scan.rewrite(&text, true))?
        }
        other => other?,
    };

    // The pre-scan finds entries exactly where feed-rs does; if a document still makes them
    // disagree, the side data is dropped rather than attached to the wrong entries.
    let mut extras = std::mem::take(&mut scan.entries);
    if extras.len() != feed.entries.len() {
        tracing::debug!(
            scanned = extras.len(),
            parsed = feed.entries.len(),
            "feed entries disagree; side data dropped"
        );
        extras.clear();
    }
    let rss = matches!(scan.root, Root::Rss | Root::Rdf);
    let link = feed_link(&feed.links, base);
    let ctx = Context { rss, link: link.as_ref(), base, feed_authors: &feed.authors };

    let mut extras = extras.into_iter();
    let items = feed.entries.iter().map(|entry| item(entry, extras.next().unwrap_or_default(), &ctx)).collect();
    let parsed =
        ParsedFeed { title: feed.title.as_ref().and_then(|t| text_of(t, rss)), link: link.map(String::from), items };
    Ok((parsed, scan.tombstones))
}

fn run_feed_rs(text: &str) -> Result<Feed, FeedError> {
    // feed-rs has panics reachable from input (slicing a person's name at a non-char boundary,
    // unwrapping durations that overflow); contain them. Its parser is built and dropped inside,
    // so no state from a panicked run is reused.
    let result = catch_unwind(AssertUnwindSafe(|| {
        feed_rs::parser::Builder::new()
            // Leave missing ids empty: dedupe_key has its own fallbacks.
            .id_generator(|_, _, _| String::new())
            .sanitize_content(false)
            .build()
            .parse(text.as_bytes())
    }));
    match result {
        Ok(Ok(feed)) => Ok(feed),
        Ok(Err(ParseFeedError::ParseError(ParseErrorKind::NoFeedRoot))) => {
            Err(FeedError::NotAFeed("no RSS channel, RDF items or Atom feed were found in it".into()))
        }
        Ok(Err(e)) => Err(FeedError::Malformed(e.to_string())),
        Err(_) => Err(FeedError::ParserFailed),
    }
}

struct Context<'a> {
    rss: bool,
    link: Option<&'a Url>,
    base: Option<&'a Url>,
    feed_authors: &'a [Person],
}

fn item(entry: &Entry, extras: EntryScan, ctx: &Context<'_>) -> Item {
    // Relative URLs: the xml:base in scope, then the feed's own link, then the fetch URL.
    // (feed-rs already applied xml:base to links; applying it again is harmless.)
    let bases = [extras.base.as_ref(), ctx.link, ctx.base];
    let html_bases = [extras.html_base.as_ref().or(extras.base.as_ref()), ctx.link, ctx.base];
    let html_base = html_bases.into_iter().flatten().next();

    let guid = Some(entry.id.trim()).filter(|id| !id.is_empty()).map(str::to_owned);
    let mut url = pick_link(&entry.links).and_then(|l| absolute(&l.href, &bases));
    if url.is_none() && ctx.rss && extras.guid_is_permalink == Some(true) {
        // RSS: a guid is the item's permalink unless isPermaLink="false".
        url = guid.as_deref().and_then(|g| absolute(g, &[]));
    }

    let (summary_html, summary_text) = match &entry.summary {
        Some(summary) => html_and_text(&summary.content, summary.content_type.as_str(), ctx.rss, html_base),
        None => (None, None),
    };
    let content_html = entry.content.as_ref().and_then(|content| {
        let body = content.body.as_deref()?;
        html_and_text(body, content.content_type.as_str(), ctx.rss, html_base).0
    });

    let mut seen = HashSet::new();
    let categories: Vec<String> = entry
        .categories
        .iter()
        .filter_map(|c| html::collapse(c.label.as_deref().unwrap_or(&c.term)))
        .filter(|name| seen.insert(name.clone()))
        .collect();

    let mut media = Vec::new();
    if extras.media.is_empty() {
        media.extend(entry.media.iter().flat_map(|object| media_of(object, &bases)));
    }
    media.extend(extras.media.iter().filter_map(|raw| raw_media(raw, ctx)));
    media.extend(entry.links.iter().filter(|l| l.rel.as_deref() == Some("enclosure")).filter_map(|link| {
        Some(Media {
            url: absolute(&link.href, &bases)?.into(),
            role: MediaRole::Enclosure,
            mime: link.media_type.clone(),
            length: link.length,
            width: None,
            height: None,
            duration_secs: None,
        })
    }));
    let mut seen = HashSet::new();
    media.retain(|m| seen.insert((m.url.clone(), m.role)));

    let author = author_of(&entry.authors).or_else(|| author_of(ctx.feed_authors));
    let mut item = Item {
        guid,
        title: entry.title.as_ref().and_then(|t| text_of(t, ctx.rss)),
        url: url.map(String::from),
        summary_html,
        summary_text,
        content_html,
        published: entry.published,
        updated: entry.updated,
        author,
        categories,
        media,
        youtube: None,
    };
    item.youtube = youtube(entry, extras, &item);
    item
}

/// A title or feed title as plain text. RSS titles are HTML in practice (escaped markup and
/// entities are everywhere), Atom says which it is.
fn text_of(text: &Text, rss: bool) -> Option<String> {
    if !rss && text.content_type.as_str() == "text/plain" {
        html::collapse(&text.content)
    } else {
        html::to_text(&text.content)
    }
}

/// Sanitised HTML and plain text for a summary or content of the given media type. RSS bodies
/// are HTML; Atom and JSON Feed say.
fn html_and_text(body: &str, media_type: &str, rss: bool, base: Option<&Url>) -> (Option<String>, Option<String>) {
    match media_type {
        "text/plain" if !rss => (html::escape(body), html::collapse(body)),
        // feed-rs spells XHTML "application/xhtml".
        "text/plain" | "text/html" | "application/xhtml" | "application/xhtml+xml" => {
            (html::sanitize(body, base), html::to_text(body))
        }
        // Inline XML or base64 content is not something to show.
        _ => (None, None),
    }
}

/// The entry's web page: an alternate link, preferring HTML, else any link that is not about
/// the feed machinery.
fn pick_link(links: &[Link]) -> Option<&Link> {
    let alternate = |l: &&Link| l.target.is_none() && matches!(l.rel.as_deref(), None | Some("alternate"));
    let html = |l: &&Link| l.media_type.as_deref().is_none_or(|t| t.contains("html"));
    links.iter().filter(alternate).find(html).or_else(|| links.iter().find(alternate)).or_else(|| {
        links.iter().find(|l| {
            l.target.is_none()
                && !matches!(l.rel.as_deref(), Some("self" | "edit" | "enclosure" | "replies" | "hub" | "license"))
        })
    })
}

/// The feed's own link: its alternate (the site), else its self link.
fn feed_link(links: &[Link], base: Option<&Url>) -> Option<Url> {
    let find = |rels: &[Option<&str>]| links.iter().find(|l| rels.contains(&l.rel.as_deref()) && l.target.is_none());
    let link = find(&[None, Some("alternate")]).or_else(|| find(&[Some("self")]))?;
    absolute(&link.href, &[base])
}

/// An absolute http(s) URL, resolving a relative one against the first base that takes it.
pub(super) fn absolute(raw: &str, bases: &[Option<&Url>]) -> Option<Url> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let url = match Url::parse(raw) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => bases.iter().flatten().find_map(|base| base.join(raw).ok())?,
        Err(_) => return None,
    };
    matches!(url.scheme(), "http" | "https").then_some(url)
}

fn raw_media(raw: &RawMedia, ctx: &Context<'_>) -> Option<Media> {
    Some(Media {
        url: absolute(&raw.url, &[raw.base.as_ref(), ctx.link, ctx.base])?.into(),
        role: raw.role,
        mime: raw.mime.as_deref().map(str::trim).map(str::to_owned),
        length: raw.length,
        width: raw.width,
        height: raw.height,
        duration_secs: raw.duration_secs,
    })
}

/// feed-rs's media, used only when the pre-scan's could not be matched to the entry.
fn media_of(object: &MediaObject, bases: &[Option<&Url>]) -> Vec<Media> {
    let contents = object.content.iter().filter_map(|c| {
        Some(Media {
            url: absolute(c.url.as_ref()?.as_str(), bases)?.into(),
            role: MediaRole::Content,
            mime: c.content_type.as_ref().map(|t| t.to_string()),
            length: c.size,
            width: c.width,
            height: c.height,
            duration_secs: c.duration.map(|d| d.as_secs()),
        })
    });
    let thumbnails = object.thumbnails.iter().filter_map(|t| {
        Some(Media {
            url: absolute(&t.image.uri, bases)?.into(),
            role: MediaRole::Thumbnail,
            mime: None,
            length: None,
            width: t.image.width,
            height: t.image.height,
            duration_secs: None,
        })
    });
    contents.chain(thumbnails).collect()
}

fn author_of(people: &[Person]) -> Option<String> {
    people
        .iter()
        .find_map(|p| p.name.as_deref().and_then(person_name).or_else(|| p.email.as_deref().and_then(html::collapse)))
}

/// RSS writes `jo@example.com (Jo Bloggs)`, and feed-rs leaves the parentheses on the name.
fn person_name(name: &str) -> Option<String> {
    let name = name.trim();
    let name = name.strip_prefix('(').and_then(|n| n.strip_suffix(')')).unwrap_or(name);
    html::collapse(name)
}

fn youtube(entry: &Entry, extras: EntryScan, item: &Item) -> Option<YouTube> {
    let video_id = extras.yt_video_id.or_else(|| entry.id.trim().strip_prefix("yt:video:").map(str::to_owned))?;
    if !is_youtube_id(&video_id) {
        return None;
    }
    let author = entry.authors.first();
    let channel_id = extras
        .yt_channel_id
        .filter(|id| is_youtube_id(id))
        .or_else(|| author.and_then(|a| a.uri.as_deref()).and_then(channel_from_uri));
    let community = entry.media.iter().find_map(|m| m.community.as_ref());
    let description = extras.media_description.or_else(|| {
        entry
            .media
            .iter()
            .find_map(|m| m.description.as_ref())
            .map(|d| d.content.trim().to_owned())
            .filter(|d| !d.is_empty())
    });
    Some(YouTube {
        video_id,
        channel_id,
        channel_name: author.and_then(|a| a.name.as_deref()).and_then(person_name),
        description,
        views: extras.views.or_else(|| community.and_then(|c| c.stats_views)),
        likes: extras.likes.or_else(|| community.and_then(|c| c.stars_count)),
        shorts: item.url.as_deref().and_then(|u| Url::parse(u).ok()).is_some_and(|u| u.path().starts_with("/shorts/")),
    })
}

/// Video and channel ids are URL-safe base64 (`dQw4w9WgXcQ`, `UC…`); anything else is not one.
fn is_youtube_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `https://www.youtube.com/channel/UC…` → `UC…`.
fn channel_from_uri(uri: &str) -> Option<String> {
    let url = Url::parse(uri.trim()).ok()?;
    let mut segments = url.path_segments()?;
    segments.by_ref().find(|s| *s == "channel")?;
    segments.next().filter(|id| is_youtube_id(id)).map(str::to_owned)
}

/// A tombstone as a [`Deleted`] video; tombstones for anything but a YouTube video are skipped.
pub(super) fn deleted(tombstone: Tombstone) -> Option<Deleted> {
    let video_id = tombstone.reference.trim().strip_prefix("yt:video:")?;
    if !is_youtube_id(video_id) {
        return None;
    }
    Some(Deleted {
        video_id: video_id.to_owned(),
        channel_id: tombstone.by_uri.as_deref().and_then(channel_from_uri),
        url: tombstone.link.as_deref().and_then(|l| absolute(l, &[tombstone.base.as_ref()])).map(String::from),
        when: tombstone.when.as_deref().and_then(timestamp),
    })
}

/// RFC 3339 (Atom, JSON Feed, YouTube), else RFC 2822.
pub(super) fn timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_rfc2822(text))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

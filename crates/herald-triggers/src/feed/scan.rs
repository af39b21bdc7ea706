//! The pre-scan: one iterative pass of quick-xml over the decoded document, before feed-rs.
//!
//! It is the safety gate (entity declarations and deep nesting are refused here, so feed-rs never
//! sees them) and it collects what feed-rs does not expose, per entry in document order:
//! `yt:` elements, Media RSS, enclosures, `xml:base` scopes, and Atom tombstones. Entries are
//! found exactly where feed-rs looks for them (`feed/entry`, the first `rss/channel`'s `item`s,
//! `RDF/item`), so the n-th scanned entry is feed-rs's n-th entry.
//!
//! It also repairs what makes feed-rs reject a whole feed although a reader would not: a bare
//! `&` in text (`AT&T`), an `<rss>` without `version`, and an empty `media:title` or
//! `media:description` (YouTube sends `<media:description></media:description>` for every video
//! without one).

use std::borrow::Cow;

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use url::Url;

use super::{FeedError, MAX_DEPTH, MediaRole};

const ATOM: &str = "http://www.w3.org/2005/Atom";
const RSS1: &str = "http://purl.org/rss/1.0/";
const YT: &str = "http://www.youtube.com/xml/schemas/2015";
const TOMBSTONES: &str = "http://purl.org/atompub/tombstones/1.0";
const ITUNES: &str = "http://www.itunes.com/dtds/podcast-1.0.dtd";

/// Captured text (descriptions) is cut here; the whole body is at most 8 MiB anyway.
const MAX_CAPTURE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Root {
    Atom,
    AtomEntry,
    Rss,
    Rdf,
}

#[derive(Debug)]
pub(super) struct Scan {
    pub root: Root,
    pub entries: Vec<EntryScan>,
    pub tombstones: Vec<Tombstone>,
    /// Repairs that make the text acceptable to feed-rs, by byte offset, ascending.
    edits: Vec<Edit>,
    /// Byte ranges of the outermost [`RISKY`] elements, ascending.
    risky: Vec<(usize, usize)>,
}

/// Replace `remove` bytes at `at` with `insert`.
#[derive(Debug)]
struct Edit {
    at: usize,
    remove: usize,
    insert: Cow<'static, str>,
}

#[derive(Debug, Default)]
pub(super) struct EntryScan {
    /// The `xml:base` in scope at the entry.
    pub base: Option<Url>,
    /// The `xml:base` in scope at its summary or content element.
    pub html_base: Option<Url>,
    /// RSS `guid/@isPermaLink`, when there is a guid.
    pub guid_is_permalink: Option<bool>,
    pub yt_video_id: Option<String>,
    pub yt_channel_id: Option<String>,
    pub media_description: Option<String>,
    pub views: Option<u64>,
    pub likes: Option<u64>,
    pub media: Vec<RawMedia>,
}

#[derive(Debug)]
pub(super) struct RawMedia {
    pub url: String,
    /// The `xml:base` in scope at the element.
    pub base: Option<Url>,
    pub role: MediaRole,
    pub mime: Option<String>,
    pub length: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_secs: Option<u64>,
}

#[derive(Debug, Default)]
pub(super) struct Tombstone {
    pub reference: String,
    pub when: Option<String>,
    pub link: Option<String>,
    pub by_uri: Option<String>,
    pub base: Option<Url>,
}

impl Scan {
    /// The text for feed-rs: the scanned text with the repairs applied. With `without_risky`,
    /// the elements feed-rs has been seen to panic on are also removed (see [`RISKY`]), for a
    /// second attempt after a first one panicked.
    pub fn rewrite(&self, text: &str, without_risky: bool) -> String {
        let mut ops: Vec<(usize, usize, &str)> =
            self.edits.iter().map(|e| (e.at, e.remove, e.insert.as_ref())).collect();
        if without_risky {
            // The ranges are ascending and disjoint: the only one that can hold `at` is the last
            // that starts at or before it (or, for a removal, the first that starts inside it).
            let inside = |at: usize, remove: usize| {
                let i = self.risky.partition_point(|&(start, _)| start <= at);
                let before = i.checked_sub(1).and_then(|i| self.risky.get(i));
                let holds =
                    before.is_some_and(|&(start, end)| if remove == 0 { start < at && at < end } else { at < end });
                holds || self.risky.get(i).is_some_and(|&(start, _)| at + remove > start)
            };
            ops.retain(|&(at, remove, _)| !inside(at, remove));
            ops.extend(self.risky.iter().map(|&(start, end)| (start, end.saturating_sub(start), "")));
            ops.sort_by_key(|&(at, _, _)| at);
        }
        let mut out = String::with_capacity(text.len() + ops.len() * 4);
        let mut from = 0;
        for (at, remove, insert) in ops {
            // Offsets come from quick-xml over this very text, so they are char boundaries; a
            // bad or overlapping one is skipped rather than trusted.
            let (Some(chunk), Some(_)) = (text.get(from..at), text.get(at..at + remove)) else { continue };
            out.push_str(chunk);
            out.push_str(insert);
            from = at + remove;
        }
        out.push_str(text.get(from..).unwrap_or_default());
        out
    }
}

/// Elements whose text feed-rs parses with panicking code: people (an email next to a
/// multi-byte character makes it slice inside the character) and durations (it unwraps
/// overflowing or non-ASCII numbers). They are dropped on the second attempt.
const RISKY: &[&str] = &["author", "managingEditor", "webMaster", "creator", "duration", "text", "thumbnail"];

/// The namespace of an element, reduced to the ones the scan cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    /// No namespace, or a prefix nobody declared; feed-rs reads both as the format's own.
    Default,
    Atom,
    Rss1,
    YouTube,
    Media,
    Tombstones,
    Itunes,
    Other,
}

impl Ns {
    fn of(resolved: &ResolveResult<'_>) -> Ns {
        match resolved {
            ResolveResult::Unbound => Ns::Default,
            ResolveResult::Bound(ns) => match ns.as_ref() {
                ATOM => Ns::Atom,
                RSS1 => Ns::Rss1,
                YT => Ns::YouTube,
                // Both spellings are in the wild.
                "http://search.yahoo.com/mrss/" | "http://search.yahoo.com/mrss" => Ns::Media,
                TOMBSTONES => Ns::Tombstones,
                ITUNES => Ns::Itunes,
                _ => Ns::Other,
            },
            // Undeclared prefixes: take the conventional ones at their word.
            ResolveResult::Unknown(prefix) => match prefix.as_str() {
                "yt" => Ns::YouTube,
                "media" => Ns::Media,
                "at" => Ns::Tombstones,
                "itunes" => Ns::Itunes,
                _ => Ns::Default,
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    VideoId,
    ChannelId,
    MediaDescription,
    ByUri,
}

struct Capture {
    depth: usize,
    target: Target,
    text: String,
}

struct Walker<'t> {
    text: &'t str,
    depth: usize,
    root: Option<Root>,
    /// `xml:base` values in scope, with the depth of the element that set each.
    bases: Vec<(usize, Url)>,
    /// Whether the first `channel` of an RSS document was seen, and whether we are in it.
    channel_seen: bool,
    in_channel: bool,
    entry: Option<(usize, EntryScan)>,
    tombstone: Option<Tombstone>,
    in_by: bool,
    capture: Option<Capture>,
    /// Where to insert a space if the Media RSS text element that just opened has no text.
    needs_text: Option<usize>,
    /// The depth and start of the [`RISKY`] element we are in.
    in_risky: Option<(usize, usize)>,
    risky: Vec<(usize, usize)>,
    entries: Vec<EntryScan>,
    tombstones: Vec<Tombstone>,
    edits: Vec<Edit>,
}

/// Scans a decoded document (see the module documentation).
pub(super) fn scan(text: &str) -> Result<Scan, FeedError> {
    let mut reader = NsReader::from_str(text);
    let config = reader.config_mut();
    config.allow_dangling_amp = true;
    config.expand_empty_elements = false;
    config.trim_text(false);

    let mut walker = Walker {
        text,
        depth: 0,
        root: None,
        bases: Vec::new(),
        channel_seen: false,
        in_channel: false,
        entry: None,
        tombstone: None,
        in_by: false,
        capture: None,
        needs_text: None,
        in_risky: None,
        risky: Vec::new(),
        entries: Vec::new(),
        tombstones: Vec::new(),
        edits: Vec::new(),
    };
    loop {
        let start = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let (resolved, event) = match reader.read_resolved_event() {
            Ok(pair) => pair,
            Err(e) => {
                return Err(FeedError::Malformed(format!("{e} (near byte {})", reader.error_position())));
            }
        };
        let ns = Ns::of(&resolved);
        let end = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        walker.check_text(&event);
        match event {
            Event::Start(e) => {
                walker.open(ns, &e, start)?;
                if is_media_text(ns, &e) {
                    walker.needs_text = Some(end);
                }
                if walker.in_risky.is_none() && RISKY.contains(&e.local_name().into_inner()) {
                    walker.in_risky = Some((walker.depth, start));
                }
            }
            Event::Empty(e) => {
                walker.open(ns, &e, start)?;
                walker.close();
                if walker.in_risky.is_none() && RISKY.contains(&e.local_name().into_inner()) {
                    walker.risky.push((start, end));
                }
                if is_media_text(ns, &e) && walker.text.get(end.saturating_sub(2)..end) == Some("/>") {
                    let insert = format!("> </{}>", e.name().into_inner());
                    walker.edits.push(Edit { at: end - 2, remove: 2, insert: Cow::Owned(insert) });
                }
            }
            Event::End(_) => {
                if let Some((depth, from)) = walker.in_risky
                    && depth == walker.depth
                {
                    walker.risky.push((from, end));
                    walker.in_risky = None;
                }
                walker.close();
            }
            Event::Text(t) => {
                walker.note_dangling_amps(start, &t);
                walker.append(&t);
            }
            Event::CData(t) => walker.append(&t),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c.to_string()),
                    Ok(None) => quick_xml::escape::resolve_predefined_entity(&r).map(str::to_owned),
                    Err(_) => None,
                };
                walker.append(&resolved.unwrap_or_else(|| format!("&{};", &*r)));
            }
            Event::DocType(t) => walker.doctype(&t)?,
            Event::Decl(_) => {
                return Err(FeedError::Malformed(
                    "an XML declaration (<?xml …?>) appears after the start of the document".into(),
                ));
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    let Some(root) = walker.root else {
        return Err(FeedError::NotAFeed("it has no root element".into()));
    };
    if walker.depth > 0 {
        return Err(FeedError::Malformed("the document ends before its elements are closed (was it cut off?)".into()));
    }
    walker.edits.sort_by_key(|edit| edit.at);
    Ok(Scan { root, entries: walker.entries, tombstones: walker.tombstones, edits: walker.edits, risky: walker.risky })
}

impl Walker<'_> {
    fn open(&mut self, ns: Ns, e: &BytesStart<'_>, start: usize) -> Result<(), FeedError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FeedError::TooDeep { limit: MAX_DEPTH });
        }
        let local = e.local_name().into_inner().to_owned();
        let attrs = Attrs::of(e);
        if let Some(base) = attrs.get("xml:base") {
            let resolved = match Url::parse(&base) {
                Ok(url) => Some(url),
                Err(url::ParseError::RelativeUrlWithoutBase) => self.base().and_then(|b| b.join(&base).ok()),
                Err(_) => None,
            };
            if let Some(url) = resolved {
                self.bases.push((self.depth, url));
            }
        }

        if self.depth == 1 {
            return self.open_root(&local, e, &attrs, start);
        }
        let depth = self.depth;
        match self.root {
            Some(Root::Atom) if depth == 2 && local == "entry" && matches!(ns, Ns::Default | Ns::Atom) => {
                self.start_entry();
            }
            Some(Root::Atom) if depth == 2 && local == "deleted-entry" && ns == Ns::Tombstones => {
                self.tombstone = Some(Tombstone {
                    reference: attrs.get("ref").unwrap_or_default(),
                    when: attrs.get("when"),
                    base: self.base().cloned(),
                    ..Tombstone::default()
                });
            }
            // feed-rs reads the first element named `channel`, whatever its namespace.
            Some(Root::Rss) if depth == 2 && local == "channel" && !self.channel_seen => {
                self.channel_seen = true;
                self.in_channel = true;
            }
            Some(Root::Rss)
                if depth == 3 && self.in_channel && local == "item" && matches!(ns, Ns::Default | Ns::Rss1) =>
            {
                self.start_entry();
            }
            Some(Root::Rdf) if depth == 2 && local == "item" && matches!(ns, Ns::Default | Ns::Rss1) => {
                self.start_entry();
            }
            _ => {
                if self.entry.is_some() {
                    self.in_entry(ns, &local, &attrs);
                } else if self.tombstone.is_some() {
                    self.in_tombstone(ns, &local, &attrs);
                }
            }
        }
        Ok(())
    }

    fn open_root(&mut self, local: &str, e: &BytesStart<'_>, attrs: &Attrs, start: usize) -> Result<(), FeedError> {
        if self.root.is_some() {
            return Err(FeedError::Malformed("the document has more than one root element".into()));
        }
        let root = match local {
            "feed" => Root::Atom,
            "entry" => Root::AtomEntry,
            "rss" => Root::Rss,
            "RDF" => Root::Rdf,
            name if name.eq_ignore_ascii_case("html") => return Err(not_a_feed_html()),
            _ => {
                let name = e.name().into_inner().chars().take(60).collect::<String>();
                return Err(FeedError::NotAFeed(format!("its root element is <{name}>")));
            }
        };
        if root == Root::Rss {
            match attrs.get("version").as_deref().map(str::trim) {
                Some("2.0" | "0.91" | "0.92" | "") => {}
                // feed-rs dispatches on the version; without one, read it as 2.0 (which reads
                // every 0.9x feed too).
                None => {
                    if self.text.get(start..start + 4) == Some("<rss") {
                        self.edits.push(Edit { at: start + 4, remove: 0, insert: Cow::Borrowed(" version=\"2.0\"") });
                    }
                }
                Some(other) => {
                    let other = other.chars().take(20).collect::<String>();
                    return Err(FeedError::NotAFeed(format!(
                        "it is RSS version \"{other}\", and Herald reads RSS 0.91, 0.92, 1.0 and 2.0"
                    )));
                }
            }
        }
        self.root = Some(root);
        if root == Root::AtomEntry {
            self.start_entry();
        }
        Ok(())
    }

    fn start_entry(&mut self) {
        self.entry = Some((self.depth, EntryScan { base: self.base().cloned(), ..EntryScan::default() }));
    }

    fn in_entry(&mut self, ns: Ns, local: &str, attrs: &Attrs) {
        let depth = self.depth;
        let base = self.base().cloned();
        let Some((entry_depth, entry)) = self.entry.as_mut() else { return };
        let child = depth == *entry_depth + 1;
        let mut capture = None;
        match (ns, local) {
            (Ns::Default | Ns::Atom | Ns::Rss1, "summary" | "description" | "content") if child => {
                entry.html_base = base;
            }
            (_, "encoded") if child => entry.html_base = base,
            (Ns::Default, "guid") if child => {
                entry.guid_is_permalink = Some(attrs.get("isPermaLink").is_none_or(|v| v.trim() != "false"));
            }
            (Ns::Default, "enclosure") if child => {
                if let Some(url) = attrs.get("url") {
                    entry.media.push(RawMedia {
                        url,
                        base,
                        role: MediaRole::Enclosure,
                        mime: attrs.get("type").filter(|t| !t.trim().is_empty()),
                        length: attrs.number("length"),
                        width: None,
                        height: None,
                        duration_secs: None,
                    });
                }
            }
            (Ns::YouTube, "videoId") if entry.yt_video_id.is_none() => capture = Some(Target::VideoId),
            (Ns::YouTube, "channelId") if entry.yt_channel_id.is_none() => capture = Some(Target::ChannelId),
            (Ns::Media, "description") if entry.media_description.is_none() => {
                capture = Some(Target::MediaDescription);
            }
            (Ns::Media, "starRating") => entry.likes = attrs.number("count").or(entry.likes),
            (Ns::Media, "statistics") => entry.views = attrs.number("views").or(entry.views),
            (Ns::Media, "thumbnail") | (Ns::Itunes, "image") => {
                let url = if ns == Ns::Itunes { attrs.get("href") } else { attrs.get("url") };
                if let Some(url) = url {
                    entry.media.push(RawMedia {
                        url,
                        base,
                        role: MediaRole::Thumbnail,
                        mime: None,
                        length: None,
                        width: attrs.number("width"),
                        height: attrs.number("height"),
                        duration_secs: None,
                    });
                }
            }
            (Ns::Media, "content") => {
                if let Some(url) = attrs.get("url") {
                    entry.media.push(RawMedia {
                        url,
                        base,
                        role: MediaRole::Content,
                        mime: attrs.get("type").filter(|t| !t.trim().is_empty()),
                        length: attrs.number("fileSize"),
                        width: attrs.number("width"),
                        height: attrs.number("height"),
                        duration_secs: attrs.seconds("duration"),
                    });
                }
            }
            _ => {}
        }
        if let Some(target) = capture {
            self.capture = Some(Capture { depth, target, text: String::new() });
        }
    }

    fn in_tombstone(&mut self, ns: Ns, local: &str, attrs: &Attrs) {
        let Some(tombstone) = self.tombstone.as_mut() else { return };
        match (self.depth, ns, local) {
            (3, Ns::Default | Ns::Atom, "link") if tombstone.link.is_none() => tombstone.link = attrs.get("href"),
            (3, Ns::Tombstones, "by") => self.in_by = true,
            (4, Ns::Default | Ns::Atom, "uri") if self.in_by => {
                self.capture = Some(Capture { depth: self.depth, target: Target::ByUri, text: String::new() });
            }
            _ => {}
        }
    }

    fn close(&mut self) {
        let depth = self.depth;
        if self.capture.as_ref().is_some_and(|c| c.depth == depth)
            && let Some(capture) = self.capture.take()
        {
            self.finish_capture(capture);
        }
        if self.entry.as_ref().is_some_and(|(d, _)| *d == depth)
            && let Some((_, entry)) = self.entry.take()
        {
            self.entries.push(entry);
        }
        match depth {
            2 => {
                if let Some(tombstone) = self.tombstone.take() {
                    self.tombstones.push(tombstone);
                }
                self.in_channel = false;
            }
            3 => self.in_by = false,
            _ => {}
        }
        while self.bases.last().is_some_and(|(d, _)| *d >= depth) {
            self.bases.pop();
        }
        self.depth = depth.saturating_sub(1);
    }

    fn finish_capture(&mut self, capture: Capture) {
        let text = capture.text.trim();
        if text.is_empty() {
            return;
        }
        let text = text.to_owned();
        if let Target::ByUri = capture.target {
            if let Some(tombstone) = self.tombstone.as_mut() {
                tombstone.by_uri = Some(text);
            }
            return;
        }
        let Some((_, entry)) = self.entry.as_mut() else { return };
        match capture.target {
            Target::VideoId => entry.yt_video_id = Some(text),
            Target::ChannelId => entry.yt_channel_id = Some(text),
            Target::MediaDescription => entry.media_description = Some(text),
            Target::ByUri => {}
        }
    }

    fn append(&mut self, text: &str) {
        if let Some(capture) = self.capture.as_mut()
            && capture.text.len() < MAX_CAPTURE_BYTES
        {
            capture.text.push_str(text);
        }
    }

    /// With `allow_dangling_amp`, quick-xml reports valid references as separate events, so an
    /// `&` inside a text event is one that starts no reference. Escape it for feed-rs.
    fn note_dangling_amps(&mut self, start: usize, raw: &str) {
        if !raw.contains('&') {
            return;
        }
        let Some(span) = self.text.get(start..start.saturating_add(raw.len())) else { return };
        if span != raw {
            return;
        }
        for (i, _) in raw.match_indices('&') {
            self.edits.push(Edit { at: start + i + 1, remove: 0, insert: Cow::Borrowed("amp;") });
        }
    }

    /// feed-rs fails the feed when a `media:title` or `media:description` does not start with
    /// text; give it a space, which it trims away.
    fn check_text(&mut self, event: &Event<'_>) {
        let Some(at) = self.needs_text.take() else { return };
        match event {
            Event::Text(t) if !t.is_empty() => {}
            Event::CData(t) if !t.is_empty() => {}
            Event::GeneralRef(_) => {}
            Event::Comment(_) | Event::PI(_) => self.needs_text = Some(at),
            _ => self.edits.push(Edit { at, remove: 0, insert: Cow::Borrowed(" ") }),
        }
    }

    fn doctype(&mut self, content: &str) -> Result<(), FeedError> {
        // Any declaration is refused: nothing in a feed needs one, and refusing them all is
        // simpler to trust than expanding them with limits. DTDs named by URL are never fetched.
        if content.to_ascii_uppercase().contains("<!ENTITY") {
            return Err(FeedError::EntitiesRefused);
        }
        let name = content.split_whitespace().next().unwrap_or_default();
        if self.root.is_none() && name.eq_ignore_ascii_case("html") {
            return Err(not_a_feed_html());
        }
        Ok(())
    }

    fn base(&self) -> Option<&Url> {
        self.bases.last().map(|(_, url)| url)
    }
}

fn is_media_text(ns: Ns, e: &BytesStart<'_>) -> bool {
    ns == Ns::Media && matches!(e.local_name().into_inner(), "title" | "description")
}

fn not_a_feed_html() -> FeedError {
    FeedError::NotAFeed(
        "it is an HTML page; use the page's feed URL instead (its <link rel=\"alternate\" \
         type=\"application/rss+xml\"> or application/atom+xml)"
            .into(),
    )
}

/// An element's attributes by qualified name, unescaped (raw when unescaping fails, as feed-rs
/// does).
struct Attrs(Vec<(String, String)>);

impl Attrs {
    fn of(e: &BytesStart<'_>) -> Attrs {
        let attrs = e
            .attributes()
            .with_checks(false)
            .filter_map(Result::ok)
            .map(|a| {
                let key = a.key.into_inner().to_owned();
                let value = quick_xml::escape::unescape(&a.value)
                    .map(|v| v.into_owned())
                    .unwrap_or_else(|_| a.value.to_string());
                (key, value)
            })
            .collect();
        Attrs(attrs)
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.get(name)?.trim().parse().ok()
    }

    /// Seconds, whole or fractional (`media:content/@duration`).
    fn seconds(&self, name: &str) -> Option<u64> {
        let value = self.get(name)?;
        let secs: f64 = value.trim().parse().ok()?;
        // Also rejects NaN.
        if !(0.0..1e12).contains(&secs) {
            return None;
        }
        Some(secs.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Option<&'static str> {
        scan(text).err().map(|e| e.code())
    }

    #[test]
    fn bare_ampersands_are_escaped() {
        let text = "<rss version=\"2.0\"><channel><item><title>AT&T &amp; Tom & Jerry&</title></item></channel></rss>";
        let scan = scan(text).expect("scans");
        assert_eq!(
            scan.rewrite(text, false),
            "<rss version=\"2.0\"><channel><item><title>AT&amp;T &amp; Tom &amp; Jerry&amp;</title></item></channel></rss>"
        );
    }

    #[test]
    fn empty_media_text_gets_a_space() {
        let text = r#"<feed xmlns:media="http://search.yahoo.com/mrss/"><entry><media:group><media:description></media:description><media:title/><media:description><!--c--></media:description><media:title>t</media:title></media:group></entry></feed>"#;
        assert_eq!(
            scan(text).expect("scans").rewrite(text, false),
            r#"<feed xmlns:media="http://search.yahoo.com/mrss/"><entry><media:group><media:description> </media:description><media:title> </media:title><media:description> <!--c--></media:description><media:title>t</media:title></media:group></entry></feed>"#
        );
    }

    #[test]
    fn risky_elements_can_be_dropped() {
        let text =
            "<rss><channel><item><author>a & <b/>b</author><title>A&B</title><dc:creator/></item></channel></rss>";
        let scan = scan(text).expect("scans");
        assert_eq!(
            scan.rewrite(text, true),
            "<rss version=\"2.0\"><channel><item><title>A&amp;B</title></item></channel></rss>"
        );
    }

    #[test]
    fn a_missing_rss_version_is_added() {
        let text = "<rss><channel/></rss>";
        assert_eq!(scan(text).expect("scans").rewrite(text, false), "<rss version=\"2.0\"><channel/></rss>");
        assert_eq!(code("<rss version=\"3.0\"><channel/></rss>"), Some("feed_not_a_feed"));
    }

    #[test]
    fn declarations_entities_and_depth() {
        assert_eq!(code("<rss version='2.0'><?xml version='1.0' encoding='latin1'?></rss>"), Some("feed_malformed"));
        assert_eq!(code("<!DOCTYPE r [<!entity a 'b'>]><rss/>"), Some("feed_entities_refused"));
        assert_eq!(code("<!DOCTYPE html><html><body><p>hi</body></html>"), Some("feed_not_a_feed"));
        let deep = format!("<feed>{}{}</feed>", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert_eq!(code(&deep), Some("feed_too_deep"));
        let ok = format!("<feed>{}{}</feed>", "<a>".repeat(MAX_DEPTH - 1), "</a>".repeat(MAX_DEPTH - 1));
        assert_eq!(code(&ok), None);
    }

    #[test]
    fn entries_are_found_where_feed_rs_looks() {
        let text = r#"<rss version="2.0"><item/><channel><item/><x><item/></x><item/></channel><channel><item/></channel></rss>"#;
        assert_eq!(scan(text).expect("scans").entries.len(), 2);
        let text = r#"<feed xmlns="http://www.w3.org/2005/Atom" xmlns:o="urn:other"><entry/><o:entry/><entry/></feed>"#;
        assert_eq!(scan(text).expect("scans").entries.len(), 2);
    }

    #[test]
    fn xml_base_scopes() {
        let text = r#"<feed xml:base="http://a.example/x/"><entry xml:base="y/"><content xml:base="/z/"/></entry><entry/></feed>"#;
        let scan = scan(text).expect("scans");
        let bases: Vec<_> = scan.entries.iter().map(|e| e.base.as_ref().map(Url::as_str)).collect();
        assert_eq!(bases, [Some("http://a.example/x/y/"), Some("http://a.example/x/")]);
        assert_eq!(scan.entries[0].html_base.as_ref().map(Url::as_str), Some("http://a.example/z/"));
    }
}

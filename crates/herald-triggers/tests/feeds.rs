//! The feed parser against a hand-written corpus (`tests/corpus`), generated documents (huge,
//! deep, UTF-16), and a few thousand seeded mutations of every corpus file.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herald_triggers::feed::{self, FeedError, Item, Media, MediaRole, ParsedFeed, YouTube};
use url::Url;

#[path = "../fuzz/promises.rs"]
mod promises;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

fn corpus(name: &str) -> Vec<u8> {
    std::fs::read(format!("{CORPUS}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(name: &str) -> ParsedFeed {
    feed::parse(&corpus(name), None).unwrap_or_else(|e| panic!("{name}: {} {e}", e.code()))
}

fn code(body: &[u8]) -> &'static str {
    match feed::parse(body, None) {
        Ok(parsed) => panic!("parsed, expected an error: {parsed:?}"),
        Err(e) => e.code(),
    }
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn media(url: &str, role: MediaRole) -> Media {
    Media { url: url.into(), role, mime: None, length: None, width: None, height: None, duration_secs: None }
}

fn ts(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    Some(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
}

/// Every HTML field of every item, for the safety checks.
fn html_fields(feed: &ParsedFeed) -> Vec<&str> {
    feed.items.iter().flat_map(|i| [&i.summary_html, &i.content_html]).flatten().map(String::as_str).collect()
}

#[test]
fn rss_091_with_the_netscape_doctype() {
    let feed = parse("rss091_netscape.xml");
    assert_eq!(feed.title.as_deref(), Some("WriteTheWeb"));
    assert_eq!(feed.link.as_deref(), Some("http://writetheweb.example/"));
    assert_eq!(feed.items.len(), 2);
    let first = &feed.items[0];
    assert_eq!(first.guid, None);
    assert_eq!(first.title.as_deref(), Some("Giving the world a pluggable Gnutella"));
    assert_eq!(first.url.as_deref(), Some("http://writetheweb.example/read.php?item=24"));
    // `&nbsp;` and `&eacute;` come from the DTD, which is never fetched: decoded as HTML.
    assert_eq!(
        first.summary_text.as_deref(),
        Some(
            "WorldOS is a framework on which to build programs that work like Freenet or Gnutella - allowing \
             distributed applications using peer-to-peer routing. Café talk."
        )
    );
    assert_eq!(first.dedupe_key(), "link:http://writetheweb.example/read.php?item=24");
}

#[test]
fn rss_10_rdf() {
    let feed = parse("rss10_rdf.xml");
    assert_eq!(feed.title.as_deref(), Some("Meerkat"));
    assert_eq!(feed.items.len(), 2);
    let first = &feed.items[0];
    assert_eq!(first.title.as_deref(), Some("XML: A Disruptive Technology"));
    assert_eq!(first.url.as_deref(), Some("http://c.moreover.example/click/here.pl?r123"));
    assert_eq!(first.author.as_deref(), Some("Simon St.Laurent"));
    assert_eq!(first.published, ts("2000-01-01T12:00:00Z"));
    assert!(first.summary_text.as_deref().is_some_and(|s| s.starts_with("XML is placing increasingly heavy loads")));
    // An item without its own creator takes the channel's.
    assert_eq!(feed.items[1].author.as_deref(), Some("Rael Dornfest"));
    assert_eq!(feed.items[1].title.as_deref(), Some("Second & last"));
}

#[test]
fn rss_20_with_everything() {
    let feed = parse("rss20_full.xml");
    assert_eq!(feed.title.as_deref(), Some("The Kitchen & Garden Podcast"));
    assert_eq!(feed.link.as_deref(), Some("https://kitchen.example/"));
    let [ep12, ep11] = &feed.items[..] else { panic!("{:?}", feed.items) };

    assert_eq!(ep12.guid.as_deref(), Some("kitchen-episode-12"));
    assert_eq!(ep12.title.as_deref(), Some("Episode 12: Crème brûlée"));
    assert_eq!(ep12.url.as_deref(), Some("https://kitchen.example/episodes/12"));
    assert_eq!(ep12.published, ts("2025-09-02T08:30:00Z"));
    assert_eq!(ep12.author.as_deref(), Some("Ana Ribeiro"));
    assert_eq!(ep12.categories, ["Desserts", "French"]);
    // CDATA holding HTML with named entities.
    assert_eq!(ep12.summary_text.as_deref(), Some("Café crème and a recipe."));
    assert_eq!(
        ep12.summary_html.as_deref(),
        Some(
            "<p>Café&nbsp;crème and a <a href=\"https://kitchen.example/recipes/creme-brulee\" \
             rel=\"noopener noreferrer\">recipe</a>.</p>"
        )
    );
    assert_eq!(
        ep12.content_html.as_deref(),
        Some(
            "<h1>Crème brûlée</h1><p>Full show notes with <img src=\"https://kitchen.example/img/torch.jpg\" \
             alt=\"torch\"> a torch.</p>"
        )
    );
    assert_eq!(
        ep12.media,
        [
            Media {
                mime: Some("audio/mpeg".into()),
                length: Some(24_986_239),
                ..media("https://cdn.kitchen.example/audio/ep12.mp3", MediaRole::Enclosure)
            },
            Media {
                width: Some(320),
                height: Some(180),
                ..media("https://cdn.kitchen.example/img/ep12-thumb.jpg", MediaRole::Thumbnail)
            },
            Media {
                mime: Some("video/mp4".into()),
                length: Some(104_857_600),
                width: Some(1280),
                height: Some(720),
                duration_secs: Some(1834),
                ..media("https://cdn.kitchen.example/video/ep12.mp4", MediaRole::Content)
            },
        ]
    );
    assert_eq!(ep12.dedupe_key(), "guid:kitchen-episode-12");

    // `email (Name)` authors, times with offsets, escaped HTML with double-escaped entities.
    assert_eq!(ep11.author.as_deref(), Some("Ana Ribeiro"));
    assert_eq!(ep11.published, ts("2025-08-26T06:30:00Z"));
    assert_eq!(ep11.summary_text.as_deref(), Some("Escaped HTML: Heirloom & cherry — sixty plants."));
    assert_eq!(
        ep11.summary_html.as_deref(),
        Some("Escaped HTML: <p>Heirloom &amp; cherry — <em>sixty</em> plants.</p>")
    );
    assert_eq!(ep11.content_html, None);
    assert_eq!(ep11.media.len(), 1);
}

#[test]
fn missing_guids_fall_back_to_links_then_a_stable_hash() {
    let feed = parse("rss20_missing_guids.xml");
    let keys: Vec<String> = feed.items.iter().map(Item::dedupe_key).collect();
    assert_eq!(keys[0], "link:https://noguid.example/a");
    // A guid that is a URL (isPermaLink defaults to true) is also the item's link.
    assert_eq!(feed.items[1].url.as_deref(), Some("https://noguid.example/b"));
    assert_eq!(keys[1], "guid:https://noguid.example/b");
    // No guid, no link: a hash of title, summary and content. Pinned (it is SHA-256 of
    // "Nothing but words\x1fJust a <b>status</b> update.\x1f\x1f"), so a change that would make
    // every such item look new is noticed.
    assert_eq!(feed.items[2].summary_html.as_deref(), Some("Just a <b>status</b> update."));
    assert_eq!(keys[2], "hash:bbf93c66a053c715a12c0b1253f63ec7d6ea5278e7c27934a69cd4651ad6cd93");
    assert!(keys[3].starts_with("hash:") && keys[3] != keys[2], "{keys:?}");
    let again: Vec<String> = parse("rss20_missing_guids.xml").items.iter().map(Item::dedupe_key).collect();
    assert_eq!(keys, again);
}

#[test]
fn dedupe_keys_hash_long_values_and_ignore_empty_ones() {
    let mut item = Item {
        guid: Some("g".repeat(2000)),
        title: None,
        url: None,
        summary_html: None,
        summary_text: None,
        content_html: None,
        published: None,
        updated: None,
        author: None,
        categories: Vec::new(),
        media: Vec::new(),
        youtube: None,
    };
    let key = item.dedupe_key();
    assert!(key.starts_with("guid:sha256:") && key.len() == "guid:sha256:".len() + 64, "{key}");
    item.guid = Some(String::new());
    item.url = Some("https://x.example/".into());
    assert_eq!(item.dedupe_key(), "link:https://x.example/");
}

#[test]
fn relative_links_resolve_against_xml_base_then_the_feed_link_then_the_fetch_url() {
    let feed = parse("rss20_relative_links.xml");
    let [one, two, bad] = &feed.items[..] else { panic!("{:?}", feed.items) };
    assert_eq!(one.url.as_deref(), Some("https://rel.example/blog/posts/one"));
    assert_eq!(
        one.summary_html.as_deref(),
        Some(
            "<a href=\"https://rel.example/about\" rel=\"noopener noreferrer\">about</a> \
             <img src=\"https://rel.example/blog/img/one.png\">"
        )
    );
    assert_eq!(one.media[0].url, "https://rel.example/media/one.mp3");
    assert_eq!(one.media[1], media("https://img.rel.example/one.jpg", MediaRole::Thumbnail));

    assert_eq!(two.url.as_deref(), Some("https://mirror.rel.example/archive/two.html"));
    assert_eq!(
        two.summary_html.as_deref(),
        Some("<a href=\"https://mirror.rel.example/archive/three.html\" rel=\"noopener noreferrer\">next</a>")
    );
    assert_eq!(two.media[0].url, "https://mirror.rel.example/archive/two.mp3");

    // Only http(s) links are kept.
    assert_eq!(bad.url, None);

    // Without a channel link, the URL the feed was fetched from is the base.
    let body = corpus("rss20_no_site_link.xml");
    let fetched = url("https://fetch.example/feeds/main.xml");
    let feed = feed::parse(&body, Some(&fetched)).expect("parses");
    assert_eq!(feed.items[0].url.as_deref(), Some("https://fetch.example/p/1"));
    assert_eq!(feed::parse(&body, None).expect("parses").items[0].url, None);
    // A channel link, when there is one, comes before the fetch URL.
    let feed = feed::parse(&corpus("rss20_relative_links.xml"), Some(&fetched)).expect("parses");
    assert_eq!(feed.items[0].url.as_deref(), Some("https://rel.example/blog/posts/one"));
}

#[test]
fn atom_titles_links_and_bases() {
    let feed = parse("atom_titles_links.xml");
    assert_eq!(feed.title.as_deref(), Some("Notes & Asides"));
    assert_eq!(feed.link.as_deref(), Some("https://atom.example/"));
    let [three, old, text] = &feed.items[..] else { panic!("{:?}", feed.items) };

    assert_eq!(three.guid.as_deref(), Some("tag:atom.example,2025:3"));
    assert_eq!(three.title.as_deref(), Some("Bold move & a \"quote\""));
    // Of edit, PDF alternate, HTML alternate, enclosure and replies links: the HTML alternate.
    assert_eq!(three.url.as_deref(), Some("https://atom.example/posts/3"));
    assert_eq!(three.published, ts("2025-09-02T07:00:00Z"));
    assert_eq!(three.updated, ts("2025-09-03T10:00:00Z"));
    assert_eq!(three.categories, ["Rust", "parsing"]);
    assert_eq!(three.summary_html.as_deref(), Some("Plain &lt;summary&gt; with   spaces"));
    assert_eq!(three.summary_text.as_deref(), Some("Plain <summary> with spaces"));
    assert_eq!(
        three.content_html.as_deref(),
        Some("<p>Hello <a href=\"https://atom.example/posts/2\" rel=\"noopener noreferrer\">previous</a></p>")
    );
    assert_eq!(
        three.media,
        [Media {
            mime: Some("audio/ogg".into()),
            length: Some(12345),
            ..media("https://atom.example/audio/3.ogg", MediaRole::Enclosure)
        }]
    );
    // Entries without an author take the feed's.
    assert_eq!(three.author.as_deref(), Some("Mei Chen"));

    assert_eq!(old.title.as_deref(), Some("An xhtml title"));
    assert_eq!(old.url.as_deref(), Some("https://atom.example/archive/2024/old-post"));
    assert_eq!(old.author.as_deref(), Some("Guest Writer"));
    assert_eq!(
        old.summary_html.as_deref(),
        Some(
            "<p>See <a href=\"https://atom.example/archive/2024/pic.png\" rel=\"noopener noreferrer\">the picture</a>.</p>"
        )
    );
    assert_eq!(old.summary_text.as_deref(), Some("See the picture."));

    // type="text" is literal: the `<tag>` is text, not markup.
    assert_eq!(text.title.as_deref(), Some("Text title with a <tag> in it"));
    assert_eq!(text.content_html.as_deref(), Some("Line one\nLine two &amp; three"));
    assert_eq!(text.url.as_deref(), Some("https://elsewhere.example/x"));
}

#[test]
fn a_lone_atom_entry_is_a_feed_of_one() {
    let feed = parse("atom_entry_document.xml");
    assert_eq!(feed.items.len(), 1);
    assert_eq!(feed.items[0].guid.as_deref(), Some("urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a"));
    assert_eq!(feed.items[0].summary_text.as_deref(), Some("Some text."));
}

#[test]
fn json_feed_10() {
    let feed = parse("jsonfeed_10.json");
    assert_eq!(feed.title.as_deref(), Some("Brent's Blog"));
    assert_eq!(feed.link.as_deref(), Some("https://brent.example/"));
    let [episode, linked] = &feed.items[..] else { panic!("{:?}", feed.items) };
    // A numeric id is kept, not a reason to drop the feed.
    assert_eq!(episode.guid.as_deref(), Some("2347259"));
    assert_eq!(episode.published, ts("2025-09-01T17:00:00Z"));
    assert_eq!(episode.author.as_deref(), Some("Brent Simmons"));
    assert_eq!(episode.content_html.as_deref(), Some("Show notes &lt;not html&gt; &amp; more"));
    assert_eq!(
        episode.media,
        [Media {
            mime: Some("audio/x-m4a".into()),
            length: Some(89_970_236),
            duration_secs: Some(6629),
            ..media("https://cdn.brent.example/ep1.m4a", MediaRole::Enclosure)
        }]
    );
    // external_url when there is no url; relative links in content against home_page_url.
    assert_eq!(linked.url.as_deref(), Some("https://elsewhere.example/article"));
    assert_eq!(
        linked.content_html.as_deref(),
        Some("<p>Linked <a href=\"https://brent.example/notes\" rel=\"noopener noreferrer\">note</a></p>")
    );
    assert_eq!(linked.categories, Vec::<String>::new());
}

#[test]
fn json_feed_11() {
    let feed = parse("jsonfeed_11.json");
    assert_eq!(feed.title.as_deref(), Some("Micro Notes"));
    let [hello, untitled] = &feed.items[..] else { panic!("{:?}", feed.items) };
    assert_eq!(hello.title.as_deref(), Some("Hello, world"));
    assert_eq!(hello.summary_text.as_deref(), Some("A short summary & nothing more"));
    assert_eq!(hello.summary_html.as_deref(), Some("A short summary &amp; nothing more"));
    assert_eq!(hello.content_html.as_deref(), Some("<p>Hi <img src=\"https://micro.example/photos/1.jpg\"></p>"));
    assert_eq!(hello.published, ts("2025-09-02T08:00:00Z"));
    assert_eq!(hello.updated, ts("2025-09-02T08:30:00Z"));
    // 1.1 authors: the first with a name.
    assert_eq!(hello.author.as_deref(), Some("Item Author"));
    assert_eq!(hello.categories, ["notes", "hello"]);
    assert_eq!(
        hello.media,
        [
            media("https://micro.example/photos/1-large.jpg", MediaRole::Thumbnail),
            Media {
                mime: Some("application/pdf".into()),
                length: Some(1024),
                duration_secs: Some(13),
                ..media("https://micro.example/files/a.pdf", MediaRole::Enclosure)
            },
        ]
    );
    assert_eq!(untitled.author.as_deref(), Some("Feed Author"));
    assert_eq!(untitled.dedupe_key(), "guid:untitled");
}

#[test]
fn youtube_channel_feed() {
    let feed = parse("youtube_channel.xml");
    assert_eq!(feed.title.as_deref(), Some("Herald Test Channel"));
    let [video, short] = &feed.items[..] else { panic!("{:?}", feed.items) };

    assert_eq!(video.title.as_deref(), Some("Tom & Jerry's \"Big\" Day"));
    assert_eq!(video.url.as_deref(), Some("https://www.youtube.com/watch?v=dQw4w9WgXcQ"));
    assert_eq!(video.published, ts("2025-09-01T16:00:06Z"));
    assert_eq!(video.updated, ts("2025-09-02T03:14:15.552394234Z"));
    assert_eq!(
        video.youtube,
        Some(YouTube {
            video_id: "dQw4w9WgXcQ".into(),
            channel_id: Some("UCuAXFkgsw1L7xaCfnd5JJOw".into()),
            channel_name: Some("Herald Test Channel".into()),
            description: Some(
                "First line of the description.\nLinks: https://example.com/?a=1&b=2\n\nLast line.".into()
            ),
            views: Some(3_120_456),
            likes: Some(41_230),
            shorts: false,
        })
    );
    assert!(video.media.contains(&Media {
        width: Some(480),
        height: Some(360),
        ..media("https://i1.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg", MediaRole::Thumbnail)
    }));
    assert_eq!(video.dedupe_key(), "yt:dQw4w9WgXcQ");

    // The Shorts entry has an empty <media:description></media:description>, which must not
    // cost the whole feed.
    let yt = short.youtube.as_ref().expect("a YouTube entry");
    assert!(yt.shorts);
    assert_eq!(yt.video_id, "aqz-KE-bpKQ");
    assert_eq!(yt.description, None);
    assert_eq!((yt.views, yt.likes), (Some(12), Some(0)));
    assert_eq!(short.dedupe_key(), "yt:aqz-KE-bpKQ");
}

#[test]
fn youtube_push_of_a_new_video() {
    let push = feed::parse_push(&corpus("youtube_push_new.xml")).expect("parses");
    assert!(push.deleted.is_empty());
    let [entry] = &push.entries[..] else { panic!("{:?}", push.entries) };
    assert_eq!(entry.title.as_deref(), Some("Me at the zoo"));
    assert_eq!(entry.url.as_deref(), Some("http://www.youtube.com/watch?v=jNQXAC9IVRw"));
    assert_eq!(entry.published, ts("2015-03-06T21:40:57Z"));
    assert_eq!(entry.updated, ts("2015-03-09T19:05:24.552394234Z"));
    let yt = entry.youtube.as_ref().expect("a YouTube entry");
    assert_eq!(yt.video_id, "jNQXAC9IVRw");
    assert_eq!(yt.channel_id.as_deref(), Some("UCuAXFkgsw1L7xaCfnd5JJOw"));
    assert_eq!(yt.channel_name.as_deref(), Some("Herald Test Channel"));
    assert_eq!((yt.description.as_deref(), yt.views, yt.shorts), (None, None, false));
}

#[test]
fn youtube_push_and_poll_agree_on_the_key() {
    // Without yt:videoId and yt:channelId: the id and the author URI are enough.
    let push = br#"<?xml version='1.0' encoding='UTF-8'?><feed xmlns="http://www.w3.org/2005/Atom"><entry><id>yt:video:dQw4w9WgXcQ</id><title>edited title</title><link rel="alternate" href="https://www.youtube.com/watch?v=dQw4w9WgXcQ"/><author><name>Herald Test Channel</name><uri>https://www.youtube.com/channel/UCuAXFkgsw1L7xaCfnd5JJOw</uri></author></entry></feed>"#;
    let pushed = feed::parse_push(push).expect("parses");
    let polled = parse("youtube_channel.xml");
    assert_eq!(pushed.entries[0].dedupe_key(), polled.items[0].dedupe_key());
    let yt = pushed.entries[0].youtube.as_ref().expect("a YouTube entry");
    assert_eq!(yt.channel_id.as_deref(), Some("UCuAXFkgsw1L7xaCfnd5JJOw"));
}

#[test]
fn youtube_push_of_a_deleted_video() {
    let body = corpus("youtube_push_deleted.xml");
    assert!(!body.contains(&b'\n'), "the capture is one line");
    let push = feed::parse_push(&body).expect("parses");
    assert!(push.entries.is_empty());
    assert_eq!(
        push.deleted,
        [feed::Deleted {
            video_id: "jNQXAC9IVRw".into(),
            channel_id: Some("UCuAXFkgsw1L7xaCfnd5JJOw".into()),
            url: Some("https://www.youtube.com/watch?v=jNQXAC9IVRw".into()),
            when: ts("2024-09-09T22:34:19.642702Z"),
        }]
    );
    // Tombstones for anything but a video are not reported.
    let other = br#"<feed xmlns:at="http://purl.org/atompub/tombstones/1.0" xmlns="http://www.w3.org/2005/Atom"><at:deleted-entry ref="tag:blog.example,2025:1" when="2025-01-01T00:00:00Z"/></feed>"#;
    assert!(feed::parse_push(other).expect("parses").deleted.is_empty());
    assert_eq!(feed::parse_push(&corpus("jsonfeed_11.json")).err().map(|e| e.code()), Some("feed_not_a_feed"));
}

#[test]
fn declared_and_sniffed_encodings() {
    let latin1 = parse("latin1.xml");
    assert_eq!(latin1.title.as_deref(), Some("Journal français"));
    assert_eq!(latin1.items[0].title.as_deref(), Some("Été à Montréal"));
    assert_eq!(latin1.items[0].summary_text.as_deref(), Some("Crème glacée, 5 °C « froid »."));

    let cp1252 = parse("windows1252.xml");
    assert_eq!(cp1252.items[0].title.as_deref(), Some("“Quoted” — it’s €5"));

    let bom = parse("utf8_bom.xml");
    assert_eq!(bom.title.as_deref(), Some("BOM ✓"));
    assert_eq!(bom.items[0].title.as_deref(), Some("日本語のタイトル"));

    let utf16 = parse("utf16le_bom.xml");
    assert_eq!(utf16.items[0].title.as_deref(), Some("Über αβγ 😀"));
    assert_eq!(utf16.items[0].guid.as_deref(), Some("utf16-1"));

    // UTF-16BE without a BOM, generated here.
    let text = r#"<?xml version="1.0" encoding="UTF-16BE"?><rss version="2.0"><channel><title>Big end</title><item><title>Ωmega</title></item></channel></rss>"#;
    let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let feed = feed::parse(&bytes, None).expect("parses");
    assert_eq!(feed.title.as_deref(), Some("Big end"));
    assert_eq!(feed.items[0].title.as_deref(), Some("Ωmega"));

    // Bytes that are not UTF-8 in a document that says UTF-8: replaced, not fatal.
    let broken = parse("invalid_utf8.xml");
    assert_eq!(broken.items[0].title.as_deref(), Some("Caf\u{fffd} \u{fffd}\u{fffd} ok"));
    assert_eq!(broken.items[0].summary_text.as_deref(), Some("Half a character: \u{fffd}"));
    assert_eq!(broken.items[0].url.as_deref(), Some("https://broken.example/1"));
}

#[test]
fn hostile_html_is_sanitised() {
    let feed = parse("xss.xml");
    assert_eq!(feed.title.as_deref(), Some("Hostile"));
    let item = &feed.items[0];
    assert_eq!(item.title.as_deref(), Some("Innocent title"));
    assert_eq!(
        item.summary_html.as_deref(),
        Some("<p>Click <a rel=\"noopener noreferrer\">me</a> or <a rel=\"noopener noreferrer\">me</a>.</p><img>")
    );
    assert_eq!(item.summary_text.as_deref(), Some("Click me or me."));
    assert_eq!(
        item.content_html.as_deref(),
        Some("<div><a href=\"https://ok.example/\" rel=\"noopener noreferrer\">fine link</a></div>")
    );
    keeps_promises(&feed.items);
    for html in html_fields(&feed) {
        let lower = html.to_ascii_lowercase();
        for banned in [
            "<script",
            "onclick",
            "onerror",
            "onload",
            "onmouseover",
            "javascript:",
            "<style",
            "<iframe",
            "<form",
            "<object",
            "data:",
            "style=",
        ] {
            assert!(!lower.contains(banned), "{banned} in {html}");
        }
    }
}

#[test]
fn sloppy_feeds_are_repaired_not_refused() {
    // No version attribute, bare ampersands in text and attributes, an HTML entity in XML.
    let feed = parse("sloppy.xml");
    assert_eq!(feed.title.as_deref(), Some("Tom & Jerry's Sloppy Feed"));
    let item = &feed.items[0];
    assert_eq!(item.title.as_deref(), Some("Fish & Chips & Peas"));
    assert_eq!(item.url.as_deref(), Some("https://sloppy.example/fish?a=1&b=2"));
    assert_eq!(item.summary_text.as_deref(), Some("Salt & vinegar © 2025"));
}

#[test]
fn podcasts() {
    let feed = parse("podcast_itunes.xml");
    let item = &feed.items[0];
    assert_eq!(item.url, None, "isPermaLink=\"false\"");
    assert_eq!(item.dedupe_key(), "guid:audio-hour-1");
    assert_eq!(item.author.as_deref(), Some("Audio Hour Team"));
    assert_eq!(item.published, ts("2025-09-01T10:00:00Z"));
    assert_eq!(
        item.media,
        [
            media("https://audio.example/art/1.png", MediaRole::Thumbnail),
            Media { mime: Some("audio/mpeg".into()), ..media("https://audio.example/1.mp3", MediaRole::Enclosure) },
        ]
    );
}

#[test]
fn feed_rs_panics_are_contained_and_the_feed_is_still_read() {
    // feed-rs slices this author inside the "é", and unwraps these durations; both panic in it.
    for body in [
        "<rss version=\"2.0\"><channel><item><title>Kept</title><author>é.foo@example.com</author></item></channel></rss>",
        "<rss version=\"2.0\" xmlns:itunes=\"http://www.itunes.com/dtds/podcast-1.0.dtd\"><channel><item><title>Kept</title><itunes:duration>99999999999999999999999</itunes:duration></item></channel></rss>",
        "<rss version=\"2.0\" xmlns:itunes=\"http://www.itunes.com/dtds/podcast-1.0.dtd\"><channel><item><title>Kept</title><itunes:duration>١٢</itunes:duration></item></channel></rss>",
    ] {
        let feed = feed::parse(body.as_bytes(), None).unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(feed.items[0].title.as_deref(), Some("Kept"), "{body}");
    }
}

#[test]
fn billion_laughs_fails_fast() {
    let started = Instant::now();
    assert_eq!(code(&corpus("billion_laughs.xml")), "feed_entities_refused");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

#[test]
fn external_entities_are_never_resolved() {
    for name in ["xxe.xml", "xxe_parameter.xml"] {
        match feed::parse(&corpus(name), None) {
            Err(e) => {
                assert_eq!(e.code(), "feed_entities_refused", "{name}");
                assert!(!e.to_string().contains("root:"), "{name}: {e}");
            }
            Ok(feed) => panic!("{name} parsed: {feed:?}"),
        }
    }
}

#[test]
fn deep_nesting_fails_fast_without_overflowing_the_stack() {
    let depth = 100_000;
    let body = format!("<rss version=\"2.0\"><channel>{}{}</channel></rss>", "<x>".repeat(depth), "</x>".repeat(depth));
    let started = Instant::now();
    assert_eq!(code(body.as_bytes()), "feed_too_deep");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    // The same inside the HTML of a description: read as text, quickly.
    let html = format!("{}deep{}", "<div>".repeat(depth), "</div>".repeat(depth));
    let body = format!(
        "<rss version=\"2.0\"><channel><item><description><![CDATA[{html}]]></description></item></channel></rss>"
    );
    let started = Instant::now();
    let feed = feed::parse(body.as_bytes(), None).expect("parses");
    assert_eq!(feed.items[0].summary_text.as_deref(), Some("deep"));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // JSON is bounded by serde_json's recursion limit.
    let json = format!(
        "{{\"version\":\"https://jsonfeed.org/version/1.1\",\"items\":[],\"x\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(code(json.as_bytes()), "feed_malformed");
}

#[test]
fn a_huge_feed_is_parsed_whole() {
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><rss version=\"2.0\"><channel><title>Huge</title><link>https://huge.example/</link>",
    );
    let mut count = 0;
    while body.len() < 5 * 1024 * 1024 {
        body.push_str(&format!(
            "<item><title>Item {count}</title><link>/items/{count}</link><guid isPermaLink=\"false\">item-{count}</guid>\
             <description>&lt;p&gt;Paragraph {count} with &lt;b&gt;bold&lt;/b&gt; text and padding to make it longer. \
             Lorem ipsum dolor sit amet, consectetur adipiscing elit.&lt;/p&gt;</description></item>"
        ));
        count += 1;
    }
    body.push_str("</channel></rss>");
    let feed = feed::parse(body.as_bytes(), None).expect("parses");
    assert_eq!(feed.items.len(), count);
    let last = &feed.items[count - 1];
    assert_eq!(last.guid.as_deref(), Some(format!("item-{}", count - 1).as_str()));
    assert_eq!(last.url.as_deref(), Some(format!("https://huge.example/items/{}", count - 1).as_str()));
    assert!(
        last.summary_text.as_deref().is_some_and(|t| t.starts_with(&format!("Paragraph {} with bold text", count - 1)))
    );
}

#[test]
fn errors_have_stable_codes() {
    let too_large = vec![b' '; feed::MAX_BODY_BYTES + 1];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("feed_empty", corpus("empty.xml")),
        ("feed_empty", b" \r\n\t ".to_vec()),
        ("feed_too_large", too_large),
        ("feed_encoding", b"<?xml version=\"1.0\" encoding=\"x-no-such-charset\"?><rss version=\"2.0\"/>".to_vec()),
        ("feed_entities_refused", corpus("billion_laughs.xml")),
        ("feed_too_deep", format!("<feed>{}</feed>", "<a>".repeat(300)).into_bytes()),
        ("feed_not_a_feed", corpus("not_a_feed.html")),
        ("feed_not_a_feed", b"<opml version=\"2.0\"><body/></opml>".to_vec()),
        ("feed_not_a_feed", b"{\"hello\": \"world\"}".to_vec()),
        ("feed_not_a_feed", b"plain text".to_vec()),
        ("feed_not_a_feed", b"<rss version=\"2.0\"><nochannel/></rss>".to_vec()),
        ("feed_malformed", corpus("truncated.xml")),
        ("feed_malformed", b"<rss version=\"2.0\"><channel></item></channel></rss>".to_vec()),
        ("feed_malformed", b"{\"version\": ".to_vec()),
    ];
    let mut seen = BTreeSet::new();
    for (expected, body) in &cases {
        let err = feed::parse(body, None).err().unwrap_or_else(|| panic!("{expected}: parsed"));
        assert_eq!(err.code(), *expected, "{err}");
        assert!(err.to_string().len() > 30, "messages say what to do: {err}");
        seen.insert(err.code());
    }
    // feed_parser_failed needs a document that panics feed-rs even without people and durations,
    // which is not known; every other code is produced above.
    let expected: BTreeSet<&str> = FeedError::CODES.iter().copied().filter(|c| *c != "feed_parser_failed").collect();
    assert_eq!(seen, expected);
    assert_eq!(FeedError::ParserFailed.code(), "feed_parser_failed");
}

#[test]
fn items_round_trip_through_json() {
    for entry in std::fs::read_dir(CORPUS).expect("corpus") {
        let body = std::fs::read(entry.expect("entry").path()).expect("read");
        let Ok(feed) = feed::parse(&body, None) else { continue };
        let json = serde_json::to_string(&feed).expect("serialises");
        let back: ParsedFeed = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, feed);
        for (a, b) in back.items.iter().zip(&feed.items) {
            assert_eq!(a.dedupe_key(), b.dedupe_key());
        }
    }
    // Empty fields are left out.
    let item = &parse("youtube_push_new.xml").items[0];
    let json = serde_json::to_value(item).expect("serialises");
    assert!(
        json.get("summary_html").is_none() && json.get("media").is_none() && json["youtube"].get("shorts").is_none()
    );
    assert_eq!(json["youtube"]["video_id"], "jNQXAC9IVRw");
}

/// A tiny xorshift, so the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Fragments that steer mutations toward the parser's edges.
const TOKENS: &[&str] = &[
    "<",
    ">",
    "&",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "&nbsp;",
    "]]>",
    "<![CDATA[",
    "<!--",
    "-->",
    "\"",
    "'",
    "\0",
    "\u{feff}",
    "é",
    "<?xml version='1.0' encoding='ISO-8859-1'?>",
    "<!DOCTYPE x [<!ENTITY a 'b'>]>",
    "<!DOCTYPE rss SYSTEM 'http://x/y.dtd'>",
    "xml:base=\"../\" ",
    "xml:base=\"http://[::1\" ",
    "<media:description/>",
    "<media:title></media:title>",
    "<entry>",
    "</entry>",
    "<item>",
    "</item>",
    "<yt:videoId>x</yt:videoId>",
    "<at:deleted-entry ref=\"yt:video:abc\">",
    "<div><div><div>",
    "type=\"xhtml\" ",
    "type=\"weird\" ",
    "{",
    "}",
    "[",
    "\"items\":",
    "é.x@y.zz",
    "<itunes:duration>99999999999999999999</itunes:duration>",
];

fn mutate(rng: &mut Rng, body: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = body.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            1 => out.truncate(at),
            2 => {
                let other = &others[rng.below(others.len())];
                let from = rng.below(other.len() + 1);
                let to = from + rng.below(other.len() - from + 1).min(512);
                out.splice(at..at, other[from..to].iter().copied());
            }
            3 => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(256)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(end..end, copy);
            }
            _ => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.bytes());
            }
        }
    }
    out
}

fn keeps_promises(items: &[Item]) {
    items.iter().for_each(promises::check);
}

#[test]
fn mutated_corpus_never_panics() {
    const PER_FILE: usize = 400;
    let mut files: Vec<_> = std::fs::read_dir(CORPUS).expect("corpus").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let bodies: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).expect("read")).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for body in &bodies {
        for _ in 0..PER_FILE {
            let mutated = mutate(&mut rng, body, &bodies);
            let code = match feed::parse(&mutated, None) {
                Ok(parsed) => {
                    keeps_promises(&parsed.items);
                    "ok"
                }
                Err(e) => e.code(),
            };
            *outcomes.entry(code).or_default() += 1;
            if let Ok(push) = feed::parse_push(&mutated) {
                keeps_promises(&push.entries);
            }
        }
    }
    println!("{} mutations in {:?}: {outcomes:?}", bodies.len() * PER_FILE, started.elapsed());
    assert!(outcomes.get("ok").is_some_and(|n| *n > 100), "mutations should mostly stay parseable: {outcomes:?}");
}

/// Shapes that make parts of the pipeline slower than linear if unguarded (dedupe by scanning,
/// html5ever on many `&`, repeated feed-rs panics). A generous bound: the quadratic versions of
/// the first two take minutes. (html5ever's slowdown on `&` is guarded by a count, tested in
/// `html_guard`.)
#[test]
fn hostile_shapes_stay_fast() {
    let rss = |items: &str| {
        format!(
            r#"<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel><title>t</title>{items}</channel></rss>"#
        )
    };
    let cases = [
        (
            "categories",
            rss(&format!(
                "<item>{}</item>",
                (0..100_000).map(|i| format!("<category>c{i}</category>")).collect::<String>()
            )),
        ),
        (
            "thumbnails",
            rss(&format!(
                "<item>{}</item>",
                (0..50_000).map(|i| format!("<media:thumbnail url=\"https://x.example/{i}\"/>")).collect::<String>()
            )),
        ),
        ("ampersands", rss(&format!("<item><title>{}</title></item>", "a & ".repeat(500_000)))),
        ("escaped markup", rss(&format!("<item><description>{}</description></item>", "&lt;".repeat(500_000)))),
        (
            "comments",
            rss(&format!("<item><description><![CDATA[{}]]></description></item>", "<!---->".repeat(500_000))),
        ),
        ("panicking authors", rss(&"<item><title>x</title><author>é.x@y.zz</author></item>".repeat(50_000))),
        ("empty descriptions", rss(&"<item><media:description/><media:title></media:title></item>".repeat(50_000))),
    ];
    for (name, body) in cases {
        assert!(body.len() <= feed::MAX_BODY_BYTES, "{name}: {} bytes", body.len());
        let started = Instant::now();
        let result = feed::parse(body.as_bytes(), None);
        let elapsed = started.elapsed();
        assert!(result.is_ok(), "{name}");
        assert!(elapsed < Duration::from_secs(20), "{name}: {elapsed:?}");
    }
}

//! The platform registry: what each platform can do, and its content rules with the platform's own
//! way of counting. Validation runs before anything is queued, and each violation names the rule,
//! the limit and the actual value. Figures come from `reference/platforms.md`; per-instance limits
//! (Mastodon's `max_characters`) are defaults here and are refined from the instance later.

use serde::Serialize;
use unicode_segmentation::UnicodeSegmentation;

/// How a platform measures text length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Counting {
    /// Unicode scalar values.
    Chars,
    /// UTF-16 code units (Telegram: entity offsets and limits are in UTF-16).
    Utf16,
    /// Extended grapheme clusters (Bluesky: an emoji with modifiers counts 1).
    Graphemes,
    /// Characters, with every http(s) URL counting as `url_weight` (Mastodon: 23).
    CharsUrlsFixed { url_weight: usize },
}

impl Counting {
    pub fn count(self, text: &str) -> usize {
        match self {
            Counting::Chars => text.chars().count(),
            Counting::Utf16 => text.encode_utf16().count(),
            Counting::Graphemes => text.graphemes(true).count(),
            Counting::CharsUrlsFixed { url_weight } => text
                .split_inclusive(char::is_whitespace)
                .map(|word| {
                    let bare = word.trim_end_matches(char::is_whitespace);
                    if is_url(bare) {
                        url_weight + (word.chars().count() - bare.chars().count())
                    } else {
                        word.chars().count()
                    }
                })
                .sum(),
        }
    }
}

fn is_url(word: &str) -> bool {
    ["http://", "https://"]
        .iter()
        .any(|p| word.len() > p.len() && word.get(..p.len()).is_some_and(|s| s.eq_ignore_ascii_case(p)))
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TextLimit {
    /// The most text a post may have, in `counting` units.
    pub max: usize,
    pub counting: Counting,
    /// A byte cap on top (UTF-8), where the platform has one.
    pub max_bytes: Option<usize>,
    /// A lower limit when the post carries media (Telegram captions: 1024).
    pub max_with_media: Option<usize>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct MediaLimit {
    /// Items per post; 0 means the platform takes no media from Herald.
    pub max_items: usize,
    pub max_image_bytes: u64,
    pub max_video_bytes: u64,
    pub image_types: &'static [&'static str],
    pub video_types: &'static [&'static str],
}

const NO_MEDIA: MediaLimit =
    MediaLimit { max_items: 0, max_image_bytes: 0, max_video_bytes: 0, image_types: &[], video_types: &[] };
const IMAGES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];
const VIDEOS: &[&str] = &["video/mp4", "video/quicktime", "video/webm"];

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Capabilities {
    pub text: bool,
    pub images: bool,
    pub video: bool,
    pub link_card: bool,
    pub thread: bool,
    pub edit: bool,
    pub delete: bool,
    pub stats: bool,
    pub read_posts: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    BotToken,
    ApiKey,
    AccessToken,
    AppPassword,
    Password,
    PrivateKey,
    WebhookUrl,
    Smtp,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Platform {
    pub id: &'static str,
    pub name: &'static str,
    pub auth: AuthKind,
    pub capabilities: Capabilities,
    /// `None`: no documented text limit.
    pub text: Option<TextLimit>,
    pub media: MediaLimit,
    /// How a retry avoids a duplicate post, or `none`.
    pub idempotency: &'static str,
}

const fn caps(images: bool, video: bool, link_card: bool, thread: bool, edit: bool, delete: bool) -> Capabilities {
    Capabilities { text: true, images, video, link_card, thread, edit, delete, stats: false, read_posts: false }
}

const MIB: u64 = 1 << 20;

/// Every platform Herald publishes to, in display order.
pub const REGISTRY: &[Platform] = &[
    Platform {
        id: "telegram",
        name: "Telegram",
        auth: AuthKind::BotToken,
        capabilities: caps(true, true, true, true, true, true),
        text: Some(TextLimit { max: 4096, counting: Counting::Utf16, max_bytes: None, max_with_media: Some(1024) }),
        media: MediaLimit {
            max_items: 10,
            max_image_bytes: 10 * MIB,
            max_video_bytes: 50 * MIB,
            image_types: IMAGES,
            video_types: VIDEOS,
        },
        idempotency: "none",
    },
    Platform {
        id: "discord",
        name: "Discord",
        auth: AuthKind::BotToken,
        capabilities: caps(true, true, true, true, true, true),
        text: Some(TextLimit { max: 2000, counting: Counting::Chars, max_bytes: None, max_with_media: None }),
        media: MediaLimit {
            max_items: 10,
            max_image_bytes: 10 * MIB,
            max_video_bytes: 10 * MIB,
            image_types: IMAGES,
            video_types: VIDEOS,
        },
        idempotency: "nonce + enforce_nonce",
    },
    Platform {
        id: "whop",
        name: "Whop",
        auth: AuthKind::ApiKey,
        capabilities: caps(true, false, false, true, true, true),
        text: None,
        media: MediaLimit {
            max_items: 10,
            max_image_bytes: 25 * MIB,
            max_video_bytes: 0,
            image_types: IMAGES,
            video_types: &[],
        },
        idempotency: "none",
    },
    Platform {
        id: "mastodon",
        name: "Mastodon",
        auth: AuthKind::AccessToken,
        capabilities: caps(true, true, true, true, true, true),
        text: Some(TextLimit {
            max: 500,
            counting: Counting::CharsUrlsFixed { url_weight: 23 },
            max_bytes: None,
            max_with_media: None,
        }),
        media: MediaLimit {
            max_items: 4,
            max_image_bytes: 16 * MIB,
            max_video_bytes: 103_809_024,
            image_types: IMAGES,
            video_types: VIDEOS,
        },
        idempotency: "Idempotency-Key header (kept 1 h)",
    },
    Platform {
        id: "bluesky",
        name: "Bluesky",
        auth: AuthKind::AppPassword,
        capabilities: caps(true, false, true, true, false, true),
        text: Some(TextLimit { max: 300, counting: Counting::Graphemes, max_bytes: Some(3000), max_with_media: None }),
        media: MediaLimit {
            max_items: 4,
            max_image_bytes: 2_000_000,
            max_video_bytes: 0,
            image_types: IMAGES,
            video_types: &[],
        },
        idempotency: "client-chosen TID rkey, checked with getRecord before a retry",
    },
    Platform {
        id: "matrix",
        name: "Matrix",
        auth: AuthKind::AccessToken,
        capabilities: caps(true, true, false, true, true, true),
        // An event is at most 65,536 bytes; leave room for the envelope.
        text: Some(TextLimit { max: 60_000, counting: Counting::Chars, max_bytes: Some(60_000), max_with_media: None }),
        media: MediaLimit {
            max_items: 1,
            max_image_bytes: 50 * MIB,
            max_video_bytes: 50 * MIB,
            image_types: IMAGES,
            video_types: VIDEOS,
        },
        idempotency: "txnId per send",
    },
    Platform {
        id: "nostr",
        name: "Nostr",
        auth: AuthKind::PrivateKey,
        capabilities: caps(true, true, false, true, false, true),
        text: None,
        // Linked by URL (NIP-92 `imeta`), not uploaded: the limits are what clients will load.
        media: MediaLimit {
            max_items: 10,
            max_image_bytes: 50 * MIB,
            max_video_bytes: 200 * MIB,
            image_types: IMAGES,
            video_types: VIDEOS,
        },
        idempotency: "content-addressed event id",
    },
    Platform {
        id: "vk",
        name: "VK",
        auth: AuthKind::AccessToken,
        capabilities: caps(true, true, true, false, true, true),
        text: None,
        media: MediaLimit {
            max_items: 10,
            max_image_bytes: 50 * MIB,
            max_video_bytes: 256 * MIB,
            image_types: IMAGES,
            video_types: VIDEOS,
        },
        idempotency: "guid",
    },
    Platform {
        id: "webhook",
        name: "Webhook",
        auth: AuthKind::WebhookUrl,
        capabilities: caps(false, false, false, false, false, false),
        text: None,
        media: NO_MEDIA,
        idempotency: "webhook-id header",
    },
    Platform {
        id: "email",
        name: "Email",
        auth: AuthKind::Smtp,
        capabilities: caps(true, true, false, false, false, false),
        text: None,
        // Attachments: mail servers commonly cap a whole message near 25 MB after base64.
        media: MediaLimit {
            max_items: 10,
            max_image_bytes: 20 * MIB,
            max_video_bytes: 20 * MIB,
            image_types: IMAGES,
            video_types: VIDEOS,
        },
        idempotency: "Message-ID",
    },
];

pub fn platform(id: &str) -> Option<&'static Platform> {
    REGISTRY.iter().find(|p| p.id == id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

/// One media item as validation sees it (sniffed type and size).
#[derive(Debug, Clone)]
pub struct MediaItem {
    pub kind: MediaKind,
    pub mime: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Content {
    pub text: String,
    pub media: Vec<MediaItem>,
}

/// A broken rule: which one, its limit, and what the content has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub platform: &'static str,
    pub rule: &'static str,
    pub limit: u64,
    pub actual: u64,
    pub message: String,
}

/// Every rule `content` breaks on `p`; empty when it can be posted.
pub fn validate(p: &Platform, content: &Content) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut v = |rule: &'static str, limit: u64, actual: u64, message: String| {
        out.push(Violation { platform: p.id, rule, limit, actual, message })
    };
    if content.text.trim().is_empty() && content.media.is_empty() {
        v("not_empty", 1, 0, format!("{} needs text or media", p.name));
    }
    if let Some(t) = p.text {
        let (max, rule) = match t.max_with_media {
            Some(m) if !content.media.is_empty() => (m, "caption_length"),
            _ => (t.max, "text_length"),
        };
        let n = t.counting.count(&content.text);
        if n > max {
            let unit = match t.counting {
                Counting::Utf16 => "UTF-16 units",
                Counting::Graphemes => "graphemes",
                Counting::CharsUrlsFixed { .. } => "characters (each link counts 23)",
                Counting::Chars => "characters",
            };
            v(
                rule,
                max as u64,
                n as u64,
                format!("{} allows {max} {unit}; this has {n}, {} too many", p.name, n - max),
            );
        }
        if let Some(max_bytes) = t.max_bytes
            && content.text.len() > max_bytes
        {
            let n = content.text.len();
            v(
                "text_bytes",
                max_bytes as u64,
                n as u64,
                format!("{} allows {max_bytes} bytes of text; this has {n}", p.name),
            );
        }
    }
    let m = &p.media;
    if content.media.len() > m.max_items {
        let n = content.media.len();
        v(
            "media_count",
            m.max_items as u64,
            n as u64,
            format!("{} takes at most {} media items; this has {n}", p.name, m.max_items),
        );
    }
    for item in &content.media {
        let (allowed, max, what) = match item.kind {
            MediaKind::Image => (m.image_types, m.max_image_bytes, "image"),
            MediaKind::Video => (m.video_types, m.max_video_bytes, "video"),
        };
        if !allowed.contains(&item.mime.as_str()) {
            v("media_type", 0, 0, format!("{} does not take {what}s of type {}", p.name, item.mime));
        } else if item.bytes > max {
            v(
                "media_size",
                max,
                item.bytes,
                format!("{} takes {what}s up to {max} bytes; this one has {}", p.name, item.bytes),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Content {
        Content { text: t.into(), media: vec![] }
    }

    #[test]
    fn each_platform_counts_its_own_way() {
        // A family emoji is 1 grapheme, 5 scalar values (with joiners: 7) and 11 UTF-16 units.
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        assert_eq!(Counting::Graphemes.count(family), 1);
        assert_eq!(Counting::Chars.count(family), 7);
        assert_eq!(Counting::Utf16.count(family), 11);
        let mast = Counting::CharsUrlsFixed { url_weight: 23 };
        assert_eq!(mast.count("see https://example.com/a/very/long/path/that/goes/on/and/on now"), 4 + 23 + 4);
        assert_eq!(mast.count("https://x.y"), 23);
        assert_eq!(mast.count("http:// alone"), 13, "a bare scheme is not a URL");
    }

    #[test]
    fn violations_name_the_rule_the_limit_and_the_actual_value() {
        let bsky = platform("bluesky").unwrap();
        assert!(validate(bsky, &text(&"🙂".repeat(300))).is_empty(), "300 emoji are 300 graphemes");
        let v = validate(bsky, &text(&"a".repeat(301)));
        assert_eq!((v[0].rule, v[0].limit, v[0].actual), ("text_length", 300, 301));
        assert!(v[0].message.contains("1 too many"));
        // 300 family emoji are 300 graphemes but 7,500 bytes: the byte cap catches them.
        let v = validate(bsky, &text(&"👨\u{200d}👩\u{200d}👧\u{200d}👦".repeat(300)));
        assert_eq!(v.iter().map(|v| v.rule).collect::<Vec<_>>(), vec!["text_bytes"]);

        let tg = platform("telegram").unwrap();
        let photo = MediaItem { kind: MediaKind::Image, mime: "image/jpeg".into(), bytes: 1000 };
        let caption = Content { text: "x".repeat(1025), media: vec![photo.clone()] };
        assert_eq!(validate(tg, &caption)[0].rule, "caption_length");
        assert!(validate(tg, &text(&"x".repeat(4096))).is_empty());
        let big = MediaItem { kind: MediaKind::Image, mime: "image/png".into(), bytes: 11 * MIB };
        let v = validate(tg, &Content { text: "hi".into(), media: vec![big] });
        assert_eq!((v[0].rule, v[0].limit), ("media_size", 10 * MIB));

        let mast = platform("mastodon").unwrap();
        let long_link = format!("{} https://example.com/{}", "a".repeat(470), "p".repeat(200));
        assert!(validate(mast, &text(&long_link)).is_empty(), "the link counts 23");
        let five = Content { text: "x".into(), media: vec![photo.clone(); 5] };
        assert_eq!(validate(mast, &five)[0].rule, "media_count");
        let nostr = platform("nostr").unwrap();
        assert!(validate(nostr, &Content { text: "x".into(), media: vec![photo.clone()] }).is_empty(), "linked by URL");
        assert_eq!(validate(nostr, &Content { text: "x".into(), media: vec![photo; 11] })[0].rule, "media_count");
        assert_eq!(validate(nostr, &text("  "))[0].rule, "not_empty");
        let gif = MediaItem { kind: MediaKind::Video, mime: "video/avi".into(), bytes: 1 };
        assert_eq!(
            validate(platform("discord").unwrap(), &Content { text: "x".into(), media: vec![gif] })[0].rule,
            "media_type"
        );
    }

    #[test]
    fn the_registry_has_unique_ids() {
        let mut ids: Vec<_> = REGISTRY.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), REGISTRY.len());
        assert!(serde_json::to_value(REGISTRY).unwrap().as_array().unwrap().len() >= 10);
    }
}

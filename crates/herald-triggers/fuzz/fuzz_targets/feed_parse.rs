//! Any bytes into `feed::parse` and `feed::parse_push`: nothing may panic, and whatever parses
//! must keep the promises `Item` makes (sanitised HTML, absolute http(s) URLs, JSON round trip).
#![no_main]

use std::sync::Once;

use herald_triggers::feed;
use libfuzzer_sys::fuzz_target;
use url::Url;

#[path = "../promises.rs"]
mod promises;

static DEFAULT_PANIC_HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys installs a panic hook that aborts on every panic, even one that is caught.
    // `feed::parse` catches feed-rs's own panics by design (they become `feed_parser_failed`), so
    // put the default hook back; a panic that escapes `parse` still aborts, in libfuzzer-sys's
    // wrapper around this function.
    DEFAULT_PANIC_HOOK.call_once(|| drop(std::panic::take_hook()));

    let base = Url::parse("https://fuzz.example/feeds/feed.xml").ok();
    for result in [feed::parse(data, None), feed::parse(data, base.as_ref())] {
        if let Ok(parsed) = result {
            parsed.items.iter().for_each(promises::check);
            if let Some(link) = &parsed.link {
                assert!(Url::parse(link).is_ok(), "{link:?}");
            }
        }
    }
    if let Ok(push) = feed::parse_push(data) {
        push.entries.iter().for_each(promises::check);
        for deleted in &push.deleted {
            assert!(!deleted.video_id.is_empty());
        }
    }
});

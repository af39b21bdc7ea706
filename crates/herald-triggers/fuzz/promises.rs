//! What every parsed `Item` promises, whatever the input. Shared by the fuzz target and the
//! mutation test in `tests/feeds.rs` (which includes this file by path).

use herald_triggers::feed::Item;
use url::Url;

/// Panics, naming the broken promise, unless the item's HTML is sanitised, its URLs are absolute
/// http(s), and it survives a JSON round trip with the same dedupe key.
pub fn check(item: &Item) {
    for html in [&item.summary_html, &item.content_html].into_iter().flatten() {
        check_html(html);
    }
    for url in item.url.iter().chain(item.media.iter().map(|m| &m.url)) {
        let parsed = Url::parse(url).unwrap_or_else(|e| panic!("{url:?} is not absolute: {e}"));
        assert!(matches!(parsed.scheme(), "http" | "https"), "{url:?} is not http(s)");
    }
    let json = serde_json::to_string(item).expect("serialises");
    let back: Item = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(&back, item);
    assert_eq!(back.dedupe_key(), item.dedupe_key());
}

/// Reads the markup the way html5ever serialises it (`<name attr="value">`, quotes in values
/// escaped), so escaped text such as `&lt;p onclick=…&gt;` is not mistaken for a tag.
fn check_html(html: &str) {
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        rest = &rest[end..];
        let name_len = tag.find([' ', '/']).unwrap_or(tag.len());
        let name = tag[..name_len].to_ascii_lowercase();
        assert!(
            !matches!(name.as_str(), "script" | "style" | "iframe" | "object" | "embed" | "form" | "svg"),
            "<{name}> survived in {html:?}"
        );
        let mut attrs = &tag[name_len..];
        loop {
            attrs = attrs.trim_start_matches([' ', '/']);
            if attrs.is_empty() {
                break;
            }
            let key_len = attrs.find(['=', ' ']).unwrap_or(attrs.len());
            let key = attrs[..key_len].to_ascii_lowercase();
            attrs = &attrs[key_len..];
            let mut value = "";
            if let Some(quoted) = attrs.strip_prefix("=\"") {
                let close = quoted.find('"').unwrap_or(quoted.len());
                value = &quoted[..close];
                attrs = quoted.get(close + 1..).unwrap_or_default();
            }
            assert!(!key.starts_with("on") && key != "style", "{key}= survived in {html:?}");
            // Browsers ignore whitespace and control characters inside a scheme.
            let value: String =
                value.replace("&amp;", "&").chars().filter(|c| !c.is_ascii_whitespace() && !c.is_control()).collect();
            let scheme = value.split(':').next().unwrap_or_default().to_ascii_lowercase();
            if value.contains(':') {
                assert!(
                    !matches!(scheme.as_str(), "javascript" | "vbscript" | "data"),
                    "{key}={value:?} survived in {html:?}"
                );
            }
        }
    }
}

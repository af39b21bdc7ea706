//! HTML from feeds: sanitised for display, and flattened to plain text.
//!
//! Both go through ammonia (html5ever underneath), so entities are decoded the way a browser
//! would (`&nbsp;`, `&eacute;`, `&#8217;`) and deep markup cannot overflow the stack. But
//! html5ever's time grows faster than its input in places: it checks element scopes by walking
//! its stack of open elements (20,000 nested `<div>`s take seconds, and a feed body can hold a
//! million), and text with very many `&` slows it down too. [`is_tame`] checks both first,
//! linearly; a field beyond any real post is read as plain text instead ([`strip_tags`]).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use ammonia::{Builder, UrlRelative};
use url::Url;

use super::html_guard::{is_tame, strip_tags};

/// Elements that separate words when the markup is flattened to text.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
];

thread_local! {
    static SANITIZER: RefCell<Builder<'static>> = RefCell::new(Builder::default());
    static FLATTENER: Builder<'static> = flattener();
}

/// Ammonia's defaults (no scripts, styles, event handlers, or URLs outside http, https, mailto and
/// friends), with relative URLs made absolute against `base`, or dropped when there is none.
pub(super) fn sanitize(html: &str, base: Option<&Url>) -> Option<String> {
    if !is_tame(html) {
        return escape(&strip_tags(html));
    }
    let cleaned = SANITIZER.with_borrow_mut(|builder| {
        builder.url_relative(match base {
            Some(base) => UrlRelative::RewriteWithBase(base.clone()),
            None => UrlRelative::Deny,
        });
        builder.clean(html).to_string()
    });
    (!cleaned.trim().is_empty()).then_some(cleaned)
}

/// Plain text: tags stripped (script and style with their content), entities decoded,
/// whitespace collapsed to single spaces.
pub(super) fn to_text(html: &str) -> Option<String> {
    if !is_tame(html) {
        return collapse(&strip_tags(html));
    }
    // What comes back keeps only attribute-less block tags, and html5ever's serialiser escapes
    // exactly `&`, U+00A0, `<` and `>` in text, so this small pass undoes it exactly.
    let cleaned = FLATTENER.with(|builder| builder.clean(html).to_string());
    let mut out = String::with_capacity(cleaned.len());
    let mut rest = cleaned.as_str();
    while let Some(i) = rest.find(['<', '&']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with('<') {
            out.push(' ');
            rest = rest.find('>').map_or("", |end| &rest[end + 1..]);
        } else {
            let (c, len) = [("&amp;", '&'), ("&lt;", '<'), ("&gt;", '>'), ("&quot;", '"'), ("&nbsp;", '\u{a0}')]
                .into_iter()
                .find(|(entity, _)| rest.starts_with(entity))
                .map_or(('&', 1), |(entity, c)| (c, entity.len()));
            out.push(c);
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    collapse(&out)
}

/// Whitespace runs (including no-break spaces) become one space; `None` when nothing is left.
pub(super) fn collapse(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    (!out.is_empty()).then_some(out)
}

/// Plain text as HTML.
pub(super) fn escape(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Some(out)
}

fn flattener() -> Builder<'static> {
    let mut builder = Builder::empty();
    builder
        .tags(BLOCKS.iter().copied().collect())
        .clean_content_tags(["script", "style", "template", "noscript"].into_iter().collect())
        .tag_attributes(HashMap::new())
        .generic_attributes(HashSet::new())
        .link_rel(None);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_decodes_entities_and_drops_scripts() {
        assert_eq!(
            to_text("<p>Caf&eacute;&nbsp;au&#160;lait</p><p>x &lt; y &amp;&amp; <b>z</b></p><script>alert(1)</script>")
                .as_deref(),
            Some("Café au lait x < y && z")
        );
        assert_eq!(to_text("a<br>b<li>c</li>").as_deref(), Some("a b c"));
        assert_eq!(to_text("&amp;lt;").as_deref(), Some("&lt;"));
        assert_eq!(to_text("  <div> </div> "), None);
    }

    #[test]
    fn sanitising_keeps_markup_and_absolutises_links() {
        let base = Url::parse("https://blog.example/posts/").ok();
        let html =
            sanitize(r#"<a href="one" onclick="x()">1</a><img src="/i.png"><script>bad()</script>"#, base.as_ref());
        assert_eq!(
            html.as_deref(),
            Some(
                r#"<a href="https://blog.example/posts/one" rel="noopener noreferrer">1</a><img src="https://blog.example/i.png">"#
            )
        );
        let html = sanitize(r#"<a href="javascript:alert(1)">x</a><a href="rel">y</a>"#, None);
        assert_eq!(html.as_deref(), Some(r#"<a rel="noopener noreferrer">x</a><a rel="noopener noreferrer">y</a>"#));
    }

    #[test]
    fn deep_markup_is_read_as_text_quickly() {
        for (open, close) in
            [("<div>", "</div>"), ("<div><b>", "</b></div>"), ("<x><div>", "</x>"), ("<p><b id=1>", "</p>")]
        {
            let html = format!("{}x &amp; y{}", open.repeat(100_000), close.repeat(100_000));
            let started = std::time::Instant::now();
            assert_eq!(to_text(&html).as_deref(), Some("x & y"), "{open}");
            assert_eq!(sanitize(&html, None).as_deref(), Some("x &amp; y"), "{open}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "{open}: {:?}", started.elapsed());
        }
    }
}

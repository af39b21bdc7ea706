//! HTML from feeds: sanitised for display, and flattened to plain text.
//!
//! Both go through ammonia (html5ever underneath), so entities are decoded the way a browser
//! would (`&nbsp;`, `&eacute;`, `&#8217;`) and deep markup cannot overflow the stack. But
//! html5ever checks element scopes by walking its stack of open elements, so its time grows with
//! start tags × depth: 20,000 nested `<div>`s take seconds, and a feed body can hold a million.
//! [`is_shallow`] estimates that depth first, linearly; markup deeper than any real post is
//! read as plain text instead.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use ammonia::{Builder, UrlRelative};
use url::Url;

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
    if !is_shallow(html) {
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
    if !is_shallow(html) {
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

/// The estimate of html5ever's open elements (plus its list of formatting elements to reopen)
/// that [`is_shallow`] allows; real posts stay under 30.
const MAX_HTML_DEPTH: usize = 100;
/// Start tags allowed in one field before it is read as plain text.
const MAX_HTML_TAGS: usize = 50_000;

const VOID: &[&str] = &[
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "img", "input", "keygen", "link",
    "meta", "param", "source", "track", "wbr",
];
const FORMATTING: &[&str] =
    &["a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong", "tt", "u"];
/// Elements a scope search stops at.
const SCOPE: &[&str] = &["applet", "caption", "html", "table", "td", "th", "marquee", "object", "template", "button"];
/// html5ever's "special" category: an unknown end tag is ignored when one of these is above
/// its match.
const SPECIAL: &[&str] = &[
    "address",
    "applet",
    "area",
    "article",
    "aside",
    "base",
    "basefont",
    "bgsound",
    "blockquote",
    "body",
    "br",
    "button",
    "caption",
    "center",
    "col",
    "colgroup",
    "dd",
    "details",
    "dir",
    "div",
    "dl",
    "dt",
    "embed",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "frame",
    "frameset",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hgroup",
    "hr",
    "html",
    "iframe",
    "img",
    "input",
    "keygen",
    "li",
    "link",
    "listing",
    "main",
    "marquee",
    "menu",
    "meta",
    "nav",
    "noembed",
    "noframes",
    "noscript",
    "object",
    "ol",
    "p",
    "param",
    "plaintext",
    "pre",
    "script",
    "search",
    "section",
    "select",
    "source",
    "style",
    "summary",
    "table",
    "tbody",
    "td",
    "template",
    "textarea",
    "tfoot",
    "th",
    "thead",
    "title",
    "tr",
    "track",
    "ul",
    "wbr",
    "xmp",
];
/// Start tags that close an open `<p>`.
const CLOSES_P: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "center",
    "details",
    "dialog",
    "dir",
    "div",
    "dl",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "header",
    "hgroup",
    "main",
    "menu",
    "nav",
    "ol",
    "p",
    "search",
    "section",
    "summary",
    "ul",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "listing",
    "form",
    "plaintext",
    "table",
    "hr",
    "xmp",
    "li",
    "dd",
    "dt",
];
/// HTML start tags that end SVG or MathML content.
const BREAKOUT: &[&str] = &[
    "b",
    "big",
    "blockquote",
    "body",
    "br",
    "center",
    "code",
    "dd",
    "div",
    "dl",
    "dt",
    "em",
    "embed",
    "font",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "hr",
    "i",
    "img",
    "li",
    "listing",
    "menu",
    "meta",
    "nobr",
    "ol",
    "p",
    "pre",
    "ruby",
    "s",
    "small",
    "span",
    "strong",
    "strike",
    "sub",
    "sup",
    "table",
    "tt",
    "u",
    "ul",
    "var",
];
/// Elements whose content is text, not markup, up to their end tag.
const RAW_TEXT: &[&str] =
    &["script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes", "plaintext"];

/// Whether html5ever can parse this quickly: a linear model of its tree builder (implied end
/// tags for `p`, `li`, `dd`, `dt`, `td`, `tr`; end tags that are ignored; SVG self-closing;
/// formatting elements it would reopen) stays under [`MAX_HTML_DEPTH`]. Where the model is
/// unsure it errs deep, so the fallback may take odd-but-real markup, never the reverse.
fn is_shallow(html: &str) -> bool {
    if !html.contains('<') {
        return true;
    }
    let lower = html.to_ascii_lowercase();
    let mut stack: Vec<&str> = Vec::new();
    // Formatting elements html5ever would reopen, with their whole start tag.
    let mut active: Vec<(&str, &str)> = Vec::new();
    let mut tags = 0usize;
    let mut at = 0;
    while let Some(found) = lower.get(at..).and_then(|rest| rest.find('<')) {
        let open = at + found;
        let rest = &lower[open + 1..];
        if rest.starts_with("!--") {
            // A comment ends at the first "-->" or "--!>", counting "<!-->" itself.
            let body = &lower[open + 2..];
            at = [body.find("-->").map(|i| i + 3), body.find("--!>").map(|i| i + 4)]
                .into_iter()
                .flatten()
                .min()
                .map_or(lower.len(), |end| open + 2 + end);
            continue;
        }
        let (closing, name_from) = if rest.starts_with('/') { (true, open + 2) } else { (false, open + 1) };
        let name_len =
            lower[name_from..].bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b':').count();
        let starts_with_letter = lower.as_bytes().get(name_from).is_some_and(u8::is_ascii_alphabetic);
        let tag_end = lower[name_from..].find('>').map_or(lower.len(), |i| name_from + i + 1);
        if !starts_with_letter {
            // `<!x>`, `<?x>` and `</ x>` are bogus comments up to '>'; any other '<' is text.
            at = if rest.starts_with(['!', '?', '/']) { tag_end } else { open + 1 };
            continue;
        }
        let name = &lower[name_from..name_from + name_len];
        let self_closing = lower[..tag_end].ends_with("/>");
        at = tag_end;

        if closing {
            if let Some(i) = active.iter().rposition(|(n, _)| *n == name) {
                active.remove(i);
            }
            match name {
                "table" => close_to(&mut stack, |n| n == "table", |n| n == "template"),
                "tbody" | "thead" | "tfoot" | "tr" | "td" | "th" => {
                    close_to(&mut stack, |n| n == name, |n| matches!(n, "table" | "template"))
                }
                _ if SPECIAL.contains(&name) => close_to(&mut stack, |n| n == name, |n| SCOPE.contains(&n)),
                _ => close_to(&mut stack, |n| n == name, |n| SPECIAL.contains(&n)),
            }
            continue;
        }

        tags += 1;
        if tags > MAX_HTML_TAGS {
            return false;
        }
        if let Some(outermost) = stack.iter().position(|n| *n == "svg" || *n == "math") {
            if BREAKOUT.contains(&name) {
                stack.truncate(outermost);
            } else {
                if !self_closing {
                    stack.push(name);
                }
                if stack.len() + active.len() > MAX_HTML_DEPTH {
                    return false;
                }
                continue;
            }
        }
        if VOID.contains(&name) {
            continue;
        }
        if CLOSES_P.contains(&name) {
            close_to(&mut stack, |n| n == "p", |n| SCOPE.contains(&n));
        }
        match name {
            "li" => {
                close_to(&mut stack, |n| n == "li", |n| SPECIAL.contains(&n) && !matches!(n, "address" | "div" | "p"))
            }
            "dd" | "dt" => close_to(
                &mut stack,
                |n| matches!(n, "dd" | "dt"),
                |n| SPECIAL.contains(&n) && !matches!(n, "address" | "div" | "p"),
            ),
            "td" | "th" => close_to(&mut stack, |n| matches!(n, "td" | "th"), |n| matches!(n, "tr" | "table")),
            "tr" => close_to(&mut stack, |n| n == "tr", |n| n == "table"),
            _ => {}
        }
        if FORMATTING.contains(&name) {
            // html5ever keeps at most three identical ones (its "Noah's Ark" clause).
            let tag = &lower[open..tag_end];
            if active.iter().filter(|(_, t)| *t == tag).count() >= 3
                && let Some(first) = active.iter().position(|(_, t)| *t == tag)
            {
                active.remove(first);
            }
            active.push((name, tag));
        }
        stack.push(name);
        if stack.len() + active.len() > MAX_HTML_DEPTH {
            return false;
        }
        if RAW_TEXT.contains(&name) {
            at = lower[at..].find(&format!("</{name}")).map_or(lower.len(), |i| at + i);
        }
    }
    true
}

/// Pops to (and including) the topmost element that `is_target`, unless an element that
/// `stops` the search comes first.
fn close_to(stack: &mut Vec<&str>, is_target: impl Fn(&str) -> bool, stops: impl Fn(&str) -> bool) {
    for i in (0..stack.len()).rev() {
        if is_target(stack[i]) {
            stack.truncate(i);
            return;
        }
        if stops(stack[i]) {
            return;
        }
    }
}

/// Text without markup, for documents [`is_shallow`] refuses: tags, comments, scripts and
/// styles removed, the XML entities and numeric references decoded.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(i) = rest.find(['<', '&']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with('<') {
            let lower = rest.get(..8).unwrap_or(rest).to_ascii_lowercase();
            let end = if lower.starts_with("<!--") {
                rest.find("-->").map(|e| e + 3)
            } else if lower.starts_with("<script") || lower.starts_with("<style") {
                let close = if lower.starts_with("<script") { "</script" } else { "</style" };
                rest.to_ascii_lowercase().find(close).and_then(|e| rest[e..].find('>').map(|g| e + g + 1))
            } else {
                rest.find('>').map(|e| e + 1)
            };
            out.push(' ');
            rest = end.and_then(|e| rest.get(e..)).unwrap_or_default();
        } else {
            let reference = rest.get(1..).and_then(|r| r.find(';').filter(|&e| e <= 10).map(|e| &r[..e]));
            let decoded = reference.and_then(|r| match r {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let number = r.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            });
            match (decoded, reference) {
                (Some(c), Some(r)) => {
                    out.push(c);
                    rest = &rest[r.len() + 2..];
                }
                _ => {
                    out.push('&');
                    rest = &rest[1..];
                }
            }
        }
    }
    out.push_str(rest);
    out
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
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "{open}: {:?}", started.elapsed());
        }
    }

    #[test]
    fn real_markup_is_shallow() {
        let post = "<p>Intro <b>bold</p><p>unclosed<ul><li>one<li>two</ul><table><tr><td>a<td>b<tr><td>c</table>\
                    <svg><path d='M0'/><path/><path/></svg><!-- <div><div> --><script>'<div>'</script>";
        assert!(is_shallow(&post.repeat(500)));
        assert!(is_shallow(&"<p>para".repeat(10_000)));
        assert!(!is_shallow(&"<div>".repeat(MAX_HTML_DEPTH + 1)));
        assert!(!is_shallow(&"<svg><div/>".repeat(MAX_HTML_DEPTH + 1)));
        assert!(!is_shallow(&"<!-- --!><div>".repeat(MAX_HTML_DEPTH + 1)));
    }

    #[test]
    fn stripping_decodes_references() {
        assert_eq!(strip_tags("a<b>&amp;</b>&#233;&#xe9;&bogus;&<script>x<y</script>z"), "a & éé&bogus;& z");
    }
}

//! The guard in front of html5ever: a linear check that it will not take quadratic time on a
//! field, and a plain-text fallback for fields it would (see [`super::html`]).

/// The estimate of html5ever's open elements (plus its list of formatting elements to reopen)
/// that [`is_tame`] allows; real posts stay under 30.
const MAX_HTML_DEPTH: usize = 100;
/// Start tags allowed in one field before it is read as plain text.
const MAX_HTML_TAGS: usize = 50_000;
/// `&`s allowed in one field before it is read as plain text; a long real post has hundreds.
const MAX_HTML_REFERENCES: usize = 10_000;

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

/// Whether html5ever can parse this in close to linear time. Its cost grows faster than the
/// input with two things: `&` (each reference or bare ampersand; 200,000 take seconds) and the
/// depth of its tree. The first is counted; the second is estimated by a linear model of its
/// tree builder (implied end tags for `p`, `li`, `dd`, `dt`, `td`, `tr`; end tags that are
/// ignored; SVG self-closing; formatting elements it would reopen), which must stay under
/// [`MAX_HTML_DEPTH`]. Where the model is unsure it errs deep, so the fallback may take
/// odd-but-real markup, never the reverse.
pub(super) fn is_tame(html: &str) -> bool {
    if html.bytes().filter(|b| *b == b'&').count() > MAX_HTML_REFERENCES {
        return false;
    }
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
            at = comment_end(&lower, open + 2);
            continue;
        }
        let (closing, name_from) = if rest.starts_with('/') { (true, open + 2) } else { (false, open + 1) };
        let name_len =
            lower[name_from..].bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b':').count();
        let starts_with_letter = lower.as_bytes().get(name_from).is_some_and(u8::is_ascii_alphabetic);
        // Without a '>' the rest is one unfinished tag, which html5ever drops: nothing more to see.
        let tag_end = |from: usize| lower[from..].find('>').map_or(lower.len(), |i| from + i + 1);
        if !starts_with_letter {
            // `<!x>`, `<?x>` and `</ x>` are bogus comments up to '>'; any other '<' is text.
            at = if rest.starts_with(['!', '?', '/']) { tag_end(open + 1) } else { open + 1 };
            continue;
        }
        let tag_end = tag_end(name_from);
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

/// Where a comment whose dashes start at `dashes` ends: after the first "-->" or "--!>",
/// counting "<!-->" itself; the end of the text when it has none.
fn comment_end(text: &str, dashes: usize) -> usize {
    let mut from = dashes;
    while let Some(found) = text.get(from..).and_then(|rest| rest.find("--")) {
        let after = from + found + 2;
        if text[after..].starts_with('>') {
            return after + 1;
        }
        if text[after..].starts_with("!>") {
            return after + 2;
        }
        from = from + found + 1;
    }
    text.len()
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

/// Text without markup, for documents [`is_tame`] refuses: tags, comments, scripts and
/// styles removed, the XML entities and numeric references decoded. Linear, whatever the input.
pub(super) fn strip_tags(html: &str) -> String {
    // ASCII lowercasing keeps byte offsets, so one copy serves every case-insensitive search.
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len() / 2);
    let mut at = 0;
    while let Some(found) = html.get(at..).and_then(|rest| rest.find(['<', '&'])) {
        let i = at + found;
        out.push_str(&html[at..i]);
        let low = &lower[i..];
        if low.starts_with('<') {
            let end = if low.starts_with("<!--") {
                Some(comment_end(&lower, i + 2) - i)
            } else if let Some(name) = ["script", "style"].into_iter().find(|n| low[1..].starts_with(n)) {
                low.find(&format!("</{name}")).and_then(|e| low[e..].find('>').map(|g| e + g + 1))
            } else {
                low.find('>').map(|e| e + 1)
            };
            out.push(' ');
            at = end.map_or(html.len(), |e| i + e);
        } else {
            // A reference is short: look for its ';' in the next few bytes only.
            let semicolon = html.as_bytes().get(i + 1..).and_then(|b| b.iter().take(12).position(|b| *b == b';'));
            let reference = semicolon.and_then(|e| html.get(i + 1..i + 1 + e));
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
                    at = i + r.len() + 2;
                }
                _ => {
                    out.push('&');
                    at = i + 1;
                }
            }
        }
    }
    out.push_str(html.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_markup_is_tame() {
        let post = "<p>Intro <b>bold</p><p>unclosed<ul><li>one<li>two</ul><table><tr><td>a<td>b<tr><td>c</table>\
                    <svg><path d='M0'/><path/><path/></svg><!-- <div><div> --><script>'<div>'</script>";
        assert!(is_tame(&post.repeat(500)));
        assert!(is_tame(&"<p>para".repeat(10_000)));
        assert!(is_tame(&"caf&eacute; ".repeat(MAX_HTML_REFERENCES)));
        assert!(!is_tame(&"caf&eacute; ".repeat(MAX_HTML_REFERENCES + 1)));
        assert!(!is_tame(&"<div>".repeat(MAX_HTML_DEPTH + 1)));
        assert!(!is_tame(&"<svg><div/>".repeat(MAX_HTML_DEPTH + 1)));
        assert!(!is_tame(&"<!-- --!><div>".repeat(MAX_HTML_DEPTH + 1)));
    }

    #[test]
    fn both_are_linear_on_hostile_input() {
        for hostile in [
            "<".repeat(400_000),
            "<!---->".repeat(100_000),
            "&".repeat(400_000),
            "<scripT>".repeat(100_000),
            "<\u{e9}".repeat(200_000),
        ] {
            let started = std::time::Instant::now();
            is_tame(&hostile);
            strip_tags(&hostile);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{:?}: {:?}",
                hostile.chars().take(4).collect::<String>(),
                started.elapsed()
            );
        }
        assert_eq!(comment_end("<!-->x", 2), 5);
        assert_eq!(comment_end("<!--->x", 2), 6);
        assert_eq!(comment_end("<!-- a --!>x", 2), 11);
        assert_eq!(comment_end("<!-- a", 2), 6);
    }

    #[test]
    fn stripping_decodes_references() {
        assert_eq!(strip_tags("a<b>&amp;</b>&#233;&#xe9;&bogus;&<script>x<y</script>z"), "a & éé&bogus;& z");
    }
}

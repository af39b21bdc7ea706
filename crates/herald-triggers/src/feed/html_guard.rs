//! The guard in front of html5ever: a linear estimate of how deep its tree would get, and a
//! plain-text fallback for markup that is too deep to hand it (see [`super::html`]).

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
pub(super) fn is_shallow(html: &str) -> bool {
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
pub(super) fn strip_tags(html: &str) -> String {
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

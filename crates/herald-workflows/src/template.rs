//! User templates, rendered by MiniJinja in a sandbox.
//!
//! A template is untrusted input, so the environment is locked down:
//! - no loader, and the crate enables neither `multi_template` nor `macros`, so `{% include %}`,
//!   `{% import %}`, `{% extends %}` and `{% macro %}` cannot read anything (they do not even parse);
//! - no function or filter reaches the host: MiniJinja has no `env`/`os` globals, the `debug()` global
//!   (which dumps engine state) is removed, and the custom filters below are pure;
//! - fuel bounds the work: MiniJinja 3 charges one fuel per instruction and one per 64 bytes of data
//!   created, and checks the cost of a known-size allocation *before* making it, so
//!   `{{ "ab" * 1000000000 }}` fails without allocating;
//! - recursion is limited, and the rendered text may not exceed [`MAX_OUTPUT_BYTES`] (checked while
//!   writing, so a huge output fails as soon as it crosses the limit).

use std::io;
use std::sync::LazyLock;

use herald_core::platforms::{self, Counting};
use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use unicode_segmentation::UnicodeSegmentation;

/// The largest template source accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// The largest rendered output accepted, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The work budget of one render. A social post needs a few hundred instructions; 100k fuel is
/// also ~6 MB of created data, so even a template that burns all of it stays cheap (milliseconds).
const FUEL: u64 = 100_000;
/// Nesting depth of loops/recursive loops. Real templates nest two or three levels.
const RECURSION_LIMIT: usize = 32;

/// Why a template was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The source does not parse.
    #[error("template syntax error: {0}")]
    Syntax(String),
    /// The source, the work or the output went over a sandbox limit.
    #[error("template limit exceeded: {0}")]
    Limit(String),
    /// Rendering failed (bad filter argument, unknown function, invalid operation...).
    #[error("template failed: {0}")]
    Render(String),
}

impl TemplateError {
    /// The stable error code for API responses and run logs.
    pub fn code(&self) -> &'static str {
        match self {
            TemplateError::Syntax(_) => "template_syntax",
            TemplateError::Limit(_) => "template_limit_exceeded",
            TemplateError::Render(_) => "template_error",
        }
    }
}

/// Checks syntax (and size) without rendering: used by validation to answer 422 with a message
/// (line number included when MiniJinja gives one).
pub fn check(source: &str) -> Result<(), TemplateError> {
    check_size(source)?;
    ENV.template_from_str(source).map(drop).map_err(|e| map_error(&e))
}

/// Renders `source` with `ctx` (a JSON object) in the sandbox.
pub fn render(source: &str, ctx: &serde_json::Value) -> Result<String, TemplateError> {
    check_size(source)?;
    let template = ENV.template_from_str(source).map_err(|e| map_error(&e))?;
    let mut out = CappedWriter { buf: Vec::new(), overflowed: false };
    match template.render_captured_to(Value::from(Serde(ctx)), &mut out) {
        Ok(_) => {}
        // The writer refused a write: report the limit, not the I/O error MiniJinja wraps it in.
        Err(_) if out.overflowed => {
            return Err(TemplateError::Limit(format!("output is larger than {MAX_OUTPUT_BYTES} bytes")));
        }
        Err(e) => return Err(map_error(&e)),
    }
    // MiniJinja only ever writes whole `str`s, so this cannot fail; no panic if it somehow does.
    String::from_utf8(out.buf).map_err(|_| TemplateError::Render("output is not valid UTF-8".into()))
}

/// The variables a template sees for an event: `ctx` plus AmpFlow's flat aliases
/// (`video_title`, `item_url`, ...), so templates written for AmpFlow keep working.
///
/// An alias is added only when the nested value exists (and is not null) and `ctx` does not already
/// have that top-level key. A `ctx` that is not an object is returned unchanged.
pub fn with_aliases(mut ctx: serde_json::Value) -> serde_json::Value {
    const ALIASES: &[(&str, &str, &str)] = &[
        ("video_title", "video", "title"),
        ("video_url", "video", "url"),
        ("video_id", "video", "id"),
        ("video_description", "video", "description"),
        ("channel_name", "channel", "name"),
        ("channel_url", "channel", "url"),
        ("item_title", "item", "title"),
        ("item_url", "item", "url"),
    ];
    let Some(obj) = ctx.as_object_mut() else { return ctx };
    for (alias, parent, key) in ALIASES {
        if obj.contains_key(*alias) {
            continue;
        }
        let value = obj.get(*parent).and_then(|p| p.get(*key)).filter(|v| !v.is_null()).cloned();
        if let Some(value) = value {
            obj.insert((*alias).to_string(), value);
        }
    }
    ctx
}

/// The one shared sandbox environment.
static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // Deliberately no `set_loader`: without one, nothing can be loaded by name.
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    // Output is social-media text, not HTML: `&` must stay `&`.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // A missing variable or attribute (`{{ video.title }}` without a video) renders empty, as in AmpFlow.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    // `debug()` prints the engine's internal state; a user template has no business seeing it.
    env.remove_global("debug");
    // JSON null (an event without an author...) renders empty rather than the word "none".
    env.set_formatter(
        |out, state, value| {
            if value.is_none() { Ok(()) } else { minijinja::escape_formatter(out, state, value) }
        },
    );
    env.add_filter("truncate_for", truncate_for);
    env.add_filter("hashtags", hashtags);
    env.add_filter("utm", utm);
    env
});

fn check_size(source: &str) -> Result<(), TemplateError> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::Limit(format!(
            "template is {} bytes, more than {MAX_TEMPLATE_BYTES}",
            source.len()
        )));
    }
    Ok(())
}

/// MiniJinja reports its size and depth limits as `InvalidOperation`/`SyntaxError` with these exact
/// details; matching the whole detail (not a substring) keeps user text in other errors from
/// being mistaken for a limit.
const LIMIT_DETAILS: &[&str] = &[
    "recursion limit exceeded",
    "range has too many elements",
    "repeated string is too large",
    "repeated sequence is too large",
    "template exceeds maximum recursion limits",
];

fn map_error(e: &Error) -> TemplateError {
    let line = e.line().map(|n| format!(" (line {n})")).unwrap_or_default();
    let message = format!("{}{line}", e.detail().map_or_else(|| e.kind().to_string(), str::to_string));
    match e.kind() {
        ErrorKind::OutOfFuel => {
            TemplateError::Limit(format!("the template does too much work (fuel of {FUEL} used up){line}"))
        }
        _ if e.detail().is_some_and(|d| LIMIT_DETAILS.contains(&d)) => TemplateError::Limit(message),
        ErrorKind::SyntaxError => TemplateError::Syntax(message),
        _ => TemplateError::Render(message),
    }
}

/// Collects the output and refuses to grow past [`MAX_OUTPUT_BYTES`].
struct CappedWriter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The text of a filter's input: undefined and none are empty, strings as they are, others displayed.
fn text_of(value: &Value) -> String {
    if value.is_undefined() || value.is_none() {
        String::new()
    } else if let Some(s) = value.as_str() {
        s.to_string()
    } else {
        value.to_string()
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// An optional argument given either positionally or as a keyword (`truncate_for("x", max=10)`).
fn positional_or_kwarg<'a, T>(positional: Option<T>, kwargs: &'a Kwargs, name: &'a str) -> Result<Option<T>, Error>
where
    Option<T>: minijinja::value::ArgType<'a, Output = Option<T>>,
{
    let keyword: Option<T> = kwargs.get(name)?;
    match (positional, keyword) {
        (Some(_), Some(_)) => Err(Error::new(ErrorKind::TooManyArguments, format!("`{name}` given twice"))),
        (p, k) => Ok(p.or(k)),
    }
}

/// `{{ text | truncate_for("bluesky") }}`, `{{ text | truncate_for("telegram", 1024) }}`: cuts the
/// text to the platform's limit, counted the platform's way, ending with "…" when cut.
fn truncate_for(value: Value, platform: String, max: Option<usize>, kwargs: Kwargs) -> Result<String, Error> {
    let max = positional_or_kwarg(max, &kwargs, "max")?;
    kwargs.assert_all_used()?;
    let p = platforms::platform(&platform)
        .ok_or_else(|| invalid(format!("truncate_for: unknown platform {platform:?}")))?;
    let text = text_of(&value);
    let (limit, counting, max_bytes) = match (p.text, max) {
        (Some(t), max) => (max.map_or(t.max, |m| m.min(t.max)), t.counting, t.max_bytes),
        // A platform without a documented limit: only an explicit `max` cuts, in characters.
        (None, Some(m)) => (m, Counting::Chars, None),
        (None, None) => return Ok(text),
    };
    Ok(truncate(&text, limit, counting, max_bytes))
}

/// Cuts `text` so that it fits `limit` (in `counting` units) and `max_bytes`, ending with "…".
///
/// The cut is on a grapheme boundary (never inside an emoji or a flag); it backs off to the last
/// space when that loses at most a fifth of the kept text, and always drops a link that would be cut
/// (a truncated URL is broken, and on Mastodon it would still cost 23).
fn truncate(text: &str, limit: usize, counting: Counting, max_bytes: Option<usize>) -> String {
    let fits = |s: &str| counting.count(s) <= limit && max_bytes.is_none_or(|b| s.len() <= b);
    if fits(text) {
        return text.to_string();
    }
    let with_ellipsis = |prefix: &str| format!("{}…", prefix.trim_end());
    // Start offsets of graphemes: `text[..b]` is a clean prefix for each. Fitting is monotonic in
    // the prefix length for every counting rule, so a binary search finds the longest that fits.
    let bounds: Vec<usize> = text.grapheme_indices(true).map(|(i, _)| i).collect();
    let fitting = bounds.partition_point(|&b| fits(&with_ellipsis(&text[..b])));
    let Some(&cut) = fitting.checked_sub(1).and_then(|i| bounds.get(i)) else {
        // Not even "…" fits (a limit of 0).
        return String::new();
    };
    let mut kept = &text[..cut];
    let mid_word = !kept.ends_with(char::is_whitespace) && !text[cut..].starts_with(char::is_whitespace);
    if mid_word {
        let word_start = kept.rfind(char::is_whitespace).map_or(0, |ws| ws + 1);
        let word = &kept[word_start..];
        if starts_with_url(word) || (word_start > 0 && word_start >= cut - cut / 5) {
            kept = &text[..word_start];
        }
    }
    with_ellipsis(kept)
}

fn starts_with_url(word: &str) -> bool {
    ["http://", "https://"].iter().any(|p| word.get(..p.len()).is_some_and(|s| s.eq_ignore_ascii_case(p)))
}

/// `{{ item.categories | hashtags }}`, `{{ "rust, machine learning" | hashtags(3) }}`:
/// "#rust #MachineLearning". Non-word characters are dropped, multi-word tags are CamelCased,
/// empties and case-insensitive duplicates are skipped, `limit` caps the count.
fn hashtags(value: Value, limit: Option<usize>, kwargs: Kwargs) -> Result<String, Error> {
    let limit = positional_or_kwarg(limit, &kwargs, "limit")?;
    kwargs.assert_all_used()?;
    let raw: Vec<String> = if let Some(s) = value.as_str() {
        s.split(',').map(str::to_string).collect()
    } else if value.is_undefined() || value.is_none() {
        Vec::new()
    } else if value.as_object().is_some() {
        value.try_iter()?.map(|v| text_of(&v)).collect()
    } else {
        vec![text_of(&value)]
    };
    let mut seen = std::collections::HashSet::new();
    let tags = raw
        .iter()
        .filter_map(|r| hashtag(r))
        .filter(|t| seen.insert(t.to_lowercase()))
        .take(limit.unwrap_or(usize::MAX))
        .map(|t| format!("#{t}"))
        .collect::<Vec<_>>();
    Ok(tags.join(" "))
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// One tag's body (without '#'), or `None` when nothing usable is left.
fn hashtag(raw: &str) -> Option<String> {
    let words: Vec<&str> = raw.split(|c| !is_word_char(c)).filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        [] => None,
        // A single word keeps its case: "rust" stays "#rust", "iOS" stays "#iOS".
        [word] => Some((*word).to_string()),
        words => Some(
            words
                .iter()
                .map(|w| {
                    let mut chars = w.chars();
                    chars.next().map(|first| first.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default()
                })
                .collect(),
        ),
    }
}

/// `{{ item.url | utm("herald") }}`, `{{ url | utm("herald", campaign="launch") }}`: sets
/// utm_source, utm_medium (default "social") and utm_campaign on an http(s) URL. Existing utm_*
/// parameters are dropped (they describe another campaign); other parameters keep their order.
/// A value that is not an http(s) URL comes back unchanged.
fn utm(
    value: Value,
    source: Option<String>,
    medium: Option<String>,
    campaign: Option<String>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let source = positional_or_kwarg(source, &kwargs, "source")?;
    let medium = positional_or_kwarg(medium, &kwargs, "medium")?;
    let campaign = positional_or_kwarg(campaign, &kwargs, "campaign")?;
    kwargs.assert_all_used()?;
    let source = source.filter(|s| !s.is_empty()).ok_or_else(|| invalid("utm: needs a source".into()))?;
    let medium = medium.unwrap_or_else(|| "social".to_string());

    let Some(mut url) = value.as_str().and_then(|s| url::Url::parse(s.trim()).ok()) else { return Ok(value) };
    if !matches!(url.scheme(), "http" | "https") {
        return Ok(value);
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("utm_"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut query = url.query_pairs_mut();
        query.clear().extend_pairs(kept);
        query.append_pair("utm_source", &source).append_pair("utm_medium", &medium);
        if let Some(campaign) = campaign.filter(|c| !c.is_empty()) {
            query.append_pair("utm_campaign", &campaign);
        }
    }
    Ok(Value::from(url.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;

    fn r(source: &str, ctx: serde_json::Value) -> Result<String, TemplateError> {
        render(source, &ctx)
    }

    fn ok(source: &str, ctx: serde_json::Value) -> String {
        match r(source, ctx) {
            Ok(s) => s,
            Err(e) => panic!("{source:?} failed: {e}"),
        }
    }

    /// Runs `f` and asserts it both fails with a limit and does so quickly.
    fn assert_limit_fast(source: &str) {
        let started = Instant::now();
        let result = r(source, json!({}));
        let took = started.elapsed();
        match result {
            Err(TemplateError::Limit(_)) => {}
            other => panic!("{source:?}: expected a limit error, got {other:?}"),
        }
        assert!(took < Duration::from_secs(2), "{source:?} took {took:?}");
    }

    #[test]
    fn error_codes() {
        assert_eq!(TemplateError::Syntax("x".into()).code(), "template_syntax");
        assert_eq!(TemplateError::Limit("x".into()).code(), "template_limit_exceeded");
        assert_eq!(TemplateError::Render("x".into()).code(), "template_error");
        assert_eq!(TemplateError::Limit("big".into()).to_string(), "template limit exceeded: big");
    }

    #[test]
    fn renders_variables_and_aliases() {
        let ctx = with_aliases(json!({
            "video": {"title": "T", "url": "https://youtu.be/x", "id": "x", "description": "D"},
            "channel": {"name": "C", "url": "https://youtube.com/@c"},
        }));
        assert_eq!(ok("New video: {{video_title}} {{video_url}}", ctx.clone()), "New video: T https://youtu.be/x");
        assert_eq!(
            ok("{{ video_id }}|{{ video_description }}|{{ channel_name }}|{{ channel_url }}", ctx),
            "x|D|C|https://youtube.com/@c"
        );
    }

    #[test]
    fn aliases_do_not_overwrite_and_skip_missing() {
        let ctx = with_aliases(json!({
            "item_title": "mine",
            "item": {"title": "feed", "url": "https://e.com/a", "summary": "s"},
            "video": {"title": null},
        }));
        assert_eq!(ctx["item_title"], "mine");
        assert_eq!(ctx["item_url"], "https://e.com/a");
        let obj = ctx.as_object().unwrap();
        assert!(!obj.contains_key("video_title"), "null values are not aliased");
        assert!(!obj.contains_key("channel_name"));
        assert!(!obj.contains_key("item_summary"), "only the AmpFlow aliases are added");
        assert_eq!(with_aliases(json!("text")), json!("text"));
    }

    #[test]
    fn undefined_is_lenient() {
        assert_eq!(ok("[{{ nothing }}]", json!({})), "[]");
        assert_eq!(ok("[{{ video.title }}]", json!({})), "[]");
        assert_eq!(ok("[{{ video.title.deeper }}]", json!({"video": {}})), "[]");
        assert_eq!(ok("{% if video.title %}yes{% else %}no{% endif %}", json!({})), "no");
        assert_eq!(ok("{% for t in item.tags %}{{ t }}{% endfor %}.", json!({})), ".");
        assert_eq!(ok("[{{ item.author }}]", json!({"item": {"author": null}})), "[]", "null renders empty");
        assert_eq!(ok("[{{ video.title | truncate_for(\"bluesky\") }}]", json!({})), "[]");
    }

    #[test]
    fn output_is_not_html_escaped() {
        assert_eq!(ok("{{ t }}", json!({"t": "Tom & Jerry <3 \"quotes\""})), "Tom & Jerry <3 \"quotes\"");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = check("line one\n{% if x %}\nno end").unwrap_err();
        assert!(matches!(e, TemplateError::Syntax(_)), "{e:?}");
        assert_eq!(e.code(), "template_syntax");
        assert!(e.to_string().contains("(line "), "{e}");
        let e = check("a\nb\n{{ x + }}").unwrap_err();
        assert!(e.to_string().contains("(line 3)"), "{e}");
        assert_eq!(render("{{ x + }}", &json!({})).unwrap_err().code(), "template_syntax");
        assert_eq!(check("Hello {{ name | upper }}"), Ok(()));
    }

    #[test]
    fn oversized_source_is_refused() {
        let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert!(matches!(check(&big), Err(TemplateError::Limit(_))));
        assert!(matches!(render(&big, &json!({})), Err(TemplateError::Limit(_))));
        assert_eq!(check(&"x".repeat(MAX_TEMPLATE_BYTES)), Ok(()));
    }

    #[test]
    fn no_file_access() {
        for source in [
            "{% include \"/etc/passwd\" %}",
            "{% import \"/etc/passwd\" as p %}",
            "{% from \"x.j2\" import y %}",
            "{% extends \"/etc/passwd\" %}",
        ] {
            let result = r(source, json!({}));
            assert!(result.is_err(), "{source:?} rendered {result:?}");
        }
    }

    #[test]
    fn no_host_functions() {
        assert!(r("{{ debug() }}", json!({"secret": 1})).is_err());
        for f in ["env", "os", "open", "getenv", "lipsum", "cycler", "self", "config"] {
            let out = r(&format!("{{{{ {f}() }}}}"), json!({}));
            assert!(out.is_err(), "{f}() rendered {out:?}");
        }
        assert!(r("{{ x | unknown_filter }}", json!({})).is_err());
    }

    #[test]
    fn endless_loops_run_out_of_fuel() {
        assert_limit_fast("{% for i in range(100000000) %}x{% endfor %}");
        assert_limit_fast("{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}");
        assert_limit_fast("{% for i in range(99999) %}{% endfor %}{% for i in range(99999) %}{% endfor %}");
    }

    #[test]
    fn recursion_is_limited() {
        let source = "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}";
        assert_limit_fast(source);
        assert!(r(source, json!({})).unwrap_err().to_string().contains("recursion limit"));
    }

    #[test]
    fn huge_output_fails_fast_without_allocating() {
        assert_limit_fast("{{ \"ab\" * 1000000000 }}");
        assert_limit_fast("{{ \"x\" * 100000000 }}");
        // Doubling a string does not multiply its cost away: every created byte is charged.
        assert_limit_fast(
            "{% set ns = namespace(s=\"xxxxxxxxxxxxxxxx\") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        );
        // Under the fuel budget but over the output cap.
        assert_limit_fast("{{ \"x\" * 70000 }}");
        let e = r("{{ \"x\" * 70000 }}", json!({})).unwrap_err();
        assert_eq!(e, TemplateError::Limit(format!("output is larger than {MAX_OUTPUT_BYTES} bytes")));
        let e = r("{{ \"ab\" * 1000000000 }}", json!({})).unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
        assert_limit_fast("{% for i in range(700) %}{{ \"0123456789\" * 10 }}{% endfor %}");
    }

    #[test]
    fn output_just_under_the_cap_renders() {
        let out = ok("{{ \"x\" * 65536 }}", json!({}));
        assert_eq!(out.len(), MAX_OUTPUT_BYTES);
        assert!(matches!(r("{{ \"x\" * 65537 }}", json!({})), Err(TemplateError::Limit(_))));
    }

    #[test]
    fn render_errors_are_render() {
        let e = r("{{ 1 / 0 }}", json!({})).unwrap_err();
        assert_eq!(e.code(), "template_error", "{e:?}");
        let e = r("{{ x | truncate_for(\"myspace\") }}", json!({"x": "hi"})).unwrap_err();
        assert_eq!(e.code(), "template_error");
        assert!(e.to_string().contains("myspace"), "{e}");
        // A user string that looks like a MiniJinja limit message is still a render error.
        let e = r("{{ x | truncate_for(\"recursion limit exceeded\") }}", json!({"x": "hi"})).unwrap_err();
        assert_eq!(e.code(), "template_error");
    }

    #[test]
    fn truncate_for_bluesky_counts_graphemes() {
        // 👍🏽 is two scalar values but one grapheme; Bluesky allows 300 graphemes.
        let emoji = "👍🏽".repeat(300);
        assert_eq!(ok("{{ t | truncate_for(\"bluesky\") }}", json!({"t": emoji})), emoji);
        let long = "👍🏽".repeat(301);
        let out = ok("{{ t | truncate_for(\"bluesky\") }}", json!({"t": long}));
        assert_eq!(out, format!("{}…", "👍🏽".repeat(299)));
        assert_eq!(Counting::Graphemes.count(&out), 300);
        // Flags are two regional indicators: never split one.
        let flags = "🇫🇷".repeat(400);
        let out = ok("{{ t | truncate_for(\"bluesky\") }}", json!({"t": flags}));
        assert_eq!(out, format!("{}…", "🇫🇷".repeat(299)));
    }

    #[test]
    fn truncate_for_prefers_a_word_boundary() {
        let words = "word ".repeat(100); // 500 chars
        let out = ok("{{ t | truncate_for(\"bluesky\") }}", json!({"t": words}));
        assert!(out.ends_with("word…"), "{out}");
        assert!(Counting::Graphemes.count(&out) <= 300);
        assert!(Counting::Graphemes.count(&out) >= 295, "kept too little: {}", out.len());
        // One long word: no space in the last fifth, so it is cut mid-word at the limit.
        let text = format!("short {}", "a".repeat(400));
        let out = ok("{{ t | truncate_for(\"bluesky\") }}", json!({"t": text}));
        assert_eq!(Counting::Graphemes.count(&out), 300);
        assert!(out.starts_with("short aaa") && out.ends_with("a…"), "{out}");
    }

    #[test]
    fn truncate_for_mastodon_weighs_urls() {
        // 480 letters + a long URL: by chars it is 580, by Mastodon's rule 480 + 1 + 23 = 504 > 500.
        let url = format!("https://example.com/{}", "p".repeat(80));
        let text = format!("{} {url}", "a".repeat(480));
        let out = ok("{{ t | truncate_for(\"mastodon\") }}", json!({"t": text}));
        // The URL would be cut, so it is dropped whole.
        assert_eq!(out, format!("{}…", "a".repeat(480)));
        // 470 letters + URL = 494: fits by Mastodon's counting although it is 571 chars.
        let text = format!("{} {url}", "a".repeat(470));
        assert_eq!(ok("{{ t | truncate_for(\"mastodon\") }}", json!({"t": text.clone()})), text);
    }

    #[test]
    fn truncate_for_telegram_counts_utf16() {
        // 𝕏 is one char but two UTF-16 units: 2100 of them are 4200 units > 4096.
        let text = "𝕏".repeat(2100);
        let out = ok("{{ t | truncate_for(\"telegram\") }}", json!({"t": text}));
        assert!(Counting::Utf16.count(&out) <= 4096);
        assert_eq!(out, format!("{}…", "𝕏".repeat(2047)));
        assert_eq!(Counting::Utf16.count(&out), 4095, "one unit is left, too small for another 𝕏");
    }

    #[test]
    fn truncate_for_max_argument() {
        let t = json!({"t": "hello wonderful world"});
        // The cut word starts too early to back off to the space (it would lose over a fifth).
        assert_eq!(ok("{{ t | truncate_for(\"telegram\", 12) }}", t.clone()), "hello wonde…");
        // The cut word starts in the last fifth: back off to the space.
        assert_eq!(ok("{{ t | truncate_for(\"telegram\", max=18) }}", t.clone()), "hello wonderful…");
        assert_eq!(ok("{{ t | truncate_for(\"telegram\", max=100) }}", t.clone()), "hello wonderful world");
        // No documented limit: only max cuts.
        assert_eq!(ok("{{ t | truncate_for(\"webhook\") }}", t.clone()), "hello wonderful world");
        assert_eq!(ok("{{ t | truncate_for(\"webhook\", 8) }}", t.clone()), "hello…");
        // The max cannot raise the platform's own limit.
        let long = "a".repeat(400);
        let out = ok("{{ t | truncate_for(\"bluesky\", 1000) }}", json!({"t": long}));
        assert_eq!(out.chars().count(), 300);
        assert_eq!(ok("{{ t | truncate_for(\"telegram\", 0) }}", t.clone()), "");
        assert!(r("{{ t | truncate_for(\"telegram\", bogus=1) }}", t).is_err());
    }

    #[test]
    fn tojson_and_urlencode_escape_user_text() {
        let ctx = json!({"payload": {"text": "say \"hi\"\nnow & then"}});
        assert_eq!(
            ok(r#"{"text": {{ payload.text | tojson }}}"#, ctx.clone()),
            r#"{"text": "say \"hi\"\nnow \u0026 then"}"#
        );
        let body = ok(r#"{"text": {{ payload.text | tojson }}}"#, ctx.clone());
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["text"], "say \"hi\"\nnow & then");
        assert_eq!(ok("q={{ payload.text | urlencode }}", ctx), "q=say%20%22hi%22%0Anow%20%26%20then");
    }

    #[test]
    fn filters_compose() {
        let ctx = json!({"item": {"title": "x".repeat(400), "url": "https://e.com/p?utm_source=rss&id=7"}});
        let out = ok("{{ item.title | truncate_for(\"bluesky\") }}", ctx.clone());
        assert_eq!(out.chars().count(), 300);
        let out = ok("{{ (item.title | truncate_for(\"bluesky\", 10)) ~ \" \" ~ (item.url | utm(\"herald\")) }}", ctx);
        assert_eq!(out, "xxxxxxxxx… https://e.com/p?id=7&utm_source=herald&utm_medium=social");
    }

    #[test]
    fn hashtags_filter() {
        let ctx =
            json!({"cats": ["Rust", "machine learning", "rust", "#Web-Dev", "  ", "C++", "日本語", "snake_case"]});
        assert_eq!(ok("{{ cats | hashtags }}", ctx.clone()), "#Rust #MachineLearning #WebDev #C #日本語 #snake_case");
        assert_eq!(ok("{{ cats | hashtags(2) }}", ctx.clone()), "#Rust #MachineLearning");
        assert_eq!(ok("{{ cats | hashtags(limit=1) }}", ctx), "#Rust");
        assert_eq!(ok("{{ \"open source, rust,,ai\" | hashtags }}", json!({})), "#OpenSource #rust #ai");
        assert_eq!(ok("[{{ missing | hashtags }}]", json!({})), "[]");
        assert_eq!(ok("[{{ [\"!!\", \"\"] | hashtags }}]", json!({})), "[]");
    }

    #[test]
    fn utm_filter() {
        let u = |source: &str, url: &str| ok(source, json!({"u": url}));
        assert_eq!(
            u("{{ u | utm(\"herald\") }}", "https://example.com/a?x=1#frag"),
            "https://example.com/a?x=1&utm_source=herald&utm_medium=social#frag"
        );
        assert_eq!(
            u("{{ u | utm(\"herald\", \"mastodon\", \"spring\") }}", "https://example.com/"),
            "https://example.com/?utm_source=herald&utm_medium=mastodon&utm_campaign=spring"
        );
        assert_eq!(
            u("{{ u | utm(\"herald\", campaign=\"launch\") }}", "http://example.com/?utm_source=old&UTM_Term=t&b=2"),
            "http://example.com/?b=2&utm_source=herald&utm_medium=social&utm_campaign=launch"
        );
        assert_eq!(u("{{ u | utm(source=\"h\") }}", "https://e.com"), "https://e.com/?utm_source=h&utm_medium=social");
        // Not an http(s) URL: unchanged.
        assert_eq!(u("{{ u | utm(\"herald\") }}", "not a url"), "not a url");
        assert_eq!(u("{{ u | utm(\"herald\") }}", "mailto:a@b.c"), "mailto:a@b.c");
        assert_eq!(u("[{{ missing | utm(\"herald\") }}]", ""), "[]");
        assert!(r("{{ u | utm() }}", json!({"u": "https://e.com"})).is_err(), "a source is required");
        assert!(r("{{ u | utm(\"a\", source=\"b\") }}", json!({"u": "https://e.com"})).is_err());
    }

    #[test]
    fn truncate_unit() {
        assert_eq!(truncate("abc", 3, Counting::Chars, None), "abc");
        assert_eq!(truncate("abcd", 3, Counting::Chars, None), "ab…");
        assert_eq!(truncate("abcd", 1, Counting::Chars, None), "…");
        assert_eq!(truncate("abcd", 0, Counting::Chars, None), "");
        // The byte cap applies on top of the count.
        let out = truncate(&"é".repeat(10), 100, Counting::Chars, Some(9));
        assert!(out.len() <= 9, "{out}");
        assert_eq!(out, "ééé…");
        // Trailing space before the ellipsis is dropped.
        assert_eq!(truncate("ab cdefgh", 4, Counting::Chars, None), "ab…");
        // A URL with no space before it is dropped whole.
        assert_eq!(truncate("https://example.com/long", 10, Counting::Chars, None), "…");
    }
}

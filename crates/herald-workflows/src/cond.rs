//! Conditions on event fields: the `condition` and `filter` steps of a workflow.
//!
//! A condition is JSON written by users, so it is checked before it is saved ([`check`]) and
//! evaluated defensively ([`eval`] never fails: anything it cannot make sense of is false).
//! Regular expressions are size-limited, because a pattern is untrusted input compiled on the
//! server.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex, PoisonError};

use chrono::{DateTime, NaiveDate, Utc};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The longest regular expression accepted, in bytes.
pub const MAX_REGEX_BYTES: usize = 1024;
/// How deep `all`/`any`/`not` may nest. Real conditions use two or three levels.
const MAX_DEPTH: usize = 16;
/// Compiled-program and lazy-DFA budget of one regex: enough for any sane pattern, small enough
/// that `(a{1000}){1000}` is refused instead of eating memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Compiled regexes kept between evaluations; eval runs ~1000/s over a few dozen workflows.
const REGEX_CACHE_ENTRIES: usize = 256;

/// A condition: a combination or one test.
///
/// JSON shapes (each serialises back to the same shape):
/// - `{"all": [Cond, ...]}`, `{"any": [Cond, ...]}`, `{"not": Cond}`
/// - `{"field": "item.title", "op": "contains", "value": "rust"}`
/// - `{"hashtags": {"include": ["rust"], "exclude": ["ad"]}}`
/// - `{"keywords": {"include": ["launch"], "exclude": ["sponsored"]}}`
/// - `{"content_type": ["video", "short", "article", "text"]}`
/// - `{"duration": {"min": 30, "max": 600}}` (seconds)
///
/// Deserialisation picks the shape by its key and reports where a nested condition is wrong
/// (`all[1].not: unknown variant ...`), rather than serde's "did not match any variant".
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Cond {
    /// Every condition holds (and there is at least one).
    All {
        #[schema(no_recursion)]
        all: Vec<Cond>,
    },
    /// At least one condition holds.
    Any {
        #[schema(no_recursion)]
        any: Vec<Cond>,
    },
    /// The condition does not hold.
    Not {
        #[schema(no_recursion)]
        not: Box<Cond>,
    },
    /// A test on one field of the event.
    Field(FieldTest),
    /// The content's hashtags (`#word` in its text, plus the item's categories).
    Hashtags { hashtags: IncludeExclude },
    /// Words or phrases in the content's text.
    Keywords { keywords: IncludeExclude },
    /// The kind of content: matches if it is one of these.
    ContentType { content_type: Vec<ContentType> },
    /// The video's (or item's) duration, in seconds.
    Duration { duration: DurationRange },
}

/// `{"field": "item.title", "op": "contains", "value": "rust"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldTest {
    /// A dotted path into the run's variables: `item.title`, `payload.tags.0`.
    pub field: String,
    /// The comparison.
    pub op: Op,
    /// The operand. Absent for `exists` (which then means "exists: true"). An explicit `null` is
    /// kept as `Some(Null)` so the condition serialises back exactly as written.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// A comparison of a [`FieldTest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Case-insensitive substring; on a list, one element equals the value.
    Contains,
    /// Not `contains`; true when the field is missing.
    NotContains,
    /// The regular expression matches (on a list: some element matches).
    Matches,
    /// Equal: JSON equality, except that a number equals its numeric string (`5` and `"5"`).
    Eq,
    /// Not `eq`; true when the field is missing.
    Ne,
    /// Greater than: numbers (or numeric strings), else RFC 3339 times.
    Gt,
    /// Less than (numbers, else times).
    Lt,
    /// Greater than or equal (numbers, else times).
    Gte,
    /// Less than or equal (numbers, else times).
    Lte,
    /// The field's value is one of the value's list.
    In,
    /// The field is present and not null (`"value": false`: absent).
    Exists,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Contains => "contains",
            Op::NotContains => "not_contains",
            Op::Matches => "matches",
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Lt => "lt",
            Op::Gte => "gte",
            Op::Lte => "lte",
            Op::In => "in",
            Op::Exists => "exists",
        }
    }
}

/// Lists for the `hashtags` and `keywords` tests. An empty `include` is no constraint; a
/// non-empty one needs at least one match. `exclude` needs none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncludeExclude {
    /// At least one of these must be present (when not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// None of these may be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// The kind of content an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    /// A video that is not a short.
    Video,
    /// A short video (`video.shorts == true`).
    Short,
    /// A feed item with a title and a link.
    Article,
    /// Anything else (a webhook payload, plain text).
    Text,
}

/// Inclusive bounds, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DurationRange {
    /// The shortest accepted duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u64>,
    /// The longest accepted duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

/// `Some(value)` for a present key, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for Cond {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Cond::from_json(value).map_err(|(path, message)| {
            serde::de::Error::custom(if path.is_empty() { message } else { format!("{path}: {message}") })
        })
    }
}

/// A parse problem: where (relative path) and what.
type ParseError = (String, String);

const SHAPES: &str = "all, any, not, field/op/value, hashtags, keywords, content_type or duration";

impl Cond {
    fn from_json(value: Value) -> Result<Cond, ParseError> {
        let Value::Object(map) = value else {
            return Err((String::new(), format!("a condition is an object with one of {SHAPES}")));
        };
        if map.contains_key("field") {
            return serde_json::from_value(Value::Object(map))
                .map(Cond::Field)
                .map_err(|e| (String::new(), e.to_string()));
        }
        if map.len() != 1 {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err((String::new(), format!("a condition has exactly one of {SHAPES}; found keys {keys:?}")));
        }
        let Some((key, inner)) = map.into_iter().next() else {
            return Err((String::new(), format!("a condition has exactly one of {SHAPES}")));
        };
        let plain = |e: serde_json::Error| (key.clone(), e.to_string());
        match key.as_str() {
            "all" => Ok(Cond::All { all: Cond::list(&key, inner)? }),
            "any" => Ok(Cond::Any { any: Cond::list(&key, inner)? }),
            "not" => Cond::from_json(inner)
                .map(|c| Cond::Not { not: Box::new(c) })
                .map_err(|(path, m)| (join(&key, &path), m)),
            "hashtags" => serde_json::from_value(inner).map(|hashtags| Cond::Hashtags { hashtags }).map_err(plain),
            "keywords" => serde_json::from_value(inner).map(|keywords| Cond::Keywords { keywords }).map_err(plain),
            "content_type" => {
                serde_json::from_value(inner).map(|content_type| Cond::ContentType { content_type }).map_err(plain)
            }
            "duration" => serde_json::from_value(inner).map(|duration| Cond::Duration { duration }).map_err(plain),
            other => Err((String::new(), format!("unknown condition {other:?}; expected one of {SHAPES}"))),
        }
    }

    fn list(key: &str, inner: Value) -> Result<Vec<Cond>, ParseError> {
        let Value::Array(items) = inner else {
            return Err((key.to_string(), "expected a list of conditions".to_string()));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| Cond::from_json(item).map_err(|(path, m)| (join(&format!("{key}[{i}]"), &path), m)))
            .collect()
    }
}

/// Joins relative paths: `all[1]` + `value` = `all[1].value`; an empty side disappears.
fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{rest}"),
    }
}

/// Problems with a condition, as (path, message) pairs; path is relative like "all[1].value".
/// Empty: fine.
pub fn check(c: &Cond) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    check_at(c, "", 1, &mut problems);
    problems
}

fn check_at(c: &Cond, path: &str, depth: usize, problems: &mut Vec<(String, String)>) {
    let mut problem = |at: &str, message: String| problems.push((join(path, at), message));
    if depth > MAX_DEPTH {
        problem("", format!("conditions nest more than {MAX_DEPTH} levels deep"));
        return;
    }
    match c {
        Cond::All { all: list } | Cond::Any { any: list } => {
            let key = if matches!(c, Cond::All { .. }) { "all" } else { "any" };
            if list.is_empty() {
                problem(key, "needs at least one condition".into());
            }
            for (i, inner) in list.iter().enumerate() {
                check_at(inner, &join(path, &format!("{key}[{i}]")), depth + 1, problems);
            }
        }
        Cond::Not { not } => check_at(not, &join(path, "not"), depth + 1, problems),
        Cond::Field(test) => {
            for (at, message) in check_field(test) {
                problem(at, message);
            }
        }
        Cond::Hashtags { hashtags: lists } | Cond::Keywords { keywords: lists } => {
            let key = if matches!(c, Cond::Hashtags { .. }) { "hashtags" } else { "keywords" };
            if lists.include.is_empty() && lists.exclude.is_empty() {
                problem(key, "needs an include or an exclude list".into());
            }
            for (name, list) in [("include", &lists.include), ("exclude", &lists.exclude)] {
                for (i, word) in list.iter().enumerate() {
                    let empty = if key == "hashtags" { normalize_tag(word).is_empty() } else { word.trim().is_empty() };
                    if empty {
                        problem(&format!("{key}.{name}[{i}]"), "is empty".into());
                    }
                }
            }
        }
        Cond::ContentType { content_type } => {
            if content_type.is_empty() {
                problem("content_type", "needs at least one type".into());
            }
        }
        Cond::Duration { duration } => match (duration.min, duration.max) {
            (None, None) => problem("duration", "needs a min or a max".into()),
            (Some(min), Some(max)) if min > max => problem("duration", format!("min {min} is above max {max}")),
            _ => {}
        },
    }
}

fn check_field(test: &FieldTest) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if test.field.is_empty() || test.field.split('.').any(str::is_empty) {
        problems.push(("field", "needs a dotted path like item.title".to_string()));
    }
    let op = test.op.name();
    let value = match (&test.value, test.op) {
        (None | Some(Value::Bool(_)), Op::Exists) => return problems,
        (Some(_), Op::Exists) => {
            problems.push(("value", "exists takes true or false".into()));
            return problems;
        }
        (None, _) => {
            problems.push(("value", format!("{op} needs a value")));
            return problems;
        }
        (Some(value), _) => value,
    };
    let wrong = match test.op {
        Op::Contains | Op::NotContains if scalar_text(value).is_none() => {
            Some(format!("{op} needs a string, a number or a boolean"))
        }
        Op::Matches => match value.as_str() {
            None => Some("matches needs a regular expression string".into()),
            Some(pattern) => compile(pattern).err(),
        },
        Op::Gt | Op::Lt | Op::Gte | Op::Lte if number(value).is_none() && time(value).is_none() => {
            Some(format!("{op} needs a number or an RFC 3339 date"))
        }
        Op::In => match value.as_array() {
            None => Some("in needs a list".into()),
            Some(list) if list.is_empty() => Some("in needs a non-empty list".into()),
            Some(_) => None,
        },
        _ => None,
    };
    problems.extend(wrong.map(|m| ("value", m)));
    problems
}

/// Evaluates against `ctx` (the run's variables: event data like
/// `{item:{title,summary,content,categories,url}, video:{title,description,shorts,duration?},
/// payload:{...}, text: "..."}`). Never fails: what it cannot evaluate is false.
pub fn eval(c: &Cond, ctx: &Value) -> bool {
    match c {
        Cond::All { all } => all.iter().all(|c| eval(c, ctx)),
        Cond::Any { any } => any.iter().any(|c| eval(c, ctx)),
        Cond::Not { not } => !eval(not, ctx),
        Cond::Field(test) => eval_field(test, ctx),
        Cond::Hashtags { hashtags } => {
            let tags = content_hashtags(ctx);
            include_exclude(hashtags, |tag| {
                let tag = normalize_tag(tag);
                (!tag.is_empty()).then(|| tags.contains(&tag))
            })
        }
        Cond::Keywords { keywords } => {
            let text = content_text(ctx).to_lowercase();
            include_exclude(keywords, |word| {
                let word = word.trim().to_lowercase();
                (!word.is_empty()).then(|| has_keyword(&text, &word))
            })
        }
        Cond::ContentType { content_type } => content_type.contains(&content_type_of(ctx)),
        Cond::Duration { duration } => {
            if duration.min.is_none() && duration.max.is_none() {
                return true;
            }
            let Some(secs) = ["video.duration", "item.duration"].iter().find_map(|p| lookup(ctx, p).and_then(seconds))
            else {
                return false;
            };
            duration.min.is_none_or(|min| secs >= min as f64) && duration.max.is_none_or(|max| secs <= max as f64)
        }
    }
}

/// `present(word)`: `None` for an empty word (ignored), else whether it is in the content.
fn include_exclude(lists: &IncludeExclude, present: impl Fn(&str) -> Option<bool>) -> bool {
    let include: Vec<bool> = lists.include.iter().filter_map(|w| present(w)).collect();
    (include.is_empty() || include.contains(&true)) && !lists.exclude.iter().any(|w| present(w) == Some(true))
}

fn eval_field(test: &FieldTest, ctx: &Value) -> bool {
    // JSON null means "no value" in event data (a feed item without an author): treat it as missing.
    let found = lookup(ctx, &test.field).filter(|v| !v.is_null());
    if test.op == Op::Exists {
        return match &test.value {
            None => found.is_some(),
            Some(Value::Bool(expected)) => found.is_some() == *expected,
            Some(_) => false,
        };
    }
    let Some(field) = found else {
        return matches!(test.op, Op::NotContains | Op::Ne);
    };
    let Some(value) = &test.value else { return false };
    match test.op {
        Op::Contains => contains(field, value),
        Op::NotContains => !contains(field, value),
        Op::Matches => value.as_str().and_then(regex).is_some_and(|re| match field {
            Value::Array(items) => items.iter().filter_map(scalar_text).any(|s| re.is_match(&s)),
            _ => scalar_text(field).is_some_and(|s| re.is_match(&s)),
        }),
        Op::Eq => loose_eq(field, value),
        Op::Ne => !loose_eq(field, value),
        Op::Gt => compare(field, value) == Some(Ordering::Greater),
        Op::Lt => compare(field, value) == Some(Ordering::Less),
        Op::Gte => matches!(compare(field, value), Some(Ordering::Greater | Ordering::Equal)),
        Op::Lte => matches!(compare(field, value), Some(Ordering::Less | Ordering::Equal)),
        Op::In => value.as_array().is_some_and(|list| list.iter().any(|v| loose_eq(field, v))),
        Op::Exists => true, // handled above
    }
}

/// The value at a dotted path: object keys, and list indexes as numbers (`payload.tags.0`).
fn lookup<'a>(ctx: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return None;
    }
    path.split('.').try_fold(ctx, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Strings, numbers and booleans as text; lists, objects and null have none.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn contains(field: &Value, needle: &Value) -> bool {
    match field {
        Value::Array(items) => items.iter().any(|item| match (item, needle) {
            (Value::String(a), Value::String(b)) => a.to_lowercase() == b.to_lowercase(),
            _ => loose_eq(item, needle),
        }),
        _ => match (scalar_text(field), scalar_text(needle)) {
            (Some(hay), Some(needle)) => hay.to_lowercase().contains(&needle.to_lowercase()),
            _ => false,
        },
    }
}

/// A number from JSON or from a numeric string. Integers stay exact (ids beyond 2^53 must not
/// compare equal by rounding); anything else is a finite float.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }
}

fn number(value: &Value) -> Option<Num> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(|i| Num::Int(i.into()))
            .or_else(|| n.as_u64().map(|u| Num::Int(u.into())))
            .or_else(|| n.as_f64().map(Num::Float)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i128>()
                .ok()
                .map(Num::Int)
                // Rust also parses "inf" and "NaN": those are words, not numbers.
                .or_else(|| s.parse::<f64>().ok().filter(|f| f.is_finite()).map(Num::Float))
        }
        _ => None,
    }
}

/// `eq`: JSON equality, except that when one side is a number, a numeric string on the other
/// side compares as that number. Strings compare case-sensitively.
fn loose_eq(a: &Value, b: &Value) -> bool {
    if (a.is_number() || b.is_number())
        && let (Some(x), Some(y)) = (number(a), number(b))
    {
        return x.compare(y) == Some(Ordering::Equal);
    }
    a == b
}

/// An RFC 3339 time, or a bare `YYYY-MM-DD` date (midnight UTC).
fn time(value: &Value) -> Option<DateTime<Utc>> {
    let s = value.as_str()?.trim();
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).ok().or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc())
    })
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return x.compare(y);
    }
    Some(time(a)?.cmp(&time(b)?))
}

/// Compiles a user pattern under the size limits.
fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_REGEX_BYTES {
        return Err(format!("the pattern is {} bytes, more than {MAX_REGEX_BYTES}", pattern.len()));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression: {e}"))
}

static CACHE: LazyLock<Mutex<HashMap<String, Option<Regex>>>> = LazyLock::new(Default::default);

/// A compiled pattern from the cache (bad patterns are cached too, as `None`, so they are not
/// recompiled on every event). The cache is cleared when full: simple, and patterns are few.
fn regex(pattern: &str) -> Option<Regex> {
    // A panic while holding the lock cannot leave a half-written entry, so a poisoned cache is usable.
    if let Some(hit) = CACHE.lock().unwrap_or_else(PoisonError::into_inner).get(pattern) {
        return hit.clone();
    }
    let compiled = compile(pattern).ok();
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= REGEX_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(pattern.to_string(), compiled.clone());
    compiled
}

/// Where the content's text lives, across feed items, videos and webhook payloads.
const TEXT_FIELDS: &[&str] = &[
    "item.title",
    // Feed items as herald-triggers stores them (plain summary, HTML summary and content)…
    "item.summary_text",
    "item.summary_html",
    "item.content_html",
    // …and the plain names other sources and payloads use.
    "item.summary",
    "item.content",
    "video.title",
    "video.description",
    "payload.text",
    "text",
];

fn content_text(ctx: &Value) -> String {
    let parts: Vec<&str> = TEXT_FIELDS.iter().filter_map(|p| lookup(ctx, p)?.as_str()).collect();
    // A newline between fields keeps a word at the end of one from joining the next.
    parts.join("\n")
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A tag as compared: lowercase word characters only, so "#Machine Learning", "machine-learning"
/// and "#MachineLearning" are the same tag.
fn normalize_tag(tag: &str) -> String {
    tag.chars().filter(|c| is_word_char(*c)).flat_map(char::to_lowercase).collect()
}

/// The content's hashtags, normalised: `#word` tokens in its text plus the item's categories.
fn content_hashtags(ctx: &Value) -> HashSet<String> {
    let mut tags = HashSet::new();
    let text = content_text(ctx);
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        // A '#' after a word character, '/' or '&' is a URL fragment or an HTML entity, not a tag.
        if c == '#' && prev.is_none_or(|p| !is_word_char(p) && !matches!(p, '/' | '&' | '#')) {
            let tag: String = text[i + 1..].chars().take_while(|c| is_word_char(*c)).collect();
            if !tag.is_empty() {
                tags.insert(normalize_tag(&tag));
            }
        }
        prev = Some(c);
    }
    if let Some(Value::Array(categories)) = lookup(ctx, "item.categories") {
        tags.extend(categories.iter().filter_map(Value::as_str).map(normalize_tag).filter(|t| !t.is_empty()));
    }
    tags
}

/// Whole-word-ish match of a lowercase `word` (or phrase) in lowercase `text`: the match may not
/// start or end inside a word, so "rust" matches "Rust!" but not "trust" or "rusty". Edges that are
/// not word characters ("c++") need no boundary.
fn has_keyword(text: &str, word: &str) -> bool {
    let starts_word = word.starts_with(is_word_char);
    let ends_word = word.ends_with(is_word_char);
    text.match_indices(word).any(|(i, m)| {
        let before = !starts_word || text[..i].chars().next_back().is_none_or(|c| !is_word_char(c));
        let after = !ends_word || text[i + m.len()..].chars().next().is_none_or(|c| !is_word_char(c));
        before && after
    })
}

fn content_type_of(ctx: &Value) -> ContentType {
    let non_empty = |path: &str| lookup(ctx, path).and_then(Value::as_str).is_some_and(|s| !s.trim().is_empty());
    match lookup(ctx, "video").filter(|v| !v.is_null()) {
        Some(video) if video.get("shorts") == Some(&Value::Bool(true)) => ContentType::Short,
        Some(_) => ContentType::Video,
        None if non_empty("item.url") && non_empty("item.title") => ContentType::Article,
        None => ContentType::Text,
    }
}

/// Seconds from a number, a numeric string, ISO 8601 (`PT1M30S`) or a clock (`1:30`, `01:02:03`).
fn seconds(value: &Value) -> Option<f64> {
    let secs = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<f64>()
                .ok()
                .or_else(|| s.strip_prefix(['P', 'p']).map_or_else(|| clock_seconds(s), iso8601_seconds))
        }
        _ => None,
    }?;
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

/// The part after 'P' of an ISO 8601 duration: `[nW][nD][T[nH][nM][nS]]`. Years and months are
/// refused: their length in seconds is ambiguous, and no video platform uses them.
fn iso8601_seconds(rest: &str) -> Option<f64> {
    let (date, time) = rest.split_once(['T', 't']).unwrap_or((rest, ""));
    let mut total = 0.0;
    let mut any = false;
    for (part, units) in
        [(date, &[('W', 604_800.0), ('D', 86_400.0)][..]), (time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)][..])]
    {
        let mut number = String::new();
        let mut next_unit = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            // Units must come in order, each at most once.
            let offset = units.get(next_unit..)?.iter().position(|(u, _)| *u == c.to_ascii_uppercase())?;
            let (_, factor) = units[next_unit + offset];
            total += number.parse::<f64>().ok()? * factor;
            number.clear();
            next_unit += offset + 1;
            any = true;
        }
        if !number.is_empty() {
            return None;
        }
    }
    any.then_some(total)
}

/// `m:ss` or `h:mm:ss` (seconds may have a fraction).
fn clock_seconds(s: &str) -> Option<f64> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let last = parts.len() - 1;
    parts.iter().enumerate().try_fold(0.0, |total, (i, part)| {
        let valid = !part.is_empty() && part.chars().all(|c| c.is_ascii_digit() || (i == last && c == '.'));
        valid.then(|| part.parse::<f64>().ok()).flatten().map(|n| total * 60.0 + n)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cond(v: Value) -> Cond {
        match serde_json::from_value(v.clone()) {
            Ok(c) => c,
            Err(e) => panic!("{v} did not parse: {e}"),
        }
    }

    fn field(path: &str, op: &str, value: Value) -> Cond {
        cond(json!({"field": path, "op": op, "value": value}))
    }

    fn ev(c: &Cond, ctx: &Value) -> bool {
        eval(c, ctx)
    }

    fn ctx() -> Value {
        json!({
            "item": {
                "title": "Rust 2.0 launch: what's new",
                "summary": "The #RustLang team ships. #release",
                "content": "<p>See https://e.com/page#anchor and &#8217; entity</p>",
                "categories": ["Programming", "Machine Learning"],
                "url": "https://blog.example.com/rust-2",
                "views": 1500,
                "score": "42",
                "published": "2024-05-01T10:00:00Z",
                "author": null,
                "big_id": 9007199254740993u64,
            },
            "payload": {"tags": ["Alpha", "beta", 7], "text": "from a hook", "count": 5},
            "text": "Plain text with #TagInText",
        })
    }

    #[test]
    fn json_round_trip_of_every_shape() {
        let shapes = [
            json!({"all": [{"field": "item.title", "op": "contains", "value": "rust"}]}),
            json!({"any": [{"field": "a", "op": "eq", "value": 5}, {"field": "b", "op": "exists"}]}),
            json!({"not": {"field": "item.title", "op": "matches", "value": "^R"}}),
            json!({"field": "x", "op": "eq", "value": null}),
            json!({"field": "x", "op": "in", "value": ["a", "b"]}),
            json!({"field": "x", "op": "exists", "value": false}),
            json!({"hashtags": {"include": ["rust"], "exclude": ["ad"]}}),
            json!({"hashtags": {"exclude": ["ad"]}}),
            json!({"keywords": {"include": ["launch"], "exclude": ["sponsored"]}}),
            json!({"content_type": ["video", "short", "article", "text"]}),
            json!({"duration": {"min": 30, "max": 600}}),
            json!({"duration": {"max": 60}}),
            json!({"all": [{"any": [{"not": {"content_type": ["short"]}}, {"duration": {"min": 1}}]}]}),
        ];
        for shape in shapes {
            let c = cond(shape.clone());
            assert_eq!(serde_json::to_value(&c).unwrap(), shape);
            let again: Cond = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(again, c);
        }
        assert!(matches!(
            cond(json!({"field": "x", "op": "eq", "value": null})),
            Cond::Field(FieldTest { value: Some(Value::Null), .. })
        ));
        assert!(matches!(cond(json!({"field": "x", "op": "exists"})), Cond::Field(FieldTest { value: None, .. })));
    }

    #[test]
    fn parse_errors_are_clear_and_located() {
        let err = |v: Value| serde_json::from_value::<Cond>(v).unwrap_err().to_string();
        let e = err(json!({"all": [{"field": "a", "op": "eq", "value": 1}, {"not": {"field": "a", "op": "nope"}}]}));
        assert!(e.starts_with("all[1].not: unknown variant `nope`"), "{e}");
        let e = err(json!({"sometimes": []}));
        assert!(e.contains("unknown condition \"sometimes\""), "{e}");
        let e = err(json!({"all": [], "any": []}));
        assert!(e.contains("exactly one of"), "{e}");
        let e = err(json!("rust"));
        assert!(e.contains("a condition is an object"), "{e}");
        let e = err(json!({"any": {"field": "a"}}));
        assert!(e.starts_with("any: expected a list"), "{e}");
        let e = err(json!({"field": "a", "op": "eq", "value": 1, "extra": true}));
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = err(json!({"content_type": ["podcast"]}));
        assert!(e.starts_with("content_type: unknown variant `podcast`"), "{e}");
        let e = err(json!({"duration": {"min": -1}}));
        assert!(e.starts_with("duration: "), "{e}");
        let e = err(json!({"hashtags": {"include": "rust"}}));
        assert!(e.starts_with("hashtags: "), "{e}");
    }

    #[test]
    fn contains_and_not_contains() {
        let c = ctx();
        assert!(ev(&field("item.title", "contains", json!("RUST")), &c));
        assert!(!ev(&field("item.title", "contains", json!("python")), &c));
        assert!(ev(&field("item.title", "contains", json!(2)), &c), "numbers are matched as text");
        // Lists: element equality, strings case-insensitive, numbers loosely.
        assert!(ev(&field("payload.tags", "contains", json!("alpha")), &c));
        assert!(!ev(&field("payload.tags", "contains", json!("alp")), &c), "no substring inside elements");
        assert!(ev(&field("payload.tags", "contains", json!("7")), &c));
        assert!(ev(&field("item.title", "not_contains", json!("python")), &c));
        assert!(!ev(&field("item.title", "not_contains", json!("rust")), &c));
        assert!(ev(&field("item.missing", "not_contains", json!("x")), &c), "missing field does not contain");
        assert!(!ev(&field("item.missing", "contains", json!("x")), &c));
        assert!(!ev(&field("item.author", "contains", json!("x")), &c), "null is missing");
        assert!(ev(&field("item.author", "not_contains", json!("x")), &c));
    }

    #[test]
    fn matches_regex() {
        let c = ctx();
        assert!(ev(&field("item.title", "matches", json!(r"^Rust \d+\.\d+")), &c));
        assert!(!ev(&field("item.title", "matches", json!("^rust")), &c), "regexes are case-sensitive");
        assert!(ev(&field("item.title", "matches", json!("(?i)^rust")), &c));
        assert!(ev(&field("payload.tags", "matches", json!("^b")), &c), "any list element");
        assert!(!ev(&field("item.title", "matches", json!("(unclosed")), &c), "bad regex is false");
        assert!(!ev(&field("item.title", "matches", json!("(unclosed")), &c), "and stays false when cached");
        assert!(!ev(&field("item.missing", "matches", json!(".*")), &c));
        assert!(!ev(&field("item.title", "matches", json!(5)), &c));
        // Over the size limit: refused, even though it is valid syntax.
        let huge = field("item.title", "matches", json!("(a{1000}){1000}"));
        assert!(!ev(&huge, &c));
        assert_eq!(check(&huge).len(), 1);
    }

    #[test]
    fn regex_cache_is_bounded() {
        for i in 0..(REGEX_CACHE_ENTRIES * 2 + 5) {
            assert!(regex(&format!("^x{i}$")).is_some_and(|re| re.is_match(&format!("x{i}"))));
        }
        let len = CACHE.lock().unwrap_or_else(PoisonError::into_inner).len();
        assert!(len <= REGEX_CACHE_ENTRIES, "{len}");
        assert!(regex("(").is_none() && regex("(").is_none(), "a bad pattern stays bad when cached");
    }

    #[test]
    fn eq_and_ne() {
        let c = ctx();
        assert!(ev(&field("item.views", "eq", json!(1500)), &c));
        assert!(ev(&field("item.views", "eq", json!("1500")), &c), "numeric string equals number");
        assert!(ev(&field("item.score", "eq", json!(42)), &c));
        assert!(ev(&field("item.views", "eq", json!(1500.0)), &c));
        assert!(!ev(&field("item.score", "eq", json!("42.0")), &c), "two strings compare as strings");
        assert!(ev(&field("item.title", "eq", json!("Rust 2.0 launch: what's new")), &c));
        assert!(!ev(&field("item.title", "eq", json!("rust 2.0 launch: what's new")), &c), "case-sensitive");
        assert!(ev(&field("payload.tags.0", "eq", json!("Alpha")), &c), "index into a list");
        assert!(ev(&field("payload.tags", "eq", json!(["Alpha", "beta", 7])), &c), "JSON equality");
        // Large ids compare exactly, not through a rounded float.
        assert!(ev(&field("item.big_id", "eq", json!("9007199254740993")), &c));
        assert!(!ev(&field("item.big_id", "eq", json!(9007199254740992u64)), &c));
        assert!(ev(&field("item.views", "ne", json!(1)), &c));
        assert!(!ev(&field("item.views", "ne", json!("1500")), &c));
        assert!(ev(&field("item.nope", "ne", json!(1)), &c), "missing field is not equal");
        assert!(!ev(&field("item.nope", "eq", json!(1)), &c));
        assert!(!ev(&field("item.title", "eq", json!(null)), &c));
    }

    #[test]
    fn ordering_numbers_and_dates() {
        let c = ctx();
        assert!(ev(&field("item.views", "gt", json!(1000)), &c));
        assert!(!ev(&field("item.views", "gt", json!(1500)), &c));
        assert!(ev(&field("item.views", "gte", json!(1500)), &c));
        assert!(ev(&field("item.views", "lte", json!("1500")), &c));
        assert!(ev(&field("item.views", "lt", json!(1500.5)), &c));
        assert!(ev(&field("item.score", "gt", json!(9)), &c), "numeric string compares as a number");
        assert!(ev(&field("item.published", "gt", json!("2024-04-30T23:59:59Z")), &c));
        assert!(!ev(&field("item.published", "lt", json!("2024-05-01T11:00:00+01:00")), &c), "same instant");
        assert!(ev(&field("item.published", "gte", json!("2024-05-01T11:00:00+01:00")), &c), "same instant");
        assert!(ev(&field("item.published", "gt", json!("2024-05-01")), &c), "a bare date is midnight UTC");
        assert!(!ev(&field("item.title", "gt", json!(3)), &c), "text is not ordered");
        assert!(!ev(&field("item.title", "lt", json!("zzz")), &c), "strings are not ordered as text");
        assert!(!ev(&field("item.nope", "lt", json!(3)), &c));
    }

    #[test]
    fn in_and_exists() {
        let c = ctx();
        assert!(ev(&field("payload.count", "in", json!([1, "5", 9])), &c));
        assert!(!ev(&field("payload.count", "in", json!([1, 2])), &c));
        assert!(ev(&field("payload.tags.1", "in", json!(["alpha", "beta"])), &c));
        assert!(!ev(&field("payload.tags.1", "in", json!(["BETA"])), &c), "in compares like eq");
        assert!(!ev(&field("payload.count", "in", json!(5)), &c), "value must be a list");
        assert!(!ev(&field("item.nope", "in", json!([null])), &c));
        assert!(ev(&cond(json!({"field": "item.title", "op": "exists"})), &c));
        assert!(ev(&field("item.title", "exists", json!(true)), &c));
        assert!(!ev(&field("item.title", "exists", json!(false)), &c));
        assert!(ev(&field("item.nope", "exists", json!(false)), &c));
        assert!(!ev(&field("item.author", "exists", json!(true)), &c), "null does not exist");
        assert!(!ev(&field("payload.tags.9", "exists", json!(true)), &c));
        assert!(!ev(&field("item.title", "exists", json!("yes")), &c));
    }

    #[test]
    fn combinations() {
        let c = ctx();
        let yes = field("item.title", "contains", json!("rust"));
        let no = field("item.title", "contains", json!("python"));
        assert!(ev(&Cond::All { all: vec![yes.clone(), yes.clone()] }, &c));
        assert!(!ev(&Cond::All { all: vec![yes.clone(), no.clone()] }, &c));
        assert!(ev(&Cond::Any { any: vec![no.clone(), yes.clone()] }, &c));
        assert!(!ev(&Cond::Any { any: vec![no.clone(), no.clone()] }, &c));
        assert!(ev(&Cond::Not { not: Box::new(no.clone()) }, &c));
        let nested = cond(json!({"all": [
            {"any": [{"field": "item.views", "op": "gt", "value": 2000}, {"keywords": {"include": ["launch"]}}]},
            {"not": {"hashtags": {"include": ["ad"]}}}
        ]}));
        assert!(ev(&nested, &c));
    }

    #[test]
    fn hashtags_builtin() {
        let c = ctx();
        let h = |include: &[&str], exclude: &[&str]| Cond::Hashtags {
            hashtags: IncludeExclude {
                include: include.iter().map(|s| s.to_string()).collect(),
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
        };
        assert!(ev(&h(&["rustlang"], &[]), &c), "from item.summary, case-insensitive");
        assert!(ev(&h(&["#Release"], &[]), &c), "a leading # is ignored");
        assert!(ev(&h(&["taginText"], &[]), &c), "from top-level text");
        assert!(ev(&h(&["machine learning"], &[]), &c), "categories count, normalised");
        assert!(ev(&h(&["MachineLearning"], &[]), &c));
        assert!(ev(&h(&["programming"], &[]), &c));
        assert!(!ev(&h(&["anchor"], &[]), &c), "a URL fragment is not a hashtag");
        assert!(!ev(&h(&["8217"], &[]), &c), "an HTML entity is not a hashtag");
        assert!(!ev(&h(&["python"], &[]), &c));
        assert!(ev(&h(&["python", "release"], &[]), &c), "one of include is enough");
        assert!(!ev(&h(&["release"], &["rustlang"]), &c), "exclude wins");
        assert!(ev(&h(&[], &["ad"]), &c), "empty include is no constraint");
        assert!(ev(&h(&[], &[]), &json!({})));
        assert!(!ev(&h(&["x"], &[]), &json!({})));
        let video = json!({"video": {"title": "Clip #Shorts", "description": "#cats and #Dogs_2"}});
        assert!(ev(&h(&["shorts", "nothing"], &[]), &video));
        assert!(ev(&h(&["dogs_2"], &["birds"]), &video));
        assert!(ev(&h(&["from"], &[]), &json!({"payload": {"text": "hi #from"}})));
    }

    #[test]
    fn keywords_builtin() {
        let c = ctx();
        let k = |include: &[&str], exclude: &[&str]| Cond::Keywords {
            keywords: IncludeExclude {
                include: include.iter().map(|s| s.to_string()).collect(),
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
        };
        assert!(ev(&k(&["LAUNCH"], &[]), &c));
        assert!(ev(&k(&["what's new"], &[]), &c), "phrases");
        assert!(!ev(&k(&["laun"], &[]), &c), "whole words only");
        assert!(!ev(&k(&["ust"], &[]), &c));
        assert!(ev(&k(&["ships"], &[]), &c), "from the summary");
        assert!(ev(&k(&["hook"], &[]), &c), "from payload.text");
        assert!(!ev(&k(&["launch"], &["ships"]), &c), "exclude wins");
        assert!(ev(&k(&["nothing", "launch"], &["sponsored"]), &c));
        assert!(ev(&k(&["c++"], &[]), &json!({"text": "I like C++."})), "non-word edges need no boundary");
        assert!(!ev(&k(&["rust"], &[]), &json!({"text": "trust rusty"})));
        assert!(ev(&k(&["cats"], &[]), &json!({"video": {"description": "about cats"}})));
        assert!(ev(&k(&["  "], &["x"]), &c), "blank words are ignored");
    }

    #[test]
    fn content_type_builtin() {
        let is = |types: Value, ctx: Value| ev(&cond(json!({"content_type": types})), &ctx);
        assert!(is(json!(["short"]), json!({"video": {"title": "a", "shorts": true}})));
        assert!(!is(json!(["video"]), json!({"video": {"title": "a", "shorts": true}})));
        assert!(is(json!(["video"]), json!({"video": {"title": "a", "shorts": false}})));
        assert!(is(json!(["video"]), json!({"video": {"title": "a"}, "item": {"title": "t", "url": "u"}})));
        assert!(is(json!(["article"]), json!({"item": {"title": "t", "url": "https://e.com"}})));
        assert!(is(json!(["text"]), json!({"item": {"title": "t"}})), "no url: not an article");
        assert!(is(json!(["text"]), json!({"payload": {"x": 1}})));
        assert!(is(json!(["video", "text"]), json!({"text": "hi"})));
        assert!(!is(json!(["video", "short"]), json!({"text": "hi"})));
    }

    #[test]
    fn duration_builtin() {
        let d = |min: Option<u64>, max: Option<u64>| Cond::Duration { duration: DurationRange { min, max } };
        let video = |duration: Value| json!({"video": {"duration": duration}});
        assert!(ev(&d(Some(30), Some(600)), &video(json!(30))), "min inclusive");
        assert!(ev(&d(Some(30), Some(600)), &video(json!(600))), "max inclusive");
        assert!(!ev(&d(Some(30), Some(600)), &video(json!(601))));
        assert!(!ev(&d(Some(30), None), &video(json!(29.5))));
        assert!(ev(&d(Some(90), Some(90)), &video(json!("PT1M30S"))));
        assert!(ev(&d(Some(3723), Some(3723)), &video(json!("PT1H2M3S"))));
        assert!(ev(&d(Some(86_400), Some(86_400)), &video(json!("P1D"))));
        assert!(ev(&d(Some(90), Some(90)), &video(json!("1:30"))));
        assert!(ev(&d(Some(3723), Some(3723)), &video(json!("01:02:03"))));
        assert!(ev(&d(Some(90), Some(90)), &video(json!("90"))));
        assert!(ev(&d(None, Some(60)), &json!({"item": {"duration": 59}})), "item.duration too");
        assert!(!ev(&d(Some(1), None), &json!({"video": {}})), "missing duration");
        assert!(!ev(&d(None, Some(100)), &video(json!("soon"))), "unparseable duration");
        assert!(ev(&d(None, None), &json!({})), "no bounds: no constraint");
    }

    #[test]
    fn duration_parsing() {
        let s = |v: Value| seconds(&v);
        assert_eq!(s(json!("PT0.5S")), Some(0.5));
        assert_eq!(s(json!("P1W")), Some(604_800.0));
        assert_eq!(s(json!("pt2m")), Some(120.0));
        assert_eq!(s(json!("1:02:03.5")), Some(3723.5));
        assert_eq!(s(json!("PT")), None);
        assert_eq!(s(json!("P1M")), None, "months are ambiguous");
        assert_eq!(s(json!("PT1S2M")), None, "units out of order");
        assert_eq!(s(json!("PT1M1M")), None, "unit twice");
        assert_eq!(s(json!("PT5")), None, "number without unit");
        assert_eq!(s(json!("1:2:3:4")), None);
        assert_eq!(s(json!("1:-30")), None);
        assert_eq!(s(json!(":30")), None);
        assert_eq!(s(json!(-5)), None);
        assert_eq!(s(json!("NaN")), None);
        assert_eq!(s(json!(true)), None);
    }

    #[test]
    fn check_reports_paths() {
        assert!(check(&cond(json!({"all": [{"field": "a", "op": "eq", "value": 1}]}))).is_empty());
        let problems = check(&cond(json!({"all": [
            {"field": "a", "op": "eq", "value": 1},
            {"field": "a", "op": "in", "value": "x"},
            {"any": []},
            {"not": {"field": "b", "op": "matches", "value": "("}},
            {"field": "c..d", "op": "gt", "value": "soon"},
            {"field": "d", "op": "contains"},
            {"field": "e", "op": "exists", "value": 1},
            {"hashtags": {"include": ["#"]}},
            {"keywords": {}},
            {"content_type": []},
            {"duration": {"min": 10, "max": 5}},
            {"duration": {}},
            {"field": "f", "op": "matches", "value": "a".repeat(MAX_REGEX_BYTES + 1)},
            {"field": "g", "op": "gte", "value": "2024-01-01T00:00:00Z"},
            {"field": "h", "op": "contains", "value": ["x"]},
            {"field": "i", "op": "in", "value": []},
        ]})));
        let at =
            |path: &str| -> Vec<&str> { problems.iter().filter(|(p, _)| p == path).map(|(_, m)| m.as_str()).collect() };
        assert_eq!(at("all[1].value"), ["in needs a list"]);
        assert_eq!(at("all[2].any"), ["needs at least one condition"]);
        assert!(at("all[3].not.value")[0].starts_with("invalid regular expression"), "{problems:?}");
        assert_eq!(at("all[4].field"), ["needs a dotted path like item.title"]);
        assert_eq!(at("all[4].value"), ["gt needs a number or an RFC 3339 date"]);
        assert_eq!(at("all[5].value"), ["contains needs a value"]);
        assert_eq!(at("all[6].value"), ["exists takes true or false"]);
        assert_eq!(at("all[7].hashtags.include[0]"), ["is empty"]);
        assert_eq!(at("all[8].keywords"), ["needs an include or an exclude list"]);
        assert_eq!(at("all[9].content_type"), ["needs at least one type"]);
        assert_eq!(at("all[10].duration"), ["min 10 is above max 5"]);
        assert_eq!(at("all[11].duration"), ["needs a min or a max"]);
        assert_eq!(at("all[12].value"), [format!("the pattern is {} bytes, more than 1024", MAX_REGEX_BYTES + 1)]);
        assert!(at("all[13].value").is_empty() && at("all[0].value").is_empty());
        assert_eq!(at("all[14].value"), ["contains needs a string, a number or a boolean"]);
        assert_eq!(at("all[15].value"), ["in needs a non-empty list"]);
        assert_eq!(problems.len(), 15, "{problems:?}");
        // A root-level test has bare paths.
        assert_eq!(check(&field("x", "in", json!(1))), [("value".to_string(), "in needs a list".to_string())]);
    }

    #[test]
    fn check_limits_nesting() {
        let mut c = field("a", "exists", json!(true));
        for _ in 0..15 {
            c = Cond::Not { not: Box::new(c) };
        }
        assert!(check(&c).is_empty(), "16 levels are fine");
        let deeper = Cond::Any { any: vec![c] };
        let problems = check(&deeper);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, format!("any[0]{}", ".not".repeat(15)));
        assert!(problems[0].1.contains("nest more than 16"));
    }

    #[test]
    fn lookup_paths() {
        let c = ctx();
        assert_eq!(lookup(&c, "payload.tags.2"), Some(&json!(7)));
        assert_eq!(lookup(&c, "payload.tags.x"), None);
        assert_eq!(lookup(&c, "item.title.deeper"), None);
        assert_eq!(lookup(&c, ""), None);
        assert_eq!(lookup(&c, "text"), Some(&json!("Plain text with #TagInText")));
    }

    #[test]
    fn schema_builds_without_recursing_forever() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(Cond::schema()).unwrap();
        assert!(schema.to_string().contains("content_type"), "{schema}");
        let mut schemas = Vec::new();
        <Cond as ToSchema>::schemas(&mut schemas);
    }
}

//! Checking a definition before it is stored: every problem comes back at once, each with its
//! path in the definition (`steps[2].targets[0].connection`), as a 422.

use crate::cond;
use crate::model::*;
use crate::path::Path;
use crate::template;
use herald_core::{Error, ErrorCode};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

pub const MAX_STEPS: usize = 100;
pub const MAX_DEPTH: usize = 8;
const MAX_NAME: usize = 200;
/// The longest delay or approval timeout.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// What validation needs to know of the team.
#[derive(Debug, Default, Clone)]
pub struct TeamFacts {
    pub sources: HashSet<Uuid>,
    /// Connection id → platform.
    pub connections: HashMap<Uuid, String>,
    /// Member → role.
    pub members: HashMap<Uuid, String>,
}

/// A problem at a path.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem { path: path.into(), message: message.into() }
}

/// The 422 for a list of problems.
pub fn failed(problems: Vec<Problem>) -> Error {
    let n = problems.len();
    let first = problems.first().map(|p| format!(" (first: {}: {})", p.path, p.message)).unwrap_or_default();
    Error::new(ErrorCode::ValidationFailed, format!("the workflow has {n} problem(s){first}; see details.problems"))
        .with_details(json!({
            "problems": problems.iter().map(|p| json!({"path": p.path, "message": p.message})).collect::<Vec<_>>()
        }))
}

/// Parses a definition from JSON, step by step, so a bad step is named by its path.
pub fn parse(v: Value) -> Result<Definition, Error> {
    let mut problems = Vec::new();
    let Value::Object(mut top) = v else {
        return Err(failed(vec![problem("", "a workflow is a JSON object with `name` and `steps`")]));
    };
    let steps = top.remove("steps").unwrap_or(Value::Array(vec![]));
    let steps = parse_steps(steps, "steps", &mut problems, 0);
    top.insert("steps".into(), Value::Array(vec![]));
    let mut def: Definition = match serde_json::from_value(Value::Object(top)) {
        Ok(d) => d,
        Err(e) => {
            problems.push(problem("", e.to_string()));
            return Err(failed(problems));
        }
    };
    if !problems.is_empty() {
        return Err(failed(problems));
    }
    def.steps = steps;
    Ok(def)
}

fn parse_steps(v: Value, at: &str, problems: &mut Vec<Problem>, depth: usize) -> Vec<Step> {
    let Value::Array(items) = v else {
        problems.push(problem(at, "steps must be a list"));
        return vec![];
    };
    let mut out = Vec::new();
    for (i, mut item) in items.into_iter().enumerate() {
        let here = format!("{at}[{i}]");
        // Branches are parsed on their own, so their problems carry their own paths.
        let mut branches = Vec::new();
        if let Value::Object(o) = &mut item
            && o.get("type").and_then(Value::as_str) == Some("condition")
        {
            for key in ["then", "else"] {
                if let Some(b) = o.remove(key) {
                    if depth + 1 >= MAX_DEPTH {
                        problems.push(problem(
                            format!("{here}.{key}"),
                            format!("conditions nest at most {MAX_DEPTH} deep"),
                        ));
                        continue;
                    }
                    branches.push((key, parse_steps(b, &format!("{here}.{key}"), problems, depth + 1)));
                }
            }
        }
        match serde_json::from_value::<Step>(item) {
            Ok(mut step) => {
                if let StepKind::Condition { then, otherwise, .. } = &mut step.kind {
                    for (key, steps) in branches {
                        match key {
                            "then" => *then = steps,
                            _ => *otherwise = steps,
                        }
                    }
                }
                out.push(step);
            }
            Err(e) => problems.push(problem(here, e.to_string())),
        }
    }
    out
}

/// Gives every step without an id one: its type, numbered from the second of a type on.
pub fn fill_ids(def: &mut Definition) {
    let mut taken: HashSet<String> = HashSet::new();
    Path::walk(&def.steps, &mut |_, s| {
        if !s.id.is_empty() {
            taken.insert(s.id.clone());
        }
    });
    fn fill(steps: &mut [Step], taken: &mut HashSet<String>) {
        for s in steps {
            if s.id.is_empty() {
                let base = s.kind.name();
                let mut n = 1;
                let mut id = base.to_string();
                while taken.contains(&id) {
                    n += 1;
                    id = format!("{base}_{n}");
                }
                taken.insert(id.clone());
                s.id = id;
            }
            if let StepKind::Condition { then, otherwise, .. } = &mut s.kind {
                fill(then, taken);
                fill(otherwise, taken);
            }
        }
    }
    fill(&mut def.steps, &mut taken);
}

/// Every problem of `def` for this team.
pub fn check(def: &Definition, team: &TeamFacts) -> Vec<Problem> {
    let mut out = Vec::new();
    let name = def.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        out.push(problem("name", format!("a name is 1 to {MAX_NAME} characters")));
    }
    for (i, s) in def.sources.iter().enumerate() {
        if !team.sources.contains(s) {
            out.push(problem(format!("sources[{i}]"), format!("source {s} does not exist in this team")));
        }
    }
    if def.steps.is_empty() {
        out.push(problem("steps", "a workflow needs at least one step"));
    }
    let mut count = 0;
    let mut ids: HashMap<String, String> = HashMap::new();
    Path::walk(&def.steps, &mut |path, s| {
        count += 1;
        let at = path.display_in_def();
        if !valid_id(&s.id) {
            out.push(problem(format!("{at}.id"), "a step id is 1 to 64 lowercase letters, digits or _"));
        } else if let Some(first) = ids.insert(s.id.clone(), at.clone()) {
            out.push(problem(format!("{at}.id"), format!("the id `{}` is already used at {first}", s.id)));
        }
    });
    if count > MAX_STEPS {
        out.push(problem("steps", format!("a workflow has at most {MAX_STEPS} steps")));
    }
    check_steps(&def.steps, &Path::root(), team, &mut HashSet::new(), &mut out);
    out
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks steps in order; `before` holds the ids of steps that surely ran before this point.
fn check_steps(steps: &[Step], parent: &Path, team: &TeamFacts, before: &mut HashSet<String>, out: &mut Vec<Problem>) {
    for (i, s) in steps.iter().enumerate() {
        let path = parent.child(i);
        let at = path.display_in_def();
        let tpl = |field: &str, src: &str, out: &mut Vec<Problem>| {
            if let Err(e) = template::check(src) {
                out.push(problem(format!("{at}.{field}"), e.to_string()));
            }
            for used in step_refs(src) {
                if !before.contains(&used) {
                    out.push(problem(
                        format!("{at}.{field}"),
                        format!("`steps.{used}` is not a step that has run by this point; it is unknown, later, or in another branch"),
                    ));
                }
            }
        };
        match &s.kind {
            StepKind::Filter { when } => cond_problems(when, &format!("{at}.when"), out),
            StepKind::Condition { when, then, otherwise } => {
                cond_problems(when, &format!("{at}.when"), out);
                if then.is_empty() && otherwise.is_empty() {
                    out.push(problem(
                        at.clone(),
                        "a condition needs steps in `then` or `else`; with neither it does nothing",
                    ));
                }
                let mut in_then = before.clone();
                check_steps(then, &path.branch(true), team, &mut in_then, out);
                let mut in_else = before.clone();
                check_steps(otherwise, &path.branch(false), team, &mut in_else, out);
                // After the condition, only steps both branches ran are sure to have run.
                for id in in_then.intersection(&in_else) {
                    before.insert(id.clone());
                }
            }
            StepKind::Template { template, per_platform } => {
                tpl("template", template, out);
                for (platform, src) in per_platform {
                    if herald_core::platforms::platform(platform).is_none() {
                        out.push(problem(
                            format!("{at}.per_platform.{platform}"),
                            format!("`{platform}` is not a platform"),
                        ));
                    }
                    tpl(&format!("per_platform.{platform}"), src, out);
                }
            }
            StepKind::AiRewrite(a) => {
                for (j, p) in a.platforms.iter().enumerate() {
                    if herald_core::platforms::platform(p).is_none() {
                        out.push(problem(format!("{at}.platforms[{j}]"), format!("`{p}` is not a platform")));
                    }
                }
                if a.max_length.is_some_and(|m| !(1..=10_000).contains(&m)) {
                    out.push(problem(format!("{at}.max_length"), "max_length is 1 to 10000"));
                }
                if a.instructions.as_ref().is_some_and(|i| i.chars().count() > 2000) {
                    out.push(problem(format!("{at}.instructions"), "instructions are at most 2000 characters"));
                }
                if let Some(input) = &a.input {
                    tpl("input", input, out);
                }
            }
            StepKind::Delay(d) => delay_problems(d, &at, team, out),
            StepKind::Approval(a) => {
                if a.users.is_empty() && a.role.is_none() {
                    out.push(problem(
                        at.clone(),
                        "an approval needs approvers: `users` (member ids) or `role` (owner, admin or editor)",
                    ));
                }
                for (j, u) in a.users.iter().enumerate() {
                    match team.members.get(u).map(String::as_str) {
                        None => out.push(problem(
                            format!("{at}.users[{j}]"),
                            format!("user {u} is not a member of this team"),
                        )),
                        Some("viewer") => out.push(problem(
                            format!("{at}.users[{j}]"),
                            format!("user {u} is a viewer, and viewers cannot approve; make them an editor first"),
                        )),
                        Some(_) => {}
                    }
                }
                if let Some(r) = &a.role
                    && !matches!(r.as_str(), "owner" | "admin" | "editor")
                {
                    out.push(problem(format!("{at}.role"), "role is owner, admin or editor (viewers cannot approve)"));
                }
                wait_problem(&a.timeout, &format!("{at}.timeout"), out);
                if let Some(m) = &a.message {
                    tpl("message", m, out);
                }
            }
            StepKind::Publish(p) => {
                if p.targets.is_empty() {
                    out.push(problem(format!("{at}.targets"), "a publish step needs at least one target"));
                }
                for (j, t) in p.targets.iter().enumerate() {
                    let tat = format!("{at}.targets[{j}]");
                    match (&t.connection, &t.platform) {
                        (Some(c), None) if !team.connections.contains_key(c) => out.push(problem(
                            format!("{tat}.connection"),
                            format!("connection {c} does not exist in this team"),
                        )),
                        (None, Some(p)) if herald_core::platforms::platform(p).is_none() => {
                            out.push(problem(format!("{tat}.platform"), format!("`{p}` is not a platform")))
                        }
                        (Some(_), None) | (None, Some(_)) => {}
                        _ => out.push(problem(tat.clone(), "a target names one `connection` or one `platform`")),
                    }
                    if let Some(text) = &t.text {
                        tpl(&format!("targets[{j}].text"), text, out);
                    }
                }
                for (field, src) in [("text", &p.text), ("link", &p.link)] {
                    if let Some(src) = src {
                        tpl(field, src, out);
                    }
                }
                for (j, m) in p.media.iter().enumerate() {
                    tpl(&format!("media[{j}]"), m, out);
                }
                match &p.schedule {
                    When::At(t) => tpl("schedule.at", t, out),
                    When::In(d) => wait_problem(d, &format!("{at}.schedule.in"), out),
                    When::Now | When::NextSlot => {}
                }
                if p.options.as_ref().is_some_and(|o| !o.is_object()) {
                    out.push(problem(format!("{at}.options"), "options must be a JSON object"));
                }
            }
            StepKind::Http(h) => {
                if !matches!(h.method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
                    out.push(problem(format!("{at}.method"), "method is GET, POST, PUT, PATCH or DELETE"));
                }
                tpl("url", &h.url, out);
                if !h.url.contains("{{") {
                    match url::Url::parse(&h.url) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                        _ => out.push(problem(format!("{at}.url"), "url must be an http(s) URL")),
                    }
                }
                for (k, v) in &h.headers {
                    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        out.push(problem(format!("{at}.headers"), format!("`{k}` is not a header name")));
                    }
                    tpl(&format!("headers.{k}"), v, out);
                }
                if let Some(b) = &h.body {
                    tpl("body", b, out);
                }
                if h.timeout_secs.is_some_and(|t| !(1..=60).contains(&t)) {
                    out.push(problem(format!("{at}.timeout_secs"), "timeout_secs is 1 to 60"));
                }
            }
        }
        if let Some(r) = &s.retry
            && (!(1..=20).contains(&r.max_attempts) || !(1..=3600).contains(&r.backoff_secs))
        {
            out.push(problem(format!("{at}.retry"), "max_attempts is 1 to 20 and backoff_secs 1 to 3600"));
        }
        before.insert(s.id.clone());
    }
}

fn cond_problems(c: &cond::Cond, at: &str, out: &mut Vec<Problem>) {
    for (p, m) in cond::check(c) {
        let path = if p.is_empty() { at.to_string() } else { format!("{at}.{p}") };
        out.push(problem(path, m));
    }
}

fn wait_problem(d: &str, at: &str, out: &mut Vec<Problem>) {
    match herald_core::time::parse_duration(d) {
        Ok(d) if d > MAX_WAIT => out.push(problem(at, "at most 90 days")),
        Ok(d) if d.is_zero() => out.push(problem(at, "must be longer than 0")),
        Ok(_) => {}
        Err(e) => out.push(problem(at, e)),
    }
}

fn delay_problems(d: &Delay, at: &str, team: &TeamFacts, out: &mut Vec<Problem>) {
    let kinds = [d.duration.is_some(), d.until_time.is_some() || d.weekday.is_some(), d.next_slot.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        out.push(problem(
            at,
            "a delay has one of: `for` (a duration), `until_time` and/or `weekday`, or `next_slot` (a connection)",
        ));
    }
    if let Some(f) = &d.duration {
        wait_problem(f, &format!("{at}.for"), out);
    }
    if let Some(t) = &d.until_time
        && crate::engine::parse_time_of_day(t).is_none()
    {
        out.push(problem(format!("{at}.until_time"), "until_time is HH:MM (24-hour)"));
    }
    if let Some(w) = &d.weekday
        && w.parse::<chrono::Weekday>().is_err()
    {
        out.push(problem(format!("{at}.weekday"), "weekday is monday … sunday"));
    }
    if let Some(tz) = &d.timezone
        && let Err(e) = herald_core::time::parse_timezone(tz)
    {
        out.push(problem(format!("{at}.timezone"), e));
    }
    if let Some(c) = d.next_slot
        && !team.connections.contains_key(&c)
    {
        out.push(problem(format!("{at}.next_slot"), format!("connection {c} does not exist in this team")));
    }
}

/// The step ids a template reads as `steps.<id>`.
fn step_refs(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("steps.") {
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let after = &rest[i + 6..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if before_ok && end > 0 {
            out.push(after[..end].to_string());
        }
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> (TeamFacts, Uuid, Uuid) {
        let conn = Uuid::now_v7();
        let source = Uuid::now_v7();
        let mut f = TeamFacts::default();
        f.connections.insert(conn, "mastodon".into());
        f.sources.insert(source);
        (f, conn, source)
    }

    fn paths(v: Value, f: &TeamFacts) -> Vec<String> {
        match parse(v) {
            Ok(mut d) => {
                fill_ids(&mut d);
                check(&d, f).into_iter().map(|p| p.path).collect()
            }
            Err(e) => e.details.unwrap()["problems"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["path"].as_str().unwrap().to_string())
                .collect(),
        }
    }

    #[test]
    fn a_good_workflow_passes_and_gets_ids() {
        let (f, conn, source) = facts();
        let mut d = parse(json!({
            "name": "AmpFlow", "sources": [source],
            "steps": [
                {"type": "filter", "when": {"field": "video.title", "op": "contains", "value": "x"}},
                {"type": "template", "template": "New video: {{video_title}} {{video_url}}"},
                {"type": "condition", "when": {"field": "video.shorts", "op": "eq", "value": true},
                 "then": [{"type": "template", "template": "short! {{ steps.template.text }}"}]},
                {"type": "publish", "targets": [{"connection": conn}, {"platform": "telegram"}]}
            ]
        }))
        .unwrap();
        fill_ids(&mut d);
        assert_eq!(check(&d, &f), vec![]);
        let ids: Vec<_> = d.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["filter", "template", "condition", "publish"]);
        let StepKind::Condition { then, .. } = &d.steps[2].kind else { panic!() };
        assert_eq!(then[0].id, "template_2");
    }

    #[test]
    fn problems_carry_their_paths() {
        let (f, _, _) = facts();
        let unknown = Uuid::now_v7();
        let got = paths(
            json!({
                "name": "x", "sources": [unknown],
                "steps": [
                    {"type": "template", "template": "{{ steps.later.text }} {% if %}"},
                    {"type": "publish", "id": "later", "targets": [{"connection": unknown}, {"platform": "myspace"}, {}]},
                    {"type": "approval", "timeout": "1h"},
                    {"type": "condition", "when": {"field": "a", "op": "eq", "value": 1}},
                    {"type": "delay", "for": "10m", "next_slot": unknown},
                ]
            }),
            &f,
        );
        for want in [
            "sources[0]",
            "steps[0].template",
            "steps[1].targets[0].connection",
            "steps[1].targets[1].platform",
            "steps[1].targets[2]",
            "steps[2]",
            "steps[3]",
            "steps[4]",
            "steps[4].next_slot",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want} in {got:?}");
        }
    }

    #[test]
    fn malformed_steps_are_named() {
        let (f, _, _) = facts();
        let got = paths(
            json!({"name": "x", "steps": [
                {"type": "template", "template": "ok"},
                {"type": "teleport"},
                {"type": "condition", "when": {"field": "a", "op": "eq", "value": 1}, "then": [{"type": "delay", "for": "1m", "bogus": 1}]}
            ]}),
            &f,
        );
        assert_eq!(got, ["steps[1]", "steps[2].then[0]"]);
    }

    #[test]
    fn a_reference_into_the_other_branch_is_unreachable() {
        let (f, _, _) = facts();
        let got = paths(
            json!({"name": "x", "steps": [
                {"type": "condition", "when": {"field": "a", "op": "eq", "value": 1},
                 "then": [{"type": "template", "id": "a", "template": "A"}],
                 "else": [{"type": "template", "id": "b", "template": "{{ steps.a.text }}"}]},
                {"type": "template", "template": "{{ steps.b.text }}"}
            ]}),
            &f,
        );
        assert_eq!(got, ["steps[0].else[0].template", "steps[1].template"]);
    }

    #[test]
    fn step_refs_are_found() {
        assert_eq!(step_refs("{{ steps.ai.variants.bluesky }} {{mysteps.x}} {{steps.b_2}}"), ["ai", "b_2"]);
    }
}

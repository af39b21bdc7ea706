//! `herald workflows apply|export|list|run|runs|approve|reject`: through a running server's API
//! (with an API key), or straight on the local database (as the operator, recorded as `cli`).
//!
//! `apply -f` works like `kubectl apply`: each YAML (or JSON) file is one workflow, matched by
//! name; a new one is created, a changed one gets a new version (the diff is printed), and an
//! unchanged one is left alone, so applying the same directory twice changes nothing.

use crate::Exit;
use crate::cli::{ApiTarget, WorkflowsCommand};
use crate::config::Config;
use crate::connections::{call, failed, print};
use crate::serve::{accounts_for, load_vault, media_store, net_for, open_database, workflows_for};
use anyhow::{Context, anyhow};
use herald_accounts::Principal;
use herald_http::Method;
use herald_workflows::{Decision, ManualRun, RunQuery, Workflows};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Where the calls go.
enum Api<'a> {
    Local(Workflows, Principal),
    Remote(&'a str, &'a ApiTarget),
}

fn to_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

impl Api<'_> {
    async fn list(&self) -> Result<Vec<Value>, Exit> {
        match self {
            Api::Local(w, p) => Ok(w.list(p).await.map_err(failed)?.into_iter().map(to_json).collect()),
            Api::Remote(s, t) => call(s, t, Method::GET, "/workflows", None).await,
        }
    }

    async fn create(&self, def: Value) -> Result<Value, Exit> {
        match self {
            Api::Local(w, p) => Ok(to_json(w.create(p, def).await.map_err(failed)?)),
            Api::Remote(s, t) => one(call(s, t, Method::POST, "/workflows", Some(def)).await?),
        }
    }

    async fn replace(&self, id: &str, def: Value) -> Result<Value, Exit> {
        match self {
            Api::Local(w, p) => {
                let id = id.parse().map_err(|_| Exit::Failure(anyhow!("bad workflow id {id}")))?;
                Ok(to_json(w.replace(p, id, def).await.map_err(failed)?.0))
            }
            Api::Remote(s, t) => one(call(s, t, Method::PUT, &format!("/workflows/{id}"), Some(def)).await?),
        }
    }

    async fn run(&self, id: uuid::Uuid, payload: Value, dry_run: bool) -> Result<Value, Exit> {
        match self {
            Api::Local(w, p) => match w.start_manual(p, id, ManualRun { payload, dry_run }).await.map_err(failed)? {
                Ok(run) => Ok(to_json(run)),
                Err(dry) => Ok(to_json(dry)),
            },
            Api::Remote(s, t) => {
                let body = json!({"payload": payload, "dry_run": dry_run});
                one(call(s, t, Method::POST, &format!("/workflows/{id}/run"), Some(body)).await?)
            }
        }
    }

    async fn runs(&self, workflow: Option<uuid::Uuid>, status: Option<String>) -> Result<Vec<Value>, Exit> {
        match self {
            Api::Local(w, p) => {
                let q = RunQuery { workflow, status, ..Default::default() };
                Ok(w.runs(p, &q).await.map_err(failed)?.runs.into_iter().map(to_json).collect())
            }
            Api::Remote(s, t) => {
                let mut path = "/runs?limit=200".to_string();
                if let Some(w) = workflow {
                    path.push_str(&format!("&workflow={w}"));
                }
                if let Some(st) = status {
                    path.push_str(&format!("&status={st}"));
                }
                let page = one(call(s, t, Method::GET, &path, None).await?)?;
                Ok(page["runs"].as_array().cloned().unwrap_or_default())
            }
        }
    }

    async fn decide(&self, id: uuid::Uuid, approve: bool, d: Decision) -> Result<Value, Exit> {
        match self {
            Api::Local(w, p) => Ok(to_json(w.decide(p, id, approve, d).await.map_err(failed)?)),
            Api::Remote(s, t) => {
                let verb = if approve { "approve" } else { "reject" };
                let body = json!({"text": d.text, "targets": d.targets, "comment": d.comment});
                one(call(s, t, Method::POST, &format!("/approvals/{id}/{verb}"), Some(body)).await?)
            }
        }
    }
}

fn one(mut v: Vec<Value>) -> Result<Value, Exit> {
    v.pop().ok_or_else(|| Exit::Failure(anyhow!("the server answered nothing")))
}

pub async fn run(command: WorkflowsCommand, target: ApiTarget, config: &Config) -> Result<(), Exit> {
    let mut db = None;
    let api = match &target.server {
        Some(server) => Api::Remote(server, &target),
        None => {
            let team = target.team.ok_or_else(|| {
                Exit::Config(
                    "name the team with --team <id> (or use --server with HERALD_API_KEY to go through the API)".into(),
                )
            })?;
            let d = open_database(config).await?;
            d.migrate().await?;
            let vault = load_vault(config)?;
            let accounts = accounts_for(config, d.clone(), vault.clone());
            let connections = herald_connections::Connections::new(accounts.clone(), net_for(config)?);
            let queue = herald_queue::Queue::new(d.clone());
            let posts = herald_posts::Posts::new(accounts, connections.clone(), queue, media_store(config).await?);
            let workflows = workflows_for(config, d.clone(), vault, posts, connections)?;
            db = Some(d);
            Api::Local(workflows, Principal::acting(None, team, herald_core::TeamRole::Owner, "cli"))
        }
    };
    let result = execute(command, &api, target.json).await;
    if let Some(d) = db {
        d.close().await;
    }
    result
}

async fn execute(command: WorkflowsCommand, api: &Api<'_>, json_out: bool) -> Result<(), Exit> {
    match command {
        WorkflowsCommand::Apply { file, dry_run } => apply(api, &file, dry_run).await,
        WorkflowsCommand::Export { name, out } => export(api, name.as_deref(), out.as_deref()).await,
        WorkflowsCommand::List => print(api.list().await?, json_out, workflow_line),
        WorkflowsCommand::Run { id, payload, dry_run } => {
            let payload: Value =
                serde_json::from_str(&payload).map_err(|e| Exit::Failure(anyhow!("--payload is not JSON ({e})")))?;
            let v = api.run(id, payload, dry_run).await?;
            print(vec![v], json_out || dry_run, run_line)
        }
        WorkflowsCommand::Runs { workflow, status } => print(api.runs(workflow, status).await?, json_out, run_line),
        WorkflowsCommand::Approve { id, text, comment } => {
            let d = Decision { text, comment, ..Default::default() };
            print(vec![api.decide(id, true, d).await?], json_out, approval_line)
        }
        WorkflowsCommand::Reject { id, comment } => {
            let d = Decision { comment, ..Default::default() };
            print(vec![api.decide(id, false, d).await?], json_out, approval_line)
        }
    }
}

fn s(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() })
}

fn workflow_line(v: &Value) -> String {
    format!(
        "{}  v{:<3} {:<6} \"{}\"  {} steps",
        s(&v["id"]),
        s(&v["version"]),
        if v["active"] == json!(true) { "active" } else { "paused" },
        s(&v["name"]),
        v["definition"]["steps"].as_array().map_or(0, Vec::len)
    )
}

fn run_line(v: &Value) -> String {
    let mut out = format!(
        "{}  {:<9} workflow {} v{}  {}",
        s(&v["id"]),
        s(&v["status"]),
        s(&v["workflow_id"]),
        s(&v["version"]),
        s(&v["created_at"])
    );
    if !v["error"].is_null() {
        out.push_str(&format!("\n    {} ({})", s(&v["error"]), s(&v["error_code"])));
    }
    out
}

fn approval_line(v: &Value) -> String {
    format!("{}  {}  run {}", s(&v["id"]), s(&v["status"]), s(&v["run_id"]))
}

/// The definition files under `path` (a file, or a directory's `*.yaml`, `*.yml` and `*.json`),
/// in name order.
fn files(path: &Path) -> Result<Vec<PathBuf>, Exit> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json")))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(Exit::Failure(anyhow!("{} holds no .yaml, .yml or .json files", path.display())));
    }
    Ok(out)
}

fn read_definition(path: &Path) -> Result<Value, Exit> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = if path.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_str(&text).map_err(|e| Exit::Failure(anyhow!("{}: not JSON ({e})", path.display())))?
    } else {
        serde_norway::from_str(&text).map_err(|e| Exit::Failure(anyhow!("{}: not YAML ({e})", path.display())))?
    };
    if v["name"].as_str().is_none_or(|n| n.trim().is_empty()) {
        return Err(Exit::Failure(anyhow!("{}: a workflow needs a `name`", path.display())));
    }
    Ok(v)
}

/// The definition as stored, for comparing with a file: ids filled in, defaults written out.
fn comparable(def: &Value) -> String {
    serde_norway::to_string(def).unwrap_or_default()
}

async fn apply(api: &Api<'_>, path: &Path, dry_run: bool) -> Result<(), Exit> {
    let existing = api.list().await?;
    let mut failures = 0;
    for file in files(path)? {
        let def = read_definition(&file)?;
        let name = def["name"].as_str().unwrap_or_default().trim().to_string();
        let current = existing.iter().find(|w| w["name"] == json!(name));
        let outcome = match current {
            None if dry_run => Ok(format!("would create {name}")),
            None => api.create(def).await.map(|v| format!("created {name} v{}", s(&v["version"]))),
            Some(cur) => {
                let id = s(&cur["id"]);
                let before = comparable(&cur["definition"]);
                if dry_run {
                    Ok(format!(
                        "{name}: compare with `apply` (a dry run cannot normalise the file)\n{}",
                        diff(&before, &comparable(&def))
                    ))
                } else {
                    match api.replace(&id, def).await {
                        Ok(v) if v["version"] == cur["version"] && v["active"] == cur["active"] => {
                            Ok(format!("unchanged {name} v{}", s(&v["version"])))
                        }
                        Ok(v) => Ok(format!(
                            "updated {name} v{} -> v{}\n{}",
                            s(&cur["version"]),
                            s(&v["version"]),
                            diff(&before, &comparable(&v["definition"]))
                        )),
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match outcome {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failures += 1;
                let why = match e {
                    Exit::Config(m) => m,
                    Exit::Failure(e) => format!("{e:#}"),
                };
                eprintln!("{}: {why}", file.display());
            }
        }
    }
    if failures > 0 {
        return Err(Exit::Failure(anyhow!("{failures} workflow file(s) were not applied")));
    }
    Ok(())
}

async fn export(api: &Api<'_>, name: Option<&str>, out: Option<&Path>) -> Result<(), Exit> {
    let all = api.list().await?;
    let chosen: Vec<&Value> = all.iter().filter(|w| name.is_none_or(|n| w["name"] == json!(n))).collect();
    if chosen.is_empty() {
        return Err(Exit::Failure(anyhow!("no workflow{}", name.map(|n| format!(" named {n}")).unwrap_or_default())));
    }
    for w in chosen {
        let yaml = comparable(&w["definition"]);
        match out {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let file = dir.join(format!("{}.yaml", slug(&s(&w["name"]))));
                std::fs::write(&file, yaml).with_context(|| format!("writing {}", file.display()))?;
                println!("{}", file.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

fn slug(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    s.trim_matches('-').to_lowercase()
}

/// A line diff (`-` removed, `+` added), by longest common subsequence; definitions are small.
fn diff(before: &str, after: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("  + {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("  - {}\n", a[i]));
            i += 1;
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_lines_only() {
        let d = diff("a: 1\nb: 2\nc: 3\n", "a: 1\nb: 5\nc: 3\nd: 4\n");
        assert_eq!(d, "  + b: 5\n  - b: 2\n  + d: 4");
        assert_eq!(diff("x\n", "x\n"), "");
        assert_eq!(slug("AmpFlow: new videos"), "ampflow--new-videos");
    }
}

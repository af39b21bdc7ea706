//! `herald sources add|list|poll|remove`: through a running server's API (with an API key), or
//! straight on the local database (as the operator, recorded as `cli` in the audit log).

use crate::Exit;
use crate::cli::{ApiTarget, SourcesCommand};
use crate::config::Config;
use crate::connections::{call, failed, print};
use crate::serve::{load_vault, open_database, sources_for};
use anyhow::anyhow;
use herald_accounts::Principal;
use herald_http::Method;
use herald_triggers::{NewSource, Settings};
use serde_json::{Value, json};

pub async fn run(command: SourcesCommand, target: ApiTarget, config: &Config) -> Result<(), Exit> {
    let views = match &target.server {
        Some(server) => remote(command, server, &target).await?,
        None => local(command, &target, config).await?,
    };
    print(views, target.json, line)
}

/// A source as a table row (id, kind, name, next run, events) with its last error; a poll
/// report as its outcome and counts.
fn line(v: &Value) -> String {
    let s = |v: &Value| {
        v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() })
    };
    if v.get("outcome").is_some() {
        let mut out = format!(
            "{}: {} items, {} new events, {} updated, {} remembered; next poll {}",
            s(&v["outcome"]),
            s(&v["items"]),
            s(&v["new_events"]),
            s(&v["updated"]),
            s(&v["remembered"]),
            s(&v["next_run_at"])
        );
        if let Some(e) = v["error"].as_object() {
            out.push_str(&format!("\n    error ({}): {}", s(&e["code"]), s(&e["message"])));
        }
        return out;
    }
    let status = &v["status"];
    let mut out = format!(
        "{}  {:<15} {:<6} \"{}\"  next {}  events {}",
        s(&v["id"]),
        s(&v["kind"]),
        if v["active"] == json!(true) { "active" } else { "paused" },
        s(&v["name"]),
        s(&status["next_run_at"]),
        s(&status["event_count"])
    );
    if let Some(w) = status["websub"].as_object() {
        out.push_str(&format!("\n    push: {} (lease until {})", s(&w["state"]), s(&w["lease_expires_at"])));
    }
    if let Some(e) = status["last_error"].as_object() {
        out.push_str(&format!("\n    last error ({}): {}", s(&e["code"]), s(&e["message"])));
    }
    if let Some(secret) = v["secret"].as_str() {
        out.push_str(&format!("\n    secret (shown once): {secret}\n    send to: {}", s(&v["hook_url"])));
    }
    out
}

fn parse_new(kind: &str, name: String, config: &str) -> Result<NewSource, Exit> {
    let kind = herald_triggers::Kind::parse(kind).ok_or_else(|| {
        Exit::Failure(anyhow!("--kind `{kind}` is not one of youtube_channel, feed, schedule, webhook, manual"))
    })?;
    let config: Settings = serde_json::from_str(config)
        .map_err(|e| Exit::Failure(anyhow!("--settings is not valid JSON for this kind ({e})")))?;
    Ok(NewSource { kind, name, config, active: true })
}

async fn local(command: SourcesCommand, target: &ApiTarget, config: &Config) -> Result<Vec<Value>, Exit> {
    let team = target.team.ok_or_else(|| {
        Exit::Config(
            "name the team with --team <id> (or use --server with HERALD_API_KEY to go through the API)".into(),
        )
    })?;
    let db = open_database(config).await?;
    db.migrate().await?;
    let sources = sources_for(config, db.clone(), load_vault(config)?)?;
    let p = Principal::acting(None, team, herald_core::TeamRole::Owner, "cli");
    let result = match command {
        SourcesCommand::Add { kind, name, settings } => {
            let new = parse_new(&kind, name, &settings)?;
            sources.create(&p, new).await.map(|v| vec![to_json(v)])
        }
        SourcesCommand::List => sources.list(&p).await.map(|l| l.into_iter().map(to_json).collect()),
        SourcesCommand::Poll { id } => sources.poll_now(&p, id).await.map(|r| vec![to_json(r)]),
        SourcesCommand::Remove { id } => sources.delete(&p, id).await.map(|v| vec![to_json(v)]),
    };
    db.close().await;
    result.map_err(failed)
}

async fn remote(command: SourcesCommand, server: &str, target: &ApiTarget) -> Result<Vec<Value>, Exit> {
    let (method, path, body) = match command {
        SourcesCommand::Add { kind, name, settings } => {
            let new = parse_new(&kind, name, &settings)?;
            let body = json!({"kind": new.kind, "name": new.name, "config": new.config});
            (Method::POST, "/sources".to_string(), Some(body))
        }
        SourcesCommand::List => (Method::GET, "/sources".to_string(), None),
        SourcesCommand::Poll { id } => (Method::POST, format!("/sources/{id}/poll"), None),
        SourcesCommand::Remove { id } => (Method::DELETE, format!("/sources/{id}"), None),
    };
    call(server, target, method, &path, body).await
}

fn to_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

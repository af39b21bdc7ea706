//! `herald connections add|list|test|remove`: through a running server's API (with an API key),
//! or straight on the local database (as the operator, recorded as `cli` in the audit log).

use crate::Exit;
use crate::cli::{ApiTarget, ConnectionsCommand};
use crate::config::Config;
use crate::serve::{accounts_for, load_vault, net_for, open_database};
use anyhow::{Context, anyhow};
use herald_accounts::Actor;
use herald_connections::{ConnectionView, Connections, NewConnection};
use herald_http::{HttpClient, Method};
use serde_json::Value;
use std::io::{IsTerminal, Read};

pub async fn run(command: ConnectionsCommand, target: ApiTarget, config: &Config) -> Result<(), Exit> {
    let views = match &target.server {
        Some(server) => remote(command, server, &target).await?,
        None => local(command, &target, config).await?,
    };
    print(views, target.json, line)
}

/// Prints what a command returned: JSON (one object, or an array), or one table row each.
pub(crate) fn print(views: Vec<Value>, json: bool, line: fn(&Value) -> String) -> Result<(), Exit> {
    if json {
        let out = if views.len() == 1 { views[0].clone() } else { Value::Array(views) };
        println!("{}", serde_json::to_string_pretty(&out).context("printing JSON")?);
    } else {
        for v in &views {
            println!("{}", line(v));
        }
    }
    Ok(())
}

/// One connection as a table row: id, platform, status, account, name, and the last error.
fn line(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    let mut out = format!("{}  {:<9} {:<13} {}  \"{}\"", s("id"), s("platform"), s("status"), s("account"), s("name"));
    if let Some(e) = v["last_error"].as_object() {
        let class = e.get("class").and_then(Value::as_str).unwrap_or("");
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        out.push_str(&format!("\n    last error ({class}): {message}"));
    }
    out
}

fn read_credentials() -> Result<Value, Exit> {
    if std::io::stdin().is_terminal() {
        eprintln!("credentials as JSON (end with Ctrl-D):");
    }
    let mut raw = String::new();
    std::io::stdin().read_to_string(&mut raw).context("reading the credentials from stdin")?;
    let v: Value = serde_json::from_str(raw.trim()).map_err(|_| {
        Exit::Failure(anyhow!("the credentials on stdin are not JSON; pipe an object such as {{\"bot_token\":\"…\"}}"))
    })?;
    if !v.is_object() {
        return Err(Exit::Failure(anyhow!("the credentials must be a JSON object")));
    }
    Ok(v)
}

fn settings(raw: &str) -> Result<Value, Exit> {
    serde_json::from_str(raw).map_err(|e| Exit::Failure(anyhow!("--settings is not JSON ({e})")))
}

pub(crate) fn failed(e: herald_core::Error) -> Exit {
    let problems = e.details.as_ref().map(problems).unwrap_or_default();
    Exit::Failure(anyhow!("{} ({}){problems}", e.message, e.code))
}

/// A validation error's problems, one per line (`  steps[2].template: …`), from its
/// `details.problems`; empty when it has none.
fn problems(details: &Value) -> String {
    let mut out = String::new();
    for p in details["problems"].as_array().into_iter().flatten() {
        let message = p["message"].as_str().unwrap_or_default();
        match p["path"].as_str() {
            Some(path) if !path.is_empty() => out.push_str(&format!("\n  {path}: {message}")),
            _ => out.push_str(&format!("\n  {message}")),
        }
    }
    out
}

fn to_value(v: ConnectionView) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

async fn local(command: ConnectionsCommand, target: &ApiTarget, config: &Config) -> Result<Vec<Value>, Exit> {
    let team = target.team.ok_or_else(|| {
        Exit::Config(
            "name the team with --team <id> (or use --server with HERALD_API_KEY to go through the API)".into(),
        )
    })?;
    let db = open_database(config).await?;
    db.migrate().await?;
    let accounts = accounts_for(config, db.clone(), load_vault(config)?);
    let connections = Connections::new(accounts, net_for(config)?);
    let actor = Actor { label: "cli".into(), ..Actor::default() };
    let result = match command {
        ConnectionsCommand::Add { platform, name, settings: raw } => {
            let new = NewConnection { platform, name, credentials: read_credentials()?, settings: settings(&raw)? };
            connections.create_in(team, &actor, new).await.map(|v| vec![to_value(v)])
        }
        ConnectionsCommand::List => connections.list(team, None).await.map(|l| l.into_iter().map(to_value).collect()),
        ConnectionsCommand::Test { id } => connections.test_in(team, &actor, id).await.map(|v| vec![to_value(v)]),
        ConnectionsCommand::Remove { id } => connections.delete_in(team, &actor, id).await.map(|v| vec![to_value(v)]),
    };
    db.close().await;
    result.map_err(failed)
}

async fn remote(command: ConnectionsCommand, server: &str, target: &ApiTarget) -> Result<Vec<Value>, Exit> {
    let (method, path, body) = match command {
        ConnectionsCommand::Add { platform, name, settings: raw } => {
            let body = serde_json::json!({"platform": platform, "name": name, "credentials": read_credentials()?, "settings": settings(&raw)?});
            (Method::POST, "/connections".to_string(), Some(body))
        }
        ConnectionsCommand::List => (Method::GET, "/connections".to_string(), None),
        ConnectionsCommand::Test { id } => (Method::POST, format!("/connections/{id}/test"), None),
        ConnectionsCommand::Remove { id } => (Method::DELETE, format!("/connections/{id}"), None),
    };
    call(server, target, method, &path, body).await
}

/// One API call to a running server with the target's key; an array answer becomes its items.
pub(crate) async fn call(
    server: &str,
    target: &ApiTarget,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Vec<Value>, Exit> {
    let key = target.api_key.as_deref().ok_or_else(|| {
        Exit::Config("--server needs an API key in HERALD_API_KEY (create one with `herald token create`)".into())
    })?;
    let base = format!("{}/api/v1", server.trim_end_matches('/'));
    let http = HttpClient::trusted().map_err(|e| Exit::Failure(e.into()))?;
    let mut request = http.request(method, &format!("{base}{path}")).bearer_auth(key);
    if let Some(b) = &body {
        request = request.json(b);
    }
    let response =
        request.send().await.map_err(|e| Exit::Failure(anyhow!("cannot reach {server}: {}", e.without_url())))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let code = v["error"]["code"].as_str().unwrap_or("http_error");
        let message = v["error"]["message"].as_str().unwrap_or(text.as_str());
        let problems = problems(&v["error"]["details"]);
        return Err(Exit::Failure(anyhow!("{message} ({code}, HTTP {}){problems}", status.as_u16())));
    }
    Ok(match v {
        Value::Array(items) => items,
        other => vec![other],
    })
}

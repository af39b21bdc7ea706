//! Operator commands for accounts and secrets: `herald user …`, `herald token …`,
//! `herald secrets …`. They open the database directly, like `herald migrate`.

use crate::Exit;
use crate::cli::{SecretsCommand, TokenCommand, UserCommand};
use crate::config::{Config, ConfigError};
use crate::serve::{accounts_for, load_vault, open_database};
use anyhow::{Context, anyhow};
use herald_accounts::{Accounts, Actor};
use herald_core::TeamRole;
use herald_vault::{KeyFile, MasterKey};
use std::io::{BufRead, IsTerminal};

async fn open(config: &Config) -> Result<Accounts, Exit> {
    let db = open_database(config).await?;
    db.migrate().await?;
    let vault = load_vault(config)?;
    Ok(accounts_for(config, db, vault))
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        if first != again {
            return Err(anyhow!("the passwords differ"));
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn user_error(e: herald_core::Error) -> Exit {
    Exit::Failure(anyhow!("{} ({})", e.message, e.code))
}

pub async fn user(command: UserCommand, config: &Config) -> Result<(), Exit> {
    let accounts = open(config).await?;
    let result = match command {
        UserCommand::Create { email, name, admin } => {
            let password = read_password()?;
            let name = name.unwrap_or_else(|| email.split('@').next().unwrap_or("owner").to_string());
            let mut tx = accounts.db().begin().await.map_err(|e| Exit::Failure(e.into()))?;
            let (user, team) =
                accounts.create_user(&mut tx, &email, &name, &password, admin).await.map_err(user_error)?;
            herald_accounts::audit::record(
                &mut tx,
                &Actor::system(),
                herald_accounts::audit::Event::new(Some(team), "user.created").target("user", user.id),
            )
            .await
            .map_err(user_error)?;
            tx.commit().await.map_err(|e| Exit::Failure(e.into()))?;
            println!(
                "created user {} ({}) with team {team}{}",
                user.email,
                user.id,
                if admin { ", instance admin" } else { "" }
            );
            Ok(())
        }
        UserCommand::ResetLink { email } => match accounts.issue_reset_token(&email).await.map_err(user_error)? {
            Some((_, token)) => {
                println!("{}", accounts.link(&format!("/reset-password?token={token}")));
                println!(
                    "# valid for 1 hour, once; or POST /api/v1/password-reset/complete {{\"token\",\"new_password\"}}"
                );
                Ok(())
            }
            None => Err(Exit::Failure(anyhow!("no active user has the email {email}"))),
        },
        UserCommand::Disable { email } => set_disabled(&accounts, &email, true).await,
        UserCommand::Enable { email } => set_disabled(&accounts, &email, false).await,
    };
    accounts.db().close().await;
    result
}

async fn set_disabled(accounts: &Accounts, email: &str, disabled: bool) -> Result<(), Exit> {
    let user = accounts
        .user_by_email(email)
        .await
        .map_err(user_error)?
        .ok_or_else(|| Exit::Failure(anyhow!("no user has the email {email}")))?;
    accounts.set_disabled(user.id, disabled).await.map_err(user_error)?;
    println!("{} {}", user.email, if disabled { "disabled; every session ended" } else { "enabled" });
    Ok(())
}

pub async fn token(command: TokenCommand, config: &Config) -> Result<(), Exit> {
    let TokenCommand::Create { team, role, name, expires_in } = command;
    let role = TeamRole::parse(&role)
        .filter(|r| *r != TeamRole::Owner)
        .ok_or_else(|| Exit::Config(format!("--role: `{role}` is not a key role; use admin, editor or viewer")))?;
    let expires_at = expires_in
        .map(|s| herald_core::time::parse_duration(&s).map_err(|e| Exit::Config(format!("--expires-in: {e}"))))
        .transpose()?
        .map(|d| chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
    let accounts = open(config).await?;
    let created = accounts.insert_api_key(team, &name, role, expires_at, &Actor::system()).await.map_err(user_error);
    accounts.db().close().await;
    let created = created?;
    println!("{}", created.key);
    eprintln!("# API key {} ({}, role {}) for team {team}; shown once", created.api_key.id, created.api_key.name, role);
    Ok(())
}

pub async fn secrets(command: SecretsCommand, config: &Config) -> Result<(), Exit> {
    let file = KeyFile::at(config.data_dir.join(crate::serve::KEY_FILE));
    let env_keys = config.secret_key.is_some();
    match command {
        SecretsCommand::Rotate { resume } => {
            if !resume && !env_keys {
                let mut keys =
                    if file.exists() { file.read().map_err(|e| ConfigError(e.to_string()))? } else { Vec::new() };
                let fresh = MasterKey::generate();
                keys.insert(0, fresh.clone());
                file.write(&keys).map_err(|e| Exit::Failure(e.into()))?;
                println!(
                    "added key {} to {} (active from now on; older keys still open old secrets)",
                    fresh.id(),
                    file.path().display()
                );
            } else if env_keys && !resume {
                println!(
                    "keys come from HERALD_SECRET_KEY: the first one ({}) is active; re-encrypting under it",
                    load_vault(config)?.active_id()
                );
            }
            let accounts = open(config).await?;
            let report = accounts
                .rewrap_secrets(|r| eprintln!("… {} re-encrypted, {} failed", r.rewrapped, r.failed.len()))
                .await
                .map_err(user_error)?;
            let by_key = accounts.secrets_by_key().await.map_err(user_error)?;
            accounts.db().close().await;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"report": report, "secrets_by_key": by_key}))
                    .context("json")?
            );
            if report.failed.is_empty() {
                println!("# done. Restart or reload every node, then `herald secrets retire` drops the old keys");
                Ok(())
            } else {
                Err(Exit::Failure(anyhow!(
                    "{} secrets could not be re-encrypted (listed above); fix them and run `herald secrets rotate --resume`",
                    report.failed.len()
                )))
            }
        }
        SecretsCommand::Retire => {
            if env_keys {
                return Err(Exit::Config("keys come from HERALD_SECRET_KEY; remove old keys from it yourself once `herald secrets status` shows them unused".into()));
            }
            let accounts = open(config).await?;
            let by_key = accounts.secrets_by_key().await.map_err(user_error)?;
            accounts.db().close().await;
            let keys = file.read().map_err(|e| ConfigError(e.to_string()))?;
            let (keep, drop): (Vec<_>, Vec<_>) =
                keys.into_iter().enumerate().partition(|(i, k)| *i == 0 || by_key.contains_key(&k.id()));
            if drop.is_empty() {
                println!("no key to retire");
                return Ok(());
            }
            let keep: Vec<MasterKey> = keep.into_iter().map(|(_, k)| k).collect();
            file.write(&keep).map_err(|e| Exit::Failure(e.into()))?;
            for (_, k) in drop {
                println!("retired key {}", k.id());
            }
            Ok(())
        }
        SecretsCommand::Status => {
            let accounts = open(config).await?;
            let by_key = accounts.secrets_by_key().await.map_err(user_error)?;
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"active_key": accounts.vault().active_id(), "keys": accounts.vault().key_ids(), "secrets_by_key": by_key})).context("json")?);
            accounts.db().close().await;
            Ok(())
        }
    }
}

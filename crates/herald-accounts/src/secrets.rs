//! Re-encrypting stored secrets under the active master key (`herald secrets rotate`). Every
//! column that holds a sealed secret is listed in [`SECRET_COLUMNS`]; later tables add theirs.
//! The rewrap is idempotent and resumable: it only touches rows not yet under the active key,
//! commits in batches, and swaps each value with a compare-and-set so a concurrent write wins.

use crate::service::{Accounts, store, store_err};
use herald_core::Error;
use herald_store::{exec, on_read};
use uuid::Uuid;

/// A column holding sealed secrets: its table, the column, and the column naming the owning team
/// (`None` for per-user secrets). The associated data is `binding(table, column, team, id)`.
#[derive(Debug, Clone, Copy)]
pub struct SecretColumn {
    pub table: &'static str,
    pub column: &'static str,
    pub team_column: Option<&'static str>,
}

pub const SECRET_COLUMNS: &[SecretColumn] = &[
    SecretColumn { table: "users", column: "totp_secret", team_column: None },
    SecretColumn { table: "connections", column: "credentials", team_column: Some("team_id") },
    SecretColumn { table: "event_endpoints", column: "secret", team_column: Some("team_id") },
];

/// What a rotation did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RotateReport {
    pub active_key: String,
    pub rewrapped: u64,
    pub already_current: u64,
    pub failed: Vec<RotateFailure>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RotateFailure {
    pub table: &'static str,
    pub column: &'static str,
    pub id: Uuid,
    pub reason: String,
}

const BATCH: i64 = 200;

impl Accounts {
    /// How many sealed values each key id seals, across every secret column.
    pub async fn secrets_by_key(&self) -> Result<std::collections::BTreeMap<String, u64>, Error> {
        let mut out = std::collections::BTreeMap::new();
        for col in SECRET_COLUMNS {
            let sql = format!("SELECT {c} FROM {t} WHERE {c} IS NOT NULL", c = col.column, t = col.table);
            let values: Vec<String> =
                on_read!(self.db, c => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(c).await)
                    .map_err(store)?;
            for v in values {
                let kid = herald_vault::key_id_of(&v).unwrap_or("malformed").to_string();
                *out.entry(kid).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    /// Re-seals every secret not under the active key; `progress` hears after each batch.
    pub async fn rewrap_secrets(&self, mut progress: impl FnMut(&RotateReport)) -> Result<RotateReport, Error> {
        let active = self.vault.active_id();
        let mut report = RotateReport { active_key: active.clone(), ..RotateReport::default() };
        let current_prefix = format!("hv1.{active}.%");
        for col in SECRET_COLUMNS {
            let team = col.team_column.unwrap_or("NULL");
            let select = format!(
                "SELECT id, {team} AS team, {c} AS sealed FROM {t} WHERE {c} IS NOT NULL AND {c} NOT LIKE $1 AND ($2 IS NULL OR id > $2) \
                 ORDER BY id LIMIT $3",
                c = col.column,
                t = col.table
            );
            let update = format!("UPDATE {t} SET {c} = $3 WHERE id = $1 AND {c} = $2", c = col.column, t = col.table);
            let mut after: Option<Uuid> = None;
            loop {
                let rows: Vec<(Uuid, Option<Uuid>, String)> =
                    on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()))
                    .bind(&current_prefix).bind(after).bind(BATCH).fetch_all(c).await)
                    .map_err(store)?;
                let Some(last) = rows.last() else { break };
                after = Some(last.0);
                let mut tx = self.db.begin().await.map_err(store_err)?;
                for (id, team, sealed) in rows {
                    let aad = herald_vault::binding(
                        col.table,
                        col.column,
                        team.as_ref().map(|t| t as &dyn std::fmt::Display),
                        &id,
                    );
                    match self.vault.open(&sealed, &aad) {
                        Ok(secret) => {
                            let fresh = self.vault.seal(secret.expose(), &aad);
                            let done =
                                exec!(tx, sqlx::AssertSqlSafe(update.as_str()), id, &sealed, &fresh).map_err(store)?;
                            if done == 1 { report.rewrapped += 1 } else { report.already_current += 1 }
                        }
                        Err(e) => report.failed.push(RotateFailure {
                            table: col.table,
                            column: col.column,
                            id,
                            reason: e.to_string(),
                        }),
                    }
                }
                tx.commit().await.map_err(store_err)?;
                progress(&report);
            }
        }
        Ok(report)
    }
}

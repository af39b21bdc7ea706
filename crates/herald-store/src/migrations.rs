//! Each backend's migrations, embedded in the binary. Files live in `migrations/<backend>/` and
//! are named `NNNN_description.sql`; add new ones to the lists below, never edit applied ones.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};
use std::borrow::Cow;

macro_rules! migrations {
    ($dir:literal: $($version:literal => $file:literal),* $(,)?) => {
        vec![$(migration($version, $file, include_str!(concat!("../migrations/", $dir, "/", $file, ".sql")))),*]
    };
}

fn migration(version: i64, name: &'static str, sql: &'static str) -> Migration {
    Migration::new(version, Cow::Borrowed(name), MigrationType::Simple, AssertSqlSafe(sql).into_sql_str(), false)
}

fn migrator(migrations: Vec<Migration>) -> Migrator {
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

pub(crate) fn sqlite() -> Migrator {
    migrator(
        migrations!("sqlite": 1 => "0001_queue", 2 => "0002_accounts", 3 => "0003_connections", 4 => "0004_posts", 5 => "0005_media", 6 => "0006_events", 7 => "0007_late_policy", 8 => "0008_stats", 9 => "0009_slots", 10 => "0010_notify_mail", 11 => "0011_sources", 12 => "0012_workflows", 13 => "0013_live_deliveries"),
    )
}

pub(crate) fn postgres() -> Migrator {
    migrator(
        migrations!("postgres": 1 => "0001_queue", 2 => "0002_accounts", 3 => "0003_connections", 4 => "0004_posts", 5 => "0005_media", 6 => "0006_events", 7 => "0007_late_policy", 8 => "0008_stats", 9 => "0009_slots", 10 => "0010_notify_mail", 11 => "0011_sources", 12 => "0012_workflows", 13 => "0013_live_deliveries", 14 => "0014_quota_check"),
    )
}

//! Test databases for the shared storage suite: a fresh SQLite file always, and a fresh
//! PostgreSQL database when `HERALD_TEST_POSTGRES_URL` is set. Each is dropped afterwards.
//!
//! In CI (`CI` set) a missing `HERALD_TEST_POSTGRES_URL` is an error, so PostgreSQL tests never
//! skip there; on a developer machine they skip and say why.

use crate::{DatabaseUrl, Db, StoreOptions};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Once;

pub const POSTGRES_ENV: &str = "HERALD_TEST_POSTGRES_URL";

/// A migrated database that exists only for one test.
pub struct TestDb {
    pub db: Db,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

/// The PostgreSQL server to create test databases on, if any.
pub fn postgres_url() -> Option<String> {
    static SKIP_NOTICE: Once = Once::new();
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{POSTGRES_ENV} is not set, and PostgreSQL tests must not skip in CI")
        }
        _ => {
            SKIP_NOTICE.call_once(|| {
                // Straight to stderr: libtest captures `eprintln!` of passing tests, and this
                // notice must be seen.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "note: PostgreSQL suite skipped: {POSTGRES_ENV} is not set (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
                );
            });
            None
        }
    }
}

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = scratch_dir("herald-test");
        let url = DatabaseUrl::sqlite(dir.join("herald.db"));
        let db = Db::connect(&url, &StoreOptions::default()).await.expect("open sqlite");
        db.migrate().await.expect("migrate sqlite");
        TestDb { db, cleanup: Cleanup::Sqlite(dir) }
    }

    /// A fresh database on the test PostgreSQL server, or `None` when none is configured.
    pub async fn postgres() -> Option<TestDb> {
        let admin_url = postgres_url()?;
        let (url, name) = create_postgres_database(&admin_url).await;
        let db = Db::connect(&DatabaseUrl::parse(&url).expect("postgres url"), &StoreOptions::default())
            .await
            .expect("connect to test postgres database");
        db.migrate().await.expect("migrate postgres");
        Some(TestDb { db, cleanup: Cleanup::Postgres { admin_url, name } })
    }

    /// The URL of this test database, for starting `herald` processes on it.
    pub fn url(&self) -> String {
        match self.db.url() {
            DatabaseUrl::Sqlite { path } => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres { url } => url.clone(),
        }
    }

    pub async fn destroy(self) {
        self.db.close().await;
        match self.cleanup {
            Cleanup::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin_url, name } => drop_postgres_database(&admin_url, &name).await,
        }
    }
}

/// Creates an empty database with a unique name; returns its URL and name.
pub async fn create_postgres_database(admin_url: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("connect to HERALD_TEST_POSTGRES_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    let mut url = url::Url::parse(admin_url).expect("HERALD_TEST_POSTGRES_URL parses");
    url.set_path(&name);
    (url.to_string(), name)
}

pub async fn drop_postgres_database(admin_url: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
    }
}

/// Runs `test` on a fresh SQLite database, then on a fresh PostgreSQL one when configured.
/// The databases are removed even when the test panics; the panic is then passed on.
pub async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut dbs = vec![TestDb::sqlite().await];
    dbs.extend(TestDb::postgres().await);
    for t in dbs {
        let backend = t.db.backend();
        let outcome = tokio::spawn(test(t.db.clone())).await;
        t.destroy().await;
        if let Err(e) = outcome {
            eprintln!("test failed on {}", backend.as_str());
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("test task on {} was cancelled", backend.as_str());
        }
    }
}

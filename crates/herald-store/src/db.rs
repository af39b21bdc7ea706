use crate::error::StoreError;
use crate::migrations;
use crate::tx::{Snapshot, Tx};
use crate::url::DatabaseUrl;
use crate::wakeups::Wakeups;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `IN …` over the [`Ids`](crate::Ids) bound as parameter `$n`, for `WHERE id {in_ids}`.
    pub fn in_ids(self, n: usize) -> String {
        match self {
            Backend::Sqlite => format!("IN (SELECT unhex(value) FROM jsonb_each(${n}))"),
            Backend::Postgres => format!("= ANY(${n})"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// A generated statement (a batch's `VALUES` rows, an `IN` list) written with its `$N`
    /// parameters in order, each once, in the form this backend binds fastest: anonymous `?` on
    /// SQLite (see [`anonymous_params`](crate::anonymous_params)), as written on PostgreSQL.
    /// Debug builds check the order; release builds keep a statement out of order as it is.
    pub fn sql(self, sql: String) -> String {
        match self {
            Backend::Postgres => sql,
            Backend::Sqlite => crate::anonymous_params(&sql).unwrap_or_else(|| {
                debug_assert!(false, "parameters not $1, $2, … in order: {sql}");
                sql
            }),
        }
    }
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections for reads (SQLite) or for everything (PostgreSQL).
    pub max_connections: u32,
    /// How long to wait for PostgreSQL at start-up before giving up.
    pub connect_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 10, connect_timeout: Duration::from_secs(5) }
    }
}

/// A PostgreSQL connection idle for longer than this is pinged before it is used again.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(5);

/// The pools behind a [`Db`]. SQLite has one writer at a time, so all writes share a single
/// connection and queue for it in process, instead of spinning on `SQLITE_BUSY`; reads use their
/// own pool and run beside the writer thanks to WAL.
#[derive(Clone)]
pub enum Pools {
    Sqlite { write: Writer, read: SqlitePool },
    Postgres(PgPool),
}

/// SQLite's single write connection, held by one [`Tx`](crate::Tx) at a time. Not a pool of
/// one: a pool tests every connection it takes back with a round trip to the connection's thread
/// and hands it on from a task of its own, and on the single writer that hand-off is time no
/// transaction can use (`herald bench workflows`, whose events each commit a few small
/// transactions).
///
/// Ordinary transactions queue for it through a door, one at a time, so a transaction someone is
/// waiting on ([`Db::begin_urgent`]) waits for at most the one holding the writer and the one
/// next in line, however long the queue of background work behind them.
#[derive(Clone)]
pub struct Writer {
    pub(crate) conn: Arc<tokio::sync::Mutex<WriterConn>>,
    pub(crate) door: Arc<tokio::sync::Mutex<()>>,
    pub(crate) usage: Arc<WriterUse>,
}

#[derive(Default)]
pub(crate) struct WriterUse {
    pub transactions: AtomicU64,
    pub held_ns: AtomicU64,
    pub waited_ns: AtomicU64,
    pub trips: AtomicU64,
    pub before_ns: AtomicU64,
    pub sent_ns: AtomicU64,
}

/// Totals since the database was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterStats {
    /// Write transactions that held the writer (committed, rolled back or dropped).
    pub transactions: u64,
    /// How long they held it, from getting it to their end.
    pub held: Duration,
    /// How long they waited for it, summed over all of them.
    pub waited: Duration,
    /// Their trips to the connection's thread: each statement whose result was read, and each
    /// send of deferred statements (with the `BEGIN` or the `COMMIT`). Each trip wakes two
    /// threads while the writer is held, so fewer per transaction means a shorter hold.
    pub trips: u64,
    /// Of `held`, how long from getting the writer to the first trip (work done while the
    /// writer was held but before SQLite had anything to do).
    pub before_first: Duration,
    /// Of `held`, how long the trips of deferred statements took, from sending to the answer.
    pub sent: Duration,
}

impl WriterStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &WriterStats) -> WriterStats {
        WriterStats {
            transactions: self.transactions.saturating_sub(earlier.transactions),
            held: self.held.saturating_sub(earlier.held),
            waited: self.waited.saturating_sub(earlier.waited),
            trips: self.trips.saturating_sub(earlier.trips),
            before_first: self.before_first.saturating_sub(earlier.before_first),
            sent: self.sent.saturating_sub(earlier.sent),
        }
    }
}

pub(crate) struct WriterConn {
    /// `None` once the database is closed.
    pub conn: Option<sqlx::SqliteConnection>,
    /// A transaction was begun and not ended: its `Tx` was dropped without a commit, and the
    /// rollback it started has not run. The next `begin` rolls it back first.
    pub open: bool,
}

/// A handle to Herald's database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    pools: Pools,
    url: DatabaseUrl,
    wakeups: Arc<Wakeups>,
}

impl Db {
    /// Opens the database the URL names. SQLite files are created if missing, in WAL mode.
    pub async fn connect(url: &DatabaseUrl, opts: &StoreOptions) -> Result<Db, StoreError> {
        let mut checkpoint_with = None;
        let pools = match url {
            DatabaseUrl::Sqlite { path } => {
                let base = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // NORMAL in WAL mode never corrupts and survives process crashes; only an
                    // OS crash or power cut can lose the last commits. FULL would cap Herald at
                    // the disk's fsync rate (hundreds of commits a second).
                    .synchronous(SqliteSynchronous::Normal)
                    // Several processes may share one file (tests, `herald migrate` beside a server).
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
                    .pragma("temp_store", "memory")
                    // A connection's thread hands rows over through a channel of this size and
                    // waits whenever it is full; with sqlx's 50, a claim or a batch read of
                    // hundreds of rows waits several times. (No change in throughput could be
                    // measured either way; it only spares those waits.)
                    .row_buffer_size(1024)
                    // Named, so a profile tells the read connections' threads from the writer's.
                    .thread_name(|n| format!("sqlite-reader-{n}"));
                let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
                checkpoint_with = Some(base.clone().thread_name(|_| "sqlite-checkpoint".into()));
                // The writer only checkpoints as a backstop (a WAL of 10,000 pages, ~40 MB): the
                // checkpointer task does it beside the writer, so commits never wait for it.
                let conn = sqlx::ConnectOptions::connect(
                    &base
                        .clone()
                        .pragma("wal_autocheckpoint", "10000")
                        .thread_name(|_| "sqlite-writer".into())
                        .statement_cache_capacity(WRITER_STATEMENTS),
                )
                .await
                .map_err(open_err)?;
                let write = Writer {
                    conn: Arc::new(tokio::sync::Mutex::new(WriterConn { conn: Some(conn), open: false })),
                    door: Arc::default(),
                    usage: Arc::default(),
                };
                let read = SqlitePoolOptions::new()
                    .max_connections(opts.max_connections.max(1))
                    .min_connections(0)
                    // A local file does not drop connections: checking one before each use would
                    // only cost a round trip to its thread.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(base.read_only(true))
                    .await
                    .map_err(open_err)?;
                Pools::Sqlite { write, read }
            }
            DatabaseUrl::Postgres { url: raw } => {
                let unreachable = |source| StoreError::Unreachable { url: url.redacted(), source };
                let options = PgConnectOptions::from_str(raw).map_err(unreachable)?;
                // One direct connection first: a pool would report only "timed out", hiding
                // "connection refused" or "password authentication failed".
                let probe = tokio::time::timeout(
                    opts.connect_timeout,
                    <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
                )
                .await
                .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
                .map_err(unreachable)?;
                let _ = sqlx::Connection::close(probe).await;
                let pool = PgPoolOptions::new()
                    .max_connections(opts.max_connections.max(2))
                    .acquire_timeout(opts.connect_timeout)
                    // sqlx pings every connection it hands out: a round trip to the server before
                    // each transaction and each read (about fifteen per workflow event). Only one
                    // that sat idle long enough for the server or a middlebox to have dropped it
                    // is checked; a broken one is closed and the next one taken.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > PING_IF_IDLE_FOR {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(options)
                    .await
                    .map_err(unreachable)?;
                Pools::Postgres(pool)
            }
        };
        let db = Db { inner: Arc::new(Inner { pools, url: url.clone(), wakeups: Arc::default() }) };
        if let Some(options) = checkpoint_with {
            spawn_checkpointer(&db, options);
        }
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        match self.inner.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    pub fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.inner.url
    }

    pub fn wakeups(&self) -> &Arc<Wakeups> {
        &self.inner.wakeups
    }

    /// Applies every pending migration. Safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.inner.pools {
            Pools::Sqlite { write, .. } => {
                let mut w = write.conn.lock().await;
                let conn = w.conn.as_mut().ok_or(sqlx::Error::PoolClosed)?;
                migrations::sqlite().run(conn).await?
            }
            Pools::Postgres(pool) => migrations::postgres().run(pool).await?,
        }
        Ok(())
    }

    /// True when the database answers and every migration this binary knows is applied.
    pub async fn is_ready(&self) -> bool {
        let latest = match self.backend() {
            Backend::Sqlite => migrations::sqlite(),
            Backend::Postgres => migrations::postgres(),
        }
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
        const Q: &str = "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success";
        let applied: Result<i64, sqlx::Error> = match &self.inner.pools {
            Pools::Sqlite { read, .. } => sqlx::query_scalar(Q).fetch_one(read).await,
            Pools::Postgres(pool) => sqlx::query_scalar(Q).fetch_one(pool).await,
        };
        matches!(applied, Ok(v) if v >= latest)
    }

    /// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`, so it holds the write lock
    /// from the start and never fails half-way with `SQLITE_BUSY` on upgrade.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Tx::begin(&self.inner.pools, self.inner.wakeups.clone(), false).await
    }

    /// A write transaction for work someone is waiting on (accepting an event): on SQLite it goes
    /// ahead of the ordinary transactions waiting for the writer. Otherwise as [`Db::begin`].
    pub async fn begin_urgent(&self) -> Result<Tx, StoreError> {
        Tx::begin(&self.inner.pools, self.inner.wakeups.clone(), true).await
    }

    /// How SQLite's writer was used so far (`None` on PostgreSQL, which has no single writer):
    /// the benches show it beside their throughput.
    pub fn writer_use(&self) -> Option<WriterStats> {
        let Pools::Sqlite { write, .. } = &self.inner.pools else { return None };
        let u = &write.usage;
        Some(WriterStats {
            transactions: u.transactions.load(Ordering::Relaxed),
            held: Duration::from_nanos(u.held_ns.load(Ordering::Relaxed)),
            waited: Duration::from_nanos(u.waited_ns.load(Ordering::Relaxed)),
            trips: u.trips.load(Ordering::Relaxed),
            before_first: Duration::from_nanos(u.before_ns.load(Ordering::Relaxed)),
            sent: Duration::from_nanos(u.sent_ns.load(Ordering::Relaxed)),
        })
    }

    /// Spawns work that holds SQLite's writer (a group commit's loop, a claim) onto a thread of its
    /// own, so that between its statements it waits only for SQLite and never in the run queue
    /// behind hundreds of tasks. On PostgreSQL, whose connections belong to the current runtime,
    /// it is `tokio::spawn`.
    pub fn spawn_writing<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.inner.pools {
            Pools::Sqlite { .. } => writing_runtime().spawn(work),
            Pools::Postgres(_) => tokio::spawn(work),
        }
    }

    /// Runs `work` as [`Db::spawn_writing`] does and waits for it. Cancelling the wait does not
    /// cancel the work.
    pub async fn writing<F>(&self, work: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.spawn_writing(work).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the writing runtime stopped: {e}"),
        }
    }

    /// Starts a read-only transaction whose reads all see one moment (see [`Snapshot`]).
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Snapshot::begin(&self.inner.pools).await
    }

    /// Closes every connection; used at shutdown.
    pub async fn close(&self) {
        match &self.inner.pools {
            Pools::Sqlite { write, read } => {
                read.close().await;
                // Leaves the WAL checkpointed and the -wal file small for the next start.
                let mut w = write.conn.lock().await;
                if let Some(mut conn) = w.conn.take() {
                    if w.open {
                        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                    }
                    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await;
                    let _ = sqlx::Connection::close(conn).await;
                }
            }
            Pools::Postgres(pool) => pool.close().await,
        }
    }
}

/// The runtime behind [`Db::spawn_writing`]: one thread, for the whole process.
fn writing_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for SQLite's writer");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("herald-writer".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("a thread for SQLite's writer");
        handle
    })
}

/// Prepared statements the writer keeps (sqlx's default is 100). Its batches are generated SQL
/// whose text varies with their size (`VALUES` rows, `IN` lists, deferred statements sent
/// together), so 100 were evicted and parsed again all the time: SQLite's parser was 11% of the
/// writer thread's samples. `herald bench workflows`: the writer thread's CPU per event was 8–12%
/// lower with 1,000, but peak RSS rose from 102 MB to 147–156 MB (big batch statements are big
/// programs); 250 keeps most of the gain (about 5% above 1,000's CPU) at 114 MB.
const WRITER_STATEMENTS: usize = 250;

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies committed WAL frames into the database file from a connection of its own, in PASSIVE
/// mode (never blocking readers or the writer). Left to SQLite, the committing connection does it
/// every 1,000 pages, inline: under load that is a copy and an fsync several times a second on the
/// single writer's path (`herald bench deliveries`: 2,600/s with it inline, 2,700–3,050/s with this
/// task, 3,900/s with no checkpoints at all, which no real server can afford). Ends when the last
/// handle to the database is dropped.
fn spawn_checkpointer(db: &Db, options: SqliteConnectOptions) {
    let alive = Arc::downgrade(&db.inner);
    tokio::spawn(async move {
        use sqlx::ConnectOptions;
        let mut conn = match options.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the WAL checkpoint connection; SQLite checkpoints on commit instead");
                return;
            }
        };
        loop {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            if alive.upgrade().is_none() {
                break;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
                tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
            }
        }
        let _ = sqlx::Connection::close(conn).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    /// Connections are not pinged each time they are handed out, yet one the server dropped while
    /// it sat idle is found out and replaced, not handed to a transaction to fail it.
    #[tokio::test]
    async fn a_postgres_connection_dropped_while_idle_is_replaced() {
        let Some(t) = TestDb::postgres().await else { return };
        let pid = || async {
            crate::on_read!(t.db, c => sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(c).await)
        };
        let before = pid().await.unwrap();
        // The server ends every connection of this database (a restart, an idle timeout, a proxy).
        let url = t.url();
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!ended.is_empty() && ended.iter().all(|e| *e), "the pool's connections were ended");
        let _ = sqlx::Connection::close(admin).await;
        tokio::time::sleep(PING_IF_IDLE_FOR + Duration::from_millis(300)).await;

        // Reads and a write transaction all find a live connection.
        let after = pid().await.expect("a read after the server dropped the idle connections");
        assert_ne!(after, before);
        let mut tx = t.db.begin().await.unwrap();
        let one: i32 = crate::on_tx!(tx, c => sqlx::query_scalar("SELECT 1").fetch_one(&mut *c).await).unwrap();
        tx.commit().await.unwrap();
        assert_eq!(one, 1);
        t.destroy().await;
    }
}

use crate::db::{Backend, Pools, Writer, WriterConn, WriterUse};
use crate::error::StoreError;
use crate::wakeups::Wakeups;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::OwnedMutexGuard;

/// A write transaction on either backend. Work done through it commits or rolls back as one;
/// dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    inner: Inner,
    notify: BTreeSet<String>,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
    wakeups: Arc<Wakeups>,
}

enum Inner {
    /// SQLite's write connection, in `BEGIN IMMEDIATE`.
    Writer(WriterTx),
    /// A read connection (a [`Snapshot`]).
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// The writer, held for one transaction. Dropped without [`WriterTx::end`], it rolls back on a
/// task that keeps the writer until then, so the next transaction starts clean.
struct WriterTx {
    guard: Option<OwnedMutexGuard<WriterConn>>,
    since: Instant,
    usage: Arc<WriterUse>,
}

impl WriterTx {
    async fn begin(writer: &Writer, urgent: bool) -> Result<WriterTx, StoreError> {
        let asked = Instant::now();
        let mut w = if urgent {
            writer.conn.clone().lock_owned().await
        } else {
            let _next_in_line = writer.door.lock().await;
            writer.conn.clone().lock_owned().await
        };
        let since = Instant::now();
        writer.usage.waited_ns.fetch_add((since - asked).as_nanos() as u64, Ordering::Relaxed);
        let open = std::mem::replace(&mut w.open, true); // from here, even if this future is dropped
        let conn = w.conn.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        if open {
            // The last one's rollback could not run (no runtime, cancelled, or it failed). An
            // error here means no transaction was open after all.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        }
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(WriterTx { guard: Some(w), since, usage: writer.usage.clone() })
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        let w = self.guard.as_mut().expect("a writer transaction holds the writer until it ends");
        w.conn.as_mut().expect("a closed writer begins no transaction")
    }

    /// COMMIT or ROLLBACK. If it fails the transaction may still be open; the next `begin` ends it.
    async fn end(mut self, statement: &'static str) -> Result<(), StoreError> {
        sqlx::query(statement).execute(self.conn()).await?;
        if let Some(w) = self.guard.as_mut() {
            w.open = false;
        }
        Ok(())
    }
}

impl Drop for WriterTx {
    fn drop(&mut self) {
        self.usage.transactions.fetch_add(1, Ordering::Relaxed);
        self.usage.held_ns.fetch_add(self.since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let Some(mut w) = self.guard.take() else { return };
        if !w.open {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(conn) = w.conn.as_mut()
                    && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok()
                {
                    w.open = false;
                }
            });
        }
    }
}

/// The connection inside a [`Tx`], for code that writes its SQL per backend.
pub enum TxConn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

impl Inner {
    fn conn(&mut self) -> TxConn<'_> {
        match self {
            Inner::Writer(w) => TxConn::Sqlite(w.conn()),
            Inner::Sqlite(tx) => TxConn::Sqlite(tx),
            Inner::Postgres(tx) => TxConn::Postgres(tx),
        }
    }
}

impl Tx {
    pub(crate) async fn begin(pools: &Pools, wakeups: Arc<Wakeups>, urgent: bool) -> Result<Tx, StoreError> {
        let inner = match pools {
            Pools::Sqlite { write, .. } => Inner::Writer(WriterTx::begin(write, urgent).await?),
            Pools::Postgres(pool) => Inner::Postgres(pool.begin().await?),
        };
        Ok(Tx { inner, notify: BTreeSet::new(), after_commit: Vec::new(), wakeups })
    }

    pub fn conn(&mut self) -> TxConn<'_> {
        self.inner.conn()
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Writer(_) | Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Rings `channel` once this transaction commits: in this process always, and on every node
    /// listening to the same PostgreSQL. Repeated calls for one channel ring once.
    pub fn notify(&mut self, channel: &str) {
        if !self.notify.contains(channel) {
            self.notify.insert(channel.to_string());
        }
    }

    /// Runs `f` after a successful commit (metrics, in-process signals). Never runs on rollback.
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        let Tx { inner, notify, after_commit, wakeups } = self;
        match inner {
            Inner::Writer(w) => w.end("COMMIT").await?,
            Inner::Sqlite(tx) => tx.commit().await?,
            Inner::Postgres(mut tx) => {
                // NOTIFY inside the transaction is delivered at commit, and not at all on rollback.
                for channel in &notify {
                    sqlx::query("SELECT pg_notify($1, '')").bind(channel).execute(&mut *tx).await?;
                }
                tx.commit().await?
            }
        }
        for channel in &notify {
            wakeups.ring(channel);
        }
        for f in after_commit {
            f();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.inner {
            Inner::Writer(w) => w.end("ROLLBACK").await?,
            Inner::Sqlite(tx) => tx.rollback().await?,
            Inner::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// A read-only transaction: every read through it sees the database as of one moment, so rows
/// read by separate statements agree with each other. On SQLite it is a deferred transaction on
/// a read connection (WAL keeps its snapshot from the first read to the end); on PostgreSQL it is
/// `REPEATABLE READ READ ONLY`. Dropping it ends it.
pub struct Snapshot {
    inner: Inner,
}

impl Snapshot {
    pub(crate) async fn begin(pools: &Pools) -> Result<Snapshot, StoreError> {
        let inner = match pools {
            Pools::Sqlite { read, .. } => Inner::Sqlite(read.begin().await?),
            Pools::Postgres(pool) => {
                Inner::Postgres(pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?)
            }
        };
        Ok(Snapshot { inner })
    }

    pub fn conn(&mut self) -> TxConn<'_> {
        self.inner.conn()
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::each_backend;
    use crate::{exec, on_read, on_tx};
    use std::time::Duration;

    #[tokio::test]
    async fn a_snapshot_does_not_see_what_commits_after_its_first_read() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE seen (n BIGINT NOT NULL)").unwrap();
            exec!(tx, "INSERT INTO seen (n) VALUES (1)").unwrap();
            tx.commit().await.unwrap();

            let count = "SELECT COUNT(*) FROM seen";
            let mut snap = db.snapshot().await.unwrap();
            let before: i64 = on_tx!(snap, c => sqlx::query_scalar(count).fetch_one(&mut *c).await).unwrap();
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO seen (n) VALUES (2)").unwrap();
            tx.commit().await.unwrap();
            let after: i64 = on_tx!(snap, c => sqlx::query_scalar(count).fetch_one(&mut *c).await).unwrap();
            let outside: i64 = on_read!(db, c => sqlx::query_scalar(count).fetch_one(c).await).unwrap();
            assert_eq!((before, after, outside), (1, 1, 2), "the snapshot keeps its moment; others see the new row");
            drop(snap);
        })
        .await;
    }

    #[tokio::test]
    async fn a_transaction_dropped_or_failed_leaves_nothing_and_the_next_one_starts_clean() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE kept (n BIGINT PRIMARY KEY)").unwrap();
            tx.commit().await.unwrap();
            let count = || async {
                on_read!(db, c => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM kept").fetch_one(c).await).unwrap()
            };

            // Dropped without a commit, then at once a new transaction (which waits for the rollback).
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (1)").unwrap();
            drop(tx);
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (2)").unwrap();
            tx.commit().await.unwrap();
            assert_eq!(count().await, 1, "the dropped insert is gone, the committed one stays");

            // A statement fails half-way: the caller gives up, and nothing of it stays.
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (3)").unwrap();
            assert!(exec!(tx, "INSERT INTO kept (n) VALUES (2)").is_err(), "a duplicate key fails");
            drop(tx);
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (4)").unwrap();
            tx.rollback().await.unwrap();
            assert_eq!(count().await, 1, "neither the failed transaction nor the rolled-back one left a row");

            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (5)").unwrap();
            tx.commit().await.unwrap();
            assert_eq!(count().await, 2);
        })
        .await;
    }

    #[tokio::test]
    async fn an_urgent_transaction_goes_ahead_of_the_queue_and_the_writer_counts_its_use() {
        let test = crate::testing::TestDb::sqlite().await;
        let db = test.db.clone();
        let before = db.writer_use().expect("SQLite has a writer");
        let mut tx = db.begin().await.unwrap();
        exec!(tx, "CREATE TABLE turns (n INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL)").unwrap();
        tx.commit().await.unwrap();

        // Hold the writer while four ordinary transactions queue for it, then one urgent one.
        let held = db.begin().await.unwrap();
        let mut waiting = Vec::new();
        for who in ["a", "b", "c", "d"] {
            let db = db.clone();
            waiting.push(tokio::spawn(async move {
                let mut tx = db.begin().await.unwrap();
                exec!(tx, "INSERT INTO turns (who) VALUES ($1)", who).unwrap();
                tx.commit().await.unwrap();
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let urgent = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin_urgent().await.unwrap();
                exec!(tx, "INSERT INTO turns (who) VALUES ($1)", "urgent").unwrap();
                tx.commit().await.unwrap();
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        held.rollback().await.unwrap();
        urgent.await.unwrap();
        for w in waiting {
            w.await.unwrap();
        }
        let order: Vec<String> =
            on_read!(db, c => sqlx::query_scalar("SELECT who FROM turns ORDER BY n").fetch_all(c).await).unwrap();
        // Only the one next in line when it came may go first; the rest keep their order.
        assert_eq!(order, ["a", "urgent", "b", "c", "d"]);

        let used = db.writer_use().unwrap().since(&before);
        assert_eq!(used.transactions, 7, "the table, the held one, four ordinary ones and the urgent one");
        assert!(used.held > Duration::from_millis(60), "the held transaction alone took 100 ms: {used:?}");
        assert!(used.waited >= used.held / 2, "five transactions waited behind it: {used:?}");
        test.destroy().await;
    }
}

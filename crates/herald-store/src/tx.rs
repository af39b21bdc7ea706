use crate::db::{Backend, Pools};
use crate::error::StoreError;
use crate::wakeups::Wakeups;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A write transaction on either backend. Work done through it commits or rolls back as one;
/// dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    inner: Inner,
    notify: BTreeSet<String>,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
    wakeups: Arc<Wakeups>,
}

enum Inner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// The connection inside a [`Tx`], for code that writes its SQL per backend.
pub enum TxConn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

impl Inner {
    fn conn(&mut self) -> TxConn<'_> {
        match self {
            Inner::Sqlite(tx) => TxConn::Sqlite(tx),
            Inner::Postgres(tx) => TxConn::Postgres(tx),
        }
    }
}

impl Tx {
    pub(crate) async fn begin(pools: &Pools, wakeups: Arc<Wakeups>) -> Result<Tx, StoreError> {
        let inner = match pools {
            Pools::Sqlite { write, .. } => Inner::Sqlite(write.begin_with("BEGIN IMMEDIATE").await?),
            Pools::Postgres(pool) => Inner::Postgres(pool.begin().await?),
        };
        Ok(Tx { inner, notify: BTreeSet::new(), after_commit: Vec::new(), wakeups })
    }

    pub fn conn(&mut self) -> TxConn<'_> {
        self.inner.conn()
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
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
}

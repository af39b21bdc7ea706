use crate::db::Pools;
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

impl Tx {
    pub(crate) async fn begin(pools: &Pools, wakeups: Arc<Wakeups>) -> Result<Tx, StoreError> {
        let inner = match pools {
            Pools::Sqlite { write, .. } => Inner::Sqlite(write.begin_with("BEGIN IMMEDIATE").await?),
            Pools::Postgres(pool) => Inner::Postgres(pool.begin().await?),
        };
        Ok(Tx { inner, notify: BTreeSet::new(), after_commit: Vec::new(), wakeups })
    }

    pub fn conn(&mut self) -> TxConn<'_> {
        match &mut self.inner {
            Inner::Sqlite(tx) => TxConn::Sqlite(tx),
            Inner::Postgres(tx) => TxConn::Postgres(tx),
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

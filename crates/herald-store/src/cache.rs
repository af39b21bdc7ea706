//! A short-lived cache for rows read on every event and changed rarely: a source's workflows, a
//! team's webhook endpoints.
//!
//! Each such read is a trip to a reader connection's thread (two thread wake-ups and a statement),
//! several per event, on a machine whose cores the single writer also needs. Kept here, a row is
//! read about once a second instead. A change committed through this process moves its topic's
//! count ([`Tx::changed`]), which puts every value read before it out of date at once; a change
//! from elsewhere (another node on the same PostgreSQL, the CLI on the same SQLite file) shows
//! within the time to live.

use crate::Db;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a row changed elsewhere may be seen as it was.
pub const TIME_TO_LIVE: Duration = Duration::from_secs(1);

/// Beyond this many keys the cache starts over, so many teams or sources cannot grow it unbounded.
const MAX_KEYS: usize = 10_000;

/// Values by key, each kept for the time to live after it was read, unless its topic changes in
/// this process first ([`Tx::changed`]). Clones share their values.
///
/// [`Tx::changed`]: crate::Tx::changed
pub struct ReadCache<K, V> {
    values: Arc<Mutex<HashMap<K, Kept<V>>>>,
    /// The topic's count of changes in this process (see [`crate::Wakeups::changes`]).
    changes: Arc<AtomicU64>,
    ttl: Duration,
}

struct Kept<V> {
    /// When its read began.
    at: Instant,
    /// The topic's count of changes when its read began.
    changes: u64,
    value: V,
}

impl<K, V> Clone for ReadCache<K, V> {
    fn clone(&self) -> Self {
        ReadCache { values: self.values.clone(), changes: self.changes.clone(), ttl: self.ttl }
    }
}

impl<K: Eq + Hash, V: Clone> ReadCache<K, V> {
    /// A cache of rows that transactions on `db` marked with `topic` change.
    pub fn new(db: &Db, topic: &str) -> Self {
        ReadCache::with_ttl(db, topic, TIME_TO_LIVE)
    }

    pub fn with_ttl(db: &Db, topic: &str, ttl: Duration) -> Self {
        ReadCache { values: Arc::default(), changes: db.wakeups().changes(topic), ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Kept<V>>> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value for `key`: the one kept, if its read began less than the time to live ago and
    /// no change to the topic committed since; else `load`ed, and kept. An error is passed on and
    /// nothing is kept.
    pub async fn get_or_load<E, F>(&self, key: K, load: F) -> Result<V, E>
    where
        F: Future<Output = Result<V, E>>,
    {
        // Read before the value: a change committing during the read moves it past this.
        let changes = self.changes.load(Ordering::SeqCst);
        if let Some(kept) = self.lock().get(&key)
            && kept.changes == changes
            && kept.at.elapsed() < self.ttl
        {
            return Ok(kept.value.clone());
        }
        let at = Instant::now();
        let value = load.await?;
        let mut values = self.lock();
        if values.len() >= MAX_KEYS {
            values.clear();
        }
        values.insert(key, Kept { at, changes, value: value.clone() });
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;
    use std::sync::atomic::AtomicU32;

    async fn counter(reads: &AtomicU32) -> Result<u32, ()> {
        Ok(reads.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[tokio::test]
    async fn a_value_is_read_once_within_its_time_to_live_and_again_after_a_committed_change_or_its_expiry() {
        let t = TestDb::sqlite().await;
        let cache: ReadCache<u32, u32> = ReadCache::with_ttl(&t.db, "things", Duration::from_millis(300));
        let other: ReadCache<u32, u32> = ReadCache::new(&t.db, "other things");
        let reads = AtomicU32::new(0);
        assert_eq!(cache.get_or_load(7, counter(&reads)).await, Ok(1));
        assert_eq!(cache.get_or_load(7, counter(&reads)).await, Ok(1), "kept");
        assert_eq!(cache.get_or_load(8, counter(&reads)).await, Ok(2), "another key is read");
        assert_eq!(other.get_or_load(7, counter(&reads)).await, Ok(3), "another topic keeps its own");

        let mut tx = t.db.begin().await.expect("begin");
        tx.changed("things");
        tx.commit().await.expect("commit");
        assert_eq!(cache.get_or_load(7, counter(&reads)).await, Ok(4), "read again after a change");
        assert_eq!(other.get_or_load(7, counter(&reads)).await, Ok(3), "a change to another topic leaves it");

        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(cache.get_or_load(7, counter(&reads)).await, Ok(5), "read again once it expired");

        // An error is passed on and not kept.
        let mut tx = t.db.begin().await.expect("begin");
        tx.changed("things");
        tx.commit().await.expect("commit");
        assert_eq!(cache.get_or_load(7, async { Err::<u32, _>(()) }).await, Err(()));
        assert_eq!(cache.get_or_load(7, counter(&reads)).await, Ok(6));
    }

    #[tokio::test]
    async fn a_read_racing_a_change_is_not_kept() {
        let t = TestDb::sqlite().await;
        let cache: ReadCache<u32, u32> = ReadCache::new(&t.db, "things");
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(1, async {
                        let _ = wait.await;
                        Ok::<_, ()>(100) // the row as it was before the change
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        let mut tx = t.db.begin().await.expect("begin");
        tx.changed("things");
        tx.commit().await.expect("commit"); // commits while the read is under way
        let _ = go.send(());
        assert_eq!(slow.await.expect("task"), Ok(100));
        assert_eq!(cache.get_or_load(1, async { Ok::<_, ()>(200) }).await, Ok(200), "the racing read was not kept");
    }

    #[tokio::test]
    async fn a_rolled_back_change_still_reads_again_but_changes_nothing_later() {
        let t = TestDb::sqlite().await;
        let cache: ReadCache<u32, u32> = ReadCache::new(&t.db, "things");
        let reads = AtomicU32::new(0);
        assert_eq!(cache.get_or_load(1, counter(&reads)).await, Ok(1));
        let mut tx = t.db.begin().await.expect("begin");
        tx.changed("things");
        tx.rollback().await.expect("rollback");
        assert_eq!(cache.get_or_load(1, counter(&reads)).await, Ok(2), "out of date from the change's start");
        assert_eq!(cache.get_or_load(1, counter(&reads)).await, Ok(2), "and kept again after its rollback");
    }
}

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// In-process wake-up signals by channel name. A committed [`crate::Tx`] that called
/// [`crate::Tx::notify`] rings its channels here; on PostgreSQL a listener also rings them when
/// another node commits.
pub struct Wakeups {
    /// This process's name in its PostgreSQL notifications, so its listener can tell its own
    /// (already rung at commit) from other nodes'.
    node: String,
    channels: Mutex<HashMap<String, Arc<Notify>>>,
    /// Counts of changes by topic, for [`crate::ReadCache`] (see [`crate::Tx::changed`]).
    changes: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// One value of each type other crates keep per database in this process (the job runner's
    /// hand-off lanes), reached from any [`crate::Tx`] without threading it through callers.
    locals: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Wakeups {
            node: uuid::Uuid::now_v7().simple().to_string(),
            channels: Mutex::default(),
            changes: Mutex::default(),
            locals: Mutex::default(),
        }
    }
}

impl Wakeups {
    /// The payload of this process's notifications (see [`crate::Tx::notify`]).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Rings `name` for a notification that came from PostgreSQL, unless this process sent it:
    /// its own commit rang already, and a second ring only makes its workers look again for
    /// jobs they have just taken.
    pub fn ring_from(&self, name: &str, payload: &str) {
        if payload != self.node {
            self.ring(name);
        }
    }

    /// The signal for one channel; await `notified()` on it to sleep until the next ring.
    pub fn channel(&self, name: &str) -> Arc<Notify> {
        let mut map = self.channels.lock().expect("wakeups lock");
        map.entry(name.to_string()).or_default().clone()
    }

    /// Wakes every task waiting on `name`, and the next one to wait if none is waiting now.
    pub fn ring(&self, name: &str) {
        let n = self.channel(name);
        n.notify_waiters();
        n.notify_one();
    }

    /// The count of changes to `topic` in this process: a kept value read before the count moved
    /// is out of date.
    pub fn changes(&self, topic: &str) -> Arc<AtomicU64> {
        let mut map = self.changes.lock().expect("wakeups lock");
        map.entry(topic.to_string()).or_default().clone()
    }

    /// This process's one `T` for this database, made on first use.
    pub fn local<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        let mut map = self.locals.lock().expect("wakeups lock");
        let any = map.entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(T::default())).clone();
        any.downcast::<T>().expect("kept under its own type id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    #[tokio::test]
    async fn a_notification_rings_unless_this_process_sent_it() {
        let w = Wakeups::default();
        let other = Wakeups::default();
        assert_ne!(w.node(), other.node(), "each process has a name of its own");
        let c = w.channel("jobs");
        w.ring_from("jobs", w.node());
        // A ring would have left a wake-up for the next waiter.
        assert!(timeout(Duration::from_millis(50), c.notified()).await.is_err(), "its own echo rang");
        w.ring_from("jobs", other.node());
        assert!(timeout(Duration::from_millis(50), c.notified()).await.is_ok(), "another node's did not ring");
    }
}

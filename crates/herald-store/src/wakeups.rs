use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// In-process wake-up signals by channel name. A committed [`crate::Tx`] that called
/// [`crate::Tx::notify`] rings its channels here; on PostgreSQL a listener also rings them when
/// another node commits.
#[derive(Default)]
pub struct Wakeups {
    channels: Mutex<HashMap<String, Arc<Notify>>>,
    /// Counts of changes by topic, for [`crate::ReadCache`] (see [`crate::Tx::changed`]).
    changes: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Wakeups {
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
}

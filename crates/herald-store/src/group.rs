//! Group commit: many callers' small writes in one transaction.
//!
//! SQLite has one writer, and a transaction holds it from `BEGIN` to `COMMIT`, idle between its
//! statements while its task waits its turn to run. Hundreds of callers each writing a little
//! (an event, a run's commit, a post) would queue one small transaction after another. Instead,
//! each hands its item to one task, which writes whatever has gathered since its last write in
//! one transaction of a few multi-row statements, then answers each caller. No caller is answered
//! before its item is committed. If the shared transaction fails, nothing of it was written, and
//! each item is written again on its own, so one item's problem is only its own answer.

use crate::Db;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};

/// What a group's write function returns: the items it was given back (to write alone if it
/// failed; it may keep those it answers with), and the answers, one per item in order.
pub type Written<I, O, E> = Pin<Box<dyn Future<Output = (Vec<I>, Result<Vec<O>, E>)> + Send>>;

type Reply<O, E> = oneshot::Sender<Result<O, E>>;

/// How one group writes.
pub struct GroupConfig<I, E> {
    /// The most items one transaction takes.
    pub max_items: usize,
    /// The most weight (say, rows) one transaction takes; an item that would go past it waits for
    /// the next one. Every item fits in a transaction of its own.
    pub max_weight: usize,
    pub weight: fn(&I) -> usize,
    /// The answer when the writing task is gone (the runtime is stopping).
    pub stopped: fn() -> E,
    /// Names the items in the log line of a failed group.
    pub what: &'static str,
}

/// The handle callers write through; the task ends when it is dropped.
pub struct Group<I, O, E> {
    queue: mpsc::UnboundedSender<(I, Reply<O, E>)>,
    stopped: fn() -> E,
}

impl<I, O, E> Group<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    /// Starts the writing task. `write` writes its items in one transaction.
    pub fn spawn<W>(config: GroupConfig<I, E>, write: W) -> Group<I, O, E>
    where
        W: Fn(Vec<I>) -> Written<I, O, E> + Send + Sync + 'static,
    {
        Self::start(config, write, |task| drop(tokio::spawn(task)))
    }

    /// As [`Group::spawn`], with the writing task on `db`'s writing thread
    /// ([`Db::spawn_writing`]).
    pub fn spawn_writing<W>(db: &Db, config: GroupConfig<I, E>, write: W) -> Group<I, O, E>
    where
        W: Fn(Vec<I>) -> Written<I, O, E> + Send + Sync + 'static,
    {
        Self::start(config, write, |task| drop(db.spawn_writing(task)))
    }

    fn start<W>(
        config: GroupConfig<I, E>,
        write: W,
        spawn: impl FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>),
    ) -> Group<I, O, E>
    where
        W: Fn(Vec<I>) -> Written<I, O, E> + Send + Sync + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        let stopped = config.stopped;
        spawn(Box::pin(write_loop(config, write, rx)));
        Group { queue, stopped }
    }

    /// Writes `item` with whatever else is waiting, and answers once it is committed.
    pub async fn write(&self, item: I) -> Result<O, E> {
        let (tx, rx) = oneshot::channel();
        if self.queue.send((item, tx)).is_err() {
            return Err((self.stopped)());
        }
        rx.await.unwrap_or_else(|_| Err((self.stopped)()))
    }
}

async fn write_loop<I, O, E, W>(config: GroupConfig<I, E>, write: W, mut rx: mpsc::UnboundedReceiver<(I, Reply<O, E>)>)
where
    E: std::fmt::Display,
    W: Fn(Vec<I>) -> Written<I, O, E>,
{
    let mut waiting: Option<(I, Reply<O, E>)> = None;
    loop {
        let first = match waiting.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut weight = (config.weight)(&first.0);
        let mut batch = vec![first];
        while batch.len() < config.max_items {
            match rx.try_recv() {
                Ok(next) if weight + (config.weight)(&next.0) <= config.max_weight => {
                    weight += (config.weight)(&next.0);
                    batch.push(next);
                }
                Ok(next) => {
                    waiting = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<I>, Vec<Reply<O, E>>) = batch.into_iter().unzip();
        let n = items.len();
        match write(items).await {
            (_, Ok(answers)) => {
                for (a, reply) in answers.into_iter().zip(replies) {
                    let _ = reply.send(Ok(a));
                }
            }
            (_, Err(e)) if n == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
            (items, Err(e)) => {
                tracing::warn!(error = %e, items = n, "writing {} together failed; writing them one by one", config.what);
                for (item, reply) in items.into_iter().zip(replies) {
                    let answer = match write(vec![item]).await {
                        (_, Ok(mut a)) => a.pop().ok_or_else(|| (config.stopped)()),
                        (_, Err(e)) => Err(e),
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn items_go_together_and_a_failed_group_is_written_one_by_one() {
        let calls = Arc::new(AtomicUsize::new(0));
        let config = GroupConfig {
            max_items: 100,
            max_weight: 100,
            weight: |_: &u32| 1,
            stopped: || "stopped".to_string(),
            what: "numbers",
        };
        let seen = calls.clone();
        // Doubles numbers; 13 fails whatever it is written with.
        let group: Arc<Group<u32, u32, String>> = Arc::new(Group::spawn(config, move |items: Vec<u32>| {
            seen.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                let answer = if items.contains(&13) {
                    Err(format!("13 is unlucky ({} items)", items.len()))
                } else {
                    Ok(items.iter().map(|n| n * 2).collect())
                };
                (items, answer)
            })
        }));
        // All twenty are queued before the writing task runs, so they go as one group first.
        let mut writes = tokio::task::JoinSet::new();
        for n in 0..20u32 {
            let group = group.clone();
            writes.spawn(async move { (n, group.write(n).await) });
        }
        let mut answers = Vec::new();
        while let Some(done) = writes.join_next().await {
            answers.push(done.unwrap());
        }
        answers.sort_by_key(|(n, _)| *n);
        for (n, answer) in &answers {
            match n {
                13 => assert_eq!(answer, &Err("13 is unlucky (1 items)".to_string())),
                n => assert_eq!(answer, &Ok(n * 2)),
            }
        }
        assert_eq!(calls.load(Ordering::Relaxed), 21, "one group of twenty, then each alone");

        // Written alone and together, a good group is one call.
        let (a, b) = tokio::join!(group.write(1), group.write(2));
        assert_eq!((a, b), (Ok(2), Ok(4)));
        assert_eq!(calls.load(Ordering::Relaxed), 22);
    }
}

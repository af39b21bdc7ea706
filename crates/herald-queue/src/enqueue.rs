use crate::backend::{postgres, sqlite};
use crate::handoff::{Lanes, Ticket};
use crate::job::{Enqueued, JobId, NewJob};
use crate::queue::{grant_tokens, take_one, tokens_wanted};
use crate::{QueueError, WAKE_CHANNEL, metrics};
use chrono::{DateTime, Utc};
use herald_store::{Backend, Tx, TxConn};

/// Adds a job inside the caller's transaction: it exists only if the transaction commits, and
/// workers are woken at commit (or, when this process works its queue, it is handed to a free
/// slot and starts at commit: see `handoff`). With a unique key, a live job holding it is
/// returned instead.
pub async fn enqueue(tx: &mut Tx, job: NewJob) -> Result<Enqueued, QueueError> {
    let id = job.id.unwrap_or_default();
    let now = Utc::now();
    let ticket = tickets(tx, std::slice::from_ref(&job), now).await?.pop().flatten();
    let inserted = match tx.conn().await? {
        TxConn::Sqlite(c) => sqlite::insert(c, id, &job, now, ticket.as_ref()).await?,
        TxConn::Postgres(c) => postgres::insert(c, id, &job, ticket.as_ref()).await?,
    };
    if !inserted {
        let key = job.unique_key.as_deref().unwrap_or_default();
        let existing = match tx.conn().await? {
            TxConn::Sqlite(c) => sqlite::live_id_for_key(c, key).await?,
            TxConn::Postgres(c) => postgres::live_id_for_key(c, key).await?,
        };
        // The conflicting job cannot have finished in between: it is locked by our insert attempt
        // (PostgreSQL) or we hold the only write lock (SQLite).
        return Ok(Enqueued::Existing(existing.unwrap_or(id)));
    }
    count_at_commit(tx, std::slice::from_ref(&job));
    match ticket {
        Some(t) => hand_at_commit(tx, vec![(t.job(id, &job), t)]),
        None => tx.notify(WAKE_CHANNEL),
    }
    Ok(Enqueued::New(id))
}

/// Adds many jobs in the caller's transaction, in one statement unless some carry unique keys.
pub async fn enqueue_many(tx: &mut Tx, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
    if jobs.iter().any(|j| j.unique_key.is_some()) {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(enqueue(tx, job).await?);
        }
        return Ok(out);
    }
    let now = Utc::now();
    let mut rows: Vec<(JobId, &NewJob, Option<Ticket>)>;
    // On SQLite the insert goes with the transaction's next statement (ids are made here).
    if tx.backend() == Backend::Sqlite {
        let tickets = tickets(tx, &jobs, now).await?;
        rows = jobs.iter().zip(tickets).map(|(j, t)| (j.id.unwrap_or_default(), j, t)).collect();
        sqlite::defer_insert_many(tx, &rows, now);
    } else {
        // PostgreSQL's insert takes the buckets' tokens itself, and answers which jobs got one.
        // A small batch carries the inserts deferred before it (a post's rows), a trip less
        // while it holds the buckets it takes from. A big one does not: it goes unprepared, and
        // planning it with the inserts in front took longer than the trip it saves
        // (`herald bench workflows --backend postgres`, ten posts of five deliveries at once).
        let lanes = tx.local::<Lanes>();
        rows = jobs.iter().map(|j| (j.id.unwrap_or_default(), j, lanes.reserve(j, now))).collect();
        let carried = postgres::prepared(rows.len()).then(|| tx.carry(&postgres::INSERT_MANY)).flatten();
        let TxConn::Postgres(c) = tx.conn().await? else { unreachable!("a PostgreSQL transaction") };
        let handed: std::collections::HashSet<uuid::Uuid> =
            postgres::insert_many(c, &rows, carried).await?.into_iter().collect();
        for (id, _, t) in rows.iter_mut().filter(|(_, _, t)| t.is_some()) {
            if !handed.contains(&id.0) {
                *t = None; // no token: it waits for a claim, and its slot is free again
            }
        }
    }
    let out = rows.iter().map(|(id, _, _)| Enqueued::New(*id)).collect();
    let handed: Vec<_> = rows.into_iter().filter_map(|(id, j, t)| t.map(|t| (t.job(id, j), t))).collect();
    count_at_commit(tx, &jobs);
    if handed.len() < jobs.len() {
        tx.notify(WAKE_CHANNEL);
    }
    if !handed.is_empty() {
        hand_at_commit(tx, handed);
    }
    Ok(out)
}

/// Which of `jobs` are handed to this node's runner: those due now for a queue it works, while
/// it has slots free, and, of those drawing on a rate bucket, as many as the bucket has tokens
/// (taken here, in the caller's transaction, as a claim would take them).
async fn tickets(tx: &mut Tx, jobs: &[NewJob], now: DateTime<Utc>) -> Result<Vec<Option<Ticket>>, QueueError> {
    let lanes = tx.local::<Lanes>();
    let mut out: Vec<Option<Ticket>> = jobs.iter().map(|j| lanes.reserve(j, now)).collect();
    let ticketed = jobs.iter().zip(&out).filter(|(_, t)| t.is_some());
    let want = tokens_wanted(ticketed.map(|(j, _)| j.bucket_key.as_deref()));
    if !want.is_empty() {
        let mut left = grant_tokens(tx, &want, now).await?;
        for (j, t) in jobs.iter().zip(out.iter_mut()).filter(|(_, t)| t.is_some()) {
            if !take_one(&mut left, j.bucket_key.as_deref()) {
                *t = None; // no token: it waits for a claim, and its slot is free again
            }
        }
    }
    Ok(out)
}

/// Counts the jobs once they commit. (Workers are woken only for jobs not handed over: a handed
/// job has its worker, and a wake-up would send the others to claim nothing.)
fn count_at_commit(tx: &mut Tx, jobs: &[NewJob]) {
    let mut counts: std::collections::HashMap<String, u64> = Default::default();
    for j in jobs {
        *counts.entry(j.kind.clone()).or_default() += 1;
    }
    tx.after_commit(move || counts.iter().for_each(|(k, n)| metrics::enqueued(k, *n)));
}

/// Starts the handed jobs when the transaction commits; dropped unstarted (freeing their slots)
/// when it does not.
fn hand_at_commit(tx: &mut Tx, handed: Vec<(crate::Job, Ticket)>) {
    tx.after_commit(move || {
        for (job, ticket) in handed {
            ticket.start(job);
        }
    });
}

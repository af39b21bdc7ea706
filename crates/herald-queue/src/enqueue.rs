use crate::backend::{postgres, sqlite};
use crate::job::{Enqueued, JobId, NewJob};
use crate::{QueueError, WAKE_CHANNEL, metrics};
use herald_store::{Backend, Tx, TxConn};

/// Adds a job inside the caller's transaction: it exists only if the transaction commits, and
/// workers are woken at commit. With a unique key, a live job holding it is returned instead.
pub async fn enqueue(tx: &mut Tx, job: NewJob) -> Result<Enqueued, QueueError> {
    let id = JobId::new();
    let inserted = match tx.conn().await? {
        TxConn::Sqlite(c) => sqlite::insert(c, id, &job, chrono::Utc::now()).await?,
        TxConn::Postgres(c) => postgres::insert(c, id, &job).await?,
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
    tx.notify(WAKE_CHANNEL);
    tx.after_commit(move || metrics::enqueued(&job.kind, 1));
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
    let with_ids: Vec<(JobId, &NewJob)> = jobs.iter().map(|j| (JobId::new(), j)).collect();
    // On SQLite the insert goes with the transaction's next statement (ids are made here).
    if tx.backend() == Backend::Sqlite {
        sqlite::defer_insert_many(tx, &with_ids, chrono::Utc::now());
    } else if let TxConn::Postgres(c) = tx.conn().await? {
        postgres::insert_many(c, &with_ids).await?;
    }
    let out = with_ids.iter().map(|(id, _)| Enqueued::New(*id)).collect();
    let mut counts: std::collections::HashMap<String, u64> = Default::default();
    for j in &jobs {
        *counts.entry(j.kind.clone()).or_default() += 1;
    }
    tx.notify(WAKE_CHANNEL);
    tx.after_commit(move || counts.iter().for_each(|(k, n)| metrics::enqueued(k, *n)));
    Ok(out)
}

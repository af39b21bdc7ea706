//! Writing new events, together.
//!
//! A manual event or an inbound webhook stores one event and enqueues its `source.event` job.
//! Each in a transaction of its own, a burst of them would queue one small commit after another
//! on the database's single writer (SQLite), the writer held idle between statements while each
//! caller's task waits its turn to run. Instead they hand their event to one task, which writes
//! whatever has gathered in one transaction of a few multi-row statements: the events, their
//! jobs, and each source's count. No event is answered before its transaction commits. If the
//! shared transaction fails, each event is written again on its own, so one event's problem is
//! only its own answer.

use crate::model::EventView;
use crate::store::{Sources, store};
use herald_core::Error;
use herald_queue::NewJob;
use herald_store::group::{Group, GroupConfig};
use herald_store::{Backend, Ts, Tx, TxConn, column};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The most events one shared transaction writes (seven values each; SQLite binds at most
/// 32,766 in a statement).
const MAX_EVENTS: usize = 500;

/// One event to store under (source, external id).
pub(crate) struct NewEventRow<'a> {
    pub team: Uuid,
    pub source: Uuid,
    pub kind: &'a str,
    pub external_id: &'a str,
    pub data: &'a Value,
}

/// Stores events in the caller's transaction, each once per (source, external id), and with
/// `dispatch` enqueues a `source.event` job for each one that is new. Answers, in order, the
/// stored event or `None` where the source already had it (or an earlier row of `rows` did).
pub(crate) async fn insert_events(
    tx: &mut Tx,
    rows: &[NewEventRow<'_>],
    dispatch: bool,
) -> Result<Vec<Option<EventView>>, Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let received_at = Ts::now();
    let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
    let stored: Vec<Uuid> = match tx.conn().await.map_err(store)? {
        // The rows as one JSON parameter: the statement's text is the same whatever their
        // number, so SQLite's writer compiles it once and keeps it.
        TxConn::Sqlite(c) => {
            #[derive(serde::Serialize)]
            struct Row<'a> {
                id: uuid::fmt::Simple,
                team: uuid::fmt::Simple,
                source: uuid::fmt::Simple,
                kind: &'a str,
                external_id: &'a str,
                data: String,
            }
            let input: Vec<Row<'_>> = ids
                .iter()
                .zip(rows)
                .map(|(id, r)| Row {
                    id: id.simple(),
                    team: r.team.simple(),
                    source: r.source.simple(),
                    kind: r.kind,
                    external_id: r.external_id,
                    data: r.data.to_string(),
                })
                .collect();
            // `WHERE true`: without a WHERE, SQLite would read `ON CONFLICT` as a join's `ON`.
            sqlx::query_scalar(
                "INSERT INTO events (id, team_id, source_id, kind, external_id, data, received_at) \
                 SELECT unhex(value ->> 'id'), unhex(value ->> 'team'), unhex(value ->> 'source'), value ->> 'kind', \
                        value ->> 'external_id', value ->> 'data', ?1 \
                 FROM jsonb_each(?2) WHERE true \
                 ON CONFLICT (source_id, external_id) DO NOTHING RETURNING id",
            )
            .bind(received_at)
            .bind(serde_json::to_string(&input).unwrap_or_default())
            .fetch_all(&mut *c)
            .await
        }
        // Arrays ([`herald_store::column`]): one statement text whatever the number of rows.
        TxConn::Postgres(c) => {
            let pairs: Vec<_> = ids.iter().zip(rows).collect();
            sqlx::query_scalar(
                "INSERT INTO events (id, team_id, source_id, kind, external_id, data, received_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], \
                   $7::timestamptz[]) \
                 ON CONFLICT (source_id, external_id) DO NOTHING RETURNING id",
            )
            .bind(column(&pairs, |(id, _)| **id))
            .bind(column(&pairs, |(_, r)| r.team))
            .bind(column(&pairs, |(_, r)| r.source))
            .bind(column(&pairs, |(_, r)| r.kind))
            .bind(column(&pairs, |(_, r)| r.external_id))
            .bind(column(&pairs, |(_, r)| r.data.to_string()))
            .bind(vec![received_at.0; pairs.len()])
            .fetch_all(&mut *c)
            .await
        }
    }
    .map_err(store)?;

    let out: Vec<Option<EventView>> = ids
        .iter()
        .zip(rows)
        .map(|(id, r)| {
            stored.contains(id).then(|| EventView {
                id: *id,
                source_id: r.source,
                kind: r.kind.to_string(),
                external_id: r.external_id.to_string(),
                data: r.data.clone(),
                received_at: received_at.0,
                updated_at: None,
            })
        })
        .collect();
    if dispatch {
        let jobs: Vec<NewJob> = out
            .iter()
            .zip(rows)
            .filter_map(|(e, r)| e.as_ref().map(|e| (e, r)))
            .map(|(e, r)| {
                NewJob::new(crate::dispatch::EVENT_JOB, json!({"event": e.id, "source": r.source, "team": r.team}))
            })
            .collect();
        if !jobs.is_empty() {
            herald_queue::enqueue_many(tx, jobs).await.map_err(Error::from)?;
        }
    }
    for e in out.iter().flatten() {
        metrics::counter!("herald_source_events_total", "kind" => e.kind.clone()).increment(1);
    }
    Ok(out)
}

/// An event waiting to be written by [`Intake`].
pub(crate) struct Incoming {
    pub team: Uuid,
    pub source: Uuid,
    pub kind: &'static str,
    pub external_id: String,
    pub data: Value,
    /// An inbound webhook: the source ran, and ran well, now.
    pub touch: bool,
}

impl Incoming {
    fn row(&self) -> NewEventRow<'_> {
        NewEventRow {
            team: self.team,
            source: self.source,
            kind: self.kind,
            external_id: &self.external_id,
            data: &self.data,
        }
    }
}

/// Writes events arriving at the same moment in one transaction: the stored event, or `None`
/// if the source already had one with its external id.
pub(crate) type Intake = Group<Incoming, Option<EventView>, Error>;

pub(crate) fn spawn(sources: Sources) -> Intake {
    let config = GroupConfig {
        max_items: MAX_EVENTS,
        max_weight: MAX_EVENTS,
        weight: |_| 1,
        stopped: || Error::new(herald_core::ErrorCode::Unavailable, "the server is stopping; send the event again"),
        what: "events",
    };
    Group::spawn_writing(&sources.db.clone(), config, move |items: Vec<Incoming>| {
        let sources = sources.clone();
        Box::pin(async move {
            let written = commit(&sources, &items).await;
            (items, written)
        })
    })
}

/// Writes `items` in a transaction of their own: the events, their jobs, and each source's count
/// (and, for webhooks, its last run).
async fn commit(sources: &Sources, items: &[Incoming]) -> Result<Vec<Option<EventView>>, Error> {
    // Someone waits on each event (a webhook's sender): ahead of background work.
    let mut tx = sources.db.begin_urgent().await?;
    let rows: Vec<NewEventRow<'_>> = items.iter().map(Incoming::row).collect();
    let out = insert_events(&mut tx, &rows, true).await?;
    // Per source: how many are new, and whether a webhook ran.
    let mut per_source: BTreeMap<Uuid, (i64, bool)> = BTreeMap::new();
    for (i, e) in items.iter().zip(&out) {
        let s = per_source.entry(i.source).or_default();
        s.0 += i64::from(e.is_some());
        s.1 |= i.touch;
    }
    for (source, (n, touched)) in per_source {
        crate::store::bump_count(&mut tx, source, n);
        if touched {
            crate::store::touch(&mut tx, source);
        }
    }
    if tx.backend() == Backend::Postgres {
        for (i, e) in items.iter().zip(&out) {
            if let Some(e) = e {
                sources.keep_recent(i.team, e);
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}

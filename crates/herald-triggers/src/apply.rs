//! Turning the items a poll or a push found into events: each item is stored once per source
//! under its dedupe key; the first poll only remembers (the baseline); an item seen before with
//! new words (a YouTube title edit) refreshes its event instead of making another.

use crate::feed::Item;
use crate::model::Settings;
use crate::store::{SourceRow, bump_count, insert_event, store};
use herald_core::Error;
use herald_store::{Ts, Tx, exec, on_tx, placeholders, value_rows};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

/// How the items arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// A poll; `baseline` on the first one, which triggers only `backfill` items.
    Poll { baseline: bool },
    /// A WebSub notification: only changed entries, never a baseline.
    Push,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    pub new_events: usize,
    pub updated: usize,
    pub remembered: usize,
}

/// What an item says, so an edit can be told from a repeat.
fn fingerprint(item: &Item) -> String {
    let mut h = Sha256::new();
    for part in [&item.title, &item.summary_text, &item.url] {
        h.update(part.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
    }
    if let Some(yt) = &item.youtube {
        h.update(yt.description.as_deref().unwrap_or("").as_bytes());
    }
    hex::encode(&h.finalize()[..12])
}

/// The event data for an item: the item itself, and for YouTube the `video` and `channel`
/// objects templates name (`video.title`, `channel.name`).
pub(crate) fn event_data(item: &Item) -> Value {
    let mut data = json!({ "item": item });
    if let Some(yt) = &item.youtube {
        data["video"] = json!({
            "id": yt.video_id,
            "title": item.title,
            "url": item.url,
            "description": yt.description,
            "published": item.published,
            "thumbnail": item.media.iter().find(|m| matches!(m.role, crate::feed::MediaRole::Thumbnail)).map(|m| &m.url),
            "views": yt.views,
            "shorts": yt.shorts,
        });
        data["channel"] = json!({
            "id": yt.channel_id,
            "name": yt.channel_name.clone().or_else(|| item.author.clone()),
            "url": yt.channel_id.as_ref().map(|c| format!("https://www.youtube.com/channel/{c}")),
        });
    }
    data
}

/// Applies `items` (newest first is best; they are sorted here by date when they carry one).
pub(crate) async fn apply(tx: &mut Tx, source: &SourceRow, mut items: Vec<Item>, mode: Mode) -> Result<Applied, Error> {
    let settings: Settings = source.settings();
    // Newest first, so caps and backfills keep the newest; undated items keep feed order.
    items.sort_by_key(|i| std::cmp::Reverse(i.published.or(i.updated)));
    let mut seen_keys = std::collections::HashSet::new();
    items.retain(|i| seen_keys.insert(i.dedupe_key()));
    let keys: Vec<String> = items.iter().map(Item::dedupe_key).collect();
    let known = known(tx, source.id, &keys).await?;
    let now = Ts::now();
    let mut out = Applied::default();
    let quota = match mode {
        Mode::Poll { baseline: true } => settings.backfill.unwrap_or(0) as usize,
        _ => settings.max_new_per_poll.map_or(usize::MAX, |n| n as usize),
    };
    // A push of a video published well before the source existed is an old video edited, not
    // an upload (platforms.md 1.8): remember it without an event.
    let old_cutoff = source.created_at.0 - chrono::TimeDelta::days(1);
    let mut fresh: Vec<(String, String, Option<Uuid>)> = Vec::new();
    for (item, key) in items.iter().zip(keys) {
        let print = fingerprint(item);
        if let Some((old_print, event)) = known.get(&key) {
            if *old_print != print {
                if let Some(event) = event {
                    exec!(
                        tx,
                        "UPDATE events SET data = $2, updated_at = $3 WHERE id = $1",
                        *event,
                        event_data(item).to_string(),
                        now
                    )
                    .map_err(store)?;
                }
                exec!(
                    tx,
                    "UPDATE source_items SET fingerprint = $3 WHERE source_id = $1 AND item_key = $2",
                    source.id,
                    &key,
                    &print
                )
                .map_err(store)?;
                out.updated += 1;
            }
            continue;
        }
        let old = mode == Mode::Push && item.published.is_some_and(|p| p < old_cutoff);
        let event = if !old && out.new_events < quota {
            insert_event(tx, source, "item.new", &key, &event_data(item), true).await?.map(|e| e.id)
        } else {
            None
        };
        match event {
            Some(_) => out.new_events += 1,
            None => out.remembered += 1,
        }
        fresh.push((key, print, event));
    }
    for chunk in fresh.chunks(200) {
        let sql = tx.backend().sql(format!(
            "INSERT INTO source_items (source_id, item_key, fingerprint, event_id, seen_at) VALUES {} \
             ON CONFLICT (source_id, item_key) DO NOTHING",
            value_rows(1, chunk.len(), 5)
        ));
        on_tx!(tx, c => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for (key, print, event) in chunk {
                q = q.bind(source.id).bind(key).bind(print).bind(*event).bind(now);
            }
            q.execute(&mut *c).await.map(|_| ())
        })
        .map_err(store)?;
    }
    bump_count(tx, source.id, out.new_events as i64);
    Ok(out)
}

/// The stored fingerprint and event of each key this source has seen.
async fn known(tx: &mut Tx, source: Uuid, keys: &[String]) -> Result<HashMap<String, (String, Option<Uuid>)>, Error> {
    let mut out = HashMap::new();
    for chunk in keys.chunks(500) {
        if chunk.is_empty() {
            continue;
        }
        let sql = tx.backend().sql(format!(
            "SELECT item_key, fingerprint, event_id FROM source_items WHERE source_id = $1 AND item_key IN ({})",
            placeholders(2, chunk.len())
        ));
        let rows: Vec<(String, String, Option<Uuid>)> = on_tx!(tx, c => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(source);
            for k in chunk {
                q = q.bind(k);
            }
            q.fetch_all(&mut *c).await
        })
        .map_err(store)?;
        out.extend(rows.into_iter().map(|(k, f, e)| (k, (f, e))));
    }
    Ok(out)
}

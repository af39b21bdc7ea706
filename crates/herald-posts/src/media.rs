//! The media library: uploads streamed to storage under the team's quota, described in the
//! database, and loaded for deliveries.

use crate::store::{Posts, store};
use chrono::{DateTime, Utc};
use herald_accounts::audit::{self, Actor, Event};
use herald_accounts::{Principal, Quota, authorize};
use herald_core::platforms::{MediaItem, MediaKind};
use herald_core::{Action, Error, ErrorCode};
use herald_store::{Ts, exec, on_read, on_tx};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct MediaView {
    pub id: Uuid,
    pub filename: String,
    /// Sniffed from the content.
    pub mime: String,
    /// `image` or `video`.
    pub kind: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub alt: Option<String>,
    #[sqlx(skip)]
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(flatten)]
    view: MediaView,
    created: Ts,
}

const COLS: &str = "id, filename, mime, kind, bytes, sha256, width, height, alt, created_at AS created";

fn kind_of(s: &str) -> MediaKind {
    if s == "video" { MediaKind::Video } else { MediaKind::Image }
}

impl Posts {
    /// Room for `more` bytes under the team's `media_bytes` quota, counted in `tx`.
    async fn check_media_quota(&self, tx: &mut herald_store::Tx, team: Uuid, more: i64) -> Result<(), Error> {
        let used: Option<i64> = on_tx!(tx, c => sqlx::query_scalar(
            "SELECT CAST(SUM(bytes) AS BIGINT) FROM media WHERE team_id = $1").bind(team).fetch_one(&mut *c).await)
        .map_err(store)?;
        self.accounts.check_quota(tx, team, Quota::MediaBytes, used.unwrap_or(0), more).await
    }

    /// Streams an upload into the library. Refused past `cap` bytes or the team's `media_bytes`
    /// quota, or when the content is not a type Herald takes; a refused upload leaves nothing.
    pub async fn upload<S, E>(
        &self,
        p: &Principal,
        filename: &str,
        alt: Option<String>,
        body: S,
        cap: u64,
    ) -> Result<MediaView, Error>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (team, _) = authorize(p, Action::WriteContent)?;
        let filename: String = filename.chars().filter(|c| !c.is_control()).take(200).collect();
        let filename = if filename.trim().is_empty() { "upload".to_string() } else { filename };
        // Fail fast when the quota is already spent; the real check is after the size is known.
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        self.check_media_quota(&mut tx, team, 1).await?;
        drop(tx);
        let id = Uuid::now_v7();
        let stored = self.media.put(team, id, body, cap).await.map_err(Error::from)?;
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let checked = self.check_media_quota(&mut tx, team, stored.bytes as i64).await;
        if let Err(e) = checked {
            drop(tx);
            let _ = self.media.delete(team, id).await;
            return Err(e);
        }
        let kind = match stored.kind {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
        };
        exec!(
            tx,
            "INSERT INTO media (id, team_id, filename, mime, kind, bytes, sha256, width, height, alt, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            id,
            team,
            &filename,
            stored.mime,
            kind,
            stored.bytes as i64,
            &stored.sha256,
            stored.width.map(i64::from),
            stored.height.map(i64::from),
            &alt,
            p.user_id,
            Ts::now()
        )
        .map_err(store)?;
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "media.uploaded")
                .target("media", id)
                .details(json!({"bytes": stored.bytes, "mime": stored.mime})),
        )
        .await?;
        if let Err(e) = tx.commit().await {
            let _ = self.media.delete(team, id).await;
            return Err(e.into());
        }
        self.media_item(team, id).await
    }

    pub async fn media_item(&self, team: Uuid, id: Uuid) -> Result<MediaView, Error> {
        let sql = format!("SELECT {COLS} FROM media WHERE team_id = $1 AND id = $2");
        let row: Option<Row> = on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(team).bind(id).fetch_optional(c).await)
        .map_err(store)?;
        row.map(|r| MediaView { created_at: r.created.0, ..r.view }).ok_or_else(|| Error::not_found("media"))
    }

    pub async fn media_list(&self, team: Uuid) -> Result<Vec<MediaView>, Error> {
        let sql = format!("SELECT {COLS} FROM media WHERE team_id = $1 ORDER BY created_at DESC, id DESC LIMIT 500");
        let rows: Vec<Row> =
            on_read!(self.db, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(team).fetch_all(c).await)
                .map_err(store)?;
        Ok(rows.into_iter().map(|r| MediaView { created_at: r.created.0, ..r.view }).collect())
    }

    /// Deletes a file that no unfinished delivery still needs.
    pub async fn media_delete(&self, p: &Principal, id: Uuid) -> Result<MediaView, Error> {
        let (team, _) = authorize(p, Action::DeleteContent)?;
        let view = self.media_item(team, id).await?;
        let needle = format!("%{id}%");
        let in_use: i64 = on_read!(self.db, c => sqlx::query_scalar(
            "SELECT COUNT(*) FROM posts p WHERE p.team_id = $1 AND p.content LIKE $2 AND EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.post_id = p.id AND d.state IN ('pending', 'scheduled', 'publishing'))")
            .bind(team).bind(&needle).fetch_one(c).await)
        .map_err(store)?;
        if in_use > 0 {
            return Err(Error::new(
                ErrorCode::Conflict,
                "a post that has not gone out yet uses this file; cancel or change it first",
            ));
        }
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        exec!(tx, "DELETE FROM media WHERE team_id = $1 AND id = $2", team, id).map_err(store)?;
        audit::record(&mut tx, &Actor::of(p), Event::new(Some(team), "media.deleted").target("media", id)).await?;
        tx.commit().await.map_err(Error::from)?;
        self.media.delete(team, id).await.map_err(Error::from)?;
        Ok(view)
    }

    /// What validation needs of a post's media: kind, type and size.
    pub(crate) async fn media_items(&self, team: Uuid, ids: &[Uuid]) -> Result<Vec<(MediaView, MediaItem)>, Error> {
        let mut out = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let v = self.media_item(team, *id).await.map_err(|e| match e.code {
                ErrorCode::NotFound => Error::new(ErrorCode::ValidationFailed, format!("no media {id} in this team"))
                    .with_details(json!({"field": format!("media[{i}]")})),
                _ => e,
            })?;
            let item = MediaItem { kind: kind_of(&v.kind), mime: v.mime.clone(), bytes: v.bytes as u64 };
            out.push((v, item));
        }
        Ok(out)
    }

    /// A library file opened for streaming (the signed public route), with what it is. A file
    /// whose row or bytes are gone is `not_found`.
    pub async fn media_file(
        &self,
        team: Uuid,
        id: Uuid,
    ) -> Result<(MediaView, futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, u64), Error> {
        let view = self.media_item(team, id).await?;
        let (body, len) = self.media.stream(team, id).await.map_err(Error::from)?;
        Ok((view, body, len))
    }

    /// The files of a delivery, read from storage for the adapter, each with a signed URL when
    /// public media are set up ([`Posts::with_public_media`]). The URL's expiry counts from
    /// `since`, the delivery's first attempt, so every retry sends the same URL (and Nostr, whose
    /// event id hashes the content, the same note rather than a second one).
    pub(crate) async fn load_media(
        &self,
        team: Uuid,
        ids: &[Uuid],
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<herald_platforms::Media>, Error> {
        let mut out = Vec::with_capacity(ids.len());
        for (v, item) in self.media_items(team, ids).await? {
            let bytes = self.media.read(team, v.id).await.map_err(Error::from)?;
            out.push(herald_platforms::Media {
                kind: item.kind,
                mime: v.mime,
                filename: v.filename,
                bytes,
                alt: v.alt,
                url: self.public_media.as_ref().map(|p| p.url_at(team, v.id, since.timestamp())),
            });
        }
        Ok(out)
    }
}

//! Where uploaded media live: a directory per team under the data dir, or S3-compatible object
//! storage (`HERALD_MEDIA_URL=s3://bucket/prefix`). An upload streams to a temporary file (in the
//! data dir either way) and is renamed into place, or uploaded, only when complete, so a refused or interrupted upload
//! (over the cap, a full disk, a dropped connection) leaves nothing behind and never sits whole in
//! memory. The type is sniffed from the first bytes, never taken from the client.
//!
//! [`signing`] makes the signed, expiring URLs Herald serves files under to platforms that fetch
//! media themselves.
#![forbid(unsafe_code)]

pub mod signing;

pub use signing::{PublicMedia, UrlError, UrlSigner};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use herald_core::platforms::MediaKind;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the file is larger than the {cap}-byte limit")]
    TooLarge { cap: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    #[error("storage failed ({0}); check the disk space and permissions of the media directory")]
    Io(#[from] std::io::Error),
    #[error("no such media file")]
    NotFound,
    #[error("the media object storage failed ({0}); check HERALD_MEDIA_URL, the credentials and the bucket")]
    Object(String),
    #[error("{0}")]
    Config(String),
}

impl From<object_store::Error> for MediaError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => MediaError::NotFound,
            other => MediaError::Object(other.to_string()),
        }
    }
}

impl From<MediaError> for herald_core::Error {
    fn from(e: MediaError) -> Self {
        use herald_core::ErrorCode;
        let code = match &e {
            MediaError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            MediaError::Unsupported(_) => ErrorCode::UnsupportedMediaType,
            MediaError::Interrupted(_) => ErrorCode::BadRequest,
            MediaError::NotFound => ErrorCode::NotFound,
            MediaError::Io(_) | MediaError::Object(_) => ErrorCode::Unavailable,
            MediaError::Config(_) => ErrorCode::Internal,
        };
        herald_core::Error::new(code, e.to_string())
    }
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub mime: &'static str,
    pub kind: MediaKind,
    pub bytes: u64,
    pub sha256: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// The types Herald takes, by their first bytes.
pub fn sniff(head: &[u8]) -> Option<(&'static str, MediaKind)> {
    use MediaKind::*;
    let at = |i: usize, m: &[u8]| head.len() >= i + m.len() && &head[i..i + m.len()] == m;
    if at(0, &[0xFF, 0xD8, 0xFF]) {
        Some(("image/jpeg", Image))
    } else if at(0, b"\x89PNG\r\n\x1a\n") {
        Some(("image/png", Image))
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        Some(("image/gif", Image))
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        Some(("image/webp", Image))
    } else if at(4, b"ftypqt  ") {
        Some(("video/quicktime", Video))
    } else if at(4, b"ftyp") {
        Some(("video/mp4", Video))
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        Some(("video/webm", Video))
    } else {
        None
    }
}

/// Width and height of a PNG, GIF or JPEG from its first bytes, where cheap.
pub fn dimensions(mime: &str, head: &[u8]) -> Option<(u32, u32)> {
    let be16 = |i: usize| Some(u16::from_be_bytes([*head.get(i)?, *head.get(i + 1)?]) as u32);
    let be32 = |i: usize| Some(u32::from_be_bytes(head.get(i..i + 4)?.try_into().ok()?));
    match mime {
        "image/png" => Some((be32(16)?, be32(20)?)),
        "image/gif" => {
            let le16 = |i: usize| Some(u16::from_le_bytes([*head.get(i)?, *head.get(i + 1)?]) as u32);
            Some((le16(6)?, le16(8)?))
        }
        "image/jpeg" => {
            // Walk the segments to the first start-of-frame marker.
            let mut i = 2;
            while i + 9 < head.len() {
                if head[i] != 0xFF {
                    return None;
                }
                let marker = head[i + 1];
                let len = be16(i + 2)? as usize;
                if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
                    return Some((be16(i + 7)?, be16(i + 5)?));
                }
                i += 2 + len;
            }
            None
        }
        _ => None,
    }
}

/// How much of the start of a file is kept for sniffing and dimensions.
const HEAD: usize = 64 * 1024;

/// Media files in a local directory, or in an object store with the directory for staging.
#[derive(Debug, Clone)]
pub struct MediaStore {
    root: PathBuf,
    object: Option<Object>,
}

#[derive(Debug, Clone)]
struct Object {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket, without slashes at either end.
    prefix: String,
}

impl MediaStore {
    pub fn local(root: impl Into<PathBuf>) -> MediaStore {
        MediaStore { root: root.into(), object: None }
    }

    /// S3-compatible storage at `url` (`s3://bucket[/prefix]`), configured from the usual AWS
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and for other S3
    /// services `AWS_ENDPOINT_URL`, with `AWS_ALLOW_HTTP=true` for a plain-HTTP one). Uploads are
    /// staged in `staging` while they are checked.
    pub fn object(url: &str, staging: impl Into<PathBuf>) -> Result<MediaStore, MediaError> {
        Self::object_with(url, staging, &[])
    }

    /// [`Self::object`] with settings over the environment's, by their object_store names
    /// (`aws_endpoint`, `aws_access_key_id`, `aws_allow_http`, …).
    pub fn object_with(
        url: &str,
        staging: impl Into<PathBuf>,
        options: &[(&str, &str)],
    ) -> Result<MediaStore, MediaError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            MediaError::Config(format!(
                "HERALD_MEDIA_URL must be s3://bucket[/prefix] (S3 or an S3-compatible service), not {url}"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(MediaError::Config("HERALD_MEDIA_URL names no bucket: use s3://bucket[/prefix]".into()));
        }
        herald_http::install_crypto_provider();
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in options {
            let key: object_store::aws::AmazonS3ConfigKey =
                k.parse().map_err(|e| MediaError::Config(format!("object store setting {k}: {e}")))?;
            builder = builder.with_config(key, *v);
        }
        let store = builder.build().map_err(|e| MediaError::Config(format!("HERALD_MEDIA_URL {url}: {e}")))?;
        let object = Object { store: Arc::new(store), prefix: prefix.trim_matches('/').to_string() };
        Ok(MediaStore { root: staging.into(), object: Some(object) })
    }

    /// `local` or `s3://bucket/prefix`, for logs and `herald config`.
    pub fn describe(&self) -> String {
        match &self.object {
            Some(o) => format!("{} (prefix `{}`)", o.store, o.prefix),
            None => self.root.display().to_string(),
        }
    }

    fn key(&self, o: &Object, team: Uuid, id: Uuid) -> Key {
        let name = format!("{}/{}", team.simple(), id.simple());
        match o.prefix.as_str() {
            "" => Key::from(name),
            p => Key::from(format!("{p}/{name}")),
        }
    }

    /// Checks the object store answers (a listing of the prefix), so a wrong bucket or key fails
    /// at start rather than at the first upload.
    pub async fn check(&self) -> Result<(), MediaError> {
        if let Some(o) = &self.object {
            let prefix = (!o.prefix.is_empty()).then(|| Key::from(o.prefix.as_str()));
            o.store.list_with_delimiter(prefix.as_ref()).await?;
        }
        Ok(())
    }

    fn path(&self, team: Uuid, id: Uuid) -> PathBuf {
        self.root.join(team.simple().to_string()).join(id.simple().to_string())
    }

    /// Streams `body` into the store as `(team, id)`, failing as soon as it passes `cap` bytes or
    /// turns out not to be a type Herald takes; nothing is left behind on failure.
    pub async fn put<S, E>(&self, team: Uuid, id: Uuid, mut body: S, cap: u64) -> Result<Stored, MediaError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.path(team, id);
        let dir = path.parent().expect("a team directory");
        tokio::fs::create_dir_all(dir).await?;
        let tmp = path.with_extension("part");
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let (mut total, mut head, mut hash) = (0u64, Vec::with_capacity(HEAD), Sha256::new());
            let mut kind = None;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| MediaError::Interrupted(e.to_string()))?;
                total += chunk.len() as u64;
                if total > cap {
                    return Err(MediaError::TooLarge { cap });
                }
                if head.len() < HEAD {
                    let take = (HEAD - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                if kind.is_none() && head.len() >= 16 {
                    kind = Some(sniff(&head).ok_or_else(unsupported)?);
                }
                hash.update(&chunk);
                file.write_all(&chunk).await?;
            }
            let (mime, kind) = match kind {
                Some(k) => k,
                None => sniff(&head).ok_or_else(unsupported)?,
            };
            file.sync_all().await?;
            let dims = dimensions(mime, &head);
            Ok(Stored {
                mime,
                kind,
                bytes: total,
                sha256: hex::encode(hash.finalize()),
                width: dims.map(|d| d.0),
                height: dims.map(|d| d.1),
            })
        }
        .await;
        match result {
            Ok(stored) => match &self.object {
                None => {
                    tokio::fs::rename(&tmp, &path).await?;
                    Ok(stored)
                }
                Some(o) => {
                    let uploaded = self.upload(o, &tmp, self.key(o, team, id)).await;
                    let _ = tokio::fs::remove_file(&tmp).await;
                    uploaded.map(|()| stored)
                }
            },
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    /// Copies a checked upload to the object store, in parts when it is large.
    async fn upload(&self, o: &Object, file: &std::path::Path, key: Key) -> Result<(), MediaError> {
        let mut reader = tokio::fs::File::open(file).await?;
        let mut writer = object_store::buffered::BufWriter::new(o.store.clone(), key);
        let copied = tokio::io::copy(&mut reader, &mut writer).await;
        match copied {
            Ok(_) => writer.shutdown().await.map_err(|e| MediaError::Object(e.to_string())),
            Err(e) => {
                let _ = writer.abort().await;
                Err(MediaError::Object(e.to_string()))
            }
        }
    }

    /// The file as a stream of chunks, with its length: never whole in memory.
    pub async fn stream(
        &self,
        team: Uuid,
        id: Uuid,
    ) -> Result<(BoxStream<'static, std::io::Result<Bytes>>, u64), MediaError> {
        match &self.object {
            Some(o) => {
                let got = o.store.get(&self.key(o, team, id)).await?;
                let len = got.meta.size;
                let body = got.into_stream().map(|c| c.map_err(std::io::Error::other));
                Ok((body.boxed(), len))
            }
            None => {
                let (file, len) = self.open_local(team, id).await?;
                Ok((tokio_util::io::ReaderStream::new(file).boxed(), len))
            }
        }
    }

    pub async fn read(&self, team: Uuid, id: Uuid) -> Result<Bytes, MediaError> {
        if let Some(o) = &self.object {
            return Ok(o.store.get(&self.key(o, team, id)).await?.bytes().await?);
        }
        match tokio::fs::read(self.path(team, id)).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MediaError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    async fn open_local(&self, team: Uuid, id: Uuid) -> Result<(tokio::fs::File, u64), MediaError> {
        let file = match tokio::fs::File::open(self.path(team, id)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MediaError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata().await?.len();
        Ok((file, len))
    }

    pub async fn delete(&self, team: Uuid, id: Uuid) -> Result<(), MediaError> {
        if let Some(o) = &self.object {
            return match o.store.delete(&self.key(o, team, id)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        match tokio::fs::remove_file(self.path(team, id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn unsupported() -> MediaError {
    MediaError::Unsupported(
        "the file is not a type Herald takes (JPEG, PNG, GIF, WebP, MP4, QuickTime or WebM), judged by its content"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 6, 0, 0, 0]);
        v
    }

    fn stream(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
    }

    #[test]
    fn types_come_from_the_content() {
        assert_eq!(sniff(&png(1, 1)), Some(("image/png", MediaKind::Image)));
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0\0\x10JFIF\0"), Some(("image/jpeg", MediaKind::Image)));
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42\0\0\0\0"), Some(("video/mp4", MediaKind::Video)));
        assert_eq!(sniff(b"\0\0\0\x14ftypqt  \0\0\0\0"), Some(("video/quicktime", MediaKind::Video)));
        assert_eq!(sniff(b"<html><script>alert(1)</script>"), None);
        assert_eq!(dimensions("image/png", &png(1200, 630)), Some((1200, 630)));
        assert_eq!(dimensions("image/gif", b"GIF89a\x40\x01\xf0\x00"), Some((320, 240)));
        // A JPEG: SOI, an APP0 segment, then SOF0 with height 480 and width 640.
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC0, 0, 17, 8, 0x01, 0xE0, 0x02, 0x80, 3, 0, 0, 0];
        assert_eq!(dimensions("image/jpeg", &jpeg), Some((640, 480)));
    }

    #[tokio::test]
    async fn uploads_stream_to_disk_and_failures_leave_nothing() {
        let dir = std::env::temp_dir().join(format!("herald-media-{}", Uuid::now_v7().simple()));
        let store = MediaStore::local(&dir);
        let (team, id) = (Uuid::now_v7(), Uuid::now_v7());
        let mut body = png(800, 600);
        body.extend(std::iter::repeat_n(7u8, 100_000));
        let chunks: Vec<Vec<u8>> = body.chunks(4096).map(<[u8]>::to_vec).collect();
        let stored = store.put(team, id, stream(chunks), 1 << 20).await.unwrap();
        assert_eq!((stored.mime, stored.bytes), ("image/png", body.len() as u64));
        assert_eq!((stored.width, stored.height), (Some(800), Some(600)));
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&body)));
        assert_eq!(store.read(team, id).await.unwrap().as_ref(), body.as_slice());
        assert_eq!(store.stream(team, id).await.unwrap().1, body.len() as u64);

        // Over the cap: refused mid-stream, no file, no partial file.
        let big = Uuid::now_v7();
        let endless = futures::stream::iter(std::iter::repeat_with(|| {
            Ok::<_, std::io::Error>(Bytes::from(png(1, 1).repeat(100)))
        }));
        let e = store.put(team, big, endless.take(10_000), 64 * 1024).await.unwrap_err();
        assert!(matches!(e, MediaError::TooLarge { cap: 65536 }), "{e}");
        // Not a media type: refused from the first bytes.
        let e = store.put(team, big, stream(vec![b"#!/bin/sh\nrm -rf /\n".repeat(10)]), 1 << 20).await.unwrap_err();
        assert!(matches!(e, MediaError::Unsupported(_)), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.join(team.simple().to_string())).unwrap().collect();
        assert_eq!(left.len(), 1, "only the good upload is there");
        store.delete(team, id).await.unwrap();
        assert!(matches!(store.read(team, id).await, Err(MediaError::NotFound)));
        assert!(matches!(store.stream(team, id).await, Err(MediaError::NotFound)));
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! Where uploaded media live: a directory per team under the data dir. An upload streams to a
//! temporary file and is renamed into place only when complete, so a refused or interrupted upload
//! (over the cap, a full disk, a dropped connection) leaves nothing behind and never sits whole in
//! memory. The type is sniffed from the first bytes, never taken from the client.
//!
//! [`signing`] makes the signed, expiring URLs Herald serves files under to platforms that fetch
//! media themselves.
#![forbid(unsafe_code)]

pub mod signing;

pub use signing::{PublicMedia, UrlError, UrlSigner};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use herald_core::platforms::MediaKind;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
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
}

impl From<MediaError> for herald_core::Error {
    fn from(e: MediaError) -> Self {
        use herald_core::ErrorCode;
        let code = match &e {
            MediaError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            MediaError::Unsupported(_) => ErrorCode::UnsupportedMediaType,
            MediaError::Interrupted(_) => ErrorCode::BadRequest,
            MediaError::NotFound => ErrorCode::NotFound,
            MediaError::Io(_) => ErrorCode::Unavailable,
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

/// Media files in a local directory.
#[derive(Debug, Clone)]
pub struct MediaStore {
    root: PathBuf,
}

impl MediaStore {
    pub fn local(root: impl Into<PathBuf>) -> MediaStore {
        MediaStore { root: root.into() }
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
            Ok(stored) => {
                tokio::fs::rename(&tmp, &path).await?;
                Ok(stored)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    pub async fn read(&self, team: Uuid, id: Uuid) -> Result<Bytes, MediaError> {
        match tokio::fs::read(self.path(team, id)).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MediaError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// The file opened for streaming, with its length.
    pub async fn open(&self, team: Uuid, id: Uuid) -> Result<(tokio::fs::File, u64), MediaError> {
        let file = match tokio::fs::File::open(self.path(team, id)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MediaError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata().await?.len();
        Ok((file, len))
    }

    pub async fn delete(&self, team: Uuid, id: Uuid) -> Result<(), MediaError> {
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
        assert_eq!(store.open(team, id).await.unwrap().1, body.len() as u64);

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
        assert!(matches!(store.open(team, id).await, Err(MediaError::NotFound)));
        let _ = std::fs::remove_dir_all(dir);
    }
}

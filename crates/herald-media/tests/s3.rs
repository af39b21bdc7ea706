//! The media store on S3-compatible storage, against moto's S3 server (see
//! `herald_testkit::moto`; `.ci/run` installs it).

use bytes::Bytes;
use herald_http::HttpClient;
use herald_media::{MediaError, MediaStore};
use uuid::Uuid;

fn png(w: u32, h: u32, len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0]);
    v.resize(len, 7);
    v
}

fn chunks(data: &[u8], size: usize) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    let parts: Vec<_> = data.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::stream::iter(parts)
}

#[tokio::test]
async fn uploads_stream_to_the_bucket_and_refusals_leave_nothing() {
    let Some(moto) = herald_testkit::moto::start("herald-media").await else { return };
    // What an operator sets as AWS_* variables, given directly (tests share one environment).
    let settings = [
        ("aws_access_key_id", "herald-test"),
        ("aws_secret_access_key", "herald-test-secret"),
        ("aws_region", "us-east-1"),
        ("aws_endpoint", moto.url.as_str()),
        ("aws_allow_http", "true"),
    ];
    let http = HttpClient::trusted().unwrap();
    let staging = herald_store::testing::scratch_dir("herald-s3-staging");
    let store = MediaStore::object_with("s3://herald-media/team-files/", &staging, &settings).unwrap();
    store.check().await.unwrap();
    let (team, id) = (Uuid::now_v7(), Uuid::now_v7());

    // 12 MB in 64 KiB chunks: more than one multipart part, never whole in memory on the way.
    let data = png(1200, 630, 12 * 1024 * 1024);
    let stored = store.put(team, id, chunks(&data, 64 * 1024), 20 * 1024 * 1024).await.unwrap();
    assert_eq!(
        (stored.mime, stored.bytes, stored.width, stored.height),
        ("image/png", data.len() as u64, Some(1200), Some(630))
    );
    assert_eq!(store.read(team, id).await.unwrap().as_ref(), &data[..]);
    let (mut body, len) = store.stream(team, id).await.unwrap();
    assert_eq!(len, data.len() as u64);
    let mut streamed = Vec::new();
    while let Some(c) = futures::StreamExt::next(&mut body).await {
        streamed.extend_from_slice(&c.unwrap());
    }
    assert_eq!(streamed, data);
    // The object sits under the prefix, team and id (read here straight from the bucket).
    let raw = http
        .get(&format!("{}/herald-media/team-files/{}/{}", moto.url, team.simple(), id.simple()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.bytes().await.unwrap().len(), data.len());

    // Over the cap, or not a type Herald takes: refused, nothing in the bucket or the staging dir.
    let big = Uuid::now_v7();
    let e = store.put(team, big, chunks(&png(10, 10, 3 * 1024 * 1024), 64 * 1024), 1024 * 1024).await.unwrap_err();
    assert!(matches!(e, MediaError::TooLarge { .. }), "{e}");
    assert!(matches!(store.read(team, big).await.unwrap_err(), MediaError::NotFound));
    let html = Uuid::now_v7();
    let e = store.put(team, html, chunks(b"<html><script>alert(1)</script></html>", 8), 1024).await.unwrap_err();
    assert!(matches!(e, MediaError::Unsupported(_)), "{e}");
    assert!(matches!(store.read(team, html).await.unwrap_err(), MediaError::NotFound));
    let left: Vec<_> = walk(&staging);
    assert!(left.is_empty(), "staging keeps nothing: {left:?}");

    // Deleting is idempotent; a deleted file is not found.
    store.delete(team, id).await.unwrap();
    store.delete(team, id).await.unwrap();
    assert!(matches!(store.read(team, id).await.unwrap_err(), MediaError::NotFound));

    // A bucket that does not exist fails the start-up check with a clear message.
    let missing = MediaStore::object_with("s3://no-such-bucket", &staging, &settings).unwrap();
    let e = missing.check().await.unwrap_err();
    assert!(e.to_string().contains("HERALD_MEDIA_URL"), "{e}");
    // Only s3:// URLs are taken.
    let e = MediaStore::object("gs://bucket", &staging).unwrap_err();
    assert!(e.to_string().contains("s3://bucket"), "{e}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

//! The media library over HTTP: streamed multipart uploads with the type sniffed from the
//! content, the size cap and the team quota (refusals leave nothing behind), and media in posts,
//! checked against each platform's limits and delivered to the platform.

mod common;

use common::{App, code, png, test_net};
use herald_http::Method;
use herald_store::testing::each_backend;
use herald_testkit::telegram;
use serde_json::json;

#[tokio::test]
async fn uploads_are_sniffed_capped_counted_and_checked_per_platform() {
    each_backend(|db| async move {
        let fake = telegram::start().await;
        let app = App::start_with_net(db.clone(), test_net().with_base("telegram", fake.url.clone())).await;
        let (owner, _, team) = app.owner("o@example.com").await;

        let (s, m) = app.upload(&owner, "chart.png", png(1200, 630, 50_000)).await;
        assert_eq!(s, 201, "{m}");
        assert_eq!((m["mime"].as_str(), m["kind"].as_str(), m["bytes"].as_i64()), (Some("image/png"), Some("image"), Some(50_000)));
        assert_eq!((m["width"].as_i64(), m["height"].as_i64()), (Some(1200), Some(630)));
        assert_eq!(m["alt"], "a test image");
        assert_eq!(m["sha256"].as_str().unwrap().len(), 64);
        let id = m["id"].as_str().unwrap().to_string();
        let (_, list) = app.get(&owner, "/media").await;
        assert_eq!(list.as_array().unwrap().len(), 1);

        // The client's name and type count for nothing: a script named .png is refused.
        let (s, b) = app.upload(&owner, "evil.png", b"#!/bin/sh\necho pwned\n".repeat(10)).await;
        assert_eq!((s, code(&b)), (415, "unsupported_media_type"), "{b}");
        // Over the cap (1 MiB in tests): 413, and nothing is kept.
        let (s, b) = app.upload(&owner, "huge.png", png(10, 10, 2 << 20)).await;
        assert_eq!((s, code(&b)), (413, "payload_too_large"), "{b}");
        assert_eq!(app.get(&owner, "/media").await.1.as_array().unwrap().len(), 1);
        // The team's quota counts bytes.
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE teams SET quota_media_bytes = 60000 WHERE id = $1", team).unwrap();
        tx.commit().await.unwrap();
        let (s, b) = app.upload(&owner, "second.png", png(10, 10, 20_000)).await;
        assert_eq!((s, code(&b)), (403, "quota_exceeded"), "{b}");
        assert_eq!(app.get(&owner, "/media").await.1.as_array().unwrap().len(), 1);

        // In a post, media are checked against each platform: Bluesky takes no video.
        let (_, tg) = app
            .post(&owner, "/connections", json!({"platform": "telegram", "credentials": {"bot_token": telegram::TOKEN}, "settings": {"chat_id": telegram::CHANNEL}}))
            .await;
        let (s, b) = app
            .post(&owner, "/posts", json!({"text": "with a chart", "media": [id], "targets": [{"connection_id": tg["id"]}], "schedule_at": "2099-01-01T00:00:00Z"}))
            .await;
        assert_eq!(s, 201, "{b}");
        assert_eq!(b["content"]["media"][0], id.as_str());
        let (s, b) = app
            .post(&owner, "/posts", json!({"text": "x", "media": [uuid::Uuid::now_v7()], "targets": [{"connection_id": tg["id"]}]}))
            .await;
        assert_eq!((s, code(&b)), (422, "validation_failed"), "{b}");
        assert_eq!(b["error"]["details"]["field"], "media[0]");
        // A caption over Telegram's 1024 with media is a violation of its caption rule.
        let (s, b) = app
            .post(&owner, "/posts", json!({"text": "y".repeat(1500), "media": [id], "targets": [{"connection_id": tg["id"]}]}))
            .await;
        assert_eq!((s, code(&b)), (422, "validation_failed"), "{b}");
        assert_eq!(b["error"]["details"]["targets"][0]["violations"][0]["rule"], "caption_length");
        // A file an unsent post uses cannot be deleted.
        let (s, b) = app.call(&owner, Method::DELETE, &format!("/media/{id}"), None).await;
        assert_eq!((s, code(&b)), (409, "conflict"), "{b}");
    })
    .await;
}

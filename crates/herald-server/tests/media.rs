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

#[tokio::test]
async fn signed_media_urls_serve_the_file_without_credentials_until_they_expire() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (owner, _, team) = app.owner("o@example.com").await;
        let (_, _, other_team) = app.owner("p@example.com").await;
        let bytes = png(64, 32, 3000);
        let (s, m) = app.upload(&owner, "a \"chart\".png", bytes.clone()).await;
        assert_eq!(s, 201, "{m}");
        let id: uuid::Uuid = m["id"].as_str().unwrap().parse().unwrap();
        let fetch = |url: String| {
            let http = app.http.clone();
            async move { http.get(&url).send().await.unwrap() }
        };

        // The URL a delivery carries, fetched with no credentials at all.
        let url = app.media_urls.url(team, id);
        assert!(url.starts_with(&format!("{}/api/v1/media/{id}/file?team={team}&expires=", app.base)), "{url}");
        let resp = fetch(url.clone()).await;
        assert_eq!(resp.status().as_u16(), 200);
        let h = resp.headers().clone();
        let header = |name: &str| h.get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap().to_string();
        assert_eq!(header("content-type"), "image/png");
        assert_eq!(header("content-length"), "3000");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(
            header("content-disposition"),
            "inline; filename=\"a _chart_.png\"; filename*=UTF-8''a%20%22chart%22.png"
        );
        let max_age: i64 = header("cache-control").strip_prefix("private, max-age=").unwrap().parse().unwrap();
        assert!((86_400 - 5..=86_400 + 3600).contains(&max_age), "{max_age}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice(), "the exact bytes");

        let refused = |url: String, want: &'static str| {
            let fetch = fetch(url.clone());
            async move {
                let resp = fetch.await;
                let status = resp.status().as_u16();
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!((status, code(&body)), (403, want), "{url}: {body}");
            }
        };
        // Tampered: the signature, the expiry, the team (another team's id), missing parts.
        let sig_at = url.find("&sig=").unwrap() + 5;
        let mut flipped = url.clone();
        let c = if &url[sig_at..sig_at + 1] == "0" { "1" } else { "0" };
        flipped.replace_range(sig_at..sig_at + 1, c);
        refused(flipped, "media_url_invalid").await;
        refused(url[..url.len() - 2].to_string(), "media_url_invalid").await;
        let expires: i64 = url.split("expires=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
        refused(
            url.replace(&format!("expires={expires}"), &format!("expires={}", expires + 86_400)),
            "media_url_invalid",
        )
        .await;
        refused(url.replace(&team.to_string(), &other_team.to_string()), "media_url_invalid").await;
        refused(url.split("&sig=").next().unwrap().to_string(), "media_url_invalid").await;
        refused(format!("{}/api/v1/media/{id}/file", app.base), "media_url_invalid").await;
        refused(url.replace(&format!("team={team}"), "team=nope"), "media_url_invalid").await;
        // Another team's file under this team's signature: the id is part of what is signed.
        let (s, theirs) = app.upload(&app.owner("q@example.com").await.0, "b.png", png(8, 8, 200)).await;
        assert_eq!(s, 201, "{theirs}");
        refused(url.replace(&id.to_string(), theirs["id"].as_str().unwrap()), "media_url_invalid").await;
        // Genuine but old.
        let old = app.media_urls.url_at(team, id, herald_media::signing::unix_now() - 2 * 86_400);
        refused(old, "media_url_expired").await;

        // Deleted: the signature still checks, the file is gone.
        let (s, _) = app.call(&owner, Method::DELETE, &format!("/media/{id}"), None).await;
        assert_eq!(s, 200);
        let resp = fetch(url).await;
        assert_eq!(resp.status().as_u16(), 404);
        assert_eq!(code(&resp.json().await.unwrap()), "not_found");
    })
    .await;
}

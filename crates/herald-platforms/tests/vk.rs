//! The VK adapter against the fake API: the token only in POST bodies, wall posts with `guid`,
//! photo and video uploads, VK's HTTP-200 error codes in their classes, pacing.

mod common;

use herald_platforms::vk::{self, Vk};
use herald_platforms::{
    Adapter, Connection, ErrorClass, Media, MediaKind, Net, Outgoing, PlatformError, idempotency_key,
};
use herald_testkit::vk::{CLOSED_USER_ID, COMMUNITY_TOKEN, GROUP_ID, State, USER_ID, USER_TOKEN, start};
use herald_testkit::{Failure, FakeServer};
use serde_json::json;
use std::time::Duration;

fn net(fake: &FakeServer<State>) -> Net {
    common::net().with_base("vk", format!("{}/method", fake.url))
}

fn community(token: &str) -> Connection {
    common::connection(json!({ "owner_id": -GROUP_ID }), json!({ "access_token": token }))
}

fn key() -> String {
    idempotency_key(uuid::Uuid::now_v7())
}

/// The form fields of a recorded call.
fn form(r: &herald_testkit::Recorded) -> std::collections::HashMap<String, String> {
    herald_testkit::vk::form_pairs(&r.body).into_iter().collect()
}

fn no_secret(e: &PlatformError) {
    for t in [USER_TOKEN, COMMUNITY_TOKEN] {
        assert!(!e.to_string().contains(t) && !format!("{e:?}").contains(t), "a token leaked into {e}");
    }
}

#[tokio::test]
async fn verify_a_community_wall_with_an_admin_user_token() {
    let fake = start().await;
    let v = Vk.verify(&net(&fake), &community(USER_TOKEN)).await.unwrap();
    assert_eq!(v.account, "Herald Test Community");
    assert_eq!(v.settings["token_kind"], json!("user"));
    assert_eq!(v.settings["from_group"], json!(true));
    assert_eq!(v.settings["user_id"], json!(USER_ID));

    let calls = fake.requests();
    assert_eq!(
        calls.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/method/users.get", "/method/groups.getById"]
    );
    for r in &calls {
        // The token is a POST field, never in a URL.
        assert_eq!(r.method, "POST");
        assert_eq!(r.query, None);
        let f = form(r);
        assert_eq!(f["access_token"], USER_TOKEN);
        assert_eq!(f["v"], "5.199");
    }
    assert_eq!(form(&calls[1])["group_id"], GROUP_ID.to_string());
}

#[tokio::test]
async fn verify_refuses_a_community_token_and_says_what_to_use() {
    let fake = start().await;
    let e = Vk
        .verify(
            &net(&fake),
            &common::connection(
                json!({ "owner_id": -GROUP_ID, "token_kind": "community" }),
                json!({ "access_token": COMMUNITY_TOKEN }),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("community_token")));
    assert!(e.message.contains("Herald Test Community") && e.message.contains("user token"), "{e}");

    let wrong = common::connection(
        json!({ "owner_id": "-999", "token_kind": "community" }),
        json!({ "access_token": COMMUNITY_TOKEN }),
    );
    let e = Vk.verify(&net(&fake), &wrong).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_settings")));
}

#[tokio::test]
async fn verify_a_user_wall_and_refuse_walls_that_cannot_be_posted_on() {
    let fake = start().await;
    let own = common::connection(json!({ "owner_id": USER_ID }), json!({ "access_token": USER_TOKEN }));
    let v = Vk.verify(&net(&fake), &own).await.unwrap();
    assert_eq!(v.account, "Ivan Petrov");
    assert_eq!(v.settings["from_group"], json!(false));

    let closed = common::connection(json!({ "owner_id": CLOSED_USER_ID }), json!({ "access_token": USER_TOKEN }));
    let e = Vk.verify(&net(&fake), &closed).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("wall_not_writable")));

    fake.data().can_post_on_group = false;
    let e = Vk.verify(&net(&fake), &community(USER_TOKEN)).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("wall_not_writable"));
    assert!(e.message.contains("Herald Test Community"));
}

#[tokio::test]
async fn verify_with_a_bad_token_is_auth() {
    let fake = start().await;
    let e = Vk.verify(&net(&fake), &community("vk1.a.revoked")).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_deref()), (ErrorClass::Auth, Some(200), Some("5")));
    assert!(e.message.starts_with("User authorization failed"));
    assert!(!e.to_string().contains("vk1.a.revoked"));
}

#[tokio::test]
async fn publish_text_and_link_as_the_community_with_a_guid() {
    let fake = start().await;
    let mut post = Outgoing::text("Привет, VK", key());
    post.link = Some("https://example.com/news".into());
    let p = Vk.publish(&net(&fake), &community(USER_TOKEN), &post).await.unwrap();

    let d = fake.data();
    let made = &d.posts[0];
    assert_eq!(p.id, format!("-{GROUP_ID}_{}", made.post_id));
    assert_eq!(p.url, Some(format!("https://vk.com/wall-{GROUP_ID}_{}", made.post_id)));
    assert_eq!(made.message, "Привет, VK");
    assert_eq!(made.attachments, vec!["https://example.com/news"]);
    assert!(made.from_group);
    assert_eq!(made.guid.as_deref(), Some(vk::guid(&post.idempotency_key).as_str()));
    assert_eq!(vk::guid(&post.idempotency_key), post.idempotency_key, "a plain key is the guid itself");
    let sent = form(&fake.requests_to("/method/wall.post")[0]);
    assert_eq!(sent["owner_id"], format!("-{GROUP_ID}"));
    assert_eq!(sent["from_group"], "1");
    assert!(fake.requests_to("/method/wall.post")[0].query.is_none());
}

#[tokio::test]
async fn publish_uploads_photos_and_videos_and_attaches_them() {
    let fake = start().await;
    let mut post = Outgoing::text("Media", key());
    post.media = vec![
        Media {
            kind: MediaKind::Image,
            mime: "image/jpeg".into(),
            filename: "sunset.jpg".into(),
            bytes: bytes::Bytes::from_static(b"\xff\xd8\xff\xe0fake jpeg"),
            alt: Some("A sunset".into()),
            url: None,
        },
        Media {
            kind: MediaKind::Video,
            mime: "video/mp4".into(),
            filename: "clip.mp4".into(),
            bytes: bytes::Bytes::from_static(b"\0\0\0\x18ftypmp42 fake"),
            alt: None,
            url: None,
        },
    ];
    Vk.publish(&net(&fake), &community(USER_TOKEN), &post).await.unwrap();

    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths[..4],
        ["/method/photos.getWallUploadServer", "/upload/photo", "/method/photos.saveWallPhoto", "/method/video.save"]
    );
    let photo_upload = fake.requests_to("/upload/photo")[0].body_text();
    assert!(photo_upload.contains("name=\"photo\"; filename=\"sunset.jpg\""), "{photo_upload}");
    let video_upload = fake.requests_to("/upload/video/")[0].body_text();
    assert!(video_upload.contains("name=\"video_file\"; filename=\"clip.mp4\""));
    assert_eq!(form(&fake.requests_to("/method/photos.getWallUploadServer")[0])["group_id"], GROUP_ID.to_string());

    let d = fake.data();
    let (photo, video) = (&d.photos[0], &d.videos[0]);
    assert_eq!(photo.caption.as_deref(), Some("A sunset"));
    assert_eq!(photo.owner_id, -GROUP_ID);
    assert_eq!(
        d.posts[0].attachments,
        vec![format!("photo-{GROUP_ID}_{}", photo.id), format!("video-{GROUP_ID}_{}", video.id)]
    );
}

#[tokio::test]
async fn vk_error_codes_land_in_their_classes() {
    let fake = start().await;
    let n = net(&fake);
    let c = community(USER_TOKEN);
    let cases: &[(Failure, ErrorClass, &str)] = &[
        (Failure::Unauthorized, ErrorClass::Auth, "5"),
        (Failure::Named("validation"), ErrorClass::Auth, "17"),
        (Failure::Named("internal"), ErrorClass::Transient, "10"),
        (Failure::Named("unknown"), ErrorClass::Transient, "1"),
        (Failure::Named("captcha"), ErrorClass::Invalid, "14"),
        (Failure::Named("permission"), ErrorClass::Invalid, "7"),
        (Failure::Named("access_denied"), ErrorClass::Invalid, "15"),
        (Failure::Named("group_denied"), ErrorClass::Invalid, "203"),
        (Failure::Named("post_denied"), ErrorClass::Invalid, "214"),
        (Failure::Named("invalid_param"), ErrorClass::Invalid, "100"),
        (Failure::Named("ads_recent"), ErrorClass::Invalid, "219"),
        (Failure::Named("links_forbidden"), ErrorClass::Invalid, "222"),
        (Failure::Named("too_many_ads"), ErrorClass::Invalid, "224"),
    ];
    for (failure, class, code) in cases {
        fake.fail_next_on("wall.post", failure.clone());
        let e = Vk.publish(&n, &c, &Outgoing::text("hi", key())).await.unwrap_err();
        assert_eq!((e.class, e.code.as_deref(), e.status), (*class, Some(*code), Some(200)), "{failure:?}");
        no_secret(&e);
    }
    fake.fail_next_on("wall.post", Failure::Named("captcha"));
    let e = Vk.publish(&n, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert!(e.message.contains("a person must sign in to VK"), "{e}");
    fake.fail_next_on("wall.post", Failure::Named("links_forbidden"));
    let e = Vk.publish(&n, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.message, "Hyperlinks are forbidden");
    fake.fail_next_on("wall.post", Failure::ServerError(502));
    let e = Vk.publish(&n, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Transient, Some(502)));
    assert!(fake.data().posts.is_empty());
}

#[tokio::test]
async fn vk_rate_limits_become_waits() {
    let fake = start().await;
    let n = net(&fake);
    let c = community(USER_TOKEN);

    fake.fail_next_on("wall.post", Failure::RateLimited { retry_after_secs: 30 });
    let e = Vk.publish(&n, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::RateLimited, Some("6")));
    assert_eq!(e.retry_after, Some(Duration::from_secs(1)), "error 6 is per second");

    fake.fail_next_on("wall.post", Failure::Named("flood"));
    let e = Vk.publish(&n, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.retry_after), (ErrorClass::RateLimited, Some(Duration::from_secs(3600))));

    fake.fail_next_on("wall.post", Failure::Named("quota"));
    let e = Vk.publish(&n, &c, &Outgoing::text("hi", key())).await.unwrap_err();
    let now = chrono::Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).unwrap().and_utc();
    let expected = (midnight - now).to_std().unwrap();
    let got = e.retry_after.unwrap();
    assert_eq!(e.class, ErrorClass::RateLimited);
    assert!(got.abs_diff(expected) < Duration::from_secs(5), "{got:?} vs {expected:?}");
}

#[tokio::test]
async fn the_upload_servers_own_error_shape_is_understood() {
    let fake = start().await;
    let mut post = Outgoing::text("pic", key());
    post.media = vec![Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: "tiny.png".into(),
        bytes: bytes::Bytes::from_static(b"\x89PNG"),
        alt: None,
        url: None,
    }];
    fake.fail_next_on("/upload/photo", Failure::Named("upload_error"));
    let e = Vk.publish(&net(&fake), &community(USER_TOKEN), &post).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("9")));
    assert!(e.message.contains("Image has a wrong size"), "{e}");
    assert!(fake.requests_to("wall.post").is_empty());
}

#[tokio::test]
async fn a_community_token_cannot_post_and_says_what_to_do() {
    let fake = start().await;
    let c = common::connection(
        json!({ "owner_id": -GROUP_ID, "token_kind": "community" }),
        json!({ "access_token": COMMUNITY_TOKEN }),
    );
    let e = Vk.publish(&net(&fake), &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("27")));
    assert!(e.message.contains("user token"), "{e}");
}

#[tokio::test]
async fn a_lost_wall_post_answer_is_retried_with_the_same_guid_and_posts_once() {
    let fake = start().await;
    let n = net(&fake);
    let c = community(USER_TOKEN);
    let post = Outgoing::text("exactly once", key());

    fake.fail_next_on("wall.post", Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = Vk.publish(&n, &c, &post).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "guid makes a retry safe: {e}");
    assert_eq!(fake.data().posts.len(), 1);

    let again = Vk.publish(&n, &c, &post).await.unwrap();
    let d = fake.data();
    assert_eq!(d.posts.len(), 1);
    assert_eq!(again.id, format!("-{GROUP_ID}_{}", d.posts[0].post_id));
    assert_eq!(fake.requests_to("wall.post").len(), 2);
}

#[tokio::test]
async fn a_lost_video_save_answer_is_an_unknown_outcome() {
    let fake = start().await;
    let mut post = Outgoing::text("clip", key());
    post.media = vec![Media {
        kind: MediaKind::Video,
        mime: "video/mp4".into(),
        filename: "clip.mp4".into(),
        bytes: bytes::Bytes::from_static(b"video"),
        alt: None,
        url: None,
    }];
    fake.fail_next_on("video.save", Failure::AnswerLate(common::TIMEOUT + Duration::from_secs(1)));
    let e = Vk.publish(&net(&fake), &community(USER_TOKEN), &post).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::UnknownOutcome);
    no_secret(&e);
}

#[test]
fn a_long_or_odd_key_becomes_a_short_guid() {
    let g = vk::guid("key with spaces and.dots");
    assert_eq!(g.len(), 32);
    assert!(g.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(g, vk::guid("key with spaces and.dots"));
}

#[tokio::test]
async fn delete_removes_the_wall_post() {
    let fake = start().await;
    let (n, c) = (net(&fake), community(USER_TOKEN));
    let p = Vk.publish(&n, &c, &Outgoing::text("bye", key())).await.unwrap();
    Vk.delete(&n, &c, &p.id).await.unwrap();
    assert!(fake.data().live_posts().is_empty());
}

#[test]
fn pacing_is_per_wall_and_slower_for_user_tokens() {
    let user = Vk.pacing(&community(USER_TOKEN)).unwrap();
    assert_eq!((user.bucket.as_str(), user.capacity, user.per_second), ("vk:-2002", 3.0, 1.0));
    let c = common::connection(json!({ "owner_id": -GROUP_ID, "token_kind": "community" }), json!({}));
    let group = Vk.pacing(&c).unwrap();
    assert_eq!((group.capacity, group.per_second), (10.0, 5.0));
}

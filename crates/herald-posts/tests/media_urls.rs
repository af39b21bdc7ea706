//! Library media to a platform that fetches by URL: with public media set up (HERALD_PUBLIC_URL),
//! a post with a picture to a Nostr connection publishes a note that links the file by a signed,
//! expiring Herald URL and describes it in a NIP-92 `imeta` tag. The real queue runner delivers it
//! to a fake relay.

mod common;

use common::net;
use herald_accounts::{Accounts, AccountsConfig, Actor, Principal};
use herald_connections::{Connections, NewConnection};
use herald_core::TeamRole;
use herald_media::{PublicMedia, UrlSigner};
use herald_posts::{DeliveryHandler, DeliveryState, NewPost, PostState, Posts};
use herald_queue::{Queue, Registry, Runner, RunnerConfig};
use herald_store::testing::each_backend;
use herald_testkit::nostr as relay;
use herald_vault::{MasterKey, Vault};
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// NIP-19's example key.
const SECRET: &str = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa";
const BASE: &str = "https://herald.example";

#[tokio::test]
async fn a_picture_to_nostr_goes_out_as_a_signed_herald_url_with_its_imeta() {
    each_backend(|db| async move {
        let fake = relay::start().await;
        let vault = Vault::new(&[MasterKey::generate()]);
        // As `herald serve` sets it up when HERALD_PUBLIC_URL is set.
        let signer = UrlSigner::new(vault.derive(herald_media::signing::LABEL));
        let accounts = Accounts::new(db.clone(), vault, AccountsConfig::default());
        let mut tx = db.begin().await.unwrap();
        let (user, team) = accounts.create_user(&mut tx, "o@example.com", "O", "pw-123456789", false).await.unwrap();
        tx.commit().await.unwrap();
        let owner = Principal::acting(Some(user.id), team, TeamRole::Owner, "o@example.com");
        let connections = Connections::new(accounts.clone(), net());
        let queue = Queue::new(db.clone());
        let posts = Posts::new(
            accounts,
            connections.clone(),
            queue.clone(),
            herald_media::MediaStore::local(herald_store::testing::scratch_dir("herald-media")),
        )
        .with_public_media(PublicMedia::new(BASE, signer.clone(), Duration::from_secs(86_400)));
        let mut registry = Registry::default();
        registry.register(herald_posts::DELIVERY_JOB, DeliveryHandler::new(posts.clone()));
        registry.register(herald_posts::EVENT_JOB, herald_posts::EventHandler::new(posts.clone()));
        let stop = CancellationToken::new();
        let config = RunnerConfig { poll_interval: Duration::from_millis(50), ..RunnerConfig::default() };
        let runner = tokio::spawn(Runner::new(queue, registry, config).run(stop.clone()));

        let new = NewConnection {
            platform: "nostr".into(),
            name: None,
            credentials: json!({"secret_key": SECRET}),
            settings: json!({"relays": [fake.url]}),
        };
        let conn = connections.create_in(team, &Actor::system(), new).await.unwrap().id;
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x06\0\0\0".to_vec();
        png.resize(2000, 7);
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(png))]);
        let m = posts.upload(&owner, "dot.png", Some("a red dot".into()), body, 1 << 20).await.unwrap();
        let post = NewPost { media: vec![m.id], ..NewPost::now("a picture", &[conn]) };
        let (created, _) = posts.create(&owner, post, None).await.unwrap();
        let mut done = posts.get(team, created.id).await.unwrap();
        for _ in 0..400 {
            if done.deliveries.iter().all(|d| d.state.is_final()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            done = posts.get(team, created.id).await.unwrap();
        }
        assert_eq!(done.state, PostState::Published, "{done:#?}");
        assert_eq!(done.deliveries[0].state, DeliveryState::Published);

        // One note: the text, then the file's URL on its own line, and an imeta tag for it.
        let events = fake.events();
        assert_eq!(events.len(), 1, "{events:#?}");
        let content = events[0]["content"].as_str().unwrap();
        let (text, url) = content.split_once('\n').unwrap();
        assert_eq!(text, "a picture");
        let prefix = format!("{BASE}/api/v1/media/{}/file?team={team}&expires=", m.id);
        assert!(url.starts_with(&prefix), "{url}");
        let imeta = events[0]["tags"].as_array().unwrap().iter().find(|t| t[0] == "imeta").expect("an imeta tag");
        assert_eq!(imeta, &json!(["imeta", format!("url {url}"), "m image/png", "alt a red dot"]));

        // The URL is one Herald's public route accepts: signed for this team and file, for a day.
        let (expires, sig) = url[prefix.len()..].split_once("&sig=").unwrap();
        let expires: i64 = expires.parse().unwrap();
        let now = herald_media::signing::unix_now();
        assert!(expires > now + 86_000 && expires <= now + 86_400 + 3600, "{expires} vs {now}");
        assert_eq!(signer.verify(team, m.id, expires, sig, now), Ok(()));
        assert!(signer.verify(Uuid::now_v7(), m.id, expires, sig, now).is_err());

        stop.cancel();
        runner.await.unwrap();
    })
    .await;
}

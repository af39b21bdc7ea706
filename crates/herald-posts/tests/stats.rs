//! The stats collector against the fakes, on both backends: a post published to Mastodon, Bluesky
//! and Telegram gets snapshots where the platform counts (Telegram never again), rounds follow the
//! thinning schedule and stop at the maximum age, a rate limit puts a delivery off until the time
//! asked, a refreshed Bluesky session is stored, a connection that needs re-authorising is left
//! alone, and the series is readable only inside the team.

mod common;

use chrono::{DateTime, Utc};
use common::net;
use herald_accounts::{Accounts, AccountsConfig, Actor, Principal};
use herald_connections::{Connections, NewConnection};
use herald_core::{ErrorCode, TeamRole};
use herald_platforms::Net;
use herald_posts::{CollectReport, DeliveryHandler, NewPost, PostStats, Posts};
use herald_queue::{Queue, Registry, Runner, RunnerConfig};
use herald_store::testing::each_backend;
use herald_store::{Db, Ts, exec, on_read};
use herald_testkit::{Failure, bluesky, mastodon, telegram};
use herald_vault::{MasterKey, Vault};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MAX_AGE: Duration = Duration::from_secs(30 * 86_400);

struct World {
    db: Db,
    accounts: Accounts,
    posts: Posts,
    connections: Connections,
    team: Uuid,
    owner: Principal,
}

impl World {
    async fn new(db: Db, net: Net) -> World {
        let accounts = Accounts::new(db.clone(), Vault::new(&[MasterKey::generate()]), AccountsConfig::default());
        let mut tx = db.begin().await.unwrap();
        let (user, team) = accounts.create_user(&mut tx, "o@example.com", "O", "pw-123456789", false).await.unwrap();
        tx.commit().await.unwrap();
        let connections = Connections::new(accounts.clone(), net);
        let posts = Posts::new(
            accounts.clone(),
            connections.clone(),
            Queue::new(db.clone()),
            herald_media::MediaStore::local(herald_store::testing::scratch_dir("herald-media")),
        );
        let owner = Principal::acting(Some(user.id), team, TeamRole::Owner, "o@example.com");
        World { db, accounts, posts, connections, team, owner }
    }

    async fn connect(&self, platform: &str, credentials: Value, settings: Value) -> Uuid {
        let new = NewConnection { platform: platform.into(), name: None, credentials, settings };
        self.connections.create_in(self.team, &Actor::system(), new).await.unwrap().id
    }

    /// Publishes a post to `targets` with the real queue runner, and waits until it is out.
    async fn publish(&self, targets: &[Uuid]) -> Uuid {
        let new = NewPost::now("How many will like this?", targets);
        let (post, _) = self.posts.create(&self.owner, new, None).await.unwrap();
        let mut registry = Registry::default();
        registry.register(herald_posts::DELIVERY_JOB, DeliveryHandler::new(self.posts.clone()));
        registry.register(herald_posts::EVENT_JOB, herald_posts::EventHandler::new(self.posts.clone()));
        let config = RunnerConfig { poll_interval: Duration::from_millis(50), ..RunnerConfig::default() };
        let stop = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(Queue::new(self.db.clone()), registry, config).run(stop.clone()));
        for _ in 0..400 {
            let v = self.posts.get(self.team, post.id).await.unwrap();
            if v.deliveries.iter().all(|d| d.state.is_final()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        stop.cancel();
        runner.await.unwrap();
        let v = self.posts.get(self.team, post.id).await.unwrap();
        assert!(v.deliveries.iter().all(|d| d.platform_post_id.is_some()), "{v:#?}");
        post.id
    }

    async fn stats(&self, post: Uuid) -> PostStats {
        self.posts.stats(&self.owner, post).await.unwrap()
    }

    async fn collect(&self) -> CollectReport {
        self.posts.collect_stats(MAX_AGE).await.unwrap()
    }

    /// Moves the delivery to `platform` back in time: published `ago`, never fetched.
    async fn published_ago(&self, post: Uuid, platform: &str, ago: chrono::Duration) {
        let id = self.delivery(post, platform).await;
        let mut tx = self.db.begin().await.unwrap();
        exec!(
            tx,
            "UPDATE deliveries SET published_at = $2, stats_next_at = NULL WHERE id = $1",
            id,
            Ts(Utc::now() - ago)
        )
        .unwrap();
        tx.commit().await.unwrap();
    }

    async fn delivery(&self, post: Uuid, platform: &str) -> Uuid {
        self.stats(post).await.deliveries.iter().find(|d| d.platform == platform).unwrap().delivery_id
    }

    async fn next_at(&self, post: Uuid, platform: &str) -> Option<DateTime<Utc>> {
        let id = self.delivery(post, platform).await;
        let t: Option<Ts> =
            on_read!(self.db, c => sqlx::query_scalar("SELECT stats_next_at FROM deliveries WHERE id = $1")
            .bind(id).fetch_one(c).await)
            .unwrap();
        t.map(|t| t.0)
    }

    /// Makes every delivery of `post` due now.
    async fn due_now(&self, post: Uuid) {
        let mut tx = self.db.begin().await.unwrap();
        exec!(
            tx,
            "UPDATE deliveries SET stats_next_at = $2 WHERE post_id = $1 AND stats_next_at < $3",
            post,
            Ts(Utc::now() - chrono::Duration::seconds(1)),
            Ts(beyond_any_schedule())
        )
        .unwrap();
        tx.commit().await.unwrap();
    }
}

/// Later than any schedule reaches, and well before the collector's "never again".
fn beyond_any_schedule() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::days(365 * 100)
}

fn series(stats: &PostStats, platform: &str) -> Vec<Value> {
    let d = stats.deliveries.iter().find(|d| d.platform == platform).unwrap();
    d.snapshots.iter().map(|s| json!(s.metrics)).collect()
}

#[tokio::test]
async fn snapshots_follow_the_schedule_and_stop_where_there_is_nothing_to_count() {
    each_backend(|db| async move {
        let (md, bs, tg) = (mastodon::start().await, bluesky::start().await, telegram::start().await);
        let w = World::new(db, net().with_base("telegram", tg.url.clone())).await;
        let targets = [
            w.connect("mastodon", json!({"access_token": mastodon::TOKEN}), json!({"instance_url": md.url})).await,
            w.connect(
                "bluesky",
                json!({"identifier": bluesky::HANDLE, "app_password": bluesky::PASSWORD}),
                json!({"service": bs.url}),
            )
            .await,
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await,
        ];
        let post = w.publish(&targets).await;
        let status = md.data().statuses[0].id.clone();
        let uri = bs.data().posts()[0].uri();
        md.data().engage(&status, 1, 0, 0);
        bs.data().engage(&uri, bluesky::Engagement { likes: 2, ..Default::default() });

        // The first round takes every new delivery; Telegram has no counts and is done for good.
        let r = w.collect().await;
        assert_eq!((r.due, r.stored, r.unsupported, r.failed), (3, 2, 1, 0), "{r:?}");
        assert!(w.next_at(post, "telegram").await.unwrap() > Utc::now() + chrono::Duration::days(365 * 1000));
        let next = w.next_at(post, "mastodon").await.unwrap() - Utc::now();
        assert!(next > chrono::Duration::minutes(14) && next <= chrono::Duration::minutes(15), "{next}");

        // Nothing is due a moment later.
        assert_eq!(w.collect().await, CollectReport::default());

        // A quarter of an hour on, the counts have grown and the series shows both.
        md.data().engage(&status, 5, 2, 1);
        bs.data().engage(&uri, bluesky::Engagement { likes: 9, reposts: 1, replies: 0, quotes: 1 });
        w.due_now(post).await;
        let r = w.collect().await;
        assert_eq!((r.due, r.stored), (2, 2), "{r:?}");
        let s = w.stats(post).await;
        assert_eq!(
            series(&s, "mastodon"),
            vec![
                json!({"favourites": 1, "reblogs": 0, "replies": 0}),
                json!({"favourites": 5, "reblogs": 2, "replies": 1})
            ]
        );
        assert_eq!(series(&s, "bluesky")[1], json!({"likes": 9, "reposts": 1, "replies": 0, "quotes": 1}));
        assert!(series(&s, "telegram").is_empty());
        let times: Vec<_> = s.deliveries[0].snapshots.iter().map(|x| x.fetched_at).collect();
        assert!(times.windows(2).all(|p| p[0] <= p[1]), "oldest first");

        // Three days old: daily. Just under the maximum age: one last fetch, then never again.
        let days = |d: f64| chrono::Duration::minutes((d * 1440.0) as i64);
        w.published_ago(post, "mastodon", days(3.0)).await;
        assert_eq!(w.collect().await.stored, 1);
        let next = w.next_at(post, "mastodon").await.unwrap() - Utc::now();
        assert!(next > chrono::Duration::hours(23), "{next}");
        w.published_ago(post, "mastodon", days(29.5)).await;
        assert_eq!(w.collect().await.stored, 1);
        assert!(w.next_at(post, "mastodon").await.unwrap() > beyond_any_schedule());
        // Past the maximum age, a delivery is not even claimed.
        w.published_ago(post, "bluesky", days(31.0)).await;
        assert_eq!(w.collect().await, CollectReport::default());
        assert_eq!(series(&w.stats(post).await, "mastodon").len(), 4);
    })
    .await;
}

#[tokio::test]
async fn rate_limits_wait_sessions_are_kept_and_reauth_is_left_alone() {
    each_backend(|db| async move {
        let (md, bs) = (mastodon::start().await, bluesky::start().await);
        let w = World::new(db, net()).await;
        let md_conn =
            w.connect("mastodon", json!({"access_token": mastodon::TOKEN}), json!({"instance_url": md.url})).await;
        let bs_conn = w
            .connect(
                "bluesky",
                json!({"identifier": bluesky::HANDLE, "app_password": bluesky::PASSWORD}),
                json!({"service": bs.url}),
            )
            .await;
        let post = w.publish(&[md_conn, bs_conn]).await;

        // Mastodon asks to wait two minutes; Bluesky's session expired and is refreshed.
        md.fail_next_on("/api/v1/statuses/", Failure::RateLimited { retry_after_secs: 120 });
        bs.data().expire_access_tokens();
        let before = w.connections.load(w.team, bs_conn).await.unwrap().connection.credentials;
        let r = w.collect().await;
        assert_eq!((r.due, r.stored, r.rate_limited), (2, 1, 1), "{r:?}");
        let wait = w.next_at(post, "mastodon").await.unwrap() - Utc::now();
        assert!(wait > chrono::Duration::seconds(100) && wait <= chrono::Duration::seconds(121), "{wait}");
        let after = w.connections.load(w.team, bs_conn).await.unwrap().connection.credentials;
        assert_ne!(after.0["access_jwt"], before.0["access_jwt"], "the refreshed session is stored");
        assert_eq!(bs.requests_to("createSession").len(), 1, "only the first publish logged in");

        // A failure is logged and tried again at the next time; the schedule goes on.
        w.due_now(post).await;
        md.fail_next_on("/api/v1/statuses/", Failure::ServerError(502));
        let r = w.collect().await;
        assert_eq!((r.stored, r.failed), (1, 1), "{r:?}");
        assert!(w.next_at(post, "mastodon").await.unwrap() < Utc::now() + chrono::Duration::minutes(16));

        // A connection that needs re-authorising is not asked.
        let mut tx = w.db.begin().await.unwrap();
        exec!(tx, "UPDATE connections SET status = 'needs_reauth' WHERE id = $1", md_conn).unwrap();
        tx.commit().await.unwrap();
        w.due_now(post).await;
        let asked = md.requests().len();
        let r = w.collect().await;
        assert_eq!((r.skipped, r.stored), (1, 1), "{r:?}");
        assert_eq!(md.requests().len(), asked);

        // Another team's member, and a viewer of this one.
        let mut tx = w.db.begin().await.unwrap();
        let (other, other_team) =
            w.accounts.create_user(&mut tx, "x@example.com", "X", "pw-123456789", false).await.unwrap();
        tx.commit().await.unwrap();
        let outsider = Principal::acting(Some(other.id), other_team, TeamRole::Owner, "x@example.com");
        let e = w.posts.stats(&outsider, post).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        let viewer = Principal::acting(None, w.team, TeamRole::Viewer, "viewer");
        assert_eq!(w.posts.stats(&viewer, post).await.unwrap().deliveries.len(), 2);
    })
    .await;
}

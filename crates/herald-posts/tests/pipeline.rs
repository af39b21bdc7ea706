//! The delivery pipeline with the real queue runner, against the platform fakes (and the real
//! Synapse and Bluesky PDS when CI has them): fan-out to five platforms at once, scheduling in
//! local time across a DST change, cancelling, per-target validation, idempotent creates, threads
//! that continue from the failed part, unknown outcomes, and auth failures that wait for a fix.

mod common;

use chrono::Utc;
use common::net;
use herald_accounts::{Accounts, AccountsConfig, Actor, Principal};
use herald_connections::{Connections, NewConnection};
use herald_core::TeamRole;
use herald_http::HttpClient;
use herald_platforms::Net;
use herald_posts::{DeliveryHandler, DeliveryState, NewPost, PostState, PostUpdate, PostView, Posts, Thread};
use herald_queue::{Queue, Registry, Runner, RunnerConfig};
use herald_store::Db;
use herald_store::testing::each_backend;
use herald_testkit::{Failure, bluesky, discord, mastodon, matrix, telegram};
use herald_vault::{MasterKey, Vault};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct World {
    posts: Posts,
    connections: Connections,
    team: Uuid,
    owner: Principal,
    stop: CancellationToken,
    runner: Option<tokio::task::JoinHandle<()>>,
}

impl World {
    async fn new(db: Db, net: Net) -> World {
        let accounts = Accounts::new(db.clone(), Vault::new(&[MasterKey::generate()]), AccountsConfig::default());
        let mut tx = db.begin().await.unwrap();
        let (user, team) = accounts.create_user(&mut tx, "o@example.com", "O", "pw-123456789", false).await.unwrap();
        tx.commit().await.unwrap();
        let connections = Connections::new(accounts.clone(), net);
        let queue = Queue::new(db.clone());
        let posts = Posts::new(
            accounts,
            connections.clone(),
            queue.clone(),
            herald_media::MediaStore::local(herald_store::testing::scratch_dir("herald-media")),
        );
        let mut registry = Registry::default();
        registry.register(herald_posts::DELIVERY_JOB, DeliveryHandler::new(posts.clone()));
        registry.register(herald_posts::EVENT_JOB, herald_posts::EventHandler::new(posts.clone()));
        let config = RunnerConfig { poll_interval: Duration::from_millis(50), ..RunnerConfig::default() };
        let stop = CancellationToken::new();
        let runner = Some(tokio::spawn(Runner::new(queue, registry, config).run(stop.clone())));
        let owner = Principal::acting(Some(user.id), team, TeamRole::Owner, "o@example.com");
        World { posts, connections, team, owner, stop, runner }
    }

    async fn connect(&self, platform: &str, credentials: Value, settings: Value) -> Uuid {
        let new = NewConnection { platform: platform.into(), name: None, credentials, settings };
        self.connections
            .create_in(self.team, &Actor::system(), new)
            .await
            .unwrap_or_else(|e| panic!("{platform}: {e}"))
            .id
    }

    async fn wait(&self, post: Uuid, done: impl Fn(&PostView) -> bool) -> PostView {
        for _ in 0..2400 {
            let v = self.posts.get(self.team, post).await.unwrap();
            if done(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("post never got there: {:#?}", self.posts.get(self.team, post).await.unwrap());
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(r) = self.runner.take() {
            r.await.unwrap();
        }
    }
}

fn post(text: &str, targets: &[Uuid]) -> NewPost {
    NewPost::now(text, targets)
}

/// Whether `cond` holds within 10 s, polled every 25 ms.
async fn eventually(cond: impl Fn() -> bool) -> bool {
    for _ in 0..400 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    cond()
}

fn finished(v: &PostView) -> bool {
    v.deliveries.iter().all(|d| d.state.is_final())
}

#[tokio::test]
async fn one_post_reaches_five_platforms_exactly_once() {
    each_backend(|db| async move {
        let (tg, dc, md, bs, mx) = (
            telegram::start().await,
            discord::start().await,
            mastodon::start().await,
            bluesky::start().await,
            matrix::start().await,
        );
        let n = net().with_base("telegram", tg.url.clone()).with_base("discord", format!("{}/api/v10", dc.url));
        let w = World::new(db, n).await;
        let mut targets = vec![
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await,
            w.connect("discord", json!({"bot_token": discord::BOT_TOKEN}), json!({"channel_id": discord::CHANNEL_ID}))
                .await,
            w.connect("mastodon", json!({"access_token": mastodon::TOKEN}), json!({"instance_url": md.url})).await,
            w.connect(
                "bluesky",
                json!({"identifier": bluesky::HANDLE, "app_password": bluesky::PASSWORD}),
                json!({"service": bs.url}),
            )
            .await,
            w.connect(
                "matrix",
                json!({"access_token": matrix::TOKEN}),
                json!({"homeserver": mx.url, "room_id": matrix::ROOM}),
            )
            .await,
        ];
        // The real servers too, where CI runs them.
        let real_matrix = real_matrix_connection(&w).await;
        targets.extend(real_matrix.as_ref().map(|(id, _, _)| *id));
        let real_pds = real_bluesky_connection(&w).await;
        targets.extend(real_pds.as_ref().map(|(id, _)| *id));

        let text = format!("Fan-out {} to every platform", Uuid::now_v7().simple());
        let mut new = post(&text, &targets);
        new.link = Some("https://example.com/article".into());
        let (created, replayed) = w.posts.create(&w.owner, new, None).await.unwrap();
        assert!(!replayed);
        assert_eq!(created.deliveries.len(), targets.len());
        let done = w.wait(created.id, finished).await;
        assert_eq!(done.state, PostState::Published, "{done:#?}");
        for d in &done.deliveries {
            assert_eq!(d.state, DeliveryState::Published, "{d:#?}");
            assert!(d.platform_post_id.is_some(), "{d:#?}");
            assert_eq!(d.attempt_log.len(), 1, "{d:#?}");
            assert_eq!(d.attempt_log[0].outcome, "published");
        }
        let url = |p: &str| done.deliveries.iter().find(|d| d.platform == p).unwrap().platform_url.clone();
        assert!(url("telegram").unwrap().starts_with("https://t.me/herald_news/"));
        assert!(url("mastodon").is_some() && url("bluesky").unwrap().contains("bsky.app/profile/"));
        assert!(url("matrix").unwrap().starts_with("https://matrix.to/#/"));

        // Each fake got exactly one post, with the text (and the link where it is appended).
        let with_link = format!("{text}\n\nhttps://example.com/article");
        let tg_msgs: Vec<_> = tg.data().messages.iter().filter_map(|m| m.text.clone()).collect();
        assert_eq!(tg_msgs, vec![with_link.clone()]);
        let dc_msgs: Vec<_> = dc.data().messages.iter().map(|m| m.content.clone()).collect();
        assert_eq!(dc_msgs, vec![with_link.clone()]);
        let md_msgs: Vec<_> = md.data().statuses.iter().map(|s| s.text.clone()).collect();
        assert_eq!(md_msgs, vec![with_link.clone()]);
        let bs_posts = bs.data().posts();
        assert_eq!(bs_posts.len(), 1);
        assert_eq!(bs_posts[0].value["text"], text.as_str(), "Bluesky carries the link as a card");
        assert_eq!(bs_posts[0].value["embed"]["external"]["uri"], "https://example.com/article");
        let mx_msgs = mx.data().messages(matrix::ROOM);
        assert_eq!(mx_msgs.len(), 1);
        assert_eq!(mx_msgs[0].content["body"], with_link.as_str());
        // The idempotency keys the platforms saw are the stored ones.
        let md_key = md.data().statuses[0].idempotency_key.clone().unwrap();
        assert!(md_key.starts_with("herald-"), "{md_key}");

        if let Some((_, base, token)) = real_matrix {
            let room = real_room(&base);
            let http = HttpClient::trusted().unwrap();
            let r: Value = http
                .get(&format!("{base}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", urlencode(&room)))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let hits =
                r["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == with_link.as_str()).count();
            assert_eq!(hits, 1, "the real Synapse holds the post once");
        }
        if let Some((real, pds)) = real_pds {
            // The fake's account is a `.test` handle too: pick the real connection's delivery.
            let d = done.deliveries.iter().find(|d| d.connection_id == real).unwrap();
            let uri = d.platform_post_id.clone().unwrap();
            let parts: Vec<&str> = uri.trim_start_matches("at://").split('/').collect();
            let http = HttpClient::trusted().unwrap();
            let r: Value = http
                .get(&format!(
                    "{pds}/xrpc/com.atproto.repo.getRecord?repo={}&collection={}&rkey={}",
                    parts[0], parts[1], parts[2]
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(r["value"]["text"], text.as_str(), "{r}");
        }
        w.stop().await;
    })
    .await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

static ROOMS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// The room made for this run (each backend's run makes its own).
fn real_room(base: &str) -> String {
    ROOMS.lock().unwrap().iter().rev().find(|(b, _)| b == base).unwrap().1.clone()
}

/// A connection to the real Synapse (a fresh room), when `HERALD_TEST_MATRIX_URL` is set.
async fn real_matrix_connection(w: &World) -> Option<(Uuid, String, String)> {
    let base = peer("HERALD_TEST_MATRIX_URL")?;
    let user = std::env::var("HERALD_TEST_MATRIX_USER").unwrap();
    let password = std::env::var("HERALD_TEST_MATRIX_PASSWORD").unwrap();
    let http = HttpClient::trusted().unwrap();
    let login: Value = http
        .post(&format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, "device_id": "PIPELINE"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_string();
    let room: Value = http
        .post(&format!("{base}/_matrix/client/v3/createRoom"))
        .bearer_auth(&token)
        .json(&json!({"name": "pipeline", "preset": "private_chat"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = room["room_id"].as_str().unwrap().to_string();
    ROOMS.lock().unwrap().push((base.clone(), room.clone()));
    let id = w
        .connect("matrix", json!({"user": user, "password": password}), json!({"homeserver": base, "room_id": room}))
        .await;
    Some((id, base, token))
}

/// A connection to the real Bluesky PDS (a fresh account), when `HERALD_TEST_BLUESKY_PDS` is set.
async fn real_bluesky_connection(w: &World) -> Option<(Uuid, String)> {
    let pds = peer("HERALD_TEST_BLUESKY_PDS")?;
    let handle = format!("p{}.test", &Uuid::now_v7().simple().to_string()[20..]);
    let http = HttpClient::trusted().unwrap();
    let r = http
        .post(&format!("{pds}/xrpc/com.atproto.server.createAccount"))
        .json(&json!({"handle": handle, "email": format!("{handle}@test.invalid"), "password": "pipeline-pass"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let id = w
        .connect("bluesky", json!({"identifier": handle, "app_password": "pipeline-pass"}), json!({"service": pds}))
        .await;
    Some((id, pds))
}

fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set, and CI must run the real-peer tests")
        }
        _ => {
            eprintln!("real peer skipped: {var} is not set");
            None
        }
    }
}

#[tokio::test]
async fn local_times_cross_dst_and_a_cancelled_post_sends_nothing() {
    each_backend(|db| async move {
        let tg = telegram::start().await;
        let w = World::new(db.clone(), net().with_base("telegram", tg.url.clone())).await;
        let tg_conn =
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE teams SET timezone = 'Europe/Berlin' WHERE id = $1", w.team).unwrap();
        tx.commit().await.unwrap();

        // 09:00 in Berlin the day before and the day of the spring change are 08:00 and 07:00 UTC.
        let year = Utc::now().format("%Y").to_string().parse::<i32>().unwrap() + 1;
        let change = last_sunday_of_march(year);
        let mut before = post("before the change", &[tg_conn]);
        before.schedule_at = Some(format!("{}T09:00", change - chrono::Duration::days(1)));
        let mut after = post("after the change", &[tg_conn]);
        after.schedule_at = Some(format!("{change}T09:00"));
        let (b, _) = w.posts.create(&w.owner, before, None).await.unwrap();
        let (a, _) = w.posts.create(&w.owner, after, None).await.unwrap();
        assert_eq!(b.schedule_at.unwrap().format("%H:%M").to_string(), "08:00");
        assert_eq!(a.schedule_at.unwrap().format("%H:%M").to_string(), "07:00");
        assert_eq!(a.state, PostState::Scheduled);
        assert_eq!(a.deliveries[0].state, DeliveryState::Scheduled);
        // A wall-clock time that does not exist that night is refused, not shifted.
        let mut gap = post("in the gap", &[tg_conn]);
        gap.schedule_at = Some(format!("{change}T02:30"));
        let e = w.posts.create(&w.owner, gap, None).await.unwrap_err();
        assert!(e.message.contains("does not exist"), "{e}");
        // An explicit zone wins over the team's.
        let mut ny = post("new york", &[tg_conn]);
        ny.schedule_at = Some(format!("{year}-07-01T09:00"));
        ny.timezone = Some("America/New_York".into());
        let (ny, _) = w.posts.create(&w.owner, ny, None).await.unwrap();
        assert_eq!(ny.schedule_at.unwrap().format("%H:%M").to_string(), "13:00");
        assert_eq!(ny.timezone.as_deref(), Some("America/New_York"));

        // Cancel before the time: the job goes, nothing is ever sent.
        let cancelled = w.posts.cancel(&w.owner, a.id).await.unwrap();
        assert_eq!(cancelled.state, PostState::Cancelled);
        assert_eq!(cancelled.deliveries[0].state, DeliveryState::Cancelled);
        // Reschedule one to a moment from now: it goes out then, once.
        let soon = (Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
        let moved =
            w.posts.update(&w.owner, b.id, PostUpdate { schedule_at: Some(soon), ..Default::default() }).await.unwrap();
        assert_eq!(moved.state, PostState::Scheduled);
        let done = w.wait(b.id, finished).await;
        assert_eq!(done.state, PostState::Published);
        let sent: Vec<_> = tg.data().messages.iter().filter_map(|m| m.text.clone()).collect();
        assert_eq!(sent, vec!["before the change".to_string()], "the cancelled one was never sent");
        // A published post can no longer be changed.
        let e = w
            .posts
            .update(&w.owner, b.id, PostUpdate { text: Some("x".into()), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(e.code, herald_core::ErrorCode::Conflict);
        w.stop().await;
    })
    .await;
}

fn last_sunday_of_march(year: i32) -> chrono::NaiveDate {
    use chrono::Datelike;
    let mut d = chrono::NaiveDate::from_ymd_opt(year, 3, 31).unwrap();
    while d.weekday() != chrono::Weekday::Sun {
        d = d.pred_opt().unwrap();
    }
    d
}

/// Posts created at the same moment are written in one transaction; each still gets its own
/// answer: the ones over the monthly quota are refused while the others are made, and racing
/// requests with one Idempotency-Key make one post.
#[tokio::test]
async fn posts_created_at_once_are_written_together_and_answered_alone() {
    each_backend(|db| async move {
        let tg = telegram::start().await;
        let w = World::new(db.clone(), net().with_base("telegram", tg.url.clone())).await;
        let conn =
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE teams SET quota_posts_month = $2 WHERE id = $1", w.team, 12i64).unwrap();
        tx.commit().await.unwrap();

        // Twenty distinct posts at once against a quota of twelve.
        let results = futures::future::join_all(
            (0..20).map(|i| w.posts.create(&w.owner, post(&format!("at once {i}"), &[conn]), None)),
        )
        .await;
        let made: Vec<&PostView> = results.iter().filter_map(|r| r.as_ref().ok()).map(|(v, _)| v).collect();
        let refused: Vec<&herald_core::Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(made.len(), 12, "{refused:?}");
        assert!(refused.iter().all(|e| e.code == herald_core::ErrorCode::QuotaExceeded), "{refused:?}");
        assert_eq!(w.posts.list(w.team, &Default::default()).await.unwrap().0.len(), 12);
        for v in &made {
            assert_eq!(v.deliveries.len(), 1);
            let done = w.wait(v.id, finished).await;
            assert_eq!(done.state, PostState::Published, "{done:#?}");
        }
        assert_eq!(tg.data().messages.len(), 12, "each made post was sent once");

        // Eight racing requests with one key (one of them may come back as a replay of the first).
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE teams SET quota_posts_month = NULL WHERE id = $1", w.team).unwrap();
        tx.commit().await.unwrap();
        let same = post("one key", &[conn]);
        let results =
            futures::future::join_all((0..8).map(|_| w.posts.create(&w.owner, same.clone(), Some("the-same-key"))))
                .await;
        let ids: Vec<Uuid> = results.iter().map(|r| r.as_ref().expect("every racer gets the post").0.id).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(results.iter().filter(|r| !r.as_ref().unwrap().1).count(), 1, "one made it, the rest replayed");
        assert_eq!(w.posts.list(w.team, &Default::default()).await.unwrap().0.len(), 13);
        let done = w.wait(ids[0], finished).await;
        assert_eq!(done.state, PostState::Published);
        assert_eq!(tg.data().messages.iter().filter(|m| m.text.as_deref() == Some("one key")).count(), 1);
        w.stop().await;
    })
    .await;
}

#[tokio::test]
async fn validation_idempotent_creates_threads_and_failures() {
    each_backend(|db| async move {
        let (tg, md) = (telegram::start().await, mastodon::start().await);
        let w = World::new(db, net().with_base("telegram", tg.url.clone())).await;
        let tg_conn =
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
        let md_conn =
            w.connect("mastodon", json!({"access_token": mastodon::TOKEN}), json!({"instance_url": md.url})).await;

        // Per-target violations, by each platform's own counting, before anything is stored.
        let long = "word ".repeat(200); // 1000 characters: over Mastodon's 500, under Telegram's 4096
        let e = w.posts.create(&w.owner, post(&long, &[tg_conn, md_conn]), None).await.unwrap_err();
        assert_eq!(e.code, herald_core::ErrorCode::ValidationFailed);
        let targets = e.details.as_ref().unwrap()["targets"].as_array().unwrap().clone();
        assert_eq!(targets.len(), 1, "{targets:?}");
        assert_eq!(targets[0]["platform"], "mastodon");
        assert_eq!(targets[0]["violations"][0]["rule"], "text_length");
        assert_eq!(targets[0]["violations"][0]["limit"], 500);
        assert!(w.posts.list(w.team, &Default::default()).await.unwrap().0.is_empty());

        // With thread splitting it is published as a numbered thread, continuing after a failure.
        let mut thread = post(&long, &[md_conn]);
        thread.thread = Thread { split: true, numbering: true };
        // The first status goes through; the second fails once with a 500, and the retry continues
        // from part 2 without sending part 1 again.
        md.fail_next_on("/api/v1/statuses", Failure::Hang(Duration::ZERO));
        md.fail_next_on("/api/v1/statuses", Failure::ServerError(500));
        let key = "create-once";
        let (t, _) = w.posts.create(&w.owner, thread.clone(), Some(key)).await.unwrap();
        let (again, replayed) = w.posts.create(&w.owner, thread.clone(), Some(key)).await.unwrap();
        assert!(replayed);
        assert_eq!(again.id, t.id, "a retried create answers the same post");
        let mut other = thread.clone();
        other.text = "different".into();
        assert_eq!(
            w.posts.create(&w.owner, other, Some(key)).await.unwrap_err().code,
            herald_core::ErrorCode::Conflict
        );
        let done = w.wait(t.id, finished).await;
        assert_eq!(done.state, PostState::Published, "{done:#?}");
        let statuses = md.data().statuses.clone();
        assert!(statuses.len() >= 3, "{} parts", statuses.len());
        for (i, s) in statuses.iter().enumerate() {
            assert!(s.text.ends_with(&format!("({}/{})", i + 1, statuses.len())), "{}", s.text);
            assert!(s.text.chars().count() <= 500);
            if i > 0 {
                assert_eq!(
                    s.in_reply_to_id.as_deref(),
                    Some(statuses[i - 1].id.as_str()),
                    "part {i} answers the one before"
                );
            }
        }
        assert_eq!(done.deliveries[0].parts.as_array().unwrap().len(), statuses.len());

        // Telegram loses an answer: the delivery is unconfirmed and not resent; resolving settles it.
        tg.fail_next_on("sendMessage", Failure::AnswerLate(Duration::from_secs(3)));
        let (lost, _) = w.posts.create(&w.owner, post("lost answer", &[tg_conn]), None).await.unwrap();
        let done = w.wait(lost.id, finished).await;
        let d = &done.deliveries[0];
        assert_eq!(d.state, DeliveryState::Unconfirmed, "{d:#?}");
        assert_eq!(d.attempt_log.last().unwrap().outcome, "unknown_outcome");
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert_eq!(tg.data().messages.iter().filter(|m| m.text.as_deref() == Some("lost answer")).count(), 1);
        let e = w.posts.retry(&w.owner, d.id, false).await.unwrap_err();
        assert!(e.message.contains("confirm_not_posted"), "{e}");
        let resolved = w.posts.resolve(&w.owner, d.id, true, Some("https://t.me/herald_news/1".into())).await.unwrap();
        assert_eq!(resolved.state, PostState::Published);

        // The platform rejects the content: failed with its words; a retry after a fix works.
        tg.fail_next_on("sendMessage", Failure::Named("chat_not_found"));
        let (bad, _) = w.posts.create(&w.owner, post("to nowhere", &[tg_conn]), None).await.unwrap();
        let done = w.wait(bad.id, finished).await;
        assert_eq!(done.state, PostState::Failed);
        assert_eq!(done.deliveries[0].last_error_class.as_deref(), Some("invalid"));
        let retried = w.posts.retry(&w.owner, done.deliveries[0].id, false).await.unwrap();
        assert_ne!(retried.deliveries[0].state, DeliveryState::Failed);
        let done = w.wait(bad.id, finished).await;
        assert_eq!(done.state, PostState::Published, "{done:#?}");

        // The token is revoked: the delivery waits (not failed) and the connection needs re-auth.
        let new_token = "123456:AAHerald-new-token_0123456789abcdefghij";
        tg.data().token = new_token.into();
        let (waits, _) = w.posts.create(&w.owner, post("after the fix", &[tg_conn]), None).await.unwrap();
        // The attempt and the state commit together, and `get` reads them from one snapshot.
        let v = w.wait(waits.id, |v| v.deliveries[0].attempt_log.iter().any(|a| a.outcome == "auth")).await;
        assert_eq!(v.deliveries[0].state, DeliveryState::Pending);
        assert_eq!(w.connections.get(w.team, tg_conn).await.unwrap().status, herald_connections::Status::NeedsReauth);

        // A create checks its targets against the team's connections as read up to a second ago;
        // one deleted through this process is gone for the very next create.
        let extra =
            w.connect("mastodon", json!({"access_token": mastodon::TOKEN}), json!({"instance_url": md.url})).await;
        let mut draft = post("a draft", &[extra]);
        draft.draft = true;
        w.posts.create(&w.owner, draft.clone(), None).await.unwrap();
        w.connections.delete_in(w.team, &Actor::system(), extra).await.unwrap();
        let e = w.posts.create(&w.owner, draft, None).await.unwrap_err();
        assert_eq!(e.code, herald_core::ErrorCode::ValidationFailed, "{e}");
        assert!(e.message.contains("no connection") || e.to_string().contains("no connection"), "{e:?}");
        w.stop().await;
    })
    .await;
}

#[tokio::test]
async fn media_from_the_library_reach_the_platform() {
    each_backend(|db| async move {
        let tg = telegram::start().await;
        let w = World::new(db, net().with_base("telegram", tg.url.clone())).await;
        let tg_conn =
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x06\0\0\0".to_vec();
        png.resize(4000, 7);
        let chunks = futures::stream::iter(
            png.chunks(1000).map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
        );
        let m = w.posts.upload(&w.owner, "dot.png", Some("a dot".into()), chunks, 1 << 20).await.unwrap();
        assert_eq!((m.mime.as_str(), m.width, m.height), ("image/png", Some(16), Some(16)));
        let mut p = post("a picture", &[tg_conn]);
        p.media = vec![m.id];
        let (created, _) = w.posts.create(&w.owner, p, None).await.unwrap();
        let done = w.wait(created.id, finished).await;
        assert_eq!(done.state, PostState::Published, "{done:#?}");
        let sent = tg.data().messages.clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].method, "sendPhoto");
        assert_eq!(sent[0].upload.as_ref().unwrap().bytes.as_ref(), png.as_slice(), "the stored bytes went out");
        w.stop().await;
    })
    .await;
}

#[tokio::test]
async fn failures_reach_the_team_as_signed_events_and_notifications() {
    each_backend(|db| async move {
        let (tg, hooks) = (telegram::start().await, herald_testkit::webhook::start_with(None).await);
        let w = World::new(db, net().with_base("telegram", tg.url.clone())).await;
        let tg_conn =
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
        let endpoint = w
            .posts
            .create_endpoint(
                &w.owner,
                herald_posts::NewEndpoint { url: format!("{}/events", hooks.url), events: vec![] },
            )
            .await
            .unwrap();
        // The receiver checks the signatures with the secret it was given once.
        hooks.data().secret = endpoint.secret.clone();
        let filtered = w
            .posts
            .create_endpoint(
                &w.owner,
                herald_posts::NewEndpoint {
                    url: format!("{}/only-failures", hooks.url),
                    events: vec!["post.failed".into()],
                },
            )
            .await
            .unwrap();
        assert!(filtered.secret.is_some());
        hooks.data().secret = None; // two secrets now: accept both, checked below by hand

        tg.fail_next_on("sendMessage", Failure::Named("chat_not_found"));
        let (p, _) = w.posts.create(&w.owner, post("doomed", &[tg_conn]), None).await.unwrap();
        w.wait(p.id, finished).await;
        let mut types = Vec::new();
        for _ in 0..400 {
            types = hooks
                .data()
                .deliveries
                .iter()
                .map(|d| (d.path.clone(), d.body["type"].as_str().unwrap_or("").to_string()))
                .collect::<Vec<_>>();
            if types.len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let all: Vec<&str> = types.iter().filter(|(p, _)| p == "/events").map(|(_, t)| t.as_str()).collect();
        for t in ["post.created", "delivery.failed", "post.failed"] {
            assert!(all.contains(&t), "{t} missing from {types:?}");
        }
        let only: Vec<&str> = types.iter().filter(|(p, _)| p == "/only-failures").map(|(_, t)| t.as_str()).collect();
        assert_eq!(only, vec!["post.failed"], "a filtered endpoint gets only its events");
        // Each event is signed with its endpoint's secret.
        for d in hooks.data().deliveries.iter() {
            let secret = if d.path == "/events" { endpoint.secret.clone() } else { filtered.secret.clone() };
            herald_testkit::webhook::check(&secret.unwrap(), &d.headers, &d.raw, chrono::Utc::now().timestamp(), 300)
                .unwrap();
            assert!(d.id.starts_with("evt_"));
        }
        let notes = w.posts.notifications(w.team, true).await.unwrap();
        let kinds: Vec<&str> = notes.iter().map(|n| n.kind.as_str()).collect();
        assert!(kinds.contains(&"delivery.failed") && kinds.contains(&"post.failed"), "{kinds:?}");
        w.posts.mark_read(&w.owner, notes[0].id).await.unwrap();
        assert_eq!(w.posts.notifications(w.team, true).await.unwrap().len(), notes.len() - 1);

        // A team's endpoints are kept for a second between posts (read for `post.created`);
        // adding or deleting one through this process applies to the very next post all the same
        // (and a job for a deleted endpoint finds it gone and sends nothing).
        let created_at = |path: &str| {
            hooks.data().deliveries.iter().filter(|d| d.path == path && d.body["type"] == "post.created").count()
        };
        let wait_created = |n: usize| async move {
            let reached = eventually(|| created_at("/events") >= n).await;
            assert!(reached, "post.created reached /events {} times, not {n}", created_at("/events"));
        };
        let later = w
            .posts
            .create_endpoint(
                &w.owner,
                herald_posts::NewEndpoint { url: format!("{}/later", hooks.url), events: vec![] },
            )
            .await
            .unwrap();
        let (second, _) = w.posts.create(&w.owner, post("second", &[tg_conn]), None).await.unwrap();
        wait_created(2).await;
        w.posts.delete_endpoint(&w.owner, later.id).await.unwrap();
        let (third, _) = w.posts.create(&w.owner, post("third", &[tg_conn]), None).await.unwrap();
        wait_created(3).await;
        assert_eq!(
            created_at("/later"),
            1,
            "an endpoint added a moment ago hears of the next post, and not after its deletion"
        );

        // A delivery recorded with others (the usual way) tells the endpoints its post published.
        for p in [second.id, third.id] {
            assert_eq!(w.wait(p, finished).await.state, PostState::Published);
            let heard = || {
                hooks.data().deliveries.iter().any(|d| {
                    d.path == "/events" && d.body["type"] == "post.published" && d.body["data"]["post"] == json!(p)
                })
            };
            assert!(eventually(heard).await, "post.published for {p} reached /events");
        }
        w.stop().await;
    })
    .await;
}

#[tokio::test]
async fn late_deliveries_follow_the_team_policy_and_the_sweep_settles_orphans() {
    each_backend(|db| async move {
        let tg = telegram::start().await;
        let w = World::new(db.clone(), net().with_base("telegram", tg.url.clone())).await;
        let tg_conn =
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE teams SET late_limit_secs = 600 WHERE id = $1", w.team).unwrap();
        tx.commit().await.unwrap();

        // A delivery that comes due two hours after its time (the workers were down) is not sent.
        let mut late = post("yesterday's news", &[tg_conn]);
        late.schedule_at = Some("2099-01-01T00:00:00Z".into());
        let (p, _) = w.posts.create(&w.owner, late, None).await.unwrap();
        let d = p.deliveries[0].id;
        let job: Uuid =
            herald_store::on_read!(db, c => sqlx::query_scalar("SELECT job_id FROM deliveries WHERE id = $1")
            .bind(d).fetch_one(c).await)
            .unwrap();
        let two_hours_ago = herald_store::Ts(Utc::now() - chrono::Duration::hours(2));
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE deliveries SET run_at = $2 WHERE id = $1", d, two_hours_ago).unwrap();
        herald_store::exec!(tx, "UPDATE posts SET schedule_at = $2 WHERE id = $1", p.id, two_hours_ago).unwrap();
        herald_store::exec!(tx, "UPDATE jobs SET run_at = $2 WHERE id = $1", job, herald_store::Ts::now()).unwrap();
        tx.commit().await.unwrap();
        let done = w.wait(p.id, finished).await;
        assert_eq!(done.deliveries[0].state, DeliveryState::Failed, "{done:#?}");
        assert_eq!(done.deliveries[0].attempt_log[0].code.as_deref(), Some("too_late"));
        assert!(tg.requests_to("sendMessage").is_empty(), "nothing was sent");

        // A delivery whose job was cancelled under it, and one whose job died mid-call, are settled.
        let mut a = post("orphan", &[tg_conn]);
        a.schedule_at = Some("2099-01-01T00:00:00Z".into());
        let (a, _) = w.posts.create(&w.owner, a, None).await.unwrap();
        let mut b = post("died mid-call", &[tg_conn]);
        b.schedule_at = Some("2099-01-01T00:00:00Z".into());
        let (b, _) = w.posts.create(&w.owner, b, None).await.unwrap();
        // A delivery past its time (its job still waits for 2099, so nothing runs it) is overdue.
        assert_eq!(w.posts.sweep(Duration::from_secs(300)).await.unwrap().overdue, 0);
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE deliveries SET run_at = $2 WHERE id = $1", a.deliveries[0].id, two_hours_ago)
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(w.posts.sweep(Duration::from_secs(300)).await.unwrap().overdue, 1);
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(
            tx,
            "UPDATE jobs SET state = 'cancelled' WHERE id = (SELECT job_id FROM deliveries WHERE id = $1)",
            a.deliveries[0].id
        )
        .unwrap();
        herald_store::exec!(
            tx,
            "UPDATE jobs SET state = 'dead' WHERE id = (SELECT job_id FROM deliveries WHERE id = $1)",
            b.deliveries[0].id
        )
        .unwrap();
        herald_store::exec!(
            tx,
            "UPDATE deliveries SET state = 'publishing', call_started_at = $2 WHERE id = $1",
            b.deliveries[0].id,
            herald_store::Ts::now()
        )
        .unwrap();
        tx.commit().await.unwrap();
        let sweep = w.posts.sweep(Duration::from_secs(300)).await.unwrap();
        assert_eq!(sweep.settled, 2, "{sweep:?}");
        let a = w.posts.get(w.team, a.id).await.unwrap();
        let b = w.posts.get(w.team, b.id).await.unwrap();
        assert_eq!(a.deliveries[0].state, DeliveryState::Failed);
        assert_eq!(b.deliveries[0].state, DeliveryState::Unconfirmed);
        let again = w.posts.sweep(Duration::from_secs(300)).await.unwrap();
        assert_eq!((again.settled, again.overdue), (0, 0), "settled once, and a failed delivery is not overdue");
        w.stop().await;
    })
    .await;
}

#[tokio::test]
async fn next_slot_takes_free_weekly_slots_and_repeating_posts_schedule_their_next_one() {
    each_backend(|db| async move {
        use chrono::{Datelike, Timelike};
        use herald_posts::{Slot, SlotsInput};
        let tg = telegram::start().await;
        let w = World::new(db.clone(), net().with_base("telegram", tg.url.clone())).await;
        let tg_conn =
            w.connect("telegram", json!({"bot_token": telegram::TOKEN}), json!({"chat_id": telegram::CHANNEL})).await;
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE teams SET timezone = 'Europe/Berlin' WHERE id = $1", w.team).unwrap();
        tx.commit().await.unwrap();
        let slotted = |text: &str| NewPost { schedule_at: Some("next_slot".into()), ..post(text, &[tg_conn]) };

        // No slots yet: a clear refusal that says how to add them.
        let e = w.posts.create(&w.owner, slotted("nowhere"), None).await.unwrap_err();
        assert_eq!(e.code, herald_core::ErrorCode::ValidationFailed, "{e}");
        assert!(e.message.contains("/slots"), "{e}");
        let bad = SlotsInput { slots: vec![Slot { day: "someday".into(), time: "09:30".into() }] };
        let e = w.posts.set_slots(&w.owner, tg_conn, bad).await.unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "slots[0].day");
        let bad = SlotsInput { slots: vec![Slot { day: "mon".into(), time: "25:00".into() }] };
        assert!(w.posts.set_slots(&w.owner, tg_conn, bad).await.is_err());

        let wanted = SlotsInput {
            slots: vec![
                Slot { day: "thu".into(), time: "09:30".into() },
                Slot { day: "mon".into(), time: "09:30".into() },
                Slot { day: "mon".into(), time: "09:30".into() },
            ],
        };
        let set = w.posts.set_slots(&w.owner, tg_conn, wanted).await.unwrap();
        assert_eq!(
            set,
            vec![Slot { day: "mon".into(), time: "09:30".into() }, Slot { day: "thu".into(), time: "09:30".into() }]
        );
        assert_eq!(w.posts.slots(&w.owner, tg_conn).await.unwrap(), set);

        // Three posts take three different slots, in order, each at 09:30 Berlin time.
        let berlin: herald_core::time::Tz = "Europe/Berlin".parse().unwrap();
        let mut times = Vec::new();
        let mut ids = Vec::new();
        for n in 0..3 {
            let (p, _) = w.posts.create(&w.owner, slotted(&format!("slotted {n}")), None).await.unwrap();
            assert_eq!(p.state, PostState::Scheduled);
            let at = p.deliveries[0].run_at.unwrap();
            assert_eq!(p.schedule_at, Some(at));
            let local = at.with_timezone(&berlin);
            assert_eq!((local.hour(), local.minute()), (9, 30), "{local}");
            assert!(matches!(local.weekday(), chrono::Weekday::Mon | chrono::Weekday::Thu), "{local}");
            times.push(at);
            ids.push(p.id);
        }
        assert!(times.windows(2).all(|t| t[0] < t[1]), "{times:?}");
        // A cancelled post frees its slot for the next one.
        w.posts.cancel(&w.owner, ids[0]).await.unwrap();
        let (p, _) = w.posts.create(&w.owner, slotted("takes the freed slot"), None).await.unwrap();
        assert_eq!(p.deliveries[0].run_at, Some(times[0]));
        // Drafts have no time, and an edit gives an explicit one.
        let e = w.posts.create(&w.owner, NewPost { draft: true, ..slotted("draft") }, None).await.unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "schedule_at");
        let e = w
            .posts
            .update(&w.owner, p.id, PostUpdate { schedule_at: Some("next_slot".into()), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "schedule_at");

        // A post that repeats every 2 days: once published, the next is scheduled 2 days later at
        // the same Berlin wall-clock time, with the same targets, in the same series.
        let e = w.posts.create(&w.owner, NewPost { repeat_every_days: Some(0), ..post("x", &[tg_conn]) }, None).await;
        assert_eq!(e.unwrap_err().details.unwrap()["field"], "repeat_every_days");
        let (first, _) = w
            .posts
            .create(&w.owner, NewPost { repeat_every_days: Some(2), ..post("every other day", &[tg_conn]) }, None)
            .await
            .unwrap();
        assert_eq!((first.repeat_every_days, first.series_id), (Some(2), Some(first.id)));
        w.wait(first.id, finished).await;
        let next_id = {
            let mut found = None;
            for _ in 0..200 {
                let ids: Vec<Uuid> = herald_store::on_read!(db, c => sqlx::query_scalar(
                    "SELECT id FROM posts WHERE series_id = $1 AND id <> $1").bind(first.id).fetch_all(c).await)
                .unwrap();
                if let Some(id) = ids.first() {
                    assert_eq!(ids.len(), 1, "exactly one next occurrence");
                    found = Some(*id);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            found.expect("the next occurrence was scheduled")
        };
        let next = w.posts.get(w.team, next_id).await.unwrap();
        assert_eq!(next.state, PostState::Scheduled);
        assert_eq!(next.content.text, "every other day");
        assert_eq!((next.repeat_every_days, next.series_id), (Some(2), Some(first.id)));
        let want = first.created_at.with_timezone(&berlin).naive_local() + chrono::Duration::days(2);
        assert_eq!(next.schedule_at.unwrap().with_timezone(&berlin).naive_local(), want);
        assert_eq!(next.deliveries.len(), 1);
        assert_eq!(next.deliveries[0].connection_id, tg_conn);
        assert_eq!(next.deliveries[0].state, DeliveryState::Scheduled);
        // 0 stops the series after this one.
        let stopped = w
            .posts
            .update(&w.owner, next_id, PostUpdate { repeat_every_days: Some(0), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(stopped.repeat_every_days, None);

        // When the monthly quota refuses the next occurrence, the series stops and the team is told.
        let mut tx = db.begin().await.unwrap();
        let used: i64 = herald_store::on_tx!(tx, c => sqlx::query_scalar(
            "SELECT used FROM team_usage WHERE team_id = $1").bind(w.team).fetch_one(&mut *c).await)
        .unwrap();
        herald_store::exec!(tx, "UPDATE teams SET quota_posts_month = $2 WHERE id = $1", w.team, used + 1).unwrap();
        tx.commit().await.unwrap();
        let (last, _) = w
            .posts
            .create(&w.owner, NewPost { repeat_every_days: Some(1), ..post("last one", &[tg_conn]) }, None)
            .await
            .unwrap();
        w.wait(last.id, finished).await;
        let mut told = false;
        for _ in 0..200 {
            let n = w.posts.notifications(w.team, true).await.unwrap();
            if let Some(n) = n.iter().find(|n| n.kind == "post.repeat_stopped") {
                assert!(n.message.contains("quota"), "{}", n.message);
                assert_eq!(n.subject_id, last.id);
                told = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(told, "the team was told the series stopped");
        let more: Vec<Uuid> = herald_store::on_read!(db, c => sqlx::query_scalar(
            "SELECT id FROM posts WHERE series_id = $1 AND id <> $1").bind(last.id).fetch_all(c).await)
        .unwrap();
        assert!(more.is_empty(), "no occurrence past the quota");
        w.stop().await;
    })
    .await;
}

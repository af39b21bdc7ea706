//! The fault storm: 1,000 deliveries (100 posts x 10 connections) to receivers that fail 30% of
//! calls with 429s (Retry-After), 500s and answers that arrive after the client gave up. Every
//! delivery ends published, no receiver ever sees its documented rate limit exceeded, nothing is
//! recorded twice, and each delivery's attempt log accounts for every request it made.

use herald_accounts::{Accounts, AccountsConfig, Actor, Principal};
use herald_connections::{Connections, NewConnection};
use herald_core::TeamRole;
use herald_http::guard::{Cidr, GuardConfig, SystemLookup};
use herald_http::{HttpClient, SafeClient};
use herald_platforms::Net;
use herald_posts::{DeliveryHandler, DeliveryState, NewPost, Posts};
use herald_queue::{Queue, Registry, Runner, RunnerConfig};
use herald_store::testing::each_backend;
use herald_testkit::webhook::{self, Faults, Limit};
use herald_vault::{MasterKey, Vault};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const POSTS: usize = 100;
const CONNECTIONS: usize = 10;
/// What each receiver documents; Herald is told a little less, as an operator would.
const LIMIT_PER_SEC: f64 = 25.0;
const HERALD_PER_SEC: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_storm_loses_nothing_duplicates_nothing_and_respects_limits() {
    each_backend(|db| async move {
        let mut receivers = Vec::new();
        for i in 0..CONNECTIONS {
            let r = webhook::start_with(None).await;
            {
                let mut d = r.data();
                d.limit = Some(Limit::new(LIMIT_PER_SEC * 2.0, LIMIT_PER_SEC));
                d.faults = Some(Faults::new(0.3, Duration::from_millis(1500), 7 + i as u64));
            }
            receivers.push(r);
        }
        let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").unwrap()], allow_ports: vec![] };
        let timeout = Duration::from_secs(1);
        let net = Net::new(
            HttpClient::trusted_with_timeout(timeout).unwrap(),
            SafeClient::with_options(guard, Arc::new(SystemLookup), timeout).unwrap(),
        );
        let accounts = Accounts::new(db.clone(), Vault::new(&[MasterKey::generate()]), AccountsConfig::default());
        let mut tx = db.begin().await.unwrap();
        let (user, team) = accounts.create_user(&mut tx, "o@example.com", "O", "pw-123456789", false).await.unwrap();
        tx.commit().await.unwrap();
        let connections = Connections::new(accounts.clone(), net);
        let mut targets = Vec::new();
        for (i, r) in receivers.iter().enumerate() {
            // The live check is a request too: let it through before the storm starts.
            r.data().faults.as_mut().unwrap().rate = 0.0;
            let c = connections
                .create_in(
                    team,
                    &Actor::system(),
                    NewConnection {
                        platform: "webhook".into(),
                        name: Some(format!("receiver {i}")),
                        credentials: json!({}),
                        settings: json!({"url": format!("{}/hook", r.url), "rate_per_second": HERALD_PER_SEC}),
                    },
                )
                .await
                .unwrap();
            r.data().faults.as_mut().unwrap().rate = 0.3;
            targets.push(c.id);
        }
        let queue = Queue::new(db.clone());
        let posts = Posts::new(
            accounts,
            connections,
            queue.clone(),
            herald_media::MediaStore::local(herald_store::testing::scratch_dir("herald-media")),
        );
        let mut registry = Registry::default();
        registry.register(
            herald_posts::DELIVERY_JOB,
            DeliveryHandler::new(posts.clone()).with_backoff(Duration::from_millis(200)),
        );
        let config = RunnerConfig {
            queues: vec![("default".into(), 64)],
            poll_interval: Duration::from_millis(25),
            ..RunnerConfig::default()
        };
        let stop = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(queue, registry, config).run(stop.clone()));
        let owner = Principal::acting(Some(user.id), team, TeamRole::Owner, "o");
        let mut ids = Vec::new();
        for n in 0..POSTS {
            let new = NewPost::now(format!("storm post {n}"), &targets);
            ids.push(posts.create(&owner, new, None).await.unwrap().0.id);
        }
        let start = Instant::now();
        let mut views = Vec::new();
        for id in &ids {
            loop {
                let v = posts.get(team, *id).await.unwrap();
                if v.deliveries.iter().all(|d| d.state.is_final()) {
                    views.push(v);
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(240), "the storm did not settle: {v:#?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        stop.cancel();
        runner.await.unwrap();

        // Everything published, once.
        let mut requests_by_key: HashMap<String, usize> = HashMap::new();
        for r in &receivers {
            let d = r.data();
            assert_eq!(d.over_limit, 0, "a receiver saw its documented limit exceeded");
            let posted = d.deliveries.iter().filter(|x| x.body["type"] == "post.published").count();
            assert_eq!(posted, POSTS, "each receiver recorded every post exactly once");
            let f = d.faults.as_ref().unwrap();
            assert!(
                f.injected.0 > 0 && f.injected.1 > 0 && f.injected.2 > 0,
                "every kind of fault happened: {:?}",
                f.injected
            );
            for req in r.requests_to("/hook") {
                if let Some(k) = req.header("webhook-id") {
                    *requests_by_key.entry(k.to_string()).or_default() += 1;
                }
            }
        }
        let mut retries = 0;
        for v in &views {
            for d in &v.deliveries {
                assert_eq!(d.state, DeliveryState::Published, "{d:#?}");
                // The log explains every request: one entry per call, the failures with their class.
                let key = herald_platforms::idempotency_key(d.id);
                let sent = requests_by_key.get(&key).copied().unwrap_or(0);
                assert_eq!(d.attempt_log.len(), sent, "attempt log vs requests for {key}: {:#?}", d.attempt_log);
                let (last, earlier) = d.attempt_log.split_last().unwrap();
                assert_eq!(last.outcome, "published");
                for a in earlier {
                    assert!(matches!(a.outcome.as_str(), "transient" | "rate_limited"), "{a:?}");
                    assert!(a.http_status.is_some() || a.message.is_some(), "{a:?}");
                }
                retries += earlier.len();
            }
        }
        assert!(retries > 200, "a 30% fault rate forced retries ({retries})");
        eprintln!("storm settled in {:?} with {retries} retries", start.elapsed());
    })
    .await;
}

//! Publishing through a connection from queue jobs, against the Telegram fake: a 429 waits the
//! platform's time without spending an attempt and blocks the connection's bucket; an auth failure
//! flips the connection to needs_reauth and parks its other jobs; a lost answer on a platform
//! without idempotency stops instead of posting twice.

use herald_accounts::{Accounts, AccountsConfig, Actor};
use herald_connections::{Connections, NewConnection, Status};
use herald_http::guard::{Cidr, GuardConfig};
use herald_http::{HttpClient, SafeClient};
use herald_platforms::{Net, Outgoing};
use herald_queue::{Job, JobError, JobId, JobState, NewJob, Queue, Registry, Runner, RunnerConfig};
use herald_store::testing::each_backend;
use herald_testkit::{Failure, telegram};
use herald_vault::{MasterKey, Vault};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Publish(Connections);

#[async_trait::async_trait]
impl herald_queue::Handler for Publish {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let p = &job.payload;
        let team: Uuid = p["team"].as_str().unwrap().parse().unwrap();
        let id: Uuid = p["connection"].as_str().unwrap().parse().unwrap();
        let post = Outgoing::text(p["text"].as_str().unwrap(), format!("herald-{}", job.id.0.simple()));
        self.0.publish(team, id, &post).await.map(|_| ())
    }
}

fn net(fake: &str) -> Net {
    let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").unwrap()], allow_ports: vec![] };
    Net::new(HttpClient::trusted_with_timeout(Duration::from_secs(1)).unwrap(), SafeClient::new(guard).unwrap())
        .with_base("telegram", fake)
}

async fn wait_for(q: &Queue, id: JobId, want: impl Fn(&Job) -> bool) -> Job {
    for _ in 0..400 {
        let job = q.get(id).await.unwrap().unwrap();
        if want(&job) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id:?} never reached the expected state: {:?}", q.get(id).await.unwrap());
}

#[tokio::test]
async fn deliveries_honour_rate_limits_auth_failures_and_lost_answers() {
    each_backend(|db| async move {
        let fake = telegram::start().await;
        let accounts = Accounts::new(db.clone(), Vault::new(&[MasterKey::generate()]), AccountsConfig::default());
        let mut tx = db.begin().await.unwrap();
        let (_, team) = accounts.create_user(&mut tx, "o@example.com", "O", "pw-123456789", false).await.unwrap();
        tx.commit().await.unwrap();
        let connections = Connections::new(accounts, net(&fake.url));
        let conn = connections
            .create_in(
                team,
                &Actor::system(),
                NewConnection {
                    platform: "telegram".into(),
                    name: None,
                    credentials: json!({"bot_token": telegram::TOKEN}),
                    settings: json!({"chat_id": telegram::CHANNEL}),
                },
            )
            .await
            .unwrap();
        let q = Queue::new(db.clone());
        let loaded = connections.load(team, conn.id).await.unwrap();
        let bucket = connections.pace(&q, &loaded).await.unwrap().expect("telegram paces per chat");
        assert!(bucket.contains(&telegram::CHANNEL_ID.to_string()) || bucket.contains("herald_news"), "{bucket}");
        let b = q.bucket(&bucket).await.unwrap().unwrap();
        assert!(b.refill_per_sec.unwrap() <= 1.0, "at most one message a second per chat: {b:?}");

        let mut registry = Registry::default();
        registry.register("test.publish", Publish(connections.clone()));
        let config = RunnerConfig { poll_interval: Duration::from_millis(50), ..RunnerConfig::default() };
        let stop = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(q.clone(), registry, config).run(stop.clone()));
        let enqueue = |text: &str| {
            let job = NewJob::new("test.publish", json!({"team": team, "connection": conn.id, "text": text}))
                .bucket(bucket.clone());
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                let id = herald_queue::enqueue(&mut tx, job).await.unwrap().id();
                tx.commit().await.unwrap();
                id
            }
        };

        // A 429 with retry_after 2: the job waits at least that long, spends no attempt, and posts once.
        fake.fail_next_on("sendMessage", Failure::RateLimited { retry_after_secs: 2 });
        let started = Instant::now();
        let limited = enqueue("first").await;
        let job = wait_for(&q, limited, |j| j.state == JobState::Succeeded).await;
        let sends = fake.requests_to("sendMessage");
        assert_eq!(sends.len(), 2, "one refused, one accepted");
        assert!(started.elapsed() >= Duration::from_secs(2), "the platform's wait was honoured");
        assert_eq!(job.attempt, 1, "a rate-limited run spends no attempt");
        assert_eq!(fake.data().messages.iter().filter(|m| m.text.as_deref() == Some("first")).count(), 1);

        // A lost answer on Telegram (no idempotency) stops the job instead of posting twice.
        fake.fail_next_on("sendMessage", Failure::AnswerLate(Duration::from_secs(2)));
        let lost = enqueue("lost").await;
        let job = wait_for(&q, lost, |j| j.state.is_finished()).await;
        assert_eq!(job.state, JobState::Dead, "{job:?}");
        assert!(job.last_error.as_deref().unwrap_or("").contains("unknown_outcome"), "{job:?}");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(fake.data().messages.iter().filter(|m| m.text.as_deref() == Some("lost")).count(), 1);
        assert_eq!(
            connections.get(team, conn.id).await.unwrap().status,
            Status::Active,
            "a lost answer says nothing about the credentials"
        );

        // The token is revoked: the job fails for good and the connection needs re-authorising.
        fake.data().token = "654321:AAOther-token_0123456789abcdefghijklmn".into();
        let refused = enqueue("refused").await;
        let job = wait_for(&q, refused, |j| j.state.is_finished()).await;
        assert_eq!(job.state, JobState::Dead);
        let view = connections.get(team, conn.id).await.unwrap();
        assert_eq!(view.status, Status::NeedsReauth);
        assert_eq!(view.last_error.unwrap().class, "auth");

        // Its other jobs are parked, not failed, and the platform is not called.
        let calls = fake.requests().len();
        let parked = enqueue("parked").await;
        let job = wait_for(&q, parked, |j| j.state == JobState::Pending && j.run_at > chrono::Utc::now()).await;
        assert!(job.run_at > chrono::Utc::now() + chrono::Duration::seconds(200), "{job:?}");
        assert_eq!(fake.requests().len(), calls);

        stop.cancel();
        runner.await.unwrap();
    })
    .await;
}

//! `GET /api/v1/posts/{id}/stats`: a post published to a fake Mastodon through the API and the
//! real delivery worker, two rounds of the stats collector, and the series read back over HTTP.

mod common;

use common::{App, code};
use herald_posts::DeliveryHandler;
use herald_queue::{Queue, Registry, Runner, RunnerConfig};
use herald_store::testing::each_backend;
use herald_store::{Ts, exec};
use herald_testkit::mastodon;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_AGE: Duration = Duration::from_secs(30 * 86_400);

#[tokio::test]
async fn the_series_of_a_published_post_grows_with_each_round() {
    each_backend(|db| async move {
        let fake = mastodon::start().await;
        let app = App::start(db).await;
        let (owner, _, _) = app.owner("o@example.com").await;
        let (other, _, _) = app.owner("x@example.com").await;
        let (s, conn) = app
            .post(
                &owner,
                "/connections",
                json!({"platform": "mastodon", "name": "social", "credentials": {"access_token": mastodon::TOKEN},
                       "settings": {"instance_url": fake.url}}),
            )
            .await;
        assert_eq!(s, 201, "{conn}");
        let (s, post) =
            app.post(&owner, "/posts", json!({"text": "Count me", "targets": [{"connection_id": conn["id"]}]})).await;
        assert_eq!(s, 201, "{post}");
        let id = post["id"].as_str().unwrap().to_string();

        // Before anything went out, the delivery is listed with no snapshots.
        let (s, stats) = app.get(&owner, &format!("/posts/{id}/stats")).await;
        assert_eq!(s, 200, "{stats}");
        assert_eq!(stats["deliveries"][0]["snapshots"], json!([]));

        // The real worker publishes it.
        let mut registry = Registry::default();
        registry.register(herald_posts::DELIVERY_JOB, DeliveryHandler::new(app.posts.clone()));
        let stop = CancellationToken::new();
        let config = RunnerConfig { poll_interval: Duration::from_millis(50), ..RunnerConfig::default() };
        let runner = tokio::spawn(Runner::new(Queue::new(app.db.clone()), registry, config).run(stop.clone()));
        let mut published = Value::Null;
        for _ in 0..400 {
            published = app.get(&owner, &format!("/posts/{id}")).await.1;
            if published["state"] == "published" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        stop.cancel();
        runner.await.unwrap();
        assert_eq!(published["state"], "published", "{published}");
        let status = fake.data().statuses[0].id.clone();

        fake.data().engage(&status, 3, 1, 0);
        let r = app.posts.collect_stats(MAX_AGE).await.unwrap();
        assert_eq!((r.due, r.stored), (1, 1), "{r:?}");
        // A quarter of an hour later (made due now), more people have seen it.
        fake.data().engage(&status, 8, 2, 1);
        let mut tx = app.db.begin().await.unwrap();
        exec!(tx, "UPDATE deliveries SET stats_next_at = $1", Ts(chrono::Utc::now() - chrono::Duration::seconds(1)))
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(app.posts.collect_stats(MAX_AGE).await.unwrap().stored, 1);

        let (s, stats) = app.get(&owner, &format!("/posts/{id}/stats")).await;
        assert_eq!(s, 200, "{stats}");
        assert_eq!(stats["post_id"], json!(id));
        let d = &stats["deliveries"][0];
        assert_eq!(d["delivery_id"], published["deliveries"][0]["id"]);
        assert_eq!((d["platform"].as_str(), &d["connection_id"]), (Some("mastodon"), &conn["id"]));
        let snapshots = d["snapshots"].as_array().unwrap();
        let metrics: Vec<&Value> = snapshots.iter().map(|s| &s["metrics"]).collect();
        assert_eq!(
            metrics,
            vec![
                &json!({"favourites": 3, "reblogs": 1, "replies": 0}),
                &json!({"favourites": 8, "reblogs": 2, "replies": 1})
            ]
        );
        let at = |i: usize| chrono::DateTime::parse_from_rfc3339(snapshots[i]["fetched_at"].as_str().unwrap()).unwrap();
        assert!(at(0) <= at(1));

        // Another team sees nothing; the route is in the OpenAPI document.
        let (s, body) = app.get(&other, &format!("/posts/{id}/stats")).await;
        assert_eq!((s, code(&body)), (404, "not_found"), "{body}");
        let doc = serde_json::to_value(herald_server::openapi()).unwrap();
        assert!(doc["paths"]["/posts/{post_id}/stats"]["get"].is_object());
        assert!(doc["components"]["schemas"]["PostStats"].is_object());
    })
    .await;
}

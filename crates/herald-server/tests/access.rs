//! Tenant isolation and the role matrix, enumerated from the OpenAPI document so a new route
//! cannot be forgotten: it fails here until it is classified.

mod common;

use common::{App, Caller, code};
use herald_core::{Action, TeamRole};
use herald_http::Method;
use herald_store::testing::each_backend;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use uuid::Uuid;

/// A webhook receiver that accepts any signature, so creating a connection can succeed for real.
static RECEIVER: OnceLock<String> = OnceLock::new();

async fn receiver() -> String {
    RECEIVER
        .get_or_init(|| {
            // Each test has its own runtime, and a server dies with the runtime it was spawned
            // on: give the receiver a runtime of its own that outlives every test.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let fake = herald_testkit::webhook::start_with(None).await;
                    tx.send(format!("{}/hook", fake.url)).unwrap();
                    std::future::pending::<()>().await;
                });
            });
            rx.recv().unwrap()
        })
        .clone()
}

thread_local! {
    /// The connection posts go to in the running test (each test runs on its own thread).
    static POST_TARGET: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn set_post_target(id: &str) {
    POST_TARGET.with(|t| *t.borrow_mut() = Some(id.to_string()));
}

/// A post to the test's connection, scheduled far ahead so nothing is sent.
fn post_body() -> Value {
    let target = POST_TARGET.with(|t| t.borrow().clone()).expect("set_post_target first");
    json!({"text": "hello", "targets": [{"connection_id": target}], "schedule_at": "2099-01-01T09:00:00Z"})
}

fn connection_body() -> Value {
    json!({"platform": "webhook", "name": "hook", "credentials": {}, "settings": {"url": RECEIVER.get().expect("receiver() first")}})
}

/// Every operation in the document, as (METHOD, path).
fn operations() -> Vec<(String, String)> {
    let doc = serde_json::to_value(herald_server::openapi()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// What each operation needs. `None`: anyone signed in (their own things), or no sign-in at all.
fn required(method: &str, path: &str) -> Option<Option<Action>> {
    let a = match (method, path) {
        ("POST", "/session/login" | "/session/setup" | "/password-reset/request" | "/password-reset/complete") => None,
        // Public: the signed URL is the credential (tests/media.rs checks it).
        ("GET", "/media/{media_id}/file") => None,
        ("POST", "/invites/accept" | "/session/logout" | "/teams" | "/me/password" | "/me/2fa/enrol" | "/me/2fa/confirm")
        | ("POST", "/me/2fa/disable")
        | ("GET", "/session" | "/me" | "/me/sessions" | "/teams" | "/teams/{team_id}" | "/platforms")
        | ("PUT", "/session/team")
        | ("PATCH", "/me")
        | ("DELETE", "/me/sessions/{session_id}")
        // The caller's own notification e-mail in their current team (any role; keys get 422).
        | ("GET" | "PUT", "/notifications/settings")
        // Instance admins only; anyone else gets 404 (tested in the BOLA matrix).
        | ("PUT", "/teams/{team_id}/quotas") => None,
        ("GET", "/members" | "/members/{user_id}") => Some(Action::Read),
        ("PATCH" | "DELETE", "/members/{user_id}") => Some(Action::ManageMembers),
        ("GET" | "POST", "/invites") | ("GET" | "DELETE", "/invites/{invite_id}") => Some(Action::ManageMembers),
        ("GET" | "POST", "/api-keys") | ("GET" | "DELETE", "/api-keys/{key_id}") => Some(Action::ManageApiKeys),
        ("GET", "/audit") => Some(Action::ReadAudit),
        ("GET", "/connections" | "/connections/{connection_id}" | "/connections/{connection_id}/slots") => Some(Action::Read),
        ("PUT", "/connections/{connection_id}/slots") => Some(Action::Publish),
        ("POST", "/connections") | ("PATCH" | "DELETE", "/connections/{connection_id}") => Some(Action::ManageConnections),
        ("POST", "/connections/{connection_id}/test") => Some(Action::Publish),
        ("GET", "/posts" | "/posts/{post_id}" | "/posts/{post_id}/stats") => Some(Action::Read),
        // Publishing needs `publish`; a draft or an edit needs `write_content` (tested in posts.rs).
        ("POST", "/posts" | "/posts/{post_id}/cancel" | "/deliveries/{delivery_id}/retry" | "/deliveries/{delivery_id}/resolve") => {
            Some(Action::Publish)
        }
        ("PATCH", "/posts/{post_id}") => Some(Action::WriteContent),
        ("DELETE", "/posts/{post_id}") => Some(Action::DeleteContent),
        ("GET", "/media" | "/media/{media_id}") => Some(Action::Read),
        ("POST", "/media") => Some(Action::WriteContent),
        ("DELETE", "/media/{media_id}") => Some(Action::DeleteContent),
        ("GET" | "POST", "/webhooks") | ("DELETE", "/webhooks/{webhook_id}") => Some(Action::ManageTeam),
        ("GET", "/notifications") | ("POST", "/notifications/{notification_id}/read") => Some(Action::Read),
        ("PATCH", "/teams/{team_id}") => Some(Action::ManageTeam),
        ("GET", "/sources" | "/sources/{source_id}" | "/events" | "/events/{event_id}") => Some(Action::Read),
        ("POST", "/sources" | "/sources/{source_id}/poll" | "/sources/{source_id}/events") | ("PATCH", "/sources/{source_id}") => {
            Some(Action::WriteContent)
        }
        ("DELETE", "/sources/{source_id}") => Some(Action::DeleteContent),
        ("GET", "/workflow-settings") => Some(Action::Read),
        ("PUT", "/workflow-settings") => Some(Action::ManageTeam),
        ("GET", "/workflows" | "/workflows/{workflow_id}" | "/workflows/{workflow_id}/versions")
        | ("GET", "/runs" | "/runs/{run_id}" | "/approvals" | "/approvals/{approval_id}") => Some(Action::Read),
        ("POST", "/workflows") | ("PUT" | "PATCH", "/workflows/{workflow_id}") => Some(Action::WriteContent),
        ("DELETE", "/workflows/{workflow_id}") => Some(Action::DeleteContent),
        // A dry run needs only `write_content` (tested in workflows.rs).
        ("POST", "/workflows/{workflow_id}/run" | "/runs/{run_id}/cancel" | "/runs/{run_id}/rerun")
        | ("POST", "/approvals/{approval_id}/approve" | "/approvals/{approval_id}/reject") => Some(Action::Publish),
        _ => return None,
    };
    Some(a)
}

/// A feed source whose polls fail quickly (nothing listens there), so `poll` answers a report.
fn feed_source() -> Value {
    json!({"kind": "feed", "name": "f", "config": {"url": "http://127.0.0.1:9/feed.xml"}})
}

/// A workflow that waits for an editor's approval, with a name of its own.
fn workflow_body() -> Value {
    json!({"name": format!("w-{}", Uuid::now_v7().simple()), "steps": [
        {"type": "template", "template": "hi {{ payload.n }}"},
        {"type": "approval", "role": "editor", "timeout": "1h"},
        {"type": "publish", "targets": [{"platform": "webhook"}]}
    ]})
}

/// A run of a new workflow, waiting at its approval: (workflow, run, approval).
async fn waiting_run(app: &App, owner: &Caller) -> (String, String, String) {
    let (s, wf) = app.post(owner, "/workflows", workflow_body()).await;
    assert_eq!(s, 201, "{wf}");
    let wf = wf["id"].as_str().unwrap().to_string();
    let (s, run) = app.post(owner, &format!("/workflows/{wf}/run"), json!({"payload": {"payload": {"n": 1}}})).await;
    assert_eq!(s, 202, "{run}");
    let run: Uuid = run["id"].as_str().unwrap().parse().unwrap();
    // No job runner here: advance it as a worker would.
    app.workflows.advance(run).await.unwrap();
    let (_, approvals) = app.get(owner, "/approvals?status=pending").await;
    let approval = approvals.as_array().unwrap().iter().find(|a| a["run_id"] == json!(run)).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    (wf, run.to_string(), approval)
}

/// A valid body for each operation that takes one, so a 404 or 403 is about access, not input.
fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("PATCH", "/teams/{team_id}") => Some(json!({"name": "renamed"})),
        ("PUT", "/teams/{team_id}/quotas") => Some(json!({"members": 50})),
        ("PATCH", "/members/{user_id}") => Some(json!({"role": "editor"})),
        ("POST", "/invites") => Some(json!({"role": "viewer"})),
        ("POST", "/api-keys") => Some(json!({"name": "k", "role": "viewer"})),
        ("POST", "/connections") => Some(connection_body()),
        ("PATCH", "/connections/{connection_id}") => Some(json!({"name": "renamed"})),
        ("POST", "/connections/{connection_id}/test") => None,
        ("PUT", "/connections/{connection_id}/slots") => Some(json!({"slots": [{"day": "mon", "time": "09:30"}]})),
        ("POST", "/posts") => Some(post_body()),
        ("PATCH", "/posts/{post_id}") => Some(json!({"text": "edited"})),
        ("POST", "/posts/{post_id}/cancel") => None,
        ("POST", "/deliveries/{delivery_id}/retry") => Some(json!({"confirm_not_posted": true})),
        ("POST", "/deliveries/{delivery_id}/resolve") => Some(json!({"published": false})),
        ("POST", "/media") => None, // multipart: sent by App::upload
        ("POST", "/webhooks") => Some(json!({"url": "https://hooks.example.com/herald", "events": ["post.failed"]})),
        ("POST", "/notifications/{notification_id}/read") => None,
        ("PUT", "/notifications/settings") => Some(json!({"email": false})),
        ("POST", "/sources") => Some(json!({"kind": "manual", "name": "m"})),
        ("PATCH", "/sources/{source_id}") => Some(json!({"name": "renamed"})),
        ("POST", "/sources/{source_id}/events") => Some(json!({"data": {"n": 1}})),
        ("POST", "/sources/{source_id}/poll") => None,
        ("POST", "/workflows") | ("PUT", "/workflows/{workflow_id}") => Some(workflow_body()),
        ("PATCH", "/workflows/{workflow_id}") => Some(json!({"active": false})),
        ("PUT", "/workflow-settings") => Some(json!({"ai_model": "llama3.2", "ai_daily_calls": 10})),
        ("POST", "/workflows/{workflow_id}/run") => Some(json!({"payload": {}, "dry_run": false})),
        ("POST", "/runs/{run_id}/cancel" | "/runs/{run_id}/rerun") => None,
        ("POST", "/approvals/{approval_id}/approve" | "/approvals/{approval_id}/reject") => {
            Some(json!({"comment": "ok"}))
        }
        ("GET" | "DELETE", _) => None,
        _ => panic!("give {method} {path} a valid body in body_for"),
    }
}

#[tokio::test]
async fn every_route_is_classified_for_the_matrices() {
    for (method, path) in operations() {
        assert!(required(&method, &path).is_some(), "{method} {path} is not in the role table of tests/access.rs");
    }
}

#[tokio::test]
async fn bola_team_a_gets_404_for_every_id_of_team_b() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (a, _, _team_a) = app.owner("a@example.com").await;
        let (_, _, team_a2) = app.owner("a2@example.com").await;
        let a_key = app.key(_team_a, TeamRole::Admin).await;
        let (b, b_user, team_b) = app.owner("b@example.com").await;
        let (_, b_member) = app.member(&b, "b2@example.com", TeamRole::Editor).await;
        let (_, inv) = app.post(&b, "/invites", json!({"role": "viewer"})).await;
        let b_invite = inv["id"].as_str().unwrap().to_string();
        let (_, key) = app.post(&b, "/api-keys", json!({"name": "b", "role": "editor"})).await;
        let b_key_id = key["id"].as_str().unwrap().to_string();
        let b_key = Caller::Key(key["key"].as_str().unwrap().to_string());
        let (_, sessions) = app.get(&b, "/me/sessions").await;
        let b_session = sessions[0]["id"].as_str().unwrap().to_string();
        receiver().await;
        let (s, conn) = app.post(&b, "/connections", connection_body()).await;
        assert_eq!(s, 201, "{conn}");
        let b_connection = conn["id"].as_str().unwrap().to_string();
        set_post_target(&b_connection);
        let (s, post) = app.post(&b, "/posts", post_body()).await;
        assert_eq!(s, 201, "{post}");
        let b_post = post["id"].as_str().unwrap().to_string();
        let b_delivery = post["deliveries"][0]["id"].as_str().unwrap().to_string();
        let (s, media) = app.upload(&b, "b.png", common::png(10, 10, 100)).await;
        assert_eq!(s, 201, "{media}");
        let b_media = media["id"].as_str().unwrap().to_string();
        let (s, hook) = app.post(&b, "/webhooks", json!({"url": "https://hooks.example.com/b"})).await;
        assert_eq!(s, 201, "{hook}");
        let b_webhook = hook["id"].as_str().unwrap().to_string();
        let b_notification = app.notify(team_b).await.to_string();
        let (s, source) = app.post(&b, "/sources", feed_source()).await;
        assert_eq!(s, 201, "{source}");
        let b_source = source["id"].as_str().unwrap().to_string();
        let (s, event) = app.post(&b, &format!("/sources/{b_source}/events"), json!({"data": {}})).await;
        assert_eq!(s, 201, "{event}");
        let b_event = event["id"].as_str().unwrap().to_string();
        let (b_workflow, b_run, b_approval) = waiting_run(&app, &b).await;
        let ids: BTreeMap<&str, String> = [
            ("workflow_id", b_workflow.clone()),
            ("run_id", b_run.clone()),
            ("approval_id", b_approval.clone()),
            ("team_id", team_b.to_string()),
            ("post_id", b_post.clone()),
            ("delivery_id", b_delivery.clone()),
            ("media_id", b_media.clone()),
            ("webhook_id", b_webhook.clone()),
            ("notification_id", b_notification.clone()),
            ("user_id", b_member.to_string()),
            ("invite_id", b_invite.clone()),
            ("key_id", b_key_id.clone()),
            ("session_id", b_session.clone()),
            ("connection_id", b_connection.clone()),
            ("source_id", b_source.clone()),
            ("event_id", b_event.clone()),
        ]
        .into();
        let mut checked = 0;
        for (method, path) in operations() {
            // The signed media route takes no credentials: without a signature it is 403 for
            // everyone (tests/media.rs), whoever asks.
            if !path.contains('{') || path == "/media/{media_id}/file" {
                continue;
            }
            let mut concrete = path.clone();
            for (name, id) in &ids {
                concrete = concrete.replace(&format!("{{{name}}}"), id);
            }
            assert!(!concrete.contains('{'), "{path}: add its parameter to the BOLA id map");
            for who in [&a, &a_key] {
                let m = Method::from_bytes(method.as_bytes()).unwrap();
                let (status, body) = app.call(who, m, &concrete, body_for(&method, &path)).await;
                assert_eq!(status, 404, "{method} {path} with team A's credentials on team B's id: {body}");
                assert_eq!(code(&body), "not_found");
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} calls");
        // Owner B's user id is not reachable either, and A's other team is not B's.
        assert_eq!(app.get(&a, &format!("/members/{b_user}")).await.0, 404);
        assert_ne!(team_a2, team_b);
        // Team B's objects are untouched.
        assert_eq!(app.get(&b, &format!("/invites/{b_invite}")).await.1["revoked_at"], Value::Null);
        assert_eq!(app.get(&b_key, "/members").await.0, 200);
        assert_eq!(app.get(&b, &format!("/members/{b_member}")).await.1["role"], "editor");
        let (_, team) = app.get(&b, &format!("/teams/{team_b}")).await;
        assert_ne!(team["name"], "renamed");
        let (_, sessions) = app.get(&b, "/me/sessions").await;
        assert_eq!(sessions.as_array().unwrap().len(), 1);
        let (_, conn) = app.get(&b, &format!("/connections/{b_connection}")).await;
        assert_eq!(conn["name"], "hook");
        let (_, post) = app.get(&b, &format!("/posts/{b_post}")).await;
        assert_eq!((post["state"].as_str(), post["content"]["text"].as_str()), (Some("scheduled"), Some("hello")));
        let (_, run) = app.get(&b, &format!("/runs/{b_run}")).await;
        assert_eq!(run["status"], "waiting", "{run}");
        let (_, approval) = app.get(&b, &format!("/approvals/{b_approval}")).await;
        assert_eq!(approval["status"], "pending");
    })
    .await;
}

#[tokio::test]
async fn role_matrix_every_role_against_every_guarded_route() {
    receiver().await;
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (owner, _, team) = app.owner("owner@example.com").await;
        let mut callers = vec![(TeamRole::Owner, owner.clone())];
        for (i, role) in [TeamRole::Admin, TeamRole::Editor, TeamRole::Viewer].into_iter().enumerate() {
            callers.push((role, app.member(&owner, &format!("m{i}@example.com"), role).await.0));
            callers.push((role, app.key(team, role).await));
        }
        let (s, conn) = app.post(&owner, "/connections", connection_body()).await;
        assert_eq!(s, 201, "{conn}");
        set_post_target(conn["id"].as_str().unwrap());
        let mut n = 0;
        for (method, path) in operations() {
            let Some(Some(action)) = required(&method, &path) else { continue };
            for (role, who) in &callers {
                // A fresh target for each call, since a successful call may consume it.
                let target = match path.as_str() {
                    "/members/{user_id}" => {
                        let (s, inv) = app.post(&owner, "/invites", json!({"role": "viewer"})).await;
                        assert_eq!(s, 201);
                        let email = format!("t{}@example.com", Uuid::now_v7().simple());
                        let (_, t) = app
                            .post(&Caller::Anonymous, "/invites/accept", json!({"token": inv["token"], "email": email, "display_name": "T", "password": common::PASSWORD}))
                            .await;
                        let members = app.get(&owner, "/members").await.1;
                        let _ = t;
                        members.as_array().unwrap().iter().find(|m| m["email"] == json!(email)).unwrap()["user_id"].as_str().unwrap().to_string()
                    }
                    "/invites/{invite_id}" => app.post(&owner, "/invites", json!({"role": "viewer"})).await.1["id"].as_str().unwrap().to_string(),
                    "/api-keys/{key_id}" => app.post(&owner, "/api-keys", json!({"name": "t", "role": "viewer"})).await.1["id"].as_str().unwrap().to_string(),
                    "/teams/{team_id}" => team.to_string(),
                    "/posts/{post_id}" | "/posts/{post_id}/cancel" | "/posts/{post_id}/stats" => {
                        let (s, p) = app.post(&owner, "/posts", post_body()).await;
                        assert_eq!(s, 201, "{p}");
                        p["id"].as_str().unwrap().to_string()
                    }
                    "/deliveries/{delivery_id}/retry" | "/deliveries/{delivery_id}/resolve" => {
                        let (s, p) = app.post(&owner, "/posts", post_body()).await;
                        assert_eq!(s, 201, "{p}");
                        let d: Uuid = p["deliveries"][0]["id"].as_str().unwrap().parse().unwrap();
                        let mut tx = app.db.begin().await.unwrap();
                        herald_store::exec!(tx, "UPDATE deliveries SET state = 'unconfirmed' WHERE id = $1", d).unwrap();
                        tx.commit().await.unwrap();
                        d.to_string()
                    }
                    "/webhooks/{webhook_id}" => {
                        let (s, h) = app.post(&owner, "/webhooks", json!({"url": "https://hooks.example.com/x"})).await;
                        assert_eq!(s, 201, "{h}");
                        h["id"].as_str().unwrap().to_string()
                    }
                    "/notifications/{notification_id}/read" => app.notify(team).await.to_string(),
                    "/media/{media_id}" => {
                        let (s, m) = app.upload(&owner, "m.png", common::png(10, 10, 100)).await;
                        assert_eq!(s, 201, "{m}");
                        m["id"].as_str().unwrap().to_string()
                    }
                    "/connections/{connection_id}"
                    | "/connections/{connection_id}/test"
                    | "/connections/{connection_id}/slots" => {
                        let (s, c) = app.post(&owner, "/connections", connection_body()).await;
                        assert_eq!(s, 201, "{c}");
                        c["id"].as_str().unwrap().to_string()
                    }
                    "/sources/{source_id}" | "/sources/{source_id}/poll" | "/sources/{source_id}/events" => {
                        let (s, src) = app.post(&owner, "/sources", feed_source()).await;
                        assert_eq!(s, 201, "{src}");
                        src["id"].as_str().unwrap().to_string()
                    }
                    "/workflows/{workflow_id}" | "/workflows/{workflow_id}/versions" | "/workflows/{workflow_id}/run" => {
                        let (s, wf) = app.post(&owner, "/workflows", workflow_body()).await;
                        assert_eq!(s, 201, "{wf}");
                        wf["id"].as_str().unwrap().to_string()
                    }
                    "/runs/{run_id}" | "/runs/{run_id}/cancel" | "/runs/{run_id}/rerun" => waiting_run(&app, &owner).await.1,
                    "/approvals/{approval_id}" | "/approvals/{approval_id}/approve" | "/approvals/{approval_id}/reject" => {
                        waiting_run(&app, &owner).await.2
                    }
                    "/events/{event_id}" => {
                        let (_, src) = app.post(&owner, "/sources", json!({"kind": "manual", "name": "m"})).await;
                        let (s, e) = app.post(&owner, &format!("/sources/{}/events", src["id"].as_str().unwrap()), json!({})).await;
                        assert_eq!(s, 201, "{e}");
                        e["id"].as_str().unwrap().to_string()
                    }
                    _ => String::new(),
                };
                let concrete = match (path.find('{'), path.find('}')) {
                    (Some(a), Some(b)) => format!("{}{target}{}", &path[..a], &path[b + 1..]),
                    _ => path.clone(),
                };
                let m = Method::from_bytes(method.as_bytes()).unwrap();
                let (status, body) = if (method.as_str(), path.as_str()) == ("POST", "/media") {
                    app.upload(who, "m.png", common::png(10, 10, 100)).await
                } else {
                    app.call(who, m, &concrete, body_for(&method, &path)).await
                };
                if role.allows(action) {
                    assert!((200..300).contains(&status), "{role} should be allowed {method} {path}: {status} {body}");
                } else {
                    assert_eq!(status, 403, "{role} must be refused {method} {path}: {body}");
                    assert_eq!(code(&body), "forbidden");
                }
                n += 1;
            }
        }
        assert!(n >= 70, "only {n} checks");
        // Owner-only: an admin cannot make anyone owner, or demote the owner.
        let (admin, _) = app.member(&owner, "admin2@example.com", TeamRole::Admin).await;
        let (_, victim) = app.member(&owner, "v@example.com", TeamRole::Viewer).await;
        let (s, b) = app.call(&admin, Method::PATCH, &format!("/members/{victim}"), Some(json!({"role": "owner"}))).await;
        assert_eq!((s, code(&b)), (403, "forbidden"), "{b}");
        // An editor cannot mint an admin key, nor can an admin mint an owner key.
        let (s, _) = app.post(&admin, "/api-keys", json!({"name": "x", "role": "owner"})).await;
        assert_eq!(s, 422);
        // The last owner keeps the role.
        let me = app.get(&owner, "/me").await.1["user"]["id"].as_str().unwrap().to_string();
        let (s, b) = app.call(&owner, Method::PATCH, &format!("/members/{me}"), Some(json!({"role": "admin"}))).await;
        assert_eq!((s, code(&b)), (409, "conflict"), "{b}");
        let (s, _) = app.call(&owner, Method::DELETE, &format!("/members/{me}"), None).await;
        assert_eq!(s, 409);
    })
    .await;
}

#[tokio::test]
async fn bodies_cannot_set_team_owner_role_or_creator_where_not_meant_to() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (owner, user, team) = app.owner("o@example.com").await;
        let (_, _, other_team) = app.owner("p@example.com").await;
        for (path, body) in [
            ("/teams", json!({"name": "t", "owner_id": Uuid::now_v7()})),
            ("/api-keys", json!({"name": "k", "role": "viewer", "team_id": other_team})),
            ("/api-keys", json!({"name": "k", "role": "viewer", "created_by": Uuid::now_v7()})),
            ("/invites", json!({"role": "viewer", "team_id": other_team})),
        ] {
            let (s, b) = app.post(&owner, path, body.clone()).await;
            assert_eq!((s, code(&b)), (400, "bad_request"), "{path} {body}: {b}");
        }
        let (s, b) = app.call(&owner, Method::PATCH, "/me", Some(json!({"display_name": "x", "role": "owner"}))).await;
        assert_eq!(s, 400, "{b}");
        let (s, b) =
            app.call(&owner, Method::PATCH, &format!("/teams/{team}"), Some(json!({"team_id": other_team}))).await;
        assert_eq!(s, 400, "{b}");
        // Nothing was written for the other team.
        assert!(app.accounts.api_keys(other_team).await.unwrap().is_empty());
        assert!(app.accounts.invites(other_team).await.unwrap().is_empty());
        let _ = user;
        // A JSON endpoint refuses other content types with 415.
        let resp = app
            .http
            .post(&format!("{}/api/v1/api-keys", app.base))
            .header("content-type", "multipart/form-data; boundary=x")
            .body("--x--")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "unauthenticated first");
        let Caller::Session { token, csrf } = &owner else { unreachable!() };
        let resp = app
            .http
            .post(&format!("{}/api/v1/api-keys", app.base))
            .header("cookie", format!("herald_session={token}"))
            .header("x-csrf-token", csrf)
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 415);
    })
    .await;
}

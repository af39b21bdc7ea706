//! Connections through the API: live checks before saving, sealed credentials that never come
//! back, status changes on auth failures, quotas, audit, and the SSRF guard on user-chosen hosts.

mod common;

use common::{App, code, test_net};
use herald_accounts::{Accounts, AccountsConfig};
use herald_http::Method;
use herald_store::testing::each_backend;
use herald_testkit::telegram;
use herald_vault::{MasterKey, Vault};
use serde_json::{Value, json};

fn telegram_body(token: &str) -> Value {
    json!({"platform": "telegram", "credentials": {"bot_token": token}, "settings": {"chat_id": telegram::CHANNEL}})
}

async fn stored_credentials(app: &App) -> Vec<String> {
    herald_store::on_read!(app.db, c => sqlx::query_scalar("SELECT credentials FROM connections").fetch_all(c).await)
        .unwrap()
}

async fn audit_actions(app: &App, who: &common::Caller) -> Vec<String> {
    let (_, page) = app.get(who, "/audit").await;
    page["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_connection_is_checked_live_sealed_and_never_returned() {
    each_backend(|db| async move {
        let fake = telegram::start().await;
        let app = App::start_with_net(db, test_net().with_base("telegram", fake.url.clone())).await;
        let (owner, _, _) = app.owner("o@example.com").await;

        // A wrong token is refused by the platform, and nothing is saved.
        let (s, b) = app.post(&owner, "/connections", telegram_body("123:wrong-token-wrong-token-wrong-token")).await;
        assert_eq!((s, code(&b)), (422, "platform_auth_failed"), "{b}");
        assert!(!b.to_string().contains("wrong-token"), "the token leaked: {b}");
        assert!(stored_credentials(&app).await.is_empty());

        let (s, created) = app.post(&owner, "/connections", telegram_body(telegram::TOKEN)).await;
        assert_eq!(s, 201, "{created}");
        assert_eq!(created["status"], "active");
        assert_eq!(created["account"], format!("@{}", telegram::BOT_USERNAME));
        assert_eq!(created["settings"]["chat_type"], "channel", "verify completes the settings: {created}");
        assert!(created["verified_at"].is_string());
        let id = created["id"].as_str().unwrap().to_string();
        // getMe and the bot's rights in the chat were both asked.
        assert!(!fake.requests_to("/getMe").is_empty());
        assert!(!fake.requests_to("/getChatMember").is_empty());

        let (_, list) = app.get(&owner, "/connections").await;
        let (_, one) = app.get(&owner, &format!("/connections/{id}")).await;
        for v in [&created, &list, &one] {
            assert!(!v.to_string().contains(telegram::TOKEN), "credentials came back: {v}");
            assert!(v.to_string().contains(&id));
        }
        let (_, filtered) = app.get(&owner, "/connections?platform=mastodon").await;
        assert_eq!(filtered.as_array().unwrap().len(), 0);

        // At rest the credentials are sealed.
        let stored = stored_credentials(&app).await;
        assert_eq!(stored.len(), 1);
        assert!(stored[0].starts_with("hv1."), "{}", stored[0]);
        assert!(!stored[0].contains(telegram::TOKEN) && !stored[0].contains("AAHerald"));

        // Renaming needs no live check; unknown fields are refused.
        let (s, renamed) =
            app.call(&owner, Method::PATCH, &format!("/connections/{id}"), Some(json!({"name": "News"}))).await;
        assert_eq!((s, renamed["name"].as_str()), (200, Some("News")));
        let (s, _) =
            app.call(&owner, Method::PATCH, &format!("/connections/{id}"), Some(json!({"colour": "red"}))).await;
        assert_eq!(s, 400);

        let (s, gone) = app.call(&owner, Method::DELETE, &format!("/connections/{id}"), None).await;
        assert_eq!((s, gone["name"].as_str()), (200, Some("News")));
        assert_eq!(app.get(&owner, &format!("/connections/{id}")).await.0, 404);
        let actions = audit_actions(&app, &owner).await;
        for a in ["connection.created", "connection.updated", "connection.deleted"] {
            assert!(actions.iter().any(|x| x == a), "{a} missing from {actions:?}");
        }
        let (_, page) = app.get(&owner, "/audit").await;
        assert!(!page.to_string().contains(telegram::TOKEN));
    })
    .await;
}

#[tokio::test]
async fn an_auth_failure_flips_to_needs_reauth_until_new_credentials_pass() {
    each_backend(|db| async move {
        let fake = telegram::start().await;
        let app = App::start_with_net(db, test_net().with_base("telegram", fake.url.clone())).await;
        let (owner, _, _) = app.owner("o@example.com").await;
        let (_, created) = app.post(&owner, "/connections", telegram_body(telegram::TOKEN)).await;
        let id = created["id"].as_str().unwrap().to_string();

        // The bot token is revoked at Telegram.
        let new_token = "123456:AAHerald-new-token_0123456789abcdefghij";
        fake.data().token = new_token.to_string();
        let (s, tested) = app.post(&owner, &format!("/connections/{id}/test"), json!({})).await;
        assert_eq!(s, 200, "{tested}");
        assert_eq!(tested["status"], "needs_reauth");
        assert_eq!(tested["last_error"]["class"], "auth");
        assert!(tested["last_error"]["message"].as_str().unwrap().contains("Unauthorized"), "{tested}");
        assert!(audit_actions(&app, &owner).await.iter().any(|a| a == "connection.status_changed"));
        // The team is told once, as when a delivery finds it; a second failing check says nothing new.
        let (_, _) = app.post(&owner, &format!("/connections/{id}/test"), json!({})).await;
        let (s, notes) = app.get(&owner, "/notifications").await;
        assert_eq!(s, 200, "{notes}");
        let told: Vec<_> =
            notes.as_array().unwrap().iter().filter(|n| n["kind"] == "connection.needs_reauth").collect();
        assert_eq!(told.len(), 1, "{notes}");
        assert_eq!(told[0]["subject_id"], id.as_str());

        // The platform being down is an error, not a re-auth.
        fake.data().token = telegram::TOKEN.to_string();
        fake.fail_next(herald_testkit::Failure::ServerError(502));
        let (_, tested) = app.post(&owner, &format!("/connections/{id}/test"), json!({})).await;
        assert_eq!(tested["status"], "error", "{tested}");
        assert_eq!(tested["last_error"]["class"], "transient");

        // New credentials that pass make it active again; ones that fail change nothing.
        fake.data().token = new_token.to_string();
        let (s, b) = app
            .call(
                &owner,
                Method::PATCH,
                &format!("/connections/{id}"),
                Some(json!({"credentials": {"bot_token": telegram::TOKEN}})),
            )
            .await;
        assert_eq!((s, code(&b)), (422, "platform_auth_failed"), "{b}");
        let (s, fixed) = app
            .call(
                &owner,
                Method::PATCH,
                &format!("/connections/{id}"),
                Some(json!({"credentials": {"bot_token": new_token}})),
            )
            .await;
        assert_eq!(s, 200, "{fixed}");
        assert_eq!(fixed["status"], "active");
        assert_eq!(fixed["last_error"], Value::Null);
    })
    .await;
}

#[tokio::test]
async fn quota_unknown_platforms_and_blocked_hosts_are_refused_before_saving() {
    each_backend(|db| async move {
        let fake = telegram::start().await;
        let app = App::start_with_net(db.clone(), test_net().with_base("telegram", fake.url.clone())).await;
        let (owner, _, team) = app.owner("o@example.com").await;
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE teams SET quota_connections = 1 WHERE id = $1", team).unwrap();
        tx.commit().await.unwrap();
        assert_eq!(app.post(&owner, "/connections", telegram_body(telegram::TOKEN)).await.0, 201);
        let calls = fake.requests().len();
        let (s, b) = app.post(&owner, "/connections", telegram_body(telegram::TOKEN)).await;
        assert_eq!((s, code(&b)), (403, "quota_exceeded"), "{b}");
        assert_eq!(fake.requests().len(), calls, "the quota is checked before the platform is called");

        let (s, b) = app.post(&owner, "/connections", json!({"platform": "myspace", "credentials": {}})).await;
        assert_eq!((s, code(&b)), (422, "validation_failed"), "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("telegram"));
    })
    .await;

    // The production guard: a webhook pointing at a private address never leaves.
    each_backend(|db| async move {
        let strict = herald_platforms::Net::new(
            herald_http::HttpClient::trusted().unwrap(),
            herald_http::SafeClient::new(Default::default()).unwrap(),
        );
        let app = App::start_with_net(db, strict).await;
        let (owner, _, _) = app.owner("o@example.com").await;
        for url in ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://0x7f000001/"] {
            let (s, b) = app
                .post(
                    &owner,
                    "/connections",
                    json!({"platform": "webhook", "credentials": {}, "settings": {"url": url}}),
                )
                .await;
            assert_eq!(s, 422, "{url}: {b}");
            assert_eq!(b["error"]["details"]["code"], "ssrf_blocked_destination", "{url}: {b}");
        }
    })
    .await;
}

#[tokio::test]
async fn rotating_the_master_key_rewraps_connection_credentials() {
    each_backend(|db| async move {
        let fake = telegram::start().await;
        let old = MasterKey::generate();
        let app = App::start_full_net(
            db.clone(),
            AccountsConfig::default(),
            Vault::new(std::slice::from_ref(&old)),
            test_net().with_base("telegram", fake.url.clone()),
        )
        .await;
        let (owner, _, team) = app.owner("o@example.com").await;
        let (_, created) = app.post(&owner, "/connections", telegram_body(telegram::TOKEN)).await;
        let id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();

        let new = MasterKey::generate();
        let accounts = Accounts::new(db.clone(), Vault::new(&[new.clone(), old]), AccountsConfig::default());
        let report = accounts.rewrap_secrets(|_| {}).await.unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
        assert!(report.rewrapped >= 1);
        let stored = stored_credentials(&app).await;
        assert!(stored[0].starts_with(&format!("hv1.{}.", new.id())), "{}", stored[0]);
        // Only the new key is needed now.
        let only_new = Accounts::new(db, Vault::new(&[new]), AccountsConfig::default());
        let connections = herald_connections::Connections::new(only_new, test_net());
        let loaded = connections.load(team, id).await.unwrap();
        assert_eq!(loaded.connection.credentials.0["bot_token"], telegram::TOKEN);
    })
    .await;
}

//! Sign-in, sessions, CSRF, throttling, two-factor, API keys, invites, quotas and the audit log,
//! over real HTTP on both backends.

mod common;

use common::{App, Caller, PASSWORD, code};
use herald_accounts::{AccountsConfig, Quota, totp};
use herald_core::TeamRole;
use herald_http::Method;
use herald_store::testing::each_backend;
use herald_store::{Db, Ts};
use serde_json::json;
use std::time::Duration;

async fn exec(db: &Db, sql: &'static str, at: Ts) {
    let mut tx = db.begin().await.unwrap();
    herald_store::exec!(tx, sql, at).unwrap();
    tx.commit().await.unwrap();
}

fn ago(secs: i64) -> Ts {
    Ts(chrono::Utc::now() - chrono::Duration::seconds(secs))
}

#[tokio::test]
async fn sessions_rotate_at_login_end_at_logout_and_expire() {
    each_backend(|db| async move {
        let config = AccountsConfig { session_idle: Duration::from_secs(600), ..AccountsConfig::default() };
        let app = App::start_with(db.clone(), config).await;
        let (first, _, _) = app.owner("s@example.com").await;
        assert_eq!(app.get(&first, "/me").await.0, 200);

        // Signing in again from the same browser (sending the old cookie) ends the old session.
        let Caller::Session { token: old, .. } = &first else { unreachable!() };
        let resp = app
            .http
            .post(&format!("{}/api/v1/session/login", app.base))
            .header("cookie", format!("herald_session={old}"))
            .json(&json!({"email": "s@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let (s, b) = app.get(&first, "/me").await;
        assert_eq!((s, code(&b)), (401, "unauthorized"), "the pre-login session must end: {b}");

        // Logout ends the session on the next request.
        let (second, _) = app.login("s@example.com", PASSWORD, json!({})).await.unwrap();
        assert_eq!(app.call(&second, Method::POST, "/session/logout", None).await.0, 204);
        assert_eq!(app.get(&second, "/me").await.0, 401);

        // Idle expiry and absolute expiry.
        let (idle, _) = app.login("s@example.com", PASSWORD, json!({})).await.unwrap();
        exec(&db, "UPDATE sessions SET last_seen_at = $1", ago(601)).await;
        assert_eq!(app.get(&idle, "/me").await.0, 401, "idle for longer than session_idle");
        let (absolute, _) = app.login("s@example.com", PASSWORD, json!({})).await.unwrap();
        exec(&db, "UPDATE sessions SET expires_at = $1", ago(1)).await;
        assert_eq!(app.get(&absolute, "/me").await.0, 401, "past the absolute expiry");
    })
    .await;
}

#[tokio::test]
async fn cookie_writes_need_the_csrf_token_and_the_same_origin() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (owner, _, _) = app.owner("c@example.com").await;
        let Caller::Session { token, csrf } = &owner else { unreachable!() };
        let url = format!("{}/api/v1/teams", app.base);
        let post = |csrf: Option<&str>, origin: Option<&str>| {
            let mut r =
                app.http.post(&url).header("cookie", format!("herald_session={token}")).json(&json!({"name": "x"}));
            if let Some(c) = csrf {
                r = r.header("x-csrf-token", c);
            }
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            r.send()
        };
        assert_eq!(post(None, None).await.unwrap().status().as_u16(), 403, "no CSRF token");
        assert_eq!(post(Some("wrong"), None).await.unwrap().status().as_u16(), 403, "wrong CSRF token");
        assert_eq!(
            post(Some(csrf), Some("https://evil.example")).await.unwrap().status().as_u16(),
            403,
            "foreign origin"
        );
        assert_eq!(post(Some(csrf), Some(&app.base)).await.unwrap().status().as_u16(), 201);
        // Reads need no token; Bearer keys need none.
        let get = app.http.get(&url).header("cookie", format!("herald_session={token}")).send().await.unwrap();
        assert_eq!(get.status().as_u16(), 200);
    })
    .await;
}

#[tokio::test]
async fn password_change_can_end_other_sessions_and_disabling_ends_all() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (here, user, _) = app.owner("p@example.com").await;
        let (elsewhere, _) = app.login("p@example.com", PASSWORD, json!({})).await.unwrap();
        let new = "a much better passphrase";
        let (s, b) =
            app.post(&here, "/me/password", json!({"current_password": "wrong password!", "new_password": new})).await;
        assert_eq!((s, code(&b)), (401, "invalid_credentials"));
        let (s, b) =
            app.post(&here, "/me/password", json!({"current_password": PASSWORD, "new_password": "short"})).await;
        assert_eq!((s, code(&b)), (422, "validation_failed"));
        let (s, _) = app
            .post(
                &here,
                "/me/password",
                json!({"current_password": PASSWORD, "new_password": new, "end_other_sessions": true}),
            )
            .await;
        assert_eq!(s, 204);
        assert_eq!(app.get(&here, "/me").await.0, 200, "the current session survives");
        assert_eq!(app.get(&elsewhere, "/me").await.0, 401, "the other session ended");
        assert!(app.login("p@example.com", PASSWORD, json!({})).await.is_err());
        let (again, _) = app.login("p@example.com", new, json!({})).await.unwrap();

        app.accounts.set_disabled(user, true).await.unwrap();
        assert_eq!(app.get(&here, "/me").await.0, 401);
        assert_eq!(app.get(&again, "/me").await.0, 401);
        let (s, b) = app.login("p@example.com", new, json!({})).await.unwrap_err();
        assert_eq!((s, code(&b)), (401, "invalid_credentials"), "a disabled user gets the usual answer");
    })
    .await;
}

#[tokio::test]
async fn a_revoked_or_expired_key_fails_on_the_next_request() {
    each_backend(|db| async move {
        let app = App::start(db.clone()).await;
        let (owner, _, _) = app.owner("k@example.com").await;
        let (s, created) = app.post(&owner, "/api-keys", json!({"name": "ci", "role": "editor"})).await;
        assert_eq!(s, 201);
        let key = Caller::Key(created["key"].as_str().unwrap().to_string());
        assert!(created["key"].as_str().unwrap().starts_with("hk_"));
        assert_eq!(app.get(&key, "/members").await.0, 200);
        // Listing never shows the key again.
        let (_, list) = app.get(&owner, "/api-keys").await;
        assert!(!list.to_string().contains(created["key"].as_str().unwrap()));
        assert_eq!(list[0]["prefix"].as_str().unwrap().len(), 9);
        let id = created["id"].as_str().unwrap();
        assert_eq!(app.call(&owner, Method::DELETE, &format!("/api-keys/{id}"), None).await.0, 200);
        let (s, b) = app.get(&key, "/members").await;
        assert_eq!((s, code(&b)), (401, "unauthorized"));
        assert_eq!(app.call(&owner, Method::DELETE, &format!("/api-keys/{id}"), None).await.0, 404, "already revoked");

        let (_, created) = app
            .post(&owner, "/api-keys", json!({"name": "short", "role": "viewer", "expires_at": chrono::Utc::now() + chrono::Duration::hours(1)}))
            .await;
        let key = Caller::Key(created["key"].as_str().unwrap().to_string());
        assert_eq!(app.get(&key, "/members").await.0, 200);
        exec(&db, "UPDATE api_keys SET expires_at = $1 WHERE expires_at IS NOT NULL", ago(1)).await;
        assert_eq!(app.get(&key, "/members").await.0, 401);
        assert_eq!(app.get(&Caller::Key("hk_made_up".into()), "/members").await.0, 401);
    })
    .await;
}

#[tokio::test]
async fn failed_logins_are_throttled_alike_for_unknown_and_known_accounts() {
    each_backend(|db| async move {
        let app = App::start(db.clone()).await;
        app.owner("t@example.com").await;
        // Wrong password and unknown email: the same answer.
        let (s1, b1) = app.login("t@example.com", "not the password", json!({})).await.unwrap_err();
        let (s2, b2) = app.login("nobody@example.com", "not the password", json!({})).await.unwrap_err();
        assert_eq!((s1, &b1), (s2, &b2));
        assert_eq!(code(&b1), "invalid_credentials");
        for _ in 0..4 {
            let (s, b) = app.login("t@example.com", "not the password", json!({})).await.unwrap_err();
            assert_eq!(s, 401, "{b}");
        }
        // Five failures: now even the right password waits.
        let (s, b) = app.login("t@example.com", PASSWORD, json!({})).await.unwrap_err();
        assert_eq!((s, code(&b)), (429, "rate_limited"), "{b}");
        assert!(b["error"]["details"]["retry_after_secs"].as_i64().unwrap() >= 1);
        // Another account from the same address is not blocked by this account's failures…
        let (s, _) = app.login("nobody2@example.com", "x", json!({})).await.unwrap_err();
        assert_eq!(s, 401);
        // …until the address itself has failed 20 times, whichever accounts it tried.
        for i in 0..13 {
            let (s, b) = app.login(&format!("spray{i}@example.com"), "x", json!({})).await.unwrap_err();
            assert_eq!(s, 401, "{b}");
        }
        let (s, b) = app.login("spray-last@example.com", "x", json!({})).await.unwrap_err();
        assert_eq!((s, code(&b)), (429, "rate_limited"), "the address is throttled: {b}");
        // Not a permanent lockout: once the delay passes, the right password works.
        exec(&db, "UPDATE login_throttle SET blocked_until = $1", ago(1)).await;
        assert!(app.login("t@example.com", PASSWORD, json!({})).await.is_ok());
        // Every attempt was recorded.
        let team = app.accounts.user_by_email("t@example.com").await.unwrap().unwrap();
        let teams = app.accounts.teams_of(team.id).await.unwrap();
        let events = app.accounts.audit_events(teams[0].id, &Default::default()).await.unwrap();
        assert_eq!(events.iter().filter(|e| e.action == "login.failed").count(), 5, "attempts on this account");
        assert!(events.iter().any(|e| e.action == "login.succeeded" && e.ip.as_deref() == Some("127.0.0.1")));
    })
    .await;
}

#[tokio::test]
async fn two_factor_enrols_with_a_first_code_and_never_takes_a_code_twice() {
    each_backend(|db| async move {
        let app = App::start(db.clone()).await;
        let (owner, _, team) = app.owner("f@example.com").await;
        let (s, enrol) = app.call(&owner, Method::POST, "/me/2fa/enrol", None).await;
        assert_eq!(s, 200);
        let secret = enrol["secret"].as_str().unwrap().to_string();
        assert!(enrol["otpauth_uri"].as_str().unwrap().contains(&secret));
        assert!(enrol["qr_svg"].as_str().unwrap().contains("<svg"));
        let now = chrono::Utc::now().timestamp();
        let code_now = totp::code_at(&secret, totp::step_of(now)).unwrap();
        let (s, _) = app.post(&owner, "/me/2fa/confirm", json!({"code": "000000"})).await;
        assert_eq!(s, 422);
        let (s, codes) = app.post(&owner, "/me/2fa/confirm", json!({"code": code_now})).await;
        assert_eq!(s, 200, "{codes}");
        let recovery: Vec<String> =
            codes["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        assert_eq!(recovery.len(), 10);

        // The secret is sealed at rest.
        let stored: String =
            herald_store::on_read!(db, c => sqlx::query_scalar("SELECT totp_secret FROM users").fetch_one(c).await)
                .unwrap();
        assert!(stored.starts_with("hv1.") && !stored.contains(&secret));

        let (s, b) = app.login("f@example.com", PASSWORD, json!({})).await.unwrap_err();
        assert_eq!((s, code(&b)), (401, "two_factor_required"));
        // The code used to confirm cannot sign in: its step is spent.
        let (s, b) = app.login("f@example.com", PASSWORD, json!({"totp_code": code_now})).await.unwrap_err();
        assert_eq!((s, code(&b)), (401, "invalid_credentials"), "replay within the window");
        let next = totp::code_at(&secret, totp::step_of(now) + 1).unwrap();
        assert!(app.login("f@example.com", PASSWORD, json!({"totp_code": next})).await.is_ok());
        let (s, _) = app.login("f@example.com", PASSWORD, json!({"totp_code": next})).await.unwrap_err();
        assert_eq!(s, 401, "the same code twice");
        // A recovery code works once.
        assert!(app.login("f@example.com", PASSWORD, json!({"recovery_code": recovery[0]})).await.is_ok());
        assert!(app.login("f@example.com", PASSWORD, json!({"recovery_code": recovery[0]})).await.is_err());
        let events = app
            .accounts
            .audit_events(
                team,
                &herald_accounts::AuditQuery { action: Some("login.2fa*".into()), ..Default::default() },
            )
            .await
            .unwrap();
        assert!(events.iter().any(|e| e.action == "login.2fa_failed"));
        assert!(events.iter().any(|e| e.action == "login.2fa_succeeded"));
    })
    .await;
}

#[tokio::test]
async fn a_team_can_require_two_factor() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (owner, _, team) = app.owner("r@example.com").await;
        let (member, _) = app.member(&owner, "r2@example.com", TeamRole::Editor).await;
        let (s, _) =
            app.call(&owner, Method::PATCH, &format!("/teams/{team}"), Some(json!({"require_2fa": true}))).await;
        assert_eq!(s, 200);
        let (s, b) = app.get(&member, "/members").await;
        assert_eq!((s, code(&b)), (403, "two_factor_enrollment_required"), "{b}");
        // Enrolment itself still works.
        let (s, enrol) = app.call(&member, Method::POST, "/me/2fa/enrol", None).await;
        assert_eq!(s, 200);
        let code_now =
            totp::code_at(enrol["secret"].as_str().unwrap(), totp::step_of(chrono::Utc::now().timestamp())).unwrap();
        assert_eq!(app.post(&member, "/me/2fa/confirm", json!({"code": code_now})).await.0, 200);
        assert_eq!(app.get(&member, "/members").await.0, 200);
    })
    .await;
}

#[tokio::test]
async fn invites_are_single_use_and_quotas_refuse_without_partial_writes() {
    each_backend(|db| async move {
        let app = App::start(db.clone()).await;
        let (owner, _, team) = app.owner("q@example.com").await;
        let (_, inv) = app.post(&owner, "/invites", json!({"role": "viewer", "email": "only@example.com"})).await;
        let (s, _) = app
            .post(
                &Caller::Anonymous,
                "/invites/accept",
                json!({"token": inv["token"], "email": "other@example.com", "display_name": "O", "password": PASSWORD}),
            )
            .await;
        assert_eq!(s, 404, "an invite for another address");
        assert!(app.accounts.user_by_email("other@example.com").await.unwrap().is_none(), "no user left behind");
        let (s, _) = app
            .post(
                &Caller::Anonymous,
                "/invites/accept",
                json!({"token": inv["token"], "email": "only@example.com", "display_name": "O", "password": PASSWORD}),
            )
            .await;
        assert_eq!(s, 200);
        let (s, _) = app
            .post(
                &Caller::Anonymous,
                "/invites/accept",
                json!({"token": inv["token"], "email": "only2@example.com", "display_name": "O", "password": PASSWORD}),
            )
            .await;
        assert_eq!(s, 404, "used");

        // Quotas: only an instance admin sets them.
        let (s, _) = app.call(&owner, Method::PUT, &format!("/teams/{team}/quotas"), Some(json!({"members": 2}))).await;
        assert_eq!(s, 404);
        let mut tx = db.begin().await.unwrap();
        app.accounts.create_user(&mut tx, "admin@example.com", "Admin", PASSWORD, true).await.unwrap();
        tx.commit().await.unwrap();
        let (admin, _) = app.login("admin@example.com", PASSWORD, json!({})).await.unwrap();
        let (s, q) = app
            .call(
                &admin,
                Method::PUT,
                &format!("/teams/{team}/quotas"),
                Some(json!({"members": 2, "posts_per_month": 3})),
            )
            .await;
        assert_eq!(s, 200, "{q}");
        let (s, b) = app.post(&owner, "/invites", json!({"role": "viewer"})).await;
        assert_eq!((s, code(&b)), (403, "quota_exceeded"), "{b}");
        assert_eq!(b["error"]["details"]["quota"], "members");
        assert_eq!(b["error"]["details"]["limit"], 2);
        assert_eq!(app.accounts.invites(team).await.unwrap().len(), 1, "nothing written");

        // A monthly quota counts in the caller's transaction and refuses without counting.
        for _ in 0..3 {
            let mut tx = db.begin().await.unwrap();
            app.accounts.consume_monthly(&mut tx, team, Quota::PostsPerMonth, 1).await.unwrap();
            tx.commit().await.unwrap();
        }
        let mut tx = db.begin().await.unwrap();
        let err = app.accounts.consume_monthly(&mut tx, team, Quota::PostsPerMonth, 1).await.unwrap_err();
        assert_eq!(err.code.as_str(), "quota_exceeded");
        drop(tx);
        let mut tx = db.begin().await.unwrap();
        let err = app.accounts.consume_monthly(&mut tx, team, Quota::PostsPerMonth, 1).await.unwrap_err();
        assert_eq!(err.details.unwrap()["used"], 3, "the refused call counted nothing");
        drop(tx);

        // Deferred, a count over the limit fails the transaction: at once on SQLite, at the commit
        // (or the next read) on PostgreSQL, where the error is told from others by `quota_error`.
        let mut tx = db.begin().await.unwrap();
        let err = match herald_accounts::consume_monthly_deferred(&mut tx, team, Quota::PostsPerMonth, 2).await {
            Err(e) => {
                drop(tx); // the writer, on SQLite
                e
            }
            Ok(()) => herald_accounts::quota_error(&tx.commit().await.unwrap_err()).expect("the quota's error"),
        };
        assert_eq!(err.code.as_str(), "quota_exceeded");
        assert_eq!(err.details.unwrap(), json!({"quota": "posts_per_month", "limit": 3, "used": 3, "requested": 2}));
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE teams SET quota_posts_month = 5 WHERE id = $1", team).unwrap();
        herald_accounts::consume_monthly_deferred(&mut tx, team, Quota::PostsPerMonth, 2).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let err = app.accounts.consume_monthly(&mut tx, team, Quota::PostsPerMonth, 1).await.unwrap_err();
        assert_eq!(err.details.unwrap()["used"], 5, "the deferred count within the limit counted");
    })
    .await;
}

#[tokio::test]
async fn the_audit_log_is_filterable_paginated_and_admin_only() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (owner, _, _) = app.owner("a@example.com").await;
        let (viewer, viewer_id) = app.member(&owner, "v@example.com", TeamRole::Viewer).await;
        for i in 0..3 {
            let (_, k) = app.post(&owner, "/api-keys", json!({"name": format!("k{i}"), "role": "viewer"})).await;
            app.call(&owner, Method::DELETE, &format!("/api-keys/{}", k["id"].as_str().unwrap()), None).await;
        }
        app.call(&owner, Method::PATCH, &format!("/members/{viewer_id}"), Some(json!({"role": "editor"}))).await;
        assert_eq!(app.get(&viewer, "/audit").await.0, 403);
        let (s, page) = app.get(&owner, "/audit?action=api_key.*&limit=4").await;
        assert_eq!(s, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| e["action"].as_str().unwrap().starts_with("api_key.")));
        assert_eq!(events[0]["action"], "api_key.revoked", "newest first");
        let next = page["next"].as_str().unwrap();
        let (_, rest) = app.get(&owner, &format!("/audit?action=api_key.*&limit=4&before={next}")).await;
        assert_eq!(rest["events"].as_array().unwrap().len(), 2);
        assert!(rest["next"].is_null());
        let (_, roles) = app.get(&owner, "/audit?action=member.role_changed").await;
        let e = &roles["events"][0];
        assert_eq!(e["details"]["to"], "editor");
        assert_eq!(e["actor"], "a@example.com");
        assert_eq!(e["target_id"], viewer_id.to_string());
        let (s, _) = app.get(&owner, "/audit?team_id=x").await;
        assert_eq!(s, 400, "unknown filters are refused");
    })
    .await;
}

#[tokio::test]
async fn first_run_setup_creates_the_owner_once() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let token = app.accounts.issue_setup_token().await.unwrap().expect("no users yet");
        let body = json!({"token": token, "email": "first@example.com", "display_name": "First", "password": PASSWORD});
        let (s, b) = app.post(&Caller::Anonymous, "/session/setup", body.clone()).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["user"]["is_admin"], true);
        assert_eq!(b["teams"][0]["role"], "owner");
        let (s, _) = app.post(&Caller::Anonymous, "/session/setup", body).await;
        assert_eq!(s, 404, "single use");
        assert!(app.accounts.issue_setup_token().await.unwrap().is_none(), "no setup once a user exists");
        // The OpenAPI document is served and lists the routes.
        let doc: serde_json::Value =
            app.http.get(&format!("{}/api/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
        let (admin, _) = app.login("first@example.com", PASSWORD, json!({})).await.unwrap();
        let (s, reg) = app.get(&admin, "/platforms").await;
        assert_eq!(s, 200);
        let bsky = reg["platforms"].as_array().unwrap().iter().find(|p| p["id"] == "bluesky").unwrap().clone();
        assert_eq!(bsky["text"]["max"], 300);
        assert_eq!(bsky["text"]["counting"]["kind"], "graphemes");
        assert_eq!(app.get(&Caller::Anonymous, "/platforms").await.0, 401);
        for p in ["/session/login", "/teams", "/members", "/invites", "/api-keys", "/audit", "/me", "/platforms"] {
            assert!(doc["paths"].get(p).is_some(), "{p} missing from the OpenAPI document");
        }
    })
    .await;
}

#[tokio::test]
async fn password_reset_tokens_are_single_use_and_end_sessions() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let (s1, _, _) = app.owner("reset@example.com").await;
        let (s, _) =
            app.post(&Caller::Anonymous, "/password-reset/request", json!({"email": "nobody@example.com"})).await;
        assert_eq!(s, 202, "the same answer for unknown emails");
        let (_, token) = app.accounts.issue_reset_token("reset@example.com").await.unwrap().unwrap();
        let new = "brand new passphrase";
        let body = json!({"token": token, "new_password": new});
        assert_eq!(app.post(&Caller::Anonymous, "/password-reset/complete", body.clone()).await.0, 204);
        assert_eq!(app.post(&Caller::Anonymous, "/password-reset/complete", body).await.0, 404);
        assert_eq!(app.get(&s1, "/me").await.0, 401, "sessions ended");
        assert!(app.login("reset@example.com", new, json!({})).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn rotation_rewraps_under_the_new_key_and_copied_ciphertexts_do_not_open() {
    use herald_vault::{MasterKey, Vault};
    each_backend(|db| async move {
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let before = App::start_full(db.clone(), AccountsConfig::default(), Vault::new(std::slice::from_ref(&old))).await;
        let mut seeds = Vec::new();
        for email in ["x@example.com", "y@example.com"] {
            let (me, _, _) = before.owner(email).await;
            let (_, enrol) = before.call(&me, Method::POST, "/me/2fa/enrol", None).await;
            let seed = enrol["secret"].as_str().unwrap().to_string();
            let code_now = totp::code_at(&seed, totp::step_of(chrono::Utc::now().timestamp())).unwrap();
            assert_eq!(before.post(&me, "/me/2fa/confirm", json!({"code": code_now})).await.0, 200);
            seeds.push(seed);
        }
        // New key first, old key still readable: old rows open, rewrap moves them all.
        let both = App::start_full(db.clone(), AccountsConfig::default(), Vault::new(&[new.clone(), old.clone()])).await;
        let by_key = both.accounts.secrets_by_key().await.unwrap();
        assert_eq!(by_key.get(&old.id()), Some(&2));
        let report = both.accounts.rewrap_secrets(|_| {}).await.unwrap();
        assert_eq!((report.rewrapped, report.failed.len()), (2, 0));
        assert_eq!(both.accounts.rewrap_secrets(|_| {}).await.unwrap().rewrapped, 0, "idempotent");
        assert_eq!(both.accounts.secrets_by_key().await.unwrap().get(&new.id()), Some(&2));
        // With only the new key, sign-in with a code works.
        let after = App::start_full(db.clone(), AccountsConfig::default(), Vault::new(std::slice::from_ref(&new))).await;
        let step = totp::step_of(chrono::Utc::now().timestamp()) + 1;
        let code_x = totp::code_at(&seeds[0], step).unwrap();
        assert!(after.login("x@example.com", PASSWORD, json!({"totp_code": code_x})).await.is_ok());
        // A ciphertext copied into another user's row does not open there.
        let mut tx = db.begin().await.unwrap();
        herald_store::exec!(tx, "UPDATE users SET totp_secret = (SELECT totp_secret FROM users WHERE email = 'x@example.com') WHERE email = 'y@example.com'").unwrap();
        tx.commit().await.unwrap();
        let code_from_x = totp::code_at(&seeds[0], step + 1).unwrap();
        let (s, b) = after.login("y@example.com", PASSWORD, json!({"totp_code": code_from_x})).await.unwrap_err();
        assert_eq!((s, code(&b)), (500, "internal"), "{b}");
        let report = after.accounts.rewrap_secrets(|_| {}).await.unwrap();
        assert_eq!(report.failed.len(), 0, "both rows are under the active key already, nothing to open");
    })
    .await;
}

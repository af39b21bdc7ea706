//! A real Herald API on a random port over a test database, and callers for it.
#![allow(dead_code)]

use herald_accounts::{Accounts, AccountsConfig, Actor};
use herald_core::TeamRole;
use herald_http::{HttpClient, Method};
use herald_server::{AppState, Role, router};
use herald_store::Db;
use herald_vault::{MasterKey, Vault};
use serde_json::{Value, json};
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery";

/// A valid PNG header of the given size (enough for sniffing and dimensions).
pub fn png(width: u32, height: u32, total: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0]);
    v.resize(total.max(v.len()), 0);
    v
}

/// Clients that may reach the fakes on 127.0.0.1, with every platform's API base pointing at
/// `HERALD_TEST_*` fakes where a test sets them through [`App::start_with_net`].
pub fn test_net() -> herald_platforms::Net {
    use herald_http::guard::{Cidr, GuardConfig};
    let guard = GuardConfig { allow_networks: vec![Cidr::parse("127.0.0.0/8").unwrap()], allow_ports: vec![] };
    herald_platforms::Net::new(
        HttpClient::trusted_with_timeout(std::time::Duration::from_secs(3)).unwrap(),
        herald_http::SafeClient::new(guard).unwrap(),
    )
}

pub struct App {
    pub base: String,
    pub http: HttpClient,
    pub accounts: Accounts,
    pub db: Db,
    /// The posts service behind the API, for driving workers and the stats collector in tests.
    pub posts: herald_posts::Posts,
    pub sources: herald_triggers::Sources,
    pub workflows: herald_workflows::Workflows,
    /// The signed media URLs this app's deliveries carry (as the worker makes them).
    pub media_urls: herald_media::PublicMedia,
}

/// How a test authenticates.
#[derive(Clone, Debug)]
pub enum Caller {
    Anonymous,
    Key(String),
    Session { token: String, csrf: String },
}

impl App {
    pub async fn start(db: Db) -> App {
        Self::start_with(db, AccountsConfig::default()).await
    }

    pub async fn start_with(db: Db, config: AccountsConfig) -> App {
        Self::start_full(db, config, Vault::new(&[MasterKey::generate()])).await
    }

    pub async fn start_full(db: Db, config: AccountsConfig, vault: Vault) -> App {
        Self::start_full_net(db, config, vault, test_net()).await
    }

    /// With platform clients of the test's choosing (API bases pointed at fakes).
    pub async fn start_with_net(db: Db, net: herald_platforms::Net) -> App {
        Self::start_full_net(db, AccountsConfig::default(), Vault::new(&[MasterKey::generate()]), net).await
    }

    pub async fn start_full_net(db: Db, config: AccountsConfig, vault: Vault, net: herald_platforms::Net) -> App {
        Self::start_custom(db, config, vault, net, |_| {}).await
    }

    /// With the sources' settings adjusted (a fake hub and YouTube, another public URL).
    pub async fn start_with_triggers(db: Db, triggers: impl FnOnce(&mut herald_triggers::TriggerConfig)) -> App {
        Self::start_custom(db, AccountsConfig::default(), Vault::new(&[MasterKey::generate()]), test_net(), triggers)
            .await
    }

    pub async fn start_custom(
        db: Db,
        config: AccountsConfig,
        vault: Vault,
        net: herald_platforms::Net,
        triggers: impl FnOnce(&mut herald_triggers::TriggerConfig),
    ) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // As `herald serve` does with HERALD_PUBLIC_URL: deliveries carry signed media URLs.
        let signer = herald_media::UrlSigner::new(vault.derive(herald_media::signing::LABEL));
        let media_urls = herald_media::PublicMedia::new(&base, signer.clone(), std::time::Duration::from_secs(86_400));
        let accounts = Accounts::new(db.clone(), vault.clone(), config);
        let mut trigger_config =
            herald_triggers::TriggerConfig { public_url: Some(base.clone()), ..Default::default() };
        triggers(&mut trigger_config);
        let sources = herald_triggers::Sources::new(
            db.clone(),
            vault.clone(),
            net.safe.clone(),
            net.trusted.clone(),
            trigger_config,
        );
        let (safe, trusted) = (net.safe.clone(), net.trusted.clone());
        let connections = herald_connections::Connections::new(accounts.clone(), net);
        let queue = herald_queue::Queue::new(db.clone());
        let posts = herald_posts::Posts::new(
            accounts.clone(),
            connections.clone(),
            queue.clone(),
            herald_media::MediaStore::local(herald_store::testing::scratch_dir("herald-media")),
        )
        .with_public_media(media_urls.clone());
        let workflows = herald_workflows::Workflows::new(
            db.clone(),
            posts.clone(),
            connections.clone(),
            safe,
            trusted,
            vault,
            herald_workflows::WorkflowConfig { public_url: Some(base.clone()), ..Default::default() },
        );
        let state = AppState {
            db: db.clone(),
            accounts: accounts.clone(),
            connections,
            posts: posts.clone(),
            sources: sources.clone(),
            workflows: workflows.clone(),
            media_max_bytes: 1 << 20,
            media_signer: signer,
            public_url: None,
            mail_enabled: false,
            queue: herald_queue::Queue::new(db.clone()),
            metrics: herald_server::metrics::install(),
            role: Role::All,
        };
        let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        App { base, http: HttpClient::trusted().unwrap(), accounts, db, posts, sources, workflows, media_urls }
    }

    pub async fn call(&self, who: &Caller, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        match who {
            Caller::Anonymous => {}
            Caller::Key(k) => req = req.bearer_auth(k),
            Caller::Session { token, csrf } => {
                req = req.header("cookie", format!("herald_session={token}")).header("x-csrf-token", csrf)
            }
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A notification in `team`, as a failed delivery would leave.
    pub async fn notify(&self, team: Uuid) -> Uuid {
        let id = Uuid::now_v7();
        let mut tx = self.db.begin().await.unwrap();
        herald_store::exec!(
            tx,
            "INSERT INTO notifications (id, team_id, kind, subject_type, subject_id, message, created_at) \
             VALUES ($1, $2, 'delivery.failed', 'delivery', $3, 'test', $4)",
            id,
            team,
            Uuid::now_v7(),
            herald_store::Ts::now()
        )
        .unwrap();
        tx.commit().await.unwrap();
        id
    }

    /// Uploads a file to the media library as multipart.
    pub async fn upload(&self, who: &Caller, filename: &str, bytes: Vec<u8>) -> (u16, Value) {
        let url = format!("{}/api/v1/media", self.base);
        let form = herald_http::multipart::Form::new()
            .text("alt", "a test image")
            .part("file", herald_http::multipart::Part::bytes(bytes).file_name(filename.to_string()));
        let mut req = self.http.request(Method::POST, &url).multipart(form);
        match who {
            Caller::Anonymous => {}
            Caller::Key(k) => req = req.bearer_auth(k),
            Caller::Session { token, csrf } => {
                req = req.header("cookie", format!("herald_session={token}")).header("x-csrf-token", csrf)
            }
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, who: &Caller, path: &str) -> (u16, Value) {
        self.call(who, Method::GET, path, None).await
    }

    pub async fn post(&self, who: &Caller, path: &str, body: Value) -> (u16, Value) {
        self.call(who, Method::POST, path, Some(body)).await
    }

    /// Signs in over HTTP; returns the session or the error answer.
    pub async fn login(&self, email: &str, password: &str, extra: Value) -> Result<(Caller, Value), (u16, Value)> {
        let mut body = json!({"email": email, "password": password});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        let resp = self.http.post(&format!("{}/api/v1/session/login", self.base)).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        let cookies: Vec<String> =
            resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        let v: Value = resp.json().await.unwrap();
        if status != 200 {
            return Err((status, v));
        }
        let session = cookies.iter().find(|c| c.starts_with("herald_session=")).expect("a session cookie");
        assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax"), "{session}");
        let token = session.trim_start_matches("herald_session=").split(';').next().unwrap().to_string();
        let csrf = v["csrf_token"].as_str().unwrap().to_string();
        Ok((Caller::Session { token, csrf }, v))
    }

    /// A user with their own team (as owner), signed in.
    pub async fn owner(&self, email: &str) -> (Caller, Uuid, Uuid) {
        let mut tx = self.db.begin().await.unwrap();
        let (user, team) = self.accounts.create_user(&mut tx, email, "Owner", PASSWORD, false).await.unwrap();
        tx.commit().await.unwrap();
        let (caller, _) = self.login(email, PASSWORD, json!({})).await.unwrap();
        (caller, user.id, team)
    }

    /// A new user who joins `by`'s team with `role` through an invite; signed in, acting there.
    pub async fn member(&self, by: &Caller, email: &str, role: TeamRole) -> (Caller, Uuid) {
        let (s, inv) = self.post(by, "/invites", json!({"role": role})).await;
        assert_eq!(s, 201, "{inv}");
        let (s, team) = self
            .post(
                &Caller::Anonymous,
                "/invites/accept",
                json!({"token": inv["token"], "email": email, "display_name": "Member", "password": PASSWORD}),
            )
            .await;
        assert_eq!(s, 200, "{team}");
        assert_eq!(team["role"], json!(role));
        let (caller, v) = self.login(email, PASSWORD, json!({})).await.unwrap();
        (caller, Uuid::parse_str(v["user"]["id"].as_str().unwrap()).unwrap())
    }

    /// An API key for `team` with `role`, as the CLI makes them.
    pub async fn key(&self, team: Uuid, role: TeamRole) -> Caller {
        let k = self.accounts.insert_api_key(team, "test", role, None, &Actor::system()).await.unwrap();
        Caller::Key(k.key)
    }
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

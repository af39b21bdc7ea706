//! The SSRF suite: every vector of security requirements 1-8, against real local servers. Test
//! servers live on 127.0.0.2 and 127.0.0.3, which the tests open as if they were public; 127.0.0.1
//! stays forbidden and plays the internal target.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use herald_http::guard::{Cidr, Guard, GuardConfig, Lookup, forbidden_reason};
use herald_http::{FetchError, Method, SafeClient};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn serve(ip: &str, app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A listener that only counts connections: the "internal service" no request may reach.
async fn internal() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, hits)
}

fn config(ports: &[u16]) -> GuardConfig {
    GuardConfig {
        allow_networks: vec![Cidr::parse("127.0.0.2/32").unwrap(), Cidr::parse("127.0.0.3/32").unwrap()],
        allow_ports: ports.to_vec(),
    }
}

/// Answers from a script, one answer per lookup, then the last one forever.
struct Script(Mutex<Vec<Vec<IpAddr>>>);

impl Lookup for Script {
    fn lookup(&self, _host: String) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        let mut answers = self.0.lock().unwrap();
        let next = if answers.len() > 1 { answers.remove(0) } else { answers[0].clone() };
        Box::pin(async move { if next.is_empty() { Err(std::io::Error::other("NXDOMAIN")) } else { Ok(next) } })
    }
}

fn script(answers: &[&[&str]]) -> Arc<Script> {
    Arc::new(Script(Mutex::new(answers.iter().map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect()).collect())))
}

fn blocked(r: Result<impl std::fmt::Debug, FetchError>) -> String {
    match r {
        Err(FetchError::Blocked(b)) => b.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn every_forbidden_range_is_refused_and_public_addresses_pass() {
    for ip in [
        "169.254.169.254",
        "100.100.100.200",
        "100.64.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "10.1.2.3",
        "127.0.0.1",
        "127.255.255.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "192.0.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2001:db8::1",
        "2002:7f00:1::1",
        "fec0::1",
        "100::1",
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(forbidden_reason(ip).is_some(), "{ip} must be refused");
        assert!(Guard::default().check_ip(ip).is_err());
    }
    for ip in
        ["93.184.216.34", "1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "2a00:1450::1"]
    {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(forbidden_reason(ip), None, "{ip} is public");
    }
    // An allowed range opens exactly that range.
    let g = Guard::new(GuardConfig { allow_networks: vec![Cidr::parse("10.0.0.0/8").unwrap()], allow_ports: vec![] });
    assert!(g.check_ip("10.9.9.9".parse().unwrap()).is_ok());
    assert!(g.check_ip("::ffff:10.9.9.9".parse().unwrap()).is_ok());
    assert!(g.check_ip("11.0.0.1".parse().unwrap()).is_ok());
    assert!(g.check_ip("192.168.0.1".parse().unwrap()).is_err());
}

#[test]
fn odd_encodings_of_internal_addresses_and_bad_urls_are_refused_up_front() {
    let g = Guard::default();
    for url in [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.1/",
        "http://017700000001/",
        "http://127.000.000.001/",
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[0:0:0:0:0:ffff:169.254.169.254]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::]/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "ftp://example.com/",
        "data:text/plain,hi",
        "http://example.com:8080/",
        "http://example.com:22/",
        "http://user:pass@example.com/",
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com/%0d%0a\n",
    ] {
        assert!(g.check_url(url).is_err(), "{url:?} must be refused");
    }
    let long = format!("http://{}.com/", "a.".repeat(130));
    assert!(g.check_url(&long).unwrap_err().to_string().contains("253"));
    for url in ["http://example.com/", "https://example.com:443/feed.xml", "https://[2606:4700:4700::1111]/"] {
        assert!(g.check_url(url).is_ok(), "{url} is fine");
    }
}

#[tokio::test]
async fn names_resolving_to_internal_addresses_are_refused_before_any_connection() {
    let (target, hits) = internal().await;
    for answer in
        [&["127.0.0.1"][..], &["93.184.216.34", "127.0.0.1"], &["::1"], &["169.254.169.254"], &["::ffff:127.0.0.1"]]
    {
        let client = SafeClient::with_lookup(config(&[target.port()]), script(&[answer])).unwrap();
        let why = blocked(
            client
                .send(client.request(Method::GET, &format!("http://internal.example:{}/", target.port())).unwrap())
                .await,
        );
        assert!(why.contains("internal.example resolves to"), "{why}");
    }
    let client = SafeClient::with_lookup(config(&[]), script(&[&[]])).unwrap();
    let why = blocked(client.send(client.request(Method::GET, "http://nxdomain.example/").unwrap()).await);
    assert!(why.contains("does not resolve"), "{why}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no TCP connection reached the internal service");
}

#[tokio::test]
async fn dns_rebinding_never_reaches_the_internal_address() {
    // The "public" server closes each connection, so every request must resolve the name again.
    let app = Router::new().route("/", get(|| async { ([(header::CONNECTION, "close")], "public") }));
    let public = serve("127.0.0.2", app).await;
    // The internal service listens on the same port at 127.0.0.1: only the address changes, as
    // a rebinding attacker arranges it.
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", public.port())).await.expect("the same port on 127.0.0.1");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    let client = SafeClient::with_lookup(config(&[public.port()]), script(&[&["127.0.0.2"], &["127.0.0.1"]])).unwrap();
    let url = format!("http://rebind.example:{}/", public.port());
    let (status, body) = client.get_limited(&url, 1024).await.unwrap();
    assert_eq!((status.as_u16(), body.as_slice()), (200, &b"public"[..]));
    for _ in 0..3 {
        let why = blocked(client.get_limited(&url, 1024).await);
        assert!(why.contains("127.0.0.1"), "{why}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "rebinding reached 127.0.0.1");
}

#[tokio::test]
async fn redirects_are_checked_at_every_hop_and_capped_at_three() {
    let (target, hits) = internal().await;
    let t = target.port();
    let app = Router::new()
        .route("/to-loopback", get(move || async move { redirect(&format!("http://127.0.0.1:{t}/")) }))
        .route("/to-v6-loopback", get(move || async move { redirect(&format!("http://[::1]:{t}/")) }))
        .route("/to-metadata", get(|| async { redirect("http://169.254.169.254/latest/meta-data/") }))
        .route("/to-file", get(|| async { redirect("file:///etc/passwd") }))
        .route(
            "/hop/{n}",
            get(|axum::extract::Path(n): axum::extract::Path<u32>| async move {
                if n == 0 { "arrived".into_response() } else { redirect(&format!("/hop/{}", n - 1)) }
            }),
        );
    let public = serve("127.0.0.2", app).await;
    let client = SafeClient::with_lookup(config(&[public.port(), t]), script(&[&["127.0.0.2"]])).unwrap();
    let base = format!("http://127.0.0.2:{}", public.port());
    for path in ["/to-loopback", "/to-v6-loopback", "/to-metadata", "/to-file"] {
        let why = blocked(client.get_limited(&format!("{base}{path}"), 1024).await);
        assert!(why.contains("redirect to"), "{path}: {why}");
    }
    let (status, body) = client.get_limited(&format!("{base}/hop/3"), 1024).await.unwrap();
    assert_eq!((status.as_u16(), body.as_slice()), (200, &b"arrived"[..]), "three hops are fine");
    let why = blocked(client.get_limited(&format!("{base}/hop/4"), 1024).await);
    assert!(why.contains("more than 3 redirects"), "{why}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

fn redirect(to: &str) -> axum::response::Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

#[tokio::test]
async fn credentials_are_dropped_on_a_redirect_to_another_host() {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let s = seen.clone();
    let other = serve(
        "127.0.0.3",
        Router::new().route(
            "/",
            get(move |h: HeaderMap| async move {
                s.lock().unwrap().push(h);
                "other host"
            }),
        ),
    )
    .await;
    let o = other.port();
    let first = serve(
        "127.0.0.2",
        Router::new().route("/", get(move || async move { redirect(&format!("http://127.0.0.3:{o}/")) })),
    )
    .await;
    let client = SafeClient::new(config(&[first.port(), o])).unwrap();
    let req = client
        .request(Method::GET, &format!("http://127.0.0.2:{}/", first.port()))
        .unwrap()
        .header(header::AUTHORIZATION, "Bearer platform-token")
        .header(header::COOKIE, "session=abc");
    let response = client.send(req).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].get(header::AUTHORIZATION).is_none() && seen[0].get(header::COOKIE).is_none(), "{:?}", seen[0]);
}

#[tokio::test]
async fn bodies_stop_at_their_limit_whatever_the_headers_say() {
    let big = vec![b'x'; 2 << 20];
    let chunked = big.clone();
    let app = Router::new()
        .route(
            "/chunked",
            get(move || {
                let body = chunked.clone();
                async move {
                    // A streamed body has no Content-Length.
                    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
                    let stream = futures::stream::iter(chunks);
                    axum::body::Body::from_stream(stream)
                }
            }),
        )
        .route(
            "/declared",
            get(move || {
                let body = big.clone();
                async move { body }
            }),
        );
    let public = serve("127.0.0.2", app).await;
    let client = SafeClient::new(config(&[public.port()])).unwrap();
    for path in ["/chunked", "/declared"] {
        match client.get_limited(&format!("http://127.0.0.2:{}{path}", public.port()), 1 << 20).await {
            Err(FetchError::TooLarge { limit }) => assert_eq!(limit, 1 << 20),
            other => panic!("{path}: expected TooLarge, got {:?}", other.map(|(s, b)| (s, b.len()))),
        }
    }
    let (_, body) = client.get_limited(&format!("http://127.0.0.2:{}/declared", public.port()), 4 << 20).await.unwrap();
    assert_eq!(body.len(), 2 << 20);
}

/// Requirement 7: only herald-http builds HTTP clients.
#[test]
fn no_other_crate_builds_an_http_client() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut offenders = Vec::new();
    let mut stack = vec![root.join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("herald-http") || path.ends_with("target") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for needle in [
                    "reqwest::Client",
                    "reqwest::ClientBuilder",
                    "reqwest::blocking",
                    "hyper::client",
                    "hyper_util::client",
                    "ureq::",
                    "isahc::",
                ] {
                    if text.contains(needle) {
                        offenders.push(format!("{}: {needle}", path.display()));
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "build HTTP clients in herald-http only: {offenders:?}");
}

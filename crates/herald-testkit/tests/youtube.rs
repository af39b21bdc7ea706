//! The fake YouTube hub and pages against a small subscriber written here: it records what the
//! hub sent and answers verifications correctly or not, as told.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use herald_http::HttpClient;
use herald_testkit::youtube::{self, FakeYouTube, Verify, Video};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHANNEL: &str = "UCXuqSBlHAE6Xw-yeJA0Tunw";
const WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Seen {
    /// Raw query strings of the GETs, in order.
    gets: Mutex<Vec<String>>,
    /// (headers, body) of the POSTs, in order.
    posts: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// Answer verifications with something other than the challenge.
    refuse: AtomicBool,
}

/// A WebSub subscriber: `GET /cb/<name>` echoes `hub.challenge` (unless told to refuse),
/// `/cb/liar` always answers a wrong one, and `/cb/redirect` redirects to `/cb/good`.
struct Subscriber {
    url: String,
    seen: Arc<Seen>,
}

impl Subscriber {
    async fn start() -> Subscriber {
        let seen = Arc::new(Seen::default());
        let app = Router::new().route("/cb/{name}", get(verify).post(receive)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Subscriber { url, seen }
    }

    fn gets(&self) -> Vec<HashMap<String, String>> {
        let gets = self.seen.gets.lock().unwrap().clone();
        gets.iter().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).collect()
    }

    fn posts(&self) -> Vec<(HeaderMap, Bytes)> {
        self.seen.posts.lock().unwrap().clone()
    }
}

async fn verify(State(seen): State<Arc<Seen>>, Path(name): Path<String>, RawQuery(q): RawQuery) -> Response {
    let q = q.unwrap_or_default();
    seen.gets.lock().unwrap().push(q.clone());
    let params: HashMap<String, String> = url::form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    if name == "redirect" {
        // To a callback that would echo the challenge: only a hub that follows redirects passes.
        return Redirect::temporary(&format!("/cb/good?{q}")).into_response();
    }
    if name == "liar" || seen.refuse.load(Ordering::SeqCst) {
        return (StatusCode::OK, "not-the-challenge").into_response();
    }
    (StatusCode::OK, params.get("hub.challenge").cloned().unwrap_or_default()).into_response()
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    seen.posts.lock().unwrap().push((headers, body));
    StatusCode::NO_CONTENT
}

fn client() -> HttpClient {
    HttpClient::trusted_with_timeout(Duration::from_secs(10)).unwrap()
}

async fn hub_post(fake: &FakeYouTube, params: &[(&str, &str)]) -> (u16, String) {
    let r = client().post(&fake.hub_url()).form(params).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn subscribe(fake: &FakeYouTube, callback: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let topic = FakeYouTube::topic(CHANNEL);
    let mut params = vec![("hub.callback", callback), ("hub.mode", "subscribe"), ("hub.topic", topic.as_str())];
    params.extend_from_slice(extra);
    hub_post(fake, &params).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn a_subscription_is_verified_with_the_clamped_lease_and_then_active() {
    let (fake, sub) = (youtube::start().await, Subscriber::start().await);
    let callback = format!("{}/cb/good?feed=42", sub.url);
    let extra = [
        ("hub.lease_seconds", "999999"),
        ("hub.secret", "s3cret"),
        ("hub.verify", "async"),
        ("hub.verify_token", "tok"),
        ("hub.unknown", "ignored"),
    ];

    assert_eq!(subscribe(&fake, &callback, &extra).await, (202, String::new()));
    assert!(fake.wait_for_verifications(1, WAIT).await);

    let raw = sub.seen.gets.lock().unwrap()[0].clone();
    assert!(raw.starts_with("feed=42&hub.mode=subscribe&"), "the callback's query comes first: {raw}");
    let get = &sub.gets()[0];
    assert_eq!(get["hub.mode"], "subscribe");
    assert_eq!(get["hub.topic"], FakeYouTube::topic(CHANNEL));
    assert_eq!(get["hub.lease_seconds"], "864000");
    assert_eq!(get["hub.verify_token"], "tok");
    assert!(get["hub.challenge"].len() >= 16);
    let v = &fake.verifications()[0];
    assert_eq!(
        (v.challenge.as_str(), v.status, v.echoed, v.verified),
        (get["hub.challenge"].as_str(), Some(200), true, true)
    );

    let subs = fake.subscriptions();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].callback, callback);
    assert_eq!(subs[0].secret.as_deref(), Some("s3cret"));
    assert_eq!(subs[0].lease_seconds, 864000);
    assert!(subs[0].active);
    let recorded = &fake.hub_requests()[0];
    assert_eq!((recorded.status, recorded.param("hub.unknown")), (202, Some("ignored")));

    // No lease asked: Google's 5 days; a lower cap applies to the next verification.
    let other = format!("{}/cb/other", sub.url);
    assert_eq!(subscribe(&fake, &other, &[]).await.0, 202);
    assert!(fake.wait_for_verifications(2, WAIT).await);
    assert_eq!(sub.gets()[1]["hub.lease_seconds"], "432000");
    fake.set_max_lease(3600);
    assert_eq!(subscribe(&fake, &other, &[]).await.0, 202);
    assert!(fake.wait_for_verifications(3, WAIT).await);
    assert_eq!(sub.gets()[2]["hub.lease_seconds"], "3600");
    assert_eq!(
        fake.subscriptions().iter().filter(|s| s.callback == other).map(|s| s.lease_seconds).collect::<Vec<_>>(),
        [3600]
    );

    fake.expire(&other);
    assert!(!fake.subscriptions().iter().find(|s| s.callback == other).unwrap().active);
}

#[tokio::test]
async fn a_wrong_challenge_leaves_no_subscription_and_a_failed_renewal_keeps_the_old_one() {
    let (fake, sub) = (youtube::start().await, Subscriber::start().await);
    let liar = format!("{}/cb/liar", sub.url);
    assert_eq!(subscribe(&fake, &liar, &[]).await.0, 202, "the answer does not depend on the outcome");
    assert!(fake.wait_for_verifications(1, WAIT).await);
    let v = &fake.verifications()[0];
    assert_eq!((v.status, v.echoed, v.verified, v.body.as_str()), (Some(200), false, false, "not-the-challenge"));
    assert!(fake.subscriptions().is_empty());

    let redirect = format!("{}/cb/redirect", sub.url);
    subscribe(&fake, &redirect, &[]).await;
    assert!(fake.wait_for_verifications(2, WAIT).await);
    let v = &fake.verifications()[1];
    assert_eq!((v.redirected, v.verified), (true, false), "the hub follows no redirect");
    assert!(fake.subscriptions().is_empty());

    let good = format!("{}/cb/good", sub.url);
    subscribe(&fake, &good, &[("hub.secret", "old")]).await;
    assert!(fake.wait_for_verifications(3, WAIT).await);
    sub.seen.refuse.store(true, Ordering::SeqCst);
    subscribe(&fake, &good, &[("hub.secret", "new")]).await;
    assert!(fake.wait_for_verifications(4, WAIT).await);
    assert!(!fake.verifications()[3].verified);
    let subs = fake.subscriptions();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].secret.as_deref(), Some("old"));
}

#[tokio::test]
async fn pushes_are_signed_with_sha1_over_the_exact_body() {
    let (fake, sub) = (youtube::start().await, Subscriber::start().await);
    fake.add_channel(CHANNEL, "@herald", "Herald & Co");
    fake.add_video(CHANNEL, Video::new("vid00000001", "First 'one'"));
    let signed = format!("{}/cb/signed", sub.url);
    let plain = format!("{}/cb/plain", sub.url);
    subscribe(&fake, &signed, &[("hub.secret", "herald-secret")]).await;
    // The /feeds/ form of the topic names the same channel.
    let feeds_topic = format!("https://www.youtube.com/feeds/videos.xml?channel_id={CHANNEL}");
    hub_post(&fake, &[("hub.callback", &plain), ("hub.mode", "subscribe"), ("hub.topic", &feeds_topic)]).await;
    assert!(fake.wait_for_verifications(2, WAIT).await);

    let answers = fake.notify_video(CHANNEL, "vid00000001").await;
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|(_, status)| *status == 204));

    let posts = sub.posts();
    let (headers, body) = posts.iter().find(|(h, _)| h.contains_key("x-hub-signature")).unwrap();
    let expected = format!("sha1={}", youtube::hex(&youtube::hmac_sha1(b"herald-secret", body)));
    assert_eq!(header(headers, "x-hub-signature"), expected);
    assert_eq!(header(headers, "content-type"), "application/atom+xml");
    let link = header(headers, "link");
    assert!(link.contains(&format!("<{}>; rel=hub", fake.hub_url())) && link.contains("rel=self"), "{link}");
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.starts_with("<?xml version='1.0' encoding='UTF-8'?>") && !text.contains('\n'));
    assert!(
        text.contains("<yt:videoId>vid00000001</yt:videoId>") && text.contains("<title>First &#39;one&#39;</title>")
    );
    assert_eq!(posts.iter().filter(|(h, _)| !h.contains_key("x-hub-signature")).count(), 1, "no secret, no signature");

    // Independent of the fake's HMAC: Python's hmac.new(b"herald-secret", body, sha1).hexdigest().
    let fixed = "<feed>caf\u{e9} &amp; co</feed>";
    fake.publish(&FakeYouTube::topic(CHANNEL), fixed).await;
    let posts = sub.posts();
    let (headers, body) = posts.iter().rev().find(|(h, _)| h.contains_key("x-hub-signature")).unwrap();
    assert_eq!(body.as_ref(), fixed.as_bytes());
    assert_eq!(header(headers, "x-hub-signature"), "sha1=a4842f90cd2d3142f580780a7846a30d9053c128");

    // Forged and unsigned pushes go out exactly as asked.
    assert_eq!(fake.publish_raw(&signed, "<feed/>", Some("sha1=00".into())).await, 204);
    assert_eq!(fake.publish_raw(&signed, "<feed/>", None).await, 204);
    let posts = sub.posts();
    assert_eq!(header(&posts[posts.len() - 2].0, "x-hub-signature"), "sha1=00");
    assert!(!posts[posts.len() - 1].0.contains_key("x-hub-signature"));
}

#[tokio::test]
async fn unsubscribing_and_denial_remove_the_subscription() {
    let (fake, sub) = (youtube::start().await, Subscriber::start().await);
    let callback = format!("{}/cb/good", sub.url);
    let topic = FakeYouTube::topic(CHANNEL);
    subscribe(&fake, &callback, &[]).await;
    assert!(fake.wait_for_verifications(1, WAIT).await);
    assert_eq!(fake.subscriptions().len(), 1);

    let unsubscribe = [("hub.callback", callback.as_str()), ("hub.mode", "unsubscribe"), ("hub.topic", &topic)];
    assert_eq!(hub_post(&fake, &unsubscribe).await.0, 202);
    assert!(fake.wait_for_verifications(2, WAIT).await);
    let get = &sub.gets()[1];
    assert_eq!(get["hub.mode"], "unsubscribe");
    assert!(!get.contains_key("hub.lease_seconds"));
    assert!(fake.subscriptions().is_empty());
    assert!(fake.publish(&topic, "<feed/>").await.is_empty());

    subscribe(&fake, &callback, &[]).await;
    assert!(fake.wait_for_verifications(3, WAIT).await);
    assert_eq!(fake.deny(&callback, &topic, "banned").await, 200);
    let get = sub.gets().pop().unwrap();
    assert_eq!((get["hub.mode"].as_str(), get["hub.reason"].as_str()), ("denied", "banned"));
    assert!(fake.subscriptions().is_empty());
}

#[tokio::test]
async fn the_channel_feed_is_capped_newest_first_and_answers_304() {
    let fake = youtube::start().await;
    fake.add_channel(CHANNEL, "herald", "Herald & Co");
    let base = chrono::Utc::now() - chrono::Duration::days(30);
    for i in 0..16 {
        let mut v = Video::new(&format!("video{i:06}"), &format!("Episode {i}"));
        v.published = base + chrono::Duration::days(i);
        v.shorts = i == 15;
        fake.add_video(CHANNEL, v);
    }
    let http = client();
    let feed_url = format!("{}/feeds/videos.xml?channel_id={CHANNEL}", fake.url);
    let r = http.get(&feed_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("last-modified"));
    let xml = r.text().await.unwrap();
    assert!(xml.contains("xmlns:media=\"http://search.yahoo.com/mrss/\""));
    assert!(xml.contains("<title>Herald &amp; Co</title>"));
    assert_eq!(xml.matches("<entry>").count(), 15);
    assert!(!xml.contains("video000000"), "the oldest falls off");
    assert!(xml.find("video000015").unwrap() < xml.find("video000014").unwrap());
    assert!(xml.contains("<link rel=\"alternate\" href=\"https://www.youtube.com/shorts/video000015\"/>"));

    let r = http.get(&feed_url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 304);
    fake.edit_video(CHANNEL, "video000003", |v| v.title = "Renamed".into());
    let r = http.get(&feed_url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("<title>Renamed</title>"));

    let unknown = format!("{}/feeds/videos.xml?channel_id=UCnobody", fake.url);
    assert_eq!(http.get(&unknown).send().await.unwrap().status().as_u16(), 404);
    assert_eq!(fake.requests_to("/feeds/videos.xml").len(), 4);
}

#[tokio::test]
async fn the_handle_page_names_the_channel_id() {
    let fake = youtube::start().await;
    fake.add_channel(CHANNEL, "@Herald", "Herald");
    let http = client();
    let r = http.get(&format!("{}/@herald", fake.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains(&format!("<link rel=\"canonical\" href=\"https://www.youtube.com/channel/{CHANNEL}\">")));
    assert!(html.contains(&format!("<meta itemprop=\"identifier\" content=\"{CHANNEL}\">")));
    assert!(html.contains(&format!("\"channelId\":\"{CHANNEL}\"")));
    assert_eq!(http.get(&format!("{}/@nobody", fake.url)).send().await.unwrap().status().as_u16(), 404);
}

#[tokio::test]
async fn injected_failures_and_bad_requests_are_plain_text() {
    let (fake, sub) = (youtube::start().await, Subscriber::start().await);
    let callback = format!("{}/cb/good", sub.url);
    fake.fail_next_subscribe(503);
    assert_eq!(subscribe(&fake, &callback, &[]).await, (503, "503 Service Unavailable".into()));
    assert_eq!(subscribe(&fake, &callback, &[]).await.0, 202, "only the next request fails");
    assert!(fake.wait_for_verifications(1, WAIT).await);
    assert_eq!(sub.gets().len(), 1, "the failed request was not verified");
    assert_eq!(fake.hub_requests().iter().map(|r| r.status).collect::<Vec<_>>(), [503, 202]);

    let (status, message) = hub_post(&fake, &[("hub.mode", "subscribe")]).await;
    assert_eq!(status, 400);
    assert!(message.starts_with("Invalid parameter: hub.callback"), "{message}");
    let (status, message) = subscribe(&fake, &callback, &[("hub.lease_seconds", "soon")]).await;
    assert_eq!((status, message.as_str()), (400, "Invalid value for hub.lease_seconds: soon"));
    let wrong_topic =
        [("hub.callback", callback.as_str()), ("hub.mode", "subscribe"), ("hub.topic", "https://example.com/feed")];
    assert_eq!(hub_post(&fake, &wrong_topic).await.0, 400);
}

#[tokio::test]
async fn sync_mode_answers_after_verifying() {
    let (fake, sub) = (youtube::start().await, Subscriber::start().await);
    fake.set_verify(Verify::Sync);
    assert_eq!(subscribe(&fake, &format!("{}/cb/good", sub.url), &[]).await.0, 204);
    assert_eq!(fake.subscriptions().len(), 1, "verified before the answer");
    let answer = subscribe(&fake, &format!("{}/cb/liar", sub.url), &[]).await;
    assert_eq!(answer, (409, "Error trying to confirm subscription".into()));
    assert_eq!(fake.subscriptions().len(), 1);
}

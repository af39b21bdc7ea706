//! The approval link in a browser: a page (the same for every token) that decides nothing by
//! being opened, and leaks its address neither to other sites nor into caches. The link's
//! decisions themselves are tested in herald-workflows (`the_approval_link_shows_and_decides_once`).

mod common;

use common::App;
use herald_store::testing::each_backend;
use serde_json::{Value, json};

#[tokio::test]
async fn a_browser_gets_the_page_and_an_api_call_gets_json() {
    each_backend(|db| async move {
        let app = App::start(db).await;
        let url = format!("{}/approve/{}", app.base, "not-a-real-token");

        let page = app
            .http
            .get(&url)
            .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status().as_u16(), 200);
        let header = |r: &herald_http::Response, name: &str| {
            r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
        };
        assert!(header(&page, "content-type").starts_with("text/html"));
        assert_eq!(header(&page, "referrer-policy"), "no-referrer");
        assert_eq!(header(&page, "cache-control"), "no-store");
        let html = page.text().await.unwrap();
        assert!(
            html.contains("<h1>Approve a post</h1>")
                && html.contains("value=\"approve\"")
                && html.contains("value=\"reject\"")
        );
        assert!(!html.contains("not-a-real-token"), "the page does not echo the token");

        // What the page reads, and any API client: JSON, 404 for a token that is not valid.
        let api = app.http.get(&url).header("accept", "application/json").send().await.unwrap();
        assert_eq!(api.status().as_u16(), 404);
        assert_eq!(header(&api, "referrer-policy"), "no-referrer");
        let body: Value = api.json().await.unwrap();
        assert_eq!(body["error"]["message"], "this approval link is not valid");
        let decide = app.http.post(&url).json(&json!({"decision": "approve"})).send().await.unwrap();
        assert_eq!(decide.status().as_u16(), 404);
    })
    .await;
}

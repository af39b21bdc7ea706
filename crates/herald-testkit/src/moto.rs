//! moto's S3 server (`moto_server`, from `pip install "moto[server]"`) as an offline S3 for tests.
//! `.ci/run` installs it; without it a test says so and skips locally, and fails under `CI=true`.

use std::process::Stdio;
use std::time::Duration;

/// A running `moto_server` with one empty bucket; killed when dropped.
pub struct Moto {
    child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`: the endpoint (`AWS_ENDPOINT_URL`).
    pub url: String,
    pub bucket: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Moto {
    /// The AWS settings an operator would give Herald for this server, as environment variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "herald-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "herald-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

/// Starts `moto_server` on a free port and creates `bucket`; `None` (with a note) when it is not
/// installed and this is not CI.
pub async fn start(bucket: &str) -> Option<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let spawned = tokio::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("moto_server is needed for the S3 tests in CI ({e}); .ci/run installs it with pip")
        }
        Err(e) => {
            eprintln!("skipping an S3 test: moto_server is not installed ({e}); pip install \"moto[server]\"");
            return None;
        }
    };
    let moto = Moto { child, url: format!("http://127.0.0.1:{port}"), bucket: bucket.to_string() };
    for _ in 0..300 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            // An unsigned PUT makes the bucket (moto does not check signatures by default).
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.ok()?;
            assert!(answer.starts_with("HTTP/1.1 200"), "moto did not create the bucket: {answer}");
            return Some(moto);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not start on port {port}");
}

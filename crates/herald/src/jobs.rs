//! The job kinds built into the binary.

use crate::config::Smtp;
use herald_accounts::Accounts;
use herald_http::{HttpClient, StatusCode, header};
use herald_queue::{Handler, Job, JobError, NewJob, Registry, enqueue_many};
use herald_store::Db;
use serde_json::json;
use std::time::Duration;

pub const DIAG_PING: &str = "diag.ping";

/// Every handler this binary runs.
pub fn registry(http: HttpClient, accounts: Accounts, smtp: Option<Smtp>, posts: herald_posts::Posts) -> Registry {
    let mut r = Registry::default();
    r.register(DIAG_PING, Ping { http });
    r.register(herald_posts::DELIVERY_JOB, herald_posts::DeliveryHandler::new(posts.clone()));
    r.register(herald_posts::EVENT_JOB, herald_posts::EventHandler::new(posts));
    if let Some(smtp) = smtp {
        r.register(herald_server::MAIL_PASSWORD_RESET, ResetMail { accounts, smtp });
    }
    r
}

/// Mails a password-reset link. The token travels sealed in the payload and is opened only here.
struct ResetMail {
    accounts: Accounts,
    smtp: Smtp,
}

#[async_trait::async_trait]
impl Handler for ResetMail {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let user = job.payload["user_id"]
            .as_str()
            .and_then(|u| uuid::Uuid::parse_str(u).ok())
            .ok_or_else(|| JobError::permanent("the payload has no user_id"))?;
        let sealed = job.payload["token"].as_str().ok_or_else(|| JobError::permanent("the payload has no token"))?;
        let token = self
            .accounts
            .vault()
            .open(sealed, &herald_server::password_reset_binding(user))
            .map_err(|e| JobError::permanent(format!("the reset token does not open: {e}")))?;
        let user = self.accounts.user(user).await.map_err(|e| JobError::permanent(e.message))?;
        let link = self.accounts.link(&format!("/reset-password?token={}", token.expose()));
        let msg = herald_mail::Message {
            from: self.smtp.from.clone(),
            to: user.email.clone(),
            subject: "Reset your Herald password".into(),
            text: format!(
                "Hello {},\n\nSomeone (hopefully you) asked to reset your Herald password. Open this link within an hour to choose a new one:\n\n{link}\n\nIf it was not you, ignore this mail; your password stays as it is.\n",
                user.display_name
            ),
        };
        herald_mail::send(&self.smtp.url, &msg).await.map_err(|e| {
            // The error names the server and the reply, never the link.
            if e.is_transient() { JobError::retry(e) } else { JobError::permanent(e) }
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(120)
    }
}

/// POSTs `{"job_id","attempt"}` to the payload's URL with the job id as Idempotency-Key, so a
/// receiver can tell a retry from a new request. The URL comes from the operator's CLI.
struct Ping {
    http: HttpClient,
}

#[async_trait::async_trait]
impl Handler for Ping {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let url = job.payload["url"].as_str().ok_or_else(|| JobError::permanent("diag.ping payload has no url"))?;
        let response = self
            .http
            .post(url)
            .header("Idempotency-Key", job.id.to_string())
            .json(&json!({"job_id": job.id, "attempt": job.attempt}))
            .send()
            .await
            .map_err(|e| JobError::retry(format!("ping failed: {e}")))?;
        let status = response.status();
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::TOO_MANY_REQUESTS => {
                let secs = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(5);
                Err(JobError::RateLimited {
                    reason: "ping target answered 429".into(),
                    retry_after: Duration::from_secs(secs),
                })
            }
            s if s.is_server_error() => Err(JobError::retry(format!("ping target answered {s}"))),
            s => Err(JobError::permanent(format!("ping target answered {s}"))),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
}

pub async fn enqueue_pings(db: &Db, url: &str, count: usize) -> anyhow::Result<()> {
    url::Url::parse(url).map_err(|e| anyhow::anyhow!("--url `{url}` is not a URL: {e}"))?;
    let mut left = count;
    while left > 0 {
        let n = left.min(1000);
        let mut tx = db.begin().await?;
        enqueue_many(&mut tx, (0..n).map(|_| NewJob::new(DIAG_PING, json!({"url": url}))).collect()).await?;
        tx.commit().await?;
        left -= n;
    }
    Ok(())
}

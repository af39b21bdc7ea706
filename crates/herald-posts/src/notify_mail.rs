//! Notification e-mail: when a notification is recorded and SMTP is configured, the team's owners
//! and admins get a mail saying what happened and what to do.
//!
//! How floods are kept out, in one paragraph. Recording a notification also enqueues one
//! `mail.notification` job for its (team, kind), in the same transaction, with a unique key
//! `mail.notification:{team}:{kind}` and a run time a short delay ahead ([`Pacing::delay`]).
//! While that job waits, every further notification of the kind finds it and adds nothing, so a
//! storm of hundreds of failures is one job. When it runs it mails a digest of the team's unread
//! notifications of that kind not mailed yet, marks them `mailed_at`, and then waits out the
//! window ([`Pacing::window`]) as a rate-limited job, keeping the key: whatever arrives in the
//! window joins the next digest. A run that finds nothing new ends the job, and the next
//! notification starts a new one. So a team gets at most one mail per kind per window; a run
//! that comes early (a new job within the window of the last mail) waits out the rest of it.
//!
//! The sending never touches the transaction that records the event: only the job is written
//! there. Without SMTP, [`enable`] is never called and nothing is enqueued.

use crate::store::{Posts, store};
use herald_accounts::notify_mail::{MailError, Mailer, Recipient};
use herald_core::Error;
use herald_queue::{Job, JobError, NewJob};
use herald_store::{Ts, Tx, exec, on_read};
use serde_json::json;
use std::sync::RwLock;
use std::time::Duration;
use uuid::Uuid;

pub const NOTIFY_MAIL_JOB: &str = "mail.notification";

/// How many notifications a digest lists; the rest are counted.
const LISTED: usize = 20;

/// How notification mail is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// How long after the first notification the mail waits for more of its kind.
    pub delay: Duration,
    /// At most one mail per team and kind in this long.
    pub window: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing { delay: Duration::from_secs(60), window: Duration::from_secs(15 * 60) }
    }
}

/// Whether this process mails notifications, and how paced. A process setting: events are
/// recorded deep inside the delivery worker's and the store's transactions, which do not carry
/// the service, and SMTP is configured for the whole process or not at all.
static PACING: RwLock<Option<Pacing>> = RwLock::new(None);

/// Turns notification mail on (SMTP is configured) or off for this process. `herald serve`
/// calls it at start whatever the node's role, since API nodes record notifications too.
pub fn enable(pacing: Option<Pacing>) {
    *PACING.write().unwrap_or_else(|e| e.into_inner()) = pacing;
}

fn pacing() -> Option<Pacing> {
    *PACING.read().unwrap_or_else(|e| e.into_inner())
}

/// Enqueues (or joins) the mail job for a notification of `kind` just recorded in `tx`.
pub(crate) async fn notified(tx: &mut Tx, team: Uuid, kind: &str) -> Result<(), Error> {
    let Some(pacing) = pacing() else { return Ok(()) };
    let run_at = chrono::Utc::now() + chrono::Duration::from_std(pacing.delay).unwrap_or_default();
    let job = NewJob::new(NOTIFY_MAIL_JOB, json!({"team": team, "kind": kind}))
        .unique_key(format!("{NOTIFY_MAIL_JOB}:{team}:{kind}"))
        .run_at(run_at);
    herald_queue::enqueue(tx, job).await.map_err(Error::from)?;
    Ok(())
}

/// Mails one (team, kind) digest; see the module comment for the pacing.
#[derive(Clone)]
pub struct NotifyMailHandler {
    posts: Posts,
    mailer: Mailer,
}

impl NotifyMailHandler {
    pub fn new(posts: Posts, mailer: Mailer) -> NotifyMailHandler {
        NotifyMailHandler { posts, mailer }
    }
}

#[derive(sqlx::FromRow)]
struct Pending {
    id: Uuid,
    subject_type: String,
    subject_id: Uuid,
    message: String,
    created_at: Ts,
}

#[async_trait::async_trait]
impl herald_queue::Handler for NotifyMailHandler {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let window = pacing().unwrap_or_default().window;
        let team = job.payload["team"].as_str().and_then(|s| s.parse::<Uuid>().ok());
        let (Some(team), Some(kind)) = (team, job.payload["kind"].as_str()) else {
            return Err(JobError::permanent("the notification-mail job is malformed"));
        };
        let db = &self.posts.db;
        let retry = |e: sqlx::Error| JobError::retry(store(e));
        let last: Option<Ts> = on_read!(db, c => sqlx::query_scalar(
            "SELECT MAX(mailed_at) FROM notifications WHERE team_id = $1 AND kind = $2")
            .bind(team).bind(kind).fetch_one(c).await)
        .map_err(retry)?;
        let now = chrono::Utc::now();
        let wait = last.map(|t| t.0 + chrono::Duration::from_std(window).unwrap_or_default() - now);
        let pending: Vec<Pending> = on_read!(db, c => sqlx::query_as(
            "SELECT id, subject_type, subject_id, message, created_at FROM notifications \
             WHERE team_id = $1 AND kind = $2 AND mailed_at IS NULL AND read_at IS NULL ORDER BY id LIMIT 1000")
            .bind(team).bind(kind).fetch_all(c).await)
        .map_err(retry)?;
        if pending.is_empty() {
            return Ok(()); // nothing new since the last mail: the next notification starts a new job
        }
        if let Some(wait) = wait.and_then(|w| w.to_std().ok()).filter(|w| !w.is_zero()) {
            return Err(waiting(wait, window));
        }
        let recipients = self.posts.accounts.notify_mail_recipients(team).await.map_err(JobError::retry)?;
        if !recipients.is_empty() {
            let (subject, text) = self.compose(team, kind, &pending).await.map_err(JobError::retry)?;
            self.mailer.send(&recipients, &subject, &text).await.map_err(|e| send_error(e, &recipients))?;
            tracing::info!(%team, kind, notifications = pending.len(), recipients = recipients.len(), "notification mail sent");
        }
        // What this digest told is not told again. Everything up to its newest, read or not.
        let newest = pending.last().map(|p| p.id).unwrap_or_default();
        let mut tx = db.begin().await.map_err(|e| JobError::retry(Error::from(e)))?;
        exec!(
            tx,
            "UPDATE notifications SET mailed_at = $4 WHERE team_id = $1 AND kind = $2 AND mailed_at IS NULL AND id <= $3",
            team,
            kind,
            newest,
            Ts(now)
        )
        .map_err(retry)?;
        tx.commit().await.map_err(|e| JobError::retry(Error::from(e)))?;
        if recipients.is_empty() {
            return Ok(());
        }
        // Keep the key through the window, so what comes next joins one later digest.
        Err(waiting(window, window))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(120)
    }
}

/// The job waits, holding its unique key, without spending an attempt.
fn waiting(wait: Duration, window: Duration) -> JobError {
    JobError::RateLimited {
        reason: format!("notification mail: at most one per team and kind every {} min", window.as_secs() / 60),
        retry_after: wait,
    }
}

/// A refusal for a while (4xx) or a network failure is tried again; a permanent refusal (5xx)
/// ends the job. The error names the relay and its reply, never the relay's password.
fn send_error(e: MailError, to: &[Recipient]) -> JobError {
    if e.is_transient() {
        JobError::retry(format!("the SMTP relay did not take the notification mail yet: {e}"))
    } else {
        JobError::permanent(format!(
            "the SMTP relay refused the notification mail to {} recipient(s): {e}; check HERALD_SMTP_URL and HERALD_SMTP_FROM",
            to.len()
        ))
    }
}

/// What each kind asks of the reader.
fn what_to_do(kind: &str) -> &'static str {
    match kind {
        "delivery.failed" => {
            "Check the connection and the message below, then retry the delivery \
             (POST /api/v1/deliveries/<delivery id>/retry) or edit the post."
        }
        "delivery.unconfirmed" => {
            "Herald cannot tell whether these went out. Look on the platform, then settle each \
             delivery (POST /api/v1/deliveries/<delivery id>/resolve)."
        }
        "post.failed" => {
            "None of the post's deliveries went out. Open the post, fix what its deliveries report, and retry them."
        }
        "connection.needs_reauth" => {
            "The platform no longer accepts the connection's credentials. Update them \
             (PATCH /api/v1/connections/<connection id>); deliveries to it wait until then."
        }
        _ => "Open the notifications (GET /api/v1/notifications) to see what needs you.",
    }
}

impl NotifyMailHandler {
    async fn compose(&self, team: Uuid, kind: &str, pending: &[Pending]) -> Result<(String, String), Error> {
        let db = &self.posts.db;
        let name: Option<String> = on_read!(db, c => sqlx::query_scalar("SELECT name FROM teams WHERE id = $1")
            .bind(team).fetch_optional(c).await)
        .map_err(store)?;
        let name = name.unwrap_or_else(|| "your team".into());
        let public = self.posts.accounts.config().public_url.clone();
        let n = pending.len();
        let subject = match n {
            1 => format!("[Herald] {kind} in {name}: {}", first_line(&pending[0].message)),
            _ => format!("[Herald] {n} {kind} notifications in {name}"),
        };
        let mut text = format!(
            "Herald recorded {n} {} of kind {kind} in the team \"{name}\" that need{} you.\n\n{}\n\n",
            if n == 1 { "notification" } else { "notifications" },
            if n == 1 { "s" } else { "" },
            what_to_do(kind)
        );
        // Newest first; the rest are counted, and all are in the notifications list.
        for p in pending.iter().rev().take(LISTED) {
            text.push_str(&format!("- {}  {}\n", p.created_at.0.format("%Y-%m-%d %H:%M UTC"), p.message));
            if let Some(base) = &public {
                text.push_str(&format!("  {}\n", self.link(base, p).await?));
            }
        }
        if n > LISTED {
            text.push_str(&format!("… and {} more.\n", n - LISTED));
        }
        let list = match &public {
            Some(base) => format!("{base}/api/v1/notifications?unread=true"),
            None => "GET /api/v1/notifications?unread=true".into(),
        };
        text.push_str(&format!(
            "\nAll unread notifications: {list}\n\n\
             You get this because you are an owner or admin of \"{name}\"; Herald mails each kind at most \
             once every {} minutes. To stop these e-mails for this team, sign in, select the team and send \
             PUT /api/v1/notifications/settings with {{\"email\": false}}.\n",
            pacing().unwrap_or_default().window.as_secs() / 60
        ));
        Ok((subject, text))
    }

    /// Where the notification's subject is in the API: the post of a delivery, the post, or the
    /// connection.
    async fn link(&self, base: &str, p: &Pending) -> Result<String, Error> {
        let path = match p.subject_type.as_str() {
            "delivery" => {
                let post: Option<Uuid> = on_read!(self.posts.db, c => sqlx::query_scalar(
                    "SELECT post_id FROM deliveries WHERE id = $1").bind(p.subject_id).fetch_optional(c).await)
                .map_err(store)?;
                match post {
                    Some(post) => format!("/api/v1/posts/{post}"),
                    None => "/api/v1/notifications".into(),
                }
            }
            "post" => format!("/api/v1/posts/{}", p.subject_id),
            "connection" => format!("/api/v1/connections/{}", p.subject_id),
            _ => "/api/v1/notifications".into(),
        };
        Ok(format!("{base}{path}"))
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

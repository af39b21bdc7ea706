//! Who gets notification e-mail and how it leaves: a team's owners and admins whose account is
//! not disabled and who have not turned the e-mail off for that team (`memberships.notify_mail`),
//! mailed through the operator's SMTP relay (HERALD_SMTP_URL, HERALD_SMTP_FROM). What the mail
//! says is the posts crate's business; this module only knows people and the relay.

use crate::model::Principal;
use crate::service::{Accounts, store};
use crate::teams::authorize;
use herald_core::{Action, Error, ErrorCode};
use herald_mail::{Address, Mail, SmtpUrl};
use herald_store::{exec, on_read};
use tokio::net::TcpStream;
use uuid::Uuid;

pub use herald_mail::MailError;

/// A person a notification mail goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub display_name: String,
    pub email: String,
}

impl Accounts {
    /// The team's owners and admins who want notification e-mail: enabled accounts whose
    /// membership has `notify_mail` on. Editors and viewers are never mailed.
    pub async fn notify_mail_recipients(&self, team: Uuid) -> Result<Vec<Recipient>, Error> {
        let rows: Vec<(String, String)> = on_read!(self.db, c => sqlx::query_as(
            "SELECT u.display_name, u.email FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.team_id = $1 AND m.role IN ('owner', 'admin') AND m.notify_mail = $2 AND u.disabled = $3 \
             ORDER BY m.created_at, m.user_id")
            .bind(team).bind(true).bind(false).fetch_all(c).await)
        .map_err(store)?;
        Ok(rows.into_iter().map(|(display_name, email)| Recipient { display_name, email }).collect())
    }

    /// Whether the caller gets notification e-mail in the team they act in. Only a signed-in
    /// person has a mailbox: an API key is refused.
    pub async fn notify_mail_setting(&self, p: &Principal) -> Result<bool, Error> {
        let (team, user) = person_in_team(p)?;
        let on: Option<bool> = on_read!(self.db, c => sqlx::query_scalar(
            "SELECT notify_mail FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team).bind(user).fetch_optional(c).await)
        .map_err(store)?;
        on.ok_or_else(|| Error::not_found("member"))
    }

    /// Turns the caller's notification e-mail in their current team on or off.
    pub async fn set_notify_mail(&self, p: &Principal, on: bool) -> Result<bool, Error> {
        let (team, user) = person_in_team(p)?;
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let n =
            exec!(tx, "UPDATE memberships SET notify_mail = $3 WHERE team_id = $1 AND user_id = $2", team, user, on)
                .map_err(store)?;
        if n == 0 {
            return Err(Error::not_found("member"));
        }
        tx.commit().await.map_err(Error::from)?;
        Ok(on)
    }
}

fn person_in_team(p: &Principal) -> Result<(Uuid, Uuid), Error> {
    let (team, _) = authorize(p, Action::Read)?;
    let user = p.user_id.ok_or_else(|| {
        Error::new(
            ErrorCode::ValidationFailed,
            "an API key has no mailbox; sign in as the person whose notification e-mail this is",
        )
    })?;
    Ok((team, user))
}

/// The operator's SMTP relay and the From address of Herald's own mail.
#[derive(Clone)]
pub struct Mailer {
    server: SmtpUrl,
    from: Address,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold the relay's password.
        f.debug_struct("Mailer").field("server", &self.server.redacted()).field("from", &self.from.email).finish()
    }
}

impl Mailer {
    pub fn new(server: SmtpUrl, from: &str) -> Result<Mailer, MailError> {
        Ok(Mailer { server, from: Address::parse(from)? })
    }

    /// From HERALD_SMTP_URL-style text (`smtp://`, `smtp+starttls://`, `smtps://`).
    pub fn parse(url: &str, from: &str) -> Result<Mailer, String> {
        let server = SmtpUrl::parse(url)?;
        Mailer::new(server, from).map_err(|e| e.to_string())
    }

    /// Sends one mail to every recipient at once, each hidden from the others (Bcc), so a retry
    /// after a failure resends to all or none.
    pub async fn send(&self, to: &[Recipient], subject: &str, text: &str) -> Result<(), MailError> {
        let bcc = to.iter().map(|r| Address { name: Some(r.display_name.clone()), email: r.email.clone() }).collect();
        let mut mail = Mail::new(self.from.clone(), Vec::new(), subject, text);
        mail.bcc = bcc;
        let server = &self.server;
        let tcp = tokio::time::timeout(server.timeout(), TcpStream::connect((server.host.as_str(), server.port)))
            .await
            .map_err(|_| MailError::Timeout(server.timeout()))?
            .map_err(|source| MailError::Connect { server: server.redacted(), source })?;
        herald_mail::send_over(tcp, server, &mail).await.map(|_| ())
    }
}

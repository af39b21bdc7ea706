//! Email: newsletters and digests sent through an SMTP server the user chose.
//!
//! Credentials are `{smtp_url}` (`smtp+starttls://user:pass@host:587`, `smtps://…:465`, or
//! `smtp://` for a relay on a trusted network); settings are `{from, to: [1–50 addresses],
//! subject_prefix?}`. The server is the user's, so the socket is opened by the SSRF guard
//! (`SafeClient::connect_tcp`) and handed to herald-mail's dialogue. One recipient is shown in
//! `To:`; several are sent as Bcc, so subscribers do not see one another.
//!
//! SMTP has no idempotency. The Message-ID is derived from the delivery's key, so a resent mail
//! carries the same one and mail clients can fold the two; but once the message's final dot has
//! left, a lost answer is `unknown_outcome`.

use crate::{Adapter, Connection, Net, Outgoing, Pacing, Platform, PlatformError, Published, Verified};
use async_trait::async_trait;
use herald_http::FetchError;
use herald_mail::{Address, Mail, MailError, SmtpUrl};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use unicode_segmentation::UnicodeSegmentation;

pub struct Email;

pub const MAX_RECIPIENTS: usize = 50;
/// Media go as attachments; past about 20 MB (before base64) many servers refuse the mail.
pub const MAX_ATTACHMENT_BYTES: usize = 20 << 20;
/// The longest subject taken from the text's first line (RFC 5322's recommended line length).
pub const SUBJECT_CHARS: usize = 78;
/// SMTP's own ports. The guard lets a user-chosen name reach only 80 and 443 unless the operator
/// opens more; for this protocol these three are the ordinary ones, not odd ports.
const SMTP_PORTS: [u16; 3] = [25, 465, 587];

#[derive(Deserialize)]
struct Secret {
    smtp_url: String,
}

#[derive(Deserialize)]
struct RawSettings {
    from: String,
    to: Vec<String>,
    #[serde(default)]
    subject_prefix: Option<String>,
}

struct Settings {
    from: Address,
    to: Vec<Address>,
    subject_prefix: Option<String>,
}

impl Settings {
    fn json(&self) -> Value {
        let mut v = json!({
            "from": self.from.to_string(),
            "to": self.to.iter().map(Address::to_string).collect::<Vec<_>>(),
        });
        if let Some(p) = &self.subject_prefix {
            v["subject_prefix"] = json!(p);
        }
        v
    }
}

fn server(conn: &Connection) -> Result<SmtpUrl, PlatformError> {
    let s: Secret = conn.credentials.parse("email")?;
    // SmtpUrl's messages never repeat the password.
    SmtpUrl::parse(s.smtp_url.trim())
        .map_err(|e| PlatformError::invalid(format!("the SMTP URL is not usable: {e}")).code("bad_credentials"))
}

fn settings(raw: &Value) -> Result<Settings, PlatformError> {
    let s: RawSettings = crate::settings(raw, "email")?;
    let bad = |m: String| PlatformError::invalid(m).code("bad_settings");
    let shown = |a: &str| a.chars().filter(|c| !c.is_control()).take(100).collect::<String>();
    let from =
        Address::parse(&s.from).map_err(|_| bad(format!("from: `{}` is not an email address", shown(&s.from))))?;
    if s.to.is_empty() || s.to.len() > MAX_RECIPIENTS {
        return Err(bad(format!("to: give between 1 and {MAX_RECIPIENTS} addresses (got {})", s.to.len())));
    }
    let mut to: Vec<Address> = Vec::with_capacity(s.to.len());
    for (i, raw) in s.to.iter().enumerate() {
        let a = Address::parse(raw).map_err(|_| bad(format!("to[{i}]: `{}` is not an email address", shown(raw))))?;
        if !to.iter().any(|b| b.email.eq_ignore_ascii_case(&a.email)) {
            to.push(a);
        }
    }
    let subject_prefix = s
        .subject_prefix
        .map(|p| p.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_string())
        .filter(|p| !p.is_empty());
    Ok(Settings { from, to, subject_prefix })
}

/// Opens the socket through the SSRF guard. The guard refuses URLs with a user in them, so it
/// gets the server's address only.
async fn dial(net: &Net, server: &SmtpUrl) -> Result<tokio::net::TcpStream, PlatformError> {
    let host = if server.host.contains(':') { format!("[{}]", server.host) } else { server.host.clone() };
    let url = url::Url::parse(&format!("{}://{host}:{}", server.scheme(), server.port)).map_err(|e| {
        PlatformError::invalid(format!("the SMTP server `{host}` is not a valid host ({e})")).code("bad_credentials")
    })?;
    let default_port = if SMTP_PORTS.contains(&server.port) { server.port } else { 25 };
    let stream =
        net.safe.connect_tcp(&url, &["smtp", "smtps", "smtp+starttls"], default_port).await.map_err(|e| match e {
            FetchError::Blocked(b) => PlatformError::invalid(b.to_string()).code("ssrf_blocked_destination"),
            other => PlatformError::transient(other.to_string()),
        })?;
    // A password over plain `smtp://` is readable on the way. That is acceptable only to a relay on
    // a network the operator opened (a private or loopback address that passed the guard).
    if server.security == herald_mail::Security::Plain && server.username.is_some() {
        let public = stream.peer_addr().map(|a| herald_http::guard::forbidden_reason(a.ip()).is_none()).unwrap_or(true);
        if public {
            return Err(PlatformError::invalid(format!(
                "refusing to send the SMTP password unencrypted to {host}; use smtp+starttls:// (port 587) or smtps:// (port 465)"
            ))
            .code("plaintext_auth"));
        }
    }
    Ok(stream)
}

/// A failed dialogue in its class. The SMTP reply code goes into `code`.
fn classify(e: MailError) -> PlatformError {
    let message = e.to_string();
    match e {
        MailError::Reply { command, code, text } => {
            // 530 also means "STARTTLS first", which is the URL's scheme, not the password.
            let login = matches!(code, 534 | 535 | 538)
                || code == 530 && !text.to_ascii_uppercase().contains("STARTTLS")
                || command.starts_with("AUTH") && code >= 500;
            let err = match code {
                _ if login => PlatformError::auth(format!(
                    "{message}; check the user and password in the SMTP URL, or an app password if the \
                     provider asks for one"
                )),
                400..=499 => PlatformError::transient(message),
                500..=599 => PlatformError::invalid(message),
                _ => {
                    return PlatformError::invalid(format!("the server does not speak SMTP as expected: {text}"))
                        .code("not_smtp");
                }
            };
            err.code(code)
        }
        MailError::Unconfirmed(_) => PlatformError::unknown_outcome(format!(
            "{message}. Check a recipient's mailbox, then confirm or retry the delivery"
        )),
        MailError::Connect { .. } | MailError::Io(_) | MailError::Timeout(_) => PlatformError::transient(message),
        MailError::NoStartTls => PlatformError::invalid(message).code("no_starttls"),
        MailError::Tls(_) => PlatformError::invalid(message).code("tls_failed"),
        MailError::Address(_) | MailError::NoRecipient => PlatformError::invalid(message).code("bad_settings"),
    }
}

/// `options.subject`, or the text's first line cut to [`SUBJECT_CHARS`], after the prefix.
fn subject(post: &Outgoing, prefix: Option<&str>) -> String {
    let own = post.option_str("subject").map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let base = own.or_else(|| post.text.lines().map(str::trim).find(|l| !l.is_empty()).map(first_line));
    match (prefix, base) {
        (Some(p), Some(b)) => format!("{p} {b}"),
        (Some(p), None) => p.to_string(),
        (None, Some(b)) => b,
        (None, None) => "(no subject)".to_string(),
    }
}

/// A line cut to [`SUBJECT_CHARS`] characters (graphemes), at a word where one is near.
fn first_line(line: &str) -> String {
    let graphemes: Vec<&str> = line.graphemes(true).collect();
    if graphemes.len() <= SUBJECT_CHARS {
        return line.to_string();
    }
    let cut = graphemes[..SUBJECT_CHARS - 1].concat();
    let cut = match cut.rfind(char::is_whitespace) {
        Some(i) if i > cut.len() / 2 => cut[..i].trim_end().to_string(),
        _ => cut,
    };
    format!("{cut}…")
}

/// The text, then the link on its own line unless the text already has it.
fn body(post: &Outgoing) -> String {
    let mut text = post.text_with_link().trim_end().to_string();
    text.push('\n');
    text
}

/// `herald-…@<from domain>` (without brackets) from the delivery's key, so a resend repeats it.
pub fn message_id(idempotency_key: &str, from: &str) -> String {
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let safe = !idempotency_key.is_empty()
        && idempotency_key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let left = if safe { idempotency_key.to_string() } else { hex::encode(&Sha256::digest(idempotency_key)[..16]) };
    match left.starts_with("herald-") {
        true => format!("{left}@{domain}"),
        false => format!("herald-{left}@{domain}"),
    }
}

#[async_trait]
impl Adapter for Email {
    fn platform(&self) -> &'static Platform {
        crate::registry("email")
    }

    /// Logs in (EHLO, STARTTLS or TLS, AUTH) and says QUIT without sending anything.
    async fn verify(&self, net: &Net, conn: &Connection) -> Result<Verified, PlatformError> {
        let server = server(conn)?;
        let s = settings(&conn.settings)?;
        let tcp = dial(net, &server).await?;
        herald_mail::check_over(tcp, &server).await.map_err(classify)?;
        Ok(Verified { account: s.from.email.clone(), credentials: conn.credentials.clone(), settings: s.json() })
    }

    async fn publish(&self, net: &Net, conn: &Connection, post: &Outgoing) -> Result<Published, PlatformError> {
        let total: usize = post.media.iter().map(|m| m.bytes.len()).sum();
        if total > MAX_ATTACHMENT_BYTES {
            return Err(PlatformError::invalid(format!(
                "the attachments come to {total} bytes; mail servers commonly refuse more than {MAX_ATTACHMENT_BYTES}"
            ))
            .code("media_size"));
        }
        let server = server(conn)?;
        let s = settings(&conn.settings)?;
        let text = body(post);
        if text.trim().is_empty() {
            return Err(PlatformError::invalid("an email needs text or a link").code("empty_post"));
        }
        let id = message_id(&post.idempotency_key, &s.from.email);
        let mut mail = Mail::new(s.from.clone(), Vec::new(), subject(post, s.subject_prefix.as_deref()), text);
        if s.to.len() == 1 {
            mail.to = s.to;
        } else {
            mail.bcc = s.to;
        }
        mail.message_id = Some(id.clone());
        mail.attachments = post
            .media
            .iter()
            .map(|m| herald_mail::Attachment {
                filename: m.filename.clone(),
                mime: m.mime.clone(),
                bytes: m.bytes.to_vec(),
            })
            .collect();
        mail.html = post.option_str("html").filter(|h| !h.trim().is_empty()).map(str::to_string);
        mail.in_reply_to = post.reply_to.as_deref().map(|r| r.trim().trim_matches(['<', '>']).to_string());
        let tcp = dial(net, &server).await?;
        let accepted = herald_mail::send_over(tcp, &server, &mail).await.map_err(classify)?;
        tracing::debug!(server = %server.redacted(), %accepted, "the SMTP server took the mail");
        Ok(Published { id: format!("<{id}>"), url: None, credentials: None })
    }

    /// One bucket per SMTP server, shared by every connection that sends through it.
    fn pacing(&self, conn: &Connection) -> Option<Pacing> {
        let server = server(conn).ok()?;
        Some(Pacing { bucket: format!("email:{}", server.host.to_ascii_lowercase()), capacity: 5.0, per_second: 1.0 })
    }
}

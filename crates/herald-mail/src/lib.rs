//! Outgoing mail through the operator's SMTP relay (`HERALD_SMTP_URL`): password-reset links and,
//! later, notifications. A deliberately small client: EHLO, STARTTLS or implicit TLS (verified
//! against the platform's roots), AUTH PLAIN, one message per connection. A 4xx reply or a network
//! failure is [`MailError::is_transient`], so the job that sends it retries; a 5xx is final.
#![forbid(unsafe_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`: no TLS, for a relay on localhost or a trusted network.
    Plain,
    /// `smtp+starttls://`: upgrade with STARTTLS, and fail if the server does not offer it.
    StartTls,
    /// `smtps://`: TLS from the first byte (port 465).
    Tls,
}

/// Where and how to send. The password never shows in `Debug` or `Display`.
#[derive(Clone)]
pub struct SmtpUrl {
    pub security: Security,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    password: Option<String>,
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl SmtpUrl {
    pub fn parse(raw: &str) -> Result<SmtpUrl, String> {
        let u = url::Url::parse(raw).map_err(|e| format!("`{}` is not a URL ({e})", redact_raw(raw)))?;
        let (security, default_port) = match u.scheme() {
            "smtp" => (Security::Plain, 25),
            "smtp+starttls" => (Security::StartTls, 587),
            "smtps" => (Security::Tls, 465),
            other => return Err(format!("unknown scheme `{other}`; use smtp://, smtp+starttls:// or smtps://")),
        };
        let host =
            u.host_str().filter(|h| !h.is_empty()).ok_or("the URL has no host")?.trim_matches(['[', ']']).to_string();
        let decode =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        let username = (!u.username().is_empty()).then(|| decode(u.username()).unwrap_or_default());
        let password = u.password().map(|p| decode(p).unwrap_or_default());
        Ok(SmtpUrl { security, host, port: u.port().unwrap_or(default_port), username, password })
    }

    pub fn redacted(&self) -> String {
        let scheme = match self.security {
            Security::Plain => "smtp",
            Security::StartTls => "smtp+starttls",
            Security::Tls => "smtps",
        };
        let user = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            _ => String::new(),
        };
        format!("{scheme}://{user}{}:{}", self.host, self.port)
    }
}

fn redact_raw(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &raw[..s + 3], &raw[at..]),
        _ => raw.to_string(),
    }
}

/// A plain-text mail.
#[derive(Debug, Clone)]
pub struct Message {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot reach the SMTP server {server}: {source}")]
    Connect { server: String, source: std::io::Error },
    #[error("the SMTP server answered {code} to {command}: {text}")]
    Reply { command: &'static str, code: u16, text: String },
    #[error("the SMTP server does not offer STARTTLS, which smtp+starttls:// requires")]
    NoStartTls,
    #[error("TLS with the SMTP server failed: {0}")]
    Tls(String),
    #[error("the SMTP conversation failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the SMTP server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("invalid address `{0}`")]
    Address(String),
}

impl MailError {
    /// Worth retrying later: network trouble or a 4xx reply.
    pub fn is_transient(&self) -> bool {
        match self {
            MailError::Reply { code, .. } => (400..500).contains(code),
            MailError::Connect { .. } | MailError::Io(_) | MailError::Timeout(_) => true,
            MailError::NoStartTls | MailError::Tls(_) | MailError::Address(_) => false,
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Conn {
    io: BufReader<Box<dyn Stream>>,
}

impl Conn {
    async fn reply(&mut self, command: &'static str) -> Result<(u16, Vec<String>), MailError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(TIMEOUT, self.io.read_line(&mut line))
                .await
                .map_err(|_| MailError::Timeout(TIMEOUT))??;
            if n == 0 {
                return Err(MailError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
            let line = line.trim_end().to_string();
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| MailError::Reply {
                command,
                code: 0,
                text: line.clone(),
            })?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok((code, lines));
            }
        }
    }

    async fn expect(&mut self, command: &'static str, ok: &[u16]) -> Result<Vec<String>, MailError> {
        let (code, lines) = self.reply(command).await?;
        if ok.contains(&code) { Ok(lines) } else { Err(MailError::Reply { command, code, text: lines.join(" ") }) }
    }

    async fn send(&mut self, command: &'static str, line: &str, ok: &[u16]) -> Result<Vec<String>, MailError> {
        let w = self.io.get_mut();
        tokio::time::timeout(TIMEOUT, async {
            w.write_all(line.as_bytes()).await?;
            w.write_all(b"\r\n").await?;
            w.flush().await
        })
        .await
        .map_err(|_| MailError::Timeout(TIMEOUT))??;
        self.expect(command, ok).await
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, MailError> {
    use rustls_platform_verifier::ConfigVerifierExt;
    let config = rustls::ClientConfig::with_platform_verifier().map_err(|e| MailError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn wrap_tls(stream: Box<dyn Stream>, host: &str) -> Result<Box<dyn Stream>, MailError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| MailError::Tls(e.to_string()))?;
    let tls = tls_connector()?.connect(name, stream).await.map_err(|e| MailError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

fn check_address(a: &str) -> Result<&str, MailError> {
    if a.contains(['\r', '\n', '<', '>']) || !a.contains('@') { Err(MailError::Address(a.to_string())) } else { Ok(a) }
}

/// The message as sent in DATA: headers, a blank line, the body with CRLF endings and dot-stuffing.
pub fn render(msg: &Message, host: &str) -> String {
    let domain = msg.from.rsplit('@').next().unwrap_or(host);
    let subject: String = msg.subject.chars().filter(|c| !c.is_control()).collect();
    let mut out = format!(
        "From: {}\r\nTo: {}\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <{}@{domain}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        msg.from,
        msg.to,
        chrono::Utc::now().to_rfc2822(),
        uuid::Uuid::now_v7().simple()
    );
    for line in msg.text.replace("\r\n", "\n").split('\n') {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

/// Sends one message.
pub async fn send(server: &SmtpUrl, msg: &Message) -> Result<(), MailError> {
    let from = check_address(&msg.from)?;
    let to = check_address(&msg.to)?;
    let addr = (server.host.as_str(), server.port);
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| MailError::Timeout(TIMEOUT))?
        .map_err(|source| MailError::Connect { server: server.redacted(), source })?;
    let mut stream: Box<dyn Stream> = Box::new(tcp);
    if server.security == Security::Tls {
        stream = wrap_tls(stream, &server.host).await?;
    }
    let mut c = Conn { io: BufReader::new(stream) };
    c.expect("the greeting", &[220]).await?;
    let mut caps = c.send("EHLO", "EHLO herald", &[250]).await?;
    if server.security == Security::StartTls {
        if !caps.iter().any(|l| l.eq_ignore_ascii_case("STARTTLS")) {
            return Err(MailError::NoStartTls);
        }
        c.send("STARTTLS", "STARTTLS", &[220]).await?;
        let plain = c.io.into_inner();
        c = Conn { io: BufReader::new(wrap_tls(plain, &server.host).await?) };
        caps = c.send("EHLO", "EHLO herald", &[250]).await?;
    }
    let _ = caps;
    if let (Some(user), Some(pass)) = (&server.username, &server.password) {
        let token = STANDARD.encode(format!("\0{user}\0{pass}"));
        c.send("AUTH PLAIN", &format!("AUTH PLAIN {token}"), &[235]).await?;
    }
    c.send("MAIL FROM", &format!("MAIL FROM:<{from}>"), &[250]).await?;
    c.send("RCPT TO", &format!("RCPT TO:<{to}>"), &[250, 251]).await?;
    c.send("DATA", "DATA", &[354]).await?;
    let body = render(msg, &server.host);
    c.send("the message", &format!("{body}."), &[250]).await?;
    let _ = c.send("QUIT", "QUIT", &[221]).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_the_password() {
        let u = SmtpUrl::parse("smtp+starttls://mailer%40x.org:s3cret%21@mail.example.org").unwrap();
        assert_eq!((u.security, u.port, u.username.as_deref()), (Security::StartTls, 587, Some("mailer@x.org")));
        assert_eq!(u.password.as_deref(), Some("s3cret!"));
        assert!(!format!("{u} {u:?}").contains("s3cret"));
        assert_eq!(SmtpUrl::parse("smtps://h").unwrap().port, 465);
        assert_eq!(SmtpUrl::parse("smtp://127.0.0.1:2525").unwrap().port, 2525);
        let err = SmtpUrl::parse("imap://u:pw@h").unwrap_err();
        assert!(err.contains("unknown scheme") && !err.contains("pw"));
    }

    #[test]
    fn bodies_are_dot_stuffed_with_crlf_and_headers_cannot_be_injected() {
        let msg = Message {
            from: "h@x.org".into(),
            to: "u@y.org".into(),
            subject: "Hi\r\nBcc: evil@z.org".into(),
            text: "a\n.b\nc".into(),
        };
        let out = render(&msg, "x.org");
        assert!(out.contains("Subject: HiBcc: evil@z.org\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\na\r\n..b\r\nc\r\n"), "{out}");
        assert!(check_address("u@y.org>\r\nRCPT TO:<x@z").is_err());
    }
}

//! Outgoing mail: a deliberately small SMTP client. The operator's relay (`HERALD_SMTP_URL`) sends
//! password-reset links through [`send`]; the email platform sends newsletters to a server a user
//! chose, over a socket the SSRF guard opened, through [`send_over`] and [`check_over`]. Both run
//! one dialogue: EHLO, STARTTLS or implicit TLS (verified against the platform's roots), AUTH PLAIN
//! (or LOGIN when that is all the server offers), one message per connection, a time limit on
//! every step.
//!
//! A 4xx reply or a network failure is [`MailError::is_transient`]; a 5xx is final. SMTP has no
//! idempotency: once the message's final dot has left, a lost answer is
//! [`MailError::Unconfirmed`], because the server may have queued it.
#![forbid(unsafe_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 5321 allows 512 octets per reply line; the server may be anyone's, so its replies are
/// bounded instead of read into memory whole.
const MAX_REPLY_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 100;
/// RFC 5321's limit on a line of the message, CRLF excluded.
const MAX_LINE: usize = 998;

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
    timeout: Duration,
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
        Ok(SmtpUrl { security, host, port: u.port().unwrap_or(default_port), username, password, timeout: TIMEOUT })
    }

    /// With a limit other than 30 s on each step of the dialogue (connect, TLS, every reply).
    pub fn with_timeout(mut self, timeout: Duration) -> SmtpUrl {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `smtp`, `smtp+starttls` or `smtps`.
    pub fn scheme(&self) -> &'static str {
        match self.security {
            Security::Plain => "smtp",
            Security::StartTls => "smtp+starttls",
            Security::Tls => "smtps",
        }
    }

    pub fn redacted(&self) -> String {
        let user = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            _ => String::new(),
        };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{}://{user}{host}:{}", self.scheme(), self.port)
    }
}

/// The raw URL for an error message, without what could be a password: everything between the
/// scheme and the last `@` (or before the `@` when there is no scheme).
fn redact_raw(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &raw[..s + 3], &raw[at..]),
        (None, Some(at)) => format!("***{}", &raw[at..]),
        _ => raw.to_string(),
    }
}

/// A plain-text mail to one recipient (the password-reset job's).
#[derive(Debug, Clone)]
pub struct Message {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// A mailbox: `user@example.org`, optionally with a display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub name: Option<String>,
    /// `local@domain`, the domain in ASCII (punycode).
    pub email: String,
}

impl Address {
    /// Parses `user@example.org` or `Name <user@example.org>`. An international domain becomes
    /// punycode; the local part must be ASCII (this client does not speak SMTPUTF8), unquoted.
    pub fn parse(raw: &str) -> Result<Address, MailError> {
        let raw = raw.trim();
        let bad = || MailError::Address(raw.chars().filter(|c| !c.is_control()).take(100).collect());
        let (name, email) = match (raw.find('<'), raw.ends_with('>')) {
            (Some(i), true) => (Some(raw[..i].trim()), &raw[i + 1..raw.len() - 1]),
            (None, false) => (None, raw),
            _ => return Err(bad()),
        };
        let name = name.map(|n| n.trim_matches('"').trim()).filter(|n| !n.is_empty());
        if name.is_some_and(|n| n.chars().any(char::is_control)) {
            return Err(bad());
        }
        let email = mailbox(email.trim()).ok_or_else(bad)?;
        Ok(Address { name: name.map(str::to_string), email })
    }

    /// As a header shows it: the name as an atom, a quoted string or encoded-words.
    fn header(&self) -> String {
        match self.name.as_deref().map(|n| n.chars().filter(|c| !c.is_control()).collect::<String>()) {
            Some(n) if !n.is_empty() => format!("{} <{}>", phrase(&n), self.email),
            _ => self.email.clone(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} <{}>", self.email),
            None => f.write_str(&self.email),
        }
    }
}

/// RFC 5322 atext: what a local part (with dots) or a display-name word may hold unquoted.
fn atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// `local@domain` checked and normalised, or `None`.
fn mailbox(s: &str) -> Option<String> {
    let (local, domain) = s.rsplit_once('@')?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.split('.').all(|atom| !atom.is_empty() && atom.chars().all(atext));
    if !local_ok || domain.contains(['%', '[', ']']) {
        return None;
    }
    // The URL host parser does IDNA (to punycode) and lower-cases; an IP address is refused, since
    // a mail domain that is an address needs brackets nobody uses.
    let domain = match url::Host::parse(domain).ok()? {
        url::Host::Domain(d) => d,
        _ => return None,
    };
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    (domain.len() <= 253 && domain.split('.').all(label_ok)).then(|| format!("{local}@{domain}"))
}

/// A display name: bare when it is plain words, quoted when it has specials, encoded when not ASCII.
fn phrase(name: &str) -> String {
    if !name.is_ascii() {
        return encoded_words(name).join("\r\n ");
    }
    if name.split(' ').all(|w| w.chars().all(atext)) && !name.contains("=?") {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// RFC 2047 `=?UTF-8?B?…?=` words of at most 75 characters, split on character boundaries.
fn encoded_words(s: &str) -> Vec<String> {
    // 75 - len("=?UTF-8?B??=") = 63 base64 characters, so at most 45 bytes per word.
    const MAX_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in s.chars() {
        if chunk.len() + c.len_utf8() > MAX_BYTES {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() || words.is_empty() {
        words.push(chunk);
    }
    words.into_iter().map(|w| format!("=?UTF-8?B?{}?=", STANDARD.encode(w))).collect()
}

/// The Subject header's value: control characters dropped (no header injection), encoded-words
/// when it is not plain ASCII or would make an over-long line.
fn subject_header(subject: &str) -> String {
    let s: String = subject.chars().filter(|c| !c.is_control()).collect();
    if s.is_ascii() && s.len() <= 900 && !s.contains("=?") { s } else { encoded_words(&s).join("\r\n ") }
}

/// A msg-id's inside (`left@right`) with nothing that could break the header.
fn msg_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '(' | ')' | ',' | ';' | '\\' | '"'))
        .collect()
}

/// A mail to one or more recipients, as the email platform sends it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: Address,
    /// Shown in the `To:` header and sent to.
    pub to: Vec<Address>,
    /// Sent to but not shown; with no `to`, the header says `undisclosed-recipients:;`.
    pub bcc: Vec<Address>,
    pub subject: String,
    pub text: String,
    /// An HTML version of the text; the mail becomes multipart/alternative.
    pub html: Option<String>,
    /// The Message-ID without angle brackets (`herald-…@example.org`); a fresh one when `None`.
    pub message_id: Option<String>,
    /// The Message-ID this mail answers (without angle brackets): In-Reply-To and References.
    pub in_reply_to: Option<String>,
    /// Files sent with the mail; the mail becomes multipart/mixed.
    pub attachments: Vec<Attachment>,
}

/// A file attached to a mail, sent base64-encoded.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: String,
    pub mime: String,
    pub bytes: Vec<u8>,
}

impl Mail {
    pub fn new(from: Address, to: Vec<Address>, subject: impl Into<String>, text: impl Into<String>) -> Mail {
        Mail {
            from,
            to,
            bcc: Vec::new(),
            subject: subject.into(),
            text: text.into(),
            html: None,
            message_id: None,
            attachments: Vec::new(),
            in_reply_to: None,
        }
    }

    /// The message as sent in DATA (8-bit bodies allowed), like [`render`].
    pub fn render(&self) -> String {
        render_mail(self, true)
    }
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
    #[error("the mail has no recipient")]
    NoRecipient,
    /// The whole message went out but the server's verdict did not come back.
    #[error("the message was handed to the SMTP server but its answer was lost ({0}); it may have been sent")]
    Unconfirmed(String),
}

impl MailError {
    /// Worth retrying later: network trouble or a 4xx reply. An [`MailError::Unconfirmed`] mail
    /// counts too (a second password-reset mail is harmless); callers that must not send twice
    /// check for it first.
    pub fn is_transient(&self) -> bool {
        match self {
            MailError::Reply { code, .. } => (400..500).contains(code),
            MailError::Connect { .. } | MailError::Io(_) | MailError::Timeout(_) | MailError::Unconfirmed(_) => true,
            MailError::NoStartTls | MailError::Tls(_) | MailError::Address(_) | MailError::NoRecipient => false,
        }
    }

    /// The server's reply code, when the error is a reply.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            MailError::Reply { code, .. } => Some(*code),
            _ => None,
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn within<T>(limit: Duration, f: impl Future<Output = std::io::Result<T>>) -> Result<T, MailError> {
    Ok(tokio::time::timeout(limit, f).await.map_err(|_| MailError::Timeout(limit))??)
}

fn closed() -> MailError {
    MailError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"))
}

struct Conn {
    io: BufReader<Box<dyn Stream>>,
    timeout: Duration,
}

impl Conn {
    /// One reply, all its lines: the code and each line's text.
    async fn reply(&mut self, command: &'static str) -> Result<(u16, Vec<String>), MailError> {
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = within(self.timeout, (&mut self.io).take(MAX_REPLY_LINE).read_until(b'\n', &mut buf)).await?;
            if n == 0 {
                return Err(closed());
            }
            let garbled = |text: String| MailError::Reply { command, code: 0, text };
            if !buf.ends_with(b"\n") {
                return Err(if n as u64 >= MAX_REPLY_LINE {
                    garbled("an over-long reply line".into())
                } else {
                    closed()
                });
            }
            let line = String::from_utf8_lossy(&buf).trim_end().chars().take(300).collect::<String>();
            let code: u16 = match line.get(..3).and_then(|c| c.parse().ok()) {
                Some(c) if (100..600).contains(&c) => c,
                _ => return Err(garbled(line)),
            };
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok((code, lines));
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(garbled("a reply of too many lines".into()));
            }
        }
    }

    async fn expect(&mut self, command: &'static str, ok: &[u16]) -> Result<Vec<String>, MailError> {
        let (code, lines) = self.reply(command).await?;
        if ok.contains(&code) { Ok(lines) } else { Err(MailError::Reply { command, code, text: lines.join(" ") }) }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), MailError> {
        let w = self.io.get_mut();
        within(self.timeout, async {
            w.write_all(data).await?;
            w.flush().await
        })
        .await
    }

    async fn command(&mut self, command: &'static str, line: &str, ok: &[u16]) -> Result<Vec<String>, MailError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.expect(command, ok).await
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, MailError> {
    use rustls_platform_verifier::ConfigVerifierExt;
    let config = rustls::ClientConfig::with_platform_verifier().map_err(|e| MailError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn wrap_tls(stream: Box<dyn Stream>, host: &str, limit: Duration) -> Result<Box<dyn Stream>, MailError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| MailError::Tls(e.to_string()))?;
    let handshake = tls_connector()?.connect(name, stream);
    let tls = tokio::time::timeout(limit, handshake)
        .await
        .map_err(|_| MailError::Timeout(limit))?
        .map_err(|e| MailError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

/// The EHLO argument: our address as an address literal, which RFC 5321 accepts from a client
/// with no domain name of its own.
fn helo_name(stream: &TcpStream) -> String {
    match stream.local_addr().map(|a| a.ip()) {
        Ok(IpAddr::V4(ip)) => format!("[{ip}]"),
        Ok(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{ip}]"),
        },
        Err(_) => "[127.0.0.1]".into(),
    }
}

fn offers(caps: &[String], keyword: &str) -> bool {
    caps.iter().skip(1).any(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case(keyword)))
}

/// The AUTH mechanisms of an EHLO answer (`AUTH PLAIN LOGIN`, or the old `AUTH=PLAIN LOGIN`).
fn auth_mechanisms(caps: &[String]) -> Vec<String> {
    caps.iter()
        .skip(1)
        .filter_map(|l| {
            let u = l.to_ascii_uppercase();
            u.strip_prefix("AUTH ").or_else(|| u.strip_prefix("AUTH=")).map(str::to_string)
        })
        .flat_map(|m| m.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// A server may echo the command it refuses; the credentials must not reach an error message.
fn scrub(e: MailError, secrets: &[&str]) -> MailError {
    match e {
        MailError::Reply { command, code, mut text } => {
            for s in secrets.iter().filter(|s| !s.is_empty()) {
                text = text.replace(s, "***");
            }
            MailError::Reply { command, code, text }
        }
        other => other,
    }
}

async fn login(c: &mut Conn, caps: &[String], user: &str, pass: &str) -> Result<(), MailError> {
    let mechanisms = auth_mechanisms(caps);
    if mechanisms.iter().any(|m| m == "LOGIN") && !mechanisms.iter().any(|m| m == "PLAIN") {
        let (u, p) = (STANDARD.encode(user), STANDARD.encode(pass));
        let secrets = [u.as_str(), p.as_str(), pass];
        c.command("AUTH LOGIN", "AUTH LOGIN", &[334]).await?;
        c.command("AUTH LOGIN", &u, &[334]).await.map_err(|e| scrub(e, &secrets))?;
        c.command("AUTH LOGIN", &p, &[235]).await.map_err(|e| scrub(e, &secrets))?;
    } else {
        // PLAIN also when the server lists no mechanism: some only say so after STARTTLS or not at all.
        let token = STANDARD.encode(format!("\0{user}\0{pass}"));
        c.command("AUTH PLAIN", &format!("AUTH PLAIN {token}"), &[235])
            .await
            .map_err(|e| scrub(e, &[token.as_str(), pass]))?;
    }
    Ok(())
}

/// A connection past the greeting, EHLO, TLS and login; `caps` is the last EHLO answer.
struct Session {
    c: Conn,
    caps: Vec<String>,
}

async fn open(stream: TcpStream, server: &SmtpUrl) -> Result<Session, MailError> {
    let ehlo = format!("EHLO {}", helo_name(&stream));
    let limit = server.timeout;
    let mut io: Box<dyn Stream> = Box::new(stream);
    if server.security == Security::Tls {
        io = wrap_tls(io, &server.host, limit).await?;
    }
    let mut c = Conn { io: BufReader::new(io), timeout: limit };
    c.expect("the greeting", &[220]).await?;
    let mut caps = c.command("EHLO", &ehlo, &[250]).await?;
    if server.security == Security::StartTls {
        if !offers(&caps, "STARTTLS") {
            return Err(MailError::NoStartTls);
        }
        c.command("STARTTLS", "STARTTLS", &[220]).await?;
        // into_inner drops anything the server sent early in plain text (the STARTTLS injection
        // attack), and what was learnt before TLS is asked again.
        let plain = c.io.into_inner();
        c = Conn { io: BufReader::new(wrap_tls(plain, &server.host, limit).await?), timeout: limit };
        caps = c.command("EHLO", &ehlo, &[250]).await?;
    }
    if let (Some(user), Some(pass)) = (&server.username, &server.password) {
        login(&mut c, &caps, user, pass).await?;
    }
    Ok(Session { c, caps })
}

async fn quit(c: &mut Conn) {
    // The mail is settled; a server slow to say goodbye must not hold the caller.
    let _ = tokio::time::timeout(Duration::from_secs(5), c.command("QUIT", "QUIT", &[221])).await;
}

/// Checks a server without sending anything: greeting, EHLO, STARTTLS or TLS, AUTH, QUIT.
pub async fn check_over(stream: TcpStream, server: &SmtpUrl) -> Result<(), MailError> {
    let mut s = open(stream, server).await?;
    quit(&mut s.c).await;
    Ok(())
}

/// Sends one mail over a connection the caller opened (through the SSRF guard, when the server is
/// a user's). Returns the server's acceptance text, which usually names its queue id.
pub async fn send_over(stream: TcpStream, server: &SmtpUrl, mail: &Mail) -> Result<String, MailError> {
    let envelope = |a: &Address| mailbox(&a.email).ok_or_else(|| MailError::Address(a.email.clone()));
    let from = envelope(&mail.from)?;
    let rcpts = mail.to.iter().chain(&mail.bcc).map(envelope).collect::<Result<Vec<_>, _>>()?;
    if rcpts.is_empty() {
        return Err(MailError::NoRecipient);
    }
    let mut s = open(stream, server).await?;
    let eight_bit = offers(&s.caps, "8BITMIME");
    let data = render_mail(mail, eight_bit);
    let body = if eight_bit && !data.is_ascii() { " BODY=8BITMIME" } else { "" };
    s.c.command("MAIL FROM", &format!("MAIL FROM:<{from}>{body}"), &[250]).await?;
    for rcpt in &rcpts {
        s.c.command("RCPT TO", &format!("RCPT TO:<{rcpt}>"), &[250, 251]).await.map_err(|e| match e {
            MailError::Reply { command, code, text } => {
                MailError::Reply { command, code, text: format!("{text} (for {rcpt})") }
            }
            other => other,
        })?;
    }
    s.c.command("DATA", "DATA", &[354]).await?;
    // A failed write means the final dot never left, so nothing was accepted.
    s.c.write(format!("{data}.\r\n").as_bytes()).await?;
    let accepted = match s.c.reply("the message").await {
        Ok((code, lines)) if (200..300).contains(&code) => lines.join(" "),
        Ok((code, lines)) if code >= 400 => {
            return Err(MailError::Reply { command: "the message", code, text: lines.join(" ") });
        }
        Ok((code, _)) => return Err(MailError::Unconfirmed(format!("an unexpected reply {code}"))),
        Err(e) => return Err(MailError::Unconfirmed(e.to_string())),
    };
    quit(&mut s.c).await;
    Ok(accepted)
}

/// Sends one message through the operator's relay.
pub async fn send(server: &SmtpUrl, msg: &Message) -> Result<(), MailError> {
    let mail = Mail::new(Address::parse(&msg.from)?, vec![Address::parse(&msg.to)?], &msg.subject, &msg.text);
    let tcp = tokio::time::timeout(server.timeout, TcpStream::connect((server.host.as_str(), server.port)))
        .await
        .map_err(|_| MailError::Timeout(server.timeout))?
        .map_err(|source| MailError::Connect { server: server.redacted(), source })?;
    send_over(tcp, server, &mail).await.map(|_| ())
}

/// The message as sent in DATA: headers, a blank line, the body with CRLF endings and dot-stuffing.
pub fn render(msg: &Message, host: &str) -> String {
    let address = |raw: &str| Address::parse(raw).unwrap_or_else(|_| Address { name: None, email: msg_id(raw) });
    let mut mail = Mail::new(address(&msg.from), vec![address(&msg.to)], &msg.subject, &msg.text);
    if !mail.from.email.contains('@') {
        mail.message_id = Some(format!("{}@{host}", uuid::Uuid::now_v7().simple()));
    }
    render_mail(&mail, true)
}

fn render_mail(mail: &Mail, eight_bit: bool) -> String {
    let domain = mail.from.email.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let id = match &mail.message_id {
        Some(id) => msg_id(id),
        None => format!("{}@{domain}", uuid::Uuid::now_v7().simple()),
    };
    let to = match mail.to.is_empty() {
        true => "undisclosed-recipients:;".to_string(),
        false => mail.to.iter().map(Address::header).collect::<Vec<_>>().join(",\r\n "),
    };
    let mut out = format!(
        "From: {}\r\nTo: {to}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{id}>\r\n",
        mail.from.header(),
        subject_header(&mail.subject),
        chrono::Utc::now().to_rfc2822(),
    );
    if let Some(parent) = mail.in_reply_to.as_deref().map(msg_id).filter(|p| p.contains('@')) {
        out.push_str(&format!("In-Reply-To: <{parent}>\r\nReferences: <{parent}>\r\n"));
    }
    out.push_str("MIME-Version: 1.0\r\n");
    let part = |kind: &str, text: &str| {
        let (encoding, body) = encode_body(text, eight_bit);
        format!("Content-Type: text/{kind}; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{body}")
    };
    // Boundaries are unguessable (v7 is mostly random), so they cannot occur in any part.
    let boundary = || format!("=_herald_{}", uuid::Uuid::now_v7().simple());
    let body = match &mail.html {
        None => part("plain", &mail.text),
        Some(html) => {
            let b = boundary();
            // The CRLF before a delimiter belongs to it (RFC 2046 5.1.1), hence one more per part.
            format!(
                "Content-Type: multipart/alternative; boundary=\"{b}\"\r\n\r\n--{b}\r\n{}\r\n--{b}\r\n{}\r\n--{b}--\r\n",
                part("plain", &mail.text),
                part("html", html)
            )
        }
    };
    if mail.attachments.is_empty() {
        out.push_str(&body);
    } else {
        let b = boundary();
        out.push_str(&format!("Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\n{body}\r\n"));
        for a in &mail.attachments {
            out.push_str(&format!("--{b}\r\n{}\r\n", attachment_part(a)));
        }
        out.push_str(&format!("--{b}--\r\n"));
    }
    // Dot-stuffing (RFC 5321 4.5.2); no line of the message starts it, headers included.
    out.replace("\r\n.", "\r\n..")
}

/// An attachment's MIME part: base64 in 76-character lines, and a file name reduced to printable
/// ASCII so it cannot break the header.
fn attachment_part(a: &Attachment) -> String {
    use base64::Engine;
    let name: String = a
        .filename
        .chars()
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | ';') || c == ' ' { c } else { '_' })
        .take(100)
        .collect();
    let name = if name.trim().is_empty() { "attachment".to_string() } else { name };
    let mime: String =
        a.mime.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '+' | '-')).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&a.bytes);
    let lines: Vec<&str> = b64.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    format!(
        "Content-Type: {mime}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}",
        lines.join("\r\n")
    )
}

/// A body with CRLF line ends and its transfer encoding: 7bit for short ASCII lines, 8bit for
/// short UTF-8 lines when the server takes them, quoted-printable otherwise.
fn encode_body(text: &str, eight_bit: bool) -> (&'static str, String) {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.len() > 1 && lines.last() == Some(&"") {
        lines.pop();
    }
    let fits = lines.iter().all(|l| l.len() <= MAX_LINE) && !text.contains('\0');
    if fits && (text.is_ascii() || eight_bit) {
        let encoding = if text.is_ascii() { "7bit" } else { "8bit" };
        return (encoding, lines.iter().map(|l| format!("{l}\r\n")).collect());
    }
    let mut out = String::new();
    for line in lines {
        quoted_printable(line, &mut out);
    }
    ("quoted-printable", out)
}

/// One line in quoted-printable (RFC 2045 6.7), with soft breaks to keep lines within 76.
fn quoted_printable(line: &str, out: &mut String) {
    let bytes = line.as_bytes();
    let mut column = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let last = i + 1 == bytes.len();
        let literal = (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
        let piece = if literal { (b as char).to_string() } else { format!("={b:02X}") };
        if column + piece.len() > 75 {
            out.push_str("=\r\n");
            column = 0;
        }
        out.push_str(&piece);
        column += piece.len();
    }
    out.push_str("\r\n");
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
        assert_eq!(SmtpUrl::parse("smtp://[::1]:25").unwrap().redacted(), "smtp://[::1]:25");
        let err = SmtpUrl::parse("imap://u:pw@h").unwrap_err();
        assert!(err.contains("unknown scheme") && !err.contains("pw"));
        let err = SmtpUrl::parse("hunter2@mail.example.org").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
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
        assert!(Address::parse("u@y.org>\r\nRCPT TO:<x@z").is_err());
    }

    #[test]
    fn addresses_parse_with_names_and_international_domains() {
        let a = Address::parse(" Herald Weekly <News@Bücher.example> ").unwrap();
        assert_eq!(a.name.as_deref(), Some("Herald Weekly"));
        assert_eq!(a.email, "News@xn--bcher-kva.example");
        assert_eq!(a.header(), "Herald Weekly <News@xn--bcher-kva.example>");
        assert_eq!(Address::parse("\"Acme, Inc.\" <a@b.org>").unwrap().header(), "\"Acme, Inc.\" <a@b.org>");
        let encoded = Address::parse("Zoë <z@b.org>").unwrap().header();
        assert_eq!(encoded, format!("=?UTF-8?B?{}?= <z@b.org>", STANDARD.encode("Zoë")));
        for bad in
            ["", "no-at", "a@", "@b.org", "a b@c.org", "a@b c.org", "a@1.2.3.4", "a..b@c.org", "ü@c.org", "a@b.org>"]
        {
            assert!(Address::parse(bad).is_err(), "{bad} passed");
        }
    }

    #[test]
    fn non_ascii_subjects_become_encoded_words_of_75_characters_at_most() {
        let subject = "Überschrift — ".repeat(8);
        let header = subject_header(&subject);
        let mut decoded = Vec::new();
        for word in header.split("\r\n ") {
            assert!(word.len() <= 75, "{word}");
            let b64 = word.strip_prefix("=?UTF-8?B?").and_then(|w| w.strip_suffix("?=")).unwrap();
            decoded.extend(STANDARD.decode(b64).unwrap());
        }
        assert_eq!(String::from_utf8(decoded).unwrap(), subject);
        assert_eq!(subject_header("plain words"), "plain words");
    }

    #[test]
    fn long_lines_go_quoted_printable_and_html_makes_an_alternative() {
        let long = format!("{}é=.", "x".repeat(1200));
        let (encoding, body) = encode_body(&long, true);
        assert_eq!(encoding, "quoted-printable");
        assert!(body.split("\r\n").all(|l| l.len() <= 76));
        assert!(body.contains("=C3=A9=3D."), "{body}");
        assert_eq!(encode_body("é", false).0, "quoted-printable", "no 8BITMIME, no 8-bit body");
        assert_eq!(encode_body("é", true).0, "8bit");
        assert_eq!(encode_body("e", true).0, "7bit");

        let mut mail = Mail::new(Address::parse("a@b.org").unwrap(), vec![], "s", "text");
        mail.bcc = vec![Address::parse("c@d.org").unwrap()];
        mail.html = Some("<p>text</p>".into());
        let out = mail.render();
        assert!(out.contains("To: undisclosed-recipients:;\r\n"));
        assert!(!out.contains("c@d.org"), "Bcc stays hidden");
        let boundary = out.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(out.matches(&format!("--{boundary}\r\n")).count(), 2);
        assert!(out.ends_with(&format!("--{boundary}--\r\n")));
        assert!(out.contains("text/plain; charset=utf-8") && out.contains("text/html; charset=utf-8"));
    }

    /// A server that answers the dialogue up to DATA, then says nothing.
    async fn silent_after_data() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"220 hi\r\n").await.unwrap();
            let (mut line, mut in_data) = (String::new(), false);
            while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                if in_data && line == ".\r\n" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return;
                }
                if !in_data {
                    let answer: &[u8] = match line.get(..4).unwrap_or("") {
                        "EHLO" => b"250-hi\r\n250 8BITMIME\r\n",
                        "DATA" => b"354 go\r\n",
                        _ => b"250 ok\r\n",
                    };
                    in_data = answer.starts_with(b"354");
                    w.write_all(answer).await.unwrap();
                }
                line.clear();
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_lost_answer_after_the_message_is_unconfirmed() {
        let addr = silent_after_data().await;
        let server = SmtpUrl::parse(&format!("smtp://{addr}")).unwrap().with_timeout(Duration::from_millis(300));
        let mail = Mail::new(Address::parse("a@b.org").unwrap(), vec![Address::parse("c@d.org").unwrap()], "s", "t");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = send_over(tcp, &server, &mail).await.unwrap_err();
        assert!(matches!(e, MailError::Unconfirmed(_)), "{e}");
    }
}

//! The email adapter against a tiny SMTP server on 127.0.0.1 (no outside tool needed): the login
//! check, the headers and body of what arrives, dot-stuffing, Bcc for several recipients, the
//! Message-ID a resend repeats, each error class, the SSRF guard, pacing, and that the password
//! never shows.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use herald_platforms::email::Email;
use herald_platforms::{Adapter, Connection, ErrorClass, Media, MediaKind, Outgoing, PlatformError, idempotency_key};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const USER: &str = "poster@example.org";
const PASS: &str = "Pa55-w0rd-s3cret";

/// How the server answers the message itself.
#[derive(Clone, Copy, Default)]
enum Data {
    #[default]
    Accept,
    /// Answer with this code.
    Reply(u16),
    /// Read the message, then hang up without a word.
    Drop,
}

/// One SMTP session as the server saw it.
#[derive(Debug, Default, Clone)]
struct Session {
    ehlo: Option<String>,
    login: Option<(String, String)>,
    mail_from: Option<String>,
    rcpt: Vec<String>,
    /// The DATA lines as they came, dot-stuffed, CRLF kept.
    raw: Option<String>,
    quit: bool,
}

impl Session {
    /// The message with the dot-stuffing undone.
    fn message(&self) -> String {
        let raw = self.raw.clone().expect("a message");
        raw.split_inclusive("\r\n").map(|l| l.strip_prefix('.').unwrap_or(l)).collect()
    }

    fn header(&self, name: &str) -> Option<String> {
        let msg = self.message();
        let head = msg.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ");
        head.split("\r\n").find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    }
}

struct Smtpd {
    port: u16,
    sessions: Arc<Mutex<Vec<Session>>>,
}

impl Smtpd {
    fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().unwrap().clone()
    }

    fn conn(&self, settings: Value) -> Connection {
        common::connection(settings, json!({ "smtp_url": self.url(PASS) }))
    }

    fn url(&self, pass: &str) -> String {
        format!("smtp://poster%40example.org:{pass}@127.0.0.1:{}", self.port)
    }
}

async fn smtpd(data: Data) -> Smtpd {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let all = sessions.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let all = all.clone();
            tokio::spawn(async move {
                let index = {
                    let mut all = all.lock().unwrap();
                    all.push(Session::default());
                    all.len() - 1
                };
                let record = |f: &dyn Fn(&mut Session)| f(&mut all.lock().unwrap()[index]);
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 smtp.test ESMTP ready\r\n").await;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let cmd = line.trim_end().to_string();
                    line.clear();
                    let upper = cmd.to_ascii_uppercase();
                    let answer = if let Some(name) = upper.strip_prefix("EHLO ") {
                        record(&|s| s.ehlo = Some(name.to_string()));
                        "250-smtp.test\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 10000000".to_string()
                    } else if upper.starts_with("AUTH PLAIN ") {
                        let raw = B64.decode(&cmd[11..]).unwrap_or_default();
                        let parts: Vec<String> =
                            String::from_utf8_lossy(&raw).split('\0').map(str::to_string).collect();
                        let (user, pass) = (parts.get(1).cloned().unwrap_or_default(), parts.get(2).cloned());
                        record(&|s| s.login = Some((user.clone(), pass.clone().unwrap_or_default())));
                        if user == USER && pass.as_deref() == Some(PASS) {
                            "235 2.7.0 Authentication successful".into()
                        } else {
                            "535 5.7.8 Authentication credentials invalid".into()
                        }
                    } else if upper.starts_with("MAIL FROM:") {
                        record(&|s| s.mail_from = Some(cmd[10..].to_string()));
                        "250 2.1.0 Ok".into()
                    } else if upper.starts_with("RCPT TO:") {
                        record(&|s| s.rcpt.push(cmd[8..].to_string()));
                        "250 2.1.5 Ok".into()
                    } else if upper == "DATA" {
                        let _ = w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await;
                        let mut raw = String::new();
                        loop {
                            let mut l = String::new();
                            if r.read_line(&mut l).await.unwrap_or(0) == 0 || l == ".\r\n" {
                                break;
                            }
                            raw.push_str(&l);
                        }
                        record(&|s| s.raw = Some(raw.clone()));
                        match data {
                            Data::Accept => "250 2.0.0 Ok: queued as 4Xq1".into(),
                            Data::Reply(451) => "451 4.3.0 Temporary local problem, try again later".into(),
                            Data::Reply(code) => format!("{code} 5.7.1 Message rejected as spam"),
                            Data::Drop => return,
                        }
                    } else if upper == "QUIT" {
                        record(&|s| s.quit = true);
                        let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    } else {
                        "502 5.5.2 Command not recognized".into()
                    };
                    let _ = w.write_all(format!("{answer}\r\n").as_bytes()).await;
                }
            });
        }
    });
    Smtpd { port, sessions }
}

fn settings() -> Value {
    json!({ "from": "Herald Weekly <news@example.org>", "to": ["reader@example.com"], "subject_prefix": "[Weekly]" })
}

fn key() -> String {
    idempotency_key(uuid::Uuid::now_v7())
}

fn no_secret(e: &PlatformError) {
    let b64 = B64.encode(format!("\0{USER}\0{PASS}"));
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains(PASS) && !shown.contains(&b64), "the password leaked into {shown}");
    }
}

fn decode_words(header: &str) -> String {
    header
        .split(' ')
        .map(|w| match w.strip_prefix("=?UTF-8?B?").and_then(|w| w.strip_suffix("?=")) {
            Some(b64) => String::from_utf8(B64.decode(b64).unwrap()).unwrap(),
            None => format!("{w} "),
        })
        .collect()
}

#[tokio::test]
async fn verify_logs_in_and_quits_without_sending() {
    let smtp = smtpd(Data::Accept).await;
    let v = Email.verify(&common::net(), &smtp.conn(settings())).await.unwrap();
    assert_eq!(v.account, "news@example.org");
    assert_eq!(v.settings["from"], json!("Herald Weekly <news@example.org>"));
    assert_eq!(v.settings["to"], json!(["reader@example.com"]));
    let s = &smtp.sessions()[0];
    assert_eq!(s.login, Some((USER.to_string(), PASS.to_string())));
    assert_eq!(s.ehlo.as_deref(), Some("[127.0.0.1]"), "an address literal, as RFC 5321 asks");
    assert!(s.quit && s.mail_from.is_none() && s.raw.is_none(), "{s:?}");
}

#[tokio::test]
async fn a_refused_password_is_auth_and_never_shown() {
    let smtp = smtpd(Data::Accept).await;
    let mut c = smtp.conn(settings());
    c.credentials.0 = json!({ "smtp_url": smtp.url("wrong-Pa55-w0rd-s3cret") });
    let e = Email.verify(&common::net(), &c).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Auth, Some("535")), "{e}");
    assert!(e.message.contains("Authentication credentials invalid"), "{e}");
    no_secret(&e);
    assert!(!e.to_string().contains("wrong-Pa55") && !format!("{e:?}").contains("wrong-Pa55"));
    let e = Email.publish(&common::net(), &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Auth);
    assert!(smtp.sessions().iter().all(|s| s.raw.is_none()), "nothing was sent");
}

#[tokio::test]
async fn a_private_server_is_refused_by_the_production_guard() {
    let smtp = smtpd(Data::Accept).await;
    let c = smtp.conn(settings());
    let e = Email.verify(&common::strict_net(), &c).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("ssrf_blocked_destination")), "{e}");
    no_secret(&e);
    let e = Email.publish(&common::strict_net(), &c, &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("ssrf_blocked_destination"));
    assert!(smtp.sessions().is_empty(), "no connection was made");
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = common::connection(settings(), json!({ "smtp_url": format!("smtp://{USER}:{PASS}@127.0.0.1:{port}") }));
    let e = Email.verify(&common::net(), &c).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    no_secret(&e);
}

#[tokio::test]
async fn bad_settings_and_credentials_name_the_field() {
    let smtp = smtpd(Data::Accept).await;
    let net = common::net();
    let bad = |settings: Value| smtp.conn(settings);
    let cases = [
        (json!({ "from": "not an address", "to": ["a@example.com"] }), "from"),
        (json!({ "from": "n@example.org", "to": ["a@example.com", "b@@example.com"] }), "to[1]"),
        (json!({ "from": "n@example.org", "to": [] }), "between 1 and 50"),
        (
            json!({ "from": "n@example.org", "to": (0..51).map(|i| format!("r{i}@example.com")).collect::<Vec<_>>() }),
            "between 1 and 50",
        ),
        (json!({ "to": ["a@example.com"] }), "from"),
    ];
    for (settings, field) in cases {
        let e = Email.verify(&net, &bad(settings)).await.unwrap_err();
        assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_settings")), "{e}");
        assert!(e.message.contains(field), "{field}: {e}");
    }
    for url in [format!("imap://{USER}:{PASS}@127.0.0.1:1"), format!("{PASS}@127.0.0.1")] {
        let c = common::connection(settings(), json!({ "smtp_url": url }));
        let e = Email.verify(&net, &c).await.unwrap_err();
        assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("bad_credentials")), "{e}");
        no_secret(&e);
    }
    assert!(smtp.sessions().is_empty());
}

#[tokio::test]
async fn publish_sends_one_mail_with_the_headers_a_client_needs() {
    let smtp = smtpd(Data::Accept).await;
    let mut post = Outgoing::text("Première ligne — news\n.a line that starts with a dot\nthe end", key());
    post.link = Some("https://example.org/posts/1".into());
    let p = Email.publish(&common::net(), &smtp.conn(settings()), &post).await.unwrap();
    let domain_id = format!("<{}@example.org>", post.idempotency_key);
    assert_eq!((p.id.as_str(), p.url.as_deref()), (domain_id.as_str(), None));

    let sessions = smtp.sessions();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s.mail_from.as_deref(), Some("<news@example.org> BODY=8BITMIME"));
    assert_eq!(s.rcpt, ["<reader@example.com>"]);
    assert!(s.quit);
    let raw = s.raw.clone().unwrap();
    assert!(raw.replace("\r\n", "").find('\n').is_none() && raw.ends_with("\r\n"), "CRLF only: {raw:?}");
    assert!(raw.contains("\r\n..a line that starts with a dot\r\n"), "dot-stuffed: {raw}");

    assert_eq!(s.header("From").as_deref(), Some("Herald Weekly <news@example.org>"));
    assert_eq!(s.header("To").as_deref(), Some("reader@example.com"));
    let subject = s.header("Subject").unwrap();
    assert!(subject.starts_with("=?UTF-8?B?"), "{subject}");
    assert_eq!(decode_words(&subject), "[Weekly] Première ligne — news");
    assert_eq!(s.header("Message-ID"), Some(p.id.clone()));
    let date = s.header("Date").unwrap();
    assert!(chrono::DateTime::parse_from_rfc2822(&date).is_ok(), "{date}");
    assert_eq!(s.header("MIME-Version").as_deref(), Some("1.0"));
    assert_eq!(s.header("Content-Type").as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(s.header("Content-Transfer-Encoding").as_deref(), Some("8bit"));

    let msg = s.message();
    let body = msg.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        body,
        "Première ligne — news\r\n.a line that starts with a dot\r\nthe end\r\n\r\nhttps://example.org/posts/1\r\n"
    );
}

#[tokio::test]
async fn several_recipients_go_as_bcc_and_options_set_the_subject() {
    let smtp = smtpd(Data::Accept).await;
    let to = ["a@example.com", "B@Example.com", "c@example.com", "b@example.com"];
    let c = smtp.conn(json!({ "from": "news@example.org", "to": to }));
    let mut post = Outgoing::text("Body text", key());
    post.options = json!({ "subject": "This week", "html": "<p>Body <b>text</b></p>" });
    Email.publish(&common::net(), &c, &post).await.unwrap();
    let s = &smtp.sessions()[0];
    assert_eq!(
        s.rcpt,
        ["<a@example.com>", "<B@example.com>", "<c@example.com>"],
        "the domain case folded, duplicates dropped"
    );
    assert_eq!(s.header("To").as_deref(), Some("undisclosed-recipients:;"));
    assert!(!s.message().contains("a@example.com"), "recipients do not see one another");
    assert_eq!(s.header("Subject").as_deref(), Some("This week"));
    assert!(s.header("Content-Type").unwrap().starts_with("multipart/alternative; boundary="));
    let msg = s.message();
    assert!(
        msg.contains("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\nBody text\r\n")
    );
    assert!(msg.contains(
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n<p>Body <b>text</b></p>\r\n"
    ));
}

#[tokio::test]
async fn a_long_first_line_is_cut_at_a_word_and_a_resend_repeats_the_message_id() {
    let smtp = smtpd(Data::Accept).await;
    let c = smtp.conn(json!({ "from": "news@example.org", "to": ["r@example.com"] }));
    let line = "word ".repeat(30);
    let post = Outgoing::text(format!("\n  {line}\nsecond line"), key());
    let first = Email.publish(&common::net(), &c, &post).await.unwrap();
    let again = Email.publish(&common::net(), &c, &post).await.unwrap();
    assert_eq!(first.id, again.id);
    let sessions = smtp.sessions();
    assert_eq!(sessions[0].header("Message-ID"), sessions[1].header("Message-ID"));
    let subject = decode_words(&sessions[0].header("Subject").unwrap());
    assert!(subject.chars().count() <= 78 && subject.ends_with("word…"), "{subject}");
}

#[tokio::test]
async fn a_4xx_answer_to_the_message_is_transient() {
    let smtp = smtpd(Data::Reply(451)).await;
    let e = Email.publish(&common::net(), &smtp.conn(settings()), &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Transient, Some("451")), "{e}");
    no_secret(&e);
}

#[tokio::test]
async fn a_5xx_answer_to_the_message_is_invalid_with_the_servers_words() {
    let smtp = smtpd(Data::Reply(554)).await;
    let e = Email.publish(&common::net(), &smtp.conn(settings()), &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("554")), "{e}");
    assert!(e.message.contains("Message rejected as spam"), "{e}");
    no_secret(&e);
}

#[tokio::test]
async fn a_lost_answer_after_the_message_is_an_unknown_outcome() {
    let smtp = smtpd(Data::Drop).await;
    let e = Email.publish(&common::net(), &smtp.conn(settings()), &Outgoing::text("hi", key())).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::UnknownOutcome, "{e}");
    assert!(smtp.sessions()[0].raw.is_some(), "the message went out before the line dropped");
    no_secret(&e);
}

#[tokio::test]
async fn images_go_as_base64_attachments() {
    let smtp = smtpd(Data::Accept).await;
    let mut post = Outgoing::text("with a picture", key());
    let png: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    post.media.push(Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: "chart \"q3\".png".into(),
        bytes: Bytes::from(png.clone()),
        alt: None,
        url: None,
    });
    Email.publish(&common::net(), &smtp.conn(settings()), &post).await.unwrap();
    let raw = smtp.sessions()[0].message();
    assert!(raw.contains("Content-Type: multipart/mixed; boundary="), "{raw}");
    assert!(raw.contains("Content-Type: image/png; name=\"chart _q3_.png\""), "quotes cannot break the header: {raw}");
    assert!(raw.contains("Content-Transfer-Encoding: base64"));
    // The attachment decodes back to the bytes, in lines of at most 76.
    let b64: String = raw
        .split("Content-Transfer-Encoding: base64\r\n\r\n")
        .nth(1)
        .unwrap()
        .split("\r\n--")
        .next()
        .unwrap()
        .lines()
        .inspect(|l| assert!(l.len() <= 76))
        .collect();
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap(), png);
    assert!(raw.contains("with a picture"));

    // Too much for a mail server is refused before connecting.
    let mut big = Outgoing::text("huge", key());
    big.media.push(Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        filename: "big.png".into(),
        bytes: Bytes::from(vec![0u8; herald_platforms::email::MAX_ATTACHMENT_BYTES + 1]),
        alt: None,
        url: None,
    });
    let e = Email.publish(&common::net(), &smtp.conn(settings()), &big).await.unwrap_err();
    assert_eq!((e.class, e.code.as_deref()), (ErrorClass::Invalid, Some("media_size")));
    assert_eq!(smtp.sessions().len(), 1);
}

#[test]
fn pacing_shares_one_bucket_per_server() {
    let c = common::connection(
        settings(),
        json!({ "smtp_url": format!("smtp+starttls://{USER}:{PASS}@Mail.Example.org") }),
    );
    let p = Email.pacing(&c).unwrap();
    assert_eq!((p.bucket.as_str(), p.capacity, p.per_second), ("email:mail.example.org", 5.0, 1.0));
    assert!(!format!("{p:?}").contains(PASS));
}

/// Python's own mail parser reads what the real server stored: one JSON line.
const PARSE: &str = r#"
import email, email.policy, json, sys
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)
print(json.dumps({
    "from": str(m["from"]), "to": str(m["to"]), "subject": str(m["subject"]),
    "message_id": str(m["message-id"]), "rcpt": str(m["X-RcptTo"]),
    "plain": m.get_body(("plain",)).get_content(), "html": m.get_body(("html",)).get_content(),
    "defects": [str(d) for p in m.walk() for d in p.defects],
}))
"#;

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_smtp_server_takes_a_newsletter_that_a_mail_parser_reads_back() {
    use std::process::{Command, Stdio};
    let available = Command::new("python3").args(["-c", "import aiosmtpd"]).stderr(Stdio::null()).status();
    if !available.is_ok_and(|s| s.success()) {
        assert!(std::env::var_os("CI").is_none(), "CI must have aiosmtpd; .ci/run installs it");
        eprintln!("skipped: the Python module aiosmtpd is missing (pip install aiosmtpd)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("herald-email-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // aiosmtpd wants to create the maildir itself.
    let maildir = dir.join("maildir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _smtpd = Kill(
        Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = common::connection(
        json!({ "from": "Zoë's Digest <news@example.org>", "to": ["a@example.com", "b@example.com"], "subject_prefix": "[Digest]" }),
        json!({ "smtp_url": format!("smtp://127.0.0.1:{port}") }),
    );
    let long = "ü".repeat(700);
    let mut post = Outgoing::text(format!("Grüße aus Köln\n.dot\n{long}"), key());
    post.link = Some("https://example.org/p?id=1".into());
    post.options = json!({ "html": "<p>Grüße</p>" });
    let start = std::time::Instant::now();
    let published = loop {
        match Email.publish(&common::net(), &c, &post).await {
            Ok(p) => break p,
            Err(e) if e.class == ErrorClass::Transient && start.elapsed().as_secs() < 20 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let file = std::fs::read_dir(maildir.join("new")).unwrap().next().unwrap().unwrap().path();
    let out = Command::new("python3").args(["-c", PARSE]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["defects"], json!([]), "{m}");
    assert_eq!(m["from"], json!("Zoë's Digest <news@example.org>"));
    assert_eq!(m["to"], json!("undisclosed-recipients:;"));
    assert_eq!(m["rcpt"], json!("a@example.com, b@example.com"));
    assert_eq!(m["subject"], json!("[Digest] Grüße aus Köln"));
    assert_eq!(m["message_id"], json!(published.id));
    assert_eq!(m["plain"], json!(format!("Grüße aus Köln\n.dot\n{long}\n\nhttps://example.org/p?id=1\n")));
    assert_eq!(m["html"], json!("<p>Grüße</p>\n"));
    let _ = std::fs::remove_dir_all(dir);
}

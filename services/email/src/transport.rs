//! How a built message leaves the service: over SMTP (Mailpit in compose, any relay in
//! production) or into a folder of `.eml` files (local runs and tests without a mail server).
//!
//! Every failure is classified once, here: [`DeliveryError::Permanent`] (no retry can help:
//! an invalid address, a 5xx reply) or [`DeliveryError::Transient`] (server down, timeout,
//! disk full), which the sender retries with backoff.

use crate::store::Outgoing;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::{Address, Message};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

/// Where confirmations go, as configured (`EMAIL_TRANSPORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// One `{event_id}.eml` file per email in `dir` (`EMAIL_DIR`).
    File { dir: PathBuf },
    /// Plain SMTP without TLS or authentication (`SMTP_HOST`, `SMTP_PORT`): a local relay,
    /// Mailpit, or a test sink. No TLS or credentials: not supported yet.
    Smtp { host: String, port: u16 },
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Retrying cannot help; the email is marked failed at once.
    #[error("{0}")]
    Permanent(String),
    /// May work later; the email is retried with backoff.
    #[error("{0}")]
    Transient(String),
}

/// A ready transport. Built once at start-up and shared by the sender.
#[derive(Clone)]
pub enum Mailer {
    File { dir: PathBuf },
    Smtp(Arc<SmtpClient>),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::File { dir } => write!(f, "file:{}", dir.display()),
            Mailer::Smtp(_) => f.write_str("smtp"),
        }
    }
}

impl Mailer {
    /// `timeout` bounds connecting and the greeting, and four times it one message's
    /// conversation, so a server that accepts the connection and then hangs cannot stall the
    /// sender (and the drain on shutdown) indefinitely.
    pub fn new(transport: &Transport, timeout: Duration) -> Self {
        match transport {
            Transport::File { dir } => Mailer::File { dir: dir.clone() },
            // No TLS, no authentication, as configured (see `Transport`).
            Transport::Smtp { host, port } => Mailer::Smtp(Arc::new(SmtpClient {
                host: host.clone(),
                port: *port,
                timeout,
                hello: ClientId::default(),
                idle: Mutex::new(Vec::new()),
            })),
        }
    }

    /// Delivers one message. Idempotent for the file transport (same file name); for SMTP a
    /// retry after an unclear outcome may deliver twice, with the same Message-ID.
    pub async fn deliver(&self, event_id: Uuid, message: &Message) -> Result<(), DeliveryError> {
        match self {
            Mailer::File { dir } => write_eml(dir, event_id, &message.formatted())
                .await
                .map_err(|e| {
                    DeliveryError::Transient(format!("writing to {}: {e}", dir.display()))
                }),
            Mailer::Smtp(smtp) => smtp.send(message).await,
        }
    }
}

/// Delivers over SMTP on connections it keeps open between messages (one per concurrent send,
/// at most [`MAX_IDLE`] kept).
///
/// Why not lettre's own pooled transport: its connections leave Nagle's algorithm on, and it
/// writes a message's body and the closing `.` in two writes before waiting for the reply. The
/// second write then waits for the server's delayed ACK (about 40 ms on Linux), which caps a
/// connection at some 25 messages/s (BENCHMARKS.md, Optimisations). These connections set
/// `TCP_NODELAY`.
///
/// Where the server offers PIPELINING (RFC 2920), a message takes two round trips instead of
/// four: MAIL, RCPT and DATA go out in one write and their replies are read in order, then the
/// body. lettre sends each command and waits for its reply; on a busy machine every wait is a
/// wake-up of both processes (BENCHMARKS.md, round seven).
pub struct SmtpClient {
    host: String,
    port: u16,
    /// Bounds connecting, the greeting and EHLO, and each message's conversation.
    timeout: Duration,
    hello: ClientId,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

/// A connection and whether its server offers PIPELINING.
struct Connection {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
}

/// Idle connections kept for reuse: as many as sends can be under way at once
/// (`EMAIL_SEND_CONCURRENCY` is at most 256), so a busy sender never reconnects.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused: servers drop idle clients
/// after a few minutes (RFC 5321 asks for at least 5), and a reused dead connection costs the
/// email an attempt.
const IDLE_FOR: Duration = Duration::from_secs(30);

impl SmtpClient {
    async fn send(&self, message: &Message) -> Result<(), DeliveryError> {
        let mut conn = match self.checkout() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let bytes = message.formatted();
        // A message is a few commands (MAIL, RCPT, DATA, the body): each is bounded by
        // `timeout`, so the whole is bounded by a few of them.
        let sent = tokio::time::timeout(
            self.timeout.saturating_mul(4),
            conn.send(message.envelope(), &bytes),
        )
        .await;
        // On any failure the connection is dropped, never reused: a pipelined conversation may
        // have replies left unread, and a message whose body was not sent is not delivered.
        match sent {
            Ok(Ok(_)) => {
                self.checkin(conn);
                Ok(())
            }
            // 5xx: the server refuses this message for good.
            Ok(Err(e)) if e.is_permanent() => Err(DeliveryError::Permanent(format!(
                "SMTP server rejected the message: {}",
                chain(&e)
            ))),
            Ok(Err(e)) => Err(DeliveryError::Transient(format!("SMTP: {}", chain(&e)))),
            Err(_) => Err(DeliveryError::Transient(format!(
                "SMTP: no answer within {:?}",
                self.timeout.saturating_mul(4)
            ))),
        }
    }

    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR && !conn.smtp.has_broken() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Connection) {
        if conn.smtp.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<Connection, DeliveryError> {
        let target = format!("{}:{}", self.host, self.port);
        let connected = tokio::time::timeout(self.timeout, async {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connecting to {target}: {e}"))?;
            stream
                .set_nodelay(true)
                .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
            let mut smtp =
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                    .await
                    .map_err(|e| format!("greeting {target}: {}", chain(&e)))?;
            // lettre keeps only the extensions it knows from its EHLO, and PIPELINING is not
            // one of them: ask again (a repeated EHLO is allowed and resets nothing we hold).
            let ehlo = smtp
                .command(Ehlo::new(self.hello.clone()))
                .await
                .map_err(|e| format!("EHLO to {target}: {}", chain(&e)))?;
            let pipelining = offers_pipelining(&ehlo);
            Ok::<_, String>(Connection { smtp, pipelining })
        })
        .await;
        match connected {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(reason)) => Err(DeliveryError::Transient(format!("SMTP: {reason}"))),
            Err(_) => Err(DeliveryError::Transient(format!(
                "SMTP: {target} did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

impl Connection {
    /// One message's conversation: pipelined where the server allows it and the message needs
    /// none of the extensions lettre negotiates per message (8BITMIME, SMTPUTF8); otherwise
    /// lettre's own command-by-command exchange.
    async fn send(
        &mut self,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> Result<Response, lettre::transport::smtp::Error> {
        let ascii = |a: &Address| AsRef::<str>::as_ref(a).is_ascii();
        let plain = bytes.is_ascii()
            && envelope.from().is_none_or(ascii)
            && envelope.to().iter().all(ascii);
        if !self.pipelining || !plain {
            return self.smtp.send(envelope, bytes).await;
        }
        let mut commands = Mail::new(envelope.from().cloned(), Vec::new()).to_string();
        for to in envelope.to() {
            commands.push_str(&Rcpt::new(to.clone(), Vec::new()).to_string());
        }
        commands.push_str(&Data.to_string());
        // One write; then one reply per command, in the order sent. The first refusal ends the
        // conversation (the caller drops the connection, so the body is never sent).
        self.smtp.command(commands).await?;
        for _ in envelope.to() {
            self.smtp.read_response().await?;
        }
        self.smtp.read_response().await?;
        self.smtp.message(bytes).await
    }
}

/// Whether an EHLO reply lists PIPELINING (one extension keyword per line).
fn offers_pipelining(ehlo: &Response) -> bool {
    ehlo.message().any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|word| word.eq_ignore_ascii_case("PIPELINING"))
    })
}

/// Builds the MIME message (plain text and HTML alternatives). The Date header is the time the
/// email was queued, so every attempt produces the same headers.
pub fn build_message(from: &Mailbox, email: &Outgoing) -> Result<Message, DeliveryError> {
    let rendered = &email.rendered;
    let address: Address = rendered.to_address.parse().map_err(|e| {
        DeliveryError::Permanent(format!(
            "invalid recipient address {:?}: {e}",
            rendered.to_address
        ))
    })?;
    let name = (!rendered.to_name.is_empty()).then(|| rendered.to_name.clone());
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(name, address))
        .subject(rendered.subject.clone())
        .message_id(Some(rendered.message_id.clone()))
        .date(SystemTime::from(email.created_at))
        .multipart(MultiPart::alternative_plain_html(
            rendered.body_text.clone(),
            rendered.body_html.clone(),
        ))
        .map_err(|e| DeliveryError::Permanent(format!("cannot build the message: {e}")))
}

/// Writes `{dir}/{event_id}.eml` atomically: the bytes go to a hidden temporary file in the same
/// directory (same file system, so the rename is atomic), are flushed to disk, then renamed.
/// A reader never sees a half-written `.eml`, and writing the same email again replaces it.
async fn write_eml(dir: &Path, event_id: Uuid, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    tokio::fs::create_dir_all(dir).await?;
    let target = dir.join(format!("{event_id}.eml"));
    // A unique temporary name: two replicas writing the same email cannot clobber each other's
    // half-written file.
    let tmp = dir.join(format!(".{event_id}.{}.tmp", Uuid::new_v4().simple()));
    let written = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, &target).await
    }
    .await;
    if written.is_err() {
        // Best effort: the original error is what matters.
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    written
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // lettre repeats the cause in its own message at times; keep the line readable.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

//! A small SMTP server for the end-to-end tests: enough of RFC 5321 for lettre (the email
//! service's client) to deliver plain, unauthenticated mail, and nothing more.
//!
//! [`SmtpSink::start`] listens on a free port of 127.0.0.1 and keeps every message it accepted.
//! [`SmtpSink::stop`] closes the listener and every open connection, so the email service sees
//! an SMTP outage (connection refused); [`SmtpSink::restart_on_same_port`] listens again on the
//! same port, so the service, configured once, reaches it again. Messages survive a restart:
//! [`SmtpSink::messages`] lists all of them, which is how a test proves that a mail arrived
//! exactly once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// One message as the sink accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The `MAIL FROM:` command line.
    pub mail_from: String,
    /// The `RCPT TO:` command lines.
    pub rcpt_to: Vec<String>,
    /// The DATA section with CRLF line ends, dot-unstuffed, without the terminating `.` line.
    pub data: String,
}

impl ReceivedMail {
    /// The value of header `name` (case-insensitive; folded lines joined with a space).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut lines = head.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            let Some((key, rest)) = line.split_once(':') else {
                continue;
            };
            if line.starts_with([' ', '\t']) || !key.eq_ignore_ascii_case(name) {
                continue;
            }
            let mut value = rest.trim().to_string();
            while let Some(next) = lines.next_if(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(next.trim());
            }
            return Some(value);
        }
        None
    }

    /// The `Message-ID` header.
    pub fn message_id(&self) -> Option<String> {
        self.header("Message-ID")
    }

    /// The header block as sent (up to the first empty line), with LF line ends.
    pub fn headers_text(&self) -> String {
        self.data
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .replace("\r\n", "\n")
    }

    /// The `text/plain` part, decoded (7bit/8bit as is, quoted-printable decoded), with LF
    /// line ends.
    pub fn text_body(&self) -> Option<String> {
        let start = self.data.find("Content-Type: text/plain")?;
        let (head, rest) = self.data[start..].split_once("\r\n\r\n")?;
        let body = rest.split("\r\n--").next()?;
        let quoted = head
            .to_ascii_lowercase()
            .contains("content-transfer-encoding: quoted-printable");
        let body = if quoted {
            decode_quoted_printable(body)?
        } else {
            body.to_string()
        };
        Some(body.replace("\r\n", "\n"))
    }
}

/// Quoted-printable (RFC 2045) decoded by the `quoted_printable` crate, strictly (lettre's
/// encoding is strict: upper-case hex, lines of at most 76): `None` when malformed.
fn decode_quoted_printable(body: &str) -> Option<String> {
    let bytes = quoted_printable::decode(body, quoted_printable::ParseMode::Strict).ok()?;
    String::from_utf8(bytes).ok()
}

/// The sink. Dropping it stops it.
pub struct SmtpSink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    /// The accept loop while running. It owns the connections' tasks (a `JoinSet`), so
    /// aborting it closes every connection too.
    server: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> Result<SmtpSink> {
        let mut sink = SmtpSink {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            received: Arc::new(Mutex::new(Vec::new())),
            server: None,
        };
        sink.listen().await?;
        Ok(sink)
    }

    async fn listen(&mut self) -> Result<()> {
        let socket = TcpSocket::new_v4().context("creating the SMTP sink socket")?;
        // The port was ours a moment ago; connections of the previous run may linger in
        // TIME_WAIT, which must not keep us from listening again.
        socket.set_reuseaddr(true)?;
        socket
            .bind(self.addr)
            .with_context(|| format!("binding the SMTP sink to {}", self.addr))?;
        let listener = socket.listen(64)?;
        self.addr = listener.local_addr()?;
        self.server = Some(tokio::spawn(serve(listener, Arc::clone(&self.received))));
        Ok(())
    }

    /// The port it listens on (also while stopped: the port it will listen on again).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_running(&self) -> bool {
        self.server.as_ref().is_some_and(|s| !s.is_finished())
    }

    /// Stops listening and closes every open connection: clients get "connection refused"
    /// until [`restart_on_same_port`](SmtpSink::restart_on_same_port). Messages are kept.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // Wait until the task (and with it the listener and the connections) is gone, so
            // the port is free when this returns.
            let _ = server.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart_on_same_port(&mut self) -> Result<()> {
        self.stop().await;
        self.listen().await
    }

    /// Every message accepted so far, in order of arrival, across restarts.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Removes and answers the messages accepted so far (a long run, such as the benchmark,
    /// takes them as they come so that the sink's memory stays flat).
    pub fn take_messages(&self) -> Vec<ReceivedMail> {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The Message-IDs of [`messages`](SmtpSink::messages), in order of arrival.
    pub fn message_ids(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(ReceivedMail::message_id)
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn serve(listener: TcpListener, received: Arc<Mutex<Vec<ReceivedMail>>>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let received = Arc::clone(&received);
                    connections.spawn(async move {
                        // A client that hangs up mid-conversation just ends its connection.
                        let _ = converse(stream, received).await;
                    });
                }
                Err(_) => return,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One SMTP conversation. A message is stored only once its DATA is complete, and acknowledged
/// (250) only after it was stored.
async fn converse(stream: TcpStream, received: Arc<Mutex<Vec<ReceivedMail>>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 e2e-sink ESMTP ready\r\n").await?;
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => write.write_all(b"250 e2e-sink\r\n").await?,
            "MAIL" => {
                mail_from = command;
                rcpt_to.clear();
                write.write_all(b"250 OK\r\n").await?;
            }
            "RCPT" => {
                rcpt_to.push(command);
                write.write_all(b"250 OK\r\n").await?;
            }
            "RSET" => {
                mail_from.clear();
                rcpt_to.clear();
                write.write_all(b"250 OK\r\n").await?;
            }
            "NOOP" => write.write_all(b"250 OK\r\n").await?,
            "DATA" => {
                write
                    .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        // Cut off before the end of DATA: nothing was accepted.
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    // Dot-unstuffing: a line the client started with "." got a second one.
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(ReceivedMail {
                        mail_from: std::mem::take(&mut mail_from),
                        rcpt_to: std::mem::take(&mut rcpt_to),
                        data,
                    });
                write.write_all(b"250 OK queued\r\n").await?;
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"502 command not implemented\r\n").await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode_quoted_printable;

    #[test]
    fn quoted_printable_is_decoded_as_lettre_writes_it() {
        assert_eq!(
            decode_quoted_printable("caf=C3=A9 =E2=82=AC 1,2=\r\n34.50 a=3Db\r\nnext line")
                .as_deref(),
            Some("café € 1,234.50 a=b\r\nnext line")
        );
        assert_eq!(decode_quoted_printable("bad =ZZ escape"), None);
        assert_eq!(decode_quoted_printable("=FF"), None);
    }
}

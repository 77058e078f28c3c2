//! A small SMTP server for the email service's tests and the end-to-end tests: enough of
//! RFC 5321 for lettre (the email service's client) to deliver plain, unauthenticated mail, and
//! nothing more.
//!
//! [`SmtpSink::start`] listens on a free port of 127.0.0.1 ([`SmtpSink::start_on`] on a given
//! one) and keeps every message it accepted, and counts the connections it accepted (kept
//! connections mean fewer than messages).
//! [`SmtpSink::stop`] closes the listener and every open connection, so the email service sees
//! an SMTP outage (connection refused); [`SmtpSink::restart_on_same_port`] listens again on the
//! same port, so the service, configured once, reaches it again. Messages survive a restart:
//! [`SmtpSink::messages`] lists all of them, which is how a test proves that a mail arrived
//! exactly once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
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
        header(&self.data, name)
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

/// The value of header `name` in the raw message `message` (CRLF line ends), say one the
/// sink received or one lettre's file transport wrote: case-insensitive, folded lines joined
/// with a space.
pub fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
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
    /// Connections accepted, across restarts.
    connections: Arc<AtomicUsize>,
    /// The accept loop while running. It owns the connections' tasks (a `JoinSet`), so
    /// aborting it closes every connection too.
    server: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> Result<SmtpSink> {
        SmtpSink::start_on(0).await
    }

    /// Listens on `port` of 127.0.0.1 (0: a free one), say one a client already tries.
    pub async fn start_on(port: u16) -> Result<SmtpSink> {
        let mut sink = SmtpSink {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            received: Arc::new(Mutex::new(Vec::new())),
            connections: Arc::new(AtomicUsize::new(0)),
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
        self.server = Some(tokio::spawn(serve(
            listener,
            Arc::clone(&self.received),
            Arc::clone(&self.connections),
        )));
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

    /// Connections accepted so far, across restarts.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
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

async fn serve(
    listener: TcpListener,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    accepted_count: Arc<AtomicUsize>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accepted_count.fetch_add(1, Ordering::Relaxed);
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
///
/// Replies go out as a pipelining server sends them (RFC 2920): collected while more commands
/// are already waiting in the input, then written at once when none is. Writing each reply on
/// its own would let Nagle's algorithm hold the second and third replies to a pipelined MAIL,
/// RCPT, DATA until the client acknowledged the first, which a client waiting for them delays
/// by ~40 ms: every pipelined message would wait that long.
async fn converse(stream: TcpStream, received: Arc<Mutex<Vec<ReceivedMail>>>) -> Result<()> {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut write = BufWriter::new(write);
    write.write_all(b"220 sink ESMTP ready\r\n").await?;
    write.flush().await?;
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
            // Commands are read line by line from a buffer, so pipelined ones are answered in
            // order like any others.
            "EHLO" => write.write_all(b"250-sink\r\n250 PIPELINING\r\n").await?,
            "HELO" => write.write_all(b"250 sink\r\n").await?,
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
                // The client sends the message only once it has the 354.
                write.flush().await?;
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
                write.flush().await?;
                return Ok(());
            }
            _ => write.write_all(b"502 command not implemented\r\n").await?,
        }
        if reader.buffer().is_empty() {
            write.flush().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SmtpSink, decode_quoted_printable};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

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

    /// One conversation as a client: each line sent, each reply's code collected.
    async fn converse(port: u16, lines: &[&str]) -> Vec<String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut reply = String::new();
        reader.read_line(&mut reply).await.unwrap();
        let mut codes = vec![reply[..3].to_owned()];
        let mut in_data = false;
        for line in lines {
            write
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .unwrap();
            // The message's own lines get no reply, only the "." that ends them.
            if in_data && *line != "." {
                continue;
            }
            in_data = *line == "DATA";
            // A reply of several lines ("250-...") ends with the line whose code has a space.
            loop {
                reply.clear();
                reader.read_line(&mut reply).await.unwrap();
                if reply.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            codes.push(reply[..3].to_owned());
        }
        codes
    }

    /// Reads from the raw stream until `end` has arrived; returns what came.
    async fn read_until(stream: &mut TcpStream, end: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).ends_with(end) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the sink hung up; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    /// A client pipelining MAIL, RCPTs and DATA in one write gets every reply in one write:
    /// replies written one by one would wait behind the client's delayed ACK (see `converse`).
    #[tokio::test]
    async fn replies_to_pipelined_commands_leave_in_one_write() {
        let sink = SmtpSink::start().await.unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", sink.port()))
            .await
            .unwrap();
        read_until(&mut stream, "\r\n").await;
        stream.write_all(b"EHLO client\r\n").await.unwrap();
        assert_eq!(
            read_until(&mut stream, "250 PIPELINING\r\n").await,
            "250-sink\r\n250 PIPELINING\r\n"
        );
        let group = "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n\
                     RCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n";
        stream.write_all(group.as_bytes()).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            "250 OK\r\n250 OK\r\n250 OK\r\n250 OK\r\n354 end data with <CR><LF>.<CR><LF>\r\n",
            "the first read must hold all five replies"
        );
        stream
            .write_all(b"Message-ID: <p@example.com>\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_until(&mut stream, "221 bye\r\n").await,
            "250 OK queued\r\n221 bye\r\n"
        );
        assert_eq!(sink.message_ids(), ["<p@example.com>"]);
        assert_eq!(sink.messages()[0].rcpt_to.len(), 3);
    }

    #[tokio::test]
    async fn a_message_is_kept_with_its_headers_and_connections_are_counted_across_restarts() {
        let mut sink = SmtpSink::start().await.unwrap();
        let codes = converse(
            sink.port(),
            &[
                "EHLO client",
                "MAIL FROM:<a@example.com>",
                "RCPT TO:<b@example.com>",
                "DATA",
                "Message-ID: <1@example.com>",
                "subject: a folded",
                "\tsubject",
                "Content-Type: text/plain",
                "",
                "..dot-stuffed",
                ".",
                "QUIT",
            ],
        )
        .await;
        assert_eq!(codes, ["220", "250", "250", "250", "354", "250", "221"]);
        let mail = &sink.messages()[0];
        assert_eq!(mail.mail_from, "MAIL FROM:<a@example.com>");
        assert_eq!(mail.rcpt_to, ["RCPT TO:<b@example.com>"]);
        assert_eq!(mail.header("Subject").as_deref(), Some("a folded subject"));
        assert_eq!(mail.text_body().as_deref(), Some(".dot-stuffed\n"));
        assert_eq!(sink.message_ids(), ["<1@example.com>"]);
        assert_eq!(sink.connections(), 1);

        let port = sink.port();
        sink.stop().await;
        assert!(!sink.is_running());
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
        sink.restart_on_same_port().await.unwrap();
        assert_eq!(sink.port(), port);
        assert_eq!(
            converse(port, &["NOOP", "QUIT"]).await,
            ["220", "250", "221"]
        );
        assert_eq!(sink.connections(), 2);
        assert_eq!(sink.take_messages().len(), 1, "messages survive a restart");
        assert!(sink.messages().is_empty());
    }
}

//! The sender with the SMTP transport, against the runtime's test SMTP sink.

use crate::helpers::{
    ReceivedMail, SmtpSink, alice, closed_port, database, fast_settings, handle, row, smtp_mailer,
    start_sender, wait_all_sent, wait_for,
};
use email::store::EmailStatus;
use email::{Mailer, SenderSettings, Transport};
use std::time::Duration;

#[tokio::test]
async fn the_smtp_transport_delivers_the_message_to_the_server() {
    let db = database().await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    let e = alice(123_450);
    handle(&db.pool, std::slice::from_ref(&e)).await;

    let sender = start_sender(&db.pool, smtp_mailer(sink.port()), fast_settings());
    wait_all_sent(&db.pool, std::slice::from_ref(&e), Duration::from_secs(20)).await;
    sender.stop().await;

    let received = sink.messages();
    assert_eq!(received.len(), 1);
    let message = &received[0];
    assert!(
        message.mail_from.contains("<no-reply@eventbank.example>"),
        "{}",
        message.mail_from
    );
    assert_eq!(message.rcpt_to.len(), 1);
    assert!(
        message.rcpt_to[0].contains("<alice@example.com>"),
        "{:?}",
        message.rcpt_to
    );
    assert_eq!(
        message.message_id().as_deref(),
        Some(format!("<{}@eventbank.example>", e.event_id).as_str())
    );
    assert_eq!(
        message.header("Subject").as_deref(),
        Some("Deposit of 1,234.50 USD received")
    );
    assert_eq!(
        message.header("From").as_deref(),
        Some("eventbank <no-reply@eventbank.example>")
    );
    assert_eq!(
        message.header("To").as_deref(),
        Some("\"Alice Example\" <alice@example.com>")
    );
    assert!(message.header("Date").is_some());
    assert!(
        message
            .header("Content-Type")
            .is_some_and(|v| v.starts_with("multipart/alternative")),
        "{}",
        message.data
    );
    // The plain-text part as the recipient reads it: amount, masked account, deposit id.
    let text = message.text_body().expect("a text/plain part");
    assert!(
        text.starts_with("Hello Alice Example,\n\nWe received a deposit of 1,234.50 USD into your account ****0042.\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Deposit id: {}\n", e.deposit_id)),
        "{text}"
    );
    assert!(
        text.contains("Time:       2025-03-14 09:26:53 UTC\n"),
        "{text}"
    );
    assert!(
        !message.data.contains("ACC-0042"),
        "the full account number leaks"
    );
    assert!(message.data.contains("Content-Type: text/html"));
    drop(sink);
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn while_the_server_is_down_emails_wait_and_are_sent_once_when_it_returns() {
    let db = database().await;
    let port = closed_port().await;
    let events = vec![alice(100), alice(200)];
    handle(&db.pool, &events).await;

    let sender = start_sender(&db.pool, smtp_mailer(port), fast_settings());
    for e in &events {
        let waiting = wait_for(
            "a failed attempt to be recorded",
            Duration::from_secs(20),
            || async {
                row(&db.pool, e.event_id)
                    .await
                    .filter(|r| r.summary.attempts >= 1)
            },
        )
        .await;
        assert_eq!(waiting.summary.status, EmailStatus::Queued);
        let reason = waiting.summary.last_error.expect("last_error");
        assert!(reason.starts_with("SMTP:"), "{reason}");
        assert!(waiting.next_attempt_at > waiting.summary.created_at);
    }
    assert!(sender.metrics.retried.get() >= 2);

    let sink = SmtpSink::start_on(port).await.expect("smtp sink");
    wait_all_sent(&db.pool, &events, Duration::from_secs(30)).await;
    sender.stop().await;

    let received = sink.messages();
    for e in &events {
        let id = format!("<{}@eventbank.example>", e.event_id);
        let copies = received
            .iter()
            .filter(|m| m.message_id().as_deref() == Some(id.as_str()))
            .count();
        assert_eq!(copies, 1, "{id} delivered exactly once");
        let stored = row(&db.pool, e.event_id).await.expect("row");
        assert!(stored.summary.attempts >= 2);
    }
    assert_eq!(received.len(), events.len());
    drop(sink);
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn an_email_is_marked_failed_after_the_maximum_number_of_attempts() {
    let db = database().await;
    let port = closed_port().await;
    let e = alice(100);
    handle(&db.pool, std::slice::from_ref(&e)).await;

    let settings = SenderSettings {
        max_attempts: 3,
        retry_base: Duration::from_millis(20),
        retry_cap: Duration::from_millis(50),
        ..fast_settings()
    };
    let sender = start_sender(&db.pool, smtp_mailer(port), settings);
    let failed = wait_for(
        "the email to be given up",
        Duration::from_secs(20),
        || async {
            row(&db.pool, e.event_id)
                .await
                .filter(|r| r.summary.status == EmailStatus::Failed)
        },
    )
    .await;
    sender.stop().await;

    assert_eq!(failed.summary.attempts, 3);
    assert!(
        failed
            .summary
            .last_error
            .is_some_and(|r| r.starts_with("SMTP:"))
    );
    assert!(failed.summary.sent_at.is_none());
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn two_senders_side_by_side_deliver_each_email_exactly_once() {
    let db = database().await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    let events: Vec<_> = (1..=60).map(alice).collect();
    handle(&db.pool, &events).await;

    // Small batches, so that both replicas claim repeatedly and compete for the same rows.
    let settings = SenderSettings {
        batch_size: 5,
        ..fast_settings()
    };
    let a = start_sender(&db.pool, smtp_mailer(sink.port()), settings.clone());
    let b = start_sender(&db.pool, smtp_mailer(sink.port()), settings);
    wait_for(
        "every email to be sent",
        Duration::from_secs(60),
        || async {
            let queued: i64 =
                sqlx::query_scalar("SELECT count(*) FROM emails WHERE status <> 'sent'")
                    .fetch_one(&db.pool)
                    .await
                    .expect("count");
            (queued == 0).then_some(())
        },
    )
    .await;
    a.stop().await;
    b.stop().await;

    let received = sink.messages();
    assert_eq!(received.len(), events.len(), "no email delivered twice");
    let mut ids: Vec<String> = received
        .iter()
        .filter_map(ReceivedMail::message_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
    drop(sink);
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn concurrent_sends_over_kept_connections_deliver_each_email_once() {
    let db = database().await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    let events: Vec<_> = (1..=60).map(|i| alice(100 * i)).collect();
    handle(&db.pool, &events).await;

    let settings = SenderSettings {
        concurrency: 8,
        batch_size: 25,
        ..fast_settings()
    };
    let sender = start_sender(&db.pool, smtp_mailer(sink.port()), settings);
    wait_all_sent(&db.pool, &events, Duration::from_secs(30)).await;
    let metrics = sender.metrics.clone();
    sender.stop().await;
    let sent = metrics.sent.get();

    let mut ids: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(ReceivedMail::message_id)
        .collect();
    assert_eq!(ids.len(), events.len(), "one message per email");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "no email delivered twice");
    assert_eq!(sent, 60);
    // Connections are kept between messages: at most one per concurrent send.
    assert!(
        sink.connections() <= 8,
        "{} connections for 60 emails",
        sink.connections()
    );
    for e in &events {
        let r = row(&db.pool, e.event_id).await.unwrap();
        assert_eq!(r.summary.attempts, 1);
    }
    drop(sink);
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_is_a_transient_failure_within_the_timeout() {
    // Accepts connections and holds them without a greeting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let outcome = deliver_one(port, Duration::from_millis(300)).await;
    let waited = started.elapsed();
    holder.abort();
    match outcome {
        Err(email::transport::DeliveryError::Transient(reason)) => {
            assert!(reason.contains("did not answer"), "{reason}")
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

/// While the statement that records deliveries stalls (a database restarting, a lock), the
/// sender stops starting sends once twice its concurrency are unrecorded: a crash or a failed
/// record then resends at most that many, not the rest of its batch.
#[tokio::test]
async fn while_recording_stalls_at_most_twice_the_concurrency_go_out_unrecorded() {
    let db = database().await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    let events: Vec<_> = (0..40).map(|i| alice(100 + i)).collect();
    handle(&db.pool, &events).await;
    // Marking an email sent waits while `stall` holds a row.
    sqlx::raw_sql(
        "CREATE TABLE stall (x int); INSERT INTO stall VALUES (1);
         CREATE FUNCTION stall_sent() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             WHILE EXISTS (SELECT 1 FROM stall) LOOP PERFORM pg_sleep(0.02); END LOOP;
             RETURN NEW;
         END $$;
         CREATE TRIGGER stall_sent BEFORE UPDATE ON emails FOR EACH ROW
             WHEN (NEW.status = 'sent') EXECUTE FUNCTION stall_sent();",
    )
    .execute(&db.pool)
    .await
    .expect("stall trigger");
    let concurrency = 2;
    let settings = SenderSettings {
        concurrency,
        ..fast_settings()
    };
    let sender = start_sender(&db.pool, smtp_mailer(sink.port()), settings);
    wait_for(
        "the unrecorded sends to fill up",
        Duration::from_secs(20),
        || async { (sink.messages().len() >= 2 * concurrency).then_some(()) },
    )
    .await;
    // Without the bound, the whole batch of 40 goes out within milliseconds here.
    let window = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < window {
        let sent = sink.messages().len();
        assert!(
            sent <= 2 * concurrency,
            "{sent} sent while none could be recorded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    sqlx::query("DELETE FROM stall")
        .execute(&db.pool)
        .await
        .expect("unstall");
    wait_all_sent(&db.pool, &events, Duration::from_secs(30)).await;
    sender.stop().await;
    assert_eq!(sink.messages().len(), events.len(), "each sent once");
}

/// Listens on a free port of 127.0.0.1 and runs `serve` on the first connection it accepts.
async fn one_connection_server<F, Fut, T>(serve: F) -> (u16, tokio::task::JoinHandle<T>)
where
    F: FnOnce(
            tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
            tokio::net::tcp::OwnedWriteHalf,
        ) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, write) = stream.into_split();
        serve(tokio::io::BufReader::new(read), write).await
    });
    (port, server)
}

/// A one-connection SMTP server that checks how the client talks to it. Offering PIPELINING, it
/// answers MAIL only once RCPT and DATA have arrived behind it (a client that waits for each
/// reply gets a 451 after two seconds); not offering it, it refuses (503) any command sent
/// before the previous one was answered. Returns how the conversation ended.
async fn strict_server(offer_pipelining: bool) -> (u16, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    one_connection_server(move |mut reader, mut write| async move {
        let mut line = String::new();
        write.write_all(b"220 strict ESMTP\r\n").await.unwrap();
        let ehlo: &[u8] = if offer_pipelining {
            b"250-strict\r\n250-8BITMIME\r\n250 PIPELINING\r\n"
        } else {
            b"250-strict\r\n250 8BITMIME\r\n"
        };
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return "closed before the message".to_owned();
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            if verb == "EHLO" {
                write.write_all(ehlo).await.unwrap();
                continue;
            }
            assert_eq!(verb, "MAIL", "{line}");
            let mut replies: Vec<&[u8]> = vec![b"250 OK\r\n"];
            for (expected, reply) in [("RCPT", b"250 OK\r\n" as &[u8]), ("DATA", b"354 go\r\n")] {
                if offer_pipelining {
                    // Everything up to DATA must come before any reply.
                    line.clear();
                    let next =
                        tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line))
                            .await;
                    match next {
                        Ok(Ok(n)) if n > 0 && line.to_ascii_uppercase().starts_with(expected) => {
                            replies.push(reply)
                        }
                        _ => {
                            let _ = write.write_all(b"451 send RCPT and DATA first\r\n").await;
                            return format!("{expected} not pipelined");
                        }
                    }
                } else {
                    // Nothing may arrive before the previous command's reply is out.
                    line.clear();
                    let early = tokio::time::timeout(
                        Duration::from_millis(300),
                        reader.read_line(&mut line),
                    )
                    .await;
                    if let Ok(Ok(n)) = early
                        && n > 0
                    {
                        let _ = write.write_all(b"503 wait for my reply\r\n").await;
                        return format!("{} sent before the reply", line.trim_end());
                    }
                    for r in replies.drain(..) {
                        write.write_all(r).await.unwrap();
                    }
                    line.clear();
                    reader.read_line(&mut line).await.unwrap();
                    assert!(line.to_ascii_uppercase().starts_with(expected), "{line}");
                    replies.push(reply);
                }
            }
            for r in replies {
                write.write_all(r).await.unwrap();
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return "cut off in DATA".to_owned();
                }
                if line == ".\r\n" {
                    break;
                }
            }
            write.write_all(b"250 queued\r\n").await.unwrap();
            return "delivered".to_owned();
        }
    })
    .await
}

/// Delivers one small message over SMTP to 127.0.0.1:`port`, with the transport's `timeout`.
async fn deliver_one(port: u16, timeout: Duration) -> Result<(), email::transport::DeliveryError> {
    let mailer = Mailer::new(
        &Transport::Smtp {
            host: "127.0.0.1".into(),
            port,
        },
        timeout,
    );
    let message = lettre::Message::builder()
        .from("eventbank <no-reply@eventbank.example>".parse().unwrap())
        .to("alice@example.com".parse().unwrap())
        .subject("test")
        .body(String::from("body"))
        .unwrap();
    mailer.deliver(uuid::Uuid::now_v7(), &message).await
}

/// Where the server offers PIPELINING, MAIL, RCPT and DATA go out together: one round trip
/// where lettre alone takes three.
#[tokio::test]
async fn a_server_offering_pipelining_gets_mail_rcpt_and_data_in_one_write() {
    let (port, server) = strict_server(true).await;
    let outcome = deliver_one(port, Duration::from_secs(5)).await;
    assert_eq!(server.await.unwrap(), "delivered", "client: {outcome:?}");
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// A server that does not offer PIPELINING gets one command at a time.
#[tokio::test]
async fn a_server_without_pipelining_gets_one_command_at_a_time() {
    let (port, server) = strict_server(false).await;
    let outcome = deliver_one(port, Duration::from_secs(5)).await;
    assert_eq!(server.await.unwrap(), "delivered", "client: {outcome:?}");
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// A server offering PIPELINING that answers a pipelined MAIL, RCPT, DATA with 250, then
/// `rcpt_reply`, then 554 (no valid recipients), all in one write. Returns every command line
/// that came after those replies until the client hung up.
async fn refusing_server(rcpt_reply: &'static str) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    one_connection_server(move |mut reader, mut write| async move {
        let mut line = String::new();
        write.write_all(b"220 refusing ESMTP\r\n").await.unwrap();
        let mut group = Vec::new();
        while group.len() < 3 {
            line.clear();
            assert!(
                reader.read_line(&mut line).await.unwrap() > 0,
                "hung up after {group:?}"
            );
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            if verb == "EHLO" {
                write
                    .write_all(b"250-refusing\r\n250 PIPELINING\r\n")
                    .await
                    .unwrap();
            } else {
                group.push(verb);
            }
        }
        assert_eq!(group, ["MAIL", "RCPT", "DATA"]);
        let replies = format!("250 OK\r\n{rcpt_reply}\r\n554 no valid recipients\r\n");
        write.write_all(replies.as_bytes()).await.unwrap();
        let mut after = Vec::new();
        loop {
            line.clear();
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line));
            match read.await {
                Ok(Ok(n)) if n > 0 => after.push(line.trim_end().to_owned()),
                _ => return after,
            }
        }
    })
    .await
}

/// A recipient refused inside a pipelined group fails the delivery as its code says (5xx: for
/// good; 4xx: retried), and the message body is never sent.
#[tokio::test]
async fn a_recipient_refused_in_a_pipelined_group_fails_by_its_code_and_sends_no_body() {
    use email::transport::DeliveryError;
    for (reply, permanent) in [
        ("550 5.1.1 no such user", true),
        ("451 4.3.0 try later", false),
    ] {
        let (port, server) = refusing_server(reply).await;
        let outcome = deliver_one(port, Duration::from_secs(5)).await;
        match (&outcome, permanent) {
            (Err(DeliveryError::Permanent(why)), true)
            | (Err(DeliveryError::Transient(why)), false) => {
                assert!(why.contains(&reply[..3]), "{reply}: {why}")
            }
            _ => panic!("{reply}: {outcome:?}"),
        }
        let after = server.await.unwrap();
        assert!(
            after.iter().all(|l| ["QUIT", "RSET"].contains(&l.as_str())),
            "{reply}: the client went on after the refusal: {after:?}"
        );
    }
}

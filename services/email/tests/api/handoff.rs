//! The in-memory hand-off: an email committed by the consumer goes to the sender of the same
//! process without a claim, while the table keeps every guarantee of the claim path.

use crate::helpers::{
    RunningSender, SmtpSink, alice, database, deliver_with, fast_settings, handle, message_id, row,
    smtp_mailer, sorted_message_ids, start_sender, start_sender_with, wait_all_sent, wait_for,
};
use email::store::{self, EmailStatus};
use email::{EmailHandler, EmailMetrics, Handoff, SenderSettings};
use sqlx::PgPool;
use std::time::Duration;

/// Logs the transaction id of every row written to `emails` or `processed_events`, so a test
/// can count the committed transactions that wrote to the email database (a rolled-back one
/// takes its log rows with it). Reads, such as a claim that found nothing, write no row.
async fn log_write_transactions(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE write_log (xid xid8 NOT NULL);
         CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO write_log VALUES (pg_current_xact_id());
             RETURN NULL;
         END $$;
         CREATE TRIGGER log_emails AFTER INSERT OR UPDATE OR DELETE ON emails
             FOR EACH ROW EXECUTE FUNCTION log_write();
         CREATE TRIGGER log_processed AFTER INSERT OR UPDATE OR DELETE ON processed_events
             FOR EACH ROW EXECUTE FUNCTION log_write();",
    )
    .execute(pool)
    .await
    .expect("write log");
}

async fn write_transactions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT xid) FROM write_log")
        .fetch_one(pool)
        .await
        .expect("count write transactions")
}

#[tokio::test]
async fn a_delivered_email_costs_two_write_transactions_and_a_batch_costs_less_per_email() {
    let db = database().await;
    log_write_transactions(&db.pool).await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    let settings = fast_settings();
    let handoff = Handoff::new(settings.handoff_capacity, settings.lease);
    let metrics = EmailMetrics::default();
    let handler = EmailHandler::new(metrics.clone(), handoff.clone());
    let sender = start_sender_with(
        &db.pool,
        smtp_mailer(sink.port()),
        settings,
        handoff.clone(),
    );

    // Idle service, one deposit: the consumer's transaction (dedup row and email), then the
    // delivery record. A claim of the email would be a third.
    let one = alice(100);
    assert_eq!(
        deliver_with(&db.pool, &handler, std::slice::from_ref(&one)).await,
        1
    );
    wait_all_sent(
        &db.pool,
        std::slice::from_ref(&one),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(write_transactions(&db.pool).await, 2);
    assert_eq!(metrics.handed_off.get(), 1);
    let stored = row(&db.pool, one.event_id).await.expect("row");
    assert_eq!(stored.summary.attempts, 1);

    // A consumer batch of 50: one transaction for all of them, and the deliveries recorded in
    // groups.
    let batch: Vec<_> = (1..=50).map(|i| alice(100 * i)).collect();
    assert_eq!(deliver_with(&db.pool, &handler, &batch).await, 50);
    wait_all_sent(&db.pool, &batch, Duration::from_secs(30)).await;
    let writes = write_transactions(&db.pool).await - 2;
    assert!(
        writes <= 1 + 50 / 2,
        "{writes} write transactions for a batch of 50 emails"
    );
    assert_eq!(metrics.handed_off.get(), 51);
    sender.stop().await;

    let mut want: Vec<String> = std::iter::once(&one)
        .chain(&batch)
        .map(message_id)
        .collect();
    want.sort();
    assert_eq!(sorted_message_ids(&sink), want, "each email exactly once");
    assert!(handoff.is_empty());
    drop(sink);
    db.drop_db().await.expect("drop");
}

/// A handler and a sender of one process sharing their hand-off, the sender's deliveries
/// waiting up to `mark_delay` for the handler's next transaction to record them.
fn riding(
    pool: &PgPool,
    sink: &SmtpSink,
    mark_delay: Duration,
) -> (Handoff, EmailHandler, RunningSender) {
    let settings = SenderSettings {
        mark_delay,
        ..fast_settings()
    };
    let handoff = Handoff::new(settings.handoff_capacity, settings.lease);
    let handler = EmailHandler::new(EmailMetrics::default(), handoff.clone());
    let sender = start_sender_with(pool, smtp_mailer(sink.port()), settings, handoff.clone());
    (handoff, handler, sender)
}

#[tokio::test]
async fn at_light_load_a_delivery_record_rides_the_consumers_next_transaction() {
    let db = database().await;
    log_write_transactions(&db.pool).await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    // Long enough that every record waits for the next deposit's transaction.
    let (handoff, handler, sender) = riding(&db.pool, &sink, Duration::from_secs(30));

    // One deposit at a time, each after the previous email was delivered and its record
    // offered: the next deposit's transaction carries it.
    let events: Vec<_> = (1..=10).map(|i| alice(100 * i)).collect();
    for e in &events {
        assert_eq!(
            deliver_with(&db.pool, &handler, std::slice::from_ref(e)).await,
            1
        );
        wait_for(
            "the delivery record offered",
            Duration::from_secs(20),
            || async { (handoff.sent().waiting() == 1).then_some(()) },
        )
        .await;
    }
    // Nothing comes after the tenth: its record would be written alone when its wait ends,
    // and stopping the sender ends the wait.
    sender.stop().await;

    // Ten consumer transactions, each recording the previous email, and the last record.
    assert_eq!(write_transactions(&db.pool).await, 11);
    for e in &events {
        let stored = row(&db.pool, e.event_id).await.expect("row");
        assert_eq!(stored.summary.status, EmailStatus::Sent);
        assert_eq!(stored.summary.attempts, 1);
    }
    let mut want: Vec<String> = events.iter().map(message_id).collect();
    want.sort();
    assert_eq!(sorted_message_ids(&sink), want, "each email exactly once");
    drop(sink);
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn a_delivery_record_whose_transaction_rolls_back_is_written_by_the_sender_at_once() {
    let db = database().await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    let (handoff, handler, sender) = riding(&db.pool, &sink, Duration::from_secs(300));

    let first = alice(100);
    assert_eq!(
        deliver_with(&db.pool, &handler, std::slice::from_ref(&first)).await,
        1
    );
    wait_for("the record offered", Duration::from_secs(20), || async {
        (handoff.sent().waiting() == 1).then_some(())
    })
    .await;
    // The next transaction carries the record and then fails at its commit.
    let doomed = alice(200);
    // A uuid the test made: nothing to inject.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION 'refused at commit';
         END $$;
         CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON processed_events
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
             WHEN (NEW.event_id = '{}') EXECUTE FUNCTION refuse();",
        doomed.event_id
    )))
    .execute(&db.pool)
    .await
    .expect("trigger");
    let failed =
        eventbank_runtime::consumer::deliver(&db.pool, &handler, std::slice::from_ref(&doomed))
            .await;
    assert!(failed.is_err(), "the commit was refused");

    // Handed back, the record is the sender's to write, long before its 300 s wait ends.
    wait_all_sent(
        &db.pool,
        std::slice::from_ref(&first),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(handoff.sent().waiting(), 0, "not offered again");
    sender.stop().await;
    assert_eq!(sorted_message_ids(&sink), [message_id(&first)], "sent once");
    drop(sink);
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn an_email_handed_off_but_never_sent_is_sent_once_by_the_claim_path_when_its_lease_ends() {
    let db = database().await;
    let lease = Duration::from_secs(60);
    // The process that consumes the event has no running sender: it stops before the send.
    let handoff = Handoff::new(10, lease);
    let handler = EmailHandler::new(EmailMetrics::default(), handoff.clone());
    let e = alice(100);
    assert_eq!(
        deliver_with(&db.pool, &handler, std::slice::from_ref(&e)).await,
        1
    );
    assert_eq!(handoff.len(), 1, "handed off, waiting for the sender");

    // Stored exactly as a claim leaves an email: queued, not attempted, leased for `lease`.
    let stored = row(&db.pool, e.event_id).await.expect("row");
    assert_eq!(stored.summary.status, EmailStatus::Queued);
    assert_eq!(stored.summary.attempts, 0);
    let leased_for = stored.next_attempt_at - stored.summary.created_at;
    assert!(
        leased_for >= chrono::Duration::seconds(60) && leased_for < chrono::Duration::seconds(70),
        "leased for {leased_for}"
    );
    drop(handler);
    drop(handoff);

    // Another process's sender does not take it while the lease holds: it sends an email
    // queued after it, due at once, and not this one...
    let sink = SmtpSink::start().await.expect("smtp sink");
    let sender = start_sender(&db.pool, smtp_mailer(sink.port()), fast_settings());
    let due = alice(200);
    handle(&db.pool, std::slice::from_ref(&due)).await;
    wait_all_sent(
        &db.pool,
        std::slice::from_ref(&due),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        sorted_message_ids(&sink),
        [message_id(&due)],
        "sent while leased"
    );

    // ...and sends it once the lease has run out (moved into the past instead of waiting),
    // once: a later round, which sends another due email, sends it no second time.
    sqlx::query("UPDATE emails SET next_attempt_at = now() - interval '1 ms' WHERE event_id = $1")
        .bind(e.event_id)
        .execute(&db.pool)
        .await
        .expect("lease ended");
    wait_all_sent(&db.pool, std::slice::from_ref(&e), Duration::from_secs(20)).await;
    let later = alice(300);
    handle(&db.pool, std::slice::from_ref(&later)).await;
    wait_all_sent(
        &db.pool,
        std::slice::from_ref(&later),
        Duration::from_secs(20),
    )
    .await;
    sender.stop().await;

    let mut want: Vec<String> = [&e, &due, &later].into_iter().map(message_id).collect();
    want.sort();
    assert_eq!(sorted_message_ids(&sink), want, "each sent exactly once");
    let sent = row(&db.pool, e.event_id).await.expect("row");
    assert_eq!(sent.summary.attempts, 1);
    drop(sink);
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn emails_the_hand_off_has_no_room_for_are_queued_due_for_the_claim() {
    let db = database().await;
    let handoff = Handoff::new(2, Duration::from_secs(60));
    let handler = EmailHandler::new(EmailMetrics::default(), handoff.clone());
    let events: Vec<_> = (1..=5).map(|i| alice(100 * i)).collect();
    assert_eq!(deliver_with(&db.pool, &handler, &events).await, 5);

    let handed: Vec<_> = handoff
        .take(10)
        .into_iter()
        .map(|h| h.email.event_id)
        .collect();
    assert_eq!(handed, vec![events[0].event_id, events[1].event_id]);
    let mut conn = db.pool.acquire().await.expect("connection");
    let mut claimed: Vec<_> = store::claim_due(&mut conn, 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .into_iter()
        .map(|o| o.event_id)
        .collect();
    claimed.sort();
    let mut rest: Vec<_> = events[2..].iter().map(|e| e.event_id).collect();
    rest.sort();
    assert_eq!(
        claimed, rest,
        "the rest are due at once, the handed-off ones leased"
    );
    drop(conn);
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn a_stopping_sender_makes_the_emails_handed_off_but_not_started_due_at_once() {
    let db = database().await;
    let settings = fast_settings();
    let handoff = Handoff::new(settings.handoff_capacity, settings.lease);
    let handler = EmailHandler::new(EmailMetrics::default(), handoff.clone());
    let e = alice(100);
    assert_eq!(
        deliver_with(&db.pool, &handler, std::slice::from_ref(&e)).await,
        1
    );
    assert_eq!(handoff.len(), 1);
    // Shut down before the sender took it.
    let shutdown = eventbank_runtime::Shutdown::new();
    shutdown.trigger();
    let sender = email::Sender {
        pool: db.pool.clone(),
        mailer: smtp_mailer(1),
        from: email::DEFAULT_FROM.parse().expect("from"),
        settings,
        metrics: EmailMetrics::default(),
        handoff: handoff.clone(),
    };
    sender.run(shutdown).await;

    assert!(handoff.is_empty());
    let mut conn = db.pool.acquire().await.expect("connection");
    let due = store::claim_due(&mut conn, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(due.len(), 1, "due at once, not when the lease ends");
    assert_eq!(due[0].event_id, e.event_id);
    drop(conn);
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn a_sender_working_through_claimed_emails_records_them_without_waiting_for_a_ride() {
    let db = database().await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    // No consumer transaction will come: a record waiting for a ride would wait 300 s.
    let (_handoff, _handler, sender) = riding(&db.pool, &sink, Duration::from_secs(300));
    let events: Vec<_> = (1..=3).map(|i| alice(100 * i)).collect();
    // Queued due for the claim, as when the hand-off has no room (a backlog).
    handle(&db.pool, &events).await;
    wait_all_sent(&db.pool, &events, Duration::from_secs(20)).await;
    sender.stop().await;
    drop(sink);
    db.drop_db().await.expect("drop");
}

/// Holds the first connection made to it open without a word, and relays every later one to
/// `to`. Answers its port and a handle on the held connection (`None` until one came):
/// dropping the connection lets the client's wait end.
async fn holding_first_connection(
    to: u16,
) -> (
    u16,
    std::sync::Arc<tokio::sync::Mutex<Option<tokio::net::TcpStream>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(None));
    let first = held.clone();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        *first.lock().await = Some(stream);
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (port, held)
}

/// A send that hangs does not hold back the emails handed off after it: the sender starts
/// them as they come, not once the hanging one's batch has finished.
#[tokio::test]
async fn emails_handed_off_while_a_send_hangs_are_sent_without_waiting_for_it() {
    let db = database().await;
    let sink = SmtpSink::start().await.expect("smtp sink");
    let (port, held) = holding_first_connection(sink.port()).await;
    let settings = SenderSettings {
        // No claims during the test: only the hand-off sends.
        poll_interval: Duration::from_secs(600),
        ..fast_settings()
    };
    let handoff = Handoff::new(settings.handoff_capacity, settings.lease);
    let handler = EmailHandler::new(EmailMetrics::default(), handoff.clone());
    // The hanging send waits for the server's greeting for up to a minute.
    let mailer = email::Mailer::new(
        &email::Transport::Smtp {
            host: "127.0.0.1".into(),
            port,
        },
        Duration::from_secs(60),
    );
    let sender = start_sender_with(&db.pool, mailer, settings, handoff.clone());

    let hanging = alice(100);
    deliver_with(&db.pool, &handler, std::slice::from_ref(&hanging)).await;
    wait_for(
        "the first send to connect",
        Duration::from_secs(20),
        || async { held.lock().await.is_some().then_some(()) },
    )
    .await;
    let later: Vec<_> = (1..=3).map(|i| alice(200 + i)).collect();
    for e in &later {
        deliver_with(&db.pool, &handler, std::slice::from_ref(e)).await;
        wait_all_sent(&db.pool, std::slice::from_ref(e), Duration::from_secs(20)).await;
    }
    let first = row(&db.pool, hanging.event_id).await.expect("row");
    assert_eq!(
        (first.summary.status, first.summary.attempts),
        (EmailStatus::Queued, 0),
        "the hanging send is still under way"
    );

    // Let the hanging send fail (connection closed): it is recorded for a retry.
    held.lock().await.take();
    wait_for(
        "the failed attempt to be recorded",
        Duration::from_secs(20),
        || async {
            row(&db.pool, hanging.event_id)
                .await
                .filter(|r| r.summary.attempts == 1)
        },
    )
    .await;
    sender.stop().await;
    let mut want: Vec<String> = later.iter().map(message_id).collect();
    want.sort();
    assert_eq!(
        sorted_message_ids(&sink),
        want,
        "each later email exactly once"
    );
    drop(sink);
    db.drop_db().await.expect("drop");
}

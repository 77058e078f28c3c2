//! The handler queues one email per event, set-based, and never twice for one event id.

use crate::helpers::{
    SmtpSink, alice, count_rows, database, deliver, email_state, event, fast_settings, handle, row,
    shuffled, smtp_mailer, sorted_message_ids, start_sender, wait_for,
};
use email::store::EmailStatus;
use std::time::Duration;

#[tokio::test]
async fn a_batch_of_events_is_queued_in_one_call() {
    let db = database().await;
    let events: Vec<_> = (1..=50).map(|i| alice(i * 100)).collect();

    handle(&db.pool, &events).await;

    assert_eq!(count_rows(&db.pool).await, 50);
    for e in [&events[0], &events[49]] {
        let stored = row(&db.pool, e.event_id).await.expect("row");
        assert_eq!(stored.summary.status, EmailStatus::Queued);
        assert_eq!(stored.summary.attempts, 0);
        assert_eq!(stored.summary.deposit_id, e.deposit_id);
        assert_eq!(stored.summary.account_id.as_str(), "ACC-0042");
        assert_eq!(stored.summary.to_address, "alice@example.com");
        assert_eq!(stored.sequence, e.sequence);
        assert_eq!(
            stored.message_id,
            format!("<{}@eventbank.example>", e.event_id)
        );
        assert!(stored.summary.sent_at.is_none());
        assert!(stored.summary.last_error.is_none());
    }
    let last = row(&db.pool, events[49].event_id).await.expect("row");
    assert_eq!(last.summary.subject, "Deposit of 50.00 USD received");
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn handling_the_same_event_again_does_not_queue_a_second_email() {
    let db = database().await;
    let first = alice(10_000);
    handle(&db.pool, std::slice::from_ref(&first)).await;

    let other = event("ACC-0007", 500, "EUR", "Bob", "bob@example.com");
    handle(&db.pool, &[first.clone(), other.clone(), first.clone()]).await;

    assert_eq!(count_rows(&db.pool).await, 2);
    assert!(row(&db.pool, other.event_id).await.is_some());
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn a_hostile_holder_name_is_stored_escaped_in_the_html_body() {
    let db = database().await;
    let e = event(
        "ACC-0042",
        100,
        "USD",
        "<script>steal()</script>",
        "mallory@example.com",
    );
    handle(&db.pool, std::slice::from_ref(&e)).await;

    let stored = row(&db.pool, e.event_id).await.expect("row");
    assert!(!stored.body_html.contains("<script>"));
    assert!(
        stored
            .body_html
            .contains("&lt;script&gt;steal()&lt;/script&gt;")
    );
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn duplicated_and_reordered_delivery_queues_the_same_emails_as_clean_delivery_and_each_is_sent_once()
 {
    let mut events: Vec<_> = (1..=12)
        .map(|i| {
            if i % 3 == 0 {
                event("ACC-0007", i * 1_000, "EUR", "Bob", "bob@example.com")
            } else {
                alice(i * 100)
            }
        })
        .collect();
    for (i, e) in events.iter_mut().enumerate() {
        e.sequence = i64::try_from(i).unwrap() + 1;
    }

    // Clean: once each, in order.
    let clean = database().await;
    for e in &events {
        assert_eq!(deliver(&clean.pool, std::slice::from_ref(e)).await, 1);
    }
    let expected = email_state(&clean.pool).await;
    assert_eq!(expected.len(), events.len());
    clean.drop_db().await.expect("drop");

    for seed in [1_u64, 5, 77] {
        let messy = database().await;
        // Shuffled, every event twice (a third of them twice within one batch), batches of
        // one to four.
        let mut deliveries = Vec::new();
        for (i, e) in shuffled(&events, seed).into_iter().enumerate() {
            if i % 3 == 0 {
                deliveries.push(e.clone());
            }
            deliveries.push(e);
        }
        deliveries.extend(shuffled(&events, seed.wrapping_mul(31)));
        let mut applied = 0;
        let mut rest = deliveries.as_slice();
        let mut size = 1;
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(size.min(rest.len()));
            applied += deliver(&messy.pool, batch).await;
            rest = tail;
            size = size % 4 + 1;
        }
        assert_eq!(applied, events.len(), "seed {seed}");
        assert_eq!(email_state(&messy.pool).await, expected, "seed {seed}");

        // And each is delivered exactly once.
        let sink = SmtpSink::start().await.expect("smtp sink");
        let sender = start_sender(&messy.pool, smtp_mailer(sink.port()), fast_settings());
        wait_for(
            "every email to be sent",
            Duration::from_secs(30),
            || async {
                (count_rows_with_status(&messy.pool, "sent").await == events.len() as i64)
                    .then_some(())
            },
        )
        .await;
        sender.stop().await;
        let ids = sorted_message_ids(&sink);
        let mut want: Vec<String> = events
            .iter()
            .map(|e| format!("<{}@eventbank.example>", e.event_id))
            .collect();
        want.sort();
        assert_eq!(ids, want, "seed {seed}: each email exactly once");
        drop(sink);
        messy.drop_db().await.expect("drop");
    }
}

async fn count_rows_with_status(pool: &sqlx::PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM emails WHERE status = $1")
        .bind(status)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Each email's Message-ID is its event id's (migration 0003): with the event id the primary
/// key, that keeps Message-IDs unique without an index of their own. A row whose Message-ID is
/// not derived from its event id is refused.
#[tokio::test]
async fn a_message_id_not_derived_from_the_event_id_is_refused() {
    let db = database().await;
    let (first, second) = (alice(100), alice(200));
    handle(&db.pool, &[first.clone(), second.clone()]).await;
    let stored: String = sqlx::query_scalar("SELECT message_id FROM emails WHERE event_id = $1")
        .bind(first.event_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, crate::helpers::message_id(&first));
    let refused = sqlx::query("UPDATE emails SET message_id = $1 WHERE event_id = $2")
        .bind(&stored)
        .bind(second.event_id)
        .execute(&db.pool)
        .await
        .expect_err("another email's Message-ID");
    assert!(
        refused.to_string().contains("emails_message_id_derived"),
        "{refused}"
    );
    db.drop_db().await.expect("drop");
}

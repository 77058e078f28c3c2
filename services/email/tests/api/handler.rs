//! The handler queues one email per event, set-based, and never twice for one event id.

use crate::helpers::{alice, count_rows, database, event, handle, row};
use email::store::EmailStatus;

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
        assert_eq!(stored.summary.account_id, "ACC-0042");
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

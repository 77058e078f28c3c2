//! The sender's scheduling: a claimed email is invisible to other senders until its lease
//! ends, released emails are due again at once, and retry delays back off.

use crate::helpers::{alice, database, handle};
use email::sender::SenderSettings;
use email::store;
use std::time::Duration;

#[tokio::test]
async fn a_claimed_email_comes_back_only_when_its_lease_runs_out() {
    let db = database().await;
    let e = alice(100);
    handle(&db.pool, std::slice::from_ref(&e)).await;
    let mut conn = db.pool.acquire().await.expect("connection");

    let first = store::claim_due(&mut conn, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event_id, e.event_id);
    assert_eq!(first[0].attempts, 0);

    // Another sender (replica) finds nothing while the lease holds, however slow the machine
    // (a 60 s lease, not a race against a short one)...
    let second = store::claim_due(&mut conn, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(second.is_empty());

    // ...and gets the email once the lease has run out (the first sender "crashed"): the
    // lease's end moved into the past instead of waiting for it.
    sqlx::query("UPDATE emails SET next_attempt_at = now() - interval '1 ms' WHERE event_id = $1")
        .bind(e.event_id)
        .execute(&mut *conn)
        .await
        .expect("lease ended");
    let again = store::claim_due(&mut conn, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);

    // Releasing hands it back at once.
    store::release(&mut conn, &[e.event_id])
        .await
        .expect("release");
    let released = store::claim_due(&mut conn, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(released.len(), 1);
    drop(conn);
    db.drop_db().await.expect("drop");
}

#[test]
fn retry_delays_grow_exponentially_with_jitter_up_to_the_cap() {
    let settings = SenderSettings {
        retry_base: Duration::from_secs(1),
        retry_cap: Duration::from_secs(300),
        ..SenderSettings::default()
    };
    for _ in 0..50 {
        let first = settings.retry_delay(1);
        assert!(first <= Duration::from_secs(1) && first >= Duration::from_millis(750));
        let fourth = settings.retry_delay(4);
        assert!(fourth <= Duration::from_secs(8) && fourth >= Duration::from_secs(6));
        let late = settings.retry_delay(40);
        assert!(late <= Duration::from_secs(300) && late >= Duration::from_secs(225));
    }
}

/// Index entries of `emails_queued_due` read so far, this connection's own reads included.
async fn queued_index_reads(conn: &mut sqlx::PgConnection) -> i64 {
    // A backend flushes its counters at most once a second; this makes it flush as the
    // statement ends, so the next one sees them.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .expect("flush statistics");
    sqlx::query_scalar(
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'emails_queued_due'",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("index statistics")
}

/// Recording deliveries (and handing emails back) looks up each email by its key: it does not
/// read the index of queued emails, which under load holds thousands of entries (live, and
/// dead ones of the emails just sent).
#[tokio::test]
async fn recording_deliveries_reads_only_their_own_rows_however_many_emails_are_queued() {
    let db = database().await;
    let events: Vec<_> = (0..10_000).map(|i| alice(100 + i)).collect();
    handle(&db.pool, &events).await;
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let mut conn = db.pool.acquire().await.expect("connection");
    // Most sent, as under load in a new database (not analyzed yet: the planner's estimates
    // then make the queued index look cheap).
    store::mark_sent(&mut conn, &ids[..9600])
        .await
        .expect("mark sent");

    let before = queued_index_reads(&mut conn).await;
    for chunk in ids[9600..9800].chunks(20) {
        store::mark_sent(&mut conn, chunk).await.expect("mark sent");
    }
    store::release(&mut conn, &ids[9800..9820])
        .await
        .expect("release");
    let read = queued_index_reads(&mut conn).await - before;
    assert!(
        read < 100,
        "{read} entries of the queued index read to record 200 deliveries and release 20"
    );
    drop(conn);
    db.drop_db().await.expect("drop");
}

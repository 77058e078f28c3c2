//! The sender's scheduling: a claimed email is invisible to other senders until its lease
//! ends, released emails are due again at once, and retry delays back off.

use crate::helpers::{alice, database, handle, wait_for};
use email::sender::SenderSettings;
use email::store;
use std::time::Duration;

#[tokio::test]
async fn a_claimed_email_comes_back_only_when_its_lease_runs_out() {
    let db = database().await;
    let e = alice(100);
    handle(&db.pool, std::slice::from_ref(&e)).await;
    let mut conn = db.pool.acquire().await.expect("connection");

    let first = store::claim_due(&mut conn, 10, Duration::from_millis(500))
        .await
        .expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event_id, e.event_id);
    assert_eq!(first[0].attempts, 0);

    // Another sender (replica) finds nothing while the lease holds...
    let second = store::claim_due(&mut conn, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(second.is_empty());

    // ...and gets the email once the lease has run out (the first sender "crashed").
    let again = wait_for("the lease to run out", Duration::from_secs(10), || async {
        let mut conn = db.pool.acquire().await.expect("connection");
        let rows = store::claim_due(&mut conn, 10, Duration::from_secs(60))
            .await
            .expect("claim");
        (!rows.is_empty()).then_some(rows)
    })
    .await;
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

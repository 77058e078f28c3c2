//! The gap monitor: a gap open longer than the threshold is counted in
//! `account_sequence_gaps_open`, and no longer once it fills.

use crate::{event, fresh_db, handle};
use account::gaps::GapMonitor;
use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;

#[tokio::test]
async fn a_gap_open_too_long_is_counted_until_it_fills() {
    let db = fresh_db().await;
    let gauge = Gauge::default();
    let mut monitor = GapMonitor::new(db.pool.clone(), Duration::from_secs(60), gauge.clone());
    handle(&db, &[event("ACC-0001", 1, 100), event("ACC-0001", 3, 300)]).await;
    handle(&db, &[event("ACC-0002", 1, 100), event("ACC-0002", 4, 300)]).await;

    // Parked just now: not open long enough yet.
    assert!(monitor.check().await.unwrap().is_empty());
    assert_eq!(gauge.get(), 0);

    // ACC-0001's deposit has been parked for two minutes.
    sqlx::query(
        "UPDATE pending_events SET received_at = now() - interval '2 minutes' WHERE account_id = 'ACC-0001'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let gaps = monitor.check().await.unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (
            gaps[0].account_id.as_str(),
            gaps[0].expected_sequence,
            gaps[0].parked
        ),
        ("ACC-0001", 2, 1)
    );
    assert!(gaps[0].open_for_secs >= 119);
    assert_eq!(gauge.get(), 1);

    handle(&db, &[event("ACC-0001", 2, 200)]).await;
    assert!(monitor.check().await.unwrap().is_empty());
    assert_eq!(gauge.get(), 0);
    db.drop_db().await.unwrap();
}

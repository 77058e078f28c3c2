//! The reporting rules through the handler: CTR and structuring alerts.

use crate::helpers::{at, hours, setup, usd};

#[tokio::test]
async fn a_deposit_at_exactly_the_threshold_is_a_ctr_and_one_minor_unit_below_is_not() {
    let app = setup().await;
    let at_threshold = usd("ACC-CTR", 1_000_000, at("2024-01-01T10:00:00Z"));
    app.apply(std::slice::from_ref(&at_threshold)).await;
    app.apply(&[usd("ACC-UNDER", 999_999, at("2024-01-01T10:00:00Z"))])
        .await;
    assert_eq!(
        app.alerts().await,
        vec![(
            "ctr".into(),
            "ACC-CTR".into(),
            1_000_000,
            at_threshold.event_id
        )]
    );
    let (start, end): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT window_start, window_end FROM alerts")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        (start, end),
        (at_threshold.occurred_at, at_threshold.occurred_at)
    );
    app.finish().await;
}

#[tokio::test]
async fn small_deposits_reaching_the_threshold_within_24_hours_raise_one_structuring_alert() {
    let app = setup().await;
    let start = at("2024-01-01T08:00:00Z");
    // 300,000 x 5 within 10 hours: the 4th reaches 1,200,000; the 5th is in an overlapping
    // window and raises nothing more. Batched and one at a time give the same result.
    let batch: Vec<_> = (0..5)
        .map(|i| usd("ACC-STRUCT-A", 300_000, start + hours(2 * i)))
        .collect();
    app.apply(&batch).await;
    let singles: Vec<_> = (0..5)
        .map(|i| usd("ACC-STRUCT-B", 300_000, start + hours(2 * i)))
        .collect();
    for e in &singles {
        app.apply(std::slice::from_ref(e)).await;
    }
    assert_eq!(
        app.alerts().await,
        vec![
            (
                "structuring".into(),
                "ACC-STRUCT-A".into(),
                1_200_000,
                batch[3].event_id
            ),
            (
                "structuring".into(),
                "ACC-STRUCT-B".into(),
                1_200_000,
                singles[3].event_id
            ),
        ]
    );
    let (window_start, window_end, count): (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        i64,
    ) = sqlx::query_as(
        "SELECT window_start, window_end, (details->>'deposit_count')::bigint FROM alerts \
             WHERE account_id = 'ACC-STRUCT-A'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(window_end, batch[3].occurred_at);
    assert_eq!(window_start, batch[3].occurred_at - hours(24));
    assert_eq!(count, 4);
    app.finish().await;
}

#[tokio::test]
async fn the_same_deposits_spread_over_more_than_24_hours_raise_nothing() {
    let app = setup().await;
    let start = at("2024-01-01T08:00:00Z");
    // 300,000 every 9 hours: any 24 h window holds at most three (900,000 < 1,000,000).
    let events: Vec<_> = (0..6)
        .map(|i| usd("ACC-SPREAD", 300_000, start + hours(9 * i)))
        .collect();
    app.apply(&events).await;
    assert!(app.alerts().await.is_empty());
    // Two 500,000 deposits 25 hours apart: nothing; a third 23 hours after the second: alert.
    let a = usd("ACC-PAIR", 500_000, start);
    let b = usd("ACC-PAIR", 500_000, start + hours(25));
    let c = usd("ACC-PAIR", 500_000, start + hours(48));
    app.apply(&[a, b]).await;
    assert!(app.alerts().await.is_empty());
    app.apply(std::slice::from_ref(&c)).await;
    assert_eq!(
        app.alerts().await,
        vec![(
            "structuring".into(),
            "ACC-PAIR".into(),
            1_000_000,
            c.event_id
        )]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_ctr_deposit_does_not_count_towards_structuring() {
    let app = setup().await;
    let start = at("2024-05-01T08:00:00Z");
    let big = usd("ACC-MIX", 5_000_000, start);
    let small = usd("ACC-MIX", 10, start + hours(1));
    app.apply(&[big.clone(), small]).await;
    assert_eq!(
        app.alerts().await,
        vec![("ctr".into(), "ACC-MIX".into(), 5_000_000, big.event_id)]
    );
    app.finish().await;
}

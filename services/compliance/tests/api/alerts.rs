//! The reporting rules through the handler: CTR and structuring alerts.

use crate::helpers::{at, hours, setup, setup_with, usd};
use compliance::ComplianceHandler;

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

#[tokio::test]
async fn the_threshold_comes_from_configuration() {
    // 500.00 instead of 10,000.00: a 500.00 deposit is a CTR, 499.99 is not.
    let rules = compliance::rules::Rules {
        ctr_threshold_minor: 50_000,
        ..compliance::rules::Rules::default()
    };
    let app = setup_with(ComplianceHandler::new(rules, Default::default())).await;
    let at_threshold = usd("ACC-CONF", 50_000, at("2024-01-01T10:00:00Z"));
    app.apply(&[
        at_threshold.clone(),
        usd("ACC-CONF-2", 49_999, at("2024-01-01T10:00:00Z")),
    ])
    .await;
    assert_eq!(
        app.alerts().await,
        vec![(
            "ctr".into(),
            "ACC-CONF".into(),
            50_000,
            at_threshold.event_id
        )]
    );
    app.finish().await;
}

#[tokio::test]
async fn structuring_windows_are_a_rolling_24_hours_to_the_microsecond_not_calendar_days() {
    let app = setup().await;
    // Across midnight: 23:00 and 01:00 the next day are 2 h apart, one window.
    let night = [
        usd("ACC-NIGHT", 500_000, at("2024-03-01T23:00:00Z")),
        usd("ACC-NIGHT", 500_000, at("2024-03-02T01:00:00Z")),
    ];
    // Exactly 24 h apart: the closed window holds both.
    let exact = [
        usd("ACC-EXACT", 500_000, at("2024-03-01T12:00:00Z")),
        usd("ACC-EXACT", 500_000, at("2024-03-02T12:00:00Z")),
    ];
    // 24 h and one microsecond apart (the precision Postgres keeps): no window holds both.
    let over = [
        usd("ACC-OVER", 500_000, at("2024-03-01T12:00:00Z")),
        usd("ACC-OVER", 500_000, at("2024-03-02T12:00:00.000001Z")),
    ];
    // One calendar day, 23 h 59 min apart: one window.
    let same_day = [
        usd("ACC-DAY", 500_000, at("2024-03-01T00:00:00Z")),
        usd("ACC-DAY", 500_000, at("2024-03-01T23:59:00Z")),
    ];
    for events in [&night, &exact, &over, &same_day] {
        for e in events {
            app.apply(std::slice::from_ref(e)).await;
        }
    }
    let mut raised: Vec<(String, uuid::Uuid)> = app
        .alerts()
        .await
        .into_iter()
        .map(|(kind, account, _, event_id)| {
            assert_eq!(kind, "structuring");
            (account, event_id)
        })
        .collect();
    raised.sort();
    assert_eq!(
        raised,
        vec![
            ("ACC-DAY".into(), same_day[1].event_id),
            ("ACC-EXACT".into(), exact[1].event_id),
            ("ACC-NIGHT".into(), night[1].event_id),
        ]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_late_deposit_supersedes_the_alert_that_time_order_would_not_have_raised() {
    let app = setup().await;
    let base = app.serve().await;
    let x = usd("ACC-LATE", 600_000, at("2024-01-01T00:00:00Z"));
    let y = usd("ACC-LATE", 600_000, at("2024-01-01T10:00:00Z"));
    let z = usd("ACC-LATE", 600_000, at("2024-01-01T05:00:00Z"));
    app.apply(&[x.clone(), y.clone()]).await;
    assert_eq!(
        app.active_alerts().await,
        vec![(
            "structuring".into(),
            "ACC-LATE".into(),
            1_200_000,
            y.event_id
        )]
    );

    // Z, dated 05:00, arrives last. In time order X + Z reached the threshold at 05:00, and
    // the 10:00 window overlaps that alert: the alert moves to Z's window.
    app.apply(std::slice::from_ref(&z)).await;
    assert_eq!(
        app.active_alerts().await,
        vec![(
            "structuring".into(),
            "ACC-LATE".into(),
            1_200_000,
            z.event_id
        )]
    );
    let (_, _, active) = app
        .get(&base, "/compliance/alerts?account_id=ACC-LATE")
        .await;
    let items = active["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["window_end"], "2024-01-01T05:00:00Z");
    assert!(items[0]["superseded_at"].is_null());
    // The superseded alert stays on record.
    let (_, _, all) = app
        .get(
            &base,
            "/compliance/alerts?account_id=ACC-LATE&include_superseded=true",
        )
        .await;
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["event_id"], y.event_id.to_string());
    assert!(items[0]["superseded_at"].is_string());
    let (status, _, _) = app
        .get(&base, "/compliance/alerts?include_superseded=maybe")
        .await;
    assert_eq!(status, 400);
    app.finish().await;
}

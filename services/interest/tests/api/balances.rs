//! Daily closing balances: business days, back-dated corrections, idempotence, batches.

use crate::helpers::{deposit, setup, usd};
use eventbank_runtime::consumer::HandlerError;

#[tokio::test]
async fn a_backdated_deposit_corrects_every_later_day() {
    let app = setup().await;
    // Arrange: deposits on Jan 1, Jan 3 and Jan 5.
    app.apply(&[usd("ACC-B1", 100, "2024-01-01T09:00:00Z")])
        .await;
    app.apply(&[usd("ACC-B1", 200, "2024-01-03T09:00:00Z")])
        .await;
    app.apply(&[usd("ACC-B1", 50, "2024-01-05T09:00:00Z")])
        .await;
    assert_eq!(
        app.balances("ACC-B1").await,
        vec![
            ("2024-01-01".into(), 100),
            ("2024-01-03".into(), 300),
            ("2024-01-05".into(), 350)
        ]
    );

    // Act: a deposit dated Jan 2 arrives last.
    app.apply(&[usd("ACC-B1", 1_000, "2024-01-02T15:00:00Z")])
        .await;

    // Assert: Jan 2 opens at Jan 1's closing balance, and Jan 3 and Jan 5 include the deposit.
    assert_eq!(
        app.balances("ACC-B1").await,
        vec![
            ("2024-01-01".into(), 100),
            ("2024-01-02".into(), 1_100),
            ("2024-01-03".into(), 1_300),
            ("2024-01-05".into(), 1_350),
        ]
    );
    let current: (i64, chrono::NaiveDate) = sqlx::query_as(
        "SELECT balance_minor, as_of_day FROM accounts_balance WHERE account_id = 'ACC-B1'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(current, (1_350, crate::helpers::day("2024-01-05")));
    app.finish().await;
}

#[tokio::test]
async fn the_last_second_of_a_day_and_the_first_of_the_next_are_different_days() {
    let app = setup().await;
    app.apply(&[
        usd("ACC-MID", 100, "2024-03-10T23:59:59Z"),
        usd("ACC-MID", 10, "2024-03-11T00:00:00Z"),
    ])
    .await;
    assert_eq!(
        app.balances("ACC-MID").await,
        vec![("2024-03-10".into(), 100), ("2024-03-11".into(), 110)]
    );
    // A time with an offset counts on its UTC date: 01:30+02:00 is 23:30 UTC the day before.
    let mut late = usd("ACC-MID", 1, "2024-03-10T00:00:00Z");
    late.occurred_at = chrono::DateTime::parse_from_rfc3339("2024-03-12T01:30:00+02:00")
        .unwrap()
        .with_timezone(&chrono::Utc);
    app.apply(&[late]).await;
    assert_eq!(
        app.balances("ACC-MID").await,
        vec![("2024-03-10".into(), 100), ("2024-03-11".into(), 111)]
    );
    app.finish().await;
}

#[tokio::test]
async fn the_leap_day_is_a_business_day_of_its_own() {
    let app = setup().await;
    app.apply(&[usd("ACC-LEAP", 500, "2024-02-28T12:00:00Z")])
        .await;
    app.apply(&[usd("ACC-LEAP", 700, "2024-03-01T12:00:00Z")])
        .await;
    app.apply(&[usd("ACC-LEAP", 300, "2024-02-29T23:59:59Z")])
        .await;
    assert_eq!(
        app.balances("ACC-LEAP").await,
        vec![
            ("2024-02-28".into(), 500),
            ("2024-02-29".into(), 800),
            ("2024-03-01".into(), 1_500)
        ]
    );
    let days: Vec<String> = app
        .accruals("ACC-LEAP")
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(days, vec!["2024-02-28", "2024-02-29", "2024-03-01"]);
    app.finish().await;
}

#[tokio::test]
async fn the_same_event_delivered_twice_changes_the_balance_once() {
    let app = setup().await;
    let event = usd("ACC-DUP", 2_500, "2024-05-01T10:00:00Z");
    // Through the runtime's dedup insert: the second delivery never reaches the handler.
    assert_eq!(app.deliver(std::slice::from_ref(&event)).await, 1);
    assert_eq!(app.deliver(std::slice::from_ref(&event)).await, 0);
    // And the handler itself skips an event it already stored (a redrive that bypassed dedup),
    // even when the same id appears twice in one batch.
    app.apply(&[event.clone(), event.clone()]).await;
    assert_eq!(
        app.balances("ACC-DUP").await,
        vec![("2024-05-01".into(), 2_500)]
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM deposits")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    app.finish().await;
}

#[tokio::test]
async fn one_batch_gives_the_same_state_as_one_event_at_a_time() {
    let app = setup().await;
    // Out of order, several per day, two accounts; the batch account gets them in one call.
    let plan = [
        (300, "2024-06-05T08:00:00Z"),
        (100, "2024-06-01T08:00:00Z"),
        (40, "2024-06-05T09:00:00Z"),
        (7, "2024-06-03T23:59:59Z"),
        (1_000, "2024-06-02T00:00:00Z"),
        (5, "2024-06-07T00:00:01Z"),
        (60, "2024-06-01T23:00:00Z"),
    ];
    let batch: Vec<_> = plan.iter().map(|(a, t)| usd("ACC-BATCH", *a, t)).collect();
    app.apply(&batch).await;
    for (amount, t) in plan {
        app.apply(&[usd("ACC-SINGLE", amount, t)]).await;
    }
    let batched = app.balances("ACC-BATCH").await;
    assert_eq!(batched, app.balances("ACC-SINGLE").await);
    assert_eq!(
        batched,
        vec![
            ("2024-06-01".into(), 160),
            ("2024-06-02".into(), 1_160),
            ("2024-06-03".into(), 1_167),
            ("2024-06-05".into(), 1_507),
            ("2024-06-07".into(), 1_512),
        ]
    );
    assert_eq!(
        app.accruals("ACC-BATCH").await,
        app.accruals("ACC-SINGLE").await
    );
    assert_eq!(
        app.accruals("ACC-BATCH").await.len(),
        7,
        "dense from Jun 1 to Jun 7"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_deposit_in_another_currency_than_the_account_is_rejected() {
    let app = setup().await;
    app.apply(&[usd("ACC-CUR", 100, "2024-01-01T00:00:00Z")])
        .await;
    let result = app
        .try_apply(&[deposit("ACC-CUR", "EUR", 100, "2024-01-02T00:00:00Z")])
        .await;
    assert!(matches!(result, Err(HandlerError::Rejected(reason)) if reason.contains("EUR")));
    assert_eq!(
        app.balances("ACC-CUR").await,
        vec![("2024-01-01".into(), 100)]
    );
    app.finish().await;
}

//! Accrual through the handler and the API, with hand-computed numbers.
//!
//! Amounts are multiples of 365,000 minor so that a day's interest is a round number:
//! at 2.50 % (25,000 ppm) one day on 365,000 minor is 365,000 x 25,000 / 365 = 25,000,000
//! micro-minor = 25 minor exactly.

use crate::helpers::{deposit, setup, usd};

#[tokio::test]
async fn accruals_are_recomputed_from_a_backdated_day_forward() {
    let app = setup().await;
    let base = app.serve().await;
    // Jan 1: 365,000 -> 25 minor/day. Jan 4: +730,000 -> 1,095,000 -> 75 minor/day.
    app.apply(&[usd("ACC-ACC1", 365_000, "2024-01-01T10:00:00Z")])
        .await;
    app.apply(&[usd("ACC-ACC1", 730_000, "2024-01-04T10:00:00Z")])
        .await;
    let (status, _, body) = app
        .get(
            &base,
            "/interest/accounts/ACC-ACC1?from=2024-01-01&to=2024-01-05",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let micros: Vec<i64> = body["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["accrued_micro"].as_i64().unwrap())
        .collect();
    // Jan 5 is after the last deposit: projected from the Jan 4 closing balance.
    assert_eq!(
        micros,
        vec![25_000_000, 25_000_000, 25_000_000, 75_000_000, 75_000_000]
    );
    assert_eq!(body["total_accrued_micro"], 225_000_000); // 25 + 25 + 25 + 75 + 75 = 225 minor
    assert_eq!(body["total_accrued_minor"], 225);
    assert_eq!(body["total_accrued"], "2.25");
    assert_eq!(body["accrued_through"], "2024-01-04");
    assert_eq!(body["days"][0]["rate"], "2.50");
    assert_eq!(body["days"][3]["closing_balance_minor"], 1_095_000);

    // Act: a deposit dated Jan 2 of 365,000 arrives late.
    app.apply(&[usd("ACC-ACC1", 365_000, "2024-01-02T10:00:00Z")])
        .await;

    // Jan 2-3: 730,000 -> 50/day; Jan 4-5: 1,460,000 -> 100/day.
    // Total 25 + 50 + 50 + 100 + 100 = 325 minor.
    let (_, _, body) = app
        .get(
            &base,
            "/interest/accounts/ACC-ACC1?from=2024-01-01&to=2024-01-05",
        )
        .await;
    let micros: Vec<i64> = body["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["accrued_micro"].as_i64().unwrap())
        .collect();
    assert_eq!(
        micros,
        vec![25_000_000, 50_000_000, 50_000_000, 100_000_000, 100_000_000]
    );
    assert_eq!(body["total_accrued_minor"], 325);
    // The stored rows were rewritten from Jan 2 on (one row per day, no duplicates).
    assert_eq!(
        app.accruals("ACC-ACC1").await,
        vec![
            ("2024-01-01".into(), 365_000, "2.5000".into(), 25_000_000),
            ("2024-01-02".into(), 730_000, "2.5000".into(), 50_000_000),
            ("2024-01-03".into(), 730_000, "2.5000".into(), 50_000_000),
            ("2024-01-04".into(), 1_460_000, "2.5000".into(), 100_000_000),
        ]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_day_that_is_not_a_round_number_rounds_half_even_only_at_posting() {
    let app = setup().await;
    let base = app.serve().await;
    // 10,000.00 USD = 1,000,000 minor at 2.50 %: one day = 25,000,000,000 / 365
    // = 68,493,150.6849... micro -> shown as 68,493,151.
    // Three days exactly: 75,000,000,000 / 365 = 205,479,452.0547... micro -> 205,479,452
    // (not 3 x 68,493,151 = 205,479,453), posted as 205 minor (205.479452 rounds down).
    app.apply(&[usd("ACC-ODD", 1_000_000, "2024-07-01T00:00:00Z")])
        .await;
    let (_, _, body) = app
        .get(
            &base,
            "/interest/accounts/ACC-ODD?from=2024-07-01&to=2024-07-03",
        )
        .await;
    assert_eq!(body["days"][0]["accrued_micro"], 68_493_151);
    assert_eq!(body["days"].as_array().unwrap().len(), 3);
    assert_eq!(body["total_accrued_micro"], 205_479_452);
    assert_eq!(body["total_accrued_minor"], 205);
    assert_eq!(body["rounding"], "half-even");

    // EUR 1.75 %: 365,000 x 17,500 / 365 = 17,500,000 micro = 17.5 minor a day.
    // One day posts 18 (tie to even), two days 35, three days 52.5 -> 52 (tie to even).
    app.apply(&[deposit("ACC-EUR", "EUR", 365_000, "2024-07-01T12:00:00Z")])
        .await;
    for (to, expected) in [("2024-07-01", 18), ("2024-07-02", 35), ("2024-07-03", 52)] {
        let (_, _, body) = app
            .get(
                &base,
                &format!("/interest/accounts/ACC-EUR?from=2024-07-01&to={to}"),
            )
            .await;
        assert_eq!(body["total_accrued_minor"], expected, "to {to}: {body}");
        assert_eq!(body["days"][0]["rate"], "1.75");
    }
    // JPY has no rate row: it earns nothing.
    app.apply(&[deposit("ACC-JPY", "JPY", 1_000_000, "2024-07-01T12:00:00Z")])
        .await;
    let (_, _, body) = app
        .get(
            &base,
            "/interest/accounts/ACC-JPY?from=2024-07-01&to=2024-07-03",
        )
        .await;
    assert_eq!(body["total_accrued_micro"], 0);
    assert_eq!(body["days"][0]["rate"], "0.00");
    app.finish().await;
}

#[tokio::test]
async fn a_leap_year_february_accrues_one_more_day() {
    let app = setup().await;
    let base = app.serve().await;
    // GBP 3.00 %: 365,000 x 30,000 / 365 = 30,000,000 micro = 30 minor a day.
    app.apply(&[deposit("ACC-GBP24", "GBP", 365_000, "2024-02-28T00:00:00Z")])
        .await;
    app.apply(&[deposit("ACC-GBP23", "GBP", 365_000, "2023-02-28T00:00:00Z")])
        .await;
    // 2024: Feb 28, Feb 29, Mar 1 = 3 days = 90 minor. 2023: Feb 28, Mar 1 = 2 days = 60 minor.
    let (_, _, leap) = app
        .get(
            &base,
            "/interest/accounts/ACC-GBP24?from=2024-02-28&to=2024-03-01",
        )
        .await;
    let days: Vec<&str> = leap["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["day"].as_str().unwrap())
        .collect();
    assert_eq!(days, vec!["2024-02-28", "2024-02-29", "2024-03-01"]);
    assert_eq!(leap["total_accrued_minor"], 90);
    let (_, _, common) = app
        .get(
            &base,
            "/interest/accounts/ACC-GBP23?from=2023-02-28&to=2023-03-01",
        )
        .await;
    assert_eq!(common["days"].as_array().unwrap().len(), 2);
    assert_eq!(common["total_accrued_minor"], 60);
    // A whole leap year (366 days) on 365,000 at 3 % is 366 x 30 = 10,980 minor: Actual/365
    // pays 366/365 of the annual rate in a leap year.
    let (_, _, year) = app
        .get(
            &base,
            "/interest/accounts/ACC-GBP24?from=2024-02-28&to=2025-02-27",
        )
        .await;
    assert_eq!(year["days"].as_array().unwrap().len(), 366);
    assert_eq!(year["total_accrued_minor"], 10_980);
    app.finish().await;
}

#[tokio::test]
async fn each_day_keeps_the_rate_in_force_on_that_day() {
    let app = setup().await;
    let base = app.serve().await;
    // USD goes from 2.50 % to 5.00 % on Jan 3: 365,000 minor earns 25, then 50 minor a day.
    sqlx::query("INSERT INTO rates VALUES ('USD', DATE '2024-01-03', 5.0000)")
        .execute(&app.db.pool)
        .await
        .unwrap();
    app.apply(&[usd("ACC-RATE", 365_000, "2024-01-01T00:00:00Z")])
        .await;
    app.apply(&[usd("ACC-RATE", 1, "2024-01-04T00:00:00Z")])
        .await;
    let (_, _, body) = app
        .get(
            &base,
            "/interest/accounts/ACC-RATE?from=2024-01-01&to=2024-01-03",
        )
        .await;
    let rates: Vec<&str> = body["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["rate"].as_str().unwrap())
        .collect();
    assert_eq!(rates, vec!["2.50", "2.50", "5.00"]);
    assert_eq!(body["total_accrued_minor"], 100); // 25 + 25 + 50
    app.finish().await;
}

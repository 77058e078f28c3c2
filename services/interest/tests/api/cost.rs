//! What a batch costs, and that the cheap path computes what a full recalculation computes.
//!
//! Cost is measured inside the handler's own transaction with Postgres' per-transaction table
//! statistics: rows read (sequentially scanned rows plus index entries returned) and rows
//! written (inserted plus updated) in `daily_balances` and `daily_accruals`, their indexes
//! included. A statement that scanned an account's history, or the whole table, or rewrote
//! every later day, would show up in these numbers.

use crate::helpers::{TestApp, day, setup, usd};
use chrono::{NaiveDate, TimeDelta};
use eventbank_events::DepositCompleted;
use eventbank_runtime::consumer::Handler;
use interest::accrual::{AnnualRate, ClosingBalance, RateSchedule, accrue_days};
use interest::eod::accrue_through;
use interest::metrics::InterestMetrics;
use std::collections::BTreeMap;

/// Rows one batch read and wrote in the balance and accrual tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cost {
    read: i64,
    written: i64,
}

/// Rows read and written so far by this connection and not yet reported to the statistics
/// collector: it reports only between transactions, so a difference taken inside one
/// transaction counts that transaction's statements. For an index, "tuples returned" counts the
/// index entries its scans returned (index-only scans included); for a table, the rows its
/// sequential scans returned.
async fn pending(conn: &mut sqlx::PgConnection) -> Cost {
    let (read, written): (i64, i64) = sqlx::query_as(
        "SELECT sum(pg_stat_get_xact_tuples_returned(c.oid))::bigint, \
                sum(pg_stat_get_xact_tuples_inserted(c.oid) \
                    + pg_stat_get_xact_tuples_updated(c.oid))::bigint \
           FROM pg_class c \
          WHERE c.relname IN ('daily_balances', 'daily_balances_pkey', \
                              'daily_accruals', 'daily_accruals_pkey')",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    Cost { read, written }
}

/// Applies `events` in one transaction, planned as `plan_cache_mode` says, and returns what
/// the handler's statements read and wrote.
async fn measured(app: &TestApp, events: &[DepositCompleted], plan_cache_mode: &str) -> Cost {
    let mut tx = app.db.pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('plan_cache_mode', $1, true)")
        .bind(plan_cache_mode)
        .execute(&mut *tx)
        .await
        .unwrap();
    let before = pending(&mut tx).await;
    app.handler.handle(&mut tx, events).await.unwrap();
    let after = pending(&mut tx).await;
    tx.commit().await.unwrap();
    Cost {
        read: after.read - before.read,
        written: after.written - before.written,
    }
}

/// One deposit a day on each of `days` days ending on `last`.
fn history(account: &str, last: NaiveDate, days: i64) -> Vec<DepositCompleted> {
    (0..days)
        .map(|back| {
            let d = last - TimeDelta::days(back);
            usd(account, 1_000 + back, &format!("{d}T09:00:00Z"))
        })
        .collect()
}

#[tokio::test]
async fn a_deposit_on_the_latest_day_costs_the_same_whatever_the_history() {
    const LONG: i64 = 1_500;
    let app = setup().await;
    let latest = day("2024-06-30");
    // Same latest day, 1,500 days of history against 2; other accounts fill the table.
    let mut events = history("ACC-LONG", latest, LONG);
    events.extend(history("ACC-SHORT", latest, 2));
    for i in 0..50 {
        events.extend(history(&format!("ACC-FILL{i:02}"), latest, 20));
    }
    app.apply(&events).await;
    sqlx::query("ANALYZE daily_balances, daily_accruals")
        .execute(&app.db.pool)
        .await
        .unwrap();

    for mode in ["force_custom_plan", "force_generic_plan"] {
        // A second deposit on the latest day: that day's balance and accrual, rewritten.
        let long = measured(&app, &[usd("ACC-LONG", 7, "2024-06-30T18:00:00Z")], mode).await;
        let short = measured(&app, &[usd("ACC-SHORT", 7, "2024-06-30T18:00:00Z")], mode).await;
        assert_eq!(
            long, short,
            "{mode}: same-day deposit, long vs short history"
        );
        assert_eq!(long.written, 2, "{mode}: one balance row, one accrual row");
        assert!(long.read <= 10, "{mode}: same-day deposit read {long:?}");
    }

    // The first deposit of a new latest day: one new balance row, one new accrual row.
    for mode in ["force_custom_plan", "force_generic_plan"] {
        let next = if mode == "force_custom_plan" {
            "2024-07-01"
        } else {
            "2024-07-02"
        };
        let at = format!("{next}T08:00:00Z");
        let long = measured(&app, &[usd("ACC-LONG", 5, &at)], mode).await;
        let short = measured(&app, &[usd("ACC-SHORT", 5, &at)], mode).await;
        assert_eq!(
            long, short,
            "{mode}: next-day deposit, long vs short history"
        );
        assert_eq!(
            long.written, 2,
            "{mode}: one new balance row, one new accrual row"
        );
        assert!(long.read <= 10, "{mode}: next-day deposit read {long:?}");
    }

    // The measure sees the days that follow: a deposit 1,000 days back rewrites them all.
    let back = latest - TimeDelta::days(1_000);
    let backdated = measured(
        &app,
        &[usd("ACC-LONG", 3, &format!("{back}T08:00:00Z"))],
        "force_generic_plan",
    )
    .await;
    assert!(backdated.written > 2_000, "{backdated:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_deposit_on_the_day_the_end_of_day_job_reached_recomputes_that_day_only() {
    let app = setup().await;
    app.apply(&history("ACC-EODL", day("2024-06-01"), 400))
        .await;
    app.apply(&history("ACC-EODS", day("2024-06-01"), 2)).await;
    // The job stores every day up to Jun 10, past both accounts' last deposit.
    accrue_through(
        &app.db.pool,
        &InterestMetrics::default(),
        day("2024-06-10"),
        || false,
    )
    .await
    .unwrap();
    let long = measured(
        &app,
        &[usd("ACC-EODL", 9, "2024-06-10T12:00:00Z")],
        "force_generic_plan",
    )
    .await;
    let short = measured(
        &app,
        &[usd("ACC-EODS", 9, "2024-06-10T12:00:00Z")],
        "force_generic_plan",
    )
    .await;
    assert_eq!(long, short);
    // A new balance row for Jun 10 and its accrual rewritten (inserted + updated).
    assert_eq!(long.written, 2, "{long:?}");
    assert!(long.read <= 10, "{long:?}");
    app.finish().await;
}

/// Every balance and accrual recomputed from nothing: the closing balance of each deposit day
/// from all the deposits, and every day's accrual from the first business day to `through`
/// with the whole rate schedule. Rows as (day, balance) and (day, balance, rate ppm, micro).
async fn full_recalculation(
    app: &TestApp,
    account: &str,
    through: NaiveDate,
) -> (Vec<(NaiveDate, i64)>, Vec<(NaiveDate, i64, i64, i64)>) {
    let deposits: Vec<(NaiveDate, i64)> = sqlx::query_as(
        "SELECT business_day, amount_minor FROM deposits WHERE account_id = $1 ORDER BY 1",
    )
    .bind(account)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let mut per_day: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    for (d, amount) in deposits {
        *per_day.entry(d).or_default() += amount;
    }
    let mut running = 0;
    let balances: Vec<(NaiveDate, i64)> = per_day
        .into_iter()
        .map(|(d, amount)| {
            running += amount;
            (d, running)
        })
        .collect();
    let rates: Vec<(NaiveDate, i64)> = sqlx::query_as(
        "SELECT effective_from, (annual_rate_percent * 10000)::bigint FROM rates \
          WHERE currency = 'USD'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let schedule = RateSchedule::new(
        rates
            .into_iter()
            .map(|(d, ppm)| (d, AnnualRate::from_ppm(ppm).unwrap()))
            .collect(),
    );
    let closing: Vec<ClosingBalance> = balances
        .iter()
        .map(|&(day, balance_minor)| ClosingBalance { day, balance_minor })
        .collect();
    let accruals = accrue_days(&closing, &schedule, balances[0].0, through)
        .into_iter()
        .map(|a| {
            let micro = i64::try_from(a.interest.micro()).unwrap();
            (a.day, a.balance_minor, a.rate.ppm(), micro)
        })
        .collect();
    (balances, accruals)
}

/// The stored rows, in the shape of [`full_recalculation`].
async fn stored(
    app: &TestApp,
    account: &str,
) -> (Vec<(NaiveDate, i64)>, Vec<(NaiveDate, i64, i64, i64)>) {
    let balances = sqlx::query_as(
        "SELECT day, closing_balance_minor FROM daily_balances WHERE account_id = $1 ORDER BY 1",
    )
    .bind(account)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let accruals = sqlx::query_as(
        "SELECT day, balance_minor, (annual_rate_percent * 10000)::bigint, accrued_micro \
           FROM daily_accruals WHERE account_id = $1 ORDER BY 1",
    )
    .bind(account)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    (balances, accruals)
}

/// Each account's stored balances and accruals equal a full recalculation up to its last
/// stored accrual day.
async fn check(app: &TestApp, step: &str, accounts: &[&str]) {
    for account in accounts {
        let got = stored(app, account).await;
        let through = got.1.last().unwrap().0;
        let want = full_recalculation(app, account, through).await;
        assert_eq!(got, want, "{step}: {account}");
    }
}

#[tokio::test]
async fn same_day_and_backdated_deposits_store_what_a_full_recalculation_computes() {
    let app = setup().await;
    // A rate change inside the history: the cheap path reads only the rates in force from its
    // first day on, and must still accrue every day at that day's rate.
    sqlx::query("INSERT INTO rates VALUES ('USD', DATE '2024-03-10', 4.1234)")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let metrics = InterestMetrics::default();
    let accounts = ["ACC-EQ1", "ACC-EQ2"];

    // History, then the job up to Mar 5.
    app.apply(&[
        usd("ACC-EQ1", 365_001, "2024-02-20T10:00:00Z"),
        usd("ACC-EQ1", 12_345, "2024-02-27T23:59:59Z"),
        usd("ACC-EQ2", 99_999, "2024-03-01T00:00:00Z"),
    ])
    .await;
    accrue_through(&app.db.pool, &metrics, day("2024-03-05"), || false)
        .await
        .unwrap();
    check(&app, "history", &accounts).await;

    // Same-day deposits, one batch each and two in one batch, on the job's last day, then on
    // the days after it, across the rate change.
    for (i, at) in [
        "2024-03-05T08:00:00Z",
        "2024-03-05T09:00:00Z",
        "2024-03-08T10:00:00Z",
        "2024-03-08T11:00:00Z",
        "2024-03-11T00:00:00Z",
        "2024-03-11T23:59:59Z",
    ]
    .into_iter()
    .enumerate()
    {
        let amount = 1_001 + i64::try_from(i).unwrap() * 7_919;
        app.apply(&[usd("ACC-EQ1", amount, at)]).await;
        if i % 2 == 0 {
            app.apply(&[usd("ACC-EQ2", amount * 3, at), usd("ACC-EQ2", 1, at)])
                .await;
        }
        check(&app, &format!("same-day {at}"), &accounts).await;
    }

    // A back-dated deposit after the same-day ones (before the rate change), and one in the
    // same batch as a same-day deposit of another account.
    app.apply(&[usd("ACC-EQ1", 50_000, "2024-02-22T12:00:00Z")])
        .await;
    check(&app, "back-dated", &accounts).await;
    app.apply(&[
        usd("ACC-EQ2", 4_321, "2024-02-29T12:00:00Z"),
        usd("ACC-EQ1", 17, "2024-03-11T13:00:00Z"),
    ])
    .await;
    check(&app, "back-dated with same-day", &accounts).await;

    // The job past the last deposits, then a same-day deposit on its last day.
    accrue_through(&app.db.pool, &metrics, day("2024-03-20"), || false)
        .await
        .unwrap();
    app.apply(&[usd("ACC-EQ1", 3, "2024-03-20T20:00:00Z")])
        .await;
    check(&app, "after the job", &accounts).await;
    assert_eq!(
        stored(&app, "ACC-EQ2").await.1.last().unwrap().0,
        day("2024-03-20")
    );
    app.finish().await;
}

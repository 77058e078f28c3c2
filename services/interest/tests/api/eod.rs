//! The end-of-day job: stores the accrual of ended days without deposits, once per
//! (account, day), and runs on its interval until shutdown.

use crate::helpers::{day, deposit, setup, usd};
use chrono::{TimeDelta, Utc};
use eventbank_runtime::Shutdown;
use interest::eod::{EndOfDay, EodOutcome, accrue_through};
use interest::metrics::InterestMetrics;
use std::time::Duration;

#[tokio::test]
async fn the_job_stores_every_ended_day_once_and_a_backdated_deposit_rewrites_them() {
    let app = setup().await;
    let base = app.serve().await;
    // 365,000 USD minor at 2.50 % = 25,000,000 micro a day; 365,000 EUR at 1.75 % = 17,500,000.
    app.apply(&[
        usd("ACC-E1", 365_000, "2024-01-01T10:00:00Z"),
        deposit("ACC-E2", "EUR", 365_000, "2024-01-08T10:00:00Z"),
    ])
    .await;
    // The handler stored each account's deposit day only.
    assert_eq!(app.accruals("ACC-E1").await.len(), 1);
    assert_eq!(app.accruals("ACC-E2").await.len(), 1);

    let metrics = InterestMetrics::default();
    let outcome = accrue_through(&app.db.pool, &metrics, day("2024-01-10"), || false)
        .await
        .unwrap();
    // ACC-E1: Jan 2..10 (9 days); ACC-E2: Jan 9..10 (2 days).
    assert_eq!(
        outcome,
        EodOutcome {
            accounts: 2,
            days: 11
        }
    );
    assert_eq!(metrics.eod_days_accrued.get(), 11);
    let e1 = app.accruals("ACC-E1").await;
    assert_eq!(e1.len(), 10);
    assert_eq!(e1.first().unwrap().0, "2024-01-01");
    assert_eq!(e1.last().unwrap().0, "2024-01-10");
    assert!(
        e1.iter().all(|r| r.1 == 365_000 && r.3 == 25_000_000),
        "{e1:?}"
    );
    let e2 = app.accruals("ACC-E2").await;
    assert_eq!(
        e2,
        vec![
            ("2024-01-08".into(), 365_000, "1.7500".into(), 17_500_000),
            ("2024-01-09".into(), 365_000, "1.7500".into(), 17_500_000),
            ("2024-01-10".into(), 365_000, "1.7500".into(), 17_500_000),
        ]
    );

    // Idempotent: a second run (a restart, a second replica) finds nothing to do.
    let again = accrue_through(&app.db.pool, &metrics, day("2024-01-10"), || false)
        .await
        .unwrap();
    assert_eq!(again, EodOutcome::default());
    assert_eq!(app.accruals("ACC-E1").await, e1);

    // A deposit dated Jan 5 arrives after the job stored Jan 5..10: those days are rewritten
    // (730,000 -> 50,000,000 a day), the earlier ones stay.
    app.apply(&[usd("ACC-E1", 365_000, "2024-01-05T09:00:00Z")])
        .await;
    let e1 = app.accruals("ACC-E1").await;
    assert_eq!(e1.len(), 10);
    let micros: Vec<i64> = e1.iter().map(|r| r.3).collect();
    assert_eq!(
        micros,
        [vec![25_000_000; 4], vec![50_000_000; 6]].concat(),
        "{e1:?}"
    );
    let (_, _, body) = app
        .get(
            &base,
            "/interest/accounts/ACC-E1?from=2024-01-01&to=2024-01-10",
        )
        .await;
    assert_eq!(body["accrued_through"], "2024-01-10");
    // 4 x 25 + 6 x 50 = 400 minor.
    assert_eq!(body["total_accrued_minor"], 400);
    app.finish().await;
}

#[tokio::test]
async fn the_job_pages_through_many_accounts() {
    let app = setup().await;
    let events: Vec<_> = (0..250)
        .map(|i| usd(&format!("ACC-P{i:03}"), 1_000, "2024-02-01T00:00:00Z"))
        .collect();
    app.apply(&events).await;
    let outcome = accrue_through(
        &app.db.pool,
        &InterestMetrics::default(),
        day("2024-02-03"),
        || false,
    )
    .await
    .unwrap();
    assert_eq!(
        outcome,
        EodOutcome {
            accounts: 250,
            days: 500
        }
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM daily_accruals")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 750);
    app.finish().await;
}

#[tokio::test]
async fn the_job_runs_at_start_and_on_its_interval_until_shutdown() {
    let app = setup().await;
    let now = Utc::now();
    let three_days_ago = (now - TimeDelta::days(3)).to_rfc3339();
    app.apply(&[usd("ACC-TICK1", 365_000, &three_days_ago)])
        .await;

    let shutdown = Shutdown::new();
    let job = EndOfDay {
        pool: app.db.pool.clone(),
        metrics: InterestMetrics::default(),
        interval: Duration::from_millis(100),
    };
    let task = tokio::spawn(job.run(shutdown.clone()));

    // The first run stores the two ended days after the deposit: up to yesterday, not today.
    let yesterday = || (Utc::now() - TimeDelta::days(1)).date_naive().to_string();
    wait_for_last_day(&app, "ACC-TICK1", &yesterday).await;
    assert_eq!(app.accruals("ACC-TICK1").await.len(), 3);

    // A new account appears while the job runs: a later tick catches it up.
    let two_days_ago = (Utc::now() - TimeDelta::days(2)).to_rfc3339();
    app.apply(&[usd("ACC-TICK2", 365_000, &two_days_ago)]).await;
    wait_for_last_day(&app, "ACC-TICK2", &yesterday).await;
    assert_eq!(app.accruals("ACC-TICK2").await.len(), 2);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the job stops on shutdown")
        .unwrap();
    app.finish().await;
}

/// Polls (with a deadline) until the account's last stored accrual day is `expected()`.
async fn wait_for_last_day(
    app: &crate::helpers::TestApp,
    account: &str,
    expected: &dyn Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let last = app.accruals(account).await.last().map(|r| r.0.clone());
        if last.as_deref() == Some(expected().as_str()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{account}: accruals end at {last:?}, expected {}",
            expected()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

//! The structuring rule's in-order path: deposits in time order give the alerts of the full
//! walk, without reading the account's history; late ones rewrite the running totals.

use crate::helpers::{TestApp, at, setup, shuffled, usd};
use chrono::{DateTime, TimeDelta, Utc};
use compliance::rules::{Deposit, Rules};
use eventbank_events::{Currency, DepositCompleted};
use eventbank_runtime::consumer::Handler;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// A small deterministic generator (xorshift64*): the tests replay the same sequences.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Random deposits of two accounts in three currencies: amounts mostly under the threshold,
/// some at or over it; instants on a 4 h grid (six steps are exactly 24 h) so that windows
/// often end exactly 24 h after a deposit and several deposits share an instant, some a
/// microsecond off the grid.
fn random_deposits(seed: u64, n: usize) -> Vec<DepositCompleted> {
    let mut rng = Rng(seed | 1);
    let base = at("2024-01-01T00:00:00Z");
    let currencies = ["USD", "EUR", "JPY"];
    (0..n)
        .map(|i| {
            let account = if rng.below(3) == 0 {
                "ACC-P2"
            } else {
                "ACC-P1"
            };
            let amount = match rng.below(10) {
                0 => 1_000_000 + i64::try_from(rng.below(500_000)).unwrap(),
                1 => 999_999,
                _ => 1 + i64::try_from(rng.below(700_000)).unwrap(),
            };
            let slot = i64::try_from(rng.below(30)).unwrap();
            let micro = i64::try_from(rng.below(4) / 3).unwrap();
            let mut e = usd(
                account,
                amount,
                base + TimeDelta::hours(4 * slot) + TimeDelta::microseconds(micro),
            );
            e.currency = Currency::parse(currencies[rng.below(3) as usize]).unwrap();
            e.sequence = i64::try_from(i).unwrap() + 1;
            e
        })
        .collect()
}

type AlertFields = (
    String,
    String,
    Uuid,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    Vec<Uuid>,
);

/// The full walk over every deposit of each account and currency (what the rule means).
fn full_walk(events: &[DepositCompleted]) -> BTreeSet<AlertFields> {
    let rules = Rules::default();
    let mut scopes: BTreeMap<(String, String), Vec<Deposit>> = BTreeMap::new();
    for e in events {
        scopes
            .entry((e.account_id.to_string(), e.currency.code().to_owned()))
            .or_default()
            .push(Deposit {
                event_id: e.event_id,
                amount_minor: e.amount_minor,
                currency: e.currency.code().to_owned(),
                occurred_at: e.occurred_at,
            });
    }
    let mut out = BTreeSet::new();
    for ((account, currency), deposits) in scopes {
        for s in rules.structuring_from(&deposits, DateTime::<Utc>::MIN_UTC, None) {
            out.insert((
                account.clone(),
                currency.clone(),
                s.event_id,
                s.total_minor,
                s.window.start,
                s.window.end,
                s.event_ids,
            ));
        }
    }
    out
}

impl TestApp {
    async fn active_structuring(&self) -> BTreeSet<AlertFields> {
        type Row = (
            String,
            String,
            Uuid,
            i64,
            DateTime<Utc>,
            DateTime<Utc>,
            serde_json::Value,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT account_id, currency, event_id, amount_minor, window_start, window_end, \
                        details->'event_ids' \
                   FROM alerts WHERE kind = 'structuring' AND superseded_at IS NULL",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(a, c, e, amount, start, end, ids)| {
                (
                    a,
                    c,
                    e,
                    amount,
                    start,
                    end,
                    serde_json::from_value(ids).unwrap(),
                )
            })
            .collect()
    }

    /// Per account, currency and instant: the largest running total there (the one windows
    /// use), and the rolling state of each account and currency.
    #[allow(clippy::type_complexity)]
    async fn running_totals(
        &self,
    ) -> (
        BTreeSet<(String, String, DateTime<Utc>, String)>,
        BTreeSet<(String, String, i64, Option<DateTime<Utc>>, String)>,
    ) {
        let totals: Vec<(String, String, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT account_id, currency, occurred_at, max(cum_minor)::text FROM deposits \
              WHERE cum_minor IS NOT NULL GROUP BY account_id, currency, occurred_at",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        let scopes: Vec<(String, String, i64, Option<DateTime<Utc>>, String)> = sqlx::query_as(
            "SELECT account_id, currency, threshold_minor, last_at, cum_minor::text \
               FROM structuring_scopes",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        (totals.into_iter().collect(), scopes.into_iter().collect())
    }

    /// Applies `events` in one transaction and answers how many tuples the handler read from
    /// the deposits table and its indexes, from Postgres's own counters. Those count since
    /// the connection last reported (not since the transaction began), and a connection
    /// reports only between transactions, so the handler's part is the difference of two
    /// readings inside its transaction.
    /// `plan_cache_mode` is Postgres's: `auto`, or `force_generic_plan` for the plans a
    /// prepared statement gets after a few executions.
    async fn apply_counting_deposit_reads(
        &self,
        events: &[DepositCompleted],
        plan_cache_mode: &str,
    ) -> i64 {
        const READ: &str = "SELECT sum(pg_stat_get_xact_tuples_returned(c.oid))::bigint \
                              FROM pg_class c \
                             WHERE c.oid = 'deposits'::regclass \
                                OR c.oid IN (SELECT indexrelid FROM pg_index \
                                              WHERE indrelid = 'deposits'::regclass)";
        let mut tx = self.db.pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('plan_cache_mode', $1, true)")
            .bind(plan_cache_mode)
            .execute(&mut *tx)
            .await
            .unwrap();
        let before: i64 = sqlx::query_scalar(READ).fetch_one(&mut *tx).await.unwrap();
        self.handler.handle(&mut tx, events).await.unwrap();
        let after: i64 = sqlx::query_scalar(READ).fetch_one(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        after - before
    }
}

/// Deposits applied in time order, in batches of one to five, give the active alerts of the
/// full walk over all deposits, field for field (window, total, the deposits named).
#[tokio::test]
async fn deposits_in_time_order_give_the_alerts_of_the_full_walk() {
    for seed in [1_u64, 2, 3, 5, 8, 13] {
        let app = setup().await;
        let mut events = random_deposits(seed, 60);
        events.sort_by_key(|e| e.occurred_at);
        let mut rest = events.as_slice();
        let mut size = seed as usize;
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at((size % 5 + 1).min(rest.len()));
            app.apply(batch).await;
            rest = tail;
            size += 3;
        }
        let expected = full_walk(&events);
        assert!(!expected.is_empty(), "seed {seed} raises something");
        assert_eq!(app.active_structuring().await, expected, "seed {seed}");
        app.finish().await;
    }
}

/// Shuffled delivery (late deposits rewrite the running totals after them) ends with the
/// running totals, rolling state and alerts of delivery in time order.
#[tokio::test]
async fn late_deposits_leave_the_running_totals_of_time_order() {
    for seed in [21_u64, 34] {
        let events = random_deposits(seed, 50);
        let mut in_time = events.clone();
        in_time.sort_by_key(|e| e.occurred_at);
        let clean = setup().await;
        for batch in in_time.chunks(4) {
            clean.apply(batch).await;
        }
        let messy = setup().await;
        for batch in shuffled(&events, seed).chunks(3) {
            messy.apply(batch).await;
        }
        assert_eq!(messy.running_totals().await, clean.running_totals().await);
        assert_eq!(messy.active_structuring().await, full_walk(&events));
        assert_eq!(clean.active_structuring().await, full_walk(&events));
        clean.finish().await;
        messy.finish().await;
    }
}

/// An in-order deposit reads a bounded number of deposit rows, however long the account's
/// history: 300 or 600 earlier deposits (one every 5 minutes, 288 of them inside its window)
/// cost the same. A late one walks the window's deposits (the recompute path), which the
/// same counter sees.
#[tokio::test]
async fn an_in_order_deposit_does_not_read_the_accounts_history() {
    let app = setup().await;
    let start = at("2024-01-01T00:00:00Z");
    let every = |i: i64| start + TimeDelta::minutes(5 * i);
    let history = |from: i64, to: i64| -> Vec<DepositCompleted> {
        (from..to)
            .map(|i| usd("ACC-HOT", 1_000, every(i)))
            .collect()
    };
    for batch in history(0, 300).chunks(50) {
        app.apply(batch).await;
    }
    let after_300 = app
        .apply_counting_deposit_reads(&[usd("ACC-HOT", 1_000, every(300))], "auto")
        .await;
    for batch in history(301, 600).chunks(50) {
        app.apply(batch).await;
    }
    let after_600 = app
        .apply_counting_deposit_reads(&[usd("ACC-HOT", 1_000, every(600))], "auto")
        .await;
    let generic = app
        .apply_counting_deposit_reads(&[usd("ACC-HOT", 1_000, every(601))], "force_generic_plan")
        .await;
    assert!(
        after_300 <= 4 && after_600 <= 4 && generic <= 4,
        "in-order deposit read {after_300}, {after_600} and (generic plans) {generic} deposit rows"
    );
    // The same account's deposit an hour late: the recompute path reads its windows.
    let late = app
        .apply_counting_deposit_reads(
            &[usd("ACC-HOT", 1_000, every(588) + TimeDelta::seconds(1))],
            "auto",
        )
        .await;
    assert!(late > 288, "the late deposit read only {late} deposit rows");
    assert!(app.alerts().await.is_empty());
    app.finish().await;
}

/// A database that recorded deposits before the running totals existed gets them from the
/// migration (for the default threshold), and its next in-order deposit alerts on the whole
/// window; a service configured with another threshold recomputes them on first sight.
#[tokio::test]
async fn deposits_recorded_before_the_migration_get_running_totals() {
    let before: Vec<_> = compliance::MIGRATOR
        .iter()
        .filter(|m| m.version < 3)
        .cloned()
        .collect();
    let old = sqlx::migrate::Migrator::with_migrations(before);
    let app = TestApp {
        db: eventbank_runtime::testing::TestDatabase::create("compliance", &old)
            .await
            .unwrap(),
        handler: compliance::ComplianceHandler::default(),
    };
    let start = at("2024-01-01T00:00:00Z");
    // Five 1,500.00 deposits and a CTR in one day, recorded by the old schema: no alert yet.
    let recorded: Vec<DepositCompleted> = (0..5)
        .map(|i| usd("ACC-OLD", 150_000, start + TimeDelta::hours(i)))
        .chain([usd("ACC-OLD", 2_000_000, start + TimeDelta::hours(5))])
        .collect();
    for e in &recorded {
        sqlx::query(
            "INSERT INTO deposits (event_id, deposit_id, account_id, amount_minor, currency, \
                                   occurred_at) VALUES ($1, $2, $3, $4, 'USD', $5)",
        )
        .bind(e.event_id)
        .bind(e.deposit_id)
        .bind(e.account_id.as_str())
        .bind(e.amount_minor)
        .bind(e.occurred_at)
        .execute(&app.db.pool)
        .await
        .unwrap();
    }
    compliance::MIGRATOR.run(&app.db.pool).await.unwrap();
    let (totals, scopes) = app.running_totals().await;
    assert_eq!(totals.len(), 5);
    assert_eq!(
        scopes.into_iter().collect::<Vec<_>>(),
        vec![(
            "ACC-OLD".into(),
            "USD".into(),
            1_000_000,
            Some(start + TimeDelta::hours(4)),
            "750000".into()
        )]
    );

    // In order: 750,000 + 300,000 reach the threshold, the alert names all six deposits.
    let next = usd("ACC-OLD", 300_000, start + TimeDelta::hours(6));
    app.apply(std::slice::from_ref(&next)).await;
    let mut all = recorded.clone();
    all.push(next);
    let expected = full_walk(&all);
    assert_eq!(expected.len(), 1);
    assert_eq!(app.active_structuring().await, expected);

    // The same database under a 2,000.00 threshold: the 3,000.00 deposit no longer counts,
    // and the running totals are recomputed without it.
    let rules = Rules {
        ctr_threshold_minor: 200_000,
        ..Rules::default()
    };
    let strict = TestApp {
        db: app.db,
        handler: compliance::ComplianceHandler::new(rules, Default::default()),
    };
    strict
        .apply(&[usd("ACC-OLD", 100, start + TimeDelta::hours(7))])
        .await;
    let (_, scopes) = strict.running_totals().await;
    assert_eq!(
        scopes.into_iter().collect::<Vec<_>>(),
        vec![(
            "ACC-OLD".into(),
            "USD".into(),
            200_000,
            Some(start + TimeDelta::hours(7)),
            "750100".into()
        )]
    );
    strict.finish().await;
}

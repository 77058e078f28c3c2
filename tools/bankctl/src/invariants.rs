//! The system's invariants (DESIGN §6), checked from each service's own database:
//! - for every account: accepted deposits = account balance = interest's balance copy;
//! - one account transaction, one email and one audit entry per deposit;
//! - no event applied twice in any service (effects are unique per event id);
//! - every consumer processed every event; the outbox is fully published;
//! - the audit chain verifies.
//!
//! A check reads; it never waits. Poll it until `ok()` when the system is still settling.

use crate::Pools;
use anyhow::Result;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub deposits: i64,
    pub accounts: usize,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deposits over {} accounts",
            self.deposits, self.accounts
        )?;
        if self.violations.is_empty() {
            return write!(f, ": all invariants hold");
        }
        write!(f, ": {} violations:", self.violations.len())?;
        for v in &self.violations {
            write!(f, "\n  - {v}")?;
        }
        Ok(())
    }
}

async fn per_account(pool: &PgPool, sql: &'static str) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

async fn scalar(pool: &PgPool, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

fn compare(
    report: &mut Report,
    what: &str,
    expected: &BTreeMap<String, i64>,
    actual: &BTreeMap<String, i64>,
) {
    for (account, want) in expected {
        let got = actual.get(account).copied().unwrap_or(0);
        if got != *want {
            report
                .violations
                .push(format!("{account}: {what} is {got}, expected {want}"));
        }
    }
    for (account, got) in actual {
        if !expected.contains_key(account) && *got != 0 {
            report.violations.push(format!(
                "{account}: {what} is {got} for an account with no accepted deposit"
            ));
        }
    }
}

/// Checks every invariant once.
pub async fn check(pools: &Pools) -> Result<Report> {
    let sums = per_account(
        &pools.deposit,
        "SELECT account_id, sum(amount_minor)::bigint FROM deposits GROUP BY account_id",
    )
    .await?;
    let counts = per_account(
        &pools.deposit,
        "SELECT account_id, count(*) FROM deposits GROUP BY account_id",
    )
    .await?;
    let total = scalar(&pools.deposit, "SELECT count(*) FROM deposits").await?;
    let mut report = Report {
        deposits: total,
        accounts: sums.len(),
        violations: Vec::new(),
    };

    let unpublished = scalar(
        &pools.deposit,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
    )
    .await?;
    if unpublished != 0 {
        report
            .violations
            .push(format!("outbox: {unpublished} rows not published"));
    }

    let balances = per_account(
        &pools.account,
        "SELECT account_id, balance_minor FROM balances",
    )
    .await?;
    compare(&mut report, "account balance", &sums, &balances);
    let txns = per_account(
        &pools.account,
        "SELECT account_id, count(*) FROM transactions GROUP BY account_id",
    )
    .await?;
    compare(&mut report, "account transactions", &counts, &txns);

    let interest = per_account(
        &pools.interest,
        "SELECT DISTINCT ON (account_id) account_id, closing_balance_minor FROM daily_balances ORDER BY account_id, day DESC",
    )
    .await?;
    compare(&mut report, "interest balance copy", &sums, &interest);

    let emails = per_account(
        &pools.email,
        "SELECT account_id, count(*) FROM emails GROUP BY account_id",
    )
    .await?;
    compare(&mut report, "emails", &counts, &emails);

    let audit = per_account(
        &pools.compliance,
        "SELECT account_id, count(*) FROM audit_log GROUP BY account_id",
    )
    .await?;
    compare(&mut report, "audit entries", &counts, &audit);

    // Effects unique per event: a second application would show up as a repeated event id.
    let unique_effects: [(&str, &PgPool, &'static str); 4] = [
        (
            "account transactions",
            &pools.account,
            "SELECT count(*) - count(DISTINCT event_id) FROM transactions",
        ),
        (
            "emails",
            &pools.email,
            "SELECT count(*) - count(DISTINCT event_id) FROM emails",
        ),
        (
            "interest deposits",
            &pools.interest,
            "SELECT count(*) - count(DISTINCT event_id) FROM deposits",
        ),
        (
            "audit entries",
            &pools.compliance,
            "SELECT count(*) - count(DISTINCT event_id) FROM audit_log",
        ),
    ];
    for (what, pool, sql) in unique_effects {
        let repeated = scalar(pool, sql).await?;
        if repeated != 0 {
            report
                .violations
                .push(format!("{what}: {repeated} events applied more than once"));
        }
    }

    for (svc, pool) in [
        ("account", &pools.account),
        ("email", &pools.email),
        ("interest", &pools.interest),
        ("compliance", &pools.compliance),
    ] {
        let processed = scalar(pool, "SELECT count(*) FROM processed_events").await?;
        if processed != total {
            report.violations.push(format!(
                "{svc}: {processed} events processed, expected {total}"
            ));
        }
    }

    match compliance::store::verify_snapshot(&pools.compliance).await? {
        compliance::store::Verification::Intact { .. } => {}
        broken => report
            .violations
            .push(format!("audit chain broken: {broken:?}")),
    }
    Ok(report)
}

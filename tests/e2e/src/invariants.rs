//! The system's invariants (DESIGN §6), checked from each service's own database:
//! for every account, accepted deposits = account balance = interest's balance copy; one
//! email, one audit entry and one dedup row per deposit in each consumer; the outbox fully
//! published. Returns a report that lists every violation, so a failing test says what broke.

use crate::svc::Svc;
use crate::world::TestWorld;
use anyhow::Result;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
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
            write!(f, ": all invariants hold")
        } else {
            write!(f, ": {} violations:", self.violations.len())?;
            for v in &self.violations {
                write!(f, "\n  - {v}")?;
            }
            Ok(())
        }
    }
}

async fn per_account(pool: &sqlx::PgPool, sql: &'static str) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

async fn scalar(pool: &sqlx::PgPool, sql: &'static str) -> Result<i64> {
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

/// Checks every invariant once (no waiting); poll it with `eventually` until `ok()`.
pub async fn check(world: &TestWorld) -> Result<Report> {
    let deposit = world.pool(Svc::Deposit).await?;
    let account = world.pool(Svc::Account).await?;
    let email = world.pool(Svc::Email).await?;
    let interest = world.pool(Svc::Interest).await?;
    let compliance = world.pool(Svc::Compliance).await?;

    let sums = per_account(
        &deposit,
        "SELECT account_id, sum(amount_minor)::bigint FROM deposits GROUP BY account_id",
    )
    .await?;
    let counts = per_account(
        &deposit,
        "SELECT account_id, count(*) FROM deposits GROUP BY account_id",
    )
    .await?;
    let total = scalar(&deposit, "SELECT count(*) FROM deposits").await?;
    let mut report = Report {
        deposits: total,
        accounts: sums.len(),
        violations: Vec::new(),
    };

    let unpublished = scalar(
        &deposit,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
    )
    .await?;
    if unpublished != 0 {
        report
            .violations
            .push(format!("outbox: {unpublished} rows not published"));
    }

    let balances = per_account(&account, "SELECT account_id, balance_minor FROM balances").await?;
    compare(&mut report, "account balance", &sums, &balances);
    let account_txns = per_account(
        &account,
        "SELECT account_id, count(*) FROM transactions GROUP BY account_id",
    )
    .await?;
    compare(&mut report, "account transactions", &counts, &account_txns);

    let interest_balances = per_account(
        &interest,
        "SELECT DISTINCT ON (account_id) account_id, closing_balance_minor FROM daily_balances ORDER BY account_id, day DESC",
    )
    .await?;
    compare(
        &mut report,
        "interest balance copy",
        &sums,
        &interest_balances,
    );

    let emails = per_account(
        &email,
        "SELECT account_id, count(*) FROM emails GROUP BY account_id",
    )
    .await?;
    compare(&mut report, "emails", &counts, &emails);

    let audit = per_account(
        &compliance,
        "SELECT account_id, count(*) FROM audit_log GROUP BY account_id",
    )
    .await?;
    compare(&mut report, "audit entries", &counts, &audit);

    for (svc, pool) in [
        ("account", &account),
        ("email", &email),
        ("interest", &interest),
        ("compliance", &compliance),
    ] {
        let processed = scalar(pool, "SELECT count(*) FROM processed_events").await?;
        if processed != total {
            report.violations.push(format!(
                "{svc}: {processed} processed events, expected {total}"
            ));
        }
    }
    Ok(report)
}

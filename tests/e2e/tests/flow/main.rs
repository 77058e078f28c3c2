//! End-to-end tests: the five real binaries, real Postgres, real RabbitMQ, one namespace each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker_outage;
mod consumer_crash;
mod duplicates;
mod happy_path;
mod poison;

use anyhow::{Context, Result, ensure};
use eventbank_e2e::{Services, TestWorld, eventually, invariants, post_json};
use serde_json::{Value, json};
use std::time::Duration;

pub const SETTLE: Duration = Duration::from_secs(60);

/// Opens an account through the deposit API and returns its id.
pub async fn open_account(services: &Services, name: &str, currency: &str) -> Result<String> {
    let body = json!({"holder_name": name, "email": format!("{}@example.com", name.to_lowercase().replace(' ', ".")), "currency": currency});
    let account = post_json(&services.deposit.url("/accounts"), &body, &[])
        .await?
        .require(201)?;
    Ok(account["account_id"]
        .as_str()
        .context("account_id")?
        .to_owned())
}

/// POSTs a deposit and returns the 201 body.
pub async fn deposit(
    services: &Services,
    account_id: &str,
    amount: &str,
    currency: &str,
) -> Result<Value> {
    let body = json!({"account_id": account_id, "amount": amount, "currency": currency});
    post_json(&services.deposit.url("/deposits"), &body, &[])
        .await?
        .require(201)
}

/// Waits until every invariant holds and `expected` deposits exist; fails with the report.
pub async fn settle(world: &TestWorld, expected: i64) -> Result<invariants::Report> {
    eventually(SETTLE, || async {
        let report = invariants::check(world).await?;
        ensure!(
            report.deposits == expected,
            "{} deposits stored, expected {expected}",
            report.deposits
        );
        ensure!(report.ok(), "{report}");
        Ok(report)
    })
    .await
}

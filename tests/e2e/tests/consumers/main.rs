//! End-to-end tests of the three downstream consumers with the real binaries: email over real
//! SMTP (a sink the test starts and stops), interest and compliance through their APIs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apis;
mod smtp;

use anyhow::{Context, Result, ensure};
use eventbank_e2e::{Services, TestWorld, eventually, invariants, post_json};
use serde_json::{Value, json};
use std::time::Duration;

pub const SETTLE: Duration = Duration::from_secs(60);

/// Opens an account through the deposit API and returns its id. The holder's address is the
/// name in lower case with dots: "Alice Example" -> alice.example@example.com.
pub async fn open_account(services: &Services, name: &str, currency: &str) -> Result<String> {
    let email = format!("{}@example.com", name.to_lowercase().replace(' ', "."));
    let body = json!({"holder_name": name, "email": email, "currency": currency});
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

/// Waits until every invariant holds with `expected` deposits (emails are counted when
/// queued, so this holds during an SMTP outage too).
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

/// The Message-ID the email service gives the confirmation of `event_id`.
pub fn message_id(event_id: &str) -> String {
    format!("<{event_id}@eventbank.example>")
}

/// The `event_id` of a deposit response.
pub fn event_id(deposit: &Value) -> String {
    deposit["event_id"].as_str().unwrap_or_default().to_owned()
}

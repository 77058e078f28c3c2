//! Steps the end-to-end tests and demos share: open an account, deposit, wait for the system
//! to settle (the invariant checker passing with the expected number of deposits).

use crate::world::{Services, TestWorld};
use crate::{eventually, invariants, post_json};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::time::Duration;

/// How long a test waits for the system to settle after its last deposit.
pub const SETTLE: Duration = Duration::from_secs(60);

/// POSTs a deposit with `key` as its Idempotency-Key until the service answers 201, as a client
/// that must not lose it does: through restarts and outages (no answer, or a 5xx) it retries
/// with the runtime's backoff for up to `give_up_after`; a 4xx is an error at once. The key makes
/// the retries one deposit.
pub async fn deposit_until_accepted(
    url: &str,
    body: &Value,
    key: &str,
    give_up_after: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + give_up_after;
    let mut backoff = eventbank_runtime::backoff::Backoff::new();
    loop {
        match post_json(url, body, &[("Idempotency-Key", key)]).await {
            Ok(r) if r.status == 201 => return Ok(()),
            Ok(r) if r.status < 500 => bail!("deposit {key} refused: {} {}", r.status, r.text),
            _ => {}
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "deposit {key} not accepted within {give_up_after:?}"
        );
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

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

/// Waits until every invariant holds with `expected` deposits stored; fails with the report.
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

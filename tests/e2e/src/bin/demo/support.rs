//! Small steps the demos share: reading answers and metrics, building events to publish
//! straight to the broker, running bankctl against a demo's world.

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Utc};
use eventbank_e2e::{ServiceHandle, Services, Svc, TestWorld, get_json, service_binary};
use serde_json::{Value, json};
use std::time::Duration;

/// How long a demo waits for something to happen.
pub const WAIT: Duration = Duration::from_secs(60);

/// `GET path` on a service, which must answer 200; the body.
pub async fn get_ok(handle: &ServiceHandle, path: &str) -> Result<Value> {
    get_json(&handle.url(path)).await?.require(200)
}

/// The account service's balance once it has applied `min_sequence` (read-your-writes).
pub async fn balance(s: &Services, account: &str, min_sequence: i64) -> Result<Value> {
    get_ok(
        &s.account,
        &format!("/accounts/{account}?min_sequence={min_sequence}&wait=5s"),
    )
    .await
}

/// A counter or gauge of a service's `/metrics` (`eventbank_<svc>_<name>`).
pub async fn metric(handle: &ServiceHandle, name: &str) -> Result<i64> {
    handle.metric(name).await
}

/// One number from a service's database (as the superuser).
pub async fn count(world: &TestWorld, svc: Svc, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql)
        .fetch_one(&world.pool(svc).await?)
        .await?)
}

/// A `DepositCompleted` (schema version 1, as an older producer wrote it) that occurred at
/// `occurred_at`, to publish straight to the broker.
pub fn event_at(
    account: &str,
    sequence: i64,
    amount_minor: i64,
    currency: &str,
    occurred_at: DateTime<Utc>,
) -> Vec<u8> {
    json!({
        "specversion": "1.0", "id": uuid::Uuid::now_v7(), "source": "/eventbank/deposit",
        "type": "bank.deposit.completed", "dataschemaversion": 1, "subject": account,
        "time": Utc::now(), "sequence": sequence, "datacontenttype": "application/json",
        "data": {"deposit_id": uuid::Uuid::now_v7(), "account_id": account, "amount_minor": amount_minor,
                 "currency": currency, "account": {"holder_name": "Olive Order", "email": "olive@example.com"},
                 "occurred_at": occurred_at}
    })
    .to_string()
    .into_bytes()
}

/// A USD `DepositCompleted` that occurred now.
pub fn event(account: &str, sequence: i64, amount_minor: i64) -> Vec<u8> {
    event_at(account, sequence, amount_minor, "USD", Utc::now())
}

/// The event a deposit published, exactly as the relay sent it (its outbox row).
pub async fn outbox_payload(world: &TestWorld, deposit: &Value) -> Result<Vec<u8>> {
    let event_id = deposit["event_id"].as_str().context("event_id")?;
    Ok(
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_id = $1::uuid")
            .bind(event_id)
            .fetch_one(&world.pool(Svc::Deposit).await?)
            .await?,
    )
}

/// Runs the operator CLI (`target/debug/bankctl`) against this world: its databases, broker
/// namespace, service URLs and API key. Returns the exit code and stdout; stderr is shown.
pub async fn bankctl(world: &TestWorld, args: &[&str]) -> Result<(i32, String)> {
    let mut command = tokio::process::Command::new(service_binary("bankctl")?);
    for svc in [Svc::Deposit, Svc::Account] {
        if let Some(handle) = world.service(svc) {
            let key = format!("{}_URL", svc.name().to_uppercase());
            command.env(key, handle.base_url());
        }
    }
    for svc in Svc::ALL {
        let key = format!("{}_DATABASE_URL", svc.name().to_uppercase());
        command.env(key, world.db_url(svc));
    }
    let output = command
        .env("API_KEY", eventbank_e2e::API_KEY)
        .env("AMQP_URL", world.amqp_url())
        .env("AMQP_NAMESPACE", world.ns())
        .args(args)
        .output()
        .await
        .context("running bankctl")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        println!("  bankctl stderr: {}", stderr.trim_end());
    }
    let code = output.status.code().context("bankctl killed by a signal")?;
    Ok((code, String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Reads a Server-Sent Events response until an event named `name` arrives; its `data` as JSON.
pub async fn next_sse_event(response: &mut reqwest::Response, name: &str) -> Result<Value> {
    let wanted = format!("event: {name}");
    let mut text = String::new();
    let read = tokio::time::timeout(WAIT, async {
        loop {
            // Only whole events: those followed by their blank line.
            let complete = text.rfind("\n\n").map_or("", |end| &text[..end]);
            if let Some(block) = complete
                .split("\n\n")
                .find(|b| b.lines().any(|l| l == wanted))
            {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .context("an event without data")?;
                return serde_json::from_str(data).context("event data is not JSON");
            }
            match response.chunk().await? {
                Some(chunk) => text.push_str(std::str::from_utf8(&chunk)?),
                None => bail!("the stream ended; received {text:?}"),
            }
        }
    })
    .await;
    match read {
        Ok(result) => result,
        Err(_) => bail!("no `{name}` event within {WAIT:?}; received {text:?}"),
    }
}

/// A duration in milliseconds with one decimal, e.g. `12.3` (integer arithmetic only).
pub fn millis(d: Duration) -> String {
    let tenths = d.as_micros() / 100;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Fails unless `value` at `key` equals `expected`, naming what was seen.
pub fn expect(value: &Value, key: &str, expected: impl Into<Value>) -> Result<()> {
    let expected = expected.into();
    ensure!(
        value[key] == expected,
        "{key}: expected {expected}, got {} in {value}",
        value[key]
    );
    Ok(())
}

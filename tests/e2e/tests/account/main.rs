//! End-to-end tests of the account service's event store: out-of-order and duplicated
//! deliveries straight into the partition queues, read-your-writes through the real deposit
//! service (and with the consumer stopped), SSE across replicas, and the `rebuild` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ordering;
mod read_your_writes;
mod rebuild;
mod sse;

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use eventbank_e2e::{ServiceHandle, Svc, TestWorld, eventually, get_json, publish_to_queue};
use eventbank_events::{AccountId, AccountSnapshot, Currency, DepositCompleted};
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

pub const SETTLE: Duration = Duration::from_secs(60);

pub fn deposit_event(account: &str, sequence: i64, amount_minor: i64) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence,
        time: Utc::now(),
        traceparent: None,
        schema_version: 1,
        deposit_id: Uuid::now_v7(),
        account_id: AccountId::parse(account).unwrap(),
        amount_minor,
        currency: Currency::parse("USD").unwrap(),
        account: AccountSnapshot {
            holder_name: "E2E Holder".into(),
            email: "e2e@example.com".into(),
        },
        occurred_at: Utc::now(),
        channel: None,
        reference: None,
    }
}

/// Publishes an event straight into one of the account service's partition queues.
pub async fn publish(world: &TestWorld, partition: usize, event: &DepositCompleted) -> Result<()> {
    publish_to_queue(
        world,
        &world.partition_queue(Svc::Account, partition),
        &event.to_json().unwrap(),
        &[("account_id", event.account_id.as_str())],
    )
    .await
}

/// Waits until `GET /accounts/{id}` shows `last_sequence`, and returns the body.
pub async fn settled(account: &ServiceHandle, id: &str, last_sequence: i64) -> Result<Value> {
    eventually(SETTLE, || async {
        let r = get_json(&account.url(&format!("/accounts/{id}"))).await?;
        ensure!(
            r.status == 200 && r.body["last_sequence"] == last_sequence,
            "{id}: {} {}",
            r.status,
            r.text
        );
        Ok(r.body)
    })
    .await
    .with_context(|| format!("{id} did not reach sequence {last_sequence}"))
}

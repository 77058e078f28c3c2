//! Getting a deposit to every consumer exactly once: fan-out, duplicates, order, and the
//! client's own retries (Idempotency-Key).

use crate::narrate::{Outcome, look, ok, say, show};
use crate::support::{WAIT, balance, count, event, expect, get_ok, metric, outbox_payload};
use anyhow::{Result, ensure};
use eventbank_e2e::flows::{deposit, settle};
use eventbank_e2e::{Svc, TestWorld, eventually, post_json, publish_event};
use serde_json::json;

pub async fn fan_out(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say("POST one deposit of 125.00 USD to ACC-0001");
    let d = deposit(&s, "ACC-0001", "125.00", "USD").await?;
    show("deposit answered", &d);
    look("deposit stored it with an outbox row in ONE transaction; the relay published it once");
    settle(world, 1).await?;
    show("account", &balance(&s, "ACC-0001", 1).await?);
    show(
        "email",
        &get_ok(&s.email, "/emails?account_id=ACC-0001").await?,
    );
    show(
        "interest",
        &get_ok(&s.interest, "/interest/accounts/ACC-0001/balance").await?,
    );
    show(
        "compliance",
        &get_ok(&s.compliance, "/compliance/audit?account_id=ACC-0001").await?,
    );
    look("four services, four databases, no service called another: only the event travelled");
    ok("every consumer applied the deposit exactly once (invariant checker)");
    Ok(Outcome::new(
        "one POST /deposits of 125.00; the relay published one DepositCompleted",
        "account, email, interest and compliance each hold it once, in their own databases (invariant checker)",
    ))
}

pub async fn duplicate(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    let d = deposit(&s, "ACC-0001", "10.00", "USD").await?;
    settle(world, 1).await?;
    say("publish the very same event (same id) twice more, as a relay retry would");
    let payload = outbox_payload(world, &d).await?;
    publish_event(world, "ACC-0001", &payload, &[]).await?;
    publish_event(world, "ACC-0001", &payload, &[]).await?;
    look(
        "each consumer inserts the event id into processed_events; the conflict means 'already applied'",
    );
    for svc in Svc::CONSUMERS {
        let handle = s.get(svc);
        eventually(WAIT, || async {
            let n = metric(handle, "duplicates_skipped_total").await?;
            ensure!(n == 2, "{svc}: {n}");
            Ok(())
        })
        .await?;
        ok(&format!("{svc}: duplicates_skipped_total = 2"));
    }
    settle(world, 1).await?;
    show("account", &balance(&s, "ACC-0001", 1).await?);
    ok("balance is 10.00, not 30.00; one email, one audit entry");
    Ok(Outcome::new(
        "one deposit of 10.00, then its event published twice more with the same id",
        "every consumer counted 2 duplicates skipped; balance 10.00, one email, one audit entry",
    ))
}

pub async fn out_of_order(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say("publish ACC-0900's events straight to the broker in the order 3, 1, 2");
    publish_event(world, "ACC-0900", &event("ACC-0900", 3, 300), &[]).await?;
    let parked = eventually(WAIT, || async {
        let n = count(
            world,
            Svc::Account,
            "SELECT count(*) FROM pending_events WHERE account_id = 'ACC-0900'",
        )
        .await?;
        ensure!(n == 1, "{n} parked");
        Ok(n)
    })
    .await?;
    show(
        "parked events of ACC-0900 (account's pending_events)",
        &json!(parked),
    );
    look("sequence 3 is parked in pending_events: applying it before 1 and 2 would be wrong");
    publish_event(world, "ACC-0900", &event("ACC-0900", 1, 100), &[]).await?;
    publish_event(world, "ACC-0900", &event("ACC-0900", 2, 200), &[]).await?;
    let b = balance(&s, "ACC-0900", 3).await?;
    show("account after 1 and 2", &b);
    ensure!(b["balance_minor"] == 600 && b["last_sequence"] == 3, "{b}");
    ok("2 filled the gap and the parked 3 was applied right after: balance 6.00, last_sequence 3");
    Ok(Outcome::new(
        "published sequence 3 of ACC-0900 first, then 1 and 2",
        "3 waited in pending_events; after 1 and 2 the balance is 6.00 at last_sequence 3",
    ))
}

pub async fn idempotency(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    let url = s.deposit.url("/deposits");
    let body = json!({"account_id": "ACC-0001", "amount": "75.00", "currency": "USD"});
    let key = [("Idempotency-Key", "demo-retry-1")];
    say("POST 75.00 to ACC-0001 with Idempotency-Key: demo-retry-1, and drop the answer unread");
    let first = post_json(&url, &body, &key).await?.require(201)?;
    look("the client cannot tell a lost answer from a lost request (a timeout): it must retry");
    say("retry: the same POST with the same key");
    let retry = post_json(&url, &body, &key).await?;
    println!(
        "  answered {} with idempotent-replayed: {}",
        retry.status,
        retry.header("idempotent-replayed").unwrap_or("(absent)")
    );
    ensure!(
        retry.header("idempotent-replayed") == Some("true"),
        "no idempotent-replayed: true header: {:?}",
        retry.headers
    );
    let again = retry.require(201)?;
    show("retry answered", &again);
    expect(&again, "deposit_id", first["deposit_id"].clone())?;
    ok("the retry got the first answer again: the same deposit_id, sequence 1");
    say("the same key with another body (80.00)");
    let other = post_json(
        &url,
        &json!({"account_id": "ACC-0001", "amount": "80.00", "currency": "USD"}),
        &key,
    )
    .await?;
    show(
        &format!("answered {} {}", other.status, other.content_type),
        &other.body,
    );
    ensure!(other.status == 422, "expected 422, got {}", other.status);
    ensure!(
        other.content_type.starts_with("application/problem+json"),
        "{}",
        other.content_type
    );
    expect(
        &other.body,
        "type",
        "urn:eventbank:problem:idempotency-key-reused",
    )?;
    let stored = count(world, Svc::Deposit, "SELECT count(*) FROM deposits").await?;
    ensure!(stored == 1, "{stored} deposits stored");
    settle(world, 1).await?;
    ok("one deposit stored, published once, applied once by every consumer");
    Ok(Outcome::new(
        "POST /deposits twice with Idempotency-Key demo-retry-1, then the key with another amount",
        "the retry answered the same deposit_id with idempotent-replayed: true; the other body got a 422 problem; 1 deposit stored",
    ))
}

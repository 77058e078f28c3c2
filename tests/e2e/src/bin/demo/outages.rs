//! When parts fail: a consumer down, the broker unreachable, a message that cannot be applied.

use crate::narrate::{Outcome, look, ok, say, show};
use crate::support::{WAIT, balance, bankctl, get_ok, metric, outbox_payload};
use anyhow::{Context, Result, ensure};
use eventbank_e2e::flows::{deposit, settle};
use eventbank_e2e::{Svc, TestWorld, eventually, publish_to_queue, queue_message_count};
use serde_json::{Value, json};

pub async fn consumer_down(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say("stop the email service (SIGKILL), then POST 5 deposits");
    s.email.kill().await?;
    for i in 1..=5 {
        deposit(&s, "ACC-0001", &format!("{i}.00"), "USD").await?;
    }
    ok("all 5 deposits were accepted: a consumer being down never blocks a deposit");
    let b = balance(&s, "ACC-0001", 5).await?;
    show("account (still running)", &b);
    let mut waiting = 0;
    for p in 0..4 {
        waiting += queue_message_count(world, &world.partition_queue(Svc::Email, p)).await?;
    }
    look(&format!(
        "{waiting} messages wait in email's partition queues"
    ));
    say("start email again");
    s.email.restart().await?;
    settle(world, 5).await?;
    ok("email caught up: 5 emails, none twice");
    Ok(Outcome::new(
        format!("killed email, POSTed 5 deposits ({waiting} waited in its queues), restarted it"),
        "every deposit was accepted and applied by the others meanwhile; email then sent 5, none twice (invariant checker)",
    ))
}

pub async fn broker_down(world: &TestWorld) -> Result<Outcome> {
    let proxy = world.broker_proxy().await?;
    for svc in Svc::CONSUMERS {
        world.start(svc, &[]).await?;
    }
    let via = world.amqp_url_via(&proxy);
    let dep = world
        .start(Svc::Deposit, &[("AMQP_URL", via.as_str())])
        .await?;
    let s = world.started()?;
    // Ready means its database answers; cut the relay's broker connection once it has one.
    eventually(WAIT, || async {
        let n = metric(&dep, "broker_connected").await?;
        ensure!(n == 1, "broker_connected {n}");
        Ok(())
    })
    .await?;
    say("cut the deposit service off the broker, then POST 3 deposits");
    proxy.cut().await;
    for i in 1..=3 {
        deposit(&s, "ACC-0001", &format!("{i}.00"), "USD").await?;
    }
    let backlog = eventually(WAIT, || async {
        let n = metric(&dep, "outbox_backlog").await?;
        ensure!(n == 3, "outbox_backlog {n}");
        Ok(n)
    })
    .await?;
    ok(&format!(
        "accepted anyway; outbox_backlog = {backlog}: the outbox holds them"
    ));
    say("bring the broker back");
    proxy.restore().await;
    settle(world, 3).await?;
    ok("the relay published all 3 once it reconnected; every consumer applied them");
    Ok(Outcome::new(
        "cut deposit off the broker, POSTed 3 deposits, restored the broker",
        "all 3 were answered 201 with outbox_backlog = 3; after the restore every consumer applied each once",
    ))
}

/// A trigger that makes interest's database refuse one amount: a stand-in for any fault in a
/// consumer's own database that retrying cannot get past.
const BREAK_INTEREST: &str = "
CREATE FUNCTION demo_refuse_4242() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.amount_minor = 4242 THEN
        RAISE EXCEPTION 'demo fault: the interest ledger refuses 42.42 (deposit %)', NEW.deposit_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER demo_refuse_4242 BEFORE INSERT ON deposits
    FOR EACH ROW EXECUTE FUNCTION demo_refuse_4242();";

const FIX_INTEREST: &str = "DROP TRIGGER demo_refuse_4242 ON deposits";

pub async fn poison_redrive(world: &TestWorld) -> Result<Outcome> {
    // One partition per consumer: the poison and the deposit behind it share interest's queue.
    let s = world.start_all(&[("PARTITIONS", "1")]).await?;
    let interest_db = world.pool(Svc::Interest).await?;
    say("break interest's database for one amount: a trigger refuses any deposit of 42.42");
    sqlx::raw_sql(BREAK_INTEREST).execute(&interest_db).await?;
    say("POST 10.00, 42.42 and 5.00 to ACC-0001");
    deposit(&s, "ACC-0001", "10.00", "USD").await?;
    let poison = deposit(&s, "ACC-0001", "42.42", "USD").await?;
    deposit(&s, "ACC-0001", "5.00", "USD").await?;
    let poison_id = poison["event_id"].as_str().context("event_id")?.to_owned();
    dead_letter(world, &poison_id).await?;
    let (_, listed) = bankctl(world, &["dlq", "list", "interest"]).await?;
    println!("  $ bankctl dlq list interest");
    for line in listed.lines() {
        println!("    {line}");
    }
    look("its reason (header x-eventbank-reason): the database's error, after 3 attempts");
    neighbours_flowed(&s).await?;
    say("fix the cause (DROP TRIGGER), then: bankctl dlq redrive interest --id <event id>");
    sqlx::raw_sql(FIX_INTEREST).execute(&interest_db).await?;
    let (code, out) = bankctl(world, &["dlq", "redrive", "interest", "--id", &poison_id]).await?;
    print!("  {out}");
    ensure!(
        code == 0 && out.contains("1 message(s) redriven"),
        "exit {code}: {out}"
    );
    settle(world, 3).await?;
    let b = get_ok(&s.interest, "/interest/accounts/ACC-0001/balance").await?;
    ensure!(b["balance_minor"] == 5742, "{b}");
    ok("interest applied it: 57.42; every deposit once in every consumer, every DLQ empty");
    say("redrive the same event once more (a copy straight into interest's queue)");
    let payload = outbox_payload(world, &poison).await?;
    let queue = world.partition_queue(Svc::Interest, 0);
    publish_to_queue(world, &queue, &payload, &[("account_id", "ACC-0001")]).await?;
    eventually(WAIT, || async {
        let n = metric(&s.interest, "duplicates_skipped_total").await?;
        ensure!(n == 1, "interest duplicates_skipped_total {n}");
        Ok(())
    })
    .await?;
    settle(world, 3).await?;
    ok("skipped as a duplicate: interest still 57.42, so a redrive is always safe");
    Ok(Outcome::new(
        "a trigger made interest refuse 42.42; POSTed 10.00, 42.42, 5.00; dropped the trigger; redrove with bankctl, then once more",
        "42.42 sat in interest's DLQ with the database's reason while 15.00 behind and around it applied; the redrive applied it once (57.42, invariant checker); the second copy was skipped as a duplicate",
    ))
}

/// Waits until `bankctl dlq list interest` shows exactly the one message; returns its entry.
async fn dead_letter(world: &TestWorld, event_id: &str) -> Result<Value> {
    let listed = eventually(WAIT, || async {
        let (code, out) = bankctl(world, &["--json", "dlq", "list", "interest"]).await?;
        ensure!(code == 0, "bankctl exit {code}: {out}");
        let v: Value = serde_json::from_str(&out)?;
        ensure!(v.as_array().is_some_and(|a| a.len() == 1), "dlq: {v}");
        Ok(v[0].clone())
    })
    .await?;
    ensure!(listed["message_id"] == event_id, "{listed}");
    let reason = listed["reason"].as_str().unwrap_or_default();
    ensure!(reason.contains("refuses 42.42"), "reason: {reason}");
    Ok(listed)
}

/// The deposits around the poison were applied everywhere; only interest lacks the poison.
async fn neighbours_flowed(s: &eventbank_e2e::Services) -> Result<()> {
    let interest = eventually(WAIT, || async {
        let b = get_ok(&s.interest, "/interest/accounts/ACC-0001/balance").await?;
        ensure!(b["balance_minor"] == 1500, "interest: {b}");
        Ok(b)
    })
    .await?;
    show("interest", &interest);
    let account = balance(s, "ACC-0001", 3).await?;
    ensure!(account["balance_minor"] == 5742, "{account}");
    show("account", &json!({"balance": account["balance"]}));
    ok(
        "the 5.00 behind it in the same queue was applied (interest 15.00); account has all three (57.42)",
    );
    Ok(())
}

//! The event over time: an older version of it, and one that arrives days after it happened.

use crate::narrate::{Outcome, look, ok, say, show};
use crate::support::{WAIT, balance, event_at, get_ok, metric};
use anyhow::{Result, ensure};
use chrono::{Days, NaiveDate, Utc};
use eventbank_e2e::flows::{deposit, settle};
use eventbank_e2e::{Services, Svc, TestWorld, eventually, publish_event, queue_message_count};
use serde_json::Value;

/// The stored version-1 events a v1 producer wrote (`shared/schemas/fixtures`).
const V1_FIXTURES: [(&str, &str); 3] = [
    (
        "ACC-0101",
        include_str!("../../../../../shared/schemas/fixtures/deposit-completed.v1.usd.json"),
    ),
    (
        "ACC-0102",
        include_str!("../../../../../shared/schemas/fixtures/deposit-completed.v1.jpy.json"),
    ),
    (
        "ACC-0101",
        include_str!(
            "../../../../../shared/schemas/fixtures/deposit-completed.v1.unknown-fields.json"
        ),
    ),
];

pub async fn schema_v1(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say(
        "publish the three stored v1 fixtures (dataschemaversion 1, one with unknown fields) to bank.events",
    );
    for (account, fixture) in V1_FIXTURES {
        publish_event(world, account, fixture.as_bytes(), &[]).await?;
    }
    look(
        "the producer emits version 2 today; each consumer upcasts v1 in eventbank_events::decode",
    );
    let account = balance(&s, "ACC-0101", 2).await?;
    show("account ACC-0101", &account);
    ensure!(account["balance_minor"] == 12_551, "{account}");
    let (emails, interest, audit) = eventually(WAIT, || consumers_hold(&s)).await?;
    show("email ACC-0101 (subjects)", &subjects(&emails));
    show("interest ACC-0101", &interest);
    show("compliance audit ACC-0101 (positions)", &positions(&audit));
    for svc in Svc::CONSUMERS {
        let dead = queue_message_count(world, &world.dlq(svc)).await?;
        ensure!(dead == 0, "{svc} dead-lettered a v1 event");
    }
    ok("all four applied both v1 deposits of ACC-0101 (125.51 USD); no dead letters");
    Ok(Outcome::new(
        "published the stored v1 fixtures of ACC-0101 and ACC-0102 straight to the exchange",
        "account (125.51), email (2 confirmations), interest (125.51) and compliance (2 audit entries) each hold them; every DLQ is empty",
    ))
}

/// Email, interest and compliance each hold ACC-0101's two v1 deposits.
async fn consumers_hold(s: &Services) -> Result<(Value, Value, Value)> {
    let emails = get_ok(&s.email, "/emails?account_id=ACC-0101").await?;
    ensure!(
        emails.as_array().map(Vec::len) == Some(2),
        "email: {emails}"
    );
    let interest = get_ok(&s.interest, "/interest/accounts/ACC-0101/balance").await?;
    ensure!(interest["balance_minor"] == 12_551, "interest: {interest}");
    let audit = get_ok(&s.compliance, "/compliance/audit?account_id=ACC-0101").await?;
    ensure!(
        audit["items"].as_array().map(Vec::len) == Some(2),
        "compliance: {audit}"
    );
    Ok((emails, interest, audit))
}

fn subjects(emails: &Value) -> Value {
    let list = emails.as_array().cloned().unwrap_or_default();
    list.iter().map(|e| e["subject"].clone()).collect()
}

fn positions(audit: &Value) -> Value {
    let items = audit["items"].as_array().cloned().unwrap_or_default();
    items.iter().map(|e| e["position"].clone()).collect()
}

pub async fn back_dated(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say("POST 1,000.00 to ACC-0001 today");
    deposit(&s, "ACC-0001", "1000.00", "USD").await?;
    settle(world, 1).await?;
    let today = Utc::now().date_naive();
    let five_days_ago = today - Days::new(5);
    let before = accrual(&s, five_days_ago).await?;
    print_days("interest before", &before);
    ensure!(days(&before).len() == 1, "{before}");
    say(&format!(
        "publish ACC-0001's sequence 2: 500.00 that occurred on {five_days_ago} (a branch's late batch)"
    ));
    let occurred = Utc::now() - chrono::Duration::days(5);
    let late = event_at("ACC-0001", 2, 50_000, "USD", occurred);
    publish_event(world, "ACC-0001", &late, &[]).await?;
    eventually(WAIT, || async {
        let n = metric(&s.interest, "backdated_deposits_total").await?;
        ensure!(n == 1, "backdated_deposits_total {n}");
        Ok(())
    })
    .await?;
    let after = accrual(&s, five_days_ago).await?;
    print_days("interest after", &after);
    let rows = days(&after);
    ensure!(
        rows.len() == 6,
        "expected 6 days from {five_days_ago}: {after}"
    );
    ensure!(rows[0]["day"] == five_days_ago.to_string(), "{after}");
    ensure!(
        rows[..5]
            .iter()
            .all(|d| d["closing_balance_minor"] == 50_000),
        "{after}"
    );
    ensure!(rows[5]["closing_balance_minor"] == 150_000, "{after}");
    ensure!(rows[0]["accrued_micro"].as_i64() > Some(0), "{after}");
    let (was, is) = (total(&before), total(&after));
    ensure!(is > was, "total accrued {was} -> {is}");
    ok(
        "interest added 500.00 to every closing balance from that day and recomputed each day's accrual",
    );
    Ok(Outcome::new(
        format!(
            "deposited 1,000.00 today, then published a 500.00 deposit that occurred on {five_days_ago}"
        ),
        format!(
            "interest went from 1 day to 6: closing 500.00 from {five_days_ago}, 1,500.00 today; interest {} -> {} cents (backdated_deposits_total = 1)",
            cents(was),
            cents(is)
        ),
    ))
}

/// Interest's days of ACC-0001 from `from` to today.
async fn accrual(s: &Services, from: NaiveDate) -> Result<Value> {
    get_ok(
        &s.interest,
        &format!("/interest/accounts/ACC-0001?from={from}"),
    )
    .await
}

fn days(accrual: &Value) -> Vec<Value> {
    accrual["days"].as_array().cloned().unwrap_or_default()
}

fn total(accrual: &Value) -> i64 {
    accrual["total_accrued_micro"].as_i64().unwrap_or_default()
}

/// One line per day: closing balance and that day's interest (in cents, six decimals).
fn print_days(label: &str, accrual: &Value) {
    println!("  {label}:");
    for d in days(accrual) {
        let closing = d["closing_balance_minor"].as_i64().unwrap_or_default();
        let micro = d["accrued_micro"].as_i64().unwrap_or_default();
        println!(
            "    {}  closing {:>6}.{:02} USD  rate {}%  interest {} cents",
            d["day"].as_str().unwrap_or("?"),
            closing / 100,
            closing % 100,
            d["rate"].as_str().unwrap_or("?"),
            cents(micro)
        );
    }
    println!("    total interest {} cents", cents(total(accrual)));
}

/// Millionths of a cent as cents with six decimals.
fn cents(micro: i64) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

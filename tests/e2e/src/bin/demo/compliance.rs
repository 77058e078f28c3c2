//! Compliance: rules over the stream of deposits, and an audit log whose history cannot be
//! rewritten unnoticed.

use crate::narrate::{Outcome, look, ok, say, show};
use crate::support::{bankctl, expect, get_ok};
use anyhow::{Result, ensure};
use eventbank_e2e::flows::{deposit, settle};
use eventbank_e2e::{Svc, TestWorld};

pub async fn compliance_alert(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say("deposit 10,000.00 USD to ACC-0001 (at the reporting threshold)");
    deposit(&s, "ACC-0001", "10000.00", "USD").await?;
    say("deposit 4,000.00 three times to ACC-0004 within 24 hours (each under the threshold)");
    for _ in 0..3 {
        deposit(&s, "ACC-0004", "4000.00", "USD").await?;
    }
    settle(world, 4).await?;
    let alerts = get_ok(&s.compliance, "/compliance/alerts").await?;
    show("alerts", &alerts);
    let items = alerts["items"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<&str> = items.iter().filter_map(|a| a["kind"].as_str()).collect();
    let ctr = kinds.iter().filter(|k| **k == "ctr").count();
    let structuring = kinds.iter().filter(|k| **k == "structuring").count();
    ensure!(ctr == 1 && structuring == 1, "{kinds:?}");
    ok("one CTR alert for ACC-0001 and ONE structuring alert for ACC-0004 (not one per deposit)");
    show(
        "audit chain",
        &get_ok(&s.compliance, "/compliance/verify").await?,
    );
    Ok(Outcome::new(
        "deposited 10,000.00 to ACC-0001 and 3 x 4,000.00 to ACC-0004",
        "GET /compliance/alerts lists exactly one ctr and one structuring alert",
    ))
}

/// Rewrites the amount of audit entry 2 with the append-only trigger switched off, as only a
/// superuser or the table's owner can, in one statement batch.
const REWRITE_ENTRY_2: &str = "
ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete;
UPDATE audit_log SET entry = regexp_replace(entry, '\"amount_minor\":[0-9]+', '\"amount_minor\":1')
 WHERE position = 2;
ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete;";

pub async fn tamper(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say("POST 100.00, 200.00 and 300.00: compliance appends three hash-chained audit entries");
    for amount in ["100.00", "200.00", "300.00"] {
        deposit(&s, "ACC-0001", amount, "USD").await?;
    }
    settle(world, 3).await?;
    let intact = get_ok(&s.compliance, "/compliance/verify").await?;
    show("GET /compliance/verify", &intact);
    expect(&intact, "ok", true)?;
    let db = world.pool(Svc::Compliance).await?;
    say(
        "as the superuser, in this world's compliance database: UPDATE audit_log ... WHERE position = 2",
    );
    let refused = sqlx::query("UPDATE audit_log SET entry = entry WHERE position = 2")
        .execute(&db)
        .await;
    let refusal = refused.err().map(|e| e.to_string()).unwrap_or_default();
    println!("  refused: {refusal}");
    ensure!(
        refusal.contains("append-only"),
        "the UPDATE was not refused"
    );
    say(
        "switch the append-only trigger off (a superuser can), rewrite entry 2's amount to 0.01, switch it on",
    );
    sqlx::raw_sql(REWRITE_ENTRY_2).execute(&db).await?;
    let broken = get_ok(&s.compliance, "/compliance/verify").await?;
    show("GET /compliance/verify", &broken);
    expect(&broken, "ok", false)?;
    expect(&broken, "first_broken_position", 2)?;
    look("entry 2's stored hash no longer matches SHA-256(entry 1's hash || entry 2's text)");
    let (code, out) = bankctl(world, &["verify"]).await?;
    println!("  $ bankctl verify (exit {code})");
    for line in out.lines() {
        println!("    {line}");
    }
    ensure!(
        code == 1 && out.contains("BROKEN"),
        "bankctl verify: exit {code}: {out}"
    );
    ensure!(
        out.contains("position: 2"),
        "bankctl verify names no position 2: {out}"
    );
    ok("the API and bankctl both name entry 2 as the first broken one");
    Ok(Outcome::new(
        "appended 3 audit entries, then as the superuser disabled the append-only trigger and rewrote entry 2's amount",
        format!(
            "the plain UPDATE was refused; after the rewrite GET /compliance/verify answered ok: false, first_broken_position: 2 ({}), and bankctl verify exited 1",
            broken["reason"].as_str().unwrap_or("?")
        ),
    ))
}

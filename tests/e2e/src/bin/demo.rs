//! Guided demos: each scenario starts a private eventbank (fresh databases, its own broker
//! namespace, the real binaries), makes one pattern happen, narrates what to look for, and
//! asserts the outcome, so a demo cannot silently rot. `scripts/demo <scenario>|all|list`.

use anyhow::{Context, Result, bail, ensure};
use eventbank_e2e::flows::{deposit, settle};
use eventbank_e2e::{
    Services, Svc, TestWorld, eventually, get_json, get_text, publish_event, queue_message_count,
};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

const SCENARIOS: &[(&str, &str)] = &[
    (
        "fan-out",
        "one deposit, four independent consumers, each in its own database",
    ),
    (
        "duplicate",
        "the same event delivered three times changes every consumer once",
    ),
    (
        "out-of-order",
        "events arriving 3, 1, 2: the account parks 3 until the gap fills",
    ),
    (
        "consumer-down",
        "email is down: deposits still flow, email catches up when it returns",
    ),
    (
        "broker-down",
        "the broker is unreachable: deposits wait in the outbox, then publish",
    ),
    (
        "read-your-writes",
        "ask for the sequence you just wrote; with the consumer down, a clear 503",
    ),
    (
        "replay",
        "the balance at a past instant from the event store; a rebuild reproduces the projections",
    ),
    (
        "compliance-alert",
        "a large deposit raises a CTR alert; split deposits raise one structuring alert",
    ),
];

fn say(text: &str) {
    println!("\n▶ {text}");
}
fn look(text: &str) {
    println!("  look for: {text}");
}
fn show(label: &str, value: &Value) {
    println!("  {label}: {value}");
}
fn ok(text: &str) {
    println!("  ✔ {text}");
}

async fn balance(s: &Services, account: &str, min_sequence: i64) -> Result<Value> {
    get_json(&s.account.url(&format!(
        "/accounts/{account}?min_sequence={min_sequence}&wait=5s"
    )))
    .await?
    .require(200)
}

async fn metric(handle: &eventbank_e2e::ServiceHandle, name: &str) -> Result<i64> {
    let (_, text) = get_text(&handle.url("/metrics")).await?;
    let prefix = format!("eventbank_{}_{name} ", handle.svc());
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("{prefix} not in /metrics"))
}

fn event(account: &str, sequence: i64, amount_minor: i64) -> Vec<u8> {
    json!({
        "specversion": "1.0", "id": uuid::Uuid::now_v7(), "source": "/eventbank/deposit",
        "type": "bank.deposit.completed", "dataschemaversion": 1, "subject": account,
        "time": chrono::Utc::now(), "sequence": sequence, "datacontenttype": "application/json",
        "data": {"deposit_id": uuid::Uuid::now_v7(), "account_id": account, "amount_minor": amount_minor,
                 "currency": "USD", "account": {"holder_name": "Olive Order", "email": "olive@example.com"},
                 "occurred_at": chrono::Utc::now()}
    })
    .to_string()
    .into_bytes()
}

async fn run(name: &str, world: &TestWorld) -> Result<()> {
    match name {
        "fan-out" => {
            let s = world.start_all(&[]).await?;
            say("POST one deposit of 125.00 USD to ACC-0001");
            let d = deposit(&s, "ACC-0001", "125.00", "USD").await?;
            show("deposit answered", &d);
            look(
                "deposit stored it with an outbox row in ONE transaction; the relay published it once",
            );
            settle(world, 1).await?;
            show("account", &balance(&s, "ACC-0001", 1).await?);
            show(
                "email",
                &get_json(&s.email.url("/emails?account_id=ACC-0001"))
                    .await?
                    .require(200)?,
            );
            show(
                "interest",
                &get_json(&s.interest.url("/interest/accounts/ACC-0001/balance"))
                    .await?
                    .require(200)?,
            );
            show(
                "compliance",
                &get_json(&s.compliance.url("/compliance/audit?account_id=ACC-0001"))
                    .await?
                    .require(200)?,
            );
            look(
                "four services, four databases, no service called another: only the event travelled",
            );
            ok("every consumer applied the deposit exactly once (invariant checker)");
        }
        "duplicate" => {
            let s = world.start_all(&[]).await?;
            let d = deposit(&s, "ACC-0001", "10.00", "USD").await?;
            settle(world, 1).await?;
            say("publish the very same event (same id) twice more, as a relay retry would");
            let payload: Vec<u8> =
                sqlx::query_scalar("SELECT payload FROM outbox WHERE event_id = $1::uuid")
                    .bind(d["event_id"].as_str().context("event_id")?)
                    .fetch_one(&world.pool(Svc::Deposit).await?)
                    .await?;
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
        }
        "out-of-order" => {
            let s = world.start_all(&[]).await?;
            say("publish ACC-0900's events straight to the broker in the order 3, 1, 2");
            publish_event(world, "ACC-0900", &event("ACC-0900", 3, 300), &[]).await?;
            let account_db = world.pool(Svc::Account).await?;
            let parked: i64 = eventually(WAIT, || async {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pending_events WHERE account_id = 'ACC-0900'",
                )
                .fetch_one(&account_db)
                .await?;
                ensure!(n == 1, "{n} parked");
                Ok(n)
            })
            .await?;
            show(
                "parked events of ACC-0900 (account's pending_events)",
                &json!(parked),
            );
            look(
                "sequence 3 is parked in pending_events: applying it before 1 and 2 would be wrong",
            );
            publish_event(world, "ACC-0900", &event("ACC-0900", 1, 100), &[]).await?;
            publish_event(world, "ACC-0900", &event("ACC-0900", 2, 200), &[]).await?;
            let b = balance(&s, "ACC-0900", 3).await?;
            show("account after 1 and 2", &b);
            ensure!(b["balance_minor"] == 600 && b["last_sequence"] == 3, "{b}");
            ok(
                "2 filled the gap and the parked 3 was applied right after: balance 6.00, last_sequence 3",
            );
        }
        "consumer-down" => {
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
                waiting +=
                    queue_message_count(world, &world.partition_queue(Svc::Email, p)).await?;
            }
            look(&format!(
                "{waiting} messages wait in email's partition queues"
            ));
            say("start email again");
            s.email.restart().await?;
            settle(world, 5).await?;
            ok("email caught up: 5 emails, none twice");
        }
        "broker-down" => {
            let proxy = world.broker_proxy().await?;
            for svc in Svc::CONSUMERS {
                world.start(svc, &[]).await?;
            }
            let via = world.amqp_url_via(&proxy);
            let dep = world
                .start(Svc::Deposit, &[("AMQP_URL", via.as_str())])
                .await?;
            let s = world.started()?;
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
        }
        "read-your-writes" => {
            let s = world.start_all(&[]).await?;
            let d = deposit(&s, "ACC-0001", "50.00", "USD").await?;
            let seq = d["sequence"].as_i64().context("sequence")?;
            say(&format!(
                "GET /accounts/ACC-0001?min_sequence={seq}&wait=2s right after the POST"
            ));
            let b = balance(&s, "ACC-0001", seq).await?;
            show("answer", &b);
            ensure!(b["last_sequence"].as_i64() >= Some(seq), "{b}");
            ok("the answer includes the deposit just made");
            say(
                "stop the account service's consumer side (SIGKILL, restart without broker), deposit again",
            );
            s.account.kill().await?;
            let d2 = deposit(&s, "ACC-0001", "1.00", "USD").await?;
            let seq2 = d2["sequence"].as_i64().context("sequence")?;
            let dead_broker = format!(
                "amqp://guest:guest@127.0.0.1:{}/eventbank",
                eventbank_e2e::free_port()?
            );
            let reader = world
                .spawn(Svc::Account, &[("AMQP_URL", dead_broker.as_str())])
                .await?;
            let r = eventually(WAIT, || async {
                let r = get_json(&reader.url(&format!(
                    "/accounts/ACC-0001?min_sequence={seq2}&wait=500ms"
                )))
                .await?;
                ensure!(r.status == 503, "{}", r.text);
                Ok(r)
            })
            .await?;
            show("answer", &r.body);
            look(&format!(
                "a problem naming current_sequence and min_sequence, with Retry-After: {:?}",
                r.header("retry-after")
            ));
            ok("no stale balance is passed off as current");
        }
        "replay" => {
            let s = world.start_all(&[]).await?;
            say("deposit 100.00, note the time, then deposit 20.00 and 3.00");
            deposit(&s, "ACC-0001", "100.00", "USD").await?;
            balance(&s, "ACC-0001", 1).await?;
            let instant = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            deposit(&s, "ACC-0001", "20.00", "USD").await?;
            deposit(&s, "ACC-0001", "3.00", "USD").await?;
            show("balance now", &balance(&s, "ACC-0001", 3).await?);
            let at = get_json(&s.account.url(&format!(
                "/accounts/ACC-0001/balance?as_of={}",
                instant.replace('+', "%2B")
            )))
            .await?
            .require(200)?;
            show(&format!("balance as of {instant}"), &at);
            ensure!(at["balance_minor"] == 10_000, "{at}");
            look("computed_from: a snapshot plus the events replayed after it, not the projection");
            ok("the past balance is 100.00: a fold of the events up to that instant");
            say(
                "replay the whole event store into fresh projections and compare (account rebuild --check)",
            );
            let out = world
                .run_cli(
                    Svc::Account,
                    &["rebuild", "--check"],
                    &[],
                    Duration::from_secs(60),
                )
                .await?;
            println!("{}", out.stdout.trim_end());
            ensure!(
                out.success(),
                "rebuild --check found differences: {} {}",
                out.stdout,
                out.stderr
            );
            ok("replaying the store reproduces the live projections exactly");
        }
        "compliance-alert" => {
            let s = world.start_all(&[]).await?;
            say("deposit 10,000.00 USD to ACC-0001 (at the reporting threshold)");
            deposit(&s, "ACC-0001", "10000.00", "USD").await?;
            say(
                "deposit 4,000.00 three times to ACC-0004 within 24 hours (each under the threshold)",
            );
            for _ in 0..3 {
                deposit(&s, "ACC-0004", "4000.00", "USD").await?;
            }
            settle(world, 4).await?;
            let alerts = get_json(&s.compliance.url("/compliance/alerts"))
                .await?
                .require(200)?;
            show("alerts", &alerts);
            let items = alerts["items"].as_array().cloned().unwrap_or_default();
            let kinds: Vec<&str> = items.iter().filter_map(|a| a["kind"].as_str()).collect();
            ensure!(
                kinds.iter().filter(|k| **k == "ctr").count() == 1,
                "{kinds:?}"
            );
            ensure!(
                kinds.iter().filter(|k| **k == "structuring").count() == 1,
                "{kinds:?}"
            );
            ok(
                "one CTR alert for ACC-0001 and ONE structuring alert for ACC-0004 (not one per deposit)",
            );
            show(
                "audit chain",
                &get_json(&s.compliance.url("/compliance/verify"))
                    .await?
                    .require(200)?,
            );
        }
        other => bail!("unknown scenario {other:?}; `scripts/demo list` shows them"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "list".into());
    if arg == "list" || arg == "--help" || arg == "-h" {
        println!("scripts/demo <scenario>|all\n");
        for (name, what) in SCENARIOS {
            println!("  {name:<18} {what}");
        }
        return std::process::ExitCode::SUCCESS;
    }
    let names: Vec<&str> = if arg == "all" {
        SCENARIOS.iter().map(|(n, _)| *n).collect()
    } else {
        vec![arg.as_str()]
    };
    for name in names {
        let what = SCENARIOS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, w)| *w);
        println!("\n=== demo: {name}: {what}");
        let world = match TestWorld::new().await {
            Ok(w) => w,
            Err(e) => {
                eprintln!("demo {name}: cannot set up: {e:#}");
                return std::process::ExitCode::from(2);
            }
        };
        let outcome = run(name, &world).await;
        let cleaned = world.cleanup().await;
        if let Err(e) = outcome {
            eprintln!("\n✘ demo {name} FAILED: {e:#}");
            return std::process::ExitCode::from(1);
        }
        if let Err(e) = cleaned {
            eprintln!("demo {name}: cleanup failed: {e:#}");
            return std::process::ExitCode::from(2);
        }
        println!("=== demo {name}: passed");
    }
    std::process::ExitCode::SUCCESS
}

//! A fault placed exactly, which the nemesis (tests/nemesis, src/nemesis) can only hit by
//! chance: the deposit service SIGKILLed while committed deposits wait for the broker's
//! confirm. A stream of deposits runs meanwhile; then the invariant checker (bankctl's) must
//! pass: nothing lost, nothing doubled.
//!
//! Deterministic from a seed (`FAULT_SEED`, default 20261127), printed: amounts, accounts and
//! when the fault strikes derive from it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, ensure};
use eventbank_e2e::{ServiceHandle, Svc, TestWorld, eventually, invariants, post_json};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DEPOSITS: usize = 240;
const ACCOUNTS: usize = 8;
const SETTLE: Duration = Duration::from_secs(90);

fn seed() -> u64 {
    std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_127)
}

/// A deterministic plan of deposits: (account index, amount in cents).
fn plan(rng: &mut StdRng) -> Vec<(usize, i64)> {
    (0..DEPOSITS)
        .map(|_| (rng.random_range(0..ACCOUNTS), rng.random_range(1..100_000)))
        .collect()
}

struct Stream {
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Result<usize>>,
}

/// Posts the planned deposits one after another. Each has its own Idempotency-Key, so a request
/// that failed because the deposit service was being killed is simply retried: it either
/// committed (the retry replays the response) or not (the retry deposits), never twice.
fn stream(
    targets: Vec<ServiceHandle>,
    accounts: Vec<String>,
    plan: Vec<(usize, i64)>,
    run: String,
) -> Stream {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        for (i, (account, cents)) in plan.into_iter().enumerate() {
            let body = json!({
                "account_id": accounts[account],
                "amount": format!("{}.{:02}", cents / 100, cents % 100),
                "currency": "USD",
            });
            let key = format!("{run}-{i}");
            let mut attempt = 0;
            loop {
                // Alternate replicas when there are several; a dead one is skipped on retry.
                let target = &targets[(i + attempt) % targets.len()];
                match post_json(
                    &target.url("/deposits"),
                    &body,
                    &[("Idempotency-Key", key.as_str())],
                )
                .await
                {
                    Ok(r) if r.status == 201 => break,
                    Ok(r) if r.status >= 500 => {}
                    Ok(r) => anyhow::bail!("deposit {i} refused: {} {}", r.status, r.text),
                    Err(_) => {}
                }
                attempt += 1;
                ensure!(attempt < 100, "deposit {i} kept failing");
                // The service is being killed or restarted: wait until one replica answers.
                eventually(SETTLE, || async {
                    for target in &targets {
                        if target.is_ready().await {
                            return Ok(());
                        }
                    }
                    anyhow::bail!("no deposit replica is ready")
                })
                .await?;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Ok(counter.load(Ordering::SeqCst))
    });
    Stream { accepted, task }
}

impl Stream {
    /// Waits until `n` deposits were accepted.
    async fn reached(&self, n: usize) {
        let accepted = Arc::clone(&self.accepted);
        eventually(SETTLE, || {
            let accepted = Arc::clone(&accepted);
            async move {
                let got = accepted.load(Ordering::SeqCst);
                ensure!(got >= n, "{got} of {n} deposits accepted");
                Ok(())
            }
        })
        .await
        .unwrap();
    }

    async fn finish(self) -> usize {
        self.task.await.unwrap().unwrap()
    }
}

async fn open_accounts(deposit: &ServiceHandle) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..ACCOUNTS {
        let body = json!({"holder_name": format!("Fault {i}"), "email": format!("fault{i}@example.com"), "currency": "USD"});
        let account = post_json(&deposit.url("/accounts"), &body, &[])
            .await
            .unwrap()
            .require(201)
            .unwrap();
        out.push(account["account_id"].as_str().unwrap().to_owned());
    }
    out
}

/// Waits for the invariant checker; prints the case's line of the fault table.
async fn settle(world: &TestWorld, case: &str, expected: usize) -> invariants::Report {
    let report = eventually(SETTLE, || async {
        let report = invariants::check(world).await?;
        ensure!(
            report.deposits == expected as i64,
            "{} of {expected} deposits stored",
            report.deposits
        );
        ensure!(report.ok(), "{report}");
        Ok(report)
    })
    .await
    .with_context(|| format!("case {case}"))
    .unwrap();
    println!(
        "FAULT | {case:<52} | seed {} | deposits {expected:>4} | {report}",
        seed()
    );
    report
}

#[tokio::test]
async fn sigkill_of_the_deposit_service_between_commit_and_publish() {
    // The deposit service reaches the broker through a proxy we cut: deposits commit (with their
    // outbox rows) but cannot be confirmed. It is SIGKILLed in that state, the broker comes
    // back, and the restarted relay publishes everything committed before the kill.
    let case = "SIGKILL deposit between commit and publish confirm";
    let world = Arc::new(TestWorld::new().await.unwrap());
    let proxy = world.broker_proxy().await.unwrap();
    for svc in Svc::CONSUMERS {
        world.start(svc, &[]).await.unwrap();
    }
    let via_proxy = world.amqp_url_via(&proxy);
    let deposit = world
        .start(
            Svc::Deposit,
            &[("AMQP_URL", via_proxy.as_str()), ("RELAY_BATCH", "10")],
        )
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed() ^ case.len() as u64);
    let accounts = open_accounts(&deposit).await;
    let stream = stream(
        vec![deposit.clone()],
        accounts,
        plan(&mut rng),
        world.ns().to_owned(),
    );
    stream.reached(rng.random_range(20..60)).await;
    proxy.cut().await;
    stream.reached(150).await;
    let pool = world.pool(Svc::Deposit).await.unwrap();
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        unpublished > 0,
        "the kill must land while committed rows await their confirm"
    );
    deposit.kill().await.unwrap();
    proxy.restore().await;
    deposit.restart().await.unwrap();
    let sent = stream.finish().await;
    println!("FAULT | {case}: {unpublished} committed rows were unpublished at the kill");
    settle(&world, case, sent).await;
    drop(proxy);
    let Ok(world) = Arc::try_unwrap(world) else {
        panic!("world still shared")
    };
    world.cleanup().await.unwrap();
}

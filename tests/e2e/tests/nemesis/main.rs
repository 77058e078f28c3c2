//! The nemesis (src/nemesis): 16 clients, 3,000 deposits over 200 accounts, every fault kind
//! striking under that load, then the whole outcome judged. Its own test binary, with one
//! test, because it restarts the shared PostgreSQL and RabbitMQ servers (cargo runs test
//! binaries one after another).
//!
//! `NEMESIS_SEED` replays a run (default: a fixed seed, so CI is repeatable); each run prints
//! its schedule, every fault with its proof, and the verdict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use eventbank_e2e::Svc;
use eventbank_e2e::nemesis::{self, Config};
use std::collections::BTreeSet;

const DEFAULT_SEED: u64 = 20_261_130;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_under_concurrent_load_loses_and_doubles_nothing() {
    let seed = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let config = Config::suite(seed);
    let outcome = nemesis::run(config.clone()).await.unwrap();
    println!("{outcome}");

    assert!(config.clients >= 16 && config.accounts >= 200);
    assert_eq!(
        Some(outcome.answered),
        config.deposits,
        "every deposit answered"
    );
    // Every kind of the schedule struck while the clients were depositing.
    let under_load: BTreeSet<&str> = outcome
        .faults
        .iter()
        .filter(|f| f.during_workload)
        .map(|f| f.kind)
        .collect();
    let scheduled: BTreeSet<&str> = [
        "sigkill",
        "sigkill-two-at-once",
        "postgres-restart",
        "rabbitmq-restart",
        "broker-connections-cut",
        "db-connections-terminated",
        "relay-leader-lock-lost",
        "duplicate-deliveries",
        "reordered-first-deliveries",
        "poison-messages",
    ]
    .into_iter()
    .collect();
    assert_eq!(under_load, scheduled, "every fault kind struck under load");
    // And while healing: the consumer that was down all along, SIGKILLed as it catches up,
    // then duplicates counted at rest.
    let all = outcome.kinds_struck();
    assert!(all.contains("consumer-offline-whole-run") && all.contains("duplicates-at-rest"));
    let killed: BTreeSet<Svc> = outcome
        .faults
        .iter()
        .flat_map(|f| f.killed.iter().copied())
        .collect();
    assert_eq!(
        killed,
        Svc::ALL.into_iter().collect(),
        "each service SIGKILLed"
    );
    assert!(outcome.verdict.ok(), "{}", outcome.verdict);
}

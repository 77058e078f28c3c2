//! Rebuild throughput: a fresh database with a synthetic store of `REBUILD_BENCH_EVENTS` events
//! (default 1,000,000: 10,000 accounts of 100 events), one full rebuild, events/s printed.
//!
//! `cargo bench -p account --bench rebuild` (needs the local Postgres, like the tests).

use account::{MIGRATOR, rebuild, synthetic};
use eventbank_runtime::testing::TestDatabase;
use std::process::ExitCode;
use std::time::Instant;

const EVENTS_PER_ACCOUNT: i64 = 100;

fn main() -> ExitCode {
    let events: i64 = std::env::var("REBUILD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000_000);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(events)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(events: i64) -> anyhow::Result<()> {
    let db = TestDatabase::create("account_bench", &MIGRATOR).await?;
    let accounts = (events / EVENTS_PER_ACCOUNT).max(1);
    let generating = Instant::now();
    let written = synthetic::generate(&db.pool, accounts, EVENTS_PER_ACCOUNT - 1).await?;
    println!(
        "generated {written} events of {accounts} accounts in {:.1?}",
        generating.elapsed()
    );
    let report = rebuild::rebuild(
        &db.pool,
        &rebuild::Options {
            check_only: true,
            ..rebuild::Options::default()
        },
    )
    .await?;
    println!("{report}");
    for (phase, took) in &report.phases {
        println!("  {phase}: {took:.2?}");
    }
    println!(
        "rebuild: {} events/s ({} events in {:.2?})",
        report.events_per_second(),
        report.events,
        report.elapsed
    );
    let identical = report.identical();
    db.drop_db().await?;
    anyhow::ensure!(
        identical,
        "the rebuilt projections differ from the generated ones"
    );
    Ok(())
}

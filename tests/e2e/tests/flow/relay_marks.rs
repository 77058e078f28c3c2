use crate::{SETTLE, deposit, open_account, settle};
use chrono::{DateTime, Utc};
use eventbank_e2e::{Svc, TestWorld, eventually};
use std::collections::HashSet;
use std::time::Instant;

/// At light load the relay neither reads the outbox nor marks a row per deposit: the writers
/// hand it each committed row in memory, and it marks what it published in one statement once
/// the oldest mark has waited `RELAY_MARK_DELAY_MS` (or with its 1 s poll, whichever is
/// first). Each deposit is sent only once the previous one reached a consumer, so every one is
/// a round of its own; a relay that reads the outbox per deposit makes `DEPOSITS` reads, and
/// one that marks per deposit leaves `DEPOSITS` distinct `published_at`s.
#[tokio::test]
async fn at_light_load_the_relay_is_handed_each_row_and_marks_them_together() {
    const DEPOSITS: i64 = 20;
    let world = TestWorld::new().await.unwrap();
    // Longer than the whole run: the marks go with the relay's 1 s polls.
    let services = world
        .start_all(&[("RELAY_MARK_DELAY_MS", "60000")])
        .await
        .unwrap();
    let account = open_account(&services, "Mark Delay", "USD").await.unwrap();
    let consumed = world.pool(Svc::Account).await.unwrap();
    let reads_before = services
        .deposit
        .metric("relay_outbox_reads_total")
        .await
        .unwrap();
    let started = Instant::now();
    for n in 1..=DEPOSITS {
        deposit(&services, &account, &format!("{n}.00"), "USD")
            .await
            .unwrap();
        eventually(SETTLE, || async {
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
                .fetch_one(&consumed)
                .await?;
            anyhow::ensure!(applied == n, "{applied} of {n} deposits applied by account");
            Ok(())
        })
        .await
        .unwrap();
    }
    let elapsed = started.elapsed().as_secs() as i64;
    let reads = services
        .deposit
        .metric("relay_outbox_reads_total")
        .await
        .unwrap()
        - reads_before;
    let handed = services
        .deposit
        .metric("relay_handed_rows_total")
        .await
        .unwrap();
    // A poll that happens to run between a commit and the relay taking the row publishes it
    // instead: rare, and one row per read at most.
    assert!(
        handed >= DEPOSITS - reads,
        "{handed} of {DEPOSITS} rows handed over, {reads} reads"
    );
    assert!(
        reads <= elapsed + 2,
        "{reads} outbox reads for {DEPOSITS} deposits in {elapsed} s: only the 1 s polls should read"
    );
    // Every row is marked in the end (the poll carries the marks).
    settle(&world, DEPOSITS).await.unwrap();
    let outbox = world.pool(Svc::Deposit).await.unwrap();
    let marks: Vec<(DateTime<Utc>,)> = sqlx::query_as("SELECT published_at FROM outbox")
        .fetch_all(&outbox)
        .await
        .unwrap();
    let statements: HashSet<DateTime<Utc>> = marks.into_iter().map(|m| m.0).collect();
    assert!(
        statements.len() as i64 <= elapsed + 2,
        "{} mark statements for {DEPOSITS} deposits in {elapsed} s",
        statements.len()
    );
    world.cleanup().await.unwrap();
}

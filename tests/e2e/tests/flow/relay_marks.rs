use crate::{SETTLE, deposit, open_account, settle};
use eventbank_e2e::{Svc, TestWorld, eventually};
use std::time::Instant;

/// At light load the relay neither reads the outbox nor marks a row per deposit: the writers
/// hand it each committed row in memory, and its mark of the row rides the next writer's
/// transaction (or, with nothing to ride, goes with its 1 s poll: `RELAY_MARK_DELAY_MS` is set
/// longer than the run). Each deposit is sent only once the previous one reached a consumer, so
/// every one is a round of its own; a relay that reads the outbox per deposit makes `DEPOSITS`
/// reads, and one whose marks do not ride marks every row in a transaction of its own.
#[tokio::test]
async fn at_light_load_the_relay_is_handed_each_row_and_its_marks_ride_the_next_deposit() {
    const DEPOSITS: i64 = 20;
    let world = TestWorld::new().await.unwrap();
    // Longer than the whole run: the marks go with the relay's 1 s polls.
    let services = world
        .start_all(&[("RELAY_MARK_DELAY_MS", "60000")])
        .await
        .unwrap();
    let account = open_account(&services, "Mark Delay", "USD").await.unwrap();
    let consumed = world.pool(Svc::Account).await.unwrap();
    let outbox = world.pool(Svc::Deposit).await.unwrap();
    // Which transaction wrote each outbox row and each mark (a rolled-back one takes its log
    // rows with it).
    sqlx::raw_sql(
        "CREATE TABLE outbox_writes (xid xid8 NOT NULL, mark boolean NOT NULL);
         CREATE FUNCTION log_outbox_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO outbox_writes VALUES (pg_current_xact_id(), TG_OP = 'UPDATE');
             RETURN NULL;
         END $$;
         CREATE TRIGGER log_outbox_writes AFTER INSERT OR UPDATE ON outbox
             FOR EACH ROW EXECUTE FUNCTION log_outbox_write();",
    )
    .execute(&outbox)
    .await
    .unwrap();
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
    // Every row is marked in the end (the poll carries the last marks).
    settle(&world, DEPOSITS).await.unwrap();
    let (rode, alone): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE w.mark AND EXISTS
                    (SELECT FROM outbox_writes i WHERE i.xid = w.xid AND NOT i.mark)),
                count(DISTINCT w.xid) FILTER (WHERE w.mark AND NOT EXISTS
                    (SELECT FROM outbox_writes i WHERE i.xid = w.xid AND NOT i.mark))
           FROM outbox_writes w",
    )
    .fetch_one(&outbox)
    .await
    .unwrap();
    // A poll that runs between a publish and the next deposit marks that row itself.
    assert!(
        alone <= elapsed + 2,
        "{alone} mark transactions of the relay's own for {DEPOSITS} deposits in {elapsed} s"
    );
    assert!(
        rode >= DEPOSITS - 1 - (elapsed + 2),
        "only {rode} of {DEPOSITS} marks rode a deposit's transaction ({alone} of the relay's own)"
    );
    world.cleanup().await.unwrap();
}

use crate::{SETTLE, deposit, open_account, settle};
use chrono::{DateTime, Utc};
use eventbank_e2e::{Svc, TestWorld, eventually};

/// At light load the relay sends a round's marks with the next round's read: a deposit that
/// follows within `RELAY_MARK_DELAY_MS` of the round that emptied the outbox is read by the
/// statement that marks the one before it, so each deposit costs one relay statement, not a
/// read and a mark. Each deposit is sent only once the previous one reached a consumer (so it
/// was published and confirmed, and its mark is the one waiting); a relay that marks at once
/// marks every row before the next deposit exists.
#[tokio::test]
async fn the_relay_marks_a_quiet_round_with_the_next_rounds_read() {
    const DEPOSITS: i64 = 8;
    let world = TestWorld::new().await.unwrap();
    // Long enough that a busy test machine does not decide the outcome.
    let services = world
        .start_all(&[("RELAY_MARK_DELAY_MS", "3000")])
        .await
        .unwrap();
    let account = open_account(&services, "Mark Delay", "USD").await.unwrap();
    let consumed = world.pool(Svc::Account).await.unwrap();
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
    // The last round's marks wait for the delay: every row is marked in the end.
    settle(&world, DEPOSITS).await.unwrap();

    let outbox = world.pool(Svc::Deposit).await.unwrap();
    let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT created_at, published_at FROM outbox ORDER BY id")
            .fetch_all(&outbox)
            .await
            .unwrap();
    assert_eq!(rows.len(), DEPOSITS as usize);
    let marked_late: Vec<bool> = rows.windows(2).map(|pair| pair[0].1 >= pair[1].0).collect();
    assert!(
        marked_late.iter().all(|late| *late),
        "each row must be marked by the statement that read the next deposit (published_at of \
         a row after created_at of the next): {marked_late:?}"
    );
    world.cleanup().await.unwrap();
}

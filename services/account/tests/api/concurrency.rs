//! Optimistic concurrency of the event store: two appends at the same version of a stream,
//! exactly one wins; the other gets a conflict (and nothing of it is stored), and retrying
//! after a reload succeeds. The handler serialises its own work per account and fails cleanly
//! (for the runtime to retry) when a writer outside it got there first.

use crate::{event, fresh_db, handle_with, id, state};
use account::domain::{AccountEvent, Decision, Deposit, decide};
use account::handler::AccountHandler;
use account::store::{self, NewEvent, StoreError};
use eventbank_runtime::consumer::{Handler, HandlerError};
use eventbank_runtime::testing::TestDatabase;
use std::time::Duration;
use tokio::time::Instant;

/// The events that deposit `sequence` produces on top of `state` (Opened + Deposited for 1).
fn new_events(account: &str, from_version: i64, deposit: &Deposit) -> Vec<NewEvent> {
    let state = account::domain::AccountState {
        version: from_version,
        last_sequence: deposit.sequence() - 1,
        currency: (from_version > 0).then_some(deposit.deposited.currency),
        ..Default::default()
    };
    let Ok(Decision::Apply(events)) = decide(&state, deposit) else {
        panic!("must apply");
    };
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| NewEvent {
            account_id: id(account),
            version: from_version + 1 + i as i64,
            event,
        })
        .collect()
}

/// Waits until some other session of this database waits for a lock.
async fn until_someone_waits_for_a_lock(db: &TestDatabase) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "nobody waited for a lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_appends_at_the_same_version_one_wins_the_other_gets_a_conflict() {
    let db = fresh_db().await;
    let first = Deposit::from_event(&event("ACC-0001", 1, 100));
    let second = Deposit::from_event(&event("ACC-0001", 1, 999));

    let mut tx1 = db.pool.begin().await.unwrap();
    store::append(&mut tx1, &new_events("ACC-0001", 0, &first))
        .await
        .unwrap();
    // The second writer read the same (empty) stream and appends version 1 too; it has to
    // wait for the first one's outcome.
    let pool = db.pool.clone();
    let loser = tokio::spawn(async move {
        let mut tx2 = pool.begin().await.unwrap();
        let result = store::append(&mut tx2, &new_events("ACC-0001", 0, &second)).await;
        tx2.rollback().await.unwrap();
        result
    });
    until_someone_waits_for_a_lock(&db).await;
    tx1.commit().await.unwrap();
    let result = loser.await.unwrap();
    assert!(
        matches!(&result, Err(StoreError::Conflict { detail }) if detail.contains("ACC-0001")),
        "{result:?}"
    );

    // Exactly the winner's events are stored.
    let mut conn = db.pool.acquire().await.unwrap();
    let loaded = store::load_stream(&mut conn, &id("ACC-0001"))
        .await
        .unwrap();
    assert_eq!((loaded.state.version, loaded.state.balance_minor), (2, 100));

    // The loser retries: reloads, decides again on the new state, appends the next version.
    let retry = Deposit::from_event(&event("ACC-0001", 2, 999));
    let Ok(Decision::Apply(events)) = decide(&loaded.state, &retry) else {
        panic!("sequence 2 applies on version 2");
    };
    let events: Vec<NewEvent> = events
        .into_iter()
        .map(|event| NewEvent {
            account_id: id("ACC-0001"),
            version: 3,
            event,
        })
        .collect();
    store::append(&mut conn, &events).await.unwrap();
    let loaded = store::load_stream(&mut conn, &id("ACC-0001"))
        .await
        .unwrap();
    assert_eq!(
        (loaded.state.version, loaded.state.balance_minor),
        (3, 1_099)
    );
    drop(conn);
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn two_handlers_applying_the_same_deposit_at_once_apply_it_once() {
    let db = fresh_db().await;
    let original = event("ACC-0001", 1, 100);
    // The same deposit republished under another event id: the dedup table cannot catch it.
    let mut republished = original.clone();
    republished.event_id = uuid::Uuid::now_v7();

    let handler = AccountHandler::default();
    let mut tx1 = db.pool.begin().await.unwrap();
    handler.handle(&mut tx1, &[original]).await.unwrap();
    let pool = db.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx2 = pool.begin().await.unwrap();
        AccountHandler::default()
            .handle(&mut tx2, &[republished])
            .await
            .unwrap();
        tx2.commit().await.unwrap();
    });
    until_someone_waits_for_a_lock(&db).await;
    tx1.commit().await.unwrap();
    second.await.unwrap();

    assert_eq!(state(&db, "ACC-0001").await, (100, 1, vec![1]));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 2, "AccountOpened and one Deposited");
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn a_handler_beaten_by_an_outside_writer_fails_cleanly_and_its_retry_succeeds() {
    let db = fresh_db().await;
    let deposit = event("ACC-0001", 1, 100);
    let mut outside = db.pool.begin().await.unwrap();
    store::append(
        &mut outside,
        &new_events("ACC-0001", 0, &Deposit::from_event(&deposit)),
    )
    .await
    .unwrap();
    let pool = db.pool.clone();
    let batch = [deposit.clone()];
    let handler = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let result = AccountHandler::default().handle(&mut tx, &batch).await;
        tx.rollback().await.unwrap();
        result
    });
    until_someone_waits_for_a_lock(&db).await;
    outside.commit().await.unwrap();
    let result = handler.await.unwrap();
    assert!(
        matches!(&result, Err(HandlerError::Other(e)) if e.to_string().contains("concurrent append")),
        "{result:?}"
    );
    // What the runtime does next: the same events in a new transaction; now a duplicate.
    handle_with(&db, &AccountHandler::default(), &[deposit]).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let loaded = store::load_stream(&mut conn, &id("ACC-0001"))
        .await
        .unwrap();
    assert_eq!(loaded.state.version, 2);
    assert!(matches!(
        store::read_stream(&mut conn, &id("ACC-0001"), 1, 10)
            .await
            .unwrap()[0]
            .event,
        AccountEvent::Deposited(_)
    ));
    drop(conn);
    db.drop_db().await.unwrap();
}

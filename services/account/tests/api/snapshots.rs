//! Snapshots: taken every N events; loading = latest snapshot + tail = full replay; a snapshot
//! that no longer deserialises is ignored and the stream replayed, never a failure.

use crate::{event, fresh_db, handle_with, id, state};
use account::domain::{AccountState, replay};
use account::handler::AccountHandler;
use account::store;
use eventbank_runtime::testing::TestDatabase;

async fn full_replay(db: &TestDatabase, account: &str) -> AccountState {
    let mut conn = db.pool.acquire().await.unwrap();
    let events = store::read_stream(&mut conn, &id(account), 0, 10_000)
        .await
        .unwrap();
    replay(AccountState::default(), events.iter().map(|e| &e.event))
}

async fn snapshot_versions(db: &TestDatabase) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM snapshots ORDER BY version")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn snapshots_every_n_events_and_loading_is_snapshot_plus_tail() {
    let db = fresh_db().await;
    let handler = AccountHandler::new(5);
    let events: Vec<_> = (1..=19).map(|s| event("ACC-0001", s, s * 11)).collect();
    for e in &events[..12] {
        handle_with(&db, &handler, std::slice::from_ref(e)).await;
    }
    // Versions 1..13: a snapshot whenever the version reaches a multiple of 5.
    assert_eq!(snapshot_versions(&db).await, vec![5, 10]);
    // One batch taking the stream from 13 to 20 crosses 15: one snapshot, of the final state.
    handle_with(&db, &handler, &events[12..]).await;
    assert_eq!(snapshot_versions(&db).await, vec![5, 10, 20]);

    let mut conn = db.pool.acquire().await.unwrap();
    let loaded = store::load_stream(&mut conn, &id("ACC-0001"))
        .await
        .unwrap();
    assert_eq!((loaded.snapshot_version, loaded.replayed), (20, 0));
    assert_eq!(loaded.state, full_replay(&db, "ACC-0001").await);
    let at_12 = store::load_prefix(&mut conn, &id("ACC-0001"), store::Bound::Version(12))
        .await
        .unwrap();
    assert_eq!((at_12.snapshot_version, at_12.replayed), (10, 2));
    assert_eq!(at_12.state.last_sequence, 11);
    drop(conn);
    let expected: i64 = (1..=19).map(|s| s * 11).sum();
    assert_eq!(state(&db, "ACC-0001").await.0, expected);
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_snapshot_is_ignored_and_the_stream_replayed() {
    let db = fresh_db().await;
    let handler = AccountHandler::new(4);
    for s in 1..=9 {
        handle_with(&db, &handler, &[event("ACC-0001", s, 100)]).await;
    }
    assert_eq!(snapshot_versions(&db).await, vec![4, 8]);
    // The newest no longer matches the code's shape; the older one is of an unknown version.
    sqlx::query("UPDATE snapshots SET state = '{\"balance\": \"lots\"}' WHERE version = 8")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE snapshots SET schema_version = 99 WHERE version = 4")
        .execute(&db.pool)
        .await
        .unwrap();

    let mut conn = db.pool.acquire().await.unwrap();
    let loaded = store::load_stream(&mut conn, &id("ACC-0001"))
        .await
        .unwrap();
    assert_eq!((loaded.snapshot_version, loaded.replayed), (0, 10));
    assert_eq!(loaded.state, full_replay(&db, "ACC-0001").await);
    let as_of = store::state_as_of(&mut conn, &id("ACC-0001"), chrono::Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(as_of.state.balance_minor, 900);
    drop(conn);

    // The handler goes on as if there had been no snapshot.
    handle_with(&db, &handler, &[event("ACC-0001", 10, 100)]).await;
    assert_eq!(state(&db, "ACC-0001").await.0, 1_000);
    db.drop_db().await.unwrap();
}

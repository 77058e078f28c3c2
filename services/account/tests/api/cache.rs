//! The state cache never decides on its own: an entry is used only when the store's newest
//! event of the stream is the one it was taken at (same version, same transaction).

use crate::{event, fresh_db, handle_with, state};
use account::handler::AccountHandler;
use eventbank_runtime::consumer::Handler;

#[tokio::test]
async fn the_cache_is_filled_and_kept_across_batches() {
    let db = fresh_db().await;
    let handler = AccountHandler::default();
    handle_with(&db, &handler, &[event("ACC-0001", 1, 100)]).await;
    handle_with(
        &db,
        &handler,
        &[event("ACC-0001", 2, 200), event("ACC-0002", 1, 5)],
    )
    .await;
    assert_eq!(handler.cache.len(), 2);
    assert_eq!(state(&db, "ACC-0001").await, (300, 2, vec![1, 2]));
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn two_replicas_alternating_on_one_account_see_each_others_writes() {
    let db = fresh_db().await;
    let (a, b) = (AccountHandler::default(), AccountHandler::default());
    for sequence in 1..=6 {
        let replica = if sequence % 2 == 1 { &a } else { &b };
        handle_with(&db, replica, &[event("ACC-0001", sequence, 10 * sequence)]).await;
    }
    // A stale entry would have seen sequence 3 as a gap after 1 and parked it.
    assert_eq!(
        state(&db, "ACC-0001").await,
        (210, 6, vec![1, 2, 3, 4, 5, 6])
    );
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn an_entry_from_a_rolled_back_transaction_is_never_used() {
    let db = fresh_db().await;
    let (a, b) = (AccountHandler::default(), AccountHandler::default());
    handle_with(&db, &a, &[event("ACC-0001", 1, 100)]).await;
    // Replica a applies sequence 2 (200), caches the result, and its transaction rolls back.
    let mut tx = db.pool.begin().await.unwrap();
    a.handle(&mut tx, &[event("ACC-0001", 2, 200)])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Replica b then writes version 3 of the stream itself, with other contents: the same
    // version a cached, from another transaction.
    handle_with(&db, &b, &[event("ACC-0001", 2, 500)]).await;
    handle_with(&db, &a, &[event("ACC-0001", 3, 1000)]).await;
    // Trusting the version alone, a would have computed 100 + 200 + 1000.
    assert_eq!(state(&db, "ACC-0001").await, (1600, 3, vec![1, 2, 3]));
    db.drop_db().await.unwrap();
}

//! The ordering rule: duplicates skipped, early deposits parked and applied when the gap fills,
//! whatever the delivery order, batch by batch and through the database.

use crate::{event, fresh_db, handle, id, state};
use account::domain::{AccountState, Deposit};
use account::handler::plan;
use eventbank_events::DepositCompleted;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use std::collections::HashMap;

#[tokio::test]
async fn an_early_event_is_parked_and_applied_when_the_gap_fills() {
    let db = fresh_db().await;
    let events: Vec<_> = (1..=3).map(|s| event("ACC-0001", s, 100 * s)).collect();
    handle(&db, &[events[0].clone(), events[2].clone()]).await;
    let (balance, last, _) = state(&db, "ACC-0001").await;
    assert_eq!((balance, last), (100, 1), "sequence 3 must wait for 2");
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(parked, 1);
    handle(&db, &[events[1].clone()]).await;
    let (balance, last, seqs) = state(&db, "ACC-0001").await;
    assert_eq!((balance, last, seqs), (600, 3, vec![1, 2, 3]));
    let (parked, versions): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pending_events), (SELECT max(version) FROM events)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((parked, versions), (0, 4), "AccountOpened + 3 Deposited");
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn a_deposit_in_another_currency_is_rejected_and_changes_nothing() {
    let db = fresh_db().await;
    handle(&db, &[event("ACC-0001", 1, 100)]).await;
    let mut wrong = event("ACC-0001", 2, 100);
    wrong.currency = eventbank_events::Currency::parse("EUR").unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let result = eventbank_runtime::consumer::Handler::handle(
        &account::handler::AccountHandler::default(),
        &mut tx,
        &[wrong],
    )
    .await;
    assert!(
        matches!(result, Err(eventbank_runtime::consumer::HandlerError::Rejected(ref r)) if r.contains("currency")),
        "{result:?}"
    );
    drop(tx);
    assert_eq!(state(&db, "ACC-0001").await, (100, 1, vec![1]));
    db.drop_db().await.unwrap();
}

/// Pure: any delivery order with any repeats, split into any batches, ends in the same plan
/// outcome as in-order delivery: every sequence applied once, nothing left parked.
#[test]
fn the_plan_is_order_and_duplicate_insensitive() {
    let strategy = (1usize..30).prop_flat_map(|n| {
        (
            Just(n),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            proptest::collection::vec(0..n, 0..15),
            proptest::collection::vec(1usize..6, 1..40),
        )
    });
    let mut runner = TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(&strategy, |(n, order, repeats, batch_sizes)| {
            let events: Vec<Deposit> = (1..=n as i64)
                .map(|s| Deposit::from_event(&event("ACC-0001", s, s * 3)))
                .collect();
            let mut delivery: Vec<Deposit> = order.iter().map(|&i| events[i].clone()).collect();
            for (k, &i) in repeats.iter().enumerate() {
                let at = (k * 7) % (delivery.len() + 1);
                delivery.insert(at, events[i].clone());
            }
            // Replay the plans batch by batch, carrying state and parking like the store does.
            let mut st = AccountState::default();
            let mut parked: Vec<Deposit> = Vec::new();
            let mut applied: Vec<i64> = Vec::new();
            let mut rest = delivery.as_slice();
            let mut sizes = batch_sizes.iter().cycle();
            while !rest.is_empty() {
                let size = (*sizes.next().unwrap()).min(rest.len());
                let (batch, tail) = rest.split_at(size);
                rest = tail;
                let states = HashMap::from([(id("ACC-0001"), st.clone())]);
                let p = plan(states, parked.clone(), batch).unwrap();
                for e in &p.appends {
                    if let account::domain::AccountEvent::Deposited(d) = &e.event {
                        applied.push(d.sequence);
                    }
                    st = account::domain::apply(st, &e.event);
                }
                parked.retain(|d| !p.unpark.contains(&(d.account_id.clone(), d.sequence())));
                parked.extend(p.park.iter().cloned());
            }
            prop_assert_eq!(applied, (1..=n as i64).collect::<Vec<_>>());
            prop_assert!(parked.is_empty(), "left parked: {:?}", parked);
            prop_assert_eq!(st.balance_minor, (1..=n as i64).map(|s| s * 3).sum::<i64>());
            prop_assert_eq!(st.version, n as i64 + 1);
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn shuffled_and_repeated_sequences_end_in_the_clean_state() {
    let db = fresh_db().await;
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    let strategy = (2usize..25).prop_flat_map(|n| {
        (
            Just(n),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            proptest::collection::vec(0..n, 0..10),
        )
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&strategy, |(n, order, repeats)| {
            let n_case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let account = format!("ACC-{n_case:04}");
            let events: Vec<_> = (1..=n as i64).map(|s| event(&account, s, s * 7)).collect();
            let mut delivery: Vec<DepositCompleted> =
                order.iter().map(|&i| events[i].clone()).collect();
            delivery.extend(repeats.iter().map(|&i| events[i].clone()));
            let rt = tokio::runtime::Handle::current();
            let (balance, last, seqs) = tokio::task::block_in_place(|| {
                rt.block_on(async {
                    // One event per transaction, as separate deliveries would be.
                    for e in &delivery {
                        handle(&db, std::slice::from_ref(e)).await;
                    }
                    state(&db, &account).await
                })
            });
            let expected: i64 = (1..=n as i64).map(|s| s * 7).sum();
            prop_assert_eq!(balance, expected);
            prop_assert_eq!(last, n as i64);
            prop_assert_eq!(seqs, (1..=n as i64).collect::<Vec<_>>());
            Ok(())
        })
        .unwrap();
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);
    db.drop_db().await.unwrap();
}

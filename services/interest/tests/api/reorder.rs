//! Duplicated and reordered delivery ends in the same state as clean delivery: the same
//! deposits, the same closing balance of every day and the same accrual of every day.

use crate::helpers::{State, deposit, setup, shuffled, usd};
use eventbank_events::DepositCompleted;

/// Two accounts; deposits on several days, two on one day, either side of midnight, and one
/// dated days before the others.
fn scenario() -> Vec<DepositCompleted> {
    let mut events = vec![
        usd("ACC-RO1", 123_456, "2024-02-27T10:00:00Z"),
        usd("ACC-RO1", 10_000, "2024-02-28T23:59:59Z"),
        usd("ACC-RO1", 20_000, "2024-02-29T00:00:00Z"),
        usd("ACC-RO1", 5, "2024-02-29T12:00:00Z"),
        usd("ACC-RO1", 999_999, "2024-03-03T08:00:00Z"),
        usd("ACC-RO1", 1, "2024-02-20T08:00:00Z"),
        deposit("ACC-RO2", "EUR", 365_000, "2024-03-01T00:00:00Z"),
        deposit("ACC-RO2", "EUR", 1_234, "2024-03-02T23:59:59Z"),
        deposit("ACC-RO2", "EUR", 77_777, "2024-02-25T06:00:00Z"),
    ];
    for (i, e) in events.iter_mut().enumerate() {
        e.sequence = i64::try_from(i).unwrap() + 1;
    }
    events
}

#[tokio::test]
async fn duplicated_and_reordered_delivery_ends_in_the_same_state_as_clean_delivery() {
    let events = scenario();

    // Clean: once each, in time order, one event per transaction.
    let app = setup().await;
    let mut in_order = events.clone();
    in_order.sort_by_key(|e| e.occurred_at);
    for e in &in_order {
        assert_eq!(app.deliver(std::slice::from_ref(e)).await, 1);
    }
    let expected: State = app.state().await;
    app.finish().await;
    assert_eq!(expected.deposits.len(), events.len());
    // Dense accruals from each account's first day to its last: Feb 20..Mar 3 and Feb 25..Mar 2.
    assert_eq!(expected.accruals.len(), 13 + 7);

    for seed in [1_u64, 2, 3, 99, 12_345] {
        let app = setup().await;
        // Shuffled, every event twice (a third of them twice in one batch), batches of 1..4,
        // through the runtime's dedup insert.
        let mut deliveries = Vec::new();
        for (i, e) in shuffled(&events, seed).into_iter().enumerate() {
            if i % 3 == 0 {
                deliveries.push(e.clone());
            }
            deliveries.push(e);
        }
        deliveries.extend(shuffled(&events, seed.wrapping_mul(31)));
        let mut applied = 0;
        let mut rest = deliveries.as_slice();
        let mut size = 1;
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(size.min(rest.len()));
            applied += app.deliver(batch).await;
            rest = tail;
            size = size % 4 + 1;
        }
        assert_eq!(
            applied,
            events.len(),
            "seed {seed}: each event applied once"
        );
        assert_eq!(app.state().await, expected, "seed {seed}");
        app.finish().await;
    }
}

//! Duplicated and reordered delivery ends in the same state as clean delivery.
//!
//! "The same state" for compliance: the same audit entries by content (positions and
//! recording times follow delivery order by design) in a chain that verifies, the same
//! deposits, and the same active alerts, field for field.

use crate::helpers::{State, at, hours, setup, shuffled, usd};
use eventbank_events::DepositCompleted;

/// Three accounts whose alerts depend on order unless the rules are order-independent:
/// - ACC-R1: X 00:00, Y 10:00 and Z 05:00, each 6,000.00: in time order X + Z reach the
///   threshold at 05:00 (one alert, Z's); Y arriving before Z would alert on its own window.
/// - ACC-R2: five 3,000.00 deposits two hours apart (one alert, at the 4th), a CTR at exactly
///   10,000.00 and 9,999.99 that alerts on nothing by itself.
/// - ACC-R3: 5,000.00, then 25 h later 5,000.00 (nothing), then 23 h later 5,000.00 (alert).
fn scenario() -> Vec<DepositCompleted> {
    let day = at("2024-01-01T00:00:00Z");
    let mut events = vec![
        usd("ACC-R1", 600_000, day),
        usd("ACC-R1", 600_000, day + hours(10)),
        usd("ACC-R1", 600_000, day + hours(5)),
        usd("ACC-R2", 1_000_000, day + hours(30)),
        usd("ACC-R2", 999_999, day + hours(80)),
        usd("ACC-R3", 500_000, day),
        usd("ACC-R3", 500_000, day + hours(25)),
        usd("ACC-R3", 500_000, day + hours(48)),
    ];
    events.extend((0..5).map(|i| usd("ACC-R2", 300_000, day + hours(2 * i))));
    for (i, e) in events.iter_mut().enumerate() {
        e.sequence = i64::try_from(i).unwrap() + 1;
    }
    events
}

/// Clean input: every event once, in time order, one batch of three at a time.
async fn clean(events: &[DepositCompleted]) -> State {
    let app = setup().await;
    let mut in_order = events.to_vec();
    in_order.sort_by_key(|e| e.occurred_at);
    for batch in in_order.chunks(3) {
        assert_eq!(app.deliver(batch).await, batch.len());
    }
    let state = app.state().await;
    app.finish().await;
    state
}

/// Messy input: the events shuffled, every one delivered twice (some twice in one batch,
/// some again batches later), in batches of one to four, through the runtime's dedup insert.
async fn messy(events: &[DepositCompleted], seed: u64) -> State {
    let app = setup().await;
    let order = shuffled(events, seed);
    let mut deliveries: Vec<DepositCompleted> = Vec::new();
    for (i, e) in order.iter().enumerate() {
        deliveries.push(e.clone());
        if i % 3 == 0 {
            deliveries.push(e.clone()); // a duplicate in the same batch
        }
    }
    // Redeliveries of everything, in another order, after the first copies.
    deliveries.extend(shuffled(events, seed ^ 0x5eed));
    let mut applied = 0;
    let mut rest = deliveries.as_slice();
    let mut size = 1;
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(size.min(rest.len()));
        applied += app.deliver(batch).await;
        rest = tail;
        size = size % 4 + 1;
    }
    assert_eq!(applied, events.len(), "each event applied exactly once");
    let state = app.state().await;
    app.finish().await;
    state
}

#[tokio::test]
async fn duplicated_and_reordered_delivery_ends_in_the_same_state_as_clean_delivery() {
    let events = scenario();
    let expected = clean(&events).await;

    // The clean state is the one the rules describe.
    assert!(expected.chain_verifies);
    assert_eq!(expected.audit.len(), events.len());
    assert_eq!(expected.deposits.len(), events.len());
    let mut alerts: Vec<(String, String, uuid::Uuid, i64)> = expected
        .alerts
        .iter()
        .map(|a| (a.0.clone(), a.1.clone(), a.2, a.3))
        .collect();
    alerts.sort();
    let mut want = vec![
        ("ctr".into(), "ACC-R2".into(), events[3].event_id, 1_000_000),
        (
            "structuring".into(),
            "ACC-R1".into(),
            events[2].event_id,
            1_200_000,
        ),
        (
            "structuring".into(),
            "ACC-R2".into(),
            events[11].event_id,
            1_200_000,
        ),
        (
            "structuring".into(),
            "ACC-R3".into(),
            events[7].event_id,
            1_000_000,
        ),
    ];
    want.sort();
    assert_eq!(alerts, want);

    // The order given above (Z after Y), then a few shuffles.
    for seed in [0, 1, 7, 42, 2024] {
        let order = if seed == 0 {
            events.clone()
        } else {
            shuffled(&events, seed)
        };
        let state = if seed == 0 {
            messy_in_given_order(&order).await
        } else {
            messy(&events, seed).await
        };
        assert_eq!(state, expected, "delivery order from seed {seed}");
    }
}

/// The events in the given order, each delivered twice in a row within one batch.
async fn messy_in_given_order(order: &[DepositCompleted]) -> State {
    let app = setup().await;
    for e in order {
        assert_eq!(app.deliver(&[e.clone(), e.clone()]).await, 1);
        assert_eq!(app.deliver(std::slice::from_ref(e)).await, 0);
    }
    let state = app.state().await;
    app.finish().await;
    state
}

/// Partitions apply their batches concurrently (each account in one partition, as the
/// consistent-hash exchange routes them): the rules of different accounts run side by side and
/// only the chain append queues, and the end state is still the clean one, in a chain that
/// verifies with gap-free positions.
#[tokio::test]
async fn partitions_applying_concurrently_end_in_the_same_state_as_clean_delivery() {
    let events = scenario();
    let expected = clean(&events).await;
    for seed in [3, 11, 99] {
        let app = setup().await;
        let order = shuffled(&events, seed);
        let partitions: Vec<Vec<DepositCompleted>> = ["ACC-R1", "ACC-R2", "ACC-R3"]
            .iter()
            .map(|account| {
                let mut mine: Vec<DepositCompleted> = order
                    .iter()
                    .filter(|e| e.account_id.as_str() == *account)
                    .cloned()
                    .collect();
                // Every event delivered twice, the copies a batch apart.
                let again = mine.clone();
                mine.extend(again);
                mine
            })
            .collect();
        let applied: usize = futures_util::future::join_all(partitions.iter().map(|p| {
            let app = &app;
            async move {
                let mut n = 0;
                for batch in p.chunks(2) {
                    n += app.deliver(batch).await;
                }
                n
            }
        }))
        .await
        .into_iter()
        .sum();
        assert_eq!(applied, events.len(), "each event applied exactly once");
        let positions: Vec<i64> =
            sqlx::query_scalar("SELECT position FROM audit_log ORDER BY position")
                .fetch_all(&app.db.pool)
                .await
                .unwrap();
        let want: Vec<i64> = (1..=i64::try_from(events.len()).unwrap()).collect();
        assert_eq!(positions, want, "gap-free positions");
        let state = app.state().await;
        app.finish().await;
        assert_eq!(state, expected, "concurrent partitions, seed {seed}");
    }
}

//! account tests against a real Postgres: the ordering rule and the queries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use account::handler::AccountHandler;
use chrono::Utc;
use eventbank_events::{AccountId, AccountSnapshot, Currency, DepositCompleted};
use eventbank_runtime::consumer::Handler;
use eventbank_runtime::testing::TestDatabase;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use uuid::Uuid;

fn event(account: &str, sequence: i64, amount_minor: i64) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence,
        time: Utc::now(),
        traceparent: None,
        schema_version: 1,
        deposit_id: Uuid::now_v7(),
        account_id: AccountId::parse(account).unwrap(),
        amount_minor,
        currency: Currency::parse("USD").unwrap(),
        account: AccountSnapshot {
            holder_name: "T".into(),
            email: "t@example.com".into(),
        },
        occurred_at: Utc::now(),
    }
}

async fn handle(db: &TestDatabase, events: &[DepositCompleted]) {
    let mut tx = db.pool.begin().await.unwrap();
    AccountHandler.handle(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

async fn state(db: &TestDatabase, account: &str) -> (i64, i64, Vec<i64>) {
    let mut conn = db.pool.acquire().await.unwrap();
    let balance = account::store::balance(&mut conn, account)
        .await
        .unwrap()
        .unwrap();
    let txns = account::store::transactions(&mut conn, account, 0, 1000)
        .await
        .unwrap();
    (
        balance.balance_minor,
        balance.last_sequence,
        txns.iter().map(|t| t.sequence).collect(),
    )
}

#[tokio::test]
async fn an_early_event_is_parked_and_applied_when_the_gap_fills() {
    let db = TestDatabase::create("account", &account::MIGRATOR)
        .await
        .unwrap();
    let events: Vec<_> = (1..=3).map(|s| event("ACC-0001", s, 100 * s)).collect();
    handle(&db, &[events[0].clone(), events[2].clone()]).await;
    let (balance, last, _) = state(&db, "ACC-0001").await;
    assert_eq!((balance, last), (100, 1), "sequence 3 must wait for 2");
    handle(&db, &[events[1].clone()]).await;
    let (balance, last, seqs) = state(&db, "ACC-0001").await;
    assert_eq!((balance, last, seqs), (600, 3, vec![1, 2, 3]));
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn shuffled_and_repeated_sequences_end_in_the_clean_state() {
    let db = TestDatabase::create("account", &account::MIGRATOR)
        .await
        .unwrap();
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
    db.drop_db().await.unwrap();
}

async fn serve(db: &TestDatabase) -> String {
    let state = account::api::AppState {
        pool: db.pool.clone(),
        max_wait: std::time::Duration::from_secs(5),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, account::api::app(state)).await;
    });
    base
}

#[tokio::test]
async fn read_your_writes_waits_for_the_sequence_or_answers_a_problem() {
    let db = TestDatabase::create("account", &account::MIGRATOR)
        .await
        .unwrap();
    let base = serve(&db).await;
    handle(&db, &[event("ACC-0001", 1, 500)]).await;
    let client = reqwest::Client::new();

    // Sequence 2 arrives while the query waits: the answer includes it.
    let waiting = client
        .get(format!("{base}/accounts/ACC-0001?min_sequence=2&wait=3s"))
        .send();
    let apply_later = async {
        handle(&db, &[event("ACC-0001", 2, 250)]).await;
    };
    let (res, ()) = tokio::join!(waiting, apply_later);
    let res = res.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["balance_minor"], 750);
    assert_eq!(body["balance"], "7.50");

    // Sequence 5 never arrives: a problem naming both sequences, with Retry-After.
    let res = client
        .get(format!(
            "{base}/accounts/ACC-0001?min_sequence=5&wait=200ms"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["retry-after"], "1");
    let problem: serde_json::Value = res.json().await.unwrap();
    assert_eq!(problem["current_sequence"], 2);
    assert_eq!(problem["min_sequence"], 5);

    let res = client
        .get(format!("{base}/accounts/ACC-0001?wait=forever"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = client
        .get(format!("{base}/accounts/ACC-0404"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = client
        .get(format!("{base}/accounts/ACC-0001/transactions?limit=1"))
        .send()
        .await
        .unwrap();
    let page: serde_json::Value = res.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after_sequence"], 1);
    db.drop_db().await.unwrap();
}

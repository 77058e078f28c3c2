//! Group commit: deposits that arrive together share one transaction, each is answered as if it
//! had been alone, and one failing deposit costs the others only a retry.

use crate::TestApp;
use deposit::error::ApiError;
use deposit::validate::ValidDeposit;
use deposit::wakeup::OutboxSignal;
use deposit::writer::{self, Accepted, Outcome, Request};
use eventbank_events::{AccountId, Currency, Money};
use eventbank_runtime::testing::TestDatabase;
use serde_json::json;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashSet};

fn request(account: &str, amount: &str, currency: &str, key: Option<&str>) -> Request {
    let currency = Currency::parse(currency).unwrap();
    Request {
        key: key.map(str::to_owned),
        deposit: ValidDeposit {
            account_id: AccountId::parse(account).unwrap(),
            money: Money::parse_positive(amount, currency).unwrap(),
            channel: None,
            reference: None,
        },
        traceparent: None,
    }
}

async fn database() -> TestDatabase {
    let db = TestDatabase::create("deposit", &deposit::MIGRATOR)
        .await
        .unwrap();
    deposit::store::seed_demo_accounts(&db.pool).await.unwrap();
    db
}

/// The transaction (xmin) that inserted each deposit, by deposit id.
async fn transactions(pool: &PgPool) -> BTreeMap<uuid::Uuid, String> {
    sqlx::query_as::<_, (uuid::Uuid, String)>("SELECT deposit_id, xmin::text FROM deposits")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Each account's sequences in outbox (publishing) order.
async fn outbox_sequences(pool: &PgPool) -> BTreeMap<String, Vec<i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT account_id, sequence FROM outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut by_account: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (account, sequence) in rows {
        by_account.entry(account).or_default().push(sequence);
    }
    by_account
}

fn created(outcome: &Outcome) -> Option<&deposit::store::DepositRow> {
    match outcome {
        Ok(Accepted::Created { row, .. }) => Some(row),
        _ => None,
    }
}

#[tokio::test]
async fn a_batch_is_one_transaction_and_refusals_stay_out_of_it() {
    let db = database().await;
    sqlx::query("UPDATE accounts SET status = 'closed' WHERE account_id = 'ACC-0003'")
        .execute(&db.pool)
        .await
        .unwrap();
    // An earlier request stored key "used" with another body.
    let earlier = writer::store_batch(
        &db.pool,
        &OutboxSignal::new(),
        &[&request("ACC-0001", "9.00", "USD", Some("used"))],
    )
    .await;
    assert!(created(&earlier[0]).is_some());
    let batch = [
        request("ACC-0001", "1.00", "USD", None),
        request("ACC-9999", "1.00", "USD", Some("unknown")),
        request("ACC-0004", "2.00", "USD", Some("fresh")),
        request("ACC-0001", "3.00", "EUR", None),
        request("ACC-0003", "4", "JPY", None),
        request("ACC-0001", "5.00", "USD", Some("used")),
        request("ACC-0002", "6.00", "EUR", None),
        request("ACC-0001", "7.00", "USD", None),
    ];
    let refs: Vec<&Request> = batch.iter().collect();
    let outcomes = writer::store_batch(&db.pool, &OutboxSignal::new(), &refs).await;

    assert!(matches!(outcomes[1], Err(ApiError::UnknownAccount(_))));
    assert!(matches!(
        outcomes[3],
        Err(ApiError::CurrencyMismatch { .. })
    ));
    assert!(matches!(outcomes[4], Err(ApiError::AccountClosed(_))));
    assert!(matches!(outcomes[5], Err(ApiError::IdempotencyKeyReused)));
    let stored: Vec<_> = [0, 2, 6, 7]
        .iter()
        .map(|&i| created(&outcomes[i]).expect("stored"))
        .collect();
    // ACC-0001 had sequence 1 from the earlier batch: its two deposits here take 2 and 3,
    // skipping nothing for the refused ones between them.
    let sequences: Vec<(&str, i64)> = stored
        .iter()
        .map(|r| (r.account_id.as_str(), r.sequence))
        .collect();
    assert_eq!(
        sequences,
        [
            ("ACC-0001", 2),
            ("ACC-0004", 1),
            ("ACC-0002", 1),
            ("ACC-0001", 3)
        ]
    );
    let tx = transactions(&db.pool).await;
    let batch_tx: HashSet<&String> = stored.iter().map(|r| &tx[&r.deposit_id]).collect();
    assert_eq!(
        batch_tx.len(),
        1,
        "the batch's deposits share one transaction"
    );
    assert_eq!(tx.len(), 5);
    let outbox = outbox_sequences(&db.pool).await;
    assert_eq!(outbox["ACC-0001"], [1, 2, 3]);
    // The refused keyed request gave its key back; the stored one answers again.
    let keys: Vec<(String, i32)> =
        sqlx::query_as("SELECT key, status_code FROM idempotency_keys ORDER BY key")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(keys, [("fresh".to_owned(), 201), ("used".to_owned(), 201)]);
    let again = writer::store_batch(
        &db.pool,
        &OutboxSignal::new(),
        &[&request("ACC-0004", "2.00", "USD", Some("fresh"))],
    )
    .await;
    match &again[0] {
        Ok(Accepted::Replayed { status, body }) => {
            assert_eq!(status.as_u16(), 201);
            assert_eq!(body["deposit_id"], json!(stored[1].deposit_id));
        }
        _ => panic!("the stored answer is replayed"),
    }
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn a_failing_deposit_costs_its_batch_only_a_retry() {
    let db = database().await;
    // A rule the service does not know, so the statement storing the batch fails for one of
    // its deposits.
    sqlx::query("ALTER TABLE deposits ADD CONSTRAINT no_666 CHECK (amount_minor <> 666)")
        .execute(&db.pool)
        .await
        .unwrap();
    let batch = [
        request("ACC-0001", "1.00", "USD", Some("a")),
        request("ACC-0001", "6.66", "USD", Some("b")),
        request("ACC-0001", "2.00", "USD", Some("c")),
        request("ACC-0004", "3.00", "USD", None),
    ];
    let refs: Vec<&Request> = batch.iter().collect();
    let relay = OutboxSignal::new();
    relay.set_leader(true);
    relay.arm();
    let outcomes = writer::store_batch(&db.pool, &relay, &refs).await;
    assert!(matches!(outcomes[1], Err(ApiError::Internal(_))));
    for i in [0, 2, 3] {
        assert!(created(&outcomes[i]).is_some(), "deposit {i} is stored");
    }
    // Gap-free: the failed deposit's sequence went to the next one.
    assert_eq!(outbox_sequences(&db.pool).await["ACC-0001"], [1, 2]);
    // The relay is handed exactly the committed outbox rows, with their ids; nothing of the
    // rolled-back batch.
    let mut handed: Vec<(i64, uuid::Uuid, String, i64)> = relay
        .take()
        .expect("every committed row was handed over")
        .into_iter()
        .map(|r| (r.id, r.event_id, r.account_id, r.sequence))
        .collect();
    handed.sort();
    let outbox: Vec<(i64, uuid::Uuid, String, i64)> =
        sqlx::query_as("SELECT id, event_id, account_id, sequence FROM outbox ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(handed, outbox);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(keys, ["a", "c"]);
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_share_commits() {
    let app = TestApp::spawn().await;
    let accounts = ["ACC-0001", "ACC-0004"];
    let bodies: Vec<String> = (0..64)
        .map(|i| {
            json!({"account_id": accounts[i % 2], "amount": "1.00", "currency": "USD"}).to_string()
        })
        .collect();
    let results =
        futures_util::future::join_all(bodies.iter().map(|b| app.post("/deposits", b, &[]))).await;
    for (status, body, _) in &results {
        assert_eq!(*status, 201, "{body}");
    }
    let tx = transactions(&app.db.pool).await;
    let distinct: HashSet<&String> = tx.values().collect();
    assert_eq!(tx.len(), 64);
    assert!(
        distinct.len() <= 32,
        "64 concurrent deposits took {} transactions",
        distinct.len()
    );
    let outbox = outbox_sequences(&app.db.pool).await;
    for account in accounts {
        assert_eq!(outbox[account], (1..=32).collect::<Vec<i64>>(), "{account}");
    }
    app.cleanup().await;
}

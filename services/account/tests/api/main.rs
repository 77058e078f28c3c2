//! account tests against a real Postgres (a fresh database per test): the aggregate and codec
//! properties, the ordering rule, the event store's concurrency, snapshots, the rebuild, point
//! in time, read-your-writes, SSE and the gap monitor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod concurrency;
mod gaps;
mod openapi;
mod ordering;
mod point_in_time;
mod properties;
mod read_your_writes;
mod rebuild;
mod snapshots;
mod sse;

use account::changes::Changes;
use account::handler::AccountHandler;
use chrono::{DateTime, Utc};
use eventbank_events::{AccountId, AccountSnapshot, Currency, DepositCompleted};
use eventbank_runtime::consumer::Handler;
use eventbank_runtime::testing::TestDatabase;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub async fn fresh_db() -> TestDatabase {
    TestDatabase::create("account", &account::MIGRATOR)
        .await
        .unwrap()
}

pub fn event(account: &str, sequence: i64, amount_minor: i64) -> DepositCompleted {
    event_at(account, sequence, amount_minor, Utc::now())
}

pub fn event_at(
    account: &str,
    sequence: i64,
    amount_minor: i64,
    occurred_at: DateTime<Utc>,
) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence,
        time: occurred_at,
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
        occurred_at,
        channel: None,
        reference: None,
    }
}

/// The id of a test account (a valid literal).
pub fn id(account: &str) -> AccountId {
    AccountId::parse(account).unwrap()
}

/// Applies events in one transaction, as one consumer batch (snapshots every 50).
pub async fn handle(db: &TestDatabase, events: &[DepositCompleted]) {
    handle_with(db, &AccountHandler::default(), events).await;
}

pub async fn handle_with(db: &TestDatabase, handler: &AccountHandler, events: &[DepositCompleted]) {
    let mut tx = db.pool.begin().await.unwrap();
    handler.handle(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

/// (balance, last sequence, transaction sequences) from the projections.
pub async fn state(db: &TestDatabase, account: &str) -> (i64, i64, Vec<i64>) {
    let mut conn = db.pool.acquire().await.unwrap();
    let balance = account::store::balance(&mut conn, &id(account))
        .await
        .unwrap()
        .unwrap();
    let txns = account::store::transactions(&mut conn, &id(account), 0, 1000)
        .await
        .unwrap();
    (
        balance.balance_minor,
        balance.last_sequence,
        txns.iter().map(|t| t.sequence).collect(),
    )
}

/// The API on port 0 with its NOTIFY listener; stopped (SSE streams end) when the token is
/// cancelled.
pub struct Served {
    pub base: String,
    pub stop: CancellationToken,
    pub changes: Changes,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn serve(db: &TestDatabase) -> Served {
    let stop = CancellationToken::new();
    let changes = Changes::new();
    let mut ready = changes.subscribe();
    tokio::spawn(changes.clone().listen(db.pool.clone(), stop.clone()));
    // The listener's first signal (a resync) means it is listening.
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .expect("listener did not start")
        .unwrap();
    let state = account::api::AppState {
        pool: db.pool.clone(),
        max_wait: Duration::from_secs(5),
        changes: changes.clone(),
        stop: stop.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, account::api::app(state))
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
    });
    Served {
        base,
        stop,
        changes,
    }
}

pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let res = reqwest::get(url).await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

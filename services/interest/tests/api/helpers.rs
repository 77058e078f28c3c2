//! Test fixtures: a fresh database per test, event builders, and the runtime's dedup transaction.

use chrono::{DateTime, NaiveDate, Utc};
use eventbank_events::{AccountId, AccountSnapshot, Currency, DepositCompleted};
use eventbank_runtime::consumer::Handler;
use eventbank_runtime::testing::TestDatabase;
use interest::{AppState, InterestHandler, MIGRATOR};
use uuid::Uuid;

pub struct TestApp {
    pub db: TestDatabase,
    pub handler: InterestHandler,
}

pub async fn setup() -> TestApp {
    TestApp {
        db: TestDatabase::create("interest", &MIGRATOR)
            .await
            .expect("test database"),
        handler: InterestHandler::default(),
    }
}

pub fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A deposit event as the deposit service would emit it.
pub fn deposit(
    account: &str,
    currency: &str,
    amount_minor: i64,
    occurred_at: &str,
) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence: 1,
        time: Utc::now(),
        traceparent: None,
        schema_version: 1,
        deposit_id: Uuid::now_v7(),
        account_id: AccountId::parse(account).unwrap(),
        amount_minor,
        currency: Currency::parse(currency).unwrap(),
        account: AccountSnapshot {
            holder_name: "Test Holder".into(),
            email: "holder@example.com".into(),
        },
        occurred_at: at(occurred_at),
        channel: None,
        reference: None,
    }
}

pub fn usd(account: &str, amount_minor: i64, occurred_at: &str) -> DepositCompleted {
    deposit(account, "USD", amount_minor, occurred_at)
}

impl TestApp {
    /// Applies `events` in one transaction, directly through the handler.
    pub async fn apply(&self, events: &[DepositCompleted]) {
        self.try_apply(events)
            .await
            .expect("handler applies the events");
    }

    pub async fn try_apply(
        &self,
        events: &[DepositCompleted],
    ) -> Result<(), eventbank_runtime::consumer::HandlerError> {
        let mut tx = self.db.pool.begin().await.unwrap();
        self.handler.handle(&mut tx, events).await?;
        tx.commit().await.unwrap();
        Ok(())
    }

    /// Delivers `events` through the consumer runtime's own dedup transaction. Returns how
    /// many were new.
    pub async fn deliver(&self, events: &[DepositCompleted]) -> usize {
        eventbank_runtime::consumer::deliver(&self.db.pool, &self.handler, events)
            .await
            .unwrap()
            .len()
    }

    /// The account's closing-balance rows as (day, balance).
    pub async fn balances(&self, account: &str) -> Vec<(String, i64)> {
        let rows: Vec<(NaiveDate, i64)> = sqlx::query_as(
            "SELECT day, closing_balance_minor FROM daily_balances WHERE account_id = $1 ORDER BY day",
        )
        .bind(account)
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        rows.into_iter().map(|(d, b)| (d.to_string(), b)).collect()
    }

    /// The account's stored accrual rows as (day, balance, rate percent text, accrued_micro).
    pub async fn accruals(&self, account: &str) -> Vec<(String, i64, String, i64)> {
        let rows: Vec<(NaiveDate, i64, String, i64)> = sqlx::query_as(
            "SELECT day, balance_minor, annual_rate_percent::text, accrued_micro \
               FROM daily_accruals WHERE account_id = $1 ORDER BY day",
        )
        .bind(account)
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(d, b, r, m)| (d.to_string(), b, r, m))
            .collect()
    }

    /// Serves the API on an ephemeral port; returns its base URL.
    pub async fn serve(&self) -> String {
        eventbank_runtime::testing::serve_router(interest::app(AppState {
            pool: self.db.pool.clone(),
        }))
        .await
        .unwrap()
    }

    pub async fn get(&self, base: &str, path: &str) -> (u16, String, serde_json::Value) {
        let response = reqwest::get(format!("{base}{path}")).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, content_type, body)
    }

    pub async fn finish(self) {
        self.db.drop_db().await.expect("drop test database");
    }
}

pub use eventbank_runtime::testing::shuffled;

/// Everything the interest service keeps, without the columns that only say when a row was
/// written: accounts, deposits, closing balances, accruals.
#[derive(Debug, PartialEq, Eq)]
pub struct State {
    pub accounts: Vec<(String, String)>,
    pub deposits: Vec<(Uuid, String, i64, NaiveDate)>,
    pub balances: Vec<(String, NaiveDate, String, i64)>,
    pub accruals: Vec<(String, NaiveDate, String, String, i64, i64)>,
}

impl TestApp {
    pub async fn state(&self) -> State {
        let pool = &self.db.pool;
        State {
            accounts: sqlx::query_as("SELECT account_id, currency FROM accounts ORDER BY 1")
                .fetch_all(pool)
                .await
                .unwrap(),
            deposits: sqlx::query_as(
                "SELECT event_id, account_id, amount_minor, business_day FROM deposits ORDER BY 1",
            )
            .fetch_all(pool)
            .await
            .unwrap(),
            balances: sqlx::query_as(
                "SELECT account_id, day, currency, closing_balance_minor FROM daily_balances \
                  ORDER BY 1, 2",
            )
            .fetch_all(pool)
            .await
            .unwrap(),
            accruals: sqlx::query_as(
                "SELECT account_id, day, currency, annual_rate_percent::text, balance_minor, \
                        accrued_micro FROM daily_accruals ORDER BY 1, 2",
            )
            .fetch_all(pool)
            .await
            .unwrap(),
        }
    }
}

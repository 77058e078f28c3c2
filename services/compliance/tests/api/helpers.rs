//! Test fixtures: a fresh database per test, event builders, and the runtime's dedup transaction.

use chrono::{DateTime, TimeDelta, Utc};
use compliance::{AppState, ComplianceHandler, MIGRATOR};
use eventbank_events::{AccountId, AccountSnapshot, Currency, DepositCompleted};
use eventbank_runtime::consumer::Handler;
use eventbank_runtime::testing::TestDatabase;
use uuid::Uuid;

pub struct TestApp {
    pub db: TestDatabase,
    pub handler: ComplianceHandler,
}

/// Default rules: threshold 1,000,000 minor, 24 h window.
pub async fn setup() -> TestApp {
    TestApp {
        db: TestDatabase::create("compliance", &MIGRATOR)
            .await
            .expect("test database"),
        handler: ComplianceHandler::default(),
    }
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn hours(h: i64) -> TimeDelta {
    TimeDelta::hours(h)
}

/// A USD deposit event as the deposit service would emit it.
pub fn usd(account: &str, amount_minor: i64, occurred_at: DateTime<Utc>) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence: 1,
        time: Utc::now(),
        traceparent: None,
        schema_version: 1,
        deposit_id: Uuid::now_v7(),
        account_id: AccountId::parse(account).unwrap(),
        amount_minor,
        currency: Currency::parse("USD").unwrap(),
        account: AccountSnapshot {
            holder_name: "Test Holder".into(),
            email: "holder@example.com".into(),
        },
        occurred_at,
    }
}

impl TestApp {
    /// Applies `events` in one transaction, directly through the handler.
    pub async fn apply(&self, events: &[DepositCompleted]) {
        let mut tx = self.db.pool.begin().await.unwrap();
        self.handler
            .handle(&mut tx, events)
            .await
            .expect("handler applies the events");
        tx.commit().await.unwrap();
    }

    /// What the consumer runtime does: record the ids in processed_events, hand only the new
    /// ones to the handler, commit. Returns how many were new.
    pub async fn deliver(&self, events: &[DepositCompleted]) -> usize {
        let mut tx = self.db.pool.begin().await.unwrap();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let new: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO processed_events (event_id) SELECT DISTINCT UNNEST($1::uuid[]) \
             ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let fresh: Vec<DepositCompleted> = events
            .iter()
            .filter(|e| new.contains(&e.event_id))
            .cloned()
            .collect();
        if !fresh.is_empty() {
            self.handler.handle(&mut tx, &fresh).await.unwrap();
        }
        tx.commit().await.unwrap();
        fresh.len()
    }

    /// Alerts as (kind, account_id, amount_minor, event_id).
    pub async fn alerts(&self) -> Vec<(String, String, i64, Uuid)> {
        sqlx::query_as("SELECT kind, account_id, amount_minor, event_id FROM alerts ORDER BY id")
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// Runs `statement` on audit_log with the append-only trigger disabled, as a superuser (or
    /// the owner) could: the tampering that verification must detect.
    pub async fn tamper(&self, statement: &str) {
        let mut tx = self.db.pool.begin().await.unwrap();
        for sql in [
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete",
            statement,
            "ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Serves the API on an ephemeral port; returns its base URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = compliance::app(AppState {
            pool: self.db.pool.clone(),
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        format!("http://{addr}")
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

//! deposit API tests against a real Postgres (fresh database per test), over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deposits;
mod openapi;

use deposit::{Config, DepositMetrics, api};
use eventbank_runtime::testing::TestDatabase;
use std::sync::Arc;

pub const API_KEY: &str = "test-api-key";

pub struct TestApp {
    pub base: String,
    pub db: TestDatabase,
    pub client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        let db = TestDatabase::create("deposit", &deposit::MIGRATOR)
            .await
            .expect("test database");
        deposit::store::seed_demo_accounts(&db.pool)
            .await
            .expect("seed");
        let config = Config {
            common: eventbank_runtime::CommonConfig::from_env("deposit", 0).expect("config"),
            seed_demo_accounts: true,
            max_deposit_amount: "1000000.00".into(),
            relay_batch: 100,
            api_key: eventbank_runtime::Secret::new(API_KEY),
        };
        let mut registry = eventbank_runtime::metrics::new_registry("deposit");
        let state = api::AppState {
            pool: db.pool.clone(),
            config: Arc::new(config),
            metrics: DepositMetrics::register(&mut registry),
            outbox: Arc::new(deposit::wakeup::OutboxSignal::new()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let router = api::app(state).fallback(eventbank_runtime::http::not_found_fallback);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            base,
            db,
            client: reqwest::Client::new(),
            server,
        }
    }

    pub async fn post(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value, String) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("x-api-key"))
        {
            req = req.header("x-api-key", API_KEY);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = res.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, json, content_type)
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }

    pub async fn cleanup(self) {
        self.server.abort();
        self.db.drop_db().await.expect("drop test database");
    }
}

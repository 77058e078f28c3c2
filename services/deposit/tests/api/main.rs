//! deposit API tests against a real Postgres (fresh database per test), over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deposits;
mod group_commit;
mod openapi;

use deposit::Config;
use eventbank_runtime::testing::TestDatabase;
use eventbank_runtime::{Secret, Shutdown};
use std::time::Duration;

pub const API_KEY: &str = "test-api-key";

/// The service's configuration on `db`. The broker URL names a port nothing listens on: the
/// relay keeps retrying and never publishes these tests' events into the shared broker.
pub fn config(db: &TestDatabase) -> Config {
    let mut common = eventbank_runtime::CommonConfig::from_env("deposit", 0).expect("config");
    common.database_url = Secret::new(db.url.clone());
    common.amqp_url = Secret::new("amqp://guest:guest@127.0.0.1:1/eventbank");
    Config {
        common,
        seed_demo_accounts: true,
        max_deposit_amount: "1000000.00".into(),
        relay_batch: 100,
        relay_mark_delay: std::time::Duration::from_millis(100),
        writers: 2,
        write_batch: 64,
        api_key: Secret::new(API_KEY),
    }
}

/// The service as `main` runs it ([`deposit::run`]: the router, the relay, the demo accounts),
/// on a fresh database and a free port.
pub struct TestApp {
    pub base: String,
    pub db: TestDatabase,
    pub client: reqwest::Client,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        let db = TestDatabase::create("deposit", &deposit::MIGRATOR)
            .await
            .expect("test database");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = Shutdown::new();
        let server = tokio::spawn(deposit::run(config(&db), listener, shutdown.clone()));
        let app = Self {
            base,
            db,
            client: reqwest::Client::new(),
            shutdown,
            server,
        };
        app.wait_until_serving().await;
        app
    }

    /// `run` seeds the demo accounts before it serves; the listener queues requests meanwhile,
    /// but a test that reads the database first must not look too early.
    async fn wait_until_serving(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self
            .client
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the service did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
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

    /// Stops the service as a signal would (it drains and closes its pool), then drops the
    /// database.
    pub async fn cleanup(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .expect("the service stops")
            .expect("the service task")
            .expect("the service ends without an error");
        self.db.drop_db().await.expect("drop test database");
    }
}

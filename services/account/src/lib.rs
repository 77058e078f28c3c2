//! account: applies `DepositCompleted` events in per-account sequence order and serves balances.
//!
//! - [`handler`]: the ordering rule (duplicate / apply / park) and the projection writes.
//! - [`store`]: the SQL.
//! - [`api`]: `GET /accounts/{id}` (with read-your-writes `min_sequence`), transactions.

pub mod api;
pub mod handler;
pub mod store;

use eventbank_runtime::config::env_parse;
use eventbank_runtime::service::ConsumerService;
use eventbank_runtime::{CommonConfig, Shutdown, db, metrics};
use std::sync::Arc;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/account");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Longest `wait` a read-your-writes query may ask for.
    pub max_wait: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            common: CommonConfig::from_env("account", 8082)?,
            max_wait: Duration::from_millis(env_parse("MAX_WAIT_MS", 10_000)?),
        })
    }
}

pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&config.common, &MIGRATOR, Duration::from_secs(60)).await?;
    let registry = metrics::new_registry("account");
    let api = api::app(api::AppState {
        pool: pool.clone(),
        max_wait: config.max_wait,
    });
    ConsumerService {
        config: config.common,
        pool,
        handler: Arc::new(handler::AccountHandler),
        api,
        registry,
    }
    .run(listener, shutdown)
    .await
}

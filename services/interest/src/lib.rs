//! interest: keeps its own copy of every account's daily closing balances, built only from the
//! `DepositCompleted` events it receives, and accrues daily interest on them.
//!
//! - [`accrual`]: the pure accrual engine (Actual/365, exact integer arithmetic, half-even).
//! - [`handler`]: applies a batch of deposits: balances from each deposit's day on, accruals
//!   recomputed from there forward.
//! - [`store`]: the SQL.
//! - [`api`]: `GET /interest/accounts/{id}` and `GET /interest/accounts/{id}/balance`.
//!
//! Seam for posting: `daily_accruals` holds the exact inputs of every day (balance and rate) and
//! [`accrual::ExactInterest::minor`] is the only place that rounds to minor units; a posting job
//! sums a period's days exactly and rounds once.

pub mod accrual;
pub mod api;
pub mod handler;
pub mod metrics;
pub mod store;

pub use api::{AppState, app};
pub use handler::InterestHandler;

use eventbank_runtime::service::ConsumerService;
use eventbank_runtime::{CommonConfig, Shutdown, db};
use std::sync::Arc;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/interest");

/// The interest service's configuration: only the shared settings so far (rates live in the
/// database, because they change over time and each day must keep the rate it accrued at).
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            common: CommonConfig::from_env("interest", 8084)?,
        })
    }
}

/// Connects (waiting for the database), migrates, then runs the consumer and the HTTP API until
/// `shutdown`.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&config.common, &MIGRATOR, Duration::from_secs(60)).await?;
    let mut registry = eventbank_runtime::metrics::new_registry("interest");
    let handler = InterestHandler::new(metrics::InterestMetrics::register(&mut registry));
    let api = app(AppState { pool: pool.clone() });
    ConsumerService {
        config: config.common,
        pool,
        handler: Arc::new(handler),
        api,
        registry,
    }
    .run(listener, shutdown)
    .await
}

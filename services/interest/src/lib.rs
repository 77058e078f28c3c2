//! interest: keeps its own copy of every account's daily closing balances, built only from the
//! `DepositCompleted` events it receives, and accrues daily interest on them.
//!
//! - [`accrual`]: the pure accrual engine (Actual/365, exact integer arithmetic, half-even).
//! - [`handler`]: applies a batch of deposits: balances from each deposit's day on, accruals
//!   recomputed from there forward.
//! - [`eod`]: the end-of-day job: stores the accrual of every ended day without deposits.
//! - [`store`]: the SQL.
//! - [`api`]: `GET /interest/accounts/{id}` and `GET /interest/accounts/{id}/balance`.
//! - [`error`]: the API's one error type, answered as RFC 9457 problems.
//!
//! Seam for posting: `daily_accruals` holds the exact inputs of every day (balance and rate) and
//! [`accrual::ExactInterest::minor`] is the only place that rounds to minor units; a posting job
//! sums a period's days exactly and rounds once.

pub mod accrual;
pub mod api;
pub mod eod;
pub mod error;
pub mod handler;
pub mod metrics;
pub mod store;

pub use api::{AppState, app};
pub use handler::InterestHandler;

use anyhow::bail;
use eventbank_runtime::config::env_parse;
use eventbank_runtime::service::ConsumerService;
use eventbank_runtime::{CommonConfig, Shutdown, db};
use std::sync::Arc;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/interest");

/// The interest service's configuration. Rates are not here: they live in the `rates` table,
/// because they change over time and each day must keep the rate it accrued at.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `EOD_INTERVAL_SECS` (default 3,600): how often the end-of-day job looks for ended days
    /// to store. Any value works (the job is idempotent); it bounds how long after midnight
    /// UTC a day's accrual is stored.
    pub eod_interval: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let eod_interval_secs: u64 = env_parse("EOD_INTERVAL_SECS", 3_600)?;
        if eod_interval_secs == 0 {
            bail!("EOD_INTERVAL_SECS must be at least 1");
        }
        Ok(Self {
            common: CommonConfig::from_env("interest", 8084)?,
            eod_interval: Duration::from_secs(eod_interval_secs),
        })
    }
}

/// Connects (waiting for the database), migrates, then runs the consumer, the end-of-day job
/// and the HTTP API until `shutdown`.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&config.common, &MIGRATOR, Duration::from_secs(60)).await?;
    let mut registry = eventbank_runtime::metrics::new_registry("interest");
    let metrics = metrics::InterestMetrics::register(&mut registry);
    let handler = InterestHandler::new(metrics.clone());
    let end_of_day = eod::EndOfDay {
        pool: pool.clone(),
        metrics,
        interval: config.eod_interval,
    };
    shutdown.spawn(end_of_day.run(shutdown.clone()));
    let api = api::router(AppState { pool: pool.clone() });
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

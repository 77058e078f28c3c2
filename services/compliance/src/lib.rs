//! compliance: an append-only, tamper-evident audit log of every deposit, and the reporting
//! rules (CTR and structuring) evaluated as deposits arrive.
//!
//! - [`chain`]: canonical entries, SHA-256 links and the verifier (pure).
//! - [`rules`]: the CTR and structuring rules (pure).
//! - [`handler`]: appends a batch to the chain and applies the rules, in the runtime's
//!   transaction.
//! - [`store`]: the SQL.
//! - [`api`]: `GET /compliance/audit`, `GET /compliance/alerts`, `GET /compliance/verify`.
//! - [`error`]: the API's one error type, answered as RFC 9457 problems.

pub mod api;
pub mod chain;
pub mod error;
pub mod handler;
pub mod metrics;
pub mod rules;
pub mod store;

pub use api::{AppState, app};
pub use handler::ComplianceHandler;

use anyhow::bail;
use eventbank_runtime::config::env_parse;
use eventbank_runtime::service::ConsumerService;
use eventbank_runtime::{CommonConfig, Shutdown, db};
use rules::Rules;
use std::sync::Arc;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/compliance");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `CTR_THRESHOLD_MINOR` (default 1,000,000 = 10,000.00 in a two-decimal currency): the
    /// reporting threshold in minor units of each deposit's own currency.
    pub ctr_threshold_minor: i64,
    /// `STRUCTURING_WINDOW_SECS` (default 86,400 = 24 h): the structuring rule's window.
    pub structuring_window: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let config = Self {
            common: CommonConfig::from_env("compliance", 8085)?,
            ctr_threshold_minor: env_parse("CTR_THRESHOLD_MINOR", 1_000_000)?,
            structuring_window: Duration::from_secs(env_parse("STRUCTURING_WINDOW_SECS", 86_400)?),
        };
        config.rules()?;
        Ok(config)
    }

    /// The rules these settings describe; rejects a threshold or window that would make every
    /// deposit (or none) an alert.
    pub fn rules(&self) -> anyhow::Result<Rules> {
        if self.ctr_threshold_minor <= 0 {
            bail!("CTR_THRESHOLD_MINOR must be a positive number of minor units");
        }
        let window = chrono::TimeDelta::from_std(self.structuring_window)
            .ok()
            .filter(|w| *w > chrono::TimeDelta::zero() && *w <= chrono::TimeDelta::days(366))
            .ok_or_else(|| {
                anyhow::anyhow!("STRUCTURING_WINDOW_SECS must be from 1 s to 366 days")
            })?;
        Ok(Rules {
            ctr_threshold_minor: self.ctr_threshold_minor,
            structuring_window: window,
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
    let rules = config.rules()?;
    let pool = db::connect_and_migrate(&config.common, &MIGRATOR, Duration::from_secs(60)).await?;
    let mut registry = eventbank_runtime::metrics::new_registry("compliance");
    let handler =
        ComplianceHandler::new(rules, metrics::ComplianceMetrics::register(&mut registry));
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

//! account: the event-sourced balance of record.
//!
//! Write side: [`domain`] (the aggregate as pure code), [`codec`] (stored forms, upcasting),
//! [`store`] (the event store, snapshots, parked deposits), [`handler`] (the ordering rule,
//! per batch), [`cache`] (the latest states between batches, checked against the store). Read side: [`projection`] (balances and transactions, written in the append's
//! transaction), [`api`] (queries, point in time, read-your-writes, SSE; its errors are
//! [`error`]'s one `ApiError`), [`changes`] (NOTIFY fan-out). Operations: [`gaps`] (long-open
//! sequence gaps), [`rebuild`] (replay the store into fresh projections), [`synthetic`] (large
//! stores for tests and benchmarks).

pub mod api;
pub mod cache;
pub mod changes;
pub mod codec;
pub mod domain;
pub mod error;
pub mod gaps;
pub mod handler;
pub mod projection;
pub mod rebuild;
pub mod store;
#[cfg(feature = "synthetic")]
pub mod synthetic;

use anyhow::Context;
use eventbank_runtime::config::{env_or, env_parse};
use eventbank_runtime::service::ConsumerService;
use eventbank_runtime::{CommonConfig, Shutdown, db, http, metrics};
use std::sync::Arc;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/account");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Longest `wait` a read-your-writes query may ask for.
    pub max_wait: Duration,
    /// A snapshot every this many events of a stream.
    pub snapshot_every: i64,
    /// A sequence gap open longer than this is logged and counted.
    pub gap_alert: Duration,
    /// false: a query-only replica (API, SSE, metrics; consumes nothing).
    pub consume: bool,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let snapshot_every: i64 = env_parse("SNAPSHOT_EVERY", handler::DEFAULT_SNAPSHOT_EVERY)?;
        if snapshot_every < 1 {
            anyhow::bail!("SNAPSHOT_EVERY must be at least 1");
        }
        let consume = match env_or("CONSUME_EVENTS", "true").as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => anyhow::bail!("CONSUME_EVENTS={other:?} is invalid: use true or false"),
        };
        Ok(Self {
            common: CommonConfig::from_env("account", 8082)?,
            max_wait: Duration::from_millis(env_parse("MAX_WAIT_MS", 10_000)?),
            snapshot_every,
            gap_alert: Duration::from_secs(env_parse("GAP_ALERT_SECS", 30)?),
            consume,
        })
    }
}

pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&config.common, &MIGRATOR, Duration::from_secs(60)).await?;
    let mut registry = metrics::new_registry("account");
    let gaps_gauge = gaps::register(&mut registry);
    let changes = changes::Changes::new();
    shutdown.spawn(changes.clone().listen(pool.clone(), shutdown.token()));
    shutdown.spawn(
        gaps::GapMonitor::new(pool.clone(), config.gap_alert, gaps_gauge).run(shutdown.token()),
    );
    let api = api::router(api::AppState {
        pool: pool.clone(),
        max_wait: config.max_wait,
        changes,
        stop: shutdown.token(),
    });
    if config.consume {
        let handler = handler::AccountHandler::new(config.snapshot_every);
        registry.register(
            "projection_lag_milliseconds",
            "From a deposit's creation at the producer to its commit in the account projections (newest event of the last batch)",
            handler.projection_lag_ms.clone(),
        );
        return ConsumerService {
            config: config.common,
            pool,
            handler: Arc::new(handler),
            api,
            registry,
        }
        .run(listener, shutdown)
        .await;
    }
    // Query-only replica: the same API and ops routes, no consumer; ready without a broker.
    let broker_connected = metrics::register_broker_gauge(&mut registry);
    let ops = http::OpsState {
        pool: pool.clone(),
        broker_connected,
        broker_required: false,
        registry: Arc::new(registry),
    };
    tracing::info!("query only (CONSUME_EVENTS=false): serving without a consumer");
    http::serve_service(listener, api, ops, &config.common, shutdown).await
}

/// `account rebuild [--check]`: exit 0 when the live projections were identical, 1 when they
/// differed (replaced unless `--check`), 2 on error.
pub async fn rebuild_command(config: Config, check_only: bool) -> anyhow::Result<bool> {
    let pool = db::connect_and_migrate(&config.common, &MIGRATOR, Duration::from_secs(10))
        .await
        .context("connecting to DATABASE_URL")?;
    let options = rebuild::Options {
        check_only,
        progress: true,
        ..rebuild::Options::default()
    };
    let report = rebuild::rebuild(&pool, &options).await;
    pool.close().await;
    let report = report?;
    println!("{report}");
    Ok(report.identical())
}

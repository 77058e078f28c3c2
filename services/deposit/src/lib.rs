//! deposit: accepts deposits over HTTP and publishes `DepositCompleted` through a
//! transactional outbox.
//!
//! - [`api`]: the routes and handlers: `POST /accounts`, `POST /deposits`, reads.
//! - [`body`]: every request body read whole first; [`auth`]: the API key of the writes.
//! - [`validate`]: the request bodies' rules; [`idempotency`]: Idempotency-Key.
//! - [`accept`]: a valid deposit stored and answered; [`writer`]: group commit, the deposits
//!   that arrive together stored in one transaction (sequence, row, outbox row each).
//! - [`store`]: the SQL, in small functions.
//! - [`relay`]: publishes the outbox in order with confirms; one leader at a time.

pub mod accept;
pub mod api;
pub mod auth;
pub mod body;
pub mod error;
pub mod idempotency;
pub mod openapi;
pub mod relay;
pub mod store;
pub mod validate;
pub mod wakeup;
pub mod writer;

use anyhow::Context;
use eventbank_events::{Currency, Money};
use eventbank_runtime::config::{env_or, env_parse};
use eventbank_runtime::http::{self, OpsState};
use eventbank_runtime::{CommonConfig, Secret, Shutdown, db, metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/deposit");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Insert the demo accounts (ACC-0001..) at start so a first curl works.
    pub seed_demo_accounts: bool,
    /// Largest single deposit, in major units of the deposit's currency (exact decimal).
    pub max_deposit_amount: String,
    /// Outbox rows published per relay round.
    pub relay_batch: i64,
    /// How long published rows wait, at most, to be marked in one statement with the rows
    /// published after them (`RELAY_MARK_DELAY_MS`).
    pub relay_mark_delay: Duration,
    /// Deposit writer tasks (`WRITERS`): transactions in flight at once.
    pub writers: usize,
    /// Most deposits one writer stores per transaction (`WRITE_BATCH`).
    pub write_batch: usize,
    /// The key write endpoints require in `x-api-key` (`API_KEY`; the demo key when unset).
    pub api_key: Secret,
}

/// Used when `API_KEY` is unset, so `scripts/up` needs no settings; logged as a warning.
pub const DEMO_API_KEY: &str = "eventbank-demo-key";

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let config = Self {
            common: CommonConfig::from_env("deposit", 8081)?,
            seed_demo_accounts: env_parse("SEED_DEMO_ACCOUNTS", true)?,
            max_deposit_amount: env_or("MAX_DEPOSIT_AMOUNT", "1000000.00"),
            relay_batch: env_parse("RELAY_BATCH", 500)?,
            relay_mark_delay: Duration::from_millis(env_parse("RELAY_MARK_DELAY_MS", 100)?),
            writers: env_parse("WRITERS", 2)?,
            write_batch: env_parse("WRITE_BATCH", 64)?,
            api_key: Secret::new(env_or("API_KEY", DEMO_API_KEY)),
        };
        if config.api_key.expose().len() < 8 {
            anyhow::bail!("API_KEY must be at least 8 characters");
        }
        config.max_deposit_minor(Currency::parse("USD").context("USD is supported")?)?;
        Ok(config)
    }

    /// The configured maximum in minor units of `currency`.
    pub fn max_deposit_minor(&self, currency: Currency) -> anyhow::Result<i64> {
        Money::parse_positive(&self.max_deposit_amount, currency)
            .map(|m| m.minor)
            .map_err(|e| {
                anyhow::anyhow!(
                    "MAX_DEPOSIT_AMOUNT={:?} is invalid: {e}",
                    self.max_deposit_amount
                )
            })
    }
}

/// Metrics the deposit service exports besides the shared ones.
#[derive(Clone)]
pub struct DepositMetrics {
    pub accepted: Counter,
    pub published: Counter,
    pub outbox_backlog: Gauge,
    pub outbox_oldest_age_seconds: Gauge,
    pub relay_leader: Gauge,
    pub relay_reads: Counter,
    pub relay_handed: Counter,
}

impl DepositMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            accepted: Counter::default(),
            published: Counter::default(),
            outbox_backlog: Gauge::default(),
            outbox_oldest_age_seconds: Gauge::default(),
            relay_leader: Gauge::default(),
            relay_reads: Counter::default(),
            relay_handed: Counter::default(),
        };
        registry.register(
            "deposits_accepted",
            "Deposits committed (with their outbox row)",
            m.accepted.clone(),
        );
        registry.register(
            "outbox_published",
            "Outbox rows confirmed by the broker and marked published",
            m.published.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Outbox rows not yet published",
            m.outbox_backlog.clone(),
        );
        registry.register(
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row",
            m.outbox_oldest_age_seconds.clone(),
        );
        registry.register(
            "relay_leader",
            "1 while this replica holds the relay lock",
            m.relay_leader.clone(),
        );
        registry.register(
            "relay_outbox_reads",
            "Reads of the outbox by the relay (rows this replica commits while the outbox is \
             empty are handed to it in memory instead)",
            m.relay_reads.clone(),
        );
        registry.register(
            "relay_handed_rows",
            "Outbox rows the relay published as the writers handed them over, without a read",
            m.relay_handed.clone(),
        );
        m
    }
}

/// Runs the HTTP API and the relay until shutdown, then drains.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&config.common, &MIGRATOR, Duration::from_secs(60)).await?;
    if config.api_key.expose() == DEMO_API_KEY {
        tracing::warn!(
            "API_KEY is not set: write endpoints accept the public demo key; set API_KEY outside a demo"
        );
    }
    if config.seed_demo_accounts {
        store::seed_demo_accounts(&pool)
            .await
            .context("seeding demo accounts")?;
    }
    let mut registry = metrics::new_registry("deposit");
    let deposit_metrics = DepositMetrics::register(&mut registry);
    let broker_connected = metrics::register_broker_gauge(&mut registry);
    let ops = OpsState {
        pool: pool.clone(),
        broker_connected: broker_connected.clone(),
        broker_required: false,
        registry: Arc::new(registry),
    };

    let outbox = Arc::new(wakeup::OutboxSignal::new());
    let relay = relay::Relay {
        config: config.common.clone(),
        pool: pool.clone(),
        batch: config.relay_batch,
        mark_delay: config.relay_mark_delay,
        metrics: deposit_metrics.clone(),
        broker_connected,
        outbox: Arc::clone(&outbox),
    };
    shutdown.spawn(relay.run(shutdown.clone()));
    {
        let outbox = Arc::clone(&outbox);
        let pool = pool.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move { outbox.run_notifier(pool, stop.triggered()).await });
    }

    let state = api::AppState {
        pool: pool.clone(),
        config: Arc::new(config.clone()),
        metrics: deposit_metrics,
        writer: writer::Writer::start(
            pool.clone(),
            Arc::clone(&outbox),
            config.writers,
            config.write_batch,
        ),
    };
    http::serve_service(listener, api::router(state), ops, &config.common, shutdown).await
}

//! email: sends a confirmation for every deposit.
//!
//! The consumer (shared runtime) hands each new `DepositCompleted` to [`handler`], which renders
//! the confirmation from the event alone ([`render`]) and writes it in the same transaction as
//! the dedup row, leased to this process's sender when it has room. After the commit the
//! [`handoff`] passes those to the [`sender`] in memory; it claims the others from the table.
//! The sender delivers through the configured [`transport`] (SMTP or a folder of `.eml` files)
//! with retry and backoff. [`api`] shows what was sent.
//!
//! - [`store`]: the SQL, in small functions.
//! - [`metrics`]: the service's own Prometheus metrics.
//! - [`error`]: the API's error type and its problem responses.

pub mod api;
pub mod error;
pub mod handler;
pub mod handoff;
pub mod metrics;
pub mod render;
pub mod sender;
pub mod store;
pub mod transport;

pub use api::{AppState, app};
pub use handler::EmailHandler;
pub use handoff::Handoff;
pub use metrics::EmailMetrics;
pub use sender::{Sender, SenderSettings};
pub use transport::{Mailer, Transport};

use anyhow::{Context, bail};
use eventbank_runtime::config::{env_or, env_parse};
use eventbank_runtime::service::ConsumerService;
use eventbank_runtime::{CommonConfig, Shutdown, db};
use lettre::message::Mailbox;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/email");

/// The From of every email unless `EMAIL_FROM` says otherwise.
pub const DEFAULT_FROM: &str = "eventbank <no-reply@eventbank.example>";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `EMAIL_TRANSPORT=file` (default, with `EMAIL_DIR`, default `var/mail`) or `smtp` (with
    /// `SMTP_HOST`, default `localhost`, and `SMTP_PORT`, default 1025: Mailpit's port).
    pub transport: Transport,
    /// `EMAIL_FROM`, parsed at start-up so a typo stops the service instead of every email.
    pub from: Mailbox,
    /// Sender tuning: `EMAIL_MAX_ATTEMPTS` (default 20) sets `max_attempts`,
    /// `EMAIL_RETRY_BASE_MS` (default 1,000) the delay after the first failed attempt, which
    /// doubles per attempt up to `EMAIL_RETRY_CAP_SECS` (default 300); `EMAIL_LEASE_SECS`
    /// (default 300) how long a crashed sender's claimed or handed-off emails wait before another
    /// sends them; `EMAIL_MARK_DELAY_MS` (default 100) how long a few deliveries wait to be
    /// recorded by the consumer's next transaction.
    pub sender: SenderSettings,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let transport = match env_or("EMAIL_TRANSPORT", "file").as_str() {
            "file" => Transport::File {
                dir: PathBuf::from(env_or("EMAIL_DIR", "var/mail")),
            },
            "smtp" => Transport::Smtp {
                host: env_or("SMTP_HOST", "localhost"),
                port: env_parse("SMTP_PORT", 1025)?,
            },
            other => bail!("EMAIL_TRANSPORT={other:?} is invalid: use file or smtp"),
        };
        let from_raw = env_or("EMAIL_FROM", DEFAULT_FROM);
        let from: Mailbox = from_raw
            .parse()
            .map_err(|e| anyhow::anyhow!("EMAIL_FROM={from_raw:?} is invalid: {e}"))?;
        let sender = SenderSettings {
            max_attempts: env_parse("EMAIL_MAX_ATTEMPTS", 20)?,
            retry_base: Duration::from_millis(env_parse("EMAIL_RETRY_BASE_MS", 1_000)?),
            retry_cap: Duration::from_secs(env_parse("EMAIL_RETRY_CAP_SECS", 300)?),
            concurrency: env_parse(
                "EMAIL_SEND_CONCURRENCY",
                SenderSettings::default().concurrency,
            )?,
            lease: Duration::from_secs(env_parse(
                "EMAIL_LEASE_SECS",
                SenderSettings::default().lease.as_secs(),
            )?),
            mark_delay: Duration::from_millis(env_parse(
                "EMAIL_MARK_DELAY_MS",
                SenderSettings::default().mark_delay.as_millis() as u64,
            )?),
            ..SenderSettings::default()
        };
        if sender.concurrency == 0 || sender.concurrency > 256 {
            bail!("EMAIL_SEND_CONCURRENCY must be between 1 and 256");
        }
        // A round stops at half the lease; below a few seconds one slow SMTP send outlives it.
        if sender.lease < Duration::from_secs(4) {
            bail!("EMAIL_LEASE_SECS must be at least 4");
        }
        if sender.max_attempts == 0 {
            bail!("EMAIL_MAX_ATTEMPTS must be at least 1");
        }
        if sender.retry_base.is_zero() || sender.retry_cap < sender.retry_base {
            bail!("EMAIL_RETRY_BASE_MS must be at least 1 and at most EMAIL_RETRY_CAP_SECS");
        }
        Ok(Self {
            common: CommonConfig::from_env("email", 8083)?,
            transport,
            from,
            sender,
        })
    }
}

/// Runs the consumer, the sender and the HTTP API until shutdown, then drains.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    if let Transport::File { dir } = &config.transport {
        // Fail at start-up, not on the first email, when the folder cannot be created.
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating EMAIL_DIR {}", dir.display()))?;
    }
    let pool = db::connect_and_migrate(&config.common, &MIGRATOR, Duration::from_secs(60)).await?;
    let mut registry = eventbank_runtime::metrics::new_registry("email");
    let metrics = EmailMetrics::register(&mut registry);
    let handoff = Handoff::new(config.sender.handoff_capacity, config.sender.lease);

    let sender = Sender {
        pool: pool.clone(),
        mailer: Mailer::new(&config.transport, config.sender.smtp_timeout),
        from: config.from.clone(),
        settings: config.sender.clone(),
        metrics: metrics.clone(),
        handoff: handoff.clone(),
    };
    shutdown.spawn(sender.run(shutdown.clone()));

    ConsumerService {
        config: config.common,
        pool: pool.clone(),
        handler: Arc::new(EmailHandler::new(metrics, handoff)),
        api: api::router(AppState { pool }),
        registry,
    }
    .run(listener, shutdown)
    .await
}

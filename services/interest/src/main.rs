//! interest: daily balances and interest accrual. Thin: config, telemetry, run.

use eventbank_runtime::service;

/// Returning the error from `main` prints it with its whole cause chain (anyhow's `Debug`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = interest::Config::from_env()?;
    let (listener, shutdown) = service::start("interest", &config.common).await?;
    interest::run(config, listener, shutdown).await
}

//! deposit: the HTTP front door and the only producer. Thin: config, telemetry, run.

use eventbank_runtime::service;

/// Returning the error from `main` prints it with its whole cause chain (anyhow's `Debug`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = deposit::Config::from_env()?;
    let (listener, shutdown) = service::start("deposit", &config.common).await?;
    deposit::run(config, listener, shutdown).await
}

//! email: sends deposit confirmations. Thin: config, telemetry, run.

use eventbank_runtime::service;

/// Returning the error from `main` prints it with its whole cause chain (anyhow's `Debug`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = email::Config::from_env()?;
    let (listener, shutdown) = service::start("email", &config.common).await?;
    email::run(config, listener, shutdown).await
}

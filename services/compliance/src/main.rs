//! compliance: audit log and reporting alerts. Thin: config, telemetry, run.

use eventbank_runtime::service;

/// Returning the error from `main` prints it with its whole cause chain (anyhow's `Debug`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = compliance::Config::from_env()?;
    let (listener, shutdown) = service::start("compliance", &config.common).await?;
    compliance::run(config, listener, shutdown).await
}

//! compliance: audit log and reporting alerts. Thin: config, telemetry, run.

use eventbank_runtime::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = compliance::Config::from_env()?;
    telemetry::init("compliance", config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.common.http_addr).await?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    compliance::run(config, listener, shutdown).await
}

//! interest: daily balances and interest accrual. Thin: config, telemetry, run.

use eventbank_runtime::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = interest::Config::from_env()?;
    telemetry::init("interest", config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.common.http_addr).await?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    interest::run(config, listener, shutdown).await
}

//! account: the balance of record. Thin: config, telemetry, run.

use eventbank_runtime::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = account::Config::from_env()?;
    telemetry::init("account", config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.common.http_addr).await?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    account::run(config, listener, shutdown).await
}

//! deposit: the HTTP front door and the only producer. Thin: config, telemetry, run.

use eventbank_runtime::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = deposit::Config::from_env()?;
    telemetry::init("deposit", config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.common.http_addr).await?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    deposit::run(config, listener, shutdown).await
}

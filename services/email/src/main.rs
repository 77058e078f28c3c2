//! email: sends deposit confirmations. Thin: config, telemetry, run.

use eventbank_runtime::{Shutdown, telemetry};

/// Returning the error from `main` prints it with its whole cause chain (anyhow's `Debug`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = email::Config::from_env()?;
    telemetry::init("email", config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.common.http_addr).await?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    email::run(config, listener, shutdown).await
}

//! eventbank-console: serves the live console page. Thin: config, telemetry, serve.

use eventbank_runtime::config::LogFormat;
use eventbank_runtime::{Shutdown, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eventbank-console: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventbank-console: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = eventbank_console::Config::from_env()?;
    telemetry::init("console", LogFormat::Pretty);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (CONSOLE_HTTP_ADDR): {e}",
                config.http_addr
            )
        })?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    tracing::info!(addr = %config.http_addr, "console: open http://{} in a browser", config.http_addr);
    eventbank_runtime::http::serve(listener, eventbank_console::router(&config), shutdown).await
}

//! account: the balance of record. Thin: config, telemetry, then either the service or the
//! `rebuild` command.

use eventbank_runtime::service;
use std::process::ExitCode;

const USAGE: &str = "usage: account            run the service
       account rebuild    replay the event store into fresh projections, report differences
                          from the live ones and replace them (exit 0 identical, 1 differed, 2 error)
       account rebuild --check   the same without changing the live projections";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("account: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match args.as_slice() {
        [] => match runtime.block_on(serve()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("account: {e:#}");
                ExitCode::FAILURE
            }
        },
        ["rebuild", rest @ ..] if rest.iter().all(|a| *a == "--check") => {
            match runtime.block_on(rebuild(!rest.is_empty())) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("account rebuild: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = account::Config::from_env()?;
    let (listener, shutdown) = service::start("account", &config.common).await?;
    account::run(config, listener, shutdown).await
}

async fn rebuild(check_only: bool) -> anyhow::Result<bool> {
    // No log subscriber: the output is the progress bar (stderr), the summary (stdout) and, on
    // failure, the error with its causes (stderr), not the database's notices.
    let config = account::Config::from_env()?;
    account::rebuild_command(config, check_only).await
}

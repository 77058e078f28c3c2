//! `scripts/chaos`: the nemesis (src/nemesis) for as long as asked. It runs the services the
//! way `scripts/up` does (the real binaries on this machine's PostgreSQL and RabbitMQ) in fresh
//! databases and its own broker namespace, so it never touches a running stack's data; prints
//! the schedule, each fault with its proof and recovery time, and the verdict; exits 1 if any
//! invariant was violated.
//!
//!   chaos [--seed N] [--minutes M] [--clients C] [--accounts A] [--spacing S] [--out DIR]

use anyhow::{Context as _, Result, bail};
use eventbank_e2e::nemesis::{self, Config, FaultRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> &'static str {
    "usage: chaos [--seed N] [--minutes M] [--clients C] [--accounts A] [--spacing S] [--out DIR]\n\
     defaults: a seed from the clock (printed), 2 minutes, 16 clients, 200 accounts, a fault\n\
     every 200 answered deposits, history and fault log in var/chaos"
}

fn parse_args() -> Result<Config> {
    let mut config = Config {
        seed: nemesis::seed_from_env(),
        clients: 16,
        accounts: 200,
        deposits: None,
        duration: Some(Duration::from_secs(120)),
        spacing: 200,
        out_dir: Some(PathBuf::from("var/chaos")),
        quiesce_timeout: Duration::from_secs(900),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{}", usage());
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{}", usage()))?;
        let number = || -> Result<u64> {
            value
                .parse()
                .with_context(|| format!("{flag} {value:?} is not a whole number"))
        };
        match flag.as_str() {
            "--seed" => config.seed = number()?,
            "--minutes" => {
                let minutes: f64 = value
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m > 0.0)
                    .with_context(|| format!("--minutes {value:?} is not a positive number"))?;
                config.duration = Some(Duration::from_secs_f64(minutes) * 60);
            }
            "--clients" => config.clients = usize::try_from(number()?.max(1))?,
            "--accounts" => config.accounts = usize::try_from(number()?.max(1))?,
            "--spacing" => config.spacing = usize::try_from(number()?.max(1))?,
            "--out" => config.out_dir = Some(PathBuf::from(&value)),
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    Ok(config)
}

/// Per fault kind: how many struck, and their recovery times.
fn summary(faults: &[FaultRecord]) -> String {
    let mut by_kind: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for f in faults {
        by_kind.entry(f.kind).or_default().push(f.recovery);
    }
    let mut out = String::from("fault kind                  | struck | recovery mean / max (s)\n");
    for (kind, times) in by_kind {
        let max = times.iter().max().copied().unwrap_or_default();
        let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(1);
        out.push_str(&format!(
            "{kind:<27} | {:>6} | {:>5.1} / {:>5.1}\n",
            times.len(),
            mean.as_secs_f64(),
            max.as_secs_f64()
        ));
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    match nemesis::run(config).await {
        Ok(outcome) => {
            println!("\n{}", summary(&outcome.faults));
            println!("{outcome}");
            if outcome.verdict.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos: the run could not be completed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

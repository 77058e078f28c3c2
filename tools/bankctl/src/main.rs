//! bankctl: operate a running eventbank.
//!
//! Exit codes scripts can rely on: 0 success; 1 the check found a problem (invariant violated,
//! audit chain broken, nothing matched a redrive); 2 bad usage or an unreachable system.

use anyhow::Context;
use bankctl::{DatabaseUrls, Pools, dlq, invariants};
use clap::{Parser, Subcommand};
use eventbank_runtime::amqp::Names;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "bankctl",
    version,
    about = "Operate a running eventbank: invariants, dead-letter queues, audit chain"
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    conn: Connections,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Connections {
    #[arg(
        long,
        env = "DEPOSIT_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://eventbank_deposit:eventbank_deposit@127.0.0.1:5432/eventbank_deposit"
    )]
    deposit_db: String,
    #[arg(
        long,
        env = "ACCOUNT_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://eventbank_account:eventbank_account@127.0.0.1:5432/eventbank_account"
    )]
    account_db: String,
    #[arg(
        long,
        env = "EMAIL_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://eventbank_email:eventbank_email@127.0.0.1:5432/eventbank_email"
    )]
    email_db: String,
    #[arg(
        long,
        env = "INTEREST_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://eventbank_interest:eventbank_interest@127.0.0.1:5432/eventbank_interest"
    )]
    interest_db: String,
    #[arg(
        long,
        env = "COMPLIANCE_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://eventbank_compliance:eventbank_compliance@127.0.0.1:5432/eventbank_compliance"
    )]
    compliance_db: String,
    /// Broker URL of the operator user.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://eventbank_ops:eventbank_ops@127.0.0.1:5672/eventbank"
    )]
    amqp_url: String,
    /// Broker namespace (prefix of every name), as the services were started with.
    #[arg(long, env = "AMQP_NAMESPACE", default_value = "")]
    namespace: String,
}

#[derive(Subcommand)]
enum Command {
    /// Check the system's invariants across all five databases (exit 1 on a violation).
    Check,
    /// Walk the compliance audit chain (exit 1 if a link is broken).
    Verify,
    /// Dead-letter queues.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered messages (id, reason, count, age) without removing them.
    List {
        /// account, email, interest or compliance.
        service: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send messages back to the partition queue they came from (exit 1 if none matched).
    Redrive {
        service: String,
        /// The message id (event id) to redrive.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Redrive every message in the DLQ.
        #[arg(long)]
        all: bool,
    },
}

impl Connections {
    fn urls(&self) -> DatabaseUrls {
        DatabaseUrls {
            deposit: self.deposit_db.clone(),
            account: self.account_db.clone(),
            email: self.email_db.clone(),
            interest: self.interest_db.clone(),
            compliance: self.compliance_db.clone(),
        }
    }

    async fn broker(&self) -> anyhow::Result<lapin::Connection> {
        eventbank_runtime::config::validate_namespace(&self.namespace)?;
        lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ (AMQP_URL)")
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match &cli.command {
        Command::Check => {
            let pools = Pools::connect(&cli.conn.urls()).await?;
            let report = invariants::check(&pools).await;
            pools.close().await;
            let report = report?;
            if cli.json {
                print_json(&report)?
            } else {
                println!("{report}")
            }
            Ok(report.ok())
        }
        Command::Verify => {
            let pools = Pools::connect(&cli.conn.urls()).await?;
            let outcome = compliance::store::verify_snapshot(&pools.compliance).await;
            pools.close().await;
            let outcome = outcome?;
            let intact = matches!(outcome, compliance::store::Verification::Intact { .. });
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": intact, "detail": format!("{outcome:?}") })
                );
            } else {
                println!("audit chain: {}", if intact { "intact" } else { "BROKEN" });
                println!("{outcome:?}");
            }
            Ok(intact)
        }
        Command::Dlq(DlqCommand::List { service, limit }) => {
            dlq::check_service(service)?;
            let connection = cli.conn.broker().await?;
            let letters = dlq::list(
                &connection,
                &Names::new(&cli.conn.namespace),
                service,
                *limit,
            )
            .await;
            let _ = connection.close(200, "bye".into()).await;
            let letters = letters?;
            if cli.json {
                print_json(&letters)?;
            } else if letters.is_empty() {
                println!("{service}: dead-letter queue is empty");
            } else {
                println!(
                    "{:<38} {:<12} {:>5} {:>8}  reason",
                    "message_id", "account", "count", "age_s"
                );
                for l in &letters {
                    println!(
                        "{:<38} {:<12} {:>5} {:>8}  {}",
                        l.message_id.as_deref().unwrap_or("-"),
                        l.account_id.as_deref().unwrap_or("-"),
                        l.times_dead_lettered,
                        l.age_seconds.map_or("-".into(), |a| a.to_string()),
                        l.reason
                    );
                }
            }
            Ok(true)
        }
        Command::Dlq(DlqCommand::Redrive { service, id, all }) => {
            dlq::check_service(service)?;
            let selection = match (id, all) {
                (Some(id), false) => dlq::Selection::MessageId(id.clone()),
                _ => dlq::Selection::All,
            };
            let connection = cli.conn.broker().await?;
            let count = dlq::redrive(
                &connection,
                &Names::new(&cli.conn.namespace),
                service,
                &selection,
            )
            .await;
            let _ = connection.close(200, "bye".into()).await;
            let count = count?;
            if cli.json {
                println!("{}", serde_json::json!({ "redriven": count }));
            } else {
                println!("{service}: {count} message(s) redriven");
            }
            Ok(count > 0)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bankctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

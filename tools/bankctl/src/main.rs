//! bankctl: operate a running eventbank.
//!
//! Exit codes scripts can rely on: 0 success; 1 the check found a problem (invariant violated,
//! audit chain broken, nothing matched a redrive); 2 bad usage or an unreachable system.

use anyhow::Context;
use bankctl::{DatabaseUrls, Pools, dlq, invariants, tail};
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
    /// Broker URL of the operator user: one, or the nodes of a cluster separated by commas (the
    /// first that accepts is used).
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
    /// The deposit service.
    #[arg(long, env = "DEPOSIT_URL", default_value = "http://127.0.0.1:8081")]
    deposit_url: String,
    /// The account service.
    #[arg(long, env = "ACCOUNT_URL", default_value = "http://127.0.0.1:8082")]
    account_url: String,
    /// The deposit service's API key (write endpoints).
    #[arg(
        long,
        env = "API_KEY",
        hide_env_values = true,
        default_value = "eventbank-demo-key"
    )]
    api_key: String,
}

#[derive(Subcommand)]
enum Command {
    /// Open an account in the deposit service's directory.
    Open {
        #[arg(long)]
        holder: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        currency: String,
    },
    /// Deposit an amount (a decimal string such as 100.00) into an account.
    Deposit {
        account_id: String,
        amount: String,
        currency: String,
        /// Makes a retry safe: the same key and body answer the first response again.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show an account's balance of record (exit 1 if --wait-for is not reached in time).
    Show {
        account_id: String,
        /// Wait (up to --wait) until this sequence is applied: read-your-writes.
        #[arg(long)]
        wait_for: Option<i64>,
        #[arg(long, default_value = "5s")]
        wait: String,
    },
    /// Print events as they are published (a private, temporary queue on the events exchange).
    Tail {
        /// Stop after this many events (default: until Ctrl-C).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Rebuild the account projections from the event store (runs `account rebuild`).
    Rebuild {
        /// Compare only; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Check the system's invariants across all five databases and the dead-letter queues
    /// (exit 1 on a violation).
    Check {
        /// compliance's reporting threshold, as the compliance service runs with it: a deposit
        /// at or over it must have a CTR alert.
        #[arg(
            long,
            env = "CTR_THRESHOLD_MINOR",
            default_value_t = 1_000_000,
            value_parser = clap::value_parser!(i64).range(1..)
        )]
        ctr_threshold_minor: i64,
    },
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
        // One URL or the comma-separated nodes of a cluster, as the services take it.
        eventbank_runtime::amqp::connect_to(&self.amqp_url, "bankctl")
            .await
            .context("connecting to RabbitMQ (AMQP_URL)")
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Sends a request and prints the JSON answer; success is a 2xx status.
async fn http(cli: &Cli, request: reqwest::RequestBuilder) -> anyhow::Result<bool> {
    let response = request.send().await.context("the service did not answer")?;
    let ok = response.status().is_success();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if cli.json {
        println!("{body}");
    } else {
        print_json(&body)?;
    }
    Ok(ok)
}

/// Runs `f` on a broker connection and closes it whatever `f` answered.
async fn with_broker<T>(
    conn: &Connections,
    f: impl AsyncFnOnce(&lapin::Connection, &Names) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let connection = conn.broker().await?;
    let outcome = f(&connection, &Names::new(&conn.namespace)).await;
    let _ = connection.close(200, "bye".into()).await;
    outcome
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let client = reqwest::Client::new();
    match &cli.command {
        Command::Open {
            holder,
            email,
            currency,
        } => {
            let body =
                serde_json::json!({"holder_name": holder, "email": email, "currency": currency});
            let request = client
                .post(format!("{}/accounts", cli.conn.deposit_url))
                .header("x-api-key", &cli.conn.api_key)
                .json(&body);
            http(&cli, request).await
        }
        Command::Deposit {
            account_id,
            amount,
            currency,
            idempotency_key,
        } => {
            let body = serde_json::json!({"account_id": account_id, "amount": amount, "currency": currency});
            let mut request = client
                .post(format!("{}/deposits", cli.conn.deposit_url))
                .header("x-api-key", &cli.conn.api_key)
                .json(&body);
            if let Some(key) = idempotency_key {
                request = request.header("idempotency-key", key);
            }
            http(&cli, request).await
        }
        Command::Show {
            account_id,
            wait_for,
            wait,
        } => {
            let mut url = format!("{}/accounts/{account_id}", cli.conn.account_url);
            if let Some(sequence) = wait_for {
                url.push_str(&format!("?min_sequence={sequence}&wait={wait}"));
            }
            http(&cli, client.get(url)).await
        }
        Command::Tail { count } => with_broker(&cli.conn, async |connection, names| {
            tail::run(connection, names, *count).await
        })
        .await
        .map(|()| true),
        Command::Rebuild { check } => rebuild(&cli.conn, *check),
        Command::Check {
            ctr_threshold_minor,
        } => check(&cli, *ctr_threshold_minor).await,
        Command::Verify => verify(&cli).await,
        Command::Dlq(DlqCommand::List { service, limit }) => dlq_list(&cli, service, *limit).await,
        Command::Dlq(DlqCommand::Redrive { service, id, all }) => {
            let selection = match (id, all) {
                (Some(id), false) => dlq::Selection::MessageId(id.clone()),
                _ => dlq::Selection::All,
            };
            dlq_redrive(&cli, service, &selection).await
        }
    }
}

async fn dlq_list(cli: &Cli, service: &str, limit: usize) -> anyhow::Result<bool> {
    dlq::check_service(service)?;
    let letters = with_broker(&cli.conn, async |connection, names| {
        dlq::list(connection, names, service, limit).await
    })
    .await?;
    if cli.json {
        print_json(&letters)?;
    } else {
        print_letters(service, &letters);
    }
    Ok(true)
}

async fn dlq_redrive(cli: &Cli, service: &str, selection: &dlq::Selection) -> anyhow::Result<bool> {
    dlq::check_service(service)?;
    let count = with_broker(&cli.conn, async |connection, names| {
        dlq::redrive(connection, names, service, selection).await
    })
    .await?;
    if cli.json {
        println!("{}", serde_json::json!({ "redriven": count }));
    } else {
        println!("{service}: {count} message(s) redriven");
    }
    Ok(count > 0)
}

/// Runs `account rebuild` next to this binary on the account database.
fn rebuild(conn: &Connections, check: bool) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("locating bankctl")?;
    let account = exe.with_file_name("account");
    let mut command = std::process::Command::new(&account);
    command.arg("rebuild").env("DATABASE_URL", &conn.account_db);
    if check {
        command.arg("--check");
    }
    let status = command.status().with_context(|| {
        format!(
            "running {} (build it with cargo build --bins)",
            account.display()
        )
    })?;
    Ok(status.success())
}

async fn check(cli: &Cli, ctr_threshold_minor: i64) -> anyhow::Result<bool> {
    let options = invariants::Options {
        ctr_threshold_minor,
        allow_queued_emails: false,
    };
    let pools = Pools::connect(&cli.conn.urls()).await?;
    let report = with_broker(&cli.conn, async |connection, names| {
        invariants::check_system(&pools, connection, names, &options).await
    })
    .await;
    pools.close().await;
    let report = report?;
    if cli.json {
        print_json(&report)?
    } else {
        println!("{report}")
    }
    Ok(report.ok())
}

async fn verify(cli: &Cli) -> anyhow::Result<bool> {
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

fn print_letters(service: &str, letters: &[dlq::DeadLetter]) {
    if letters.is_empty() {
        println!("{service}: dead-letter queue is empty");
        return;
    }
    println!(
        "{:<38} {:<12} {:>5} {:>8}  reason",
        "message_id", "account", "count", "age_s"
    );
    for l in letters {
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

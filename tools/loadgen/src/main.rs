//! loadgen: the whole-pipeline benchmark (`scripts/bench` runs it in release mode).
//!
//! One run, in a fresh world of its own (five new databases, a unique broker namespace, the
//! real release binaries; all removed at the end, also on Ctrl-C):
//! 1. measures the machine's ceilings (see [`ceiling`]) before anything else runs;
//! 2. starts the five services and opens `--accounts` accounts;
//! 3. runs each `--phase` of `POST /deposits` load (see [`drive`]), recording the accept
//!    latency of every request, CPU and RSS of the services, and the outbox and consumer
//!    backlogs from the services' `/metrics`; after each phase waits until every consumer has
//!    committed every deposit and computes end-to-end latency (see [`latency`]);
//! 4. prints a table, then the result as one JSON object on the last line (also `--out`).

// Rates, latencies and ratios are statistics; no money is computed here.
#![allow(clippy::float_arithmetic)]

mod ceiling;
mod client;
mod cluster;
mod drive;
mod latency;
mod observe;
mod report;
mod skeleton;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use drive::{Dist, Mode, PhaseSpec, Picker};
use eventbank_e2e::{Services, Svc, TestWorld, WorldOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Benchmarks the whole eventbank pipeline against the machine's own ceilings",
    long_about = None
)]
pub struct Args {
    /// Short run for scripts/test: small ceilings and two short phases (under a minute).
    #[arg(long)]
    quick: bool,
    /// Accounts to open before the load.
    #[arg(long, default_value_t = 1000)]
    accounts: u32,
    /// Load phases, in order: open:RATE:SECS[:DIST] or closed:CONCURRENCY:SECS[:DIST], DIST =
    /// uniform | zipf | zipf=EXPONENT; an open RATE of P% is P percent of the best closed-loop
    /// uniform rate sustained before it. Default: closed:32:60 closed:32:30:zipf open:50%:30
    /// open:5%:30 (quick: closed:32:8 open:50%:8 open:5%:8).
    #[arg(long = "phase", value_name = "SPEC")]
    phases: Vec<PhaseSpec>,
    /// Connections of an open-loop phase (requests beyond them wait, and that wait counts).
    #[arg(long, default_value_t = 64)]
    open_connections: u32,
    /// Seconds per ceiling measurement (default 10; quick 2).
    #[arg(long)]
    ceiling_secs: Option<f64>,
    /// Skip the ceiling measurements.
    #[arg(long)]
    no_ceilings: bool,
    /// Also run the pipeline's skeleton (see `skeleton`) before the services start, closed
    /// loop with the concurrency and seconds of the first closed-loop uniform phase; the
    /// result's `ratio` is then sustained / skeleton.
    #[arg(long)]
    skeleton: bool,
    /// Extra environment for every service, KEY=VALUE (e.g. BATCH_SIZE=100); repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// How the email service delivers: `smtp` (to an SMTP server inside loadgen that counts
    /// every Message-ID, as production delivers to a relay) or `file` (one `.eml` per email in
    /// one folder, the local default).
    #[arg(long, value_enum, default_value_t = EmailTransport::Smtp)]
    email_transport: EmailTransport,
    /// Where the service binaries are (default: EVENTBANK_BIN_DIR, else next to loadgen).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Longest wait for the consumers to catch up after a phase, in seconds.
    #[arg(long, default_value_t = 180)]
    drain_timeout: u64,
    /// A rebuild benchmark's result to include (scripts/bench passes it).
    #[arg(long)]
    rebuild_events_per_s: Option<f64>,
    /// The size of the event store that rebuild benchmark replayed.
    #[arg(long)]
    rebuild_events: Option<u64>,
    /// The broker(s) of the services, as their AMQP_URL (one URL, or a comma-separated list:
    /// the nodes of a cluster, e.g. `scripts/cluster urls guest`). Default: TEST_AMQP_URL.
    /// Several need --no-ceilings (the broker ceiling measures one node).
    #[arg(long, value_name = "URLS")]
    amqp_url: Option<String>,
    /// SIGKILL the cluster node that leads most of the run's quorum queues this many seconds
    /// into the first phase (through scripts/cluster; needs --amqp-url with its nodes), and
    /// start it again once that phase drained.
    #[arg(long, value_name = "SECS")]
    kill_leader_at: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EmailTransport {
    Smtp,
    File,
}

/// Partition queues per consumer service (the services' default `PARTITIONS`).
const PARTITIONS: usize = 4;
/// The services' default `BATCH_SIZE` and `PREFETCH`.
const BATCH_SIZE: usize = 50;
const PREFETCH: u16 = 100;
/// The relay's default `RELAY_BATCH`: outbox rows published per round.
const RELAY_BATCH: usize = 500;

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if args.phases.is_empty() {
        let defaults: &[&str] = if args.quick {
            &["closed:32:8", "open:50%:8", "open:5%:8"]
        } else {
            &[
                "closed:32:60",
                "closed:32:30:zipf",
                "open:50%:30",
                "open:5%:30",
            ]
        };
        args.phases = defaults.iter().filter_map(|s| s.parse().ok()).collect();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let env: Vec<(String, String)> = args
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--env {kv:?} is not KEY=VALUE"))
        })
        .collect::<Result<_>>()?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => Some(dir.clone()),
        None if std::env::var_os("EVENTBANK_BIN_DIR").is_some() => None,
        None => std::env::current_exe()?.parent().map(PathBuf::from),
    };
    let machine = observe::describe_machine();
    let options = WorldOptions {
        bin_dir,
        ready_timeout: None,
    };
    let world = match &args.amqp_url {
        Some(urls) => {
            if urls.contains(',') && !args.no_ceilings {
                bail!(
                    "--amqp-url lists several brokers: add --no-ceilings (the broker ceiling measures one node)"
                );
            }
            TestWorld::with_broker(options, urls.clone()).await?
        }
        None => {
            if args.kill_leader_at.is_some() {
                bail!(
                    "--kill-leader-at needs --amqp-url with the cluster's nodes (scripts/cluster urls guest)"
                );
            }
            TestWorld::with_options(options).await?
        }
    };
    eprintln!(
        "loadgen: world {} (load average before: {})",
        world.id(),
        machine.load_average_before
    );
    let outcome = tokio::select! {
        outcome = bench(&world, &args, &env, machine) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleaned = world.cleanup().await;
    let result = outcome?;
    cleaned.context("removing the benchmark's world")?;
    let text = report::table(&result);
    println!("{text}");
    let json = serde_json::to_string(&result)?;
    if let Some(path) = &args.out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

async fn bench(
    world: &TestWorld,
    args: &Args,
    env: &[(String, String)],
    machine: observe::Machine,
) -> Result<report::Result> {
    let started_at = chrono::Utc::now();
    let ceiling_secs = args
        .ceiling_secs
        .unwrap_or(if args.quick { 2.0 } else { 10.0 });
    let ceilings = if args.no_ceilings {
        None
    } else {
        Some(measure_ceilings(world, ceiling_secs).await?)
    };
    let skeleton = if args.skeleton {
        Some(run_skeleton(world, &args.phases).await?)
    } else {
        None
    };

    // The SMTP server the email service delivers to, unless told otherwise; what it receives
    // is counted as it arrives (and not kept), so every deposit's email can be checked.
    let sink = match args.email_transport {
        EmailTransport::Smtp => Some(MailCounter::start().await?),
        EmailTransport::File => None,
    };
    let services = start_services(world, env, sink.as_ref()).await?;
    let deposit_addr: SocketAddr = format!("127.0.0.1:{}", services.deposit.port()).parse()?;
    let accounts = open_accounts(deposit_addr, args.accounts).await?;

    let mut phases = Vec::new();
    for (i, spec) in args.phases.iter().enumerate() {
        let kill_at = args.kill_leader_at.filter(|_| i == 0);
        let spec = spec.resolve(report::sustained(&phases))?;
        let phase = run_phase(
            world,
            &services,
            deposit_addr,
            &accounts,
            &spec,
            args,
            kill_at,
        )
        .await?;
        eprintln!("loadgen: {}", report::phase_line(&phase));
        phases.push(phase);
    }
    let invariants = eventbank_e2e::invariants::check(world).await?;
    if !invariants.ok() {
        bail!("invariants violated after the load: {invariants:?}");
    }
    let emails = match sink {
        Some(sink) => Some(count_emails(sink, &phases, env).await?),
        None => None,
    };
    Ok(report::Result::new(report::Inputs {
        quick: args.quick,
        started_at,
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        service_env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        accounts: accounts.len(),
        ceilings,
        skeleton,
        phases,
        rebuild_events_per_s: args.rebuild_events_per_s,
        rebuild_events: args.rebuild_events,
        emails,
    }))
}

/// Starts the five services with `env`, delivering email to `sink` when there is one.
async fn start_services(
    world: &TestWorld,
    env: &[(String, String)],
    sink: Option<&MailCounter>,
) -> Result<Services> {
    let mut all_env: Vec<(String, String)> = Vec::new();
    if let Some(sink) = sink {
        all_env.push(("EMAIL_TRANSPORT".into(), "smtp".into()));
        all_env.push(("SMTP_HOST".into(), "127.0.0.1".into()));
        all_env.push(("SMTP_PORT".into(), sink.port.to_string()));
    }
    all_env.extend(env.iter().cloned());
    let env_refs: Vec<(&str, &str)> = all_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    eprintln!("loadgen: starting the five services");
    world.start_all(&env_refs).await
}

/// Opens `count` accounts through the deposit service, with a progress bar.
async fn open_accounts(deposit_addr: SocketAddr, count: u32) -> Result<Vec<String>> {
    let progress = Arc::new(AtomicU64::new(0));
    let bar = bar(u64::from(count), "opening accounts")?;
    let ticker = tick(&bar, &progress);
    let accounts = drive::create_accounts(
        deposit_addr,
        eventbank_e2e::API_KEY,
        count,
        Arc::clone(&progress),
    )
    .await;
    ticker.abort();
    bar.finish_and_clear();
    let accounts = accounts?;
    eprintln!("loadgen: {} accounts opened", accounts.len());
    Ok(accounts)
}

/// What the SMTP server received over the run; one email per accepted deposit unless `env`
/// sent the emails elsewhere.
async fn count_emails(
    sink: MailCounter,
    phases: &[report::Phase],
    env: &[(String, String)],
) -> Result<report::EmailTally> {
    let tally = sink.finish().await;
    let deposits: u64 = phases.iter().map(|p| p.accepted).sum();
    let overridden = env
        .iter()
        .any(|(k, _)| k == "EMAIL_TRANSPORT" || k == "SMTP_PORT");
    // Every phase drained only once the email service had marked every email sent, so
    // each deposit's email must have reached the server by now.
    if !overridden && tally.distinct != deposits {
        bail!(
            "the SMTP server received {} distinct emails for {deposits} deposits",
            tally.distinct
        );
    }
    Ok(tally)
}

/// An SMTP server that counts what it receives: messages and distinct Message-IDs.
struct MailCounter {
    port: u16,
    collector: tokio::task::JoinHandle<report::EmailTally>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl MailCounter {
    async fn start() -> Result<Self> {
        let sink = eventbank_e2e::SmtpSink::start().await?;
        let port = sink.port();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let collector = tokio::spawn(async move {
            let mut ids = std::collections::HashSet::new();
            let mut received = 0_u64;
            let mut last = false;
            loop {
                for mail in sink.take_messages() {
                    received += 1;
                    if let Some(id) = mail.message_id() {
                        ids.insert(id);
                    }
                }
                if last {
                    break;
                }
                // Told to finish (or the counter was dropped): one more take, then done.
                last = tokio::select! {
                    changed = stopped.changed() => changed.is_err() || *stopped.borrow(),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => false,
                };
            }
            report::EmailTally {
                transport: "smtp".into(),
                received,
                distinct: ids.len() as u64,
            }
        });
        Ok(Self {
            port,
            collector,
            stop,
        })
    }

    async fn finish(self) -> report::EmailTally {
        let _ = self.stop.send(true);
        self.collector.await.unwrap_or_default()
    }
}

async fn measure_ceilings(world: &TestWorld, secs: f64) -> Result<report::Ceilings> {
    let connections = PARTITIONS * Svc::CONSUMERS.len();
    eprintln!(
        "loadgen: ceiling: Postgres, consumer-shaped transactions from {connections} connections ({secs} s each)"
    );
    let db_name = format!("eb_{}_ceiling", world.id());
    let db_url = {
        let deposit_url = world.db_url(Svc::Deposit);
        deposit_url.replace(&world.db_name(Svc::Deposit), &db_name)
    };
    let pg = ceiling::postgres(
        world.admin_url(),
        &db_url,
        &db_name,
        connections,
        &[1, BATCH_SIZE],
        secs,
    )
    .await?;
    eprintln!(
        "loadgen: ceiling: RabbitMQ, publish with confirms fanned out to {} quorum queues ({secs} s)",
        Svc::CONSUMERS.len()
    );
    let message = sample_message(world.ns())?;
    let broker = ceiling::broker(
        world.amqp_url(),
        world.ns(),
        Svc::CONSUMERS.len(),
        message,
        RELAY_BATCH,
        PREFETCH,
        secs,
    )
    .await?;
    Ok(report::Ceilings::new(pg, broker, Svc::CONSUMERS.len()))
}

/// The pipeline's skeleton, shaped like the first closed-loop uniform phase (else 32
/// producers for 10 s), in a database and broker names of its own.
async fn run_skeleton(world: &TestWorld, phases: &[PhaseSpec]) -> Result<skeleton::Skeleton> {
    let (producers, secs) = phases
        .iter()
        .find_map(|p| match (p.mode, p.dist) {
            (Mode::Closed(c), Dist::Uniform) => Some((c as usize, p.secs as f64)),
            _ => None,
        })
        .unwrap_or((32, 10.0));
    eprintln!(
        "loadgen: skeleton: {producers} producers, relay, {} batched consumers ({secs} s)",
        Svc::CONSUMERS.len()
    );
    let db_name = format!("eb_{}_skeleton", world.id());
    let db_url = world
        .db_url(Svc::Deposit)
        .replace(&world.db_name(Svc::Deposit), &db_name);
    let place = skeleton::Place {
        admin_url: world.admin_url(),
        db_url: &db_url,
        db_name: &db_name,
        amqp_url: world.amqp_url(),
        ns: world.ns(),
    };
    let result = skeleton::run(&place, producers, secs, PREFETCH).await?;
    eprintln!(
        "loadgen: skeleton: {} deposits, {:.0}/s end to end; CPU ms per deposit {:?}",
        result.deposits, result.deposits_per_s, result.cpu_ms_per_deposit
    );
    Ok(result)
}

/// A `DepositCompleted` message exactly as the relay would publish it.
fn sample_message(ns: &str) -> Result<eventbank_runtime::publisher::Outgoing> {
    let event = deposit_completed("ACC-1234", 4_217)?;
    Ok(eventbank_runtime::publisher::deposit_message(
        &format!("{ns}.bank.events"),
        event.event_id,
        "ACC-1234",
        event.traceparent.as_deref(),
        event.to_json()?,
    ))
}

/// A `DepositCompleted` of now, with new ids and a traceparent, as the deposit service writes
/// it to its outbox.
fn deposit_completed(
    account_id: &str,
    amount_minor: i64,
) -> Result<eventbank_events::DepositCompleted> {
    let now = chrono::Utc::now();
    Ok(eventbank_events::DepositCompleted {
        event_id: uuid::Uuid::now_v7(),
        sequence: 17,
        time: now,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        schema_version: eventbank_events::deposit::CURRENT_VERSION,
        deposit_id: uuid::Uuid::now_v7(),
        account_id: eventbank_events::AccountId::parse(account_id)?,
        amount_minor,
        currency: eventbank_events::Currency::parse("USD")?,
        account: eventbank_events::AccountSnapshot {
            holder_name: "Bench Holder 234".into(),
            email: "bench234@example.com".into(),
        },
        occurred_at: now,
        channel: None,
        reference: None,
    })
}

fn bar(len: u64, message: &str) -> Result<ProgressBar> {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
    )?);
    bar.set_message(message.to_owned());
    Ok(bar)
}

fn tick(bar: &ProgressBar, progress: &Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let bar = bar.clone();
    let progress = Arc::clone(progress);
    tokio::spawn(async move {
        loop {
            bar.set_position(progress.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The pipeline's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    accepted: f64,
    published: f64,
    /// Per consumer, in `Svc::CONSUMERS` order.
    consumed: [f64; 4],
    /// Confirmation emails the email service's sender has delivered: the last step of a
    /// deposit, after the email consumer's commit queued it.
    emails_sent: f64,
}

impl Progress {
    /// What every consumer has committed and, for email, also sent.
    fn min_consumed(&self) -> f64 {
        self.consumed
            .iter()
            .copied()
            .fold(self.emails_sent, f64::min)
    }
    fn outbox_backlog(&self) -> f64 {
        (self.accepted - self.published).max(0.0)
    }
    /// Per stage, what is accepted but not yet through it.
    fn lag_by_stage(&self) -> BTreeMap<String, f64> {
        let mut lag = BTreeMap::new();
        lag.insert("outbox".to_owned(), self.outbox_backlog());
        for (svc, consumed) in Svc::CONSUMERS.iter().zip(self.consumed) {
            lag.insert(svc.name().to_owned(), (self.accepted - consumed).max(0.0));
        }
        lag.insert(
            "email sent".to_owned(),
            (self.accepted - self.emails_sent).max(0.0),
        );
        lag
    }

    /// Accepted but not yet committed by every consumer (and its email not yet sent).
    fn pipeline_lag(&self) -> f64 {
        (self.accepted - self.min_consumed()).max(0.0)
    }
}

struct Readers {
    deposit: observe::MetricsReader,
    consumers: Vec<observe::MetricsReader>,
}

impl Readers {
    fn new(services: &Services) -> Result<Self> {
        let addr = |h: &eventbank_e2e::ServiceHandle| -> Result<SocketAddr> {
            Ok(format!("127.0.0.1:{}", h.port()).parse()?)
        };
        Ok(Self {
            deposit: observe::MetricsReader::new(addr(&services.deposit)?)?,
            consumers: services
                .consumers()
                .iter()
                .map(|h| observe::MetricsReader::new(addr(h)?))
                .collect::<Result<_>>()?,
        })
    }

    async fn read(&mut self) -> Result<Progress> {
        let d = self
            .deposit
            .read(&["_deposits_accepted_total", "_outbox_published_total"])
            .await?;
        let mut p = Progress {
            accepted: d[0],
            published: d[1],
            consumed: [0.0; 4],
            emails_sent: 0.0,
        };
        for ((i, reader), svc) in self.consumers.iter_mut().enumerate().zip(Svc::CONSUMERS) {
            let c = reader
                .read(&[
                    "_messages_consumed_total",
                    "_duplicates_skipped_total",
                    "_emails_sent_total",
                ])
                .await?;
            p.consumed[i] = c[0] - c[1];
            if svc == Svc::Email {
                p.emails_sent = c[2];
            }
        }
        Ok(p)
    }
}

/// What the sampler saw during one phase.
#[derive(Debug, Default, Clone)]
struct Samples {
    rss_peak: BTreeMap<String, u64>,
    outbox_backlog_max: f64,
    pipeline_lag_max: f64,
}

/// The services' processes whose CPU and memory a phase records.
type Pids = Vec<(Svc, u32)>;

async fn run_phase(
    world: &TestWorld,
    services: &Services,
    deposit_addr: SocketAddr,
    accounts: &[String],
    spec: &PhaseSpec,
    args: &Args,
    kill_leader_at: Option<f64>,
) -> Result<report::Phase> {
    eprintln!("loadgen: phase {spec}");
    let picker = Arc::new(Picker::new(accounts.to_vec(), spec.dist));
    let handles: Pids = service_pids(services);
    let before = Usage::read(world, &handles).await?;

    let mut readers = Readers::new(services)?;
    let at_start = readers.read().await?;
    let samples = Arc::new(std::sync::Mutex::new(Samples::default()));
    let progress = Arc::new(AtomicU64::new(0));
    let bar = phase_bar(spec)?;
    let sampler = spawn_sampler(
        Readers::new(services)?,
        handles.clone(),
        Arc::clone(&samples),
        Arc::clone(&progress),
        bar.clone(),
        spec.mode,
        at_start,
    );
    let killer = arm_killer(world, kill_leader_at).await?;
    let load = drive::run_phase(
        deposit_addr,
        eventbank_e2e::API_KEY,
        Arc::clone(&picker),
        spec,
        args.open_connections,
        Arc::clone(&progress),
    )
    .await;
    let at_end = readers.read().await;
    bar.finish_and_clear();
    let load = match load {
        Ok(load) => load,
        Err(e) => {
            sampler.abort();
            return Err(e);
        }
    };
    let at_end = at_end?;

    let drained = drain(world, &mut readers, spec, args, &load, at_start, at_end).await;
    sampler.abort();
    let drain_s = drained?;
    let killed = match killer {
        Some(task) => Some(restart_killed(task).await?),
        None => None,
    };
    let used = Usage::read(world, &handles).await?.since(&before);
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let e2e = latency::compute(world, &load.event_ids).await?;
    Ok(report::Phase::new(report::PhaseInputs {
        spec: spec.clone(),
        hottest_share: match spec.dist {
            Dist::Uniform => None,
            Dist::Zipf(_) => Some(picker.hottest_share()),
        },
        load,
        e2e,
        drain_s,
        cpu_used: used.cpu,
        machine_busy: used.machine,
        rss_peak: samples.rss_peak,
        outbox_backlog_max: samples.outbox_backlog_max,
        pipeline_lag_max: samples.pipeline_lag_max,
        outbox_backlog_at_end: at_end.outbox_backlog(),
        pipeline_lag_at_end: at_end.pipeline_lag(),
        lag_at_end_by_stage: at_end.lag_by_stage(),
        db: used.db,
        killed,
    }))
}

/// The services' processes, for their CPU and memory.
fn service_pids(services: &Services) -> Pids {
    Svc::ALL
        .iter()
        .filter_map(|svc| services.get(*svc).pid().map(|pid| (*svc, pid)))
        .collect()
}

/// A phase's progress: requests sent (open loop) or milliseconds passed (closed loop).
fn phase_bar(spec: &PhaseSpec) -> Result<ProgressBar> {
    let (len, unit) = match spec.mode {
        Mode::Open(rate) => (u64::from(rate) * spec.secs, "requests"),
        Mode::Closed(_) => (spec.secs * 1000, "ms"),
    };
    bar(len, unit)
}

/// CPU seconds so far of each service, of Postgres and RabbitMQ, and of loadgen itself.
fn cpu_seconds(handles: &[(Svc, u32)]) -> BTreeMap<String, f64> {
    let mut m: BTreeMap<String, f64> = handles
        .iter()
        .map(|(svc, pid)| {
            (
                svc.name().to_owned(),
                observe::process_cpu_seconds(*pid).unwrap_or(0.0),
            )
        })
        .collect();
    m.extend(
        observe::server_cpu_seconds()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    m.insert(
        "loadgen".into(),
        observe::process_cpu_seconds(std::process::id()).unwrap_or(0.0),
    );
    m
}

/// CPU seconds used between two [`cpu_seconds`] readings, per process.
fn cpu_used(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// CPU seconds (per process, and the machine's busy and total) and per-database statistics:
/// cumulative when read, used during a phase after [`Usage::since`].
struct Usage {
    cpu: BTreeMap<String, f64>,
    machine: Option<(f64, f64)>,
    db: BTreeMap<String, latency::DbStats>,
}

impl Usage {
    async fn read(world: &TestWorld, handles: &[(Svc, u32)]) -> Result<Self> {
        let cpu = cpu_seconds(handles);
        let machine = observe::machine_cpu_seconds();
        let db = latency::db_stats(world)
            .await?
            .into_iter()
            .map(|(svc, stats)| (svc.name().to_owned(), stats))
            .collect();
        Ok(Self { cpu, machine, db })
    }

    /// What was used between `before` and this reading.
    fn since(self, before: &Usage) -> Usage {
        Usage {
            cpu: cpu_used(&before.cpu, &self.cpu),
            machine: match (before.machine, self.machine) {
                (Some((b0, t0)), Some((b1, t1))) => Some((b1 - b0, t1 - t0)),
                _ => None,
            },
            db: self
                .db
                .iter()
                .filter_map(|(svc, after)| Some((svc.clone(), after.minus(before.db.get(svc)?))))
                .collect(),
        }
    }
}

/// Waits for the node killer, then starts the node it killed again; answers the node and
/// when it died.
async fn restart_killed(
    task: tokio_util::task::AbortOnDropHandle<Result<(String, f64)>>,
) -> Result<(String, f64)> {
    let (node, at) = task.await.context("the node killer panicked")??;
    eprintln!("loadgen: starting {node} again");
    cluster::run(&["start", &node]).await?;
    Ok((node, at))
}

/// Every 250 ms while the phase runs: peak RSS per service, the outbox and pipeline backlogs,
/// and the progress bar.
fn spawn_sampler(
    mut readers: Readers,
    handles: Pids,
    samples: Arc<std::sync::Mutex<Samples>>,
    progress: Arc<AtomicU64>,
    bar: ProgressBar,
    mode: Mode,
    at_start: Progress,
) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    tokio::spawn(async move {
        loop {
            let now = readers.read().await.ok();
            {
                let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
                for (svc, pid) in &handles {
                    if let Some(rss) = observe::process_rss_bytes(*pid) {
                        let peak = s.rss_peak.entry(svc.name().to_owned()).or_default();
                        *peak = (*peak).max(rss);
                    }
                }
                if let Some(p) = now {
                    s.outbox_backlog_max = s.outbox_backlog_max.max(p.outbox_backlog());
                    s.pipeline_lag_max = s.pipeline_lag_max.max(p.pipeline_lag());
                    bar.set_message(format!(
                        "accepted {:.0}, outbox backlog {:.0}, not yet in every consumer {:.0}",
                        p.accepted - at_start.accepted,
                        p.outbox_backlog(),
                        p.pipeline_lag()
                    ));
                }
            }
            bar.set_position(match mode {
                Mode::Open(_) => progress.load(Ordering::Relaxed),
                Mode::Closed(_) => started.elapsed().as_millis() as u64,
            });
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// With `--kill-leader-at`: the task that SIGKILLs the node leading most of the run's queues
/// that many seconds from now, answering the node and when.
async fn arm_killer(
    world: &TestWorld,
    kill_leader_at: Option<f64>,
) -> Result<Option<tokio_util::task::AbortOnDropHandle<Result<(String, f64)>>>> {
    let Some(secs) = kill_leader_at else {
        return Ok(None);
    };
    let node = cluster::leader_of_most(&format!("{}.", world.ns())).await?;
    eprintln!("loadgen: {node} leads most of the run's queues: SIGKILL at {secs} s");
    Ok(Some(tokio_util::task::AbortOnDropHandle::new(
        tokio::spawn(cluster::kill_after(
            node,
            Duration::from_secs_f64(secs.max(0.0)),
            Instant::now(),
        )),
    )))
}

/// Waits until every consumer has committed every deposit of this phase, every email of it has
/// been sent and the relay has marked every outbox row of it published; answers how long that
/// took, in seconds.
async fn drain(
    world: &TestWorld,
    readers: &mut Readers,
    spec: &PhaseSpec,
    args: &Args,
    load: &drive::LoadOutcome,
    at_start: Progress,
    at_end: Progress,
) -> Result<f64> {
    let drain_started = Instant::now();
    let spinner = bar_spinner("waiting for every consumer to commit every deposit")?;
    let target = at_start.accepted + load.accepted as f64;
    let mut last = at_end;
    loop {
        last = readers.read().await.unwrap_or(last);
        spinner.set_message(format!(
            "waiting for every consumer and email: {:.0} of {} still in flight",
            (target - last.min_consumed()).max(0.0),
            load.accepted
        ));
        // The relay's marks count too: the invariant check that follows the last phase reads
        // the outbox, and the marks of a round that emptied it wait for the next deposit or
        // 100 ms.
        if last.min_consumed() >= target && last.published >= target {
            let counts = latency::consumer_counts(world, &load.event_ids).await?;
            if counts.iter().all(|(_, n)| *n as u64 >= load.accepted) {
                break;
            }
        }
        if drain_started.elapsed() > Duration::from_secs(args.drain_timeout) {
            spinner.finish_and_clear();
            let counts = latency::consumer_counts(world, &load.event_ids).await?;
            bail!(
                "phase {spec}: the pipeline did not get all {} deposits through within {} s: \
                 stored by each consumer {counts:?}; behind, per stage (from /metrics) {:?}",
                load.accepted,
                args.drain_timeout,
                last.lag_by_stage()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    spinner.finish_and_clear();
    Ok(drain_started.elapsed().as_secs_f64())
}

fn bar_spinner(message: &str) -> Result<ProgressBar> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template(
        "{spinner} {elapsed_precise} {msg}",
    )?);
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(200));
    Ok(spinner)
}

//! The nemesis: a Jepsen-style fault driver for the whole pipeline.
//!
//! It starts a private stack (fresh databases and broker namespace: a [`TestWorld`]) with two
//! deposit replicas, every service reaching the broker through a cuttable proxy and email
//! sending over SMTP to an in-process sink; runs a concurrent workload against it (clients with
//! Idempotency-Keys, retrying until they get an answer, every attempt and answer kept in a
//! history); and meanwhile injects the faults of a schedule derived from a seed, each proven to
//! have struck by something observable. Then it heals, waits for quiescence and judges the
//! outcome from the history, every service's database, the SMTP sink and the dead-letter queues
//! ([`verdict`]).
//!
//! The same seed gives the same workload and the same schedule (which fault, at which point of
//! the workload, with which parameters); the moments faults strike relative to in-flight
//! requests vary with the machine, which is the point.
//!
//! Used by the `nemesis` test (a fixed-size run in `scripts/test`) and by `scripts/chaos`
//! (`src/bin/chaos.rs`: as long as asked).

mod faults;
mod stack;
mod verdict;
mod workload;

pub use faults::{Fault, FaultRecord, Scheduled, schedule};
pub use verdict::Verdict;
pub use workload::{Answer, Attempt, HistoryEntry};

use crate::svc::Svc;
use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Everything random derives from it: the workload, the schedule, the offline consumer.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Accounts the deposits spread over.
    pub accounts: usize,
    /// Stop after this many deposits were answered (`None`: until `duration`).
    pub deposits: Option<usize>,
    /// Stop starting deposits after this long (`None`: until `deposits`).
    pub duration: Option<Duration>,
    /// Answered deposits between two faults.
    pub spacing: usize,
    /// Where to write the history (one JSON object per deposit) and the fault log.
    pub out_dir: Option<PathBuf>,
    /// How long the healed system may take to quiesce.
    pub quiesce_timeout: Duration,
}

impl Config {
    /// The run `scripts/test` makes: 16 clients, 3,000 deposits over 200 accounts, every fault
    /// kind once.
    pub fn suite(seed: u64) -> Config {
        let deposits = 3_000;
        Config {
            seed,
            clients: 16,
            accounts: 200,
            deposits: Some(deposits),
            duration: None,
            spacing: deposits / (Fault::KINDS + 1),
            out_dir: None,
            quiesce_timeout: Duration::from_secs(600),
        }
    }
}

/// The seed from `NEMESIS_SEED`, else one from the clock (printed by [`run`], so a failing run
/// can be replayed).
pub fn seed_from_env() -> u64 {
    std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        })
}

/// What a run did and what the judge found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub offline: Svc,
    pub answered: usize,
    pub accepted: usize,
    pub refused: usize,
    pub attempts: usize,
    pub faults: Vec<FaultRecord>,
    pub workload_time: Duration,
    pub quiesce_time: Duration,
    pub verdict: Verdict,
}

impl Outcome {
    /// Every fault kind that struck at least once.
    pub fn kinds_struck(&self) -> std::collections::BTreeSet<&'static str> {
        self.faults.iter().map(|f| f.kind).collect()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "nemesis seed {}: {} deposits answered ({} accepted, {} refused, {} attempts) in {:.1} s; \
             {} faults; {} offline for the whole workload; quiescent {:.1} s after healing",
            self.seed,
            self.answered,
            self.accepted,
            self.refused,
            self.attempts,
            self.workload_time.as_secs_f64(),
            self.faults.len(),
            self.offline,
            self.quiesce_time.as_secs_f64(),
        )?;
        write!(f, "{}", self.verdict)
    }
}

/// Runs the nemesis once: start the stack, run the workload under the schedule, heal, quiesce,
/// judge. Prints the seed, the schedule, each fault as it strikes and the verdict. An `Err` is
/// a run that could not be carried out (a fault that did not strike, a deposit never
/// answered); a run that completed returns its [`Outcome`], whose verdict may still hold
/// violations.
pub async fn run(config: Config) -> Result<Outcome> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let offline = Svc::CONSUMERS[rng.random_range(0..Svc::CONSUMERS.len())];
    let rounds = match config.deposits {
        Some(n) => n.div_ceil(config.spacing * (Fault::KINDS + 1)).max(1),
        // Until the deadline: more rounds than any run gets through.
        None => 1_000,
    };
    let mut plan = schedule(config.seed, offline, config.spacing, rounds);
    // Every fault strikes with at least `spacing` deposits still to come: under load.
    plan.retain(|s| config.deposits.is_none_or(|n| s.at + config.spacing <= n));
    println!(
        "nemesis: seed {} (NEMESIS_SEED={} replays it), {} clients, {} accounts, {}, {} offline \
         for the whole workload",
        config.seed,
        config.seed,
        config.clients,
        config.accounts,
        match (config.deposits, config.duration) {
            (Some(n), _) => format!("{n} deposits"),
            (None, Some(d)) => format!("deposits for {} s", d.as_secs()),
            (None, None) => "no limit".to_string(),
        },
        offline
    );
    let shown = if config.deposits.is_some() {
        plan.len()
    } else {
        Fault::KINDS + 1
    };
    for s in plan.iter().take(shown) {
        println!("nemesis: schedule: after {:>5} answered: {}", s.at, s.fault);
    }
    if shown < plan.len() {
        println!("nemesis: schedule: ... and so on (seeded rounds of every kind)");
    }

    let stack = Arc::new(
        stack::Stack::start(config.seed, config.accounts, offline)
            .await
            .context("starting the nemesis stack")?,
    );
    let result = run_on(&config, &stack, plan).await;
    if let Some(dir) = &config.out_dir
        && let Ok((_, history, _)) = &result
    {
        workload::write_history(dir, config.seed, history)?;
    }
    let (outcome, _, faults_log) = result.inspect_err(|_| stack.print_logs())?;
    if let Some(dir) = &config.out_dir {
        std::fs::write(dir.join(format!("faults-{}.log", config.seed)), faults_log)?;
    }
    if !outcome.verdict.ok() {
        stack.print_logs();
    }
    match Arc::try_unwrap(stack) {
        Ok(stack) => stack.stop().await?,
        Err(_) => anyhow::bail!("the nemesis stack is still shared after the run"),
    }
    Ok(outcome)
}

async fn run_on(
    config: &Config,
    stack: &Arc<stack::Stack>,
    plan: Vec<Scheduled>,
) -> Result<(Outcome, Vec<HistoryEntry>, String)> {
    let started = Instant::now();
    let workload = workload::Workload::start(config, Arc::clone(stack));
    let injector = faults::Injector::new(Arc::clone(stack), config.seed);
    let faults = injector.run(plan, &workload, config.deposits).await;
    // Whatever happened to the schedule, the clients get to finish (or be stopped) first.
    let history = workload.finish().await?;
    let mut faults = faults?;
    let workload_time = started.elapsed();
    let offline_backlog = stack.offline_backlog().await?;
    println!(
        "nemesis: workload done in {:.1} s; {} held {offline_backlog} events while offline",
        workload_time.as_secs_f64(),
        stack.offline
    );
    anyhow::ensure!(
        offline_backlog > 0,
        "{} was offline for the whole workload yet its queues hold nothing: the fault did not strike",
        stack.offline
    );

    let healing = Instant::now();
    faults.extend(injector.heal(&history).await?);
    verdict::quiesce(stack, config.quiesce_timeout).await?;
    let quiesce_time = healing.elapsed();
    faults.push(injector.duplicates_at_rest(history.len()).await?);
    let verdict = verdict::judge(stack, &history, &faults).await?;

    let mut log = String::new();
    for f in &faults {
        log.push_str(&format!("{f}\n"));
    }
    let accepted = history
        .iter()
        .filter(|h| matches!(h.answer, Answer::Accepted { .. }))
        .count();
    let outcome = Outcome {
        seed: config.seed,
        offline: stack.offline,
        answered: history.len(),
        accepted,
        refused: history.len() - accepted,
        attempts: history.iter().map(|h| h.attempts.len()).sum(),
        faults,
        workload_time,
        quiesce_time,
        verdict,
    };
    Ok((outcome, history, log))
}

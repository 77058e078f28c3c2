//! The result: one JSON object (the last line of output) and a short table for people.
//!
//! The ceiling, in deposits/s, is the best the machine could do if each resource had it to
//! itself: a deposit needs one producer commit and four consumer events in Postgres, and one
//! publish fanned out to four queues in RabbitMQ, so
//!
//! ```text
//! postgres  = 1 / (1 / commits_per_s(1 event per tx) + 4 / events_per_s(BATCH_SIZE per tx))
//! rabbitmq  = publishes_per_s (confirmed, fanned out to 4 quorum queues, all consumed)
//! ceiling   = min(postgres, rabbitmq)
//! ```
//!
//! Both are measured with the whole machine to themselves, while the pipeline runs Postgres,
//! RabbitMQ, five services and the load generator on the same cores at once: the ceiling is an
//! upper bound the pipeline cannot reach, not an estimate of what it should.

use crate::ceiling::{BrokerCeiling, PgCeiling};
use crate::drive::{LoadOutcome, Mode, PhaseSpec};
use crate::latency::{DbStats, EndToEnd};
use crate::observe::Machine;
use crate::skeleton::Skeleton;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    pub postgres: Vec<PgCeiling>,
    pub rabbitmq: BrokerCeiling,
    /// What Postgres allows, in deposits/s (see the module doc).
    pub postgres_deposits_per_s: f64,
    /// What RabbitMQ allows, in deposits/s.
    pub rabbitmq_deposits_per_s: f64,
    pub deposits_per_s: f64,
    /// `postgres` or `rabbitmq`: the lower of the two.
    pub bound_by: &'static str,
}

impl Ceilings {
    pub fn new(postgres: Vec<PgCeiling>, rabbitmq: BrokerCeiling, consumers: usize) -> Self {
        let single = postgres
            .iter()
            .find(|c| c.events_per_transaction == 1)
            .map_or(0.0, |c| c.commits_per_s);
        let batched = postgres.iter().map(|c| c.events_per_s).fold(0.0, f64::max);
        let postgres_deposits_per_s = if single > 0.0 && batched > 0.0 {
            1.0 / (1.0 / single + consumers as f64 / batched)
        } else {
            0.0
        };
        let rabbitmq_deposits_per_s = rabbitmq.publishes_per_s;
        let (deposits_per_s, bound_by) = if postgres_deposits_per_s <= rabbitmq_deposits_per_s {
            (postgres_deposits_per_s, "postgres")
        } else {
            (rabbitmq_deposits_per_s, "rabbitmq")
        };
        Self {
            postgres,
            rabbitmq,
            postgres_deposits_per_s: round1(postgres_deposits_per_s),
            rabbitmq_deposits_per_s: round1(rabbitmq_deposits_per_s),
            deposits_per_s: round1(deposits_per_s),
            bound_by,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub count: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| round3(micros as f64 / 1000.0);
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: round3(h.mean() / 1000.0),
            count: h.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub mode: &'static str,
    /// Offered rate (open) or concurrency (closed).
    pub load: u32,
    /// `open:P%`: the rate was P percent of what the phases before it sustained.
    pub share_of_sustained_pct: Option<u32>,
    pub distribution: String,
    /// Zipf: the share of deposits that went to the hottest account.
    pub hottest_account_share: Option<f64>,
    pub secs: f64,
    pub accepted: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Accepted deposits / load duration.
    pub accepted_per_s: f64,
    /// Deposits / (first created → last consumer commit): what the pipeline sustained.
    pub e2e_per_s: f64,
    pub accept: Percentiles,
    pub e2e: Percentiles,
    /// The longest pause of the accepted stream (between two deposits created one after the
    /// other) and of the pipeline's output (between two deposits completed in all four
    /// consumers one after the other), in ms: what a broker node's death costs.
    pub accept_gap_max_ms: f64,
    pub e2e_gap_max_ms: f64,
    /// The cluster node SIGKILLed during this phase (`--kill-leader-at`), and when.
    pub killed_node: Option<String>,
    pub killed_at_s: Option<f64>,
    /// Seconds from the end of the load until every consumer had every deposit.
    pub drain_s: f64,
    /// CPU seconds used during the phase (load + drain), per process.
    pub cpu_s: BTreeMap<String, f64>,
    /// The five services' CPU seconds per 1,000 deposits.
    pub services_cpu_s_per_1000: f64,
    /// Every process's, idle excluded (other users of the machine included).
    pub machine_cpu_s_per_1000: Option<f64>,
    /// Busy share of the machine's cores during the phase (1.0 = every core busy).
    pub machine_busy: Option<f64>,
    /// CPU milliseconds per deposit: each service, postgres, rabbitmq, loadgen, and `other`
    /// (the rest of the machine's busy time: the kernel, other users).
    pub cpu_ms_per_deposit: BTreeMap<String, f64>,
    /// Deposits/s the machine's cores would allow if the stack (services, Postgres, RabbitMQ;
    /// not the load generator, not other users) had them all, at this phase's CPU per deposit.
    pub stack_cpu_bound_deposits_per_s: f64,
    pub rss_peak_mb: BTreeMap<String, f64>,
    pub outbox_backlog_max: f64,
    pub outbox_backlog_at_end: f64,
    /// Deposits accepted but not yet committed by every consumer: maximum, and when the load
    /// stopped. A lag at the end above a quarter second of load means the pipeline fell behind.
    pub pipeline_lag_max: f64,
    pub pipeline_lag_at_end: f64,
    /// When the load stopped, per stage: accepted but not yet in the outbox's publishes, not
    /// yet committed by each consumer, not yet sent by the email sender. Shows which stage
    /// fell behind.
    pub lag_at_end_by_stage: BTreeMap<String, f64>,
    pub backlog_growing: bool,
    /// Per service database during the phase: commits, statement time, rows (pg_stat_database).
    pub db: BTreeMap<String, DbStats>,
    /// Commits per 1,000 deposits, per service database (batching shows here).
    pub db_commits_per_1000: BTreeMap<String, f64>,
    /// Statement time in ms per deposit, per service database.
    pub db_active_ms_per_deposit: BTreeMap<String, f64>,
}

pub struct PhaseInputs {
    pub db: BTreeMap<String, DbStats>,
    pub spec: PhaseSpec,
    pub hottest_share: Option<f64>,
    pub load: LoadOutcome,
    pub e2e: EndToEnd,
    pub drain_s: f64,
    pub cpu_used: BTreeMap<String, f64>,
    pub machine_busy: Option<(f64, f64)>,
    pub rss_peak: BTreeMap<String, u64>,
    pub outbox_backlog_max: f64,
    pub pipeline_lag_max: f64,
    pub outbox_backlog_at_end: f64,
    pub pipeline_lag_at_end: f64,
    pub lag_at_end_by_stage: BTreeMap<String, f64>,
    pub killed: Option<(String, f64)>,
}

const SERVICES: [&str; 5] = ["deposit", "account", "email", "interest", "compliance"];

impl Phase {
    pub fn new(i: PhaseInputs) -> Self {
        let (mode, load) = match i.spec.mode {
            Mode::Open(rate) => ("open", rate),
            Mode::Closed(c) => ("closed", c),
        };
        let secs = i.load.elapsed.as_secs_f64();
        let accepted_per_s = i.load.accepted as f64 / secs.max(1e-9);
        let per_1000 = |cpu: f64| {
            if i.load.accepted == 0 {
                0.0
            } else {
                round3(cpu * 1000.0 / i.load.accepted as f64)
            }
        };
        let services_cpu: f64 = SERVICES.iter().filter_map(|s| i.cpu_used.get(*s)).sum();
        let cpu_ms_per_deposit = cpu_ms_per_deposit(&i.cpu_used, i.machine_busy, i.load.accepted);
        let stack_cpu_bound_deposits_per_s = stack_cpu_bound(&cpu_ms_per_deposit);
        Self {
            name: i.spec.name(),
            mode,
            load,
            share_of_sustained_pct: i.spec.share,
            distribution: match i.spec.dist {
                crate::drive::Dist::Uniform => "uniform".into(),
                crate::drive::Dist::Zipf(s) => format!("zipf (exponent {s})"),
            },
            hottest_account_share: i.hottest_share.map(round3),
            secs: round3(secs),
            accepted: i.load.accepted,
            errors: i.load.errors,
            error_samples: i.load.error_samples,
            accepted_per_s: round1(accepted_per_s),
            e2e_per_s: round1(i.e2e.complete as f64 / i.e2e.span_s.max(1e-9)),
            accept: Percentiles::of(&i.load.accept),
            e2e: Percentiles::of(&i.e2e.histogram),
            accept_gap_max_ms: round1(i.e2e.created_gap_max_s * 1000.0),
            e2e_gap_max_ms: round1(i.e2e.completed_gap_max_s * 1000.0),
            killed_node: i.killed.as_ref().map(|(node, _)| node.clone()),
            killed_at_s: i.killed.as_ref().map(|(_, at)| round3(*at)),
            drain_s: round3(i.drain_s),
            cpu_s: i
                .cpu_used
                .iter()
                .map(|(k, v)| (k.clone(), round3(*v)))
                .collect(),
            services_cpu_s_per_1000: per_1000(services_cpu),
            machine_cpu_s_per_1000: i.machine_busy.map(|(busy, _)| per_1000(busy)),
            machine_busy: i
                .machine_busy
                .map(|(busy, total)| round3(busy / total.max(1e-9))),
            cpu_ms_per_deposit,
            stack_cpu_bound_deposits_per_s,
            rss_peak_mb: i
                .rss_peak
                .iter()
                .map(|(k, v)| (k.clone(), round1(*v as f64 / 1024.0 / 1024.0)))
                .collect(),
            outbox_backlog_max: i.outbox_backlog_max,
            outbox_backlog_at_end: i.outbox_backlog_at_end,
            pipeline_lag_max: i.pipeline_lag_max,
            pipeline_lag_at_end: i.pipeline_lag_at_end,
            lag_at_end_by_stage: i.lag_at_end_by_stage,
            backlog_growing: i.pipeline_lag_at_end > (accepted_per_s / 4.0).max(100.0),
            db_commits_per_1000: i
                .db
                .iter()
                .map(|(k, d)| (k.clone(), per_1000(d.commits as f64)))
                .collect(),
            db_active_ms_per_deposit: i
                .db
                .iter()
                .map(|(k, d)| (k.clone(), per_1000(d.active_ms) / 1000.0))
                .collect(),
            db: i.db,
        }
    }
}

/// CPU ms per deposit of each process in `cpu_used` (CPU seconds), and `other`: the rest of
/// the machine's busy seconds.
fn cpu_ms_per_deposit(
    cpu_used: &BTreeMap<String, f64>,
    machine_busy: Option<(f64, f64)>,
    accepted: u64,
) -> BTreeMap<String, f64> {
    let deposits = accepted.max(1) as f64;
    let mut out: BTreeMap<String, f64> = cpu_used
        .iter()
        .map(|(k, v)| (k.clone(), round3(v * 1000.0 / deposits)))
        .collect();
    if let Some((busy, _)) = machine_busy {
        let ours: f64 = cpu_used.values().sum();
        out.insert(
            "other".into(),
            round3((busy - ours).max(0.0) * 1000.0 / deposits),
        );
    }
    out
}

/// Deposits/s the machine's cores allow the stack (every process but loadgen and `other`) at
/// these CPU ms per deposit.
fn stack_cpu_bound(cpu_ms_per_deposit: &BTreeMap<String, f64>) -> f64 {
    let stack_ms: f64 = cpu_ms_per_deposit
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "loadgen" | "other"))
        .map(|(_, v)| v)
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if stack_ms > 0.0 {
        round1(cores * 1000.0 / stack_ms)
    } else {
        0.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Result {
    /// Sustained deposits/s end to end: the best `e2e_per_s` of the closed-loop uniform
    /// phases (of all phases when there is none).
    pub deposits_per_s: f64,
    pub ceiling_deposits_per_s: Option<f64>,
    /// deposits_per_s / skeleton_deposits_per_s: how close the pipeline comes to its own
    /// skeleton, run on the same machine in the same run.
    pub ratio: Option<f64>,
    /// What the pipeline's skeleton sustained (`--skeleton`).
    pub skeleton_deposits_per_s: Option<f64>,
    /// deposits_per_s / ceiling_deposits_per_s (context: the ceilings are bounds measured with
    /// the machine to each resource alone).
    pub ceiling_ratio: Option<f64>,
    /// Latency, memory and backlog at the reference load: the `open:50%` phase, else the
    /// open-loop phase whose offered rate is closest to 1,000/s (the first phase when there is
    /// none).
    pub reference_phase: String,
    pub accept_p50_ms: f64,
    pub accept_p99_ms: f64,
    pub accept_p999_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_p999_ms: f64,
    pub cpu_s_per_1000_deposits: f64,
    pub peak_rss_mb: BTreeMap<String, f64>,
    pub outbox_backlog_max: f64,
    pub backlog_growing: bool,
    pub throughput_phase: String,
    pub rebuild_events_per_s: Option<f64>,
    pub rebuild_events: Option<u64>,
    pub quick: bool,
    pub started_at: DateTime<Utc>,
    pub command: String,
    pub service_env: Vec<String>,
    pub accounts: usize,
    pub machine: Machine,
    pub ceilings: Option<Ceilings>,
    pub skeleton: Option<Skeleton>,
    pub phases: Vec<Phase>,
    /// What the SMTP server inside loadgen received (absent with `--email-transport file`).
    pub emails: Option<EmailTally>,
}

/// Emails received by the benchmark's SMTP server over the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EmailTally {
    pub transport: String,
    /// Messages received.
    pub received: u64,
    /// Distinct Message-IDs among them (one per deposit; more received than distinct means
    /// an email was delivered twice).
    pub distinct: u64,
}

pub struct Inputs {
    pub quick: bool,
    pub started_at: DateTime<Utc>,
    pub machine: Machine,
    pub command: String,
    pub service_env: Vec<String>,
    pub accounts: usize,
    pub ceilings: Option<Ceilings>,
    pub skeleton: Option<Skeleton>,
    pub phases: Vec<Phase>,
    pub rebuild_events_per_s: Option<f64>,
    pub rebuild_events: Option<u64>,
    pub emails: Option<EmailTally>,
}

/// The reference load is this percentage of the sustained rate (`open:50%`).
const REFERENCE_SHARE: u32 = 50;

/// The closed-loop uniform phase that sustained the most end to end.
fn best_closed_uniform(phases: &[Phase]) -> Option<&Phase> {
    phases
        .iter()
        .filter(|p| p.mode == "closed" && p.distribution == "uniform")
        .max_by(|a, b| a.e2e_per_s.total_cmp(&b.e2e_per_s))
}

/// What the closed-loop uniform phases so far sustained at best (what `open:P%` is P% of).
pub fn sustained(phases: &[Phase]) -> Option<f64> {
    best_closed_uniform(phases).map(|p| p.e2e_per_s)
}

impl Result {
    pub fn new(i: Inputs) -> Self {
        let open = || i.phases.iter().filter(|p| p.mode == "open");
        let reference = open()
            .find(|p| p.share_of_sustained_pct == Some(REFERENCE_SHARE))
            .or_else(|| open().min_by_key(|p| p.load.abs_diff(1000)))
            .or(i.phases.first());
        let best = best_closed_uniform(&i.phases).or_else(|| {
            i.phases
                .iter()
                .max_by(|a, b| a.e2e_per_s.total_cmp(&b.e2e_per_s))
        });
        let deposits_per_s = best.map_or(0.0, |p| p.e2e_per_s);
        let ceiling = i.ceilings.as_ref().map(|c| c.deposits_per_s);
        let skeleton = i.skeleton.as_ref().map(|s| s.deposits_per_s);
        let share_of = |bound: Option<f64>| {
            bound
                .filter(|b| *b > 0.0)
                .map(|b| round3(deposits_per_s / b))
        };
        Self {
            deposits_per_s,
            ceiling_deposits_per_s: ceiling,
            ratio: share_of(skeleton),
            skeleton_deposits_per_s: skeleton,
            ceiling_ratio: share_of(ceiling),
            reference_phase: reference.map(|p| p.name.clone()).unwrap_or_default(),
            accept_p50_ms: reference.map_or(0.0, |p| p.accept.p50_ms),
            accept_p99_ms: reference.map_or(0.0, |p| p.accept.p99_ms),
            accept_p999_ms: reference.map_or(0.0, |p| p.accept.p999_ms),
            e2e_p50_ms: reference.map_or(0.0, |p| p.e2e.p50_ms),
            e2e_p99_ms: reference.map_or(0.0, |p| p.e2e.p99_ms),
            e2e_p999_ms: reference.map_or(0.0, |p| p.e2e.p999_ms),
            cpu_s_per_1000_deposits: reference.map_or(0.0, |p| p.services_cpu_s_per_1000),
            peak_rss_mb: reference.map(|p| p.rss_peak_mb.clone()).unwrap_or_default(),
            outbox_backlog_max: reference.map_or(0.0, |p| p.outbox_backlog_max),
            backlog_growing: reference.is_some_and(|p| p.backlog_growing),
            throughput_phase: best.map(|p| p.name.clone()).unwrap_or_default(),
            rebuild_events_per_s: i.rebuild_events_per_s,
            rebuild_events: i.rebuild_events,
            emails: i.emails,
            quick: i.quick,
            started_at: i.started_at,
            command: i.command,
            service_env: i.service_env,
            accounts: i.accounts,
            machine: i.machine,
            ceilings: i.ceilings,
            skeleton: i.skeleton,
            phases: i.phases,
        }
    }
}

pub fn phase_line(p: &Phase) -> String {
    format!(
        "{}: {} accepted ({} errors), {:.0}/s accepted, {:.0}/s end to end; accept p99 {:.1} ms, \
         end-to-end p99 {:.1} ms; longest pause accepted {:.0} ms, end to end {:.0} ms; lag max \
         {:.0}, at end {:.0}; drained in {:.1} s{}",
        p.name,
        p.accepted,
        p.errors,
        p.accepted_per_s,
        p.e2e_per_s,
        p.accept.p99_ms,
        p.e2e.p99_ms,
        p.accept_gap_max_ms,
        p.e2e_gap_max_ms,
        p.pipeline_lag_max,
        p.pipeline_lag_at_end,
        p.drain_s,
        match (&p.killed_node, p.killed_at_s) {
            (Some(node), Some(at)) => format!("; {node} SIGKILLed at {at:.1} s"),
            _ => String::new(),
        }
    )
}

/// The human table.
pub fn table(r: &Result) -> String {
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "eventbank benchmark{} — {} cores, {}, load average before {}",
        if r.quick { " (quick)" } else { "" },
        r.machine.cores,
        r.machine.cpu_model,
        r.machine.load_average_before
    );
    if let Some(c) = &r.ceilings {
        ceilings_lines(&mut out, c);
    }
    if let Some(s) = &r.skeleton {
        skeleton_line(&mut out, s);
    }
    phase_rows(&mut out, &r.phases);
    for p in &r.phases {
        phase_details(&mut out, p);
    }
    let _ = writeln!(
        out,
        "\nsustained {:.0} deposits/s end to end ({}){}",
        r.deposits_per_s,
        r.throughput_phase,
        bound_shares(r)
    );
    if let Some(rebuild) = r.rebuild_events_per_s {
        let _ = writeln!(
            out,
            "account rebuild: {rebuild:.0} events/s ({} events)",
            r.rebuild_events.map_or("?".into(), |n| n.to_string())
        );
    }
    if let Some(e) = &r.emails {
        let _ = writeln!(
            out,
            "emails received over {}: {} ({} distinct Message-IDs)",
            e.transport, e.received, e.distinct
        );
    }
    out
}

/// "; skeleton S/s; ratio R%; ceiling C/s (P%)", each part where it was measured.
fn bound_shares(r: &Result) -> String {
    let mut out = String::new();
    if let (Some(s), Some(ratio)) = (r.skeleton_deposits_per_s, r.ratio) {
        let _ = write!(out, "; skeleton {s:.0}/s; ratio {:.0}%", ratio * 100.0);
    }
    if let (Some(c), Some(ratio)) = (r.ceiling_deposits_per_s, r.ceiling_ratio) {
        let _ = write!(out, "; ceiling {c:.0}/s ({:.0}%)", ratio * 100.0);
    }
    out
}

fn skeleton_line(out: &mut String, s: &Skeleton) {
    let _ = writeln!(
        out,
        "\nskeleton (same shape, no features; {} producers, {:.0} s): {:.0} deposits/s end to end \
         ({} deposits, drained in {:.1} s); CPU ms per deposit: {}",
        s.producers,
        s.secs,
        s.deposits_per_s,
        s.deposits,
        s.drain_s,
        listed(&s.cpu_ms_per_deposit, 2)
    );
}

fn ceilings_lines(out: &mut String, c: &Ceilings) {
    let _ = writeln!(
        out,
        "\nceilings (each measured with the machine to itself):"
    );
    for pg in &c.postgres {
        let _ = writeln!(
            out,
            "  postgres  {:>2} conns x {:>3} events/tx  {:>9.0} commits/s  {:>9.0} events/s",
            pg.connections, pg.events_per_transaction, pg.commits_per_s, pg.events_per_s
        );
    }
    let _ = writeln!(
        out,
        "  rabbitmq  {} quorum queues, {} B msgs   {:>9.0} publishes/s {:>8.0} deliveries/s",
        c.rabbitmq.queues,
        c.rabbitmq.message_bytes,
        c.rabbitmq.publishes_per_s,
        c.rabbitmq.deliveries_per_s
    );
    let _ = writeln!(
        out,
        "  => deposits/s: postgres {:.0}, rabbitmq {:.0}; ceiling {:.0} (bound by {})",
        c.postgres_deposits_per_s, c.rabbitmq_deposits_per_s, c.deposits_per_s, c.bound_by
    );
}

/// One row per phase: rates, latencies, services' CPU, lag.
fn phase_rows(out: &mut String, phases: &[Phase]) {
    let _ = writeln!(
        out,
        "\n{:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "phase",
        "acc/s",
        "e2e/s",
        "acc p50",
        "acc p99",
        "acc p999",
        "e2e p50",
        "e2e p99",
        "e2e p999",
        "cpu/1k",
        "lag max"
    );
    for p in phases {
        let _ = writeln!(
            out,
            "{:<24} {:>8.0} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7.2} {:>7.0}",
            p.name,
            p.accepted_per_s,
            p.e2e_per_s,
            p.accept.p50_ms,
            p.accept.p99_ms,
            p.accept.p999_ms,
            p.e2e.p50_ms,
            p.e2e.p99_ms,
            p.e2e.p999_ms,
            p.services_cpu_s_per_1000,
            p.pipeline_lag_max
        );
    }
    let _ = writeln!(
        out,
        "\n(latencies in ms; cpu/1k = the five services' CPU seconds per 1,000 deposits)"
    );
}

/// "key value, key value" with `decimals` digits after the point.
fn listed(values: &BTreeMap<String, f64>, decimals: usize) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k} {v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A phase's memory, backlog, CPU and commits, in lines of their own.
fn phase_details(out: &mut String, p: &Phase) {
    let _ = writeln!(
        out,
        "{}: peak RSS MB: {}; outbox backlog max {:.0}; machine busy {}; errors {}",
        p.name,
        listed(&p.rss_peak_mb, 1),
        p.outbox_backlog_max,
        p.machine_busy
            .map_or("?".into(), |b| format!("{:.0}%", b * 100.0)),
        p.errors
    );
    let _ = writeln!(
        out,
        "{}: behind when the load stopped: {}",
        p.name,
        listed(&p.lag_at_end_by_stage, 0)
    );
    let db: Vec<String> = p
        .db_commits_per_1000
        .iter()
        .map(|(k, c)| {
            format!(
                "{k} {c:.0} ({:.2} ms)",
                p.db_active_ms_per_deposit.get(k).copied().unwrap_or(0.0)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "{}: CPU ms per deposit: {}; the stack's CPU alone allows {:.0} deposits/s",
        p.name,
        listed(&p.cpu_ms_per_deposit, 2),
        p.stack_cpu_bound_deposits_per_s
    );
    let _ = writeln!(
        out,
        "{}: commits per 1,000 deposits (statement ms per deposit): {}",
        p.name,
        db.join(", ")
    );
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

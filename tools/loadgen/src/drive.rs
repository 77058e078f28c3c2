//! Driving `POST /deposits`: open loop at a fixed offered rate, or closed loop at a fixed
//! concurrency, over keep-alive connections, with a uniform or a Zipf (hot-account) choice of
//! account.
//!
//! Open loop: request `i` is due at `start + i / rate`. Its accept latency is measured from that
//! due time, not from when a worker got round to sending it, so a stall of the service shows up
//! in the latency of every request that should have been sent meanwhile (no coordinated
//! omission). Closed loop: each worker sends its next request when the previous one answered.

use crate::client::Conn;
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Latencies are recorded in microseconds, up to 10 minutes, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Offered rate in requests per second.
    Open(u32),
    /// Concurrent requests.
    Closed(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    Uniform,
    /// Zipf with this exponent over the accounts (rank 1 the hottest).
    Zipf(f64),
}

/// One phase of load: `open:RATE:SECS[:DIST]` or `closed:CONCURRENCY:SECS[:DIST]`, DIST being
/// `uniform` (default), `zipf` (exponent 1.0) or `zipf=S`. An open RATE may be `P%`: P percent
/// of the best closed-loop uniform rate sustained by the phases before it.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSpec {
    pub mode: Mode,
    pub secs: u64,
    pub dist: Dist,
    /// `open:P%`: the percentage, and `Mode::Open(0)` until [`PhaseSpec::resolve`].
    pub share: Option<u32>,
}

impl PhaseSpec {
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// The phase with its `P%` rate turned into deposits/s, given what earlier phases
    /// sustained (`None`: no closed-loop uniform phase ran before it).
    pub fn resolve(&self, sustained: Option<f64>) -> Result<PhaseSpec> {
        let Some(share) = self.share else {
            return Ok(self.clone());
        };
        let sustained = sustained.with_context(|| {
            format!("phase {self}: a P% rate needs a closed-loop uniform phase before it")
        })?;
        // Whole deposits per second; at least one.
        let rate = (sustained * f64::from(share) / 100.0).round().max(1.0) as u32;
        Ok(PhaseSpec {
            mode: Mode::Open(rate),
            ..self.clone()
        })
    }
}

impl fmt::Display for PhaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.mode, self.share) {
            (Mode::Open(0), Some(share)) => write!(f, "open:{share}%:{}", self.secs)?,
            (Mode::Open(rate), Some(share)) => write!(f, "open:{rate}={share}%:{}", self.secs)?,
            (Mode::Open(rate), None) => write!(f, "open:{rate}:{}", self.secs)?,
            (Mode::Closed(c), _) => write!(f, "closed:{c}:{}", self.secs)?,
        }
        match self.dist {
            Dist::Uniform => f.write_str(":uniform"),
            Dist::Zipf(s) => write!(f, ":zipf={s}"),
        }
    }
}

impl FromStr for PhaseSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let (kind, value, secs, dist) = match parts.as_slice() {
            [k, v, d] => (*k, *v, *d, "uniform"),
            [k, v, d, dist] => (*k, *v, *d, *dist),
            _ => bail!("phase {s:?}: expected open:RATE:SECS[:DIST] or closed:CONC:SECS[:DIST]"),
        };
        let (value, share) = match value.strip_suffix('%') {
            Some(percent) if kind == "open" => (percent, true),
            _ => (value, false),
        };
        let value: u32 = value
            .parse()
            .with_context(|| format!("phase {s:?}: {value:?} is not a positive integer"))?;
        if value == 0 {
            bail!("phase {s:?}: rate or concurrency must be at least 1");
        }
        let mode = match kind {
            "open" if share => Mode::Open(0),
            "open" => Mode::Open(value),
            "closed" => Mode::Closed(value),
            other => bail!("phase {s:?}: {other:?} is neither open nor closed"),
        };
        let secs: u64 = secs
            .parse()
            .with_context(|| format!("phase {s:?}: {secs:?} is not a number of seconds"))?;
        let dist = match dist {
            "uniform" => Dist::Uniform,
            "zipf" => Dist::Zipf(1.0),
            other => match other.strip_prefix("zipf=").map(str::parse::<f64>) {
                Some(Ok(e)) if e > 0.0 => Dist::Zipf(e),
                _ => bail!("phase {s:?}: distribution {other:?} is not uniform, zipf or zipf=S"),
            },
        };
        Ok(PhaseSpec {
            mode,
            secs,
            dist,
            share: share.then_some(value),
        })
    }
}

/// Picks the account of each deposit.
pub struct Picker {
    accounts: Vec<String>,
    /// Cumulative probabilities by rank, for Zipf; empty for uniform.
    cdf: Vec<f64>,
}

impl Picker {
    pub fn new(accounts: Vec<String>, dist: Dist) -> Self {
        let cdf = match dist {
            Dist::Uniform => Vec::new(),
            Dist::Zipf(s) => {
                let weights: Vec<f64> = (1..=accounts.len())
                    .map(|rank| 1.0 / (rank as f64).powf(s))
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut acc = 0.0;
                weights
                    .iter()
                    .map(|w| {
                        acc += w / total;
                        acc
                    })
                    .collect()
            }
        };
        Self { accounts, cdf }
    }

    pub fn pick(&self) -> &str {
        let index = if self.cdf.is_empty() {
            rand::random_range(0..self.accounts.len())
        } else {
            let u: f64 = rand::random();
            self.cdf
                .partition_point(|c| *c < u)
                .min(self.accounts.len() - 1)
        };
        &self.accounts[index]
    }

    /// Share of picks that land on the hottest account (for the report).
    pub fn hottest_share(&self) -> f64 {
        match self.cdf.first() {
            Some(p) => *p,
            None => 1.0 / self.accounts.len() as f64,
        }
    }
}

/// A deposit body: 1.00 to 99.99 USD, small enough that no account crosses the CTR threshold
/// in a uniform run (the compliance rules still run for every deposit).
fn deposit_body(account: &str) -> Bytes {
    let major: u32 = rand::random_range(1..100);
    let minor: u32 = rand::random_range(0..100);
    Bytes::from(format!(
        r#"{{"account_id":"{account}","amount":"{major}.{minor:02}","currency":"USD"}}"#
    ))
}

/// What one phase's load produced.
pub struct LoadOutcome {
    pub accept: Histogram<u64>,
    pub accepted: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub event_ids: Vec<Uuid>,
    pub elapsed: Duration,
}

#[derive(Default)]
struct WorkerOutcome {
    errors: u64,
    error_samples: Vec<String>,
    event_ids: Vec<Uuid>,
}

#[derive(serde::Deserialize)]
struct Accepted {
    event_id: Uuid,
}

/// When a worker's requests are due: open loop takes the next ticket's slot, closed loop sends
/// at once until the deadline.
#[derive(Clone)]
struct Schedule {
    mode: Mode,
    start: Instant,
    deadline: Instant,
    /// Open loop: how many requests in all.
    total: Option<u64>,
    ticket: Arc<AtomicU64>,
}

impl Schedule {
    /// Waits until the next request is due and answers when that was; `None` when the phase
    /// is over.
    async fn next_due(&self) -> Option<Instant> {
        match (self.mode, self.total) {
            (Mode::Open(rate), Some(total)) => {
                let i = self.ticket.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return None;
                }
                let due = self.start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            _ => {
                let now = Instant::now();
                (now < self.deadline).then_some(now)
            }
        }
    }
}

/// Runs one phase; `progress` counts answered requests as they come.
pub async fn run_phase(
    addr: SocketAddr,
    api_key: &str,
    picker: Arc<Picker>,
    spec: &PhaseSpec,
    open_connections: u32,
    progress: Arc<AtomicU64>,
) -> Result<LoadOutcome> {
    let start = Instant::now();
    let (workers, total) = match spec.mode {
        Mode::Open(rate) => (open_connections, Some(u64::from(rate) * spec.secs)),
        Mode::Closed(concurrency) => (concurrency, None),
    };
    let schedule = Schedule {
        mode: spec.mode,
        start,
        deadline: start + Duration::from_secs(spec.secs),
        total,
        ticket: Arc::new(AtomicU64::new(0)),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let conn = Conn::new(addr, api_key)?;
        tasks.spawn(worker(
            conn,
            Arc::clone(&picker),
            schedule.clone(),
            Arc::clone(&progress),
        ));
    }
    let mut outcome = LoadOutcome {
        accept: new_histogram()?,
        accepted: 0,
        errors: 0,
        error_samples: Vec::new(),
        event_ids: Vec::new(),
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        let (accept, worker) = joined.context("load worker panicked")??;
        outcome.accept.add(&accept)?;
        outcome.errors += worker.errors;
        for sample in worker.error_samples {
            if outcome.error_samples.len() < 5 {
                outcome.error_samples.push(sample);
            }
        }
        outcome.event_ids.extend(worker.event_ids);
    }
    outcome.elapsed = start.elapsed();
    outcome.accepted = outcome.event_ids.len() as u64;
    Ok(outcome)
}

/// One connection's requests: each due one is sent, its accept latency recorded from when it
/// was due.
async fn worker(
    mut conn: Conn,
    picker: Arc<Picker>,
    schedule: Schedule,
    progress: Arc<AtomicU64>,
) -> Result<(Histogram<u64>, WorkerOutcome)> {
    let mut accept = new_histogram()?;
    let mut out = WorkerOutcome::default();
    while let Some(due) = schedule.next_due().await {
        let body = deposit_body(picker.pick());
        let answer = conn.post_json("/deposits", body).await;
        let latency = due.elapsed();
        progress.fetch_add(1, Ordering::Relaxed);
        match accepted_event(answer) {
            Ok(event_id) => {
                out.event_ids.push(event_id);
                accept.saturating_record(latency.as_micros().max(1) as u64);
            }
            Err(failure) => {
                out.errors += 1;
                if out.error_samples.len() < 3 {
                    out.error_samples.push(failure);
                }
            }
        }
    }
    Ok((accept, out))
}

/// The event id of a `201 Created`, or what went wrong, in a line.
fn accepted_event(answer: Result<(u16, Bytes)>) -> std::result::Result<Uuid, String> {
    match answer {
        Ok((201, body)) => serde_json::from_slice::<Accepted>(&body)
            .map(|a| a.event_id)
            .map_err(|e| format!("201 with an unreadable body: {e}")),
        Ok((status, body)) => Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Opens `count` USD accounts through `POST /accounts` and answers their ids.
pub async fn create_accounts(
    addr: SocketAddr,
    api_key: &str,
    count: u32,
    progress: Arc<AtomicU64>,
) -> Result<Vec<String>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut conn = Conn::new(addr, api_key)?;
        let next = Arc::clone(&next);
        let progress = Arc::clone(&progress);
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= u64::from(count) {
                    break;
                }
                let body = Bytes::from(format!(
                    r#"{{"holder_name":"Bench Holder {i}","email":"bench{i}@example.com","currency":"USD"}}"#
                ));
                let (status, body) = conn.post_json("/accounts", body).await?;
                if status != 201 {
                    bail!(
                        "POST /accounts answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let value: serde_json::Value = serde_json::from_slice(&body)?;
                let id = value["account_id"]
                    .as_str()
                    .context("POST /accounts answered no account_id")?;
                ids.push(id.to_owned());
                progress.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(ids)
        });
    }
    let mut all = Vec::with_capacity(count as usize);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("account worker panicked")??);
    }
    all.sort();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_and_print() {
        let p: PhaseSpec = "open:1000:60".parse().unwrap();
        assert_eq!(p.mode, Mode::Open(1000));
        assert_eq!(p.dist, Dist::Uniform);
        assert_eq!(p.to_string(), "open:1000:60:uniform");
        let p: PhaseSpec = "closed:64:30:zipf".parse().unwrap();
        assert_eq!(p.mode, Mode::Closed(64));
        assert_eq!(p.dist, Dist::Zipf(1.0));
        let p: PhaseSpec = "closed:8:5:zipf=1.2".parse().unwrap();
        assert_eq!(p.dist, Dist::Zipf(1.2));
        let p: PhaseSpec = "open:5%:30".parse().unwrap();
        assert_eq!((p.mode, p.share), (Mode::Open(0), Some(5)));
        assert_eq!(p.to_string(), "open:5%:30:uniform");
        assert!(p.resolve(None).is_err());
        let p = p.resolve(Some(1234.0)).unwrap();
        assert_eq!(p.mode, Mode::Open(62));
        assert_eq!(p.to_string(), "open:62=5%:30:uniform");
        for bad in [
            "closed:5%:1",
            "open:0%:1",
            "open:0:1",
            "open:x:1",
            "half:1:1",
            "open:1",
            "open:1:1:pareto",
        ] {
            assert!(bad.parse::<PhaseSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_answer_is_an_event_id_or_one_line_of_what_went_wrong() {
        let id = Uuid::now_v7();
        let body = Bytes::from(format!(r#"{{"event_id":"{id}"}}"#));
        assert_eq!(accepted_event(Ok((201, body))), Ok(id));
        let unreadable = accepted_event(Ok((201, Bytes::from_static(b"{}")))).unwrap_err();
        assert!(
            unreadable.starts_with("201 with an unreadable body"),
            "{unreadable}"
        );
        let long = Bytes::from("x".repeat(500));
        assert_eq!(
            accepted_event(Ok((503, long))),
            Err(format!("HTTP 503: {}", "x".repeat(200)))
        );
        assert_eq!(
            accepted_event(Err(anyhow::anyhow!("refused"))),
            Err("refused".to_owned())
        );
    }

    #[test]
    fn zipf_favours_the_first_accounts_and_uniform_does_not() {
        let accounts: Vec<String> = (0..1000).map(|i| format!("ACC-{i}")).collect();
        let zipf = Picker::new(accounts.clone(), Dist::Zipf(1.0));
        // H(1000) = 7.485..., so rank 1 gets about 13.4%.
        assert!((zipf.hottest_share() - 0.1336).abs() < 0.001);
        let hits = (0..20_000).filter(|_| zipf.pick() == "ACC-0").count();
        assert!((2_200..3_200).contains(&hits), "{hits}");
        let uniform = Picker::new(accounts, Dist::Uniform);
        let hits = (0..20_000).filter(|_| uniform.pick() == "ACC-0").count();
        assert!(hits < 100, "{hits}");
    }
}

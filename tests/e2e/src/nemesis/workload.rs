//! The workload: concurrent clients posting deposits with Idempotency-Keys, each retried (same
//! key, either replica) until the service gives an answer, every attempt kept in a history.
//!
//! Each deposit derives from (seed, index) alone, so a run of any length is reproducible. About
//! one in a hundred is in EUR into a USD account: the service refuses it (422), and the judge
//! checks it left nothing behind.

use super::Config;
use super::stack::Stack;
use crate::http::post_json;
use anyhow::{Context as _, Result, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// A deposit nobody answers for this long fails the run: some fault was not healed.
const ANSWER_DEADLINE: Duration = Duration::from_secs(180);

/// One deposit the workload makes.
#[derive(Debug, Clone, Serialize)]
pub struct Deposit {
    pub index: usize,
    pub account: usize,
    pub amount_minor: i64,
    pub currency: &'static str,
}

impl Deposit {
    pub fn planned(seed: u64, index: usize, accounts: usize) -> Deposit {
        let mut rng = StdRng::seed_from_u64(
            seed ^ (index as u64)
                .wrapping_add(1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let account = rng.random_range(0..accounts);
        let roll = rng.random_range(0..100);
        let (amount_minor, currency) = match roll {
            // At or over compliance's default CTR threshold (10,000.00): an alert each.
            0..=3 => (rng.random_range(1_000_000..2_000_000), "USD"),
            // Refused: the account is in USD.
            4 => (rng.random_range(1..100_000), "EUR"),
            _ => (rng.random_range(1..500_000), "USD"),
        };
        Deposit {
            index,
            account,
            amount_minor,
            currency,
        }
    }
}

/// One try at one deposit.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Which deposit replica (0 or 1).
    pub replica: usize,
    /// Milliseconds since the workload started.
    pub start_ms: u64,
    pub end_ms: u64,
    /// The HTTP status, or `None` when no answer came (connection refused or reset, timeout).
    pub status: Option<u16>,
    /// The problem's title, or the transport error.
    pub detail: String,
}

/// The service's final answer to one deposit.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Accepted {
        deposit_id: Uuid,
        event_id: Uuid,
        sequence: i64,
    },
    Refused {
        status: u16,
        title: String,
    },
}

/// One deposit: what was asked, every attempt, and the answer.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub client: usize,
    pub key: String,
    pub account_id: String,
    #[serde(flatten)]
    pub deposit: Deposit,
    pub attempts: Vec<Attempt>,
    #[serde(flatten)]
    pub answer: Answer,
}

pub struct Workload {
    /// Deposits answered so far.
    answered: Arc<watch::Sender<usize>>,
    /// Clients may start deposits with an index below this; the injector holds them back so
    /// the workload does not run ahead of the schedule.
    limit: watch::Sender<usize>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Result<Vec<HistoryEntry>>>>,
    /// When the clients stop starting deposits (`Config::duration`): the first time the
    /// injector waits for the next fault's point after it.
    pub deadline: Option<Instant>,
}

impl Workload {
    pub fn start(config: &Config, stack: Arc<Stack>) -> Workload {
        let answered = Arc::new(watch::Sender::new(0usize));
        let next = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (limit, limit_rx) = watch::channel(config.spacing.max(1));
        let started = Instant::now();
        let deadline = config.duration.map(|d| started + d);
        let clients = (0..config.clients)
            .map(|client| {
                let ctx = ClientCtx {
                    client,
                    seed: config.seed,
                    total: config.deposits,
                    started,
                    stack: Arc::clone(&stack),
                    next: Arc::clone(&next),
                    answered: Arc::clone(&answered),
                    stop: Arc::clone(&stop),
                    limit: limit_rx.clone(),
                };
                tokio::spawn(ctx.run())
            })
            .collect();
        Workload {
            answered,
            limit,
            stop,
            clients,
            deadline,
        }
    }

    pub fn answered(&self) -> usize {
        *self.answered.borrow()
    }

    /// Waits until `n` deposits were answered; false if the workload ended first.
    pub async fn reached(&self, n: usize, total: Option<usize>) -> bool {
        let mut answered = self.answered.subscribe();
        loop {
            if *answered.borrow_and_update() >= n {
                return true;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                // Time is up: clients stop here, between two faults, so no fault ever strikes
                // a workload that has already ended.
                self.stop();
                return false;
            }
            if self.is_done(total) || self.clients.iter().all(|c| c.is_finished()) {
                return false;
            }
            let deadline = self.deadline.map_or_else(
                || Instant::now() + Duration::from_secs(1),
                |d| d.min(Instant::now() + Duration::from_secs(1)),
            );
            // Woken by every answer; the timeout only re-checks whether the clients ended.
            let _ = tokio::time::timeout_at(deadline.into(), answered.changed()).await;
        }
    }

    /// Lets clients start deposits below `limit`.
    pub fn allow_until(&self, limit: usize) {
        self.limit.send_modify(|l| *l = (*l).max(limit));
    }

    /// Lets every client run to the end.
    pub fn release(&self) {
        self.limit.send_modify(|l| *l = usize::MAX);
    }

    /// Stops clients from starting new deposits (those under way still get their answer).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.release();
    }

    /// Whether clients stopped starting deposits: all were made, or they were stopped.
    pub fn is_done(&self, total: Option<usize>) -> bool {
        self.stop.load(Ordering::SeqCst) || total.is_some_and(|n| self.answered() >= n)
    }

    /// Waits for every client; the history in deposit order.
    pub async fn finish(self) -> Result<Vec<HistoryEntry>> {
        if self.deadline.is_some() {
            self.stop();
        }
        self.release();
        let mut history = Vec::new();
        let mut first_error = None;
        for client in self.clients {
            match client.await.context("a workload client panicked")? {
                Ok(entries) => history.extend(entries),
                Err(e) => {
                    self.stop.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        history.sort_by_key(|h| h.deposit.index);
        Ok(history)
    }
}

struct ClientCtx {
    client: usize,
    seed: u64,
    total: Option<usize>,
    started: Instant,
    stack: Arc<Stack>,
    next: Arc<AtomicUsize>,
    answered: Arc<watch::Sender<usize>>,
    stop: Arc<AtomicBool>,
    limit: watch::Receiver<usize>,
}

impl ClientCtx {
    async fn run(mut self) -> Result<Vec<HistoryEntry>> {
        let mut history = Vec::new();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let index = self.next.fetch_add(1, Ordering::SeqCst);
            if self.total.is_some_and(|n| index >= n) {
                break;
            }
            // Held back while a fault is under way and the workload reached the next one.
            self.limit
                .wait_for(|limit| index < *limit)
                .await
                .context("the workload's limit is gone")?;
            let deposit = Deposit::planned(self.seed, index, self.stack.accounts.len());
            let entry = self.deposit(deposit).await?;
            history.push(entry);
            self.answered.send_modify(|n| *n += 1);
        }
        Ok(history)
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn deposit(&self, deposit: Deposit) -> Result<HistoryEntry> {
        let account_id = self.stack.accounts[deposit.account].clone();
        let key = format!("{}-{}", self.stack.world.ns(), deposit.index);
        let amount = format!(
            "{}.{:02}",
            deposit.amount_minor / 100,
            deposit.amount_minor % 100
        );
        let body =
            json!({"account_id": account_id, "amount": amount, "currency": deposit.currency});
        let replicas = &self.stack.deposits;
        let first_try = Instant::now();
        let mut attempts = Vec::new();
        loop {
            let replica = (deposit.index + attempts.len()) % replicas.len();
            let start_ms = self.ms();
            let answer = post_json(
                &replicas[replica].url("/deposits"),
                &body,
                &[("Idempotency-Key", key.as_str())],
            )
            .await;
            let (status, detail) = match &answer {
                Ok(r) => (
                    Some(r.status),
                    r.body["title"].as_str().unwrap_or_default().to_string(),
                ),
                Err(e) => (None, format!("{e:#}")),
            };
            attempts.push(Attempt {
                replica,
                start_ms,
                end_ms: self.ms(),
                status,
                detail,
            });
            let final_answer = match answer {
                Ok(r) if r.status == 201 => Some(Answer::Accepted {
                    deposit_id: uuid_field(&r.body, "deposit_id")?,
                    event_id: uuid_field(&r.body, "event_id")?,
                    sequence: r.body["sequence"].as_i64().context("sequence")?,
                }),
                // Transient: the service said so (503, 408, 429) or could not say anything.
                // A 500 is retried too (the client cannot know better), and the judge counts it.
                Ok(r) if r.status >= 500 || r.status == 408 || r.status == 429 => None,
                Ok(r) => Some(Answer::Refused {
                    status: r.status,
                    title: r.body["title"].as_str().unwrap_or_default().to_string(),
                }),
                Err(_) => None,
            };
            if let Some(answer) = final_answer {
                return Ok(HistoryEntry {
                    client: self.client,
                    key,
                    account_id,
                    deposit,
                    attempts,
                    answer,
                });
            }
            if first_try.elapsed() > ANSWER_DEADLINE {
                bail!(
                    "deposit {} (key {key}) got no answer in {ANSWER_DEADLINE:?}; last attempts: {:?}",
                    deposit.index,
                    attempts.iter().rev().take(3).collect::<Vec<_>>()
                );
            }
            // A client's retry backoff (not a test waiting for a condition): 50 ms doubling
            // to 1 s, the runtime's schedule and jitter.
            let attempt = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
            tokio::time::sleep(eventbank_runtime::backoff::delay(
                Duration::from_millis(50),
                Duration::from_secs(1),
                attempt,
            ))
            .await;
        }
    }
}

fn uuid_field(body: &serde_json::Value, field: &str) -> Result<Uuid> {
    body[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{field} in the answer {body}"))
}

/// Writes the history as `history-<seed>.jsonl` (one deposit per line) into `dir`.
pub fn write_history(dir: &Path, seed: u64, history: &[HistoryEntry]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut out = String::new();
    for entry in history {
        out.push_str(&serde_json::to_string(entry)?);
        out.push('\n');
    }
    let path = dir.join(format!("history-{seed}.jsonl"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "nemesis: history of {} deposits in {}",
        history.len(),
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deposit_derives_from_the_seed_and_its_index_alone() {
        let a: Vec<_> = (0..500).map(|i| Deposit::planned(7, i, 200)).collect();
        let b: Vec<_> = (0..500)
            .rev()
            .map(|i| Deposit::planned(7, i, 200))
            .collect();
        for (x, y) in a.iter().zip(b.iter().rev()) {
            assert_eq!(
                (x.account, x.amount_minor, x.currency),
                (y.account, y.amount_minor, y.currency)
            );
        }
        assert!(a.iter().all(|d| d.account < 200 && d.amount_minor > 0));
        assert!(a.iter().any(|d| d.currency == "EUR"), "some are refused");
        assert!(
            a.iter().any(|d| d.amount_minor >= 1_000_000),
            "some reach the CTR threshold"
        );
        let amounts = |seed| (0..20).map(move |i| Deposit::planned(seed, i, 200).amount_minor);
        assert!(amounts(7).ne(amounts(8)), "another seed, another workload");
    }
}

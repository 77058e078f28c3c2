//! Group commit across a replica's partitions: every partition task hands its batch to one
//! applier, which applies all the batches waiting at that moment in ONE dedup transaction
//! ([`deliver`]) and answers each partition with its own new events.
//!
//! Why: a consumer service splits its stream over `PARTITIONS` queues, so each partition's
//! batches are a fraction of the service's; applied one transaction per partition batch, a
//! service with four partitions commits about four times as often as one with a single queue for
//! the same events (BENCHMARKS.md measures what that costs). Combining keeps the partitions (how
//! replicas share the work, and per-account order) and pays one transaction per applier round.
//!
//! Order is kept: a partition hands over its next batch only after the answer for the previous
//! one (its commit), and one account's events are in one partition, so an account's events are
//! never split over two transactions running at once. Events of several partitions in one
//! transaction are of different accounts; the handlers lock accounts in one sorted order.
//!
//! Failure stays per partition: when a combined transaction fails for a reason that is not
//! transient, each partition's batch is applied again alone and answered with its own outcome,
//! so one partition's poison message never makes its neighbours' partitions go message by
//! message. A transient failure is answered to all as transient (they keep their batches
//! unacked and retry). A handler that panics answers with an error instead of taking the
//! applier down.

use crate::consumer::{Handler, HandlerError, deliver};
use eventbank_events::DepositCompleted;
use futures_util::FutureExt;
use sqlx::PgPool;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// What a partition's batch came to: its new (applied) events in order, or why not.
pub type Outcome = Result<Vec<DepositCompleted>, HandlerError>;

struct Job {
    events: Vec<DepositCompleted>,
    reply: oneshot::Sender<Outcome>,
}

/// Each partition has at most one batch in the applier at a time, so the queue holds at most
/// one job per partition (two for a partition handed over and quickly regained).
const QUEUE: usize = 256;

/// The handle partition tasks submit their batches through.
#[derive(Clone)]
pub struct Combiner {
    jobs: mpsc::Sender<Job>,
}

impl Combiner {
    /// Starts the applier. It ends when every `Combiner` clone is dropped, after answering
    /// what it holds.
    pub fn start<H: Handler>(pool: PgPool, handler: Arc<H>) -> (Self, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(pool, handler, queue));
        (Self { jobs }, task)
    }

    /// Batches handed over and not yet taken into a round.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Applies `events` (one partition's batch, in delivery order) in the next applier round,
    /// together with whatever other partitions handed over meanwhile. Returns after the commit.
    pub async fn apply(&self, events: Vec<DepositCompleted>) -> Outcome {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { events, reply }).await.is_err() {
            return Err(HandlerError::Unavailable("the applier has stopped".into()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(HandlerError::Unavailable(
                "the applier stopped before answering".into(),
            ))
        })
    }
}

async fn run<H: Handler>(pool: PgPool, handler: Arc<H>, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut round = vec![first];
        // Whatever is already waiting joins, without waiting for more: a lone event at light
        // load is applied at once, and rounds grow by themselves while a commit is under way.
        while let Ok(job) = queue.try_recv() {
            round.push(job);
        }
        apply_round(&pool, handler.as_ref(), round).await;
    }
}

async fn apply_round<H: Handler>(pool: &PgPool, handler: &H, mut round: Vec<Job>) {
    if round.len() == 1 {
        let job = round.remove(0);
        let outcome = guarded(pool, handler, &job.events).await;
        let _ = job.reply.send(outcome);
        return;
    }
    let all: Vec<DepositCompleted> = round
        .iter()
        .flat_map(|job| job.events.iter().cloned())
        .collect();
    match guarded(pool, handler, &all).await {
        Ok(fresh) => {
            for (mine, job) in split(&round, &fresh).into_iter().zip(round) {
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(e) if e.is_transient() => {
            let reason = e.to_string();
            for job in round {
                let _ = job
                    .reply
                    .send(Err(HandlerError::Unavailable(reason.clone())));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batches = round.len(), events = all.len(), "combined batch failed; applying each partition's batch alone");
            for job in round {
                let outcome = guarded(pool, handler, &job.events).await;
                let _ = job.reply.send(outcome);
            }
        }
    }
}

/// Each job's share of `fresh` (the combined transaction's new events), in the job's order. The
/// first copy of an id across the round is the fresh one, as [`deliver`] decides it.
fn split(round: &[Job], fresh: &[DepositCompleted]) -> Vec<Vec<DepositCompleted>> {
    let mut new_ids: HashSet<Uuid> = fresh.iter().map(|e| e.event_id).collect();
    round
        .iter()
        .map(|job| {
            job.events
                .iter()
                .filter(|e| new_ids.remove(&e.event_id))
                .cloned()
                .collect()
        })
        .collect()
}

/// [`deliver`], with a handler panic turned into an error: the transaction rolls back when it
/// is dropped, and the partition isolates the message as it would any failure.
async fn guarded<H: Handler>(pool: &PgPool, handler: &H, events: &[DepositCompleted]) -> Outcome {
    AssertUnwindSafe(deliver(pool, handler, events))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(HandlerError::Other(anyhow::anyhow!(
                "the handler panicked: {message}"
            )))
        })
}

//! Waking the relay when a deposit commits, without a NOTIFY in the deposit's transaction.
//!
//! Postgres serialises every committing transaction that issued a NOTIFY: it holds one
//! cluster-wide lock from the NOTIFY's pre-commit step until the commit record is flushed, so
//! deposits that notify commit one fsync at a time (BENCHMARKS.md, Optimisations: about half
//! the throughput of the deposit transaction). So no deposit transaction notifies; instead:
//!
//! - the writers call [`OutboxSignal::committed`] after each commit, which wakes this process's
//!   relay directly (a `tokio::sync::Notify` permit, never lost: a wake-up that arrives while
//!   the relay is busy is kept for its next wait);
//! - when this process's relay is NOT the leader, a notifier task sends one `NOTIFY outbox`
//!   outside any deposit transaction, coalescing every commit that happened meanwhile, so the
//!   leader in another replica still wakes at once;
//! - the relay keeps `LISTEN outbox` for those, and its 1 s poll as the safety net.
//!
//! The wake-up also carries the committed rows: while this process's relay leads, the writers
//! hand it their outbox rows after each commit, so that at light load a deposit needs no read
//! of the outbox (one of seven commits per deposit across the databases). The hand-off is only
//! a shortcut; the outbox stays the source of truth:
//!
//! - the relay [`arm`](OutboxSignal::arm)s the hand-off right before each read of the outbox.
//!   A row whose commit finished before the arming is visible to that read; one committed
//!   later is handed over (pushed after its commit). Rows in both are told apart by the
//!   relay, by their account's sequence numbers (see `crate::relay`);
//! - when the hand-off cannot hold every row committed since the arming (it is bounded, or
//!   this replica did not lead), [`take`](OutboxSignal::take) answers `None` and the relay
//!   reads the outbox instead;
//! - rows committed by other replicas are never handed over: the relay reads them when their
//!   NOTIFY or its poll wakes it.

use crate::store::OutboxRow;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// The channel the relay LISTENs on.
pub const CHANNEL: &str = "outbox";

/// Rows the hand-off holds at most (about 600 bytes each) while the relay is busy with a round;
/// beyond it the relay reads the outbox.
pub const HANDOFF_CAPACITY: usize = 4096;

#[derive(Default)]
pub struct OutboxSignal {
    /// Wakes this process's relay.
    local: Notify,
    /// Wakes the notifier task (only while another replica leads).
    remote: Notify,
    /// Whether this process's relay holds the leader lock.
    leader: AtomicBool,
    handed: Mutex<Handed>,
}

#[derive(Default)]
struct Handed {
    /// Rows committed since the relay last armed the hand-off, in the order they were handed.
    rows: Vec<OutboxRow>,
    /// Whether `rows` holds every row this process committed since the arming.
    complete: bool,
}

impl OutboxSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Deposits committed with these outbox rows.
    pub fn committed(&self, rows: Vec<OutboxRow>) {
        self.hand_over(Some(rows));
    }

    /// Deposits committed whose outbox rows the relay must read.
    pub fn committed_unseen(&self) {
        self.hand_over(None);
    }

    fn hand_over(&self, rows: Option<Vec<OutboxRow>>) {
        let leader = self.leader.load(Ordering::Relaxed);
        {
            let mut handed = self.lock();
            match rows {
                Some(rows) if leader && handed.rows.len() + rows.len() <= HANDOFF_CAPACITY => {
                    if handed.complete {
                        handed.rows.extend(rows);
                    }
                }
                _ => {
                    handed.rows.clear();
                    handed.complete = false;
                }
            }
        }
        self.local.notify_one();
        if !leader {
            self.remote.notify_one();
        }
    }

    /// Starts a new hand-off: the relay reads the outbox right after this, so only rows
    /// committed from now on need to be handed over.
    pub fn arm(&self) {
        let mut handed = self.lock();
        handed.rows.clear();
        handed.complete = true;
    }

    /// The rows handed over since the last `take` (or the arming), or `None` if some row
    /// committed since the arming is missing: then the outbox must be read.
    pub fn take(&self) -> Option<Vec<OutboxRow>> {
        let mut handed = self.lock();
        handed.complete.then(|| std::mem::take(&mut handed.rows))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Handed> {
        // The state is two plain fields, valid after any panic: keep using it.
        self.handed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves at the next `committed` (or at once if one happened since the last wait).
    pub async fn wait_local(&self) {
        self.local.notified().await;
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
        if !leader {
            let mut handed = self.lock();
            handed.rows.clear();
            handed.complete = false;
        }
    }

    /// Sends `NOTIFY outbox` for commits made while another replica leads; until `stop`.
    pub async fn run_notifier(&self, pool: PgPool, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = self.remote.notified() => {}
            }
            if self.leader.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&pool)
                .await
            {
                // The leader's 1 s poll still finds the deposit; try again at the next commit.
                tracing::warn!(error = %e, "could not notify the relay leader");
                // A short pause so a database outage does not turn every commit into a failed
                // NOTIFY; shutdown does not wait for it.
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> OutboxRow {
        OutboxRow {
            id,
            event_id: uuid::Uuid::now_v7(),
            account_id: "ACC-0001".into(),
            sequence: id,
            traceparent: None,
            payload: Vec::new(),
        }
    }

    fn ids(rows: Option<Vec<OutboxRow>>) -> Option<Vec<i64>> {
        rows.map(|rows| rows.iter().map(|r| r.id).collect())
    }

    #[tokio::test]
    async fn a_commit_before_the_wait_is_not_lost() {
        let signal = OutboxSignal::new();
        signal.committed(vec![row(1)]);
        tokio::time::timeout(Duration::from_secs(1), signal.wait_local())
            .await
            .expect("the earlier commit wakes the relay");
    }

    #[test]
    fn the_leader_is_handed_what_was_committed_since_it_armed() {
        let signal = OutboxSignal::new();
        signal.set_leader(true);
        signal.committed(vec![row(1)]);
        assert_eq!(ids(signal.take()), None, "committed before any arming");
        signal.arm();
        signal.committed(vec![row(2), row(3)]);
        signal.committed(vec![row(4)]);
        assert_eq!(ids(signal.take()), Some(vec![2, 3, 4]));
        assert_eq!(ids(signal.take()), Some(vec![]), "each row is handed once");
    }

    #[test]
    fn a_full_hand_off_or_a_lost_lead_sends_the_relay_to_the_outbox() {
        let signal = OutboxSignal::new();
        signal.set_leader(true);
        signal.arm();
        signal.committed((0..HANDOFF_CAPACITY as i64).map(row).collect());
        signal.committed(vec![row(-1)]);
        assert_eq!(ids(signal.take()), None, "one row over the capacity");
        signal.arm();
        signal.committed(vec![row(1)]);
        signal.set_leader(false);
        signal.set_leader(true);
        assert_eq!(
            ids(signal.take()),
            None,
            "the lead was lost since the arming"
        );
        signal.arm();
        signal.set_leader(false);
        signal.committed(vec![row(2)]);
        signal.set_leader(true);
        assert_eq!(
            ids(signal.take()),
            None,
            "committed while another replica led"
        );
    }
}

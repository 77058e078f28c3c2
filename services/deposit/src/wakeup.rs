//! Waking the relay when a deposit commits, without a NOTIFY in the deposit's transaction.
//!
//! Postgres serialises every committing transaction that issued a NOTIFY: it holds one
//! cluster-wide lock from the NOTIFY's pre-commit step until the commit record is flushed, so
//! deposits that notify commit one fsync at a time (BENCHMARKS.md, Optimisations: about half
//! the throughput of the deposit transaction). So no deposit transaction notifies; instead:
//!
//! - the API calls [`OutboxSignal::committed`] after each commit, which wakes this process's
//!   relay directly (a `tokio::sync::Notify` permit, never lost: a wake-up that arrives while
//!   the relay is busy is kept for its next wait);
//! - when this process's relay is NOT the leader, a notifier task sends one `NOTIFY outbox`
//!   outside any deposit transaction, coalescing every commit that happened meanwhile, so the
//!   leader in another replica still wakes at once;
//! - the relay keeps `LISTEN outbox` for those, and its 1 s poll as the safety net.

use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The channel the relay LISTENs on.
pub const CHANNEL: &str = "outbox";

#[derive(Default)]
pub struct OutboxSignal {
    /// Wakes this process's relay.
    local: Notify,
    /// Wakes the notifier task (only while another replica leads).
    remote: Notify,
    /// Whether this process's relay holds the leader lock.
    leader: AtomicBool,
}

impl OutboxSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// A deposit (with its outbox row) committed.
    pub fn committed(&self) {
        self.local.notify_one();
        if !self.leader.load(Ordering::Relaxed) {
            self.remote.notify_one();
        }
    }

    /// Resolves at the next `committed` (or at once if one happened since the last wait).
    pub async fn wait_local(&self) {
        self.local.notified().await;
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
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

    #[tokio::test]
    async fn a_commit_before_the_wait_is_not_lost() {
        let signal = OutboxSignal::new();
        signal.committed();
        tokio::time::timeout(Duration::from_secs(1), signal.wait_local())
            .await
            .expect("the earlier commit wakes the relay");
    }
}

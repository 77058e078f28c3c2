//! Applied changes, as every replica learns them: one `LISTEN account_changes` connection per
//! process, fanned out in process to the SSE streams and read-your-writes waiters.
//!
//! The source of truth is Postgres NOTIFY, sent by the transaction that applied the change and
//! delivered only once it committed, so a change applied by any replica reaches the clients of
//! every replica. Notifications are hints, never data: receivers re-read the store. When the
//! listening connection is lost, whatever was notified meanwhile is gone, so after every
//! (re)connect a [`Signal::Resync`] tells every receiver to re-read.

use crate::projection::CHANGES_CHANNEL;
use eventbank_events::AccountId;
use eventbank_runtime::backoff::Backoff;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The NOTIFY payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Change {
    pub account_id: AccountId,
    pub version: i64,
    pub last_sequence: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Change(Change),
    /// Notifications may have been missed: re-read whatever you follow.
    Resync,
}

/// The in-process fan-out of [`Signal`]s.
#[derive(Clone)]
pub struct Changes {
    tx: broadcast::Sender<Signal>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

impl Changes {
    pub fn new() -> Self {
        // A receiver that falls this far behind gets `Lagged`, which it treats as a resync.
        let (tx, _) = broadcast::channel(1024);
        Self { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.tx.subscribe()
    }

    /// Receivers subscribed right now: read-your-writes queries and SSE streams waiting for a
    /// change (tests use it to know that a query is waiting).
    pub fn waiting(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Sends a signal to every receiver (the listener's job; tests use it too).
    pub fn publish(&self, signal: Signal) {
        // No receiver is not an error: nobody is waiting.
        let _ = self.tx.send(signal);
    }

    /// LISTENs until `stop`, reconnecting with backoff.
    pub async fn listen(self, pool: PgPool, stop: CancellationToken) {
        let mut backoff = Backoff::new();
        while !stop.is_cancelled() {
            match self.listen_once(&pool, &stop).await {
                Ok(()) => return,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "change listener lost its connection; reconnecting");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn listen_once(&self, pool: &PgPool, stop: &CancellationToken) -> sqlx::Result<()> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        self.publish(Signal::Resync);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = listener.try_recv() => next?,
            };
            let Some(notification) = next else {
                // Disconnected: reconnect (and resync) through the outer loop.
                return Err(sqlx::Error::PoolClosed);
            };
            match serde_json::from_str::<Change>(notification.payload()) {
                Ok(change) => self.publish(Signal::Change(change)),
                Err(e) => {
                    tracing::warn!(error = %e, payload = notification.payload(), "unreadable change notification")
                }
            }
        }
    }
}

/// Waits until `account_id` may have changed: a change of it, a resync, or a lag.
pub async fn changed(rx: &mut broadcast::Receiver<Signal>, account_id: &AccountId) {
    loop {
        match rx.recv().await {
            Ok(Signal::Change(c)) if c.account_id == *account_id => return,
            Ok(Signal::Change(_)) => {}
            Ok(Signal::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => return,
            // The sender lives as long as the app: never, in practice; wait forever then.
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

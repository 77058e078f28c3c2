//! One shutdown signal for every loop (HTTP server, consumers, relay, senders).
//!
//! `Shutdown` pairs a `CancellationToken` (the signal) with a `TaskTracker` (who is still
//! running). On SIGTERM or Ctrl-C the token is cancelled; every loop stops taking new work,
//! finishes what it holds, and `drain` waits for them up to the deadline.

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Resolves when shutdown has been triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Spawns a tracked task: `drain` waits for it.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Triggers shutdown on SIGTERM or SIGINT (Ctrl-C).
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received, draining");
            token.cancel();
        });
    }

    /// Waits until every tracked task has finished, or the deadline passes. Returns whether the
    /// drain completed. Unfinished consumer work is never acked, so the broker redelivers it.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(?deadline, "drain deadline passed with tasks still running");
                false
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

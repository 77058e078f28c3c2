//! The consumer side: turns `DepositCompleted` events into queued confirmation emails inside the
//! runtime's dedup transaction, and wakes the sender once they are committed.

use crate::metrics::EmailMetrics;
use crate::render::{Rendered, render};
use crate::store;
use eventbank_events::DepositCompleted;
use eventbank_runtime::consumer::{Handler, HandlerError};
use sqlx::PgConnection;
use std::sync::Arc;
use tokio::sync::Notify;

pub struct EmailHandler {
    metrics: EmailMetrics,
    /// Shared with the sender: a permit is stored when nobody waits, so no wake-up is lost.
    wake: Arc<Notify>,
}

impl EmailHandler {
    pub fn new(metrics: EmailMetrics, wake: Arc<Notify>) -> Self {
        Self { metrics, wake }
    }
}

impl Handler for EmailHandler {
    /// Renders every confirmation from its event and queues them all in one statement. Nothing
    /// is sent here: delivery is the sender's job, so an SMTP outage never holds up the queue.
    #[tracing::instrument(name = "queue_confirmations", skip_all, fields(events = events.len()))]
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[DepositCompleted],
    ) -> Result<(), HandlerError> {
        let rendered: Vec<Rendered> = events.iter().map(render).collect();
        store::insert_queued(tx, events, &rendered).await?;
        Ok(())
    }

    /// Logged here rather than in `handle`: only now are the emails really queued.
    fn committed(&self, events: &[DepositCompleted]) {
        for event in events {
            tracing::info!(
                event_id = %event.event_id,
                account_id = %event.account_id,
                deposit_id = %event.deposit_id,
                "confirmation email queued"
            );
        }
        self.metrics.queued.inc_by(events.len() as u64);
        if !events.is_empty() {
            self.wake.notify_one();
        }
    }
}

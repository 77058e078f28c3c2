//! The consumer side: turns `DepositCompleted` events into confirmation emails inside the
//! runtime's dedup transaction, and once they are committed, hands them to the sender in
//! memory ([`crate::handoff`]) or wakes its claim.

use crate::handoff::Handoff;
use crate::metrics::EmailMetrics;
use crate::render::{Rendered, render};
use crate::store::{self, Outgoing};
use eventbank_events::DepositCompleted;
use eventbank_runtime::consumer::{Handler, HandlerError, Landing};
use sqlx::PgConnection;
use uuid::Uuid;

pub struct EmailHandler {
    metrics: EmailMetrics,
    /// Shared with the sender of this process.
    handoff: Handoff,
}

impl EmailHandler {
    pub fn new(metrics: EmailMetrics, handoff: Handoff) -> Self {
        Self { metrics, handoff }
    }
}

impl Handler for EmailHandler {
    /// Renders every confirmation from its event and writes them all in one statement: leased
    /// to this process's sender while it has room (so it needs no claim), queued otherwise.
    /// Nothing is sent here: delivery is the sender's job, so an SMTP outage never holds up the
    /// queue.
    #[tracing::instrument(name = "queue_confirmations", skip_all, fields(events = events.len()))]
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[DepositCompleted],
    ) -> Result<(), HandlerError> {
        let rendered: Vec<Rendered> = events.iter().map(render).collect();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        // Reserved before the insert sets the lease, so the sender's deadline, counted from
        // here, falls at least half a lease before the lease ends.
        let leased = self.handoff.reserve(&ids);
        let reserved: Vec<Uuid> = ids
            .iter()
            .zip(&leased)
            .filter_map(|(id, leased)| leased.then_some(*id))
            .collect();
        let inserted =
            match store::insert(tx, events, &rendered, &leased, self.handoff.lease()).await {
                Ok(inserted) => inserted,
                Err(e) => {
                    self.handoff.cancel(&reserved);
                    return Err(e.into());
                }
            };
        if !reserved.is_empty() {
            let by_id: std::collections::HashMap<Uuid, &Rendered> =
                ids.iter().copied().zip(&rendered).collect();
            let emails = inserted
                .into_iter()
                .filter_map(|(event_id, created_at)| {
                    by_id.get(&event_id).map(|r| Outgoing {
                        event_id,
                        rendered: (*r).clone(),
                        attempts: 0,
                        created_at,
                    })
                })
                .collect();
            self.handoff.inserted(&reserved, emails);
        }
        Ok(())
    }

    /// Records the deliveries the sender offered for a ride (see [`crate::handoff`]).
    async fn ride_along(
        &self,
        tx: &mut PgConnection,
    ) -> Result<Option<Box<dyn Landing>>, HandlerError> {
        let Some(ride) = self.handoff.sent().board() else {
            return Ok(None);
        };
        store::mark_sent(tx, ride.items()).await.map_err(|e| {
            HandlerError::Unavailable(format!("recording deliveries in this transaction: {e}"))
        })?;
        Ok(Some(Box::new(ride)))
    }

    /// Logged here rather than in `handle`: only now are the emails really queued, and only
    /// now may the sender have them.
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
            let handed = self.handoff.committed(events.iter().map(|e| e.event_id));
            self.metrics.handed_off.inc_by(handed as u64);
        }
    }
}

//! Helpers for the batches a [`crate::consumer::Handler`] receives.

use eventbank_events::DepositCompleted;
use std::collections::HashSet;

/// The batch with each event id once, the first copy kept, in batch order. The runtime never
/// passes an id twice, but a handler that records or counts each event must not do it twice if
/// a caller does.
pub fn first_of_each_event(events: &[DepositCompleted]) -> Vec<&DepositCompleted> {
    let mut seen = HashSet::new();
    events.iter().filter(|e| seen.insert(e.event_id)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use eventbank_events::{AccountId, AccountSnapshot, Currency};
    use uuid::Uuid;

    fn event(event_id: Uuid, amount_minor: i64) -> DepositCompleted {
        DepositCompleted {
            event_id,
            sequence: 1,
            time: chrono::Utc::now(),
            traceparent: None,
            schema_version: 1,
            deposit_id: Uuid::now_v7(),
            account_id: AccountId::parse("ACC-0001").unwrap(),
            amount_minor,
            currency: Currency::parse("USD").unwrap(),
            account: AccountSnapshot {
                holder_name: "Alice".into(),
                email: "alice@example.com".into(),
            },
            occurred_at: chrono::Utc::now(),
            channel: None,
            reference: None,
        }
    }

    #[test]
    fn a_repeated_id_keeps_its_first_copy_in_batch_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let batch = [event(a, 1), event(b, 2), event(a, 3)];
        let kept: Vec<(Uuid, i64)> = first_of_each_event(&batch)
            .iter()
            .map(|e| (e.event_id, e.amount_minor))
            .collect();
        assert_eq!(kept, vec![(a, 1), (b, 2)]);
    }
}

//! The ordering rule. For each event, against the account's `last_sequence`:
//! - `sequence <= last`: already applied (a duplicate that got past the dedup table, e.g. a
//!   republished event with a new id would not, but a replayed one would): skip;
//! - `sequence == last + 1`: apply, then apply any parked successors that are now contiguous;
//! - `sequence > last + 1`: an earlier event is missing: park it in `pending_events`.
//!
//! The account row is locked (`FOR UPDATE`) while deciding, so two replicas can never apply
//! the same sequence twice.

use crate::store::{self, Txn};
use eventbank_events::DepositCompleted;
use eventbank_runtime::consumer::{Handler, HandlerError};
use sqlx::PgConnection;

pub struct AccountHandler;

impl Handler for AccountHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[DepositCompleted],
    ) -> Result<(), HandlerError> {
        for event in events {
            apply_in_order(tx, Txn::from_event(event)).await?;
        }
        Ok(())
    }
}

/// Applies one event under the ordering rule.
pub async fn apply_in_order(tx: &mut PgConnection, txn: Txn) -> Result<(), HandlerError> {
    let last = store::lock_last_sequence(tx, &txn.account_id)
        .await?
        .unwrap_or(0);
    if txn.sequence <= last {
        tracing::info!(event_id = %txn.event_id, account_id = %txn.account_id, deposit_id = %txn.deposit_id,
            sequence = txn.sequence, last, "sequence already applied; skipped");
        return Ok(());
    }
    if txn.sequence > last + 1 {
        store::park(tx, &txn).await?;
        tracing::warn!(event_id = %txn.event_id, account_id = %txn.account_id, deposit_id = %txn.deposit_id,
            sequence = txn.sequence, expected = last + 1, "sequence gap: event parked until the gap fills");
        return Ok(());
    }
    let balance = store::apply(tx, &txn).await?;
    tracing::info!(event_id = %txn.event_id, account_id = %txn.account_id, deposit_id = %txn.deposit_id,
        sequence = txn.sequence, amount_minor = txn.amount_minor, balance_minor = balance, "balance updated");
    let mut next = txn.sequence + 1;
    while let Some(parked) = store::take_parked(tx, &txn.account_id, next).await? {
        let balance = store::apply(tx, &parked).await?;
        tracing::info!(event_id = %parked.event_id, account_id = %parked.account_id, deposit_id = %parked.deposit_id,
            sequence = parked.sequence, balance_minor = balance, "parked event applied after the gap filled");
        next += 1;
    }
    Ok(())
}

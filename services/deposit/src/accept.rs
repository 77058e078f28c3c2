//! Accepting a valid deposit: the [`crate::writer`] stores it (with the deposits that arrived
//! with it, in one transaction: sequence, row, outbox row and the Idempotency-Key's answer) and
//! answers once that is committed (and the relay has its outbox row); this side counts and logs
//! it in the request's span, and answers the client.

use crate::api::{AppState, created};
use crate::error::ApiError;
use crate::idempotency;
use crate::validate::ValidDeposit;
use crate::writer::{Accepted, Request};
use axum::response::Response;

/// Stores `deposit` (or answers again what its Idempotency-Key `key` stored).
pub async fn accept(
    state: &AppState,
    key: Option<String>,
    deposit: ValidDeposit,
    traceparent: Option<String>,
) -> Result<Response, ApiError> {
    let amount = deposit.money.display();
    let request = Request {
        key,
        deposit,
        traceparent,
    };
    let (row, body) = match state.writer.submit(request).await? {
        Accepted::Replayed { status, body } => return Ok(idempotency::replayed(status, body)),
        Accepted::Created { row, body } => (row, body),
    };
    state.metrics.accepted.inc();
    tracing::info!(
        deposit_id = %row.deposit_id, event_id = %row.event_id, account_id = %row.account_id,
        sequence = row.sequence, amount = %amount, "deposit accepted"
    );
    created(format!("/deposits/{}", row.deposit_id), body)
}

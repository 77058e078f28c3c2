//! Accepting a valid deposit: in ONE transaction take the account's next sequence, store the
//! deposit and its outbox row (and the Idempotency-Key's response). Nothing is half-written.

use crate::api::{AppState, created};
use crate::error::ApiError;
use crate::idempotency;
use crate::store::{self, AccountRow, AccountStatus, DepositRow};
use crate::validate::ValidDeposit;
use axum::response::Response;
use chrono::{DateTime, SubsecRound, Utc};
use eventbank_events::{AccountSnapshot, Currency, DepositCompleted, Money};
use serde_json::{Value, json};
use uuid::Uuid;

/// Stores `deposit` (or answers again what its Idempotency-Key `key` stored) and wakes the relay.
pub async fn accept(
    state: &AppState,
    key: Option<&str>,
    deposit: ValidDeposit,
    traceparent: Option<String>,
) -> Result<Response, ApiError> {
    let mut tx = state.pool.begin().await?;
    if let Some(key) = key
        && let Some(replay) =
            idempotency::claim_or_replay(&mut tx, key, &idempotency::fingerprint(&deposit)).await?
    {
        return Ok(replay);
    }
    let account = store::next_sequence(&mut tx, &deposit.account_id)
        .await?
        .ok_or_else(|| ApiError::UnknownAccount(deposit.account_id.clone()))?;
    check_account(&account, deposit.money.currency)?;
    let event = new_event(&account, &deposit, traceparent);
    let row = stored_row(&event, &account);
    store::insert_deposit(&mut tx, &row).await?;
    store::insert_outbox(
        &mut tx,
        event.event_id,
        &row.account_id,
        row.sequence,
        event.traceparent.as_deref(),
        &event.to_json().map_err(|e| ApiError::Internal(e.into()))?,
    )
    .await?;
    let response = deposit_response(&row, deposit.money);
    if let Some(key) = key {
        store::save_idempotent_response(&mut tx, key, 201, &response).await?;
    }
    tx.commit().await?;
    state.outbox.committed();
    state.metrics.accepted.inc();
    tracing::info!(
        deposit_id = %row.deposit_id, event_id = %row.event_id, account_id = %row.account_id,
        sequence = row.sequence, amount = %deposit.money.display(), "deposit accepted"
    );
    created(format!("/deposits/{}", row.deposit_id), response)
}

/// A deposit goes only to an open account, in the account's currency.
fn check_account(account: &AccountRow, currency: Currency) -> Result<(), ApiError> {
    if account.status != AccountStatus::Open {
        return Err(ApiError::AccountClosed(account.account_id.clone()));
    }
    if account.currency != currency {
        return Err(ApiError::CurrencyMismatch {
            account_currency: account.currency,
            given: currency,
        });
    }
    Ok(())
}

/// The `DepositCompleted` of `deposit` to `account`, whose sequence was just taken.
fn new_event(
    account: &AccountRow,
    deposit: &ValidDeposit,
    traceparent: Option<String>,
) -> DepositCompleted {
    // Postgres keeps microseconds; truncating here makes the event and the row agree exactly.
    let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence: account.last_sequence,
        time: now,
        traceparent,
        schema_version: eventbank_events::deposit::CURRENT_VERSION,
        deposit_id: Uuid::now_v7(),
        account_id: deposit.account_id.clone(),
        amount_minor: deposit.money.minor,
        currency: deposit.money.currency,
        account: AccountSnapshot {
            holder_name: account.holder_name.clone(),
            email: account.email.clone(),
        },
        occurred_at: now,
        channel: deposit.channel,
        reference: deposit.reference.clone(),
    }
}

/// The `deposits` row of `event`.
fn stored_row(event: &DepositCompleted, account: &AccountRow) -> DepositRow {
    DepositRow {
        deposit_id: event.deposit_id,
        event_id: event.event_id,
        account_id: account.account_id.clone(),
        sequence: event.sequence,
        amount_minor: event.amount_minor,
        currency: account.currency,
        created_at: event.occurred_at,
    }
}

/// The 201's body (the `DepositAccepted` schema), also what an Idempotency-Key replays.
fn deposit_response(row: &DepositRow, money: Money) -> Value {
    json!({
        "deposit_id": row.deposit_id,
        "account_id": row.account_id,
        "sequence": row.sequence,
        "event_id": row.event_id,
        "amount": money.to_decimal_string(),
        "amount_minor": row.amount_minor,
        "currency": row.currency,
        "created_at": row.created_at,
    })
}

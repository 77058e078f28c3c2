//! The read side: the `balances` and `transactions` projections as pure functions of the
//! stored events, and their set-based live write. The live handler and the rebuild derive rows
//! with the same functions, so a rebuild can only differ from the live projection if the live
//! projection was damaged.
//!
//! Timestamps are the store's: `balances.updated_at` is the `recorded_at` of the account's
//! latest event and `transactions.applied_at` that of its `Deposited`, so replaying the store
//! reproduces them exactly.

use crate::domain::{AccountState, Deposited};
use chrono::{DateTime, Utc};
use eventbank_events::{AccountId, Currency};
use sqlx::PgConnection;
use uuid::Uuid;

/// The NOTIFY channel every applied change is announced on (payload: JSON with `account_id`,
/// `version`, `last_sequence`). Every replica listens, so a change applied by one is seen by
/// the SSE clients and read-your-writes waiters of all.
pub const CHANGES_CHANNEL: &str = "account_changes";

/// One row of `balances`, as written here and read by the API.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BalanceRow {
    #[sqlx(try_from = "String")]
    pub account_id: AccountId,
    #[sqlx(try_from = "String")]
    pub currency: Currency,
    pub balance_minor: i64,
    pub last_sequence: i64,
    pub deposit_count: i64,
    pub updated_at: DateTime<Utc>,
}

/// One row of `transactions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRow {
    pub event_id: Uuid,
    pub account_id: AccountId,
    pub sequence: i64,
    pub deposit_id: Uuid,
    pub amount_minor: i64,
    pub currency: Currency,
    pub occurred_at: DateTime<Utc>,
    pub applied_at: DateTime<Utc>,
}

/// The balance row of an account in `state`, whose latest event was recorded at `updated_at`.
/// `None` before the account is opened (no row).
pub fn balance_row(
    account_id: &AccountId,
    state: &AccountState,
    updated_at: DateTime<Utc>,
) -> Option<BalanceRow> {
    Some(BalanceRow {
        account_id: account_id.clone(),
        currency: state.currency?,
        balance_minor: state.balance_minor,
        last_sequence: state.last_sequence,
        deposit_count: state.deposit_count,
        updated_at,
    })
}

/// The transaction row of a `Deposited` recorded at `applied_at`.
pub fn txn_row(account_id: &AccountId, deposited: &Deposited, applied_at: DateTime<Utc>) -> TxnRow {
    TxnRow {
        event_id: deposited.event_id,
        account_id: account_id.clone(),
        sequence: deposited.sequence,
        deposit_id: deposited.deposit_id,
        amount_minor: deposited.amount_minor,
        currency: deposited.currency,
        occurred_at: deposited.occurred_at,
        applied_at,
    }
}

/// Writes the live projections for one batch in ONE statement: upsert the changed balances,
/// insert the new transactions, and NOTIFY one change per account (delivered at commit, only
/// if the transaction commits). `versions[i]` is the stream version of `balances[i]`.
pub async fn write_live(
    conn: &mut PgConnection,
    balances: &[BalanceRow],
    versions: &[i64],
    txns: &[TxnRow],
) -> sqlx::Result<()> {
    if balances.is_empty() && txns.is_empty() {
        return Ok(());
    }
    let b_account: Vec<&str> = balances.iter().map(|b| b.account_id.as_str()).collect();
    let b_currency: Vec<&str> = balances.iter().map(|b| b.currency.code()).collect();
    let b_balance: Vec<i64> = balances.iter().map(|b| b.balance_minor).collect();
    let b_sequence: Vec<i64> = balances.iter().map(|b| b.last_sequence).collect();
    let b_count: Vec<i64> = balances.iter().map(|b| b.deposit_count).collect();
    let b_updated: Vec<DateTime<Utc>> = balances.iter().map(|b| b.updated_at).collect();
    let t_event: Vec<Uuid> = txns.iter().map(|t| t.event_id).collect();
    let t_account: Vec<&str> = txns.iter().map(|t| t.account_id.as_str()).collect();
    let t_sequence: Vec<i64> = txns.iter().map(|t| t.sequence).collect();
    let t_deposit: Vec<Uuid> = txns.iter().map(|t| t.deposit_id).collect();
    let t_amount: Vec<i64> = txns.iter().map(|t| t.amount_minor).collect();
    let t_currency: Vec<&str> = txns.iter().map(|t| t.currency.code()).collect();
    let t_occurred: Vec<DateTime<Utc>> = txns.iter().map(|t| t.occurred_at).collect();
    let t_applied: Vec<DateTime<Utc>> = txns.iter().map(|t| t.applied_at).collect();
    sqlx::query(
        "WITH b AS (
             INSERT INTO balances (account_id, currency, balance_minor, last_sequence, deposit_count, updated_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::timestamptz[])
             ON CONFLICT (account_id) DO UPDATE SET
                 currency = EXCLUDED.currency,
                 balance_minor = EXCLUDED.balance_minor,
                 last_sequence = EXCLUDED.last_sequence,
                 deposit_count = EXCLUDED.deposit_count,
                 updated_at = EXCLUDED.updated_at
             RETURNING 1
         ), t AS (
             INSERT INTO transactions (event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at, applied_at)
             SELECT * FROM unnest($7::uuid[], $8::text[], $9::bigint[], $10::uuid[], $11::bigint[], $12::text[], $13::timestamptz[], $14::timestamptz[])
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM t),
                (SELECT count(pg_notify($16, json_build_object('account_id', a, 'version', v, 'last_sequence', s)::text))
                 FROM unnest($1::text[], $15::bigint[], $4::bigint[]) AS n(a, v, s))",
    )
    .bind(&b_account)
    .bind(&b_currency)
    .bind(&b_balance)
    .bind(&b_sequence)
    .bind(&b_count)
    .bind(&b_updated)
    .bind(&t_event)
    .bind(&t_account)
    .bind(&t_sequence)
    .bind(&t_deposit)
    .bind(&t_amount)
    .bind(&t_currency)
    .bind(&t_occurred)
    .bind(&t_applied)
    .bind(versions)
    .bind(CHANGES_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}

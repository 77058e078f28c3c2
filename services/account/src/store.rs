//! SQL of the account service.

use chrono::{DateTime, Utc};
use eventbank_events::DepositCompleted;
use sqlx::PgConnection;
use uuid::Uuid;

/// One deposit as the account service stores it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Txn {
    pub event_id: Uuid,
    pub account_id: String,
    pub sequence: i64,
    pub deposit_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
}

impl Txn {
    pub fn from_event(e: &DepositCompleted) -> Self {
        Self {
            event_id: e.event_id,
            account_id: e.account_id.to_string(),
            sequence: e.sequence,
            deposit_id: e.deposit_id,
            amount_minor: e.amount_minor,
            currency: e.currency.code().to_owned(),
            occurred_at: e.occurred_at,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Balance {
    pub account_id: String,
    pub currency: String,
    pub balance_minor: i64,
    pub last_sequence: i64,
    pub deposit_count: i64,
    pub updated_at: DateTime<Utc>,
}

/// The account's last applied sequence, row-locked until commit (None: no event yet).
pub async fn lock_last_sequence(
    conn: &mut PgConnection,
    account_id: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT last_sequence FROM balances WHERE account_id = $1 FOR UPDATE")
        .bind(account_id)
        .fetch_optional(conn)
        .await
}

/// Applies a deposit to the read model. Returns the new balance.
pub async fn apply(conn: &mut PgConnection, t: &Txn) -> sqlx::Result<i64> {
    sqlx::query(
        "INSERT INTO transactions (event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(t.event_id)
    .bind(&t.account_id)
    .bind(t.sequence)
    .bind(t.deposit_id)
    .bind(t.amount_minor)
    .bind(&t.currency)
    .bind(t.occurred_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar(
        "INSERT INTO balances (account_id, currency, balance_minor, last_sequence, deposit_count, updated_at)
         VALUES ($1, $2, $3, $4, 1, now())
         ON CONFLICT (account_id) DO UPDATE SET
             balance_minor = balances.balance_minor + EXCLUDED.balance_minor,
             last_sequence = EXCLUDED.last_sequence,
             deposit_count = balances.deposit_count + 1,
             updated_at = now()
         RETURNING balance_minor",
    )
    .bind(&t.account_id)
    .bind(&t.currency)
    .bind(t.amount_minor)
    .bind(t.sequence)
    .fetch_one(conn)
    .await
}

pub async fn park(conn: &mut PgConnection, t: &Txn) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO pending_events (account_id, sequence, event_id, deposit_id, amount_minor, currency, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account_id, sequence) DO NOTHING",
    )
    .bind(&t.account_id)
    .bind(t.sequence)
    .bind(t.event_id)
    .bind(t.deposit_id)
    .bind(t.amount_minor)
    .bind(&t.currency)
    .bind(t.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes and returns the parked event with this sequence, if any.
pub async fn take_parked(
    conn: &mut PgConnection,
    account_id: &str,
    sequence: i64,
) -> sqlx::Result<Option<Txn>> {
    sqlx::query_as(
        "DELETE FROM pending_events WHERE account_id = $1 AND sequence = $2
         RETURNING event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at",
    )
    .bind(account_id)
    .bind(sequence)
    .fetch_optional(conn)
    .await
}

pub async fn balance(conn: &mut PgConnection, account_id: &str) -> sqlx::Result<Option<Balance>> {
    sqlx::query_as(
        "SELECT account_id, currency, balance_minor, last_sequence, deposit_count, updated_at
         FROM balances WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(conn)
    .await
}

pub async fn transactions(
    conn: &mut PgConnection,
    account_id: &str,
    after_sequence: i64,
    limit: i64,
) -> sqlx::Result<Vec<Txn>> {
    sqlx::query_as(
        "SELECT event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at
         FROM transactions WHERE account_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
    )
    .bind(account_id)
    .bind(after_sequence)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn pending_count(conn: &mut PgConnection, account_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM pending_events WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(conn)
        .await
}

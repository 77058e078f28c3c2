//! SQL of the deposit service, one small function per statement.

use chrono::{DateTime, Utc};
use eventbank_events::{AccountId, Currency};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// An account of the directory.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct AccountRow {
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "ACC-1000")]
    pub account_id: AccountId,
    #[schema(example = "Alice Example")]
    pub holder_name: String,
    #[schema(example = "alice@example.com")]
    pub email: String,
    /// ISO 4217 code.
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    /// `open` or `closed` (a closed account accepts no deposits).
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "open")]
    pub status: AccountStatus,
    /// The sequence number of the account's latest deposit (0: none yet).
    pub last_sequence: i64,
    pub created_at: DateTime<Utc>,
}

/// Whether an account takes deposits. Read from the row's `status`: a value this code does not
/// know is a decode error, never taken for either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    Open,
    Closed,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown account status {0:?}")]
pub struct UnknownAccountStatus(String);

impl TryFrom<String> for AccountStatus {
    type Error = UnknownAccountStatus;

    fn try_from(status: String) -> Result<Self, Self::Error> {
        match status.as_str() {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            _ => Err(UnknownAccountStatus(status)),
        }
    }
}

const ACCOUNT_COLUMNS: &str =
    "account_id, holder_name, email, currency, status, last_sequence, created_at";

/// The one account `sql` returns for `$1 = account_id`, if any.
async fn fetch_account(
    conn: &mut PgConnection,
    sql: String,
    account_id: &AccountId,
) -> sqlx::Result<Option<AccountRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(account_id.as_str())
        .fetch_optional(conn)
        .await
}

/// Demo accounts so a first curl works. Idempotent.
pub async fn seed_demo_accounts(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO accounts (account_id, holder_name, email, currency) VALUES
            ('ACC-0001', 'Alice Example', 'alice@example.com', 'USD'),
            ('ACC-0002', 'Bruno Beispiel', 'bruno@example.com', 'EUR'),
            ('ACC-0003', 'Chiyo Rei', 'chiyo@example.com', 'JPY'),
            ('ACC-0004', 'Dana Demo', 'dana@example.com', 'USD')
         ON CONFLICT (account_id) DO NOTHING",
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn insert_account(
    conn: &mut PgConnection,
    holder_name: &str,
    email: &str,
    currency: Currency,
) -> sqlx::Result<AccountRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO accounts (account_id, holder_name, email, currency)
         VALUES ('ACC-' || lpad(nextval('account_number_seq')::text, 4, '0'), $1, $2, $3)
         RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(holder_name)
    .bind(email)
    .bind(currency.code())
    .fetch_one(conn)
    .await
}

pub async fn get_account(
    conn: &mut PgConnection,
    account_id: &AccountId,
) -> sqlx::Result<Option<AccountRow>> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1");
    fetch_account(conn, sql, account_id).await
}

/// Takes the account's next sequence number. The UPDATE row-locks the account until commit, so
/// deposits of one account are serialised and their outbox ids follow their sequence.
pub async fn next_sequence(
    conn: &mut PgConnection,
    account_id: &AccountId,
) -> sqlx::Result<Option<AccountRow>> {
    let sql = format!(
        "UPDATE accounts SET last_sequence = last_sequence + 1 WHERE account_id = $1
         RETURNING {ACCOUNT_COLUMNS}"
    );
    fetch_account(conn, sql, account_id).await
}

/// A stored deposit.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct DepositRow {
    pub deposit_id: Uuid,
    /// The id of the `DepositCompleted` event it published.
    pub event_id: Uuid,
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "ACC-0001")]
    pub account_id: AccountId,
    /// Per-account sequence number: 1, 2, 3, ... in the order deposits were accepted.
    pub sequence: i64,
    /// The amount in integer minor units of the currency.
    #[schema(example = 25000)]
    pub amount_minor: i64,
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_deposit(conn: &mut PgConnection, d: &DepositRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO deposits (deposit_id, event_id, account_id, sequence, amount_minor, currency, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(d.deposit_id)
    .bind(d.event_id)
    .bind(d.account_id.as_str())
    .bind(d.sequence)
    .bind(d.amount_minor)
    .bind(d.currency.code())
    .bind(d.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_deposit(
    conn: &mut PgConnection,
    deposit_id: Uuid,
) -> sqlx::Result<Option<DepositRow>> {
    sqlx::query_as(
        "SELECT deposit_id, event_id, account_id, sequence, amount_minor, currency, created_at
         FROM deposits WHERE deposit_id = $1",
    )
    .bind(deposit_id)
    .fetch_optional(conn)
    .await
}

pub async fn insert_outbox(
    conn: &mut PgConnection,
    event_id: Uuid,
    account_id: &AccountId,
    sequence: i64,
    traceparent: Option<&str>,
    payload: &[u8],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, account_id, sequence, traceparent, payload) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event_id)
    .bind(account_id.as_str())
    .bind(sequence)
    .bind(traceparent)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored Idempotency-Key.
#[derive(Debug, sqlx::FromRow)]
pub struct IdempotencyRow {
    pub fingerprint: String,
    pub status_code: i32,
    pub response: serde_json::Value,
}

/// Claims `key` for this transaction. Returns false if it already exists. A concurrent request
/// with the same key waits here until the first one commits or rolls back.
pub async fn claim_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
    fingerprint: &str,
) -> sqlx::Result<bool> {
    let claimed: Option<String> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (key, fingerprint, status_code, response)
         VALUES ($1, $2, 0, 'null') ON CONFLICT (key) DO NOTHING RETURNING key",
    )
    .bind(key)
    .bind(fingerprint)
    .fetch_optional(conn)
    .await?;
    Ok(claimed.is_some())
}

pub async fn get_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> sqlx::Result<Option<IdempotencyRow>> {
    sqlx::query_as("SELECT fingerprint, status_code, response FROM idempotency_keys WHERE key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

pub async fn save_idempotent_response(
    conn: &mut PgConnection,
    key: &str,
    status_code: i32,
    response: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE idempotency_keys SET status_code = $2, response = $3 WHERE key = $1")
        .bind(key)
        .bind(status_code)
        .bind(response)
        .execute(conn)
        .await?;
    Ok(())
}

/// An outbox row waiting to be published.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub account_id: String,
    pub traceparent: Option<String>,
    pub payload: Vec<u8>,
}

pub async fn unpublished(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT id, event_id, account_id, traceparent, payload FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// (rows waiting, age in whole seconds of the oldest).
pub async fn outbox_backlog(conn: &mut PgConnection) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::bigint, 0)
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_open_or_closed_and_nothing_else() {
        assert_eq!(
            AccountStatus::try_from("open".to_owned()).ok(),
            Some(AccountStatus::Open)
        );
        assert_eq!(
            AccountStatus::try_from("closed".to_owned()).ok(),
            Some(AccountStatus::Closed)
        );
        for unknown in ["", "Open", "frozen"] {
            assert!(
                AccountStatus::try_from(unknown.to_owned()).is_err(),
                "{unknown}"
            );
        }
        assert_eq!(
            serde_json::to_value(AccountStatus::Closed).ok(),
            Some(serde_json::json!("closed"))
        );
    }
}

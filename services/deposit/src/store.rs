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

/// Locks the accounts of a batch of deposits until commit and returns them. Locking in
/// `account_id` order means two writers whose batches share accounts wait for each other instead
/// of deadlocking; the lock serialises one account's deposits, so their sequence numbers and
/// outbox ids follow the order they were accepted in.
pub async fn lock_accounts(
    conn: &mut PgConnection,
    account_ids: &[&str],
) -> sqlx::Result<Vec<AccountRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ANY($1)
         ORDER BY account_id FOR UPDATE"
    )))
    .bind(account_ids)
    .fetch_all(conn)
    .await
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

/// A deposit to store with its outbox row: the row, and the event's trace context and JSON.
pub struct NewDeposit {
    pub row: DepositRow,
    pub traceparent: Option<String>,
    pub payload: Vec<u8>,
}

/// Stores a batch of deposits in one statement: each account's `last_sequence` set to its
/// latest deposit's, the deposit rows, and their outbox rows in the batch's order (outbox ids
/// are the publishing order). Returns each outbox row's id with its event id.
pub async fn insert_deposits(
    conn: &mut PgConnection,
    batch: &[NewDeposit],
) -> sqlx::Result<Vec<(Uuid, i64)>> {
    let rows = || batch.iter().map(|d| &d.row);
    sqlx::query_as(
        "WITH batch AS (
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[],
                                  $6::text[], $7::timestamptz[], $8::text[], $9::bytea[])
                 WITH ORDINALITY AS b(deposit_id, event_id, account_id, sequence, amount_minor,
                                      currency, created_at, traceparent, payload, ord)
         ), sequences AS (
             UPDATE accounts AS a SET last_sequence = latest.sequence
             FROM (SELECT account_id, max(sequence) AS sequence FROM batch GROUP BY account_id) latest
             WHERE a.account_id = latest.account_id
         ), deposits AS (
             INSERT INTO deposits (deposit_id, event_id, account_id, sequence, amount_minor, currency, created_at)
             SELECT deposit_id, event_id, account_id, sequence, amount_minor, currency, created_at FROM batch
         )
         INSERT INTO outbox (event_id, account_id, sequence, traceparent, payload)
         SELECT event_id, account_id, sequence, traceparent, payload FROM batch ORDER BY ord
         RETURNING event_id, id",
    )
    .bind(rows().map(|r| r.deposit_id).collect::<Vec<_>>())
    .bind(rows().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
    .bind(rows().map(|r| r.sequence).collect::<Vec<_>>())
    .bind(rows().map(|r| r.amount_minor).collect::<Vec<_>>())
    .bind(rows().map(|r| r.currency.code()).collect::<Vec<_>>())
    .bind(rows().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(batch.iter().map(|d| d.traceparent.as_deref()).collect::<Vec<_>>())
    .bind(batch.iter().map(|d| d.payload.as_slice()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

/// A stored Idempotency-Key.
#[derive(Debug, sqlx::FromRow)]
pub struct IdempotencyRow {
    pub key: String,
    pub fingerprint: String,
    pub status_code: i32,
    pub response: serde_json::Value,
}

/// Claims `keys` (with their request fingerprints) for this transaction and returns the ones
/// it claimed; the others already exist. A request with a key another transaction has just
/// claimed waits here until that one commits or rolls back. `keys` must be distinct.
pub async fn claim_idempotency_keys(
    conn: &mut PgConnection,
    keys: &[&str],
    fingerprints: &[&str],
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "INSERT INTO idempotency_keys (key, fingerprint, status_code, response)
         SELECT key, fingerprint, 0, 'null' FROM UNNEST($1::text[], $2::text[]) AS k(key, fingerprint)
         ON CONFLICT (key) DO NOTHING RETURNING key",
    )
    .bind(keys)
    .bind(fingerprints)
    .fetch_all(conn)
    .await
}

pub async fn get_idempotency_keys(
    conn: &mut PgConnection,
    keys: &[&str],
) -> sqlx::Result<Vec<IdempotencyRow>> {
    sqlx::query_as(
        "SELECT key, fingerprint, status_code, response FROM idempotency_keys WHERE key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(conn)
    .await
}

/// Gives back keys claimed in this transaction by requests that were refused.
pub async fn release_idempotency_keys(conn: &mut PgConnection, keys: &[&str]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM idempotency_keys WHERE key = ANY($1)")
        .bind(keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the 201 each claimed key answers again.
pub async fn save_idempotent_responses(
    conn: &mut PgConnection,
    keys: &[&str],
    responses: &[serde_json::Value],
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys AS k SET status_code = 201, response = r.response
         FROM UNNEST($1::text[], $2::jsonb[]) AS r(key, response) WHERE k.key = r.key",
    )
    .bind(keys)
    .bind(responses)
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
    /// The account's sequence number of the event: one account's rows are published in it.
    pub sequence: i64,
    pub traceparent: Option<String>,
    pub payload: Vec<u8>,
}

pub async fn unpublished(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT id, event_id, account_id, sequence, traceparent, payload FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks `published` (the confirmed rows of the last round) and returns the next round: one
/// statement per round. Both parts see one snapshot, so the marked rows are left out by id.
pub async fn mark_published_and_fetch(
    conn: &mut PgConnection,
    published: &[i64],
    limit: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "WITH marked AS (UPDATE outbox SET published_at = now() WHERE id = ANY($1))
         SELECT id, event_id, account_id, sequence, traceparent, payload FROM outbox
         WHERE published_at IS NULL AND id <> ALL($1) ORDER BY id LIMIT $2",
    )
    .bind(published)
    .bind(limit)
    .fetch_all(conn)
    .await
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

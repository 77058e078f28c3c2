//! SQL of the email service, one small function per statement.
//!
//! The `emails` table is both the record of every confirmation and the sender's work queue:
//! `status = 'queued' AND next_attempt_at <= now()` is "due". See the migration for the
//! meaning of each column.

use crate::render::Rendered;
use chrono::{DateTime, Utc};
use eventbank_events::{AccountId, DepositCompleted};
use serde::Serialize;
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// Where an email is in its life. Stored as text (`CHECK` in the migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum EmailStatus {
    /// Waiting for its first or next delivery attempt.
    Queued,
    /// Accepted by the transport (SMTP server or mail folder).
    Sent,
    /// Given up: a permanent error, or too many attempts. `last_error` says why.
    Failed,
}

impl EmailStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "queued" => Some(Self::Queued),
            "sent" => Some(Self::Sent),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One email as listed by the API.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EmailSummary {
    /// The `DepositCompleted` event the email confirms (one email per event).
    pub event_id: Uuid,
    pub deposit_id: Uuid,
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "ACC-0001")]
    pub account_id: AccountId,
    /// The recipient's address.
    #[serde(rename = "to")]
    #[schema(example = "alice@example.com")]
    pub to_address: String,
    #[schema(example = "Deposit of 250.00 USD received")]
    pub subject: String,
    pub status: EmailStatus,
    /// Delivery attempts made so far.
    pub attempts: i32,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

const SUMMARY_COLUMNS: &str = "event_id, deposit_id, account_id, to_address, subject, status, \
     attempts, last_error, created_at, sent_at";

/// One email with everything stored about it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EmailDetail {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub summary: EmailSummary,
    /// The deposit's per-account sequence number.
    pub sequence: i64,
    #[schema(example = "Alice Example")]
    pub to_name: String,
    /// The `Message-ID` header the email is sent with.
    pub message_id: String,
    /// When the sender tries next (while `queued`).
    pub next_attempt_at: DateTime<Utc>,
    pub body_text: String,
    pub body_html: String,
}

/// A claimed email, with what the sender needs to build and deliver it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Outgoing {
    pub event_id: Uuid,
    /// What the handler rendered, as stored.
    #[sqlx(flatten)]
    pub rendered: Rendered,
    /// Attempts made before this one.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
impl Outgoing {
    /// A claimed email to Alice with placeholder content, for the sender's and the hand-off's
    /// unit tests.
    pub(crate) fn sample(event_id: Uuid) -> Self {
        Self {
            event_id,
            rendered: Rendered {
                to_name: "Alice".into(),
                to_address: "alice@example.com".into(),
                subject: "s".into(),
                body_text: "t".into(),
                body_html: "h".into(),
                message_id: "m".into(),
            },
            attempts: 0,
            created_at: chrono::Utc::now(),
        }
    }
}

/// Writes one rendered confirmation per event, in one statement (set-based: a batch of up to
/// 50 events costs one round trip, not 50). The email of event `i` is inserted leased to this
/// process for `lease` when `leased[i]` (as [`claim_due`] leaves a claimed row, so the lease
/// ends the same way), due at once otherwise.
/// The lease runs from the statement's clock rather than the transaction's start, so it never
/// ends earlier than `lease` after the caller reserved the email (see `crate::handoff`).
/// An event id already present is skipped, so a replay cannot queue a second email.
/// Returns the event id and `created_at` of each email inserted leased (not of those skipped).
pub async fn insert(
    conn: &mut PgConnection,
    events: &[DepositCompleted],
    rendered: &[Rendered],
    leased: &[bool],
    lease: Duration,
) -> sqlx::Result<Vec<(Uuid, DateTime<Utc>)>> {
    let n = events.len().min(rendered.len());
    let mut event_ids = Vec::with_capacity(n);
    let mut deposit_ids = Vec::with_capacity(n);
    let mut account_ids = Vec::with_capacity(n);
    let mut sequences = Vec::with_capacity(n);
    let mut to_names = Vec::with_capacity(n);
    let mut to_addresses = Vec::with_capacity(n);
    let mut subjects = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    let mut htmls = Vec::with_capacity(n);
    let mut message_ids = Vec::with_capacity(n);
    let mut leases = Vec::with_capacity(n);
    for (i, (event, r)) in events.iter().zip(rendered).enumerate() {
        event_ids.push(event.event_id);
        deposit_ids.push(event.deposit_id);
        account_ids.push(event.account_id.as_str());
        sequences.push(event.sequence);
        to_names.push(r.to_name.clone());
        to_addresses.push(r.to_address.clone());
        subjects.push(r.subject.clone());
        texts.push(r.body_text.clone());
        htmls.push(r.body_html.clone());
        message_ids.push(r.message_id.clone());
        leases.push(leased.get(i).copied().unwrap_or(false));
    }
    sqlx::query_as(
        "WITH inserted AS (
         INSERT INTO emails (event_id, deposit_id, account_id, sequence, to_name, to_address,
                             subject, body_text, body_html, message_id, next_attempt_at)
         SELECT event_id, deposit_id, account_id, sequence, to_name, to_address, subject,
                body_text, body_html, message_id,
                CASE WHEN leased
                     THEN clock_timestamp() + $12::bigint * interval '1 millisecond'
                     ELSE now() END
           FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[],
                       $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                       $11::bool[])
                AS t(event_id, deposit_id, account_id, sequence, to_name, to_address, subject,
                     body_text, body_html, message_id, leased)
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id, created_at, next_attempt_at > now() AS leased)
         SELECT event_id, created_at FROM inserted WHERE leased",
    )
    .bind(&event_ids)
    .bind(&deposit_ids)
    .bind(&account_ids)
    .bind(&sequences)
    .bind(&to_names)
    .bind(&to_addresses)
    .bind(&subjects)
    .bind(&texts)
    .bind(&htmls)
    .bind(&message_ids)
    .bind(&leases)
    .bind(millis(lease))
    .fetch_all(conn)
    .await
}

/// Claims up to `limit` due emails, longest due first, for `lease`: their `next_attempt_at` moves
/// to `now() + lease`, so no other sender picks them up meanwhile, and a sender that dies
/// mid-send hands them back when the lease runs out. `SKIP LOCKED` lets replicas claim
/// disjoint batches without waiting for each other. The claim commits at once, so no
/// transaction stays open across network I/O. The order is that of the partial index
/// `emails_queued_due`, so a claim reads only the rows it takes (migration 0002).
pub async fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    lease: Duration,
) -> sqlx::Result<Vec<Outgoing>> {
    let mut rows: Vec<Outgoing> = sqlx::query_as(
        "UPDATE emails e
            SET next_attempt_at = now() + $2::bigint * interval '1 millisecond'
           FROM (SELECT event_id FROM emails
                  WHERE status = 'queued' AND next_attempt_at <= now()
                  ORDER BY next_attempt_at, event_id
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED) due
          WHERE e.event_id = due.event_id
      RETURNING e.event_id, e.to_name, e.to_address, e.subject, e.body_text, e.body_html,
                e.message_id, e.attempts, e.created_at",
    )
    .bind(limit)
    .bind(millis(lease))
    .fetch_all(conn)
    .await?;
    // RETURNING has no defined order; deliver oldest first.
    rows.sort_by_key(|r| (r.created_at, r.event_id));
    Ok(rows)
}

/// Records deliveries, in one statement. Only a queued row changes: a row already given up
/// stays as it is.
///
/// The ids are joined rather than matched with `event_id = ANY($1) AND status = 'queued'`:
/// that condition implies the predicate of the partial index `emails_queued_due`, and the
/// planner then intersects the key lookups with a scan of that whole index (every queued email,
/// and the dead entries of those just sent: thousands under load, a millisecond a statement).
/// Joined, each id is one primary-key lookup. The same holds for [`release`].
pub async fn mark_sent(conn: &mut PgConnection, event_ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE emails e SET status = 'sent', sent_at = now(), attempts = e.attempts + 1
           FROM UNNEST($1::uuid[]) AS t(event_id)
          WHERE e.event_id = t.event_id AND e.status = 'queued'",
    )
    .bind(event_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed attempt: the row stays queued and is due again after `retry_in`, unless
/// this was attempt number `max_attempts`, in which case it is marked failed. Returns the
/// resulting status and attempt count.
pub async fn mark_retry(
    conn: &mut PgConnection,
    event_id: Uuid,
    error: &str,
    retry_in: Duration,
    max_attempts: u32,
) -> sqlx::Result<Option<(EmailStatus, i32)>> {
    sqlx::query_as(
        "UPDATE emails
            SET attempts = attempts + 1,
                last_error = $2,
                status = CASE WHEN attempts + 1 >= $4 THEN 'failed' ELSE 'queued' END,
                next_attempt_at = now() + $3::bigint * interval '1 millisecond'
          WHERE event_id = $1 AND status = 'queued'
      RETURNING status, attempts",
    )
    .bind(event_id)
    .bind(error)
    .bind(millis(retry_in))
    .bind(i64::from(max_attempts))
    .fetch_optional(conn)
    .await
}

/// Gives up on an email at once (an error that no retry can fix, such as an invalid address).
pub async fn mark_failed(conn: &mut PgConnection, event_id: Uuid, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE emails SET status = 'failed', attempts = attempts + 1, last_error = $2
          WHERE event_id = $1 AND status = 'queued'",
    )
    .bind(event_id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Hands claimed but unattempted emails back (on shutdown), so they are due at once rather than
/// when their lease runs out.
pub async fn release(conn: &mut PgConnection, event_ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE emails e SET next_attempt_at = now()
           FROM UNNEST($1::uuid[]) AS t(event_id)
          WHERE e.event_id = t.event_id AND e.status = 'queued'",
    )
    .bind(event_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Emails waiting to be delivered (due or not), for the queue-depth gauge: a count over the
/// partial index, which holds exactly the queued rows.
pub async fn queued_count(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM emails WHERE status = 'queued'")
        .fetch_one(conn)
        .await
}

/// The newest emails first, at most `limit`, optionally of one account and/or one status.
pub async fn list(
    conn: &mut PgConnection,
    account_id: Option<&AccountId>,
    status: Option<EmailStatus>,
    limit: i64,
) -> sqlx::Result<Vec<EmailSummary>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM emails
          WHERE ($1::text IS NULL OR account_id = $1)
            AND ($2::text IS NULL OR status = $2)
          ORDER BY created_at DESC, event_id DESC
          LIMIT $3"
    )))
    .bind(account_id.map(AccountId::as_str))
    .bind(status)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, event_id: Uuid) -> sqlx::Result<Option<EmailDetail>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS}, sequence, to_name, message_id, next_attempt_at,
                body_text, body_html
           FROM emails WHERE event_id = $1"
    )))
    .bind(event_id)
    .fetch_optional(conn)
    .await
}

/// A duration as whole milliseconds for SQL intervals, saturating (no sensible delay is near
/// the limit).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

//! The SQL of the compliance service, in small functions taking a connection (or transaction).
//!
//! Writes are set-based (arrays expanded with `UNNEST`): the chain is computed in Rust, then
//! the whole batch of entries is inserted in one statement.

use crate::chain::{self, Broken, StoredEntry, Verifier};
use crate::rules::{Deposit, Rolling, Window};
use chrono::{DateTime, TimeDelta, Utc};
use eventbank_events::{AccountId, DepositCompleted};
use eventbank_runtime::account_ids;
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// The end of the chain, locked for the rest of the transaction: every append in the service
/// waits here, which keeps positions gap-free and each entry linked to the one before it. Also
/// answers the transaction's timestamp (`now()`, the same for the whole batch, as Postgres
/// stores it), the `recorded_at` of the entries.
pub async fn lock_head(conn: &mut PgConnection) -> sqlx::Result<(i64, Vec<u8>, DateTime<Utc>)> {
    sqlx::query_as("SELECT position, hash, now() FROM chain_head WHERE id = 1 FOR UPDATE")
        .fetch_one(conn)
        .await
}

/// Advisory lock class of the per-account locks (the other key is `hashtext(account_id)`).
pub const ACCOUNT_LOCK_CLASS: i32 = 0x434f_0001;

/// Locks the accounts of a batch until the transaction ends, in a fixed order (so two batches
/// cannot deadlock): the rules of one account never run concurrently.
pub async fn lock_accounts(conn: &mut PgConnection, account_ids: &[AccountId]) -> sqlx::Result<()> {
    let keys = eventbank_runtime::account_ids::texts(account_ids);
    eventbank_runtime::db::lock_keys(conn, ACCOUNT_LOCK_CLASS, &keys).await
}

/// What a batch reads once its accounts are locked, in one round trip: which of its events
/// already have an audit entry, and the rolling state of its accounts and currencies (one
/// without a row has no deposit).
///
/// Planned at every execution, not prepared once per connection: a service starts on an empty
/// audit log, and Postgres caches a prepared statement's generic plan after five executions.
/// Planned on an empty table, that plan is a sequential scan, and it stays cached until an
/// ANALYZE of the table invalidates it, which autovacuum may not run for minutes: meanwhile every
/// batch read the whole log (BENCHMARKS.md, round three). One planning per batch is cheap.
pub async fn batch_state(
    conn: &mut PgConnection,
    event_ids: &[Uuid],
    keys: &[AccountCurrency],
) -> sqlx::Result<(HashSet<Uuid>, HashMap<AccountCurrency, ScopeState>)> {
    let accounts = account_ids::texts(keys.iter().map(|(a, _)| a));
    let currencies: Vec<&str> = keys.iter().map(|(_, c)| c.as_str()).collect();
    // A recorded event's row has only `event_id`; a scope's row has everything else.
    type Row = (
        Option<Uuid>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<DateTime<Utc>>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT event_id, NULL, NULL, NULL::bigint, NULL::timestamptz, NULL \
           FROM audit_log WHERE event_id = ANY($1) \
         UNION ALL \
         SELECT NULL::uuid, s.account_id, s.currency, s.threshold_minor, s.last_at, \
                s.cum_minor::text \
           FROM UNNEST($2::text[], $3::text[]) AS k(account_id, currency) \
           JOIN structuring_scopes s ON s.account_id = k.account_id AND s.currency = k.currency",
    )
    .bind(event_ids)
    .bind(accounts)
    .bind(currencies)
    .persistent(false)
    .fetch_all(conn)
    .await?;
    let mut recorded = HashSet::new();
    let mut states = HashMap::with_capacity(keys.len());
    for row in rows {
        match row {
            (Some(event_id), ..) => {
                recorded.insert(event_id);
            }
            (
                None,
                Some(account_id),
                Some(currency),
                Some(threshold_minor),
                last_at,
                Some(total),
            ) => {
                states.insert(
                    (account_ids::decode(account_id)?, currency),
                    ScopeState {
                        threshold_minor,
                        rolling: Rolling {
                            last_at,
                            total: parse_total(&total)?,
                        },
                    },
                );
            }
            _ => {
                return Err(sqlx::Error::Decode(
                    "a structuring scope row without its account, currency, threshold or total"
                        .into(),
                ));
            }
        }
    }
    Ok((recorded, states))
}

/// Inserts the entries and moves the head to the last of them, in one statement.
pub async fn append_entries(
    conn: &mut PgConnection,
    rows: &[StoredEntry],
    head_position: i64,
    head_hash: &[u8],
) -> sqlx::Result<()> {
    let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
    let event_ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let account_ids: Vec<String> = rows.iter().map(|r| r.account_id.clone()).collect();
    let entries: Vec<String> = rows.iter().map(|r| r.entry.clone()).collect();
    let prev_hashes: Vec<Vec<u8>> = rows.iter().map(|r| r.prev_hash.clone()).collect();
    let hashes: Vec<Vec<u8>> = rows.iter().map(|r| r.hash.clone()).collect();
    let recorded: Vec<DateTime<Utc>> = rows.iter().map(|r| r.recorded_at).collect();
    sqlx::query(
        "WITH appended AS ( \
             INSERT INTO audit_log (position, event_id, account_id, entry, prev_hash, hash, \
                                    recorded_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], \
                                  $5::bytea[], $6::bytea[], $7::timestamptz[])) \
         UPDATE chain_head SET position = $8, hash = $9 WHERE id = 1",
    )
    .bind(positions)
    .bind(event_ids)
    .bind(account_ids)
    .bind(entries)
    .bind(prev_hashes)
    .bind(hashes)
    .bind(recorded)
    .bind(head_position)
    .bind(head_hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the deposits of the events, as the rules read them back, each with its running
/// total when the handler knows it (a deposit in time order); the others get theirs from
/// [`rebuild_running_totals`]. In the same statement, sets the rolling state of the accounts
/// and currencies whose new deposits were all in time order: the handler knows it too (the
/// last of them), so it is written, not read back from the deposits
/// ([`refresh_scope_states`] does that for the others).
pub async fn insert_deposits(
    conn: &mut PgConnection,
    rows: &[(&DepositCompleted, Option<i128>)],
    scopes: &[(AccountCurrency, Rolling)],
    threshold_minor: i64,
) -> sqlx::Result<()> {
    let event_ids: Vec<Uuid> = rows.iter().map(|(e, _)| e.event_id).collect();
    let deposit_ids: Vec<Uuid> = rows.iter().map(|(e, _)| e.deposit_id).collect();
    let accounts = account_ids::texts(rows.iter().map(|(e, _)| &e.account_id));
    let amounts: Vec<i64> = rows.iter().map(|(e, _)| e.amount_minor).collect();
    let currencies: Vec<&str> = rows.iter().map(|(e, _)| e.currency.code()).collect();
    let occurred: Vec<DateTime<Utc>> = rows.iter().map(|(e, _)| e.occurred_at).collect();
    // numeric travels as text: sqlx is built without a decimal type.
    let totals: Vec<Option<String>> = rows
        .iter()
        .map(|(_, total)| total.map(|t| t.to_string()))
        .collect();
    let scope_accounts = account_ids::texts(scopes.iter().map(|((a, _), _)| a));
    let scope_currencies: Vec<&str> = scopes.iter().map(|((_, c), _)| c.as_str()).collect();
    let scope_last: Vec<Option<DateTime<Utc>>> = scopes.iter().map(|(_, r)| r.last_at).collect();
    let scope_totals: Vec<String> = scopes.iter().map(|(_, r)| r.total.to_string()).collect();
    sqlx::query(
        "WITH scopes AS ( \
             INSERT INTO structuring_scopes (account_id, currency, threshold_minor, last_at, \
                                             cum_minor) \
             SELECT k.account_id, k.currency, $8, k.last_at, k.cum_minor \
               FROM UNNEST($9::text[], $10::text[], $11::timestamptz[], \
                           $12::text[]::numeric[]) AS k(account_id, currency, last_at, cum_minor) \
             ON CONFLICT (account_id, currency) DO UPDATE \
                SET threshold_minor = EXCLUDED.threshold_minor, last_at = EXCLUDED.last_at, \
                    cum_minor = EXCLUDED.cum_minor) \
         INSERT INTO deposits (event_id, deposit_id, account_id, amount_minor, currency, \
                               occurred_at, cum_minor) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], \
                              $6::timestamptz[], $7::text[]::numeric[]) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_ids)
    .bind(deposit_ids)
    .bind(accounts)
    .bind(amounts)
    .bind(currencies)
    .bind(occurred)
    .bind(totals)
    .bind(threshold_minor)
    .bind(scope_accounts)
    .bind(scope_currencies)
    .bind(scope_last)
    .bind(scope_totals)
    .execute(conn)
    .await?;
    Ok(())
}

/// A running total as Postgres prints a numeric of scale 0.
fn parse_total(text: &str) -> sqlx::Result<i128> {
    text.parse::<i128>()
        .map_err(|e| sqlx::Error::Decode(format!("running total {text:?}: {e}").into()))
}

/// The rolling state of one account and currency (`structuring_scopes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeState {
    /// The threshold the running totals were computed for.
    pub threshold_minor: i64,
    pub rolling: Rolling,
}

/// Recomputes the running totals of each account and currency from an instant on (`None`:
/// the whole history), for the threshold `under_minor`: after a late deposit, the totals of
/// every deposit from it on; after a threshold change, all of them. One statement.
pub async fn rebuild_running_totals(
    conn: &mut PgConnection,
    rebuilds: &[(AccountCurrency, Option<DateTime<Utc>>)],
    under_minor: i64,
) -> sqlx::Result<()> {
    if rebuilds.is_empty() {
        return Ok(());
    }
    let accounts = account_ids::texts(rebuilds.iter().map(|((a, _), _)| a));
    let currencies: Vec<&str> = rebuilds.iter().map(|((_, c), _)| c.as_str()).collect();
    let froms: Vec<Option<DateTime<Utc>>> = rebuilds.iter().map(|(_, from)| *from).collect();
    sqlx::query(
        "WITH base AS ( \
             SELECT s.account_id, s.currency, \
                    COALESCE(s.from_at, '-infinity'::timestamptz) AS from_at, \
                    COALESCE((SELECT d.cum_minor FROM deposits d \
                               WHERE d.account_id = s.account_id AND d.currency = s.currency \
                                 AND d.cum_minor IS NOT NULL AND d.occurred_at < s.from_at \
                               ORDER BY d.occurred_at DESC, d.cum_minor DESC LIMIT 1), 0) AS before \
               FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS s(account_id, currency, from_at)), \
         running AS ( \
             SELECT d.event_id, d.amount_minor, \
                    b.before + sum(CASE WHEN d.amount_minor < $4 THEN d.amount_minor ELSE 0 END) \
                        OVER (PARTITION BY d.account_id, d.currency \
                              ORDER BY d.occurred_at, d.event_id) AS cum \
               FROM base b \
               JOIN deposits d ON d.account_id = b.account_id AND d.currency = b.currency \
                              AND d.occurred_at >= b.from_at) \
         UPDATE deposits d \
            SET cum_minor = CASE WHEN r.amount_minor < $4 THEN r.cum END \
           FROM running r WHERE d.event_id = r.event_id",
    )
    .bind(accounts)
    .bind(currencies)
    .bind(froms)
    .bind(under_minor)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets the rolling state of each account and currency from its last recorded running total
/// (one index probe each), for the threshold the totals were computed for: after
/// [`rebuild_running_totals`] rewrote them.
pub async fn refresh_scope_states(
    conn: &mut PgConnection,
    keys: &[AccountCurrency],
    threshold_minor: i64,
) -> sqlx::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let accounts = account_ids::texts(keys.iter().map(|(a, _)| a));
    let currencies: Vec<&str> = keys.iter().map(|(_, c)| c.as_str()).collect();
    sqlx::query(
        "INSERT INTO structuring_scopes (account_id, currency, threshold_minor, last_at, cum_minor) \
         SELECT k.account_id, k.currency, $3, l.occurred_at, COALESCE(l.cum_minor, 0) \
           FROM UNNEST($1::text[], $2::text[]) AS k(account_id, currency) \
           LEFT JOIN LATERAL ( \
                SELECT d.occurred_at, d.cum_minor FROM deposits d \
                 WHERE d.account_id = k.account_id AND d.currency = k.currency \
                   AND d.cum_minor IS NOT NULL \
                 ORDER BY d.occurred_at DESC, d.cum_minor DESC LIMIT 1) l ON true \
         ON CONFLICT (account_id, currency) DO UPDATE \
            SET threshold_minor = EXCLUDED.threshold_minor, last_at = EXCLUDED.last_at, \
                cum_minor = EXCLUDED.cum_minor",
    )
    .bind(accounts)
    .bind(currencies)
    .bind(threshold_minor)
    .execute(conn)
    .await?;
    Ok(())
}

/// For each (account, currency, instant): the running total of the last recorded deposit
/// before the instant, 0 if none. One index probe each, in the order asked.
pub async fn running_totals_before(
    conn: &mut PgConnection,
    probes: &[(AccountCurrency, DateTime<Utc>)],
) -> sqlx::Result<Vec<i128>> {
    if probes.is_empty() {
        return Ok(Vec::new());
    }
    let accounts = account_ids::texts(probes.iter().map(|((a, _), _)| a));
    let currencies: Vec<&str> = probes.iter().map(|((_, c), _)| c.as_str()).collect();
    let befores: Vec<DateTime<Utc>> = probes.iter().map(|(_, at)| *at).collect();
    let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT p.i, (SELECT d.cum_minor::text FROM deposits d \
                       WHERE d.account_id = p.account_id AND d.currency = p.currency \
                         AND d.cum_minor IS NOT NULL AND d.occurred_at < p.before_at \
                       ORDER BY d.occurred_at DESC, d.cum_minor DESC LIMIT 1) \
           FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) \
                WITH ORDINALITY AS p(account_id, currency, before_at, i) \
          ORDER BY p.i",
    )
    .bind(accounts)
    .bind(currencies)
    .bind(befores)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(_, total)| total.as_deref().map_or(Ok(0), parse_total))
        .collect()
}

/// The recorded deposits under `under_minor` inside each window of an account and currency,
/// one list per window in the order asked: what a structuring alert names.
pub async fn deposits_in_windows(
    conn: &mut PgConnection,
    windows: &[(AccountCurrency, Window)],
    under_minor: i64,
) -> sqlx::Result<Vec<Vec<Deposit>>> {
    let mut out: Vec<Vec<Deposit>> = vec![Vec::new(); windows.len()];
    if windows.is_empty() {
        return Ok(out);
    }
    let accounts = account_ids::texts(windows.iter().map(|((a, _), _)| a));
    let currencies: Vec<&str> = windows.iter().map(|((_, c), _)| c.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = windows.iter().map(|(_, w)| w.start).collect();
    let ends: Vec<DateTime<Utc>> = windows.iter().map(|(_, w)| w.end).collect();
    let rows: Vec<(i64, Uuid, i64, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT w.i, d.event_id, d.amount_minor, d.currency, d.occurred_at \
           FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) \
                WITH ORDINALITY AS w(account_id, currency, start_at, end_at, i) \
           JOIN deposits d ON d.account_id = w.account_id AND d.currency = w.currency \
                          AND d.occurred_at >= w.start_at AND d.occurred_at <= w.end_at \
          WHERE d.amount_minor < $5",
    )
    .bind(accounts)
    .bind(currencies)
    .bind(starts)
    .bind(ends)
    .bind(under_minor)
    .fetch_all(conn)
    .await?;
    for (i, event_id, amount_minor, currency, occurred_at) in rows {
        let slot = usize::try_from(i - 1)
            .ok()
            .and_then(|i| out.get_mut(i))
            .ok_or_else(|| sqlx::Error::Protocol(format!("window {i} was not asked for")))?;
        slot.push(Deposit {
            event_id,
            amount_minor,
            currency,
            occurred_at,
        });
    }
    Ok(out)
}

/// Where the structuring walk of one account and currency restarts: every window ending at
/// or after `from` is recomputed.
#[derive(Debug, Clone)]
pub struct Scope {
    pub account_id: AccountId,
    pub currency: String,
    pub from: DateTime<Utc>,
}

impl Scope {
    /// (account, currency).
    pub fn key(&self) -> AccountCurrency {
        (self.account_id.clone(), self.currency.clone())
    }
}

type ScopeColumns<'a> = (Vec<&'a str>, Vec<String>, Vec<DateTime<Utc>>);

fn scope_columns(scopes: &[Scope], shift: TimeDelta) -> ScopeColumns<'_> {
    (
        account_ids::texts(scopes.iter().map(|s| &s.account_id)),
        scopes.iter().map(|s| s.currency.clone()).collect(),
        scopes
            .iter()
            .map(|s| s.from.checked_sub_signed(shift).unwrap_or(s.from))
            .collect(),
    )
}

/// (account, currency) as a map key.
pub type AccountCurrency = (AccountId, String);

/// Every recorded deposit under `under_minor` of each scope's account and currency that
/// occurred at or after `from - window`: all the deposits the windows from `from` on can hold.
pub async fn deposits_for_walk(
    conn: &mut PgConnection,
    scopes: &[Scope],
    window: TimeDelta,
    under_minor: i64,
) -> sqlx::Result<HashMap<AccountCurrency, Vec<Deposit>>> {
    let (accounts, currencies, since) = scope_columns(scopes, window);
    let rows: Vec<(String, Uuid, i64, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT d.account_id, d.event_id, d.amount_minor, d.currency, d.occurred_at \
           FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS s(account_id, currency, since) \
           JOIN deposits d ON d.account_id = s.account_id AND d.currency = s.currency \
                          AND d.occurred_at >= s.since \
          WHERE d.amount_minor < $4",
    )
    .bind(accounts)
    .bind(currencies)
    .bind(since)
    .bind(under_minor)
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<AccountCurrency, Vec<Deposit>> = HashMap::new();
    for (account_id, event_id, amount_minor, currency, occurred_at) in rows {
        out.entry((account_ids::decode(account_id)?, currency.clone()))
            .or_default()
            .push(Deposit {
                event_id,
                amount_minor,
                currency,
                occurred_at,
            });
    }
    Ok(out)
}

/// An active (not superseded) structuring alert, as the handler compares it with the walk.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveStructuring {
    pub id: i64,
    pub event_id: Uuid,
    pub window: Window,
    pub amount_minor: i64,
    pub details: serde_json::Value,
}

/// Per scope: the window of the last active structuring alert ending before `from` (where the
/// walk continues from), and the active alerts ending at or after `from` (what the walk
/// replaces), in window order.
#[allow(clippy::type_complexity)]
pub async fn structuring_state(
    conn: &mut PgConnection,
    scopes: &[Scope],
) -> sqlx::Result<HashMap<AccountCurrency, (Option<Window>, Vec<ActiveStructuring>)>> {
    let (accounts, currencies, froms) = scope_columns(scopes, TimeDelta::zero());
    // One round trip: a previous window's row has no alert (`id` NULL); the active alerts'
    // rows come in window order.
    type Row = (
        String,
        String,
        Option<i64>,
        Option<Uuid>,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<i64>,
        Option<serde_json::Value>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.account_id, s.currency, NULL::bigint AS id, NULL::uuid, p.window_start, \
                p.window_end, NULL::bigint, NULL::jsonb \
           FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS s(account_id, currency, f) \
           CROSS JOIN LATERAL ( \
                 SELECT window_start, window_end FROM alerts a \
                  WHERE a.account_id = s.account_id AND a.currency = s.currency \
                    AND a.kind = 'structuring' AND a.superseded_at IS NULL \
                    AND a.window_end < s.f \
                  ORDER BY a.window_end DESC LIMIT 1) p \
         UNION ALL \
         SELECT s.account_id, s.currency, a.id, a.event_id, a.window_start, a.window_end, \
                a.amount_minor, a.details \
           FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS s(account_id, currency, f) \
           JOIN alerts a ON a.account_id = s.account_id AND a.currency = s.currency \
                        AND a.kind = 'structuring' AND a.superseded_at IS NULL \
                        AND a.window_end >= s.f \
          ORDER BY window_end",
    )
    .bind(&accounts)
    .bind(&currencies)
    .bind(&froms)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: HashMap<AccountCurrency, (Option<Window>, Vec<ActiveStructuring>)> =
        HashMap::new();
    for (account_id, currency, id, event_id, start, end, amount_minor, details) in rows {
        let scope = out
            .entry((account_ids::decode(account_id)?, currency))
            .or_default();
        let window = Window { start, end };
        match (id, event_id, amount_minor, details) {
            (None, ..) => scope.0 = Some(window),
            (Some(id), Some(event_id), Some(amount_minor), Some(details)) => {
                scope.1.push(ActiveStructuring {
                    id,
                    event_id,
                    window,
                    amount_minor,
                    details,
                })
            }
            _ => {
                return Err(sqlx::Error::Decode(
                    "an active structuring alert without its event, amount or details".into(),
                ));
            }
        }
    }
    Ok(out)
}

/// Marks alerts superseded: they stay on record, no longer active.
pub async fn supersede_alerts(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE alerts SET superseded_at = now() WHERE id = ANY($1) AND superseded_at IS NULL",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Which rule raised an alert.
// Stored as text (`CHECK` in the migration); a stored value that is neither is a decode error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// One deposit at or over the threshold.
    Ctr,
    /// Several deposits under the threshold reaching it within the window.
    Structuring,
}

impl AlertKind {
    /// The kind a query parameter names, if any.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ctr" => Some(Self::Ctr),
            "structuring" => Some(Self::Structuring),
            _ => None,
        }
    }

    /// The stored (and serialised) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ctr => "ctr",
            Self::Structuring => "structuring",
        }
    }
}

/// An alert to record.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub kind: AlertKind,
    pub account_id: AccountId,
    pub event_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub window: Window,
    pub details: serde_json::Value,
}

/// Records alerts; an active alert of the same kind for the same event is already there
/// (idempotent).
pub async fn insert_alerts(conn: &mut PgConnection, alerts: &[NewAlert]) -> sqlx::Result<()> {
    if alerts.is_empty() {
        return Ok(());
    }
    let kinds: Vec<AlertKind> = alerts.iter().map(|a| a.kind).collect();
    let accounts = account_ids::texts(alerts.iter().map(|a| &a.account_id));
    let event_ids: Vec<Uuid> = alerts.iter().map(|a| a.event_id).collect();
    let amounts: Vec<i64> = alerts.iter().map(|a| a.amount_minor).collect();
    let currencies: Vec<String> = alerts.iter().map(|a| a.currency.clone()).collect();
    let starts: Vec<DateTime<Utc>> = alerts.iter().map(|a| a.window.start).collect();
    let ends: Vec<DateTime<Utc>> = alerts.iter().map(|a| a.window.end).collect();
    let details: Vec<serde_json::Value> = alerts.iter().map(|a| a.details.clone()).collect();
    sqlx::query(
        "INSERT INTO alerts (kind, account_id, event_id, amount_minor, currency, window_start, \
                             window_end, details) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], \
                              $6::timestamptz[], $7::timestamptz[], $8::jsonb[]) \
         ON CONFLICT (kind, event_id) WHERE superseded_at IS NULL DO NOTHING",
    )
    .bind(kinds)
    .bind(accounts)
    .bind(event_ids)
    .bind(amounts)
    .bind(currencies)
    .bind(starts)
    .bind(ends)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Audit entries after `after` (a position), oldest first, optionally of one account.
pub async fn audit_page(
    conn: &mut PgConnection,
    account_id: Option<&AccountId>,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<StoredEntry>> {
    sqlx::query_as(
        "SELECT position, event_id, account_id, entry, prev_hash, hash, recorded_at \
           FROM audit_log \
          WHERE position > $1 AND ($2::text IS NULL OR account_id = $2) \
          ORDER BY position LIMIT $3",
    )
    .bind(after)
    .bind(account_id.map(AccountId::as_str))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One stored alert.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AlertRow {
    /// Pass as `after` to page.
    pub id: i64,
    /// `ctr` (one large deposit) or `structuring` (several below the threshold in a window).
    pub kind: AlertKind,
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "ACC-0001")]
    pub account_id: AccountId,
    /// The deposit event that raised it.
    pub event_id: Uuid,
    /// The amount the rule looked at (the deposit, or the window's sum).
    pub amount_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// The rule's own facts (threshold, deposits counted, ...).
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// When a late deposit made this alert no longer the one time order gives (see
    /// [`crate::rules`]); absent for an active alert.
    pub superseded_at: Option<DateTime<Utc>>,
}

/// Alerts after `after` (an id), oldest first, optionally of one account and one kind; the
/// superseded ones only when asked for.
pub async fn alerts_page(
    conn: &mut PgConnection,
    account_id: Option<&AccountId>,
    kind: Option<AlertKind>,
    include_superseded: bool,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<AlertRow>> {
    sqlx::query_as(
        "SELECT id, kind, account_id, event_id, amount_minor, currency, window_start, \
                window_end, details, created_at, superseded_at \
           FROM alerts \
          WHERE id > $1 AND ($2::text IS NULL OR account_id = $2) \
                AND ($3::text IS NULL OR kind = $3) \
                AND ($5 OR superseded_at IS NULL) \
          ORDER BY id LIMIT $4",
    )
    .bind(after)
    .bind(account_id.map(AccountId::as_str))
    .bind(kind)
    .bind(limit)
    .bind(include_superseded)
    .fetch_all(conn)
    .await
}

/// The outcome of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Intact {
        entries: u64,
        head_position: i64,
        head_hash: String,
    },
    Broken {
        entries_checked: u64,
        broken: Broken,
    },
}

/// Walks the whole chain in position order, recomputing every hash, with constant memory (rows
/// are streamed). `conn` should be in a REPEATABLE READ transaction so that the head and the
/// rows are one snapshot (see [`verify_snapshot`]).
pub async fn verify(conn: &mut PgConnection) -> sqlx::Result<Verification> {
    let (head_position, head_hash) =
        sqlx::query_as::<_, (i64, Vec<u8>)>("SELECT position, hash FROM chain_head WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?;
    let mut verifier = Verifier::new();
    {
        let mut rows = sqlx::query_as::<_, StoredEntry>(
            "SELECT position, event_id, account_id, entry, prev_hash, hash, recorded_at \
               FROM audit_log ORDER BY position",
        )
        .fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            if let Err(broken) = verifier.check(&row) {
                return Ok(Verification::Broken {
                    entries_checked: verifier.checked(),
                    broken,
                });
            }
        }
    }
    let checked = verifier.checked();
    match verifier.finish(head_position, &head_hash) {
        Ok(entries) => Ok(Verification::Intact {
            entries,
            head_position,
            head_hash: chain::hex(&head_hash),
        }),
        Err(broken) => Ok(Verification::Broken {
            entries_checked: checked,
            broken,
        }),
    }
}

/// [`verify`] in a read-only REPEATABLE READ transaction of its own: appends that commit
/// meanwhile are not half-seen.
pub async fn verify_snapshot(pool: &sqlx::PgPool) -> sqlx::Result<Verification> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let outcome = verify(&mut tx).await?;
    tx.rollback().await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_kind_is_named_the_same_in_queries_in_the_table_and_in_json() {
        for kind in [AlertKind::Ctr, AlertKind::Structuring] {
            assert_eq!(AlertKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(serde_json::Value::from(kind.as_str()))
            );
        }
        assert_eq!(AlertKind::parse("CTR"), None);
        assert_eq!(AlertKind::parse("other"), None);
    }
}

//! SQL of the account service: the event store (append with optimistic concurrency, stream
//! loading = snapshot + tail, the gap-safe global reader), snapshots, parked events, and the
//! read-model queries. Projection writes live in [`crate::projection`].

use crate::cache::Head;
use crate::codec::{self, CodecError};
use crate::domain::{self, AccountEvent, AccountState, Deposit, Deposited};
use crate::projection::BalanceRow;
use chrono::{DateTime, Utc};
use eventbank_events::{AccountId, Currency};
use eventbank_runtime::account_ids;
use sqlx::PgConnection;
use sqlx::postgres::PgDatabaseError;
use std::collections::HashMap;
use uuid::Uuid;

/// One event as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub account_id: AccountId,
    pub version: i64,
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub event: AccountEvent,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    #[sqlx(try_from = "String")]
    account_id: AccountId,
    version: i64,
    position: i64,
    recorded_at: DateTime<Utc>,
    event_type: String,
    schema_version: i32,
    payload: String,
}

impl EventRow {
    fn decode(self) -> Result<RecordedEvent, StoreError> {
        let event = codec::decode(&self.event_type, self.schema_version, &self.payload).map_err(
            |source| StoreError::Corrupt {
                account_id: self.account_id.clone(),
                version: self.version,
                source,
            },
        )?;
        Ok(RecordedEvent {
            account_id: self.account_id,
            version: self.version,
            position: self.position,
            recorded_at: self.recorded_at,
            event,
        })
    }
}

const EVENT_COLUMNS: &str = "account_id, version, position, recorded_at, event_type, schema_version, payload::text AS payload";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended this version of the stream first (primary key conflict).
    #[error("concurrent append: {detail}")]
    Conflict { detail: String },
    #[error("stored event {account_id} v{version} cannot be read: {source}")]
    Corrupt {
        account_id: AccountId,
        version: i64,
        source: CodecError,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An event to append at a given stream version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub account_id: AccountId,
    pub version: i64,
    pub event: AccountEvent,
}

/// Appends events (any streams, versions given) in one statement, in the given order (which is
/// their global position order), and returns their `recorded_at` (the transaction's start
/// time). A version that already exists makes the whole append fail with
/// [`StoreError::Conflict`]: the caller reloads and decides again, or gives up.
pub async fn append(
    conn: &mut PgConnection,
    events: &[NewEvent],
) -> Result<DateTime<Utc>, StoreError> {
    let n = events.len();
    let (mut accounts, mut versions, mut types, mut schemas, mut payloads, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        let stored = codec::encode(&e.event);
        accounts.push(e.account_id.as_str());
        versions.push(e.version);
        types.push(stored.event_type.as_str());
        schemas.push(stored.schema_version);
        payloads.push(stored.payload);
        times.push(e.event.occurred_at());
    }
    // recorded_at defaults to now(), the transaction's start: the same value for every row.
    let result = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO events (account_id, version, event_type, schema_version, payload, occurred_at)
             SELECT a, v, t, s, p::jsonb, o
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::timestamptz[])
                  WITH ORDINALITY AS x(a, v, t, s, p, o, n)
             ORDER BY n
         )
         SELECT now()",
    )
    .bind(&accounts)
    .bind(&versions)
    .bind(&types)
    .bind(&schemas)
    .bind(&payloads)
    .bind(&times)
    .fetch_one(conn)
    .await;
    match result {
        Ok(recorded_at) => Ok(recorded_at),
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("events_pkey") => {
            let detail = db
                .try_downcast_ref::<PgDatabaseError>()
                .and_then(|e| e.detail().map(str::to_owned))
                .unwrap_or_else(|| db.message().to_owned());
            Err(StoreError::Conflict { detail })
        }
        Err(e) => Err(e.into()),
    }
}

/// Where a loaded state came from (by default: nothing, the stream does not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub state: AccountState,
    /// Version of the snapshot used (0: none, the stream was replayed from the start).
    pub snapshot_version: i64,
    /// Events replayed on top of the snapshot.
    pub replayed: i64,
}

/// What the handler reads of its locked accounts before applying a batch, in one statement.
#[derive(Debug)]
pub struct Heads {
    /// The newest event of each stream (absent: the stream does not exist yet).
    pub heads: HashMap<AccountId, Head>,
    /// The current transaction's id, to check [`crate::cache::StateCache`] entries against.
    pub txid: i64,
    /// The accounts with parked deposits ([`load_parked`] reads them; most batches have none).
    pub parked: Vec<AccountId>,
}

/// The streams' heads, the transaction's id and which accounts have parked deposits (see
/// [`Heads`]). Two index probes per account. Run it after [`lock_accounts`], in its own
/// statement, so that it sees what the lock's previous holder committed.
pub async fn stream_heads(
    conn: &mut PgConnection,
    account_ids: &[AccountId],
) -> sqlx::Result<Heads> {
    let rows: Vec<HeadRow> = sqlx::query_as(
        "SELECT f.a AS account_id, h.version, h.txid::text::bigint AS txid,
                pg_current_xact_id()::text::bigint AS current_txid,
                EXISTS (SELECT 1 FROM pending_events p WHERE p.account_id = f.a) AS parked
           FROM unnest($1::text[]) AS f(a)
           LEFT JOIN LATERAL (SELECT version, txid FROM events
                               WHERE account_id = f.a ORDER BY version DESC LIMIT 1) h ON true",
    )
    .bind(account_ids::texts(account_ids))
    .fetch_all(&mut *conn)
    .await?;
    let mut current = None;
    let mut heads = HashMap::with_capacity(rows.len());
    let mut parked = Vec::new();
    for row in rows {
        current = Some(row.current_txid);
        if row.parked {
            parked.push(row.account_id.clone());
        }
        if let (Some(version), Some(txid)) = (row.version, row.txid) {
            heads.insert(row.account_id, Head { version, txid });
        }
    }
    let txid = match current {
        Some(txid) => txid,
        None => {
            sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
                .fetch_one(&mut *conn)
                .await?
        }
    };
    Ok(Heads {
        heads,
        txid,
        parked,
    })
}

#[derive(sqlx::FromRow)]
struct HeadRow {
    #[sqlx(try_from = "String")]
    account_id: AccountId,
    version: Option<i64>,
    txid: Option<i64>,
    current_txid: i64,
    parked: bool,
}

/// Loads many streams at once (latest usable snapshot + tail), in three statements whatever
/// their number. Streams that do not exist load as the empty state.
pub async fn load_streams(
    conn: &mut PgConnection,
    account_ids: &[AccountId],
) -> Result<HashMap<AccountId, Loaded>, StoreError> {
    let mut loaded: HashMap<AccountId, Loaded> = account_ids
        .iter()
        .map(|a| (a.clone(), Loaded::default()))
        .collect();
    // The id read back only finds the entry asked for, so it stays text here.
    let snapshots: Vec<(String, i64, i32, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (account_id) account_id, version, schema_version, state::text
         FROM snapshots WHERE account_id = ANY($1) ORDER BY account_id, version DESC",
    )
    .bind(account_ids::texts(account_ids))
    .fetch_all(&mut *conn)
    .await?;
    for (account_id, version, schema_version, body) in snapshots {
        match codec::decode_snapshot(schema_version, &body) {
            Some(state) if state.version == version => {
                if let Some(l) = loaded.get_mut(account_id.as_str()) {
                    l.state = state;
                    l.snapshot_version = version;
                }
            }
            // Ignored, never fatal: the stream is replayed from the start instead.
            _ => tracing::warn!(
                account_id,
                version,
                schema_version,
                "snapshot unreadable; replaying the stream instead"
            ),
        }
    }
    let mut ids = Vec::with_capacity(loaded.len());
    let mut after = Vec::with_capacity(loaded.len());
    for (id, l) in &loaded {
        ids.push(id.as_str());
        after.push(l.state.version);
    }
    let rows: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events e
         JOIN unnest($1::text[], $2::bigint[]) AS f(account, after)
           ON e.account_id = f.account AND e.version > f.after
         ORDER BY e.account_id, e.version"
    )))
    .bind(&ids)
    .bind(&after)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let recorded = row.decode()?;
        if let Some(l) = loaded.get_mut(&recorded.account_id) {
            ensure_next(&l.state, &recorded)?;
            l.state = domain::apply(std::mem::take(&mut l.state), &recorded.event);
            l.replayed += 1;
        }
    }
    Ok(loaded)
}

/// A stream must be contiguous: a hole means the store is damaged, which is never papered over.
fn ensure_next(state: &AccountState, event: &RecordedEvent) -> Result<(), StoreError> {
    if event.version == state.version + 1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            account_id: event.account_id.clone(),
            version: event.version,
            source: CodecError::Invalid {
                event_type: "stream".into(),
                schema_version: 0,
                reason: format!("expected version {}", state.version + 1),
            },
        })
    }
}

/// Loads one stream (snapshot + tail).
pub async fn load_stream(
    conn: &mut PgConnection,
    account_id: &AccountId,
) -> Result<Loaded, StoreError> {
    let ids = [account_id.clone()];
    let mut all = load_streams(conn, &ids).await?;
    Ok(all.remove(account_id).unwrap_or_default())
}

/// Events of one stream after `after_version`, in version order.
pub async fn read_stream(
    conn: &mut PgConnection,
    account_id: &AccountId,
    after_version: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE account_id = $1 AND version > $2
         ORDER BY version LIMIT $3"
    )))
    .bind(account_id.as_str())
    .bind(after_version)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(EventRow::decode).collect()
}

/// Where [`load_prefix`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Every event that counts at this instant (see [`AccountState::effective_at`]).
    AsOf(DateTime<Utc>),
    /// Every event up to and including this version.
    Version(i64),
}

/// The state of a stream at a bound: the latest snapshot lying wholly within it, then the
/// following events while they are within it. At an instant, an event counts from its own
/// `occurred_at` or its predecessor's effective time, whichever is later, so the events within
/// the bound are always a prefix of the stream and the walk stops at the first one outside.
pub async fn load_prefix(
    conn: &mut PgConnection,
    account_id: &AccountId,
    bound: Bound,
) -> Result<Loaded, StoreError> {
    let candidates = match bound {
        Bound::AsOf(at) => snapshots_within(conn, account_id, "effective_at", at).await?,
        Bound::Version(v) => snapshots_within(conn, account_id, "version", v).await?,
    };
    let mut loaded = Loaded::default();
    for (version, schema_version, body) in candidates {
        match codec::decode_snapshot(schema_version, &body) {
            Some(state) if state.version == version => {
                loaded.state = state;
                loaded.snapshot_version = version;
                break;
            }
            _ => tracing::warn!(
                account_id = %account_id,
                version,
                "snapshot unreadable; trying an older one or the stream"
            ),
        }
    }
    const PAGE: i64 = 500;
    'pages: loop {
        let page = read_stream(conn, account_id, loaded.state.version, PAGE).await?;
        let full = page.len() as i64 == PAGE;
        for recorded in page {
            let within = match bound {
                Bound::AsOf(at) => recorded.event.occurred_at() <= at,
                Bound::Version(v) => recorded.version <= v,
            };
            if !within {
                break 'pages;
            }
            ensure_next(&loaded.state, &recorded)?;
            loaded.state = domain::apply(std::mem::take(&mut loaded.state), &recorded.event);
            loaded.replayed += 1;
        }
        if !full {
            break;
        }
    }
    Ok(loaded)
}

/// A few snapshots (version, schema version, body) whose `column` is at most `limit`, newest
/// first, in case the newest no longer deserialises.
async fn snapshots_within<'q, T>(
    conn: &mut PgConnection,
    account_id: &'q AccountId,
    column: &'static str,
    limit: T,
) -> sqlx::Result<Vec<(i64, i32, String)>>
where
    T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, schema_version, state::text FROM snapshots
         WHERE account_id = $1 AND {column} <= $2 ORDER BY version DESC LIMIT 3"
    )))
    .bind(account_id.as_str())
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The state of a stream as of an instant (see [`load_prefix`]); `None` if the account had not
/// been opened by then.
pub async fn state_as_of(
    conn: &mut PgConnection,
    account_id: &AccountId,
    as_of: DateTime<Utc>,
) -> Result<Option<Loaded>, StoreError> {
    let loaded = load_prefix(conn, account_id, Bound::AsOf(as_of)).await?;
    Ok((loaded.state.version > 0).then_some(loaded))
}

/// Writes snapshots (account, state) in one statement; an existing one is kept.
pub async fn write_snapshots(
    conn: &mut PgConnection,
    snapshots: &[(&AccountId, &AccountState)],
) -> Result<(), StoreError> {
    if snapshots.is_empty() {
        return Ok(());
    }
    let mut accounts = Vec::with_capacity(snapshots.len());
    let mut versions = Vec::with_capacity(snapshots.len());
    let mut bodies = Vec::with_capacity(snapshots.len());
    let mut effective = Vec::with_capacity(snapshots.len());
    for (account_id, state) in snapshots {
        let Some(at) = state.effective_at else {
            continue;
        };
        accounts.push(account_id.as_str());
        versions.push(state.version);
        bodies.push(codec::encode_snapshot(state));
        effective.push(at);
    }
    sqlx::query(
        "INSERT INTO snapshots (account_id, version, schema_version, state, effective_at)
         SELECT a, v, $5, s::jsonb, e FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[]) AS x(a, v, s, e)
         ON CONFLICT (account_id, version) DO NOTHING",
    )
    .bind(&accounts)
    .bind(&versions)
    .bind(&bodies)
    .bind(&effective)
    .bind(codec::SNAPSHOT_VERSION)
    .execute(conn)
    .await?;
    Ok(())
}

/// Position in the global order of gap-safe readers: (transaction id, position).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub txid: i64,
    pub position: i64,
}

/// The next page of the whole store after `after`, in (txid, position) order.
///
/// With `gap_safe`, only rows of transactions older than every transaction still running are
/// returned (`txid < pg_snapshot_xmin(pg_current_snapshot())`): a transaction that has not
/// committed yet can only ever add rows with a txid at or above that bound, so they all sort
/// after the cursor and none is skipped. Without it (when the caller has blocked writers),
/// everything committed is returned.
pub async fn read_all_page(
    conn: &mut PgConnection,
    after: Cursor,
    limit: i64,
    gap_safe: bool,
) -> Result<Vec<(Cursor, RecordedEvent)>, StoreError> {
    let bound = if gap_safe {
        "AND txid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))"
    } else {
        ""
    };
    let rows: Vec<GlobalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT txid::text::bigint AS tx, {EVENT_COLUMNS}
         FROM events
         WHERE (txid, position) > ($1::bigint::text::xid8, $2) {bound}
         ORDER BY txid, position LIMIT $3"
    )))
    .bind(after.txid)
    .bind(after.position)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let cursor = Cursor {
                txid: row.tx,
                position: row.event.position,
            };
            row.event.decode().map(|e| (cursor, e))
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct GlobalRow {
    /// The row's txid as a number (named apart from the column: ORDER BY txid must mean the
    /// indexed column, not this output).
    tx: i64,
    #[sqlx(flatten)]
    event: EventRow,
}

/// Serialises the handling of these accounts against every other transaction doing the same,
/// until commit: transaction-scoped advisory locks, taken in one sorted order so that two
/// batches sharing accounts cannot deadlock.
pub async fn lock_accounts(conn: &mut PgConnection, account_ids: &[AccountId]) -> sqlx::Result<()> {
    let keys = eventbank_runtime::account_ids::texts(account_ids);
    eventbank_runtime::db::lock_keys(conn, ACCOUNT_LOCK_CLASS, &keys).await
}

/// Advisory lock class of the per-account handling locks (the other key is hashtext(account)).
pub const ACCOUNT_LOCK_CLASS: i32 = 0x4143_0001;
/// Advisory lock class held by a running rebuild.
pub const REBUILD_LOCK_CLASS: i32 = 0x4143_0002;

// ---- parked events -----------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct ParkedRow {
    #[sqlx(try_from = "String")]
    account_id: AccountId,
    sequence: i64,
    event_id: Uuid,
    deposit_id: Uuid,
    amount_minor: i64,
    currency: String,
    occurred_at: DateTime<Utc>,
}

/// Parked deposits of these accounts, in sequence order. A row whose currency this code does
/// not know cannot be applied: it is left parked (its gap stays open and is reported).
pub async fn load_parked(
    conn: &mut PgConnection,
    account_ids: &[AccountId],
) -> sqlx::Result<Vec<Deposit>> {
    if account_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<ParkedRow> = sqlx::query_as(
        "SELECT account_id, sequence, event_id, deposit_id, amount_minor, currency, occurred_at
         FROM pending_events WHERE account_id = ANY($1) ORDER BY account_id, sequence",
    )
    .bind(account_ids::texts(account_ids))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let currency = Currency::parse(&r.currency).ok()?;
            Some(Deposit {
                account_id: r.account_id,
                deposited: Deposited {
                    event_id: r.event_id,
                    sequence: r.sequence,
                    deposit_id: r.deposit_id,
                    amount_minor: r.amount_minor,
                    currency,
                    occurred_at: r.occurred_at,
                },
                holder_name: None,
                email: None,
            })
        })
        .collect())
}

pub async fn park(conn: &mut PgConnection, deposits: &[&Deposit]) -> sqlx::Result<()> {
    if deposits.is_empty() {
        return Ok(());
    }
    let accounts: Vec<&str> = deposits.iter().map(|d| d.account_id.as_str()).collect();
    let deposited = deposits.iter().map(|d| &d.deposited);
    let sequences: Vec<i64> = deposited.clone().map(|d| d.sequence).collect();
    let event_ids: Vec<Uuid> = deposited.clone().map(|d| d.event_id).collect();
    let deposit_ids: Vec<Uuid> = deposited.clone().map(|d| d.deposit_id).collect();
    let amounts: Vec<i64> = deposited.clone().map(|d| d.amount_minor).collect();
    let currencies: Vec<&str> = deposited.clone().map(|d| d.currency.code()).collect();
    let times: Vec<DateTime<Utc>> = deposited.map(|d| d.occurred_at).collect();
    sqlx::query(
        "INSERT INTO pending_events (account_id, sequence, event_id, deposit_id, amount_minor, currency, occurred_at)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::uuid[], $5::bigint[], $6::text[], $7::timestamptz[])
         ON CONFLICT (account_id, sequence) DO NOTHING",
    )
    .bind(&accounts)
    .bind(&sequences)
    .bind(&event_ids)
    .bind(&deposit_ids)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&times)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes parked rows (applied now, or made stale by an applied duplicate).
pub async fn unpark(conn: &mut PgConnection, keys: &[(AccountId, i64)]) -> sqlx::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let accounts: Vec<&str> = keys.iter().map(|(a, _)| a.as_str()).collect();
    let sequences: Vec<i64> = keys.iter().map(|(_, s)| *s).collect();
    sqlx::query(
        "DELETE FROM pending_events p USING unnest($1::text[], $2::bigint[]) AS k(a, s)
         WHERE p.account_id = k.a AND p.sequence = k.s",
    )
    .bind(&accounts)
    .bind(&sequences)
    .execute(conn)
    .await?;
    Ok(())
}

// ---- read model queries ------------------------------------------------------------------

/// One deposit as the `transactions` projection shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Txn {
    pub event_id: Uuid,
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "ACC-0001")]
    pub account_id: AccountId,
    /// The deposit's per-account sequence number.
    pub sequence: i64,
    pub deposit_id: Uuid,
    #[schema(example = 25000)]
    pub amount_minor: i64,
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    pub occurred_at: DateTime<Utc>,
}

pub async fn balance(
    conn: &mut PgConnection,
    account_id: &AccountId,
) -> sqlx::Result<Option<BalanceRow>> {
    sqlx::query_as(
        "SELECT account_id, currency, balance_minor, last_sequence, deposit_count, updated_at
         FROM balances WHERE account_id = $1",
    )
    .bind(account_id.as_str())
    .fetch_optional(conn)
    .await
}

pub async fn transactions(
    conn: &mut PgConnection,
    account_id: &AccountId,
    after_sequence: i64,
    limit: i64,
) -> sqlx::Result<Vec<Txn>> {
    sqlx::query_as(
        "SELECT event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at
         FROM transactions WHERE account_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
    )
    .bind(account_id.as_str())
    .bind(after_sequence)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn pending_count(conn: &mut PgConnection, account_id: &AccountId) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM pending_events WHERE account_id = $1")
        .bind(account_id.as_str())
        .fetch_one(conn)
        .await
}

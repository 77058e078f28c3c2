//! Queries.
//!
//! - `GET /accounts/{id}`: the balance projection. With `?min_sequence=N&wait=2s` it is
//!   read-your-writes: the deposit response carries `sequence`; asking for it here waits
//!   (bounded) until the projection has applied it, woken by the change notifications, and
//!   past the wait answers a 503 problem naming both sequences, with `Retry-After`.
//! - `GET /accounts/{id}/transactions?after_sequence=&limit=`: the transactions projection,
//!   paged by sequence.
//! - `GET /accounts/{id}/balance?as_of=<RFC 3339>`: point in time, computed from the event store
//!   (latest snapshot at or before the instant + replay), not from the projection.
//! - `GET /accounts/{id}/stream`: Server-Sent Events, one per applied change, from whichever
//!   replica applied it (Postgres NOTIFY); resumable with `Last-Event-ID` (a stream version).
//!
//! Every error is an [`ApiError`], answered as an RFC 9457 problem. The query is taken as a map
//! with the runtime's `ApiQuery` (whose rejection is a problem) and each parameter parsed here.

use crate::changes::{self, Changes};
use crate::domain::{AccountEvent, AccountState};
use crate::error::ApiError;
use crate::projection::BalanceRow;
use crate::store::{self, Bound, RecordedEvent, Txn};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use eventbank_events::{AccountId, Currency, Money};
use eventbank_runtime::http::int_param;
use eventbank_runtime::http::{ApiQuery, Problem};
use futures_util::Stream;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub max_wait: Duration,
    /// Applied changes of every replica (fed by the NOTIFY listener).
    pub changes: Changes,
    /// Cancelled at shutdown: ends the SSE streams so the server can drain.
    pub stop: CancellationToken,
}

const TAG: &str = "accounts";

/// The spec's header; the paths come from the routes registered in [`router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventbank account",
        description = "The balance of record, event-sourced: balances with read-your-writes, \
                       transactions, the balance at any instant, and a change stream (SSE). \
                       Errors are RFC 9457 problems."
    ),
    tags((name = TAG, description = "Balances, transactions and changes per account"))
)]
pub struct ApiDoc;

/// The service's own routes with their OpenAPI paths, state applied. `run` adds the ops routes,
/// the docs and the fallback ([`eventbank_runtime::http::service_router`]).
pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(get_account))
        .routes(routes!(get_transactions))
        .routes(routes!(get_balance_as_of))
        .routes(routes!(stream_changes))
        .with_state(state)
}

/// [`router`] without the spec.
pub fn app(state: AppState) -> Router {
    router(state).split_for_parts().0
}

// The bodies below are serialised through `serde_json::Value`, whose objects keep their members
// in alphabetical order (as the `json!` bodies before them did), so the JSON is byte for byte
// what it was; the fields are declared in that order too.

/// The balance projection of an account.
#[derive(Serialize, ToSchema)]
struct BalanceBody {
    #[schema(value_type = String, example = "ACC-0001")]
    account_id: AccountId,
    /// Decimal string in the currency's precision.
    #[schema(example = "260.00")]
    balance: String,
    #[schema(example = 26000)]
    balance_minor: i64,
    #[schema(example = "USD")]
    currency: String,
    deposit_count: i64,
    /// Highest deposit sequence applied (deposits apply strictly in sequence order).
    last_sequence: i64,
    updated_at: DateTime<Utc>,
}

/// A page of the transactions projection.
#[derive(Serialize, ToSchema)]
struct TransactionsBody {
    #[schema(value_type = String, example = "ACC-0001")]
    account_id: AccountId,
    items: Vec<Txn>,
    /// Pass as `after_sequence` for the next page; null on the last page.
    next_after_sequence: Option<i64>,
    /// Deposits parked until an earlier sequence arrives.
    parked_events: i64,
}

/// How a point-in-time balance was computed from the event store.
#[derive(Serialize, ToSchema)]
struct ComputedFrom {
    /// Events replayed on top of the snapshot.
    replayed_events: i64,
    /// The snapshot used (0: none, replayed from the start).
    snapshot_version: i64,
}

/// The balance at an instant, computed from the event store.
#[derive(Serialize, ToSchema)]
struct BalanceAsOfBody {
    #[schema(value_type = String, example = "ACC-0001")]
    account_id: AccountId,
    /// The instant asked for (now by default), RFC 3339 with microseconds.
    #[schema(example = "2026-11-27T07:31:02.118731Z")]
    as_of: String,
    #[schema(example = "260.00")]
    balance: String,
    balance_minor: i64,
    computed_from: ComputedFrom,
    #[schema(example = "USD")]
    currency: Option<&'static str>,
    deposit_count: i64,
    last_sequence: i64,
    /// Events in the stream at that instant.
    version: i64,
}

/// Serialises a body as the `Value` the handlers answer (members in alphabetical order).
fn to_json(body: impl Serialize) -> Result<Json<Value>, ApiError> {
    Ok(Json(serde_json::to_value(body)?))
}

const PROBLEM: &str = eventbank_runtime::http::PROBLEM_CONTENT_TYPE;

/// `wait` accepts `2s`, `500ms` or a bare number of milliseconds.
fn parse_wait(raw: Option<&String>, max: Duration) -> Result<Duration, ApiError> {
    let Some(raw) = raw else {
        return Ok(Duration::from_secs(2).min(max));
    };
    let millis = if let Some(ms) = raw.strip_suffix("ms") {
        ms.parse::<u64>().ok()
    } else if let Some(s) = raw.strip_suffix('s') {
        s.parse::<u64>().ok().and_then(|s| s.checked_mul(1000))
    } else {
        raw.parse::<u64>().ok()
    };
    match millis {
        Some(ms) if Duration::from_millis(ms) <= max => Ok(Duration::from_millis(ms)),
        _ => Err(ApiError::BadRequest(format!(
            "wait must be like 2s or 500ms, at most {} ms",
            max.as_millis()
        ))),
    }
}

/// The account id of the path. What is not an account id (not even UTF-8, or with a NUL, which
/// Postgres refuses in text) names no account: a 404 problem, asked of no database. Handlers
/// take it after their query, so a malformed query is still the answer (a 400) whatever the path.
/// Also the routes' documented path parameter.
#[derive(IntoParams)]
#[into_params(names("account_id"), parameter_in = Path)]
struct AccountPath(
    /// The account
    #[param(value_type = String, example = "ACC-0001")]
    AccountId,
);

impl<S: Send + Sync> FromRequestParts<S> for AccountPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|Path(raw)| AccountId::parse(&raw).ok())
            .map(AccountPath)
            .ok_or(ApiError::NoSuchAccount)
    }
}

fn no_applied_deposits(account_id: &AccountId) -> ApiError {
    ApiError::NotFound(format!("account {account_id} has no applied deposits"))
}

fn decimal(minor: i64, currency: Option<Currency>) -> String {
    currency
        .map(|currency| Money { minor, currency }.to_decimal_string())
        .unwrap_or_default()
}

fn balance_body(b: BalanceRow) -> BalanceBody {
    BalanceBody {
        balance: decimal(b.balance_minor, Some(b.currency)),
        account_id: b.account_id,
        currency: b.currency.code().to_owned(),
        balance_minor: b.balance_minor,
        last_sequence: b.last_sequence,
        deposit_count: b.deposit_count,
        updated_at: b.updated_at,
    }
}

/// How long a waiter sleeps without a notification before it looks again anyway (the
/// listener may be reconnecting).
const FALLBACK_POLL: Duration = Duration::from_millis(500);

/// The balance projection. With `min_sequence` it is read-your-writes: waits (up to `wait`)
/// until the deposit with that sequence is applied, woken by change notifications.
#[utoipa::path(
    get,
    path = "/accounts/{account_id}",
    tag = TAG,
    params(
        AccountPath,
        ("min_sequence" = Option<i64>, Query, minimum = 0,
            description = "Answer only once this deposit sequence (from the deposit's response) is applied"),
        ("wait" = Option<String>, Query, example = "2s",
            description = "How long to wait for `min_sequence`: `2s`, `500ms` or milliseconds (default 2s, at most the service's MAX_WAIT)"),
    ),
    responses(
        (status = 200, description = "The balance", body = BalanceBody),
        (status = 400, description = "A malformed `min_sequence` or `wait`", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No deposit of this account is applied", body = Problem, content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem, content_type = PROBLEM),
        (status = 503, description = "`min_sequence` did not arrive within `wait` (`current_sequence` and `min_sequence` say where it stands); `Retry-After: 1`",
            body = Problem, content_type = PROBLEM,
            headers(("Retry-After" = u64, description = "Seconds before asking again"))),
    ),
)]
async fn get_account(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
    AccountPath(account_id): AccountPath,
) -> Result<Json<Value>, ApiError> {
    let min_sequence = int_param(&params, "min_sequence", 0, 0, i64::MAX)?;
    let wait = parse_wait(params.get("wait"), state.max_wait)?;
    let deadline = Instant::now() + wait;
    // Subscribed before the first read, so a change committed in between still wakes us.
    let mut rx = state.changes.subscribe();
    loop {
        let mut conn = state.pool.acquire().await?;
        let balance = store::balance(&mut conn, &account_id).await?;
        drop(conn);
        let current = balance.as_ref().map_or(0, |b| b.last_sequence);
        if current >= min_sequence {
            return match balance {
                Some(b) => to_json(balance_body(b)),
                None => Err(no_applied_deposits(&account_id)),
            };
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ApiError::NotYetConsistent {
                account_id,
                current_sequence: current,
                min_sequence,
                waited: wait,
            });
        }
        tokio::select! {
            _ = changes::changed(&mut rx, &account_id) => {}
            _ = tokio::time::sleep_until(deadline.min(now + FALLBACK_POLL)) => {}
        }
    }
}

/// The transactions projection, paged by sequence.
#[utoipa::path(
    get,
    path = "/accounts/{account_id}/transactions",
    tag = TAG,
    params(
        AccountPath,
        ("after_sequence" = Option<i64>, Query, minimum = 0, description = "Deposits after this sequence (default 0)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of transactions", body = TransactionsBody),
        (status = 400, description = "A malformed `after_sequence` or `limit`", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No deposit of this account is applied", body = Problem, content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem, content_type = PROBLEM),
    ),
)]
async fn get_transactions(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
    AccountPath(account_id): AccountPath,
) -> Result<Json<Value>, ApiError> {
    let after = int_param(&params, "after_sequence", 0, 0, i64::MAX)?;
    let limit = int_param(&params, "limit", 100, 1, 1000)?;
    let mut conn = state.pool.acquire().await?;
    if store::balance(&mut conn, &account_id).await?.is_none() {
        return Err(no_applied_deposits(&account_id));
    }
    let items = store::transactions(&mut conn, &account_id, after, limit).await?;
    let pending = store::pending_count(&mut conn, &account_id).await?;
    let next = if items.len() as i64 == limit {
        items.last().map(|t| t.sequence)
    } else {
        None
    };
    to_json(TransactionsBody {
        account_id,
        items,
        next_after_sequence: next,
        parked_events: pending,
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The balance at an instant, computed from the event store (the latest snapshot at or before
/// it, then the events that followed), not from the projection.
#[utoipa::path(
    get,
    path = "/accounts/{account_id}/balance",
    tag = TAG,
    params(
        AccountPath,
        ("as_of" = Option<DateTime<Utc>>, Query, description = "An RFC 3339 instant (default: now)",
            example = "2026-11-27T07:30:00Z"),
    ),
    responses(
        (status = 200, description = "The balance at that instant", body = BalanceAsOfBody),
        (status = 400, description = "`as_of` is not an RFC 3339 instant", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No deposit of this account was applied at or before that instant", body = Problem, content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem, content_type = PROBLEM),
    ),
)]
async fn get_balance_as_of(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
    AccountPath(account_id): AccountPath,
) -> Result<Json<Value>, ApiError> {
    let as_of = match params.get("as_of") {
        None => Utc::now(),
        Some(raw) => DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::BadRequest(
                    "as_of must be an RFC 3339 instant, such as 2026-11-27T07:30:00Z".into(),
                )
            })?,
    };
    let mut conn = state.pool.acquire().await?;
    let loaded = store::state_as_of(&mut conn, &account_id, as_of)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "account {account_id} had no applied deposit at or before {}",
                rfc3339(as_of)
            ))
        })?;
    let s = &loaded.state;
    to_json(BalanceAsOfBody {
        account_id,
        as_of: rfc3339(as_of),
        currency: s.currency.map(|c| c.code()),
        balance: decimal(s.balance_minor, s.currency),
        balance_minor: s.balance_minor,
        deposit_count: s.deposit_count,
        last_sequence: s.last_sequence,
        version: s.version,
        computed_from: ComputedFrom {
            snapshot_version: loaded.snapshot_version,
            replayed_events: loaded.replayed,
        },
    })
}

fn state_json(account_id: &AccountId, s: &AccountState) -> Value {
    json!({
        "account_id": account_id,
        "version": s.version,
        "currency": s.currency.map(|c| c.code()),
        "balance": decimal(s.balance_minor, s.currency),
        "balance_minor": s.balance_minor,
        "deposit_count": s.deposit_count,
        "last_sequence": s.last_sequence,
    })
}

/// The SSE event for one recorded event, given the state after it.
fn change_event(recorded: &RecordedEvent, after: &AccountState) -> Event {
    let (name, data) = match &recorded.event {
        AccountEvent::Opened(e) => (
            "opened",
            json!({
                "account_id": recorded.account_id,
                "version": recorded.version,
                "currency": e.currency.code(),
                "opened_at": rfc3339(e.opened_at),
            }),
        ),
        AccountEvent::Deposited(d) => (
            "deposited",
            json!({
                "account_id": recorded.account_id,
                "version": recorded.version,
                "sequence": d.sequence,
                "event_id": d.event_id,
                "deposit_id": d.deposit_id,
                "amount": decimal(d.amount_minor, Some(d.currency)),
                "amount_minor": d.amount_minor,
                "currency": d.currency.code(),
                "occurred_at": rfc3339(d.occurred_at),
                "balance": decimal(after.balance_minor, after.currency),
                "balance_minor": after.balance_minor,
                "deposit_count": after.deposit_count,
            }),
        ),
    };
    Event::default()
        .event(name)
        .id(recorded.version.to_string())
        .data(data.to_string())
}

/// How often an SSE stream looks at the store without a notification (the listener may be
/// reconnecting); cheap: one indexed query that usually returns nothing.
const SSE_FALLBACK_POLL: Duration = Duration::from_secs(5);

/// Every applied change as Server-Sent Events, whichever replica applied it: first `state`
/// (the current state, unless resuming), then `opened` / `deposited`, one per event. Each
/// event's `id` is the stream version; reconnecting with `Last-Event-ID` sends exactly what was
/// missed.
#[utoipa::path(
    get,
    path = "/accounts/{account_id}/stream",
    tag = TAG,
    params(
        AccountPath,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0,
            description = "Resume after this stream version (the `id` of the last event received)"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "The stream: events `state`, `opened`, `deposited`, each `data` one JSON object \
                           (account_id, version, balance, balance_minor, currency, ...), and keep-alive comments"),
        (status = 400, description = "`Last-Event-ID` is not a stream version", body = Problem, content_type = PROBLEM),
        (status = 404, description = "The path is not an account id (3 to 32 characters of A-Z, 0-9 and '-')", body = Problem, content_type = PROBLEM),
        (status = 500, description = "The stream could not be read", body = Problem, content_type = PROBLEM),
    ),
)]
async fn stream_changes(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume_from = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Last-Event-ID must be a stream version (an integer)".into(),
                    )
                })?,
        ),
    };
    // Subscribed before reading the starting state, so nothing committed in between is lost.
    let mut rx = state.changes.subscribe();
    let mut conn = state.pool.acquire().await?;
    let start = match resume_from {
        Some(version) => store::load_prefix(&mut conn, &account_id, Bound::Version(version)).await,
        None => store::load_stream(&mut conn, &account_id).await,
    }?
    .state;
    drop(conn);

    let (tx, out) = mpsc::channel::<Event>(64);
    if resume_from.is_none() && start.version > 0 {
        let first = Event::default()
            .event("state")
            .id(start.version.to_string())
            .data(state_json(&account_id, &start).to_string());
        // The channel is new and empty: this cannot fail for want of room.
        let _ = tx.try_send(first);
    }
    let pool = state.pool.clone();
    let stop = state.stop.clone();
    tokio::spawn(async move {
        let mut current = start;
        loop {
            if catch_up(&pool, &account_id, &mut current, &tx)
                .await
                .is_err()
            {
                return; // the client went away
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                _ = changes::changed(&mut rx, &account_id) => {}
                _ = tokio::time::sleep(SSE_FALLBACK_POLL) => {}
            }
        }
    });
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|event| (Ok(event), out))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Sends every event after `current.version`, folding it in. Err only when the client is gone;
/// a database error is logged and retried at the next wake-up.
async fn catch_up(
    pool: &PgPool,
    account_id: &AccountId,
    current: &mut AccountState,
    tx: &mpsc::Sender<Event>,
) -> Result<(), ()> {
    const PAGE: i64 = 200;
    loop {
        let page = match pool.acquire().await {
            Ok(mut conn) => store::read_stream(&mut conn, account_id, current.version, PAGE).await,
            Err(e) => Err(e.into()),
        };
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(account_id = %account_id, error = %e, "SSE catch-up failed; retrying later");
                return Ok(());
            }
        };
        let full = page.len() as i64 == PAGE;
        for recorded in page {
            *current = crate::domain::apply(std::mem::take(current), &recorded.event);
            tx.send(change_event(&recorded, current))
                .await
                .map_err(|_| ())?;
        }
        if !full {
            return Ok(());
        }
    }
}

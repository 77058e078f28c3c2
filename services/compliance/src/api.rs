//! HTTP API of the compliance service. Every error is an [`ApiError`], answered as an RFC 9457
//! problem, query-string errors included (the query is taken as a map with the runtime's
//! `ApiQuery`, whose rejection is a problem, and each parameter parsed here).
//!
//! - `GET /compliance/audit?account_id=&after=&limit=`: audit entries in position order, with
//!   the canonical entry text and hex hashes, so anyone can recompute the chain.
//! - `GET /compliance/alerts?account_id=&kind=&after=&limit=&include_superseded=`: active
//!   alerts in the order raised (with `include_superseded=true`, also those a late deposit
//!   replaced).
//! - `GET /compliance/verify`: walks the whole chain. Always HTTP 200 when the walk completed:
//!   the answer is the report (`ok` true or false), not the success of the request; a monitor
//!   alerts on `ok: false`. A 5xx means the walk itself could not be done.

use crate::chain::{self, BrokenReason};
use crate::error::ApiError;
use crate::store::{self, AlertKind, AlertRow, Verification};
use axum::extract::State;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use eventbank_events::AccountId;
use eventbank_runtime::http::int_param;
use eventbank_runtime::http::{ApiQuery, Problem};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

const PROBLEM: &str = eventbank_runtime::http::PROBLEM_CONTENT_TYPE;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

const TAG: &str = "compliance";

/// The spec's header; the paths come from the routes registered in [`router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventbank compliance",
        description = "A hash-chained audit log of every deposit, and large-deposit (CTR) and \
                       structuring alerts. Errors are RFC 9457 problems."
    ),
    tags((name = TAG, description = "The audit chain, its verification, and alerts"))
)]
pub struct ApiDoc;

/// The service's own routes with their OpenAPI paths, state applied. `run` adds the ops routes,
/// the docs and the fallback ([`eventbank_runtime::http::service_router`]).
pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(get_audit))
        .routes(routes!(get_alerts))
        .routes(routes!(get_verify))
        .with_state(state)
}

/// [`router`] without the spec.
pub fn app(state: AppState) -> Router {
    router(state).split_for_parts().0
}

fn parse_account(params: &HashMap<String, String>) -> Result<Option<AccountId>, ApiError> {
    params
        .get("account_id")
        .map(|raw| {
            AccountId::parse(raw).map_err(|e| ApiError::parameter("account_id", e.to_string()))
        })
        .transpose()
}

/// One audit entry: SHA-256(prev_hash || entry) = hash.
#[derive(Serialize, ToSchema)]
struct AuditItem {
    /// 1, 2, 3, ... with no gaps.
    position: i64,
    event_id: Uuid,
    #[schema(example = "ACC-0001")]
    account_id: String,
    /// The canonical text that was hashed, byte for byte.
    entry: String,
    /// Hex SHA-256.
    hash: String,
    /// The previous entry's hash (64 zeros for the first).
    prev_hash: String,
    recorded_at: DateTime<Utc>,
}

/// One page, in order.
#[derive(Serialize, ToSchema)]
struct Page<T> {
    items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<i64>,
}

/// The `after` of the next page: the last item's key when the page is full (a shorter page is
/// the last one).
fn next_after<T>(page: &[T], limit: i64, key: impl Fn(&T) -> i64) -> Option<i64> {
    if page.len() as i64 == limit {
        page.last().map(key)
    } else {
        None
    }
}

/// Audit entries in position order, with the canonical entry text and hex hashes, so anyone can
/// recompute the chain.
#[utoipa::path(
    get,
    path = "/compliance/audit",
    tag = TAG,
    params(
        ("account_id" = Option<String>, Query, description = "Only this account's entries", example = "ACC-0001"),
        ("after" = Option<i64>, Query, description = "Entries after this position (default 0)", minimum = 0),
        ("limit" = Option<i64>, Query, description = "At most this many (default 100)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "A page of entries", body = Page<AuditItem>),
        (status = 400, description = "A malformed parameter (named in `parameter`)", body = Problem,
            content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem,
            content_type = PROBLEM),
    ),
)]
async fn get_audit(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Page<AuditItem>>, ApiError> {
    let account_id = parse_account(&params)?;
    let after = int_param(&params, "after", 0, 0, i64::MAX)?;
    let limit = int_param(&params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let mut conn = state.pool.acquire().await?;
    let rows = store::audit_page(&mut conn, account_id.as_ref(), after, limit).await?;
    let next_after = next_after(&rows, limit, |r| r.position);
    let items = rows
        .into_iter()
        .map(|r| AuditItem {
            hash: chain::hex(&r.hash),
            prev_hash: chain::hex(&r.prev_hash),
            position: r.position,
            event_id: r.event_id,
            account_id: r.account_id,
            entry: r.entry,
            recorded_at: r.recorded_at,
        })
        .collect();
    Ok(Json(Page { items, next_after }))
}

/// Active alerts in the order raised (with `include_superseded=true`, also those a late deposit
/// replaced).
#[utoipa::path(
    get,
    path = "/compliance/alerts",
    tag = TAG,
    params(
        ("account_id" = Option<String>, Query, description = "Only this account's alerts", example = "ACC-0001"),
        ("kind" = Option<AlertKind>, Query, description = "`ctr` or `structuring`"),
        ("after" = Option<i64>, Query, description = "Alerts after this id (default 0)", minimum = 0),
        ("limit" = Option<i64>, Query, description = "At most this many (default 100)", minimum = 1, maximum = 1000),
        ("include_superseded" = Option<bool>, Query, description = "Also alerts a late deposit replaced (default false)"),
    ),
    responses(
        (status = 200, description = "A page of alerts", body = Page<AlertRow>),
        (status = 400, description = "A malformed parameter (named in `parameter`)", body = Problem,
            content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem,
            content_type = PROBLEM),
    ),
)]
async fn get_alerts(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Page<AlertRow>>, ApiError> {
    let account_id = parse_account(&params)?;
    let kind = params
        .get("kind")
        .map(|raw| {
            AlertKind::parse(raw)
                .ok_or_else(|| ApiError::parameter("kind", "kind must be ctr or structuring"))
        })
        .transpose()?;
    let include_superseded = match params.get("include_superseded").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::parameter(
                "include_superseded",
                "include_superseded must be true or false",
            ));
        }
    };
    let after = int_param(&params, "after", 0, 0, i64::MAX)?;
    let limit = int_param(&params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let mut conn = state.pool.acquire().await?;
    let items = store::alerts_page(
        &mut conn,
        account_id.as_ref(),
        kind,
        include_superseded,
        after,
        limit,
    )
    .await?;
    let next_after = next_after(&items, limit, |a| a.id);
    Ok(Json(Page { items, next_after }))
}

/// Walks the whole chain. HTTP 200 whenever the walk completed: the answer is the report (`ok`
/// true or false), not the success of the request; a monitor alerts on `ok: false`.
#[utoipa::path(
    get,
    path = "/compliance/verify",
    tag = TAG,
    responses(
        (status = 200, description = "The report: intact, or where the chain first breaks", body = ChainReport),
        (status = 500, description = "The walk itself could not be done", body = Problem,
            content_type = PROBLEM),
    ),
)]
async fn get_verify(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let outcome = store::verify_snapshot(&state.pool).await?;
    Ok(Json(verification_json(&outcome)))
}

/// The verification report: one of two shapes, told apart by `ok`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ChainReport {
    Intact(ChainIntact),
    Broken(ChainBroken),
}

/// Every entry links and hashes correctly, and the head points at the last one.
#[derive(Serialize, ToSchema)]
pub struct ChainIntact {
    /// Always true here.
    #[schema(example = true)]
    pub ok: bool,
    pub entries: u64,
    /// 0 for an empty chain.
    pub head_position: i64,
    /// Hex SHA-256 (64 zeros for an empty chain).
    pub head_hash: String,
}

/// Where the walk found the first broken link.
#[derive(Serialize, ToSchema)]
pub struct ChainBroken {
    /// Always false here.
    #[schema(example = false)]
    pub ok: bool,
    /// Entries that verified before the break.
    pub entries_checked: u64,
    pub first_broken_position: i64,
    pub reason: BrokenReason,
    pub expected_hash: Option<String>,
    pub stored_hash: Option<String>,
}

impl ChainReport {
    pub fn from_outcome(outcome: &Verification) -> Self {
        match outcome {
            Verification::Intact {
                entries,
                head_position,
                head_hash,
            } => ChainReport::Intact(ChainIntact {
                ok: true,
                entries: *entries,
                head_position: *head_position,
                head_hash: head_hash.clone(),
            }),
            Verification::Broken {
                entries_checked,
                broken,
            } => {
                tracing::error!(
                    position = broken.position, reason = ?broken.reason,
                    "audit chain verification failed"
                );
                ChainReport::Broken(ChainBroken {
                    ok: false,
                    entries_checked: *entries_checked,
                    first_broken_position: broken.position,
                    reason: broken.reason,
                    expected_hash: broken.expected_hash.clone(),
                    stored_hash: broken.stored_hash.clone(),
                })
            }
        }
    }
}

/// The report's JSON shape, shared with tools.
pub fn verification_json(outcome: &Verification) -> Value {
    serde_json::to_value(ChainReport::from_outcome(outcome)).unwrap_or_default()
}

//! HTTP API of the compliance service. Every error is an RFC 9457 problem, query-string errors
//! included (parsed here rather than with axum's `Query`, whose rejections are plain text).
//!
//! - `GET /compliance/audit?account_id=&after=&limit=`: audit entries in position order, with
//!   the canonical entry text and hex hashes, so anyone can recompute the chain.
//! - `GET /compliance/alerts?account_id=&kind=&after=&limit=&include_superseded=`: active
//!   alerts in the order raised (with `include_superseded=true`, also those a late deposit
//!   replaced).
//! - `GET /compliance/verify`: walks the whole chain. Always HTTP 200 when the walk completed:
//!   the answer is the report (`ok` true or false), not the success of the request; a monitor
//!   alerts on `ok: false`. A 5xx means the walk itself could not be done.

use crate::chain;
use crate::store::{self, AlertRow, Verification};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use eventbank_events::AccountId;
use eventbank_runtime::http::{ApiQuery, Problem, int_param};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/compliance/audit", get(get_audit))
        .route("/compliance/alerts", get(get_alerts))
        .route("/compliance/verify", get(get_verify))
        .with_state(state)
}

fn internal(e: impl Into<anyhow::Error>) -> Problem {
    Problem::internal(&e.into())
}

fn parse_account(params: &HashMap<String, String>) -> Result<Option<AccountId>, Problem> {
    params
        .get("account_id")
        .map(|raw| {
            AccountId::parse(raw)
                .map_err(|e| Problem::bad_request(e.to_string()).with("parameter", "account_id"))
        })
        .transpose()
}

#[derive(Serialize)]
struct AuditItem {
    position: i64,
    event_id: Uuid,
    account_id: String,
    /// The canonical text that was hashed, byte for byte.
    entry: String,
    hash: String,
    prev_hash: String,
    recorded_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<i64>,
}

async fn get_audit(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Page<AuditItem>>, Problem> {
    let account_id = parse_account(&params)?;
    let after = int_param(&params, "after", 0, 0, i64::MAX)?;
    let limit = int_param(&params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let mut conn = state.pool.acquire().await.map_err(internal)?;
    let rows = store::audit_page(
        &mut conn,
        account_id.as_ref().map(AccountId::as_str),
        after,
        limit,
    )
    .await
    .map_err(internal)?;
    let next_after = if rows.len() as i64 == limit {
        rows.last().map(|r| r.position)
    } else {
        None
    };
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

async fn get_alerts(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Page<AlertRow>>, Problem> {
    let account_id = parse_account(&params)?;
    let kind = match params.get("kind").map(String::as_str) {
        None => None,
        Some(kind @ ("ctr" | "structuring")) => Some(kind),
        Some(_) => {
            return Err(
                Problem::bad_request("kind must be ctr or structuring").with("parameter", "kind")
            );
        }
    };
    let include_superseded = match params.get("include_superseded").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(
                Problem::bad_request("include_superseded must be true or false")
                    .with("parameter", "include_superseded"),
            );
        }
    };
    let after = int_param(&params, "after", 0, 0, i64::MAX)?;
    let limit = int_param(&params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let mut conn = state.pool.acquire().await.map_err(internal)?;
    let items = store::alerts_page(
        &mut conn,
        account_id.as_ref().map(AccountId::as_str),
        kind,
        include_superseded,
        after,
        limit,
    )
    .await
    .map_err(internal)?;
    let next_after = if items.len() as i64 == limit {
        items.last().map(|a| a.id)
    } else {
        None
    };
    Ok(Json(Page { items, next_after }))
}

async fn get_verify(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    let outcome = store::verify_snapshot(&state.pool)
        .await
        .map_err(internal)?;
    Ok(Json(verification_json(&outcome)))
}

/// The report's JSON shape, shared with tools.
pub fn verification_json(outcome: &Verification) -> Value {
    match outcome {
        Verification::Intact {
            entries,
            head_position,
            head_hash,
        } => json!({
            "ok": true,
            "entries": entries,
            "head_position": head_position,
            "head_hash": head_hash,
        }),
        Verification::Broken {
            entries_checked,
            broken,
        } => {
            tracing::error!(
                position = broken.position, reason = ?broken.reason,
                "audit chain verification failed"
            );
            json!({
                "ok": false,
                "entries_checked": entries_checked,
                "first_broken_position": broken.position,
                "reason": broken.reason,
                "expected_hash": broken.expected_hash,
                "stored_hash": broken.stored_hash,
            })
        }
    }
}

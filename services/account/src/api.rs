//! Queries. `GET /accounts/{id}?min_sequence=N&wait=2s` is read-your-writes: the deposit
//! response carries `sequence`; asking for it here waits (bounded) until the projection has
//! applied it, instead of answering with a stale balance.

use crate::store::{self, Balance};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use eventbank_events::{Currency, Money};
use eventbank_runtime::http::Problem;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub max_wait: Duration,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/accounts/{account_id}", get(get_account))
        .route("/accounts/{account_id}/transactions", get(get_transactions))
        .with_state(state)
}

fn internal(e: sqlx::Error) -> Problem {
    Problem::internal(&anyhow::Error::new(e))
}

fn parse_i64(
    params: &HashMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, Problem> {
    match params.get(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                Problem::bad_request(format!("{name} must be an integer from {min} to {max}"))
            }),
    }
}

/// `wait` accepts `2s`, `500ms` or a bare number of milliseconds.
fn parse_wait(raw: Option<&String>, max: Duration) -> Result<Duration, Problem> {
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
        _ => Err(Problem::bad_request(format!(
            "wait must be like 2s or 500ms, at most {} ms",
            max.as_millis()
        ))),
    }
}

fn balance_json(b: &Balance) -> Value {
    let balance = Currency::parse(&b.currency)
        .map(|currency| {
            Money {
                minor: b.balance_minor,
                currency,
            }
            .to_decimal_string()
        })
        .unwrap_or_default();
    json!({
        "account_id": b.account_id,
        "currency": b.currency,
        "balance": balance,
        "balance_minor": b.balance_minor,
        "last_sequence": b.last_sequence,
        "deposit_count": b.deposit_count,
        "updated_at": b.updated_at,
    })
}

async fn get_account(
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
    let min_sequence = parse_i64(&params, "min_sequence", 0, 0, i64::MAX)?;
    let wait = parse_wait(params.get("wait"), state.max_wait)?;
    let deadline = Instant::now() + wait;
    loop {
        let mut conn = state.pool.acquire().await.map_err(internal)?;
        let balance = store::balance(&mut conn, &account_id)
            .await
            .map_err(internal)?;
        drop(conn);
        let current = balance.as_ref().map_or(0, |b| b.last_sequence);
        if current >= min_sequence {
            if let Some(b) = balance {
                return Ok(Json(balance_json(&b)));
            }
            return Err(Problem::not_found(format!(
                "account {account_id} has no applied deposits"
            )));
        }
        if Instant::now() >= deadline {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-yet-consistent",
                "Projection has not caught up",
                format!(
                    "account {account_id} has applied sequence {current}; sequence {min_sequence} was asked for and did not arrive within {} ms",
                    wait.as_millis()
                ),
            )
            .with("account_id", &account_id)
            .with("current_sequence", current)
            .with("min_sequence", min_sequence)
            .retry_after(1));
        }
        // Polling the read model every 25 ms keeps this simple and correct across replicas.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn get_transactions(
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
    let after = parse_i64(&params, "after_sequence", 0, 0, i64::MAX)?;
    let limit = parse_i64(&params, "limit", 100, 1, 1000)?;
    let mut conn = state.pool.acquire().await.map_err(internal)?;
    if store::balance(&mut conn, &account_id)
        .await
        .map_err(internal)?
        .is_none()
    {
        return Err(Problem::not_found(format!(
            "account {account_id} has no applied deposits"
        )));
    }
    let items = store::transactions(&mut conn, &account_id, after, limit)
        .await
        .map_err(internal)?;
    let pending = store::pending_count(&mut conn, &account_id)
        .await
        .map_err(internal)?;
    let next = if items.len() as i64 == limit {
        items.last().map(|t| t.sequence)
    } else {
        None
    };
    Ok(Json(json!({
        "account_id": account_id,
        "items": items,
        "next_after_sequence": next,
        "parked_events": pending,
    })))
}

//! HTTP API: read-only views of the confirmation emails, for support staff and tests.
//!
//! - `GET /emails?account_id=ACC-0001&status=queued`: newest first, at most 100.
//! - `GET /emails/{event_id}`: one email, with its bodies.

use crate::error::ApiError;
use crate::store::{self, EmailDetail, EmailStatus, EmailSummary};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use eventbank_events::AccountId;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Rows returned by the list at most; the API is for looking, not for export.
pub const LIST_LIMIT: i64 = 100;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

/// The service's own routes, state applied. `run` adds the ops routes and the fallback.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/emails", get(list_emails))
        .route("/emails/{event_id}", get(get_email))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub account_id: Option<String>,
    pub status: Option<String>,
}

async fn list_emails(
    State(state): State<AppState>,
    // Taken as a Result so that a malformed query string becomes a problem response, not
    // axum's plain-text rejection.
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<EmailSummary>>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadRequest {
        field: "query",
        message: e.body_text(),
    })?;
    let account_id = params
        .account_id
        .as_deref()
        .map(AccountId::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest {
            field: "account_id",
            message: e.to_string(),
        })?;
    let status = params
        .status
        .as_deref()
        .map(|s| {
            EmailStatus::parse(s).ok_or_else(|| ApiError::BadRequest {
                field: "status",
                message: "must be queued, sent or failed".into(),
            })
        })
        .transpose()?;
    let mut conn = state.pool.acquire().await?;
    let rows = store::list(
        &mut conn,
        account_id.as_ref().map(AccountId::as_str),
        status,
        LIST_LIMIT,
    )
    .await?;
    Ok(Json(rows))
}

async fn get_email(
    State(state): State<AppState>,
    // A String, parsed here, and the rejection taken as a Result, so that an invalid id is a
    // 400 problem rather than axum's plain text.
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EmailDetail>, ApiError> {
    let Path(event_id) = path.map_err(|e| ApiError::BadRequest {
        field: "event_id",
        message: e.body_text(),
    })?;
    let id = Uuid::parse_str(&event_id).map_err(|_| ApiError::BadRequest {
        field: "event_id",
        message: "must be a UUID".into(),
    })?;
    let mut conn = state.pool.acquire().await?;
    store::get(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no email for event {id}")))
}

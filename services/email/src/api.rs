//! HTTP API: read-only views of the confirmation emails, for support staff and tests.
//!
//! - `GET /emails?account_id=ACC-0001&status=queued`: newest first, at most 100.
//! - `GET /emails/{event_id}`: one email, with its bodies.

use crate::error::ApiError;
use crate::store::{self, EmailDetail, EmailStatus, EmailSummary};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Json, Router};
use eventbank_events::AccountId;
use eventbank_runtime::http::Problem;
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

const PROBLEM: &str = eventbank_runtime::http::PROBLEM_CONTENT_TYPE;

/// Rows returned by the list at most; the API is for looking, not for export.
pub const LIST_LIMIT: i64 = 100;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

const TAG: &str = "emails";

/// The spec's header; the paths come from the routes registered in [`router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventbank email",
        description = "Confirmation emails rendered from DepositCompleted events: read-only views \
                       for support staff and tests. Errors are RFC 9457 problems."
    ),
    tags((name = TAG, description = "The confirmation emails and their delivery state"))
)]
pub struct ApiDoc;

/// The service's own routes with their OpenAPI paths, state applied. `run` adds the ops routes,
/// the docs and the fallback ([`eventbank_runtime::http::service_router`]).
pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_emails))
        .routes(routes!(get_email))
        .with_state(state)
}

/// [`router`] without the spec.
pub fn app(state: AppState) -> Router {
    router(state).split_for_parts().0
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub account_id: Option<String>,
    pub status: Option<String>,
}

/// The confirmation emails, newest first, at most 100.
#[utoipa::path(
    get,
    path = "/emails",
    tag = TAG,
    params(
        ("account_id" = Option<String>, Query, description = "Only this account's emails", example = "ACC-0001"),
        ("status" = Option<EmailStatus>, Query, description = "Only emails in this state"),
    ),
    responses(
        (status = 200, description = "Newest first, at most 100", body = Vec<EmailSummary>),
        (status = 400, description = "A malformed query, account id or status", body = Problem,
            content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem,
            content_type = PROBLEM),
    ),
)]
async fn list_emails(
    State(state): State<AppState>,
    // Taken as a Result so that a malformed query string becomes a problem response, not
    // axum's plain-text rejection.
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<EmailSummary>>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let account_id = params
        .account_id
        .as_deref()
        .map(AccountId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("account_id", e.to_string()))?;
    let status = params
        .status
        .as_deref()
        .map(|s| {
            EmailStatus::parse(s)
                .ok_or_else(|| ApiError::bad_request("status", "must be queued, sent or failed"))
        })
        .transpose()?;
    let mut conn = state.pool.acquire().await?;
    let rows = store::list(&mut conn, account_id.as_ref(), status, LIST_LIMIT).await?;
    Ok(Json(rows))
}

/// One email, with its text and HTML bodies.
#[utoipa::path(
    get,
    path = "/emails/{event_id}",
    tag = TAG,
    params(("event_id" = Uuid, Path, description = "The DepositCompleted event the email confirms")),
    responses(
        (status = 200, description = "The email", body = EmailDetail),
        (status = 400, description = "The id is not a UUID", body = Problem,
            content_type = PROBLEM),
        (status = 404, description = "No email for that event", body = Problem,
            content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem,
            content_type = PROBLEM),
    ),
)]
async fn get_email(
    State(state): State<AppState>,
    // A String, parsed here, and the rejection taken as a Result, so that an invalid id is a
    // 400 problem rather than axum's plain text.
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EmailDetail>, ApiError> {
    let Path(event_id) = path.map_err(|e| ApiError::bad_request("event_id", e.body_text()))?;
    let id = Uuid::parse_str(&event_id)
        .map_err(|_| ApiError::bad_request("event_id", "must be a UUID"))?;
    let mut conn = state.pool.acquire().await?;
    store::get(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no email for event {id}")))
}

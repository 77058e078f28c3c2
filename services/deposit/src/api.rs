//! HTTP API: the account directory and deposits, routes and handlers. What the handlers lean
//! on has a file of its own: [`crate::body`] (every body read first), [`crate::auth`] (the API
//! key), [`crate::validate`] (the request bodies' rules), [`crate::idempotency`] and
//! [`crate::accept`] (the deposit's one transaction).

use crate::error::ApiError;
use crate::openapi::{ACCOUNTS_TAG, ApiDoc, DEPOSITS_TAG, DepositAccepted};
use crate::store::{self, AccountRow, DepositRow};
use crate::validate::{self, CreateDeposit, OpenAccount};
use crate::{Config, DepositMetrics, accept, auth, body, idempotency};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use eventbank_events::AccountId;
use eventbank_runtime::http::{ApiJson, Problem};
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub metrics: DepositMetrics,
    /// Stores deposits, several per transaction (see [`crate::writer`]).
    pub writer: crate::writer::Writer,
}

/// The service's routes with their OpenAPI paths (see [`crate::openapi`]), state applied. `run`
/// adds the ops routes, the docs and the fallback ([`eventbank_runtime::http::service_router`]).
pub fn router(state: AppState) -> OpenApiRouter {
    let writes = OpenApiRouter::new()
        .routes(routes!(open_account))
        .routes(routes!(create_deposit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(get_account))
        .routes(routes!(get_deposit))
        .merge(writes)
        .layer(DefaultBodyLimit::max(body::BODY_LIMIT_BYTES))
        // Outermost, so it runs before the API key check (which answers without reading).
        .layer(middleware::from_fn(body::read_body_first))
        .with_state(state)
}

/// [`router`] without the spec.
pub fn app(state: AppState) -> Router {
    router(state).split_for_parts().0
}

const PROBLEM: &str = eventbank_runtime::http::PROBLEM_CONTENT_TYPE;

/// A 201 with the new resource's `Location` and `body`.
pub(crate) fn created(location: String, body: impl Serialize) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(&location).map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// Opens an account in the directory; its id is assigned (`ACC-1000`, `ACC-1001`, ...).
#[utoipa::path(
    post,
    path = "/accounts",
    tag = ACCOUNTS_TAG,
    security(("api_key" = [])),
    request_body = OpenAccount,
    responses(
        (status = 201, description = "Opened", body = AccountRow,
            headers(("Location" = String, description = "/accounts/{account_id}"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = PROBLEM),
        (status = 401, description = "Missing or wrong `x-api-key`", body = Problem, content_type = PROBLEM,
            headers(("WWW-Authenticate" = String, description = "ApiKey header=\"x-api-key\""))),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = PROBLEM),
        (status = 415, description = "Body not sent as application/json, or sent with a Content-Encoding", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid fields (listed in `errors`) or a body of the wrong shape", body = Problem, content_type = PROBLEM),
        (status = 500, description = "The account could not be stored", body = Problem, content_type = PROBLEM),
        (status = 503, description = "The database is briefly unreachable. Retry after `Retry-After` seconds",
            body = Problem, content_type = PROBLEM),
    ),
)]
async fn open_account(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<OpenAccount>,
) -> Result<Response, ApiError> {
    let account = validate::account(&body)?;
    let mut conn = state.pool.acquire().await?;
    let account = store::insert_account(
        &mut conn,
        account.holder_name,
        account.email,
        account.currency,
    )
    .await?;
    tracing::info!(account_id = %account.account_id, currency = %account.currency, "account opened");
    created(format!("/accounts/{}", account.account_id), account)
}

/// One account of the directory.
#[utoipa::path(
    get,
    path = "/accounts/{account_id}",
    tag = ACCOUNTS_TAG,
    params(("account_id" = String, Path, description = "The account", example = "ACC-0001")),
    responses(
        (status = 200, description = "The account", body = AccountRow),
        (status = 404, description = "No such account", body = Problem, content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem, content_type = PROBLEM),
    ),
)]
async fn get_account(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AccountRow>, ApiError> {
    // What is not an account id (not even UTF-8, or with a NUL, which Postgres refuses in text)
    // names no account: a 404, asked of no database.
    let Some(account_id) = path.ok().and_then(|Path(raw)| AccountId::parse(&raw).ok()) else {
        return Err(ApiError::NotFound(
            "no such account: an account id is 3 to 32 characters of A-Z, 0-9 and '-'".into(),
        ));
    };
    let mut conn = state.pool.acquire().await?;
    let account = store::get_account(&mut conn, &account_id).await?;
    found(account, || format!("no account {account_id}"))
}

/// One stored deposit.
#[utoipa::path(
    get,
    path = "/deposits/{deposit_id}",
    tag = DEPOSITS_TAG,
    params(("deposit_id" = Uuid, Path, description = "The deposit's id (from `POST /deposits`)")),
    responses(
        (status = 200, description = "The deposit", body = DepositRow),
        (status = 404, description = "No such deposit", body = Problem, content_type = PROBLEM),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem, content_type = PROBLEM),
    ),
)]
async fn get_deposit(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DepositRow>, ApiError> {
    // Not even UTF-8 is not a UUID either (axum's rejection would be plain text).
    let Ok(Path(deposit_id)) = path else {
        return Err(ApiError::field("deposit_id", "must be a UUID"));
    };
    let id = Uuid::parse_str(&deposit_id)
        .map_err(|_| ApiError::field("deposit_id", "must be a UUID"))?;
    let mut conn = state.pool.acquire().await?;
    let deposit = store::get_deposit(&mut conn, id).await?;
    found(deposit, || format!("no deposit {deposit_id}"))
}

/// What a read found, or the 404 saying what it did not.
fn found<T>(row: Option<T>, missing: impl FnOnce() -> String) -> Result<Json<T>, ApiError> {
    row.map(Json).ok_or_else(|| ApiError::NotFound(missing()))
}

/// POST /deposits: validate, then in ONE transaction take the account's next sequence, store the
/// deposit and its outbox row (and the Idempotency-Key's response). Nothing is half-written.
#[utoipa::path(
    post,
    path = "/deposits",
    tag = DEPOSITS_TAG,
    summary = "Accepts a deposit",
    description = "Validates it, then in one transaction takes the account's next sequence number and \
                   stores the deposit, its outbox row (published as DepositCompleted) and the \
                   Idempotency-Key's response: nothing is half-written.",
    security(("api_key" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "1 to 200 visible ASCII characters. The same key with the same body answers \
                           the first response again (with `idempotent-replayed: true`) and deposits \
                           nothing more; with another body it is a 422"),
        ("traceparent" = Option<String>, Header,
            description = "W3C trace context: the deposit, its event and every consumer join this trace"),
    ),
    request_body = CreateDeposit,
    responses(
        (status = 201, description = "Accepted: stored, and published through the outbox", body = DepositAccepted,
            headers(
                ("Location" = String, description = "/deposits/{deposit_id}"),
                ("idempotent-replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key"),
            )),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = PROBLEM),
        (status = 401, description = "Missing or wrong `x-api-key`", body = Problem, content_type = PROBLEM,
            headers(("WWW-Authenticate" = String, description = "ApiKey header=\"x-api-key\""))),
        (status = 409, description = "The account is closed", body = Problem, content_type = PROBLEM),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = PROBLEM),
        (status = 415, description = "Body not sent as application/json, or sent with a Content-Encoding", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid fields (listed in `errors`), an unknown account, a currency that is not the account's, \
                                      an Idempotency-Key reused with another body, or a body of the wrong shape",
            body = Problem, content_type = PROBLEM),
        (status = 500, description = "The deposit could not be stored", body = Problem, content_type = PROBLEM),
        (status = 503, description = "The database is briefly unreachable. Retry after `Retry-After` seconds with the same \
            Idempotency-Key (a request that was stored after all is answered again, never stored twice)",
            body = Problem, content_type = PROBLEM),
    ),
)]
async fn create_deposit(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateDeposit>,
) -> Result<Response, ApiError> {
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "deposit",
        otel.name = "POST /deposits",
        otel.kind = "server"
    );
    // The event carries this span's context when spans are exported (so every consumer's span
    // joins the trace), else a fresh span id in the caller's trace.
    let traceparent = eventbank_runtime::trace::continue_trace(&span, incoming);
    async move {
        let key = idempotency::key(&headers)?;
        let deposit = validate::deposit(&body, &state.config)?;
        accept::accept(&state, key, deposit, traceparent).await
    }
    .instrument(span)
    .await
}

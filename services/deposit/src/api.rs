//! HTTP API: the account directory and deposits.

use crate::error::{ApiError, FieldError};
use crate::openapi::{ACCOUNTS_TAG, ApiDoc, DEPOSITS_TAG, DepositAccepted};
use crate::store::{self, AccountRow, DepositRow};
use crate::{Config, DepositMetrics};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, SubsecRound, Utc};
use eventbank_events::{
    AccountId, AccountSnapshot, Channel, Currency, DepositCompleted, MAX_REFERENCE_CHARS, Money,
};
use eventbank_runtime::http::{ApiJson, Problem};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub metrics: DepositMetrics,
    /// Wakes the relay after a deposit commits (see [`crate::wakeup`]).
    pub outbox: Arc<crate::wakeup::OutboxSignal>,
}

/// Request bodies here are a few hundred bytes; anything near this limit is not a deposit.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// The service's routes with their OpenAPI paths (see [`crate::openapi`]), state applied. `run`
/// adds the ops routes, the docs and the fallback ([`eventbank_runtime::http::service_router`]).
pub fn router(state: AppState) -> OpenApiRouter {
    let writes = OpenApiRouter::new()
        .routes(routes!(open_account))
        .routes(routes!(create_deposit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(get_account))
        .routes(routes!(get_deposit))
        .merge(writes)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        // Outermost, so it runs before the API key check (which answers without reading).
        .layer(middleware::from_fn(read_body_first))
        .with_state(state)
}

/// An oversized body is read to its end and discarded, up to this many bytes, before its 413
/// is sent; past that the connection is closed under the client.
pub const DRAIN_LIMIT_BYTES: usize = 64 * 1024 * 1024;
/// ... and for at most this long.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads every request body before any handler or check sees it, keeping at most
/// [`BODY_LIMIT_BYTES`]. A larger one is read to its end and thrown away (within
/// [`DRAIN_LIMIT_BYTES`] and [`DRAIN_TIMEOUT`]) before the 413 is answered: a client that writes
/// its whole body before reading gets the answer, not a connection reset under its write (the
/// lingering close nginx does). Every other answer (401 included) comes after the whole body
/// was read, for the same reason.
/// Whether the request claims a Content-Encoding other than `identity`.
fn encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

async fn read_body_first(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            total = total.saturating_add(chunk.len());
            if total <= BODY_LIMIT_BYTES {
                kept.extend_from_slice(&chunk);
            } else if total > DRAIN_LIMIT_BYTES {
                break;
            }
        }
        Ok::<(), axum::Error>(())
    })
    .await;
    match drained {
        // A body this service would read wrongly (it decodes no Content-Encoding) is refused,
        // not stored as whatever its bytes happen to parse to.
        Ok(Ok(())) if total <= BODY_LIMIT_BYTES && encoded(&parts.headers) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported content encoding",
            "send the body without a Content-Encoding (identity)",
        )
        .into_response(),
        Ok(Ok(())) if total <= BODY_LIMIT_BYTES => {
            next.run(Request::from_parts(parts, axum::body::Body::from(kept)))
                .await
        }
        _ if total > BODY_LIMIT_BYTES => {
            let mut response = Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!("the body is over {BODY_LIMIT_BYTES} bytes"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Ok(Err(e)) => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            format!("the request body could not be read: {e}"),
        )
        .into_response(),
        // (A complete body within the limit was the first arm.)
        Err(_) | Ok(Ok(())) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            format!(
                "the request body did not arrive within {} s",
                DRAIN_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

/// [`router`] without the spec.
pub fn app(state: AppState) -> Router {
    router(state).split_for_parts().0
}

use subtle::ConstantTimeEq as _;

const PROBLEM: &str = eventbank_runtime::http::PROBLEM_CONTENT_TYPE;

/// Write endpoints need `x-api-key`. Compared in constant time so the answer's timing does not
/// reveal how much of a guess was right.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = state.config.api_key.expose().as_bytes();
    if bool::from(given.ct_eq(expected)) {
        return next.run(request).await;
    }
    let mut response = eventbank_runtime::http::Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "API key required",
        "send the API key in the x-api-key header",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("ApiKey header=\"x-api-key\""),
    );
    response
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OpenAccount {
    /// 1 to 200 characters, no control characters.
    #[schema(example = "Alice Example")]
    pub holder_name: String,
    #[schema(example = "alice@example.com")]
    pub email: String,
    /// ISO 4217 code.
    #[schema(example = "USD")]
    pub currency: String,
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
    let mut errors = Vec::new();
    let holder_name = body.holder_name.trim();
    if holder_name.is_empty()
        || holder_name.chars().count() > 200
        || holder_name.chars().any(char::is_control)
    {
        errors.push(FieldError {
            field: "holder_name",
            message: "1 to 200 characters, no control characters".into(),
        });
    }
    if !valid_email(&body.email) {
        errors.push(FieldError {
            field: "email",
            message: "must be an email address such as alice@example.com".into(),
        });
    }
    if let Err(e) = Currency::parse(&body.currency) {
        errors.push(FieldError {
            field: "currency",
            message: e.to_string(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut conn = state.pool.acquire().await?;
    let account =
        store::insert_account(&mut conn, holder_name, &body.email, &body.currency).await?;
    tracing::info!(account_id = %account.account_id, currency = %account.currency, "account opened");
    let location = HeaderValue::from_str(&format!("/accounts/{}", account.account_id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(account),
    )
        .into_response())
}

/// Deliberately simple: one `@`, something on each side, a dot in the domain, no spaces or
/// control characters. Deliverability is the mail server's business.
fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    (3..=254).contains(&email.len())
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
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
    let account_id = match path {
        Ok(Path(raw)) if AccountId::parse(&raw).is_ok() => raw,
        _ => {
            return Err(ApiError::NotFound(
                "no such account: an account id is 3 to 32 characters of A-Z, 0-9 and '-'".into(),
            ));
        }
    };
    let mut conn = state.pool.acquire().await?;
    store::get_account(&mut conn, &account_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no account {account_id}")))
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
    store::get_deposit(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no deposit {deposit_id}")))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDeposit {
    #[schema(example = "ACC-0001")]
    pub account_id: String,
    /// A decimal string ("100.00"), never a JSON number: numbers invite floating point.
    #[schema(example = "250.00")]
    pub amount: String,
    /// ISO 4217 code; must be the account's.
    #[schema(example = "USD")]
    pub currency: String,
    /// Optional (event version 2): `branch`, `atm` or `online`.
    #[serde(default)]
    #[schema(example = "online")]
    pub channel: Option<String>,
    /// Optional (event version 2): the customer's payment reference, at most 140 characters.
    #[serde(default)]
    pub reference: Option<String>,
}

/// A deposit request that passed every check that needs no database.
struct ValidDeposit {
    account_id: AccountId,
    money: Money,
    channel: Option<Channel>,
    reference: Option<String>,
}

impl ValidDeposit {
    /// What "the same body" means for Idempotency-Key: the normalised request, so that
    /// `"100.0"` and `"100.00"` are the same deposit.
    fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.account_id,
            self.money.minor,
            self.money.currency,
            self.channel.map_or("", |c| c.as_str()),
            self.reference.as_deref().unwrap_or("")
        )
    }
}

fn validate_deposit(body: &CreateDeposit, config: &Config) -> Result<ValidDeposit, ApiError> {
    let mut errors = Vec::new();
    let account_id = AccountId::parse(&body.account_id)
        .map_err(|e| {
            errors.push(FieldError {
                field: "account_id",
                message: e.to_string(),
            })
        })
        .ok();
    let currency = Currency::parse(&body.currency)
        .map_err(|e| {
            errors.push(FieldError {
                field: "currency",
                message: e.to_string(),
            })
        })
        .ok();
    let mut money = None;
    if let Some(currency) = currency {
        match Money::parse_positive(&body.amount, currency) {
            Ok(m) => {
                let max = config.max_deposit_minor(currency)?;
                if m.minor > max {
                    errors.push(FieldError {
                        field: "amount",
                        message: format!(
                            "exceeds the maximum single deposit of {}",
                            Money {
                                minor: max,
                                currency
                            }
                            .display()
                        ),
                    });
                } else {
                    money = Some(m);
                }
            }
            Err(e) => errors.push(FieldError {
                field: "amount",
                message: e.to_string(),
            }),
        }
    }
    let channel = match body.channel.as_deref() {
        None => None,
        Some(raw) => match serde_json::from_value::<Channel>(Value::String(raw.to_owned())) {
            Ok(channel) => Some(channel),
            Err(_) => {
                errors.push(FieldError {
                    field: "channel",
                    message: "one of branch, atm, online".into(),
                });
                None
            }
        },
    };
    let reference = body.reference.clone();
    if reference
        .as_deref()
        .is_some_and(|r| r.chars().count() > MAX_REFERENCE_CHARS || r.chars().any(char::is_control))
    {
        errors.push(FieldError {
            field: "reference",
            message: format!("at most {MAX_REFERENCE_CHARS} characters, no control characters"),
        });
    }
    match (account_id, money) {
        (Some(account_id), Some(money)) if errors.is_empty() => Ok(ValidDeposit {
            account_id,
            money,
            channel,
            reference,
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=200).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::field("Idempotency-Key", "1 to 200 visible ASCII characters"))?;
    Ok(Some(key.to_owned()))
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
    if let Some(caller) = incoming {
        eventbank_runtime::trace::set_parent(&span, caller);
    }
    // The event carries this span's context when spans are exported (so every consumer's span
    // joins the trace), else a fresh span id in the caller's trace.
    let traceparent =
        eventbank_runtime::trace::traceparent(&span).unwrap_or_else(|| child_traceparent(incoming));
    accept_deposit(state, headers, body, traceparent)
        .instrument(span)
        .await
}

async fn accept_deposit(
    state: AppState,
    headers: HeaderMap,
    body: CreateDeposit,
    traceparent: String,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let valid = validate_deposit(&body, &state.config)?;

    let mut tx = state.pool.begin().await?;
    if let Some(key) = &key
        && let Some(replay) = claim_or_replay(&mut tx, key, &valid.fingerprint()).await?
    {
        return Ok(replay);
    }
    let account = store::next_sequence(&mut tx, valid.account_id.as_str())
        .await?
        .ok_or_else(|| ApiError::UnknownAccount(valid.account_id.to_string()))?;
    if account.status != "open" {
        return Err(ApiError::AccountClosed(account.account_id));
    }
    if account.currency != valid.money.currency.code() {
        return Err(ApiError::CurrencyMismatch {
            account_currency: account.currency,
            given: valid.money.currency.code().to_owned(),
        });
    }
    // Postgres keeps microseconds; truncating here makes the event and the row agree exactly.
    let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    let event = DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence: account.last_sequence,
        time: now,
        traceparent: Some(traceparent),
        schema_version: eventbank_events::deposit::CURRENT_VERSION,
        deposit_id: Uuid::now_v7(),
        account_id: valid.account_id.clone(),
        amount_minor: valid.money.minor,
        currency: valid.money.currency,
        account: AccountSnapshot {
            holder_name: account.holder_name.clone(),
            email: account.email.clone(),
        },
        occurred_at: now,
        channel: valid.channel,
        reference: valid.reference.clone(),
    };
    let row = DepositRow {
        deposit_id: event.deposit_id,
        event_id: event.event_id,
        account_id: account.account_id.clone(),
        sequence: event.sequence,
        amount_minor: event.amount_minor,
        currency: account.currency.clone(),
        created_at: now,
    };
    store::insert_deposit(&mut tx, &row).await?;
    store::insert_outbox(
        &mut tx,
        event.event_id,
        &row.account_id,
        row.sequence,
        event.traceparent.as_deref(),
        &event.to_json().map_err(|e| ApiError::Internal(e.into()))?,
    )
    .await?;
    let response = deposit_response(&row, valid.money);
    if let Some(key) = &key {
        store::save_idempotent_response(&mut tx, key, 201, &response).await?;
    }
    tx.commit().await?;
    state.outbox.committed();
    state.metrics.accepted.inc();
    tracing::info!(
        deposit_id = %row.deposit_id, event_id = %row.event_id, account_id = %row.account_id,
        sequence = row.sequence, amount = %valid.money.display(), "deposit accepted"
    );
    let location = HeaderValue::from_str(&format!("/deposits/{}", row.deposit_id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(response),
    )
        .into_response())
}

/// Claims the Idempotency-Key for this transaction, or, when it was used before, answers with
/// the stored response (same body) or a 422 (another body).
async fn claim_or_replay(
    tx: &mut sqlx::PgConnection,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Response>, ApiError> {
    if store::claim_idempotency_key(tx, key, fingerprint).await? {
        return Ok(None);
    }
    let stored = store::get_idempotency_key(tx, key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("idempotency key vanished"))?;
    if stored.fingerprint != fingerprint {
        return Err(ApiError::IdempotencyKeyReused);
    }
    tracing::info!(idempotency_key = %key, "replaying the stored response");
    let status = StatusCode::from_u16(u16::try_from(stored.status_code).unwrap_or(500))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(Some(
        (
            status,
            [("idempotent-replayed", "true")],
            Json(stored.response),
        )
            .into_response(),
    ))
}

fn deposit_response(row: &DepositRow, money: Money) -> Value {
    json!({
        "deposit_id": row.deposit_id,
        "account_id": row.account_id,
        "sequence": row.sequence,
        "event_id": row.event_id,
        "amount": money.to_decimal_string(),
        "amount_minor": row.amount_minor,
        "currency": row.currency,
        "created_at": row.created_at,
    })
}

/// A W3C traceparent for this deposit: the caller's trace id when it sent a valid header (so
/// the deposit joins the caller's trace), a new one otherwise; always a new span id.
pub fn child_traceparent(incoming: Option<&str>) -> String {
    let trace_id = incoming
        .and_then(|tp| {
            let parts: Vec<&str> = tp.split('-').collect();
            match parts.as_slice() {
                [_, trace, span, _]
                    if trace.len() == 32
                        && span.len() == 16
                        && trace
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                        && *trace != "0".repeat(32) =>
                {
                    Some((*trace).to_owned())
                }
                _ => None,
            }
        })
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    let span_id = &Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace_id}-{span_id}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_keeps_a_valid_callers_trace_id() {
        let tp = child_traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        assert!(tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert_ne!(
            tp,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let fresh = child_traceparent(Some("garbage"));
        assert_eq!(fresh.len(), 55);
    }

    #[test]
    fn emails_are_checked_simply() {
        assert!(valid_email("alice@example.com"));
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}

//! The deposit service's one error type. Variants are named by what the client sees; each maps
//! to one RFC 9457 problem. A database that is briefly unreachable is a 503 with `Retry-After`
//! (the client retries, with the same Idempotency-Key); other failures are an opaque 500 (a bug),
//! logged once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use eventbank_events::{AccountId, Currency};
use eventbank_runtime::http::Problem;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("unknown account {0}")]
    UnknownAccount(AccountId),
    #[error("account {0} is closed")]
    AccountClosed(AccountId),
    #[error("currency mismatch")]
    CurrencyMismatch {
        account_currency: Currency,
        given: Currency,
    },
    #[error("idempotency key reused with another body")]
    IdempotencyKeyReused,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            ApiError::Unavailable(e)
        } else {
            ApiError::Internal(anyhow::Error::new(e))
        }
    }
}

/// A failure that says the database cannot be reached right now, not that the request or the
/// code is wrong: no connection (refused, reset, timed out waiting for one) or the server
/// shutting down or refusing connections (SQLSTATE class 08, 57P01-57P03, 53300).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Seconds a client is told to wait before retrying while the database is unavailable.
pub const RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError {
            field,
            message: message.into(),
        }])
    }
}

/// A problem about one account names it in `account_id`, so a client need not parse `detail`.
fn account_problem(
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    account_id: AccountId,
) -> Problem {
    Problem::new(status, kind, title, detail).with("account_id", account_id)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            ApiError::Validation(errors) => {
                let detail = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation",
                    "Invalid request",
                    detail,
                )
                .with("errors", errors)
            }
            ApiError::UnknownAccount(id) => {
                let detail =
                    format!("no account {id} in the directory; open one with POST /accounts");
                account_problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown-account",
                    "Unknown account",
                    detail,
                    id,
                )
            }
            ApiError::AccountClosed(id) => {
                let detail = format!("account {id} is closed and accepts no deposits");
                account_problem(
                    StatusCode::CONFLICT,
                    "account-closed",
                    "Account closed",
                    detail,
                    id,
                )
            }
            ApiError::CurrencyMismatch {
                account_currency,
                given,
            } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "currency-mismatch",
                "Currency mismatch",
                format!("the account holds {account_currency}; the deposit is in {given}"),
            )
            .with("account_currency", account_currency)
            .with("currency", given),
            ApiError::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different request body",
            ),
            ApiError::NotFound(what) => Problem::not_found(what),
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable; answering 503");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    "the database cannot be reached right now. Retry after Retry-After seconds \
                     with the same Idempotency-Key: a request that was stored after all is \
                     answered again, never stored twice",
                )
                .retry_after(RETRY_AFTER_SECS)
            }
            ApiError::Internal(e) => Problem::internal(&e),
        };
        problem.into_response()
    }
}

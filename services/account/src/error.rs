//! The account service's one error type for its HTTP API. Variants are named by what the client
//! sees; each maps to one RFC 9457 problem. Infrastructure failures are an opaque 500, logged
//! once (by `Problem::internal`).

use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use eventbank_events::AccountId;
use eventbank_runtime::http::{self, Problem};
use std::time::Duration;

/// Seconds a client is told to wait before asking again for a sequence not yet applied.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed `wait`, `as_of` or `Last-Event-ID`: a 400.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An integer query parameter out of its range: a 400 naming it in `parameter`.
    #[error("invalid {parameter}: {detail}")]
    InvalidParameter {
        parameter: &'static str,
        detail: String,
    },
    /// The path is not an account id, so it names no account: a 404, asked of no database.
    #[error("no such account")]
    NoSuchAccount,
    /// The account has nothing applied (at all, or at the instant asked for): a 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// `min_sequence` was not applied within `wait`: a 503 naming both sequences, with
    /// `Retry-After`.
    #[error("account {account_id} has applied sequence {current_sequence}, not {min_sequence}")]
    NotYetConsistent {
        account_id: AccountId,
        current_sequence: i64,
        min_sequence: i64,
        waited: Duration,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            ApiError::BadRequest(detail) => Problem::bad_request(detail),
            ApiError::InvalidParameter { parameter, detail } => {
                Problem::bad_request(detail).with("parameter", parameter)
            }
            ApiError::NoSuchAccount => Problem::not_found(
                "no such account: an account id is 3 to 32 characters of A-Z, 0-9 and '-'",
            ),
            ApiError::NotFound(detail) => Problem::not_found(detail),
            ApiError::NotYetConsistent {
                account_id,
                current_sequence,
                min_sequence,
                waited,
            } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-yet-consistent",
                "Projection has not caught up",
                format!(
                    "account {account_id} has applied sequence {current_sequence}; sequence \
                     {min_sequence} was asked for and did not arrive within {} ms",
                    waited.as_millis()
                ),
            )
            .with("account_id", account_id)
            .with("current_sequence", current_sequence)
            .with("min_sequence", min_sequence)
            .retry_after(RETRY_AFTER_SECS),
            ApiError::Internal(e) => Problem::internal(&e),
        };
        problem.into_response()
    }
}

impl From<http::InvalidParameter> for ApiError {
    fn from(e: http::InvalidParameter) -> Self {
        ApiError::InvalidParameter {
            parameter: e.parameter,
            detail: e.detail,
        }
    }
}

//! The interest service's one error type for its HTTP API. Variants are named by what the
//! client sees; each maps to one RFC 9457 problem. Infrastructure failures are an opaque 500,
//! logged once (by `Problem::internal`).

use crate::api::MAX_DAYS_PER_REQUEST;
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use eventbank_events::AccountId;
use eventbank_runtime::http::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The path is not an account id.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A query parameter that does not parse: a 400 naming it in `parameter`.
    #[error("invalid {parameter}: {detail}")]
    InvalidParameter {
        parameter: &'static str,
        detail: String,
    },
    /// `from` after `to`: a 400 with both.
    #[error("from ({from}) is after to ({to})")]
    FromAfterTo { from: NaiveDate, to: NaiveDate },
    /// A range of more than [`MAX_DAYS_PER_REQUEST`] days.
    #[error("the range covers {days} days")]
    RangeTooLong { days: i64 },
    /// No deposit of this account has reached the service: a 404 with `account_id`.
    #[error("unknown account {0}")]
    UnknownAccount(AccountId),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

/// An amount that does not fit the answer's integers: a bug, not the client's doing.
impl From<std::num::TryFromIntError> for ApiError {
    fn from(e: std::num::TryFromIntError) -> Self {
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
            ApiError::FromAfterTo { from, to } => {
                Problem::bad_request(format!("from ({from}) is after to ({to})"))
                    .with("from", from)
                    .with("to", to)
            }
            ApiError::RangeTooLong { days } => Problem::bad_request(format!(
                "the range covers {days} days; at most {MAX_DAYS_PER_REQUEST} per request"
            ))
            .with("max_days", MAX_DAYS_PER_REQUEST),
            ApiError::UnknownAccount(account_id) => Problem::not_found(format!(
                "account {account_id} has no deposits in the interest service"
            ))
            .with("account_id", account_id),
            ApiError::Internal(e) => Problem::internal(&e),
        };
        problem.into_response()
    }
}

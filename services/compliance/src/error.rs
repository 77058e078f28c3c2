//! The compliance service's one error type for its HTTP API. Variants are named by what the
//! client sees; each maps to one RFC 9457 problem. Infrastructure failures are an opaque 500,
//! logged once (by `Problem::internal`).

use axum::response::{IntoResponse, Response};
use eventbank_runtime::http::{self, Problem};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query parameter that does not parse or is out of range: a 400 naming it in `parameter`.
    #[error("invalid {parameter}: {detail}")]
    InvalidParameter {
        parameter: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl ApiError {
    pub fn parameter(parameter: &'static str, detail: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            parameter,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            ApiError::InvalidParameter { parameter, detail } => {
                Problem::bad_request(detail).with("parameter", parameter)
            }
            ApiError::Internal(e) => Problem::internal(&e),
        };
        problem.into_response()
    }
}

impl From<http::InvalidParameter> for ApiError {
    fn from(e: http::InvalidParameter) -> Self {
        ApiError::parameter(e.parameter, e.detail)
    }
}

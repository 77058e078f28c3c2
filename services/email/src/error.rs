//! The email service's one error type for its HTTP API. Variants are named by what the client
//! sees; each maps to one RFC 9457 problem. Infrastructure failures are an opaque 500, logged
//! once (by `Problem::internal`).

use axum::response::{IntoResponse, Response};
use eventbank_runtime::http::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A path or query parameter that does not parse.
    #[error("invalid {field}: {message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
    #[error("not found: {0}")]
    NotFound(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl ApiError {
    pub fn bad_request(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            ApiError::BadRequest { field, message } => {
                Problem::bad_request(format!("{field}: {message}")).with("field", field)
            }
            ApiError::NotFound(what) => Problem::not_found(what),
            ApiError::Internal(e) => Problem::internal(&e),
        };
        problem.into_response()
    }
}

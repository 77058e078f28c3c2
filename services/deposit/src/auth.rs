//! The API key the write endpoints require.

use crate::api::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use eventbank_runtime::http::Problem;
use subtle::ConstantTimeEq as _;

/// Write endpoints need `x-api-key`. Compared in constant time so the answer's timing does not
/// reveal how much of a guess was right.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = state.config.api_key.expose().as_bytes();
    if bool::from(given.ct_eq(expected)) {
        return next.run(request).await;
    }
    let mut response = Problem::new(
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

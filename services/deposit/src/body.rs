//! Every request body is read whole before any handler or check sees it: the size limit, the
//! drain of an oversized body, and the refusal of a Content-Encoding this service cannot read.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use eventbank_runtime::http::Problem;
use futures_util::StreamExt;
use std::time::Duration;

/// Request bodies here are a few hundred bytes; anything near this limit is not a deposit.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// An oversized body is read to its end and discarded, up to this many bytes, before its 413
/// is sent; past that the connection is closed under the client.
pub const DRAIN_LIMIT_BYTES: usize = 64 * 1024 * 1024;
/// ... and for at most this long.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the request claims a Content-Encoding other than `identity`.
fn encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Reads every request body before any handler or check sees it, keeping at most
/// [`BODY_LIMIT_BYTES`]. A larger one is read to its end and thrown away (within
/// [`DRAIN_LIMIT_BYTES`] and [`DRAIN_TIMEOUT`]) before the 413 is answered: a client that writes
/// its whole body before reading gets the answer, not a connection reset under its write (the
/// lingering close nginx does). Every other answer (401 included) comes after the whole body
/// was read, for the same reason.
pub async fn read_body_first(request: Request, next: Next) -> Response {
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
            next.run(Request::from_parts(parts, Body::from(kept))).await
        }
        _ if total > BODY_LIMIT_BYTES => too_large(),
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

/// The 413, closing the connection: what is left of the body is not worth reading.
fn too_large() -> Response {
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

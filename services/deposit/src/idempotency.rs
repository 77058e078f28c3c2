//! Idempotency-Key on `POST /deposits`: the header's rules, what "the same request" means, and
//! answering again with what was stored under a key (the [`crate::writer`] claims them).

use crate::error::ApiError;
use crate::store;
use crate::validate::ValidDeposit;
use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// The request's Idempotency-Key, if it sent one: 1 to 200 visible ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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

/// What "the same body" means for Idempotency-Key: the normalised request, so that `"100.0"`
/// and `"100.00"` are the same deposit.
pub fn fingerprint(deposit: &ValidDeposit) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        deposit.account_id,
        deposit.money.minor,
        deposit.money.currency,
        deposit.channel.map_or("", |c| c.as_str()),
        deposit.reference.as_deref().unwrap_or("")
    )
}

/// What a request whose Idempotency-Key `key` was used before (`stored`) answers: the stored
/// status and body again when the body is the same, else a 422.
pub fn replay(
    key: &str,
    stored: Option<store::IdempotencyRow>,
    fingerprint: &str,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let stored = stored.ok_or_else(|| anyhow::anyhow!("idempotency key vanished"))?;
    if stored.fingerprint != fingerprint {
        return Err(ApiError::IdempotencyKeyReused);
    }
    tracing::info!(idempotency_key = %key, "replaying the stored response");
    let status = StatusCode::from_u16(u16::try_from(stored.status_code).unwrap_or(500))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok((status, stored.response))
}

/// The stored answer, marked as a replay.
pub fn replayed(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [("idempotent-replayed", "true")], Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_key_is_1_to_200_visible_ascii_characters() {
        let mut headers = HeaderMap::new();
        assert!(matches!(key(&headers), Ok(None)));
        headers.insert("idempotency-key", HeaderValue::from_static("abc-123"));
        assert_eq!(key(&headers).ok().flatten().as_deref(), Some("abc-123"));
        for bad in ["", "a b", &"k".repeat(201)] {
            headers.insert("idempotency-key", HeaderValue::from_str(bad).unwrap());
            assert!(key(&headers).is_err(), "{bad:?}");
        }
    }
}

//! Stored forms of the account events and snapshots, and the ONE place where older stored
//! versions are upcast to the current shape.
//!
//! Each stored event carries `event_type` and `schema_version`. The current versions are
//! exactly the serde shapes of [`AccountOpened`] and [`Deposited`]; reading an older version
//! goes through [`upcast`], one step per version, on the JSON value, and then through the same
//! deserialisation as a current event. Nothing else in the service knows that older versions
//! exist.
//!
//! Versions:
//! - `AccountOpened` v1 `{currency, opened_at, source_event_id}`: what the 0002 migration
//!   backfilled from the first read model (which never stored the holder); v2 adds
//!   `holder_name` and `email` (null when unknown).
//! - `Deposited` v1 `{event_id, sequence, deposit_id, amount: "250.00", currency, occurred_at}`:
//!   the amount as a decimal string in the currency's precision; v2 stores `amount_minor`
//!   (integer minor units), as everything else in eventbank does.

use crate::domain::{AccountEvent, AccountOpened, AccountState, Deposited};
use eventbank_events::{Currency, Money};
use serde_json::Value;

pub const ACCOUNT_OPENED: &str = "AccountOpened";
pub const DEPOSITED: &str = "Deposited";
/// The versions this code writes.
pub const ACCOUNT_OPENED_VERSION: i32 = 2;
pub const DEPOSITED_VERSION: i32 = 2;

/// The stored event types this code knows (`event_type` is their text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    AccountOpened,
    Deposited,
}

impl EventType {
    /// `None`: a type this code does not know.
    pub fn parse(event_type: &str) -> Option<Self> {
        match event_type {
            ACCOUNT_OPENED => Some(Self::AccountOpened),
            DEPOSITED => Some(Self::Deposited),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccountOpened => ACCOUNT_OPENED,
            Self::Deposited => DEPOSITED,
        }
    }

    /// The version this code writes, and the newest it reads.
    pub fn current_version(self) -> i32 {
        match self {
            Self::AccountOpened => ACCOUNT_OPENED_VERSION,
            Self::Deposited => DEPOSITED_VERSION,
        }
    }
}
/// The snapshot body version this code writes and reads; any other is ignored.
pub const SNAPSHOT_VERSION: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown stored event {event_type} v{schema_version}")]
    Unknown {
        event_type: String,
        schema_version: i32,
    },
    #[error("stored {event_type} v{schema_version} is unreadable: {reason}")]
    Invalid {
        event_type: String,
        schema_version: i32,
        reason: String,
    },
}

/// An event in its stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub event_type: EventType,
    pub schema_version: i32,
    pub payload: String,
}

/// The stored form (current version) of an event.
pub fn encode(event: &AccountEvent) -> Stored {
    // Serialising structs of strings, numbers, uuids and timestamps cannot fail; an empty
    // object would be caught by `decode` when read back.
    match event {
        AccountEvent::Opened(e) => Stored {
            event_type: EventType::AccountOpened,
            schema_version: ACCOUNT_OPENED_VERSION,
            payload: serde_json::to_string(e).unwrap_or_else(|_| "{}".into()),
        },
        AccountEvent::Deposited(e) => Stored {
            event_type: EventType::Deposited,
            schema_version: DEPOSITED_VERSION,
            payload: serde_json::to_string(e).unwrap_or_else(|_| "{}".into()),
        },
    }
}

fn unknown(event_type: &str, schema_version: i32) -> CodecError {
    CodecError::Unknown {
        event_type: event_type.to_owned(),
        schema_version,
    }
}

fn invalid(event_type: &str, schema_version: i32, reason: impl ToString) -> CodecError {
    CodecError::Invalid {
        event_type: event_type.to_owned(),
        schema_version,
        reason: reason.to_string(),
    }
}

/// Reads a stored event of any supported version. The current versions are parsed straight
/// from the text (the rebuild's hot path); older ones are upcast first.
pub fn decode(
    event_type: &str,
    schema_version: i32,
    payload: &str,
) -> Result<AccountEvent, CodecError> {
    match (event_type, schema_version) {
        (ACCOUNT_OPENED, ACCOUNT_OPENED_VERSION) => serde_json::from_str(payload)
            .map(AccountEvent::Opened)
            .map_err(|e| invalid(event_type, schema_version, e)),
        (DEPOSITED, DEPOSITED_VERSION) => serde_json::from_str(payload)
            .map(AccountEvent::Deposited)
            .map_err(|e| invalid(event_type, schema_version, e)),
        _ => {
            let value: Value = serde_json::from_str(payload)
                .map_err(|e| invalid(event_type, schema_version, e))?;
            decode_value(event_type, schema_version, value)
        }
    }
}

/// Reads a stored event given as a JSON value (upcasting older versions).
pub fn decode_value(
    event_type: &str,
    schema_version: i32,
    payload: Value,
) -> Result<AccountEvent, CodecError> {
    let current = upcast(event_type, schema_version, payload)?;
    let result = match EventType::parse(event_type) {
        Some(EventType::AccountOpened) => {
            serde_json::from_value::<AccountOpened>(current).map(AccountEvent::Opened)
        }
        Some(EventType::Deposited) => {
            serde_json::from_value::<Deposited>(current).map(AccountEvent::Deposited)
        }
        None => return Err(unknown(event_type, schema_version)),
    };
    result.map_err(|e| invalid(event_type, schema_version, e))
}

/// Brings a stored payload from `schema_version` up to the current version of its type, one
/// version at a time. The only upcasting point of the event store.
pub fn upcast(event_type: &str, schema_version: i32, payload: Value) -> Result<Value, CodecError> {
    let kind = EventType::parse(event_type)
        .filter(|kind| (1..=kind.current_version()).contains(&schema_version))
        .ok_or_else(|| unknown(event_type, schema_version))?;
    let mut version = schema_version;
    let mut value = payload;
    while version < kind.current_version() {
        value = match (kind, version) {
            (EventType::AccountOpened, 1) => account_opened_v1_to_v2(value),
            (EventType::Deposited, 1) => {
                deposited_v1_to_v2(value).map_err(|reason| invalid(event_type, version, reason))?
            }
            _ => return Err(unknown(event_type, version)),
        };
        version += 1;
    }
    Ok(value)
}

/// v1 did not know the holder: it stays unknown.
fn account_opened_v1_to_v2(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.entry("holder_name").or_insert(Value::Null);
        object.entry("email").or_insert(Value::Null);
    }
    value
}

/// v1 stored `amount` as a decimal string; v2 stores exact integer minor units.
fn deposited_v1_to_v2(mut value: Value) -> Result<Value, String> {
    let object = value
        .as_object_mut()
        .ok_or_else(|| "payload is not an object".to_owned())?;
    let currency = object
        .get("currency")
        .and_then(Value::as_str)
        .ok_or_else(|| "currency is missing".to_owned())
        .and_then(|c| Currency::parse(c).map_err(|e| e.to_string()))?;
    let amount = object
        .remove("amount")
        .ok_or_else(|| "amount is missing".to_owned())?;
    let amount = amount
        .as_str()
        .ok_or_else(|| "amount is not a string".to_owned())?;
    let money = Money::parse_positive(amount, currency).map_err(|e| e.to_string())?;
    object.insert("amount_minor".into(), Value::from(money.minor));
    Ok(value)
}

/// The snapshot body (current snapshot version).
pub fn encode_snapshot(state: &AccountState) -> String {
    serde_json::to_string(state).unwrap_or_else(|_| "{}".into())
}

/// A snapshot this code can trust, or `None`: a snapshot of another version or one that no
/// longer deserialises is ignored (the caller replays the stream), never an error.
pub fn decode_snapshot(schema_version: i32, state: &str) -> Option<AccountState> {
    if schema_version != SNAPSHOT_VERSION {
        return None;
    }
    serde_json::from_str(state).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_versions_and_types_are_errors_not_guesses() {
        assert!(matches!(
            decode(DEPOSITED, 3, "{}"),
            Err(CodecError::Unknown { .. })
        ));
        assert!(matches!(
            decode("Withdrawn", 1, "{}"),
            Err(CodecError::Unknown { .. })
        ));
        let v1 = json!({"event_id": uuid::Uuid::nil(), "sequence": 1, "deposit_id": uuid::Uuid::nil(),
            "amount": "1.001", "currency": "USD", "occurred_at": "2026-01-01T00:00:00Z"});
        assert!(matches!(
            decode_value(DEPOSITED, 1, v1),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn event_types_read_back_as_written() {
        for kind in [EventType::AccountOpened, EventType::Deposited] {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("deposited"), None);
    }

    #[test]
    fn a_snapshot_of_another_version_or_shape_is_ignored() {
        assert_eq!(decode_snapshot(SNAPSHOT_VERSION + 1, "{}"), None);
        assert_eq!(
            decode_snapshot(SNAPSHOT_VERSION, "{\"version\": \"x\"}"),
            None
        );
        let state = AccountState {
            version: 3,
            ..AccountState::default()
        };
        assert_eq!(
            decode_snapshot(SNAPSHOT_VERSION, &encode_snapshot(&state)),
            Some(state)
        );
    }
}

//! `DepositCompleted`: the one event on the wire, in a CloudEvents 1.0 structured-mode envelope.
//!
//! Versions (`dataschemaversion`):
//! - 1: the original event.
//! - 2: adds two OPTIONAL fields to `data`: `channel` (`branch`, `atm` or `online`) and
//!   `reference` (the customer's payment reference). The producer emits 2.
//!
//! [`decode`] is the single place where a consumer turns bytes into the current in-memory shape;
//! a version-1 event is upcast there (both new fields absent) and nowhere else. Consumers are
//! tolerant readers: unknown fields are ignored, but a version they do not know is an error
//! (dead-lettered with the reason, never dropped). Compatibility rules: a new version may only
//! add optional fields; removing or changing the meaning of a field needs a new event type.

use crate::{AccountId, Currency};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const EVENT_TYPE: &str = "bank.deposit.completed";
pub const EVENT_SOURCE: &str = "/eventbank/deposit";
pub const ROUTING_KEY: &str = "deposit.completed";
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// The `dataschemaversion` values [`decode`] can read.
pub const SUPPORTED_VERSIONS: &[u32] = &[1, 2];
/// The version the producer emits.
pub const CURRENT_VERSION: u32 = 2;

/// CloudEvents 1.0 structured envelope. `sequence` is the per-account sequence number assigned
/// by the deposit service (1, 2, 3, ... with no gaps), which consumers use for ordering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub specversion: String,
    pub id: Uuid,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub dataschemaversion: u32,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub sequence: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub datacontenttype: String,
    pub data: T,
}

/// The customer data carried in the event (event-carried state transfer): consumers never ask
/// the deposit service who the account holder is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSnapshot {
    pub holder_name: String,
    pub email: String,
}

/// `data` of `DepositCompleted` version 1, exactly as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositCompletedV1 {
    pub deposit_id: Uuid,
    pub account_id: AccountId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub account: AccountSnapshot,
    pub occurred_at: DateTime<Utc>,
}

/// How the deposit was made (version 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Branch,
    Atm,
    Online,
}

impl Channel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::Branch => "branch",
            Channel::Atm => "atm",
            Channel::Online => "online",
        }
    }
}

/// The longest `reference` the producer accepts and the schema allows.
pub const MAX_REFERENCE_CHARS: usize = 140;

/// `data` of `DepositCompleted` version 2: version 1 plus two optional fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositCompletedV2 {
    #[serde(flatten)]
    pub v1: DepositCompletedV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// The in-memory shape every consumer works with, whatever version arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositCompleted {
    pub event_id: Uuid,
    pub sequence: i64,
    pub time: DateTime<Utc>,
    pub traceparent: Option<String>,
    /// The version the event was written in, kept for logs and audit.
    pub schema_version: u32,
    pub deposit_id: Uuid,
    pub account_id: AccountId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub account: AccountSnapshot,
    pub occurred_at: DateTime<Utc>,
    /// Version 2; `None` for version-1 events.
    pub channel: Option<Channel>,
    /// Version 2; `None` for version-1 events.
    pub reference: Option<String>,
}

impl DepositCompleted {
    /// The envelope the producer puts on the wire (current version).
    pub fn to_envelope(&self) -> Envelope<DepositCompletedV2> {
        Envelope {
            specversion: "1.0".into(),
            id: self.event_id,
            source: EVENT_SOURCE.into(),
            event_type: EVENT_TYPE.into(),
            dataschemaversion: CURRENT_VERSION,
            subject: self.account_id.to_string(),
            time: self.time,
            sequence: self.sequence,
            traceparent: self.traceparent.clone(),
            datacontenttype: "application/json".into(),
            data: DepositCompletedV2 {
                v1: DepositCompletedV1 {
                    deposit_id: self.deposit_id,
                    account_id: self.account_id.clone(),
                    amount_minor: self.amount_minor,
                    currency: self.currency,
                    account: self.account.clone(),
                    occurred_at: self.occurred_at,
                },
                channel: self.channel,
                reference: self.reference.clone(),
            },
        }
    }

    /// Serialised body, as published.
    /// The message body. An error is a bug in the envelope's types (it holds strings, numbers
    /// and timestamps), returned rather than hidden behind an empty body.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.to_envelope())
    }
}

/// Why a message could not be read. The text becomes the dead-letter reason header.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not a JSON CloudEvent: {0}")]
    NotJson(String),
    #[error("unsupported specversion {0:?} (expected \"1.0\")")]
    SpecVersion(String),
    #[error("unexpected event type {0:?} (expected \"bank.deposit.completed\")")]
    WrongType(String),
    #[error("unsupported dataschemaversion {0} (this consumer reads {SUPPORTED_VERSIONS:?})")]
    UnsupportedVersion(u64),
    #[error("data does not match DepositCompleted v{version}: {reason}")]
    InvalidData { version: u32, reason: String },
    #[error("invalid event: {0}")]
    Invalid(String),
}

/// The header part of the envelope, read first so that the version decides how `data` is read.
#[derive(Deserialize)]
struct RawEnvelope {
    specversion: String,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    dataschemaversion: u64,
    subject: String,
    time: DateTime<Utc>,
    sequence: i64,
    #[serde(default)]
    traceparent: Option<String>,
    data: serde_json::Value,
}

/// Reads a message body into the current in-memory shape. The only upcasting point.
pub fn decode(body: &[u8]) -> Result<DepositCompleted, DecodeError> {
    let raw: RawEnvelope =
        serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    if raw.specversion != "1.0" {
        return Err(DecodeError::SpecVersion(raw.specversion));
    }
    if raw.event_type != EVENT_TYPE {
        return Err(DecodeError::WrongType(raw.event_type));
    }
    let version = raw.dataschemaversion;
    // The one upcasting point: every version becomes the latest data shape here.
    let invalid = |version: u32| {
        move |e: serde_json::Error| DecodeError::InvalidData {
            version,
            reason: e.to_string(),
        }
    };
    let (data, channel, reference) = match version {
        1 => (
            serde_json::from_value::<DepositCompletedV1>(raw.data).map_err(invalid(1))?,
            None,
            None,
        ),
        2 => {
            let v2: DepositCompletedV2 = serde_json::from_value(raw.data).map_err(invalid(2))?;
            (v2.v1, v2.channel, v2.reference)
        }
        other => return Err(DecodeError::UnsupportedVersion(other)),
    };
    if reference
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REFERENCE_CHARS)
    {
        return Err(DecodeError::Invalid(format!(
            "reference longer than {MAX_REFERENCE_CHARS} characters"
        )));
    }
    if data.account_id.as_str() != raw.subject {
        return Err(DecodeError::Invalid(format!(
            "subject {:?} differs from data.account_id {:?}",
            raw.subject,
            data.account_id.as_str()
        )));
    }
    if data.amount_minor <= 0 {
        return Err(DecodeError::Invalid("amount_minor must be positive".into()));
    }
    if raw.sequence < 1 {
        return Err(DecodeError::Invalid("sequence must be at least 1".into()));
    }
    Ok(DepositCompleted {
        event_id: raw.id,
        sequence: raw.sequence,
        time: raw.time,
        traceparent: raw.traceparent,
        schema_version: u32::try_from(version).unwrap_or(CURRENT_VERSION),
        deposit_id: data.deposit_id,
        account_id: data.account_id,
        amount_minor: data.amount_minor,
        currency: data.currency,
        account: data.account,
        occurred_at: data.occurred_at,
        channel,
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> DepositCompleted {
        DepositCompleted {
            event_id: Uuid::now_v7(),
            sequence: 7,
            time: Utc::now(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            schema_version: 2,
            deposit_id: Uuid::now_v7(),
            account_id: AccountId::parse("ACC-0042").unwrap(),
            amount_minor: 10_000,
            currency: Currency::parse("USD").unwrap(),
            account: AccountSnapshot {
                holder_name: "Alice Example".into(),
                email: "alice@example.com".into(),
            },
            occurred_at: Utc::now(),
            channel: Some(Channel::Online),
            reference: Some("Invoice 42".into()),
        }
    }

    fn validator(text: &str) -> jsonschema::Validator {
        let schema: serde_json::Value = serde_json::from_str(text).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    fn schema_validator() -> jsonschema::Validator {
        validator(include_str!(
            "../../schemas/deposit-completed.v2.schema.json"
        ))
    }

    /// Stored version-1 events, as producers wrote them before version 2.
    pub(crate) const V1_FIXTURES: &[&str] = &[
        include_str!("../../schemas/fixtures/deposit-completed.v1.usd.json"),
        include_str!("../../schemas/fixtures/deposit-completed.v1.jpy.json"),
        include_str!("../../schemas/fixtures/deposit-completed.v1.unknown-fields.json"),
    ];

    #[test]
    fn stored_v1_fixtures_match_the_v1_schema_and_upcast_to_the_current_shape() {
        let v1 = validator(include_str!(
            "../../schemas/deposit-completed.v1.schema.json"
        ));
        for fixture in V1_FIXTURES {
            let value: serde_json::Value = serde_json::from_str(fixture).unwrap();
            assert!(v1.is_valid(&value), "{fixture}");
            let event = decode(fixture.as_bytes()).unwrap();
            assert_eq!(event.schema_version, 1);
            assert_eq!((event.channel, event.reference.as_deref()), (None, None));
            // Upcast then re-encoded, it is a valid current (v2) event with the same data.
            let again = decode(&event.to_json().unwrap()).unwrap();
            assert_eq!(again.amount_minor, event.amount_minor);
            assert_eq!(again.schema_version, CURRENT_VERSION);
            let current: serde_json::Value =
                serde_json::from_slice(&event.to_json().unwrap()).unwrap();
            assert!(schema_validator().is_valid(&current));
        }
    }

    #[test]
    fn a_v2_event_without_the_optional_fields_is_valid() {
        let mut event = sample();
        event.channel = None;
        event.reference = None;
        let value: serde_json::Value = serde_json::from_slice(&event.to_json().unwrap()).unwrap();
        assert!(value["data"].get("channel").is_none());
        assert!(schema_validator().is_valid(&value));
        assert_eq!(decode(&event.to_json().unwrap()).unwrap(), event);
    }

    #[test]
    fn encoded_event_round_trips_and_matches_the_json_schema() {
        let event = sample();
        let body = event.to_json().unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let validator = schema_validator();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "schema errors: {errors:?}");
        assert_eq!(decode(&body).unwrap(), event);
    }

    #[test]
    fn schema_rejects_a_float_amount() {
        let mut value = serde_json::to_value(sample().to_envelope()).unwrap();
        value["data"]["amount_minor"] = serde_json::json!(100.5);
        assert!(!schema_validator().is_valid(&value));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut value = serde_json::to_value(sample().to_envelope()).unwrap();
        value["extra"] = serde_json::json!("x");
        value["data"]["unknown_future_field"] = serde_json::json!("atm");
        assert!(decode(&serde_json::to_vec(&value).unwrap()).is_ok());
    }

    #[test]
    fn hostile_messages_get_a_reason() {
        let good = serde_json::to_value(sample().to_envelope()).unwrap();
        let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not a JSON CloudEvent"),
            (
                mutate(&|v| v["type"] = "bank.other".into()),
                "unexpected event type",
            ),
            (
                mutate(&|v| v["dataschemaversion"] = 99.into()),
                "unsupported dataschemaversion 99",
            ),
            (mutate(&|v| v["specversion"] = "0.3".into()), "specversion"),
            (
                mutate(&|v| {
                    v["data"].as_object_mut().unwrap().remove("amount_minor");
                }),
                "missing field `amount_minor`",
            ),
            (
                mutate(&|v| v["data"]["amount_minor"] = "100".into()),
                "DepositCompleted v2",
            ),
            (
                mutate(&|v| v["data"]["amount_minor"] = (-5).into()),
                "positive",
            ),
            (
                mutate(&|v| v["data"]["currency"] = "XXX".into()),
                "unsupported currency",
            ),
            (mutate(&|v| v["subject"] = "ACC-9999".into()), "differs"),
            (
                mutate(&|v| v["data"]["channel"] = "carrier-pigeon".into()),
                "DepositCompleted v2",
            ),
            (
                mutate(&|v| v["data"]["reference"] = "r".repeat(141).into()),
                "reference longer",
            ),
        ];
        for (body, needle) in cases {
            let err = decode(&body).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}

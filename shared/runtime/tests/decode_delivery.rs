//! Property tests of what a consumer does with a delivery before any database work:
//! [`decode_delivery`] (the body: an event, or the reason it is dead-lettered) and
//! [`dead_letter_headers`] (the headers of the dead-lettered copy), fed arbitrary bytes,
//! JSON-ish mutations of a real event and arbitrary AMQP header tables. Never a panic; always an
//! event or a non-empty reason, and that reason is what the copy's `x-eventbank-reason` says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{TimeZone, Utc};
use eventbank_events::{AccountId, AccountSnapshot, Channel, Currency, DepositCompleted};
use eventbank_runtime::amqp::{FAILED_AT_HEADER, QUEUE_HEADER, REASON_HEADER};
use eventbank_runtime::consumer::{
    MAX_MESSAGE_BYTES, MAX_REASON_CHARS, dead_letter_headers, decode_delivery,
};
use lapin::types::{AMQPValue, DecimalValue, FieldTable, LongString, ShortString};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

const QUEUE: &str = "t0.email.deposits.3";
const FAILED_AT: &str = "2026-11-27T10:00:00+00:00";
const OURS: [&str; 3] = [REASON_HEADER, QUEUE_HEADER, FAILED_AT_HEADER];

/// A header name: arbitrary text of at most 255 bytes (what AMQP can carry), or one of the names
/// that mean something here, which a hostile sender may set itself.
fn header_name() -> impl Strategy<Value = ShortString> {
    prop_oneof![
        3 => "\\PC{0,40}".prop_map(|s: String| {
            let mut s = s;
            while s.len() > 255 {
                s.pop();
            }
            ShortString::from(s)
        }),
        1 => prop::sample::select(vec![
            REASON_HEADER,
            QUEUE_HEADER,
            FAILED_AT_HEADER,
            "account_id",
            "x-death",
            "x-delivery-count",
            "traceparent",
            "",
        ])
        .prop_map(ShortString::from),
    ]
}

/// Every kind of AMQP field value, nested up to three deep.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        header_name().prop_map(AMQPValue::ShortString),
        vec(any::<u8>(), 0..128).prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        "\\PC{0,64}".prop_map(|s: String| AMQPValue::LongString(LongString::from(s))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..32).prop_map(|b| AMQPValue::ByteArray(b.into())),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(|v| AMQPValue::FieldArray(v.into())),
            btree_map(header_name(), inner, 0..6)
                .prop_map(|m| AMQPValue::FieldTable(FieldTable::from(m))),
        ]
    })
}

fn header_table() -> impl Strategy<Value = Option<FieldTable>> {
    prop_oneof![
        1 => Just(None),
        6 => btree_map(header_name(), amqp_value(), 0..12).prop_map(|m| Some(FieldTable::from(m))),
    ]
}

/// Checks the dead-lettered copy's headers: ours set (the reason cut to its limit), every other
/// header of the original kept as it was, nothing else added.
fn check_dead_letter_headers(original: Option<&FieldTable>, reason: &str) {
    let headers = dead_letter_headers(original, reason, QUEUE, FAILED_AT);
    let expected_reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("{name} is {other:?}"),
    };
    assert_eq!(text(REASON_HEADER), expected_reason);
    assert!(!text(REASON_HEADER).trim().is_empty());
    assert!(text(REASON_HEADER).chars().count() <= MAX_REASON_CHARS);
    assert_eq!(text(QUEUE_HEADER), QUEUE);
    assert_eq!(text(FAILED_AT_HEADER), FAILED_AT);
    let original_len = original.map_or(0, |o| {
        o.inner()
            .keys()
            .filter(|k| !OURS.contains(&k.as_str()))
            .count()
    });
    assert_eq!(headers.inner().len(), original_len + OURS.len());
    if let Some(original) = original {
        for (name, value) in original.inner() {
            if !OURS.contains(&name.as_str()) {
                // Debug, not ==: a NaN float is kept, and is not equal to itself.
                assert_eq!(
                    format!("{:?}", headers.inner().get(name.as_str())),
                    format!("{:?}", Some(value)),
                    "header {name:?} changed"
                );
            }
        }
    }
}

/// What the consumer does with one delivery up to the database: decode, or dead-letter with the
/// reason. Returns the event when it decoded.
fn consume(body: &[u8], headers: Option<&FieldTable>) -> Option<DepositCompleted> {
    match decode_delivery(body) {
        Ok(event) => Some(event),
        Err(reason) => {
            assert!(
                !reason.trim().is_empty(),
                "an empty reason for {} bytes",
                body.len()
            );
            check_dead_letter_headers(headers, &reason);
            None
        }
    }
}

/// The invariants `decode` promises for every event it returns.
fn check_event(event: &DepositCompleted) {
    assert!(event.amount_minor > 0);
    assert!(event.sequence >= 1);
    assert!(AccountId::parse(event.account_id.as_str()).is_ok());
    assert!(
        event
            .reference
            .as_ref()
            .is_none_or(|r| r.chars().count() <= 140)
    );
    // What was read can be written and read again, unchanged (as the current version).
    let again = decode_delivery(&event.to_json().unwrap()).expect("a decoded event re-encodes");
    assert_eq!(again.amount_minor, event.amount_minor);
    assert_eq!(again.account_id, event.account_id);
    assert_eq!(again.event_id, event.event_id);
}

fn sample_json() -> Value {
    json!({
        "specversion": "1.0", "id": "0192f0c1-8f5e-7c3a-9d2e-1a2b3c4d5e6f",
        "source": "/eventbank/deposit", "type": "bank.deposit.completed",
        "dataschemaversion": 2, "subject": "ACC-0001", "time": "2026-11-27T10:00:00Z",
        "sequence": 1, "datacontenttype": "application/json",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "data": {
            "deposit_id": "0192f0c1-8f5e-7c3a-9d2e-1a2b3c4d5e70", "account_id": "ACC-0001",
            "amount_minor": 100, "currency": "USD",
            "account": {"holder_name": "H", "email": "h@example.com"},
            "occurred_at": "2026-11-27T10:00:00Z", "channel": "online", "reference": "r"
        }
    })
}

/// Any JSON value, a few levels deep, with the awkward numbers and strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![0i64, -1, 1, i64::MAX, i64::MIN, 2, 7, 99]).prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::String),
        prop::sample::select(vec![
            "1.0",
            "bank.deposit.completed",
            "ACC-0001",
            "acc-0001",
            "ACC-\u{202e}1",
            "USD",
            "JPY",
            "XXX",
            "online",
            "2026-11-27T10:00:00Z",
            "0192f0c1-8f5e-7c3a-9d2e-1a2b3c4d5e71",
            "",
            "\u{0}",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-z_]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A member of the envelope, of `data` or of `data.account`.
fn member_path() -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::select(vec![
        vec!["specversion"],
        vec!["id"],
        vec!["source"],
        vec!["type"],
        vec!["dataschemaversion"],
        vec!["subject"],
        vec!["time"],
        vec!["sequence"],
        vec!["traceparent"],
        vec!["datacontenttype"],
        vec!["data"],
        vec!["data", "deposit_id"],
        vec!["data", "account_id"],
        vec!["data", "amount_minor"],
        vec!["data", "currency"],
        vec!["data", "account"],
        vec!["data", "account", "holder_name"],
        vec!["data", "account", "email"],
        vec!["data", "occurred_at"],
        vec!["data", "channel"],
        vec!["data", "reference"],
        vec!["data", "unknown_future_field"],
        vec!["extension"],
    ])
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(Vec<&'static str>, Value),
    Remove(Vec<&'static str>),
}

fn mutate(mut root: Value, mutation: &Mutation) -> Value {
    let (path, value) = match mutation {
        Mutation::Set(path, value) => (path, Some(value)),
        Mutation::Remove(path) => (path, None),
    };
    let Some((last, parents)) = path.split_last() else {
        return root;
    };
    let mut node = &mut root;
    for key in parents {
        match node.get_mut(*key) {
            Some(child) => node = child,
            None => return root,
        }
    }
    if let Some(object) = node.as_object_mut() {
        match value {
            Some(v) => {
                object.insert((*last).to_owned(), v.clone());
            }
            None => {
                object.remove(*last);
            }
        }
    }
    root
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (member_path(), json_value()).prop_map(|(p, v)| Mutation::Set(p, v)),
        1 => member_path().prop_map(Mutation::Remove),
    ]
}

fn currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(vec![
        "USD", "EUR", "GBP", "CHF", "CAD", "AUD", "SEK", "JPY", "KRW", "BHD", "KWD",
    ])
    .prop_map(|c| Currency::parse(c).unwrap())
}

/// A valid event with arbitrary contents where the contract allows anything.
fn valid_event() -> impl Strategy<Value = DepositCompleted> {
    (
        (any::<u128>(), any::<u128>(), 1..=i64::MAX, 1..=i64::MAX),
        ("[A-Z0-9-]{3,32}", currency(), "\\PC{0,60}", "\\PC{0,60}"),
        (0i64..4_102_444_800, 0u32..1_000_000),
        (
            prop::option::of(prop::sample::select(vec![
                Channel::Branch,
                Channel::Atm,
                Channel::Online,
            ])),
            prop::option::of("\\PC{0,140}"),
            prop::option::of("[ -~]{0,80}"),
        ),
    )
        .prop_map(
            |(
                (event_id, deposit_id, sequence, amount_minor),
                (account_id, currency, holder_name, email),
                (secs, micros),
                (channel, reference, traceparent),
            )| {
                let time = Utc.timestamp_opt(secs, micros * 1000).unwrap();
                DepositCompleted {
                    event_id: Uuid::from_u128(event_id),
                    sequence,
                    time,
                    traceparent,
                    schema_version: eventbank_events::deposit::CURRENT_VERSION,
                    deposit_id: Uuid::from_u128(deposit_id),
                    account_id: AccountId::parse(&account_id).unwrap(),
                    amount_minor,
                    currency,
                    account: AccountSnapshot { holder_name, email },
                    occurred_at: time,
                    channel,
                    reference,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any bytes with any headers: an event, or a dead-letter copy whose reason header says why.
    #[test]
    fn arbitrary_bytes_and_headers_decode_or_carry_a_reason(
        body in prop_oneof![
            vec(any::<u8>(), 0..2048),
            "\\PC{0,512}".prop_map(String::into_bytes),
        ],
        headers in header_table(),
    ) {
        if let Some(event) = consume(&body, headers.as_ref()) {
            check_event(&event);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A real event with one to three members replaced by arbitrary JSON or removed.
    #[test]
    fn json_ish_mutations_of_an_event_decode_or_carry_a_reason(
        mutations in vec(mutation(), 1..4),
        headers in header_table(),
    ) {
        let value = mutations.iter().fold(sample_json(), mutate);
        let body = serde_json::to_vec(&value).unwrap();
        if let Some(event) = consume(&body, headers.as_ref()) {
            check_event(&event);
        }
    }

    /// The same mutations with the bytes then damaged: a byte replaced, or the body cut short.
    #[test]
    fn damaged_event_bytes_decode_or_carry_a_reason(
        mutation in mutation(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
        headers in header_table(),
    ) {
        let mut body = serde_json::to_vec(&mutate(sample_json(), &mutation)).unwrap();
        let i = at.index(body.len());
        if cut {
            body.truncate(i);
        } else {
            body[i] = byte;
        }
        if let Some(event) = consume(&body, headers.as_ref()) {
            check_event(&event);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A valid event decodes to itself, whatever headers came with it.
    #[test]
    fn valid_events_decode_to_themselves(event in valid_event(), headers in header_table()) {
        let decoded = consume(&event.to_json().unwrap(), headers.as_ref());
        prop_assert_eq!(decoded.as_ref(), Some(&event));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Past the size limit nothing is parsed: the reason names the limit, even for a valid event
    /// padded with whitespace.
    #[test]
    fn oversized_bodies_are_refused_by_size(
        extra in 1usize..4096,
        valid in any::<bool>(),
        headers in header_table(),
    ) {
        let mut body = if valid {
            serde_json::to_vec(&sample_json()).unwrap()
        } else {
            Vec::new()
        };
        body.resize(MAX_MESSAGE_BYTES + extra, b' ');
        let reason = decode_delivery(&body).unwrap_err();
        prop_assert!(
            reason.contains(&format!("exceeds the {MAX_MESSAGE_BYTES}-byte limit")),
            "{}", reason
        );
        check_dead_letter_headers(headers.as_ref(), &reason);
    }
}

#[test]
fn the_sample_event_decodes() {
    let event = consume(&serde_json::to_vec(&sample_json()).unwrap(), None).unwrap();
    check_event(&event);
    // Exactly at the limit it is still read.
    let mut body = serde_json::to_vec(&sample_json()).unwrap();
    body.resize(MAX_MESSAGE_BYTES, b' ');
    assert!(decode_delivery(&body).is_ok());
}

#[test]
fn a_senders_own_reason_header_is_replaced_and_a_long_reason_cut() {
    let mut original = FieldTable::default();
    original.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString("nothing wrong here".into()),
    );
    original.insert("x-mine".into(), AMQPValue::LongLongInt(7));
    let reason = "é".repeat(MAX_REASON_CHARS + 5);
    let headers = dead_letter_headers(Some(&original), &reason, QUEUE, FAILED_AT);
    assert_eq!(
        headers.inner().get(REASON_HEADER),
        Some(&AMQPValue::LongString(
            "é".repeat(MAX_REASON_CHARS).as_str().into()
        ))
    );
    assert_eq!(
        headers.inner().get("x-mine"),
        Some(&AMQPValue::LongLongInt(7))
    );
}

//! Properties of the pure write side: replay = incremental application, snapshot + tail = full
//! replay, and an upcast older stored version reads exactly like the current one.

use account::codec::{self, ACCOUNT_OPENED, DEPOSITED};
use account::domain::{
    self, AccountEvent, AccountState, Decision, Deposit, Deposited, apply, decide, replay,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use eventbank_events::{AccountId, Currency, Money};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

fn currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(vec!["USD", "EUR", "JPY", "BHD", "KWD"])
        .prop_map(|c| Currency::parse(c).unwrap())
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// In-order deposits of one account (amounts, times that may go backwards a little).
fn deposits() -> impl Strategy<Value = Vec<Deposit>> {
    (
        currency(),
        proptest::collection::vec((1i64..1_000_000_000_000, -5_000i64..100_000), 1..60),
    )
        .prop_map(|(currency, steps)| {
            let mut t = base_time();
            steps
                .into_iter()
                .enumerate()
                .map(|(i, (amount_minor, dt_ms))| {
                    t += Duration::milliseconds(dt_ms);
                    Deposit {
                        account_id: AccountId::parse("ACC-0042").unwrap(),
                        deposited: Deposited {
                            event_id: Uuid::from_u128(i as u128 + 1),
                            sequence: i as i64 + 1,
                            deposit_id: Uuid::from_u128(1_000 + i as u128),
                            amount_minor,
                            currency,
                            occurred_at: t,
                        },
                        holder_name: Some("Holder".into()),
                        email: Some("h@example.com".into()),
                    }
                })
                .collect()
        })
}

/// The events the aggregate produces for in-order deposits.
fn events_of(deposits: &[Deposit]) -> Vec<AccountEvent> {
    let mut state = AccountState::default();
    let mut out = Vec::new();
    for d in deposits {
        let Ok(Decision::Apply(events)) = decide(&state, d) else {
            panic!("in-order deposits must apply");
        };
        for e in events {
            state = apply(state, &e);
            out.push(e);
        }
    }
    out
}

/// Through the store's encoding and back.
fn stored_roundtrip(e: &AccountEvent) -> AccountEvent {
    let s = codec::encode(e);
    codec::decode(s.event_type.as_str(), s.schema_version, &s.payload).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Deciding and applying deposit by deposit (what the handler does batch after batch)
    /// ends in the same state as replaying the stored stream from nothing.
    #[test]
    fn replay_of_the_stored_events_equals_incremental_application(deposits in deposits()) {
        let mut incremental = AccountState::default();
        let mut stored = Vec::new();
        for d in &deposits {
            let Ok(Decision::Apply(events)) = decide(&incremental, d) else {
                panic!("in-order deposits must apply");
            };
            for e in &events {
                incremental = apply(incremental, e);
                stored.push(stored_roundtrip(e));
            }
        }
        let replayed = replay(AccountState::default(), &stored);
        prop_assert_eq!(&replayed, &incremental);
        prop_assert_eq!(replayed.version, deposits.len() as i64 + 1);
        prop_assert_eq!(replayed.balance_minor, deposits.iter().map(|d| d.deposited.amount_minor).sum::<i64>());
        prop_assert_eq!(
            replayed.effective_at,
            deposits.iter().map(|d| d.deposited.occurred_at).max()
        );
    }

    /// A snapshot taken after any prefix (serialised as stored), plus the tail, equals the
    /// full replay.
    #[test]
    fn snapshot_plus_tail_equals_full_replay(deposits in deposits(), cut in any::<prop::sample::Index>()) {
        let events = events_of(&deposits);
        let k = cut.index(events.len() + 1);
        let at_k = replay(AccountState::default(), &events[..k]);
        let snapshot = codec::decode_snapshot(codec::SNAPSHOT_VERSION, &codec::encode_snapshot(&at_k)).unwrap();
        prop_assert_eq!(&snapshot, &at_k);
        let from_snapshot = replay(snapshot, &events[k..]);
        prop_assert_eq!(from_snapshot, replay(AccountState::default(), &events));
    }

    /// Every event written in its version-1 shape reads exactly like its current version
    /// (the holder, which v1 never stored, stays unknown), and so does the replayed stream.
    #[test]
    fn upcast_v1_reads_like_the_current_version(deposits in deposits()) {
        let events = events_of(&deposits);
        let mut upcast = Vec::new();
        for e in &events {
            match e {
                AccountEvent::Opened(o) => {
                    let v1 = json!({"currency": o.currency, "opened_at": o.opened_at, "source_event_id": o.source_event_id});
                    let read = codec::decode(ACCOUNT_OPENED, 1, &v1.to_string()).unwrap();
                    let mut expected = o.clone();
                    expected.holder_name = None;
                    expected.email = None;
                    prop_assert_eq!(&read, &AccountEvent::Opened(expected));
                    upcast.push(read);
                }
                AccountEvent::Deposited(d) => {
                    let amount = Money { minor: d.amount_minor, currency: d.currency }.to_decimal_string();
                    let v1 = json!({"event_id": d.event_id, "sequence": d.sequence, "deposit_id": d.deposit_id,
                        "amount": amount, "currency": d.currency, "occurred_at": d.occurred_at});
                    let read = codec::decode(DEPOSITED, 1, &v1.to_string()).unwrap();
                    prop_assert_eq!(&read, e);
                    upcast.push(read);
                }
            }
        }
        // The v1 stream replays to the original stream's balance, version and effective
        // time; only the holder, which v1 never stored, is unknown.
        let from_v1 = domain::replay(AccountState::default(), &upcast);
        let original = domain::replay(AccountState::default(), &events);
        prop_assert_eq!(from_v1.balance_minor, original.balance_minor);
        prop_assert_eq!(from_v1.version, original.version);
        prop_assert_eq!(from_v1.effective_at, original.effective_at);
        prop_assert_eq!(from_v1.last_sequence, original.last_sequence);
        prop_assert_eq!(from_v1.holder_name, None);
        prop_assert!(original.holder_name.is_some());
    }
}

//! The hash chain: canonical entries, link hashes and verification, as pure code.
//!
//! Each audit entry is a canonical text: a JSON object whose fields always appear in the same
//! order with the same formatting (serde serialises struct fields in declaration order, without
//! whitespace; timestamps are RFC 3339 UTC with exactly six fractional digits, the precision
//! Postgres keeps). `hash = SHA-256(prev_hash || entry bytes)`, and the first entry links to
//! [`GENESIS`], 32 zero bytes. The text is stored as it was hashed, so verification never
//! depends on re-serialising anything.
//!
//! The format is frozen: changing a field, its order or its formatting would break the chain,
//! so a future format needs a new field telling verifiers which format an entry uses.

use chrono::{DateTime, SecondsFormat, Utc};
use eventbank_events::{AccountId, DepositCompleted};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The hash the first entry links to.
pub const GENESIS: [u8; 32] = [0; 32];

/// The canonical content of one audit entry. Field order is part of the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalEntry {
    pub position: i64,
    pub event_id: Uuid,
    /// Serialised as the plain id text, as before the type existed: the format is frozen.
    pub account_id: AccountId,
    pub deposit_id: Uuid,
    pub sequence: i64,
    pub amount_minor: i64,
    pub currency: String,
    pub occurred_at: String,
    pub recorded_at: String,
}

/// RFC 3339 in UTC with exactly six fractional digits: `2024-01-01T00:00:00.000000Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl CanonicalEntry {
    pub fn new(position: i64, event: &DepositCompleted, recorded_at: DateTime<Utc>) -> Self {
        Self {
            position,
            event_id: event.event_id,
            account_id: event.account_id.clone(),
            deposit_id: event.deposit_id,
            sequence: event.sequence,
            amount_minor: event.amount_minor,
            currency: event.currency.code().to_owned(),
            occurred_at: timestamp(event.occurred_at),
            recorded_at: timestamp(recorded_at),
        }
    }

    /// The exact text that is hashed and stored. An error is a bug in this struct's types
    /// (strings, integers, uuids), returned rather than hashing a placeholder.
    pub fn to_text(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// `SHA-256(prev || entry)`.
pub fn link_hash(prev: &[u8], entry: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(entry.as_bytes());
    hasher.finalize().into()
}

/// Lower-case hexadecimal, as hashes are shown and compared in text.
pub use hex::encode as hex;

/// One stored row of `audit_log`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredEntry {
    pub position: i64,
    pub event_id: Uuid,
    /// The column as stored, not parsed: the verifier must report a row whose column was
    /// changed (to anything) as a broken link, not fail to read it.
    pub account_id: String,
    pub entry: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub recorded_at: DateTime<Utc>,
}

/// Why verification stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BrokenReason {
    /// A position is missing (a row was deleted, or the chain does not start at 1).
    MissingEntry,
    /// The row does not link to the previous row's hash.
    PrevHashMismatch,
    /// SHA-256(prev || entry) is not the stored hash: the entry or the hash was changed.
    HashMismatch,
    /// The row's columns disagree with its hashed entry (or the entry is not readable).
    EntryMismatch,
    /// The chain head does not point at the last row (rows removed from the end, or the head
    /// was changed).
    HeadMismatch,
}

/// The first broken link found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub position: i64,
    pub reason: BrokenReason,
    pub expected_hash: Option<String>,
    pub stored_hash: Option<String>,
}

/// Walks the chain one row at a time, in position order, with constant memory.
#[derive(Debug, Clone)]
pub struct Verifier {
    next_position: i64,
    prev: Vec<u8>,
    checked: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Self {
            next_position: 1,
            prev: GENESIS.to_vec(),
            checked: 0,
        }
    }

    /// Entries that verified so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Checks the next row; the first error is the first broken link.
    pub fn check(&mut self, row: &StoredEntry) -> Result<(), Broken> {
        let broken = |reason, expected: Option<&[u8]>, stored: Option<&[u8]>| Broken {
            position: row.position.min(self.next_position),
            reason,
            expected_hash: expected.map(hex),
            stored_hash: stored.map(hex),
        };
        if row.position != self.next_position {
            return Err(broken(BrokenReason::MissingEntry, None, None));
        }
        if row.prev_hash != self.prev {
            return Err(broken(
                BrokenReason::PrevHashMismatch,
                Some(&self.prev),
                Some(&row.prev_hash),
            ));
        }
        let computed = link_hash(&self.prev, &row.entry);
        if row.hash != computed {
            return Err(broken(
                BrokenReason::HashMismatch,
                Some(&computed),
                Some(&row.hash),
            ));
        }
        // The hash covers the entry; the columns beside it (used for queries) must say the same.
        let matches = serde_json::from_str::<CanonicalEntry>(&row.entry).is_ok_and(|e| {
            e.position == row.position
                && e.event_id == row.event_id
                && e.account_id.as_str() == row.account_id
                && e.recorded_at == timestamp(row.recorded_at)
        });
        if !matches {
            return Err(broken(BrokenReason::EntryMismatch, None, None));
        }
        self.prev = computed.to_vec();
        self.next_position += 1;
        self.checked += 1;
        Ok(())
    }

    /// After the last row: the head must point at it.
    pub fn finish(self, head_position: i64, head_hash: &[u8]) -> Result<u64, Broken> {
        let last = self.next_position - 1;
        if head_position != last || head_hash != self.prev.as_slice() {
            return Err(Broken {
                // Rows missing at the end: the first missing one is the broken link.
                position: if head_position > last {
                    last + 1
                } else {
                    head_position
                },
                reason: BrokenReason::HeadMismatch,
                expected_hash: Some(hex(&self.prev)),
                stored_hash: Some(hex(head_hash)),
            });
        }
        Ok(self.checked)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use eventbank_events::{AccountId, AccountSnapshot, Currency};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn event() -> DepositCompleted {
        DepositCompleted {
            event_id: Uuid::parse_str("01890000-0000-7000-8000-000000000001").unwrap(),
            sequence: 3,
            time: at("2024-01-01T00:00:00Z"),
            traceparent: None,
            schema_version: 1,
            deposit_id: Uuid::parse_str("01890000-0000-7000-8000-0000000000d1").unwrap(),
            account_id: AccountId::parse("ACC-0042").unwrap(),
            amount_minor: 10_000,
            currency: Currency::parse("USD").unwrap(),
            account: AccountSnapshot {
                holder_name: "Alice".into(),
                email: "alice@example.com".into(),
            },
            occurred_at: at("2024-01-01T12:34:56.123456789Z"),
            channel: None,
            reference: None,
        }
    }

    #[test]
    fn the_canonical_entry_is_byte_for_byte_fixed() {
        let entry = CanonicalEntry::new(1, &event(), at("2024-01-01T12:35:00Z"))
            .to_text()
            .unwrap();
        assert_eq!(
            entry,
            r#"{"position":1,"event_id":"01890000-0000-7000-8000-000000000001","account_id":"ACC-0042","deposit_id":"01890000-0000-7000-8000-0000000000d1","sequence":3,"amount_minor":10000,"currency":"USD","occurred_at":"2024-01-01T12:34:56.123456Z","recorded_at":"2024-01-01T12:35:00.000000Z"}"#
        );
    }

    #[test]
    fn the_link_hash_is_sha256_of_prev_then_entry() {
        // SHA-256 of the 3 bytes "abc" (FIPS 180-2 test vector), split between prev and entry.
        assert_eq!(
            hex(link_hash(b"a", "bc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn chain(n: i64) -> Vec<StoredEntry> {
        let recorded = at("2024-01-01T00:00:00Z");
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|position| {
                let mut e = event();
                e.event_id = Uuid::now_v7();
                let entry = CanonicalEntry::new(position, &e, recorded)
                    .to_text()
                    .unwrap();
                let hash = link_hash(&prev, &entry).to_vec();
                let row = StoredEntry {
                    position,
                    event_id: e.event_id,
                    account_id: e.account_id.to_string(),
                    entry,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                    recorded_at: recorded,
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(rows: &[StoredEntry], head: (i64, &[u8])) -> Result<u64, Broken> {
        let mut v = Verifier::new();
        for row in rows {
            v.check(row)?;
        }
        v.finish(head.0, head.1)
    }

    #[test]
    fn an_intact_chain_verifies_and_the_empty_chain_too() {
        let rows = chain(5);
        let last = rows.last().unwrap().hash.clone();
        assert_eq!(verify(&rows, (5, &last)), Ok(5));
        assert_eq!(verify(&[], (0, &GENESIS)), Ok(0));
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_its_position() {
        let rows = chain(5);
        let head = rows.last().unwrap().hash.clone();

        let mut edited = rows.clone();
        edited[2].entry = edited[2].entry.replace("10000", "1");
        let err = verify(&edited, (5, &head)).unwrap_err();
        assert_eq!((err.position, err.reason), (3, BrokenReason::HashMismatch));
        assert_eq!(err.stored_hash, Some(hex(&rows[2].hash)));

        let mut rehashed = rows.clone();
        rehashed[1].hash = vec![7; 32];
        let err = verify(&rehashed, (5, &head)).unwrap_err();
        assert_eq!((err.position, err.reason), (2, BrokenReason::HashMismatch));

        let mut deleted = rows.clone();
        deleted.remove(3);
        let err = verify(&deleted, (5, &head)).unwrap_err();
        assert_eq!((err.position, err.reason), (4, BrokenReason::MissingEntry));

        let mut relabelled = rows.clone();
        relabelled[0].account_id = "ACC-9999".into();
        let err = verify(&relabelled, (5, &head)).unwrap_err();
        assert_eq!((err.position, err.reason), (1, BrokenReason::EntryMismatch));

        let truncated = &rows[..4];
        let err = verify(truncated, (5, &head)).unwrap_err();
        assert_eq!((err.position, err.reason), (5, BrokenReason::HeadMismatch));
    }
}

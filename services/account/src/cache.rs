//! The aggregates' latest states, kept in memory between batches, so a batch does not read its
//! accounts' streams (snapshot + tail) again when this process wrote them last.
//!
//! A cache must never decide anything on its own: every entry is checked against the store in
//! the batch's transaction, after the accounts are locked. An entry remembers the version it
//! holds and the transaction id (`txid`) of the transaction that appended that version; it is
//! used only when the newest event of the stream has both. So
//! - another replica (or anyone) appended since: the version or the txid differs, the stream
//!   is loaded as before;
//! - the transaction that filled the entry rolled back: its txid never appears in the store,
//!   the entry never matches, the stream is loaded.
//!
//! That is why entries may be written before the transaction commits. Without the cache every
//! batch re-reads the tail of each of its accounts' streams, scattered over the heap: the
//! account service's most expensive statement (BENCHMARKS.md, Optimisations).

use crate::domain::AccountState;
use eventbank_events::AccountId;
use std::collections::HashMap;
use std::sync::Mutex;

/// Accounts kept at most. When full the cache starts over: a miss costs one stream load, and a
/// bounded map keeps the memory of a service with millions of accounts flat (an entry is a few
/// hundred bytes).
pub const CAPACITY: usize = 20_000;

#[derive(Debug, Default)]
pub struct StateCache {
    entries: Mutex<HashMap<AccountId, Cached>>,
}

#[derive(Debug, Clone)]
struct Cached {
    state: AccountState,
    /// The transaction that appended `state.version`.
    txid: i64,
}

/// The newest event of a stream, as the store has it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub version: i64,
    pub txid: i64,
}

impl StateCache {
    /// The cached state of `account_id` if it is exactly the store's `head`.
    pub fn get(&self, account_id: &AccountId, head: Head) -> Option<AccountState> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(account_id)
            .filter(|c| c.state.version == head.version && c.txid == head.txid)
            .map(|c| c.state.clone())
    }

    /// Remembers states appended by transaction `txid` (not yet committed: see the module).
    pub fn put<'a>(
        &self,
        txid: i64,
        states: impl IntoIterator<Item = (&'a AccountId, &'a AccountState)>,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (account_id, state) in states {
            if entries.len() >= CAPACITY && !entries.contains_key(account_id) {
                entries.clear();
            }
            entries.insert(
                account_id.clone(),
                Cached {
                    state: state.clone(),
                    txid,
                },
            );
        }
    }

    /// Forgets everything (a transaction failed in a way that says the store moved under us).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(raw: &str) -> AccountId {
        AccountId::parse(raw).unwrap()
    }

    fn state(version: i64) -> AccountState {
        AccountState {
            version,
            balance_minor: version * 100,
            ..AccountState::default()
        }
    }

    #[test]
    fn an_entry_is_used_only_for_the_same_version_and_transaction() {
        let cache = StateCache::default();
        cache.put(7, [(&id("ACC-0001"), &state(3))]);
        assert_eq!(
            cache.get(
                &id("ACC-0001"),
                Head {
                    version: 3,
                    txid: 7
                }
            ),
            Some(state(3))
        );
        // Someone appended since, or the same version came from another transaction.
        assert_eq!(
            cache.get(
                &id("ACC-0001"),
                Head {
                    version: 4,
                    txid: 9
                }
            ),
            None
        );
        assert_eq!(
            cache.get(
                &id("ACC-0001"),
                Head {
                    version: 3,
                    txid: 8
                }
            ),
            None
        );
        assert_eq!(
            cache.get(
                &id("ACC-0002"),
                Head {
                    version: 3,
                    txid: 7
                }
            ),
            None
        );
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = StateCache::default();
        let ids: Vec<AccountId> = (0..CAPACITY).map(|i| id(&format!("ACC-{i}"))).collect();
        let s = state(1);
        cache.put(1, ids.iter().map(|id| (id, &s)));
        assert_eq!(cache.len(), CAPACITY);
        cache.put(1, [(&id("ACC-NEW"), &s)]);
        assert_eq!(cache.len(), 1);
    }
}

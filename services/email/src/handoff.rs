//! The in-memory hand-off from the consumer to the sender, so that a new email needs no claim.
//!
//! When the sender has room, the handler inserts an email already leased to this process
//! (`next_attempt_at` = the end of the lease, exactly as [`crate::store::claim_due`] leaves a
//! claimed row) in the transaction that records its event, and once that transaction has
//! committed, passes the email here for the sender to deliver. The table stays the source of
//! truth: if the process dies before the send, the lease runs out and any sender claims the
//! email, as after a crash mid-claim.
//!
//! The hand-off is bounded: emails reserved by a transaction under way plus those waiting for
//! the sender never exceed `capacity`. Without room, the handler inserts the email due at once
//! and wakes the sender's claim instead, so a slow sender never makes memory grow.
//!
//! A reservation lives from `reserve` (before the insert) until `committed` moves it to the
//! sender. A transaction that rolls back never reaches `committed`; its reservations are
//! dropped once they are too old to be sent (`start_by`), or replaced when the batch is retried.
//!
//! The way back: the sender offers the delivery records of a few emails ([`Handoff::sent`])
//! to the consumer's next transaction, which writes them with its events
//! ([`eventbank_runtime::piggyback`]), so at light load an email costs the consumer's commit
//! and no commit of its own for the delivery record.

use crate::store::Outgoing;
use eventbank_runtime::piggyback::Piggyback;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

/// Shared by the handler and the sender of one process. Cheap to clone.
#[derive(Clone)]
pub struct Handoff {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    lease: Duration,
    state: Mutex<State>,
    /// Emails are ready in memory. A permit is stored when nobody waits: no wake-up is lost.
    ready: Notify,
    /// Emails were queued in the table without a lease: the sender should claim.
    queued: Notify,
    /// Delivered emails whose `sent` record rides the consumer's next transaction.
    sent: Piggyback<Uuid>,
}

#[derive(Default)]
struct State {
    /// Reserved by a transaction not known to have committed, by event id. `email` is set once
    /// the insert has written the row leased.
    pending: HashMap<Uuid, Pending>,
    /// Committed, leased to this process, waiting for the sender.
    ready: VecDeque<Handed>,
    /// The sender has stopped: nothing more is reserved.
    closed: bool,
}

struct Pending {
    start_by: Instant,
    email: Option<Outgoing>,
}

/// An email leased to this process by the transaction that inserted it.
#[derive(Debug)]
pub struct Handed {
    pub email: Outgoing,
    /// Half the lease after the reservation, which precedes the insert that set the lease: a
    /// send started before this has at least half the lease to finish before another sender
    /// may claim the email (the margin of a claimed round, see [`crate::sender`]).
    pub start_by: Instant,
}

impl Handoff {
    /// A hand-off of at most `capacity` emails leased for `lease` (the sender's lease). A
    /// capacity of 0 turns it off: every email is queued for the claim.
    pub fn new(capacity: usize, lease: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity,
                lease,
                state: Mutex::new(State::default()),
                ready: Notify::new(),
                queued: Notify::new(),
                sent: Piggyback::default(),
            }),
        }
    }

    /// Delivery records on their way back to the consumer's transactions.
    pub fn sent(&self) -> &Piggyback<Uuid> {
        &self.inner.sent
    }

    /// How long a handed-off email is leased for.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: every change is a single step.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves room for as many of `ids` as fit, in order. Answers, per id, whether it is to
    /// be inserted leased (true) or queued for the claim (false).
    pub fn reserve(&self, ids: &[Uuid]) -> Vec<bool> {
        let now = Instant::now();
        let start_by = now + self.inner.lease / 2;
        let mut state = self.state();
        state.pending.retain(|_, p| p.start_by > now);
        let mut used = state.pending.len() + state.ready.len();
        let closed = state.closed;
        ids.iter()
            .map(|id| {
                // A retried batch replaces its own earlier reservation without using more room.
                let room =
                    !closed && (state.pending.contains_key(id) || used < self.inner.capacity);
                if room {
                    let earlier = state.pending.insert(
                        *id,
                        Pending {
                            start_by,
                            email: None,
                        },
                    );
                    if earlier.is_none() {
                        used += 1;
                    }
                } else {
                    // Whatever an earlier attempt reserved, this row will be inserted due: only
                    // the claim may send it.
                    state.pending.remove(id);
                }
                room
            })
            .collect()
    }

    /// The insert failed: drops the reservations of `ids`.
    pub fn cancel(&self, ids: &[Uuid]) {
        let mut state = self.state();
        for id in ids {
            state.pending.remove(id);
        }
    }

    /// The insert has written the rows of `reserved` leased; `inserted` are the emails it
    /// really inserted (an event whose email already existed is not among them and is dropped:
    /// only the claim may send that one).
    pub fn inserted(&self, reserved: &[Uuid], inserted: Vec<Outgoing>) {
        let mut state = self.state();
        let mut by_id: HashMap<Uuid, Outgoing> =
            inserted.into_iter().map(|e| (e.event_id, e)).collect();
        for id in reserved {
            match by_id.remove(id) {
                Some(email) => {
                    if let Some(pending) = state.pending.get_mut(id) {
                        pending.email = Some(email);
                    }
                }
                None => {
                    state.pending.remove(id);
                }
            }
        }
    }

    /// The transaction that inserted `ids` has committed: their leased emails go to the sender.
    /// Answers how many were handed off; the others were queued, and the sender is told to
    /// claim them.
    pub fn committed(&self, ids: impl IntoIterator<Item = Uuid>) -> usize {
        let mut handed = 0;
        let mut queued = false;
        {
            let mut state = self.state();
            for id in ids {
                match state.pending.remove(&id) {
                    Some(Pending {
                        start_by,
                        email: Some(email),
                    }) if !state.closed => {
                        state.ready.push_back(Handed { email, start_by });
                        handed += 1;
                    }
                    // Not leased, or leased with no sender left to take it (its lease brings
                    // it back to the claim).
                    _ => queued = true,
                }
            }
        }
        if handed > 0 {
            self.inner.ready.notify_one();
        }
        if queued {
            self.inner.queued.notify_one();
        }
        handed
    }

    /// Up to `max` emails handed off, oldest first.
    pub fn take(&self, max: usize) -> Vec<Handed> {
        let mut state = self.state();
        let n = max.min(state.ready.len());
        state.ready.drain(..n).collect()
    }

    /// Emails committed and waiting for the sender to take them.
    pub fn waiting_for_sender(&self) -> usize {
        self.state().ready.len()
    }

    /// Emails reserved or waiting for the sender (the bound applies to this).
    pub fn len(&self) -> usize {
        let state = self.state();
        state.pending.len() + state.ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when emails have been handed off.
    pub async fn ready(&self) {
        self.inner.ready.notified().await;
    }

    /// Resolves when emails were queued in the table for the claim.
    pub async fn queued(&self) {
        self.inner.queued.notified().await;
    }

    /// The sender stops: nothing more is reserved, and the emails waiting are returned so it
    /// can make them due at once.
    pub fn close(&self) -> Vec<Handed> {
        let mut state = self.state();
        state.closed = true;
        state.pending.clear();
        state.ready.drain(..).collect()
    }
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("capacity", &self.inner.capacity)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    #[test]
    fn room_is_bounded_by_reservations_and_emails_waiting() {
        let handoff = Handoff::new(3, Duration::from_secs(60));
        let first = ids(2);
        assert_eq!(handoff.reserve(&first), vec![true, true]);
        handoff.inserted(
            &first,
            first.iter().copied().map(Outgoing::sample).collect(),
        );
        assert_eq!(handoff.committed(first.iter().copied()), 2);
        let second = ids(3);
        assert_eq!(handoff.reserve(&second), vec![true, false, false]);
        assert_eq!(handoff.take(10).len(), 2);
        // Taken by the sender, they leave room; the first reservation is replaced, not doubled.
        assert_eq!(handoff.reserve(&second), vec![true, true, true]);
        assert_eq!(handoff.len(), 3);
    }

    #[test]
    fn only_emails_reserved_and_inserted_in_the_committed_transaction_are_handed_off() {
        let handoff = Handoff::new(2, Duration::from_secs(60));
        let batch = ids(3);
        assert_eq!(handoff.reserve(&batch), vec![true, true, false]);
        // The second email existed already: the insert skipped it.
        handoff.inserted(&batch[..2], vec![Outgoing::sample(batch[0])]);
        assert_eq!(handoff.committed(batch.iter().copied()), 1);
        let handed = handoff.take(10);
        assert_eq!(handed.len(), 1);
        assert_eq!(handed[0].email.event_id, batch[0]);
        assert!(handoff.is_empty());
    }

    #[test]
    fn once_the_sender_has_stopped_nothing_is_reserved_or_handed_off() {
        let handoff = Handoff::new(2, Duration::from_secs(60));
        let a = Uuid::now_v7();
        assert_eq!(handoff.reserve(&[a]), vec![true]);
        handoff.inserted(&[a], vec![Outgoing::sample(a)]);
        assert!(handoff.close().is_empty());
        // Committed after the sender stopped: left to its lease, not to a sender that is gone.
        assert_eq!(handoff.committed([a]), 0);
        assert_eq!(handoff.reserve(&[Uuid::now_v7()]), vec![false]);
        assert!(handoff.take(10).is_empty());
    }

    #[test]
    fn reservations_of_transactions_that_never_committed_expire() {
        let handoff = Handoff::new(1, Duration::from_millis(2));
        let a = Uuid::now_v7();
        assert_eq!(handoff.reserve(&[a]), vec![true]);
        // Full until the reservation expires; then there is room again.
        let b = Uuid::now_v7();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while handoff.reserve(&[b]) != vec![true] {
            assert!(std::time::Instant::now() < deadline, "it never expired");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(handoff.committed([a]), 0, "the expired reservation is gone");
    }

    #[test]
    fn a_disabled_hand_off_queues_everything() {
        let handoff = Handoff::new(0, Duration::from_secs(60));
        assert_eq!(handoff.reserve(&ids(2)), vec![false, false]);
    }
}

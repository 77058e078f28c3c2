//! Small follow-up writes that ride another transaction's commit instead of paying for their own.
//!
//! Some writes only record what already happened elsewhere, such as the email sender's "this
//! email was delivered". Each is cheap, but written on its own it costs a commit (a WAL flush),
//! and at light load that is one more commit per deposit. The same process commits other
//! transactions on the same database all the time (the email service's consumer, through
//! [`crate::consumer::Handler::ride_along`]), so the owner of such writes *offers* them here,
//! the next of those transactions *boards* them, writes them with its own work, and reports the
//! ride *landed* once it has committed. What no transaction took within the owner's wait, the owner
//! writes itself, so a quiet process still records everything, only a little later.
//!
//! The writes must be idempotent (a second write of the same mark changes nothing), and a
//! transaction that carried a ride but did not commit (rolled back, failed, dropped) hands its
//! items straight back to the owner, which writes them itself rather than offering them again:
//! a ride can never make another transaction fail twice.

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Items offered for a ride. Cheap to clone; one per kind of write.
pub struct Piggyback<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Piggyback<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<T> {
    state: Mutex<State<T>>,
    /// Something landed or came back.
    changed: Notify,
}

struct State<T> {
    /// Offered, not boarded yet.
    waiting: Vec<T>,
    /// Written by a transaction that committed, not yet seen by their owner.
    landed: HashSet<T>,
    /// Boarded by a transaction that did not commit: for the owner to write itself.
    returned: Vec<T>,
}

impl<T> Default for Piggyback<T> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    waiting: Vec::new(),
                    landed: HashSet::new(),
                    returned: Vec::new(),
                }),
                changed: Notify::new(),
            }),
        }
    }
}

/// Items a transaction carries. Dropped without [`Ride::landed`] (the transaction did not
/// commit), it hands them back to their owner.
pub struct Ride<T: Eq + Hash> {
    items: Vec<T>,
    owner: Piggyback<T>,
}

impl<T: Eq + Hash> Ride<T> {
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// The transaction that wrote the items has committed.
    pub fn landed(mut self) {
        let items = std::mem::take(&mut self.items);
        self.owner.state().landed.extend(items);
        self.owner.inner.changed.notify_waiters();
    }
}

impl<T: Eq + Hash> Drop for Ride<T> {
    fn drop(&mut self) {
        if self.items.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.items);
        self.owner.state().returned.extend(items);
        self.owner.inner.changed.notify_waiters();
    }
}

impl<T> Piggyback<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Every change is a single step: a panic elsewhere leaves the state consistent.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Eq + Hash + Clone> Piggyback<T> {
    /// Items offered and not boarded yet.
    pub fn waiting(&self) -> usize {
        self.state().waiting.len()
    }

    /// Takes every item waiting for a ride, for the caller's transaction to write; `None` when
    /// nothing waits.
    pub fn board(&self) -> Option<Ride<T>> {
        let items = std::mem::take(&mut self.state().waiting);
        (!items.is_empty()).then(|| Ride {
            items,
            owner: self.clone(),
        })
    }

    /// Offers `items` and waits until `until` resolves (the longest the caller lets them wait)
    /// for transactions to write them. Answers the items the caller must write itself: those
    /// still waiting then, and those whose transaction did not commit (at once). Items boarded
    /// when `until` resolves are waited for until their transaction ends one way or the other.
    pub async fn ride(&self, items: Vec<T>, until: impl Future<Output = ()>) -> Vec<T> {
        let mut outstanding: HashSet<T> = items.iter().cloned().collect();
        self.state().waiting.extend(items);
        tokio::pin!(until);
        let mut expired = false;
        let mut own = Vec::new();
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read: a change after the read still wakes us.
            changed.as_mut().enable();
            {
                let mut state = self.state();
                outstanding.retain(|item| !state.landed.remove(item));
                take_mine(&mut state.returned, &mut outstanding, &mut own);
                if expired {
                    take_mine(&mut state.waiting, &mut outstanding, &mut own);
                }
            }
            if outstanding.is_empty() {
                return own;
            }
            if expired {
                changed.await;
            } else {
                tokio::select! {
                    _ = changed => {}
                    _ = &mut until => expired = true,
                }
            }
        }
    }
}

/// Moves the items of `from` that are in `outstanding` to `own`.
fn take_mine<T: Eq + Hash>(from: &mut Vec<T>, outstanding: &mut HashSet<T>, own: &mut Vec<T>) {
    own.extend(from.extract_if(.., |item| outstanding.remove(item)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::{Instant, sleep};

    const LONG: Duration = Duration::from_secs(30);

    /// Boards whatever is offered, as soon as it is.
    async fn board_when_offered(piggyback: &Piggyback<u32>) -> Ride<u32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(ride) = piggyback.board() {
                return ride;
            }
            assert!(Instant::now() < deadline, "nothing was offered");
            sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn items_written_by_a_committed_transaction_are_not_the_owners_to_write() {
        let piggyback = Piggyback::default();
        let other = piggyback.clone();
        let ride = tokio::spawn(async move { other.ride(vec![1, 2], sleep(LONG)).await });
        let boarded = board_when_offered(&piggyback).await;
        assert_eq!(boarded.items(), &[1, 2]);
        boarded.landed();
        let own = tokio::time::timeout(Duration::from_secs(5), ride)
            .await
            .expect("the owner stops waiting once they landed")
            .expect("ride");
        assert!(own.is_empty());
        assert!(piggyback.board().is_none(), "nothing is offered twice");
    }

    #[tokio::test]
    async fn items_of_a_transaction_that_did_not_commit_go_back_to_the_owner_at_once() {
        let piggyback = Piggyback::default();
        let other = piggyback.clone();
        let ride = tokio::spawn(async move { other.ride(vec![7], sleep(LONG)).await });
        drop(board_when_offered(&piggyback).await);
        let own = tokio::time::timeout(Duration::from_secs(5), ride)
            .await
            .expect("returned before the wait ends")
            .expect("ride");
        assert_eq!(own, vec![7]);
        assert!(piggyback.board().is_none(), "not offered for a second ride");
    }

    #[tokio::test]
    async fn items_nobody_boards_are_the_owners_once_the_wait_ends() {
        let piggyback: Piggyback<u32> = Piggyback::default();
        let started = Instant::now();
        let own = piggyback
            .ride(vec![3, 4], sleep(Duration::from_millis(50)))
            .await;
        assert_eq!(own, vec![3, 4]);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(piggyback.board().is_none(), "withdrawn, not left waiting");
    }

    #[tokio::test]
    async fn items_boarded_when_the_wait_ends_are_waited_for() {
        let piggyback = Piggyback::default();
        let other = piggyback.clone();
        let mut ride = tokio::spawn(async move {
            other
                .ride(vec![5, 6], sleep(Duration::from_millis(20)))
                .await
        });
        let boarded = board_when_offered(&piggyback).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut ride)
                .await
                .is_err(),
            "ended while the boarded items' transaction was still open"
        );
        boarded.landed();
        let own = tokio::time::timeout(Duration::from_secs(5), ride)
            .await
            .expect("ends when they land")
            .expect("ride");
        assert!(own.is_empty());
    }
}

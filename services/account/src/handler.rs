//! The ordering rule, applied to a whole batch at once. For each deposit, against its account's
//! last applied sequence (`last`):
//! - `sequence <= last`: a duplicate (e.g. the same deposit republished under another event id):
//!   acknowledged and skipped;
//! - `sequence == last + 1`: applied (events appended, projections updated), then every parked
//!   successor that is now contiguous is applied too;
//! - `sequence > last + 1`: an earlier deposit is missing: parked in `pending_events` until the
//!   gap fills (a gap open too long is reported by [`crate::gaps`]).
//!
//! One batch is a handful of statements whatever its size: lock the batch's accounts, load their
//! streams (snapshot + tail) and parked deposits, decide everything in memory with [`plan`]
//! (pure), then append all new events in one statement, write the projections and NOTIFY in
//! one, and the snapshots and parking changes in one each, all in the consumer runtime's
//! transaction.
//!
//! Concurrency: the per-account advisory locks serialise the handling of one account across
//! partitions and replicas (which single-active-consumer queues already make rare), so a parked
//! deposit can never be missed by a concurrent apply. The event store's primary key is the
//! last line: an append at a version someone else wrote fails the transaction (a conflict), and
//! the runtime retries the events, which then read the other writer's result.

use crate::cache::{Head, StateCache};
use crate::domain::{self, AccountEvent, AccountState, Decision, Deposit, Rejection};
use crate::projection::{self, BalanceRow, TxnRow};
use crate::store::{self, NewEvent, StoreError};
use eventbank_events::{AccountId, DepositCompleted};
use eventbank_runtime::consumer::{Handler, HandlerError};
use sqlx::PgConnection;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

/// Default number of events between two snapshots of a stream.
pub const DEFAULT_SNAPSHOT_EVERY: i64 = 50;

pub struct AccountHandler {
    /// A snapshot is written whenever a stream's version crosses a multiple of this.
    pub snapshot_every: i64,
    /// The latest states this process saw, shared by its partitions (see [`StateCache`]).
    pub cache: StateCache,
    /// Milliseconds from an event's creation at the producer to its commit here (the newest
    /// event of the last batch): how far the read model trails the writes.
    pub projection_lag_ms: prometheus_client::metrics::gauge::Gauge,
}

impl Default for AccountHandler {
    fn default() -> Self {
        Self {
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            cache: StateCache::default(),
            projection_lag_ms: Default::default(),
        }
    }
}

impl AccountHandler {
    pub fn new(snapshot_every: i64) -> Self {
        Self {
            snapshot_every: snapshot_every.max(1),
            cache: StateCache::default(),
            projection_lag_ms: Default::default(),
        }
    }
}

impl Handler for AccountHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[DepositCompleted],
    ) -> Result<(), HandlerError> {
        let deposits: Vec<Deposit> = events.iter().map(Deposit::from_event).collect();
        apply_batch(tx, &deposits, self.snapshot_every, &self.cache).await
    }

    fn committed(&self, events: &[DepositCompleted]) {
        if let Some(newest) = events.iter().map(|e| e.time).max() {
            let lag = chrono::Utc::now()
                .signed_duration_since(newest)
                .num_milliseconds();
            self.projection_lag_ms.set(lag.max(0));
        }
    }
}

fn store_error(e: StoreError) -> HandlerError {
    match e {
        StoreError::Database(e) => HandlerError::Database(e),
        other => HandlerError::Other(other.into()),
    }
}

/// Applies deposits (in delivery order) under the ordering rule, inside the caller's
/// transaction.
pub async fn apply_batch(
    tx: &mut PgConnection,
    deposits: &[Deposit],
    snapshot_every: i64,
    cache: &StateCache,
) -> Result<(), HandlerError> {
    let mut accounts: Vec<AccountId> = deposits.iter().map(|d| d.account_id.clone()).collect();
    accounts.sort();
    accounts.dedup();
    store::lock_accounts(tx, &accounts).await?;
    let heads = store::stream_heads(tx, &accounts).await?;
    let parked = store::load_parked(tx, &heads.parked).await?;
    let txid = heads.txid;
    let states = current_states(tx, &accounts, heads.heads, cache).await?;
    let plan = plan(states, parked, deposits).map_err(rejected)?;
    if !plan.appends.is_empty() {
        write_appended(tx, &plan, snapshot_every).await?;
        // This transaction appended these versions: entries tagged with its id match only if
        // it commits.
        cache.put(txid, plan.changed.iter().map(|c| (&c.account_id, &c.state)));
    }
    let to_park: Vec<&Deposit> = plan.park.iter().collect();
    store::park(tx, &to_park).await?;
    store::unpark(tx, &plan.unpark).await?;
    log(&plan);
    Ok(())
}

/// The current state of each of the (locked) accounts, from their streams' heads. Streams
/// whose newest event this process cached are not read again; the rest are loaded (snapshot +
/// tail) and cached at the head they were read at.
async fn current_states(
    tx: &mut PgConnection,
    accounts: &[AccountId],
    heads: HashMap<AccountId, Head>,
    cache: &StateCache,
) -> Result<HashMap<AccountId, AccountState>, HandlerError> {
    let mut states = HashMap::with_capacity(accounts.len());
    let mut misses = Vec::new();
    for account_id in accounts {
        match heads
            .get(account_id)
            .and_then(|h| cache.get(account_id, *h))
        {
            Some(state) => {
                states.insert(account_id.clone(), state);
            }
            None => misses.push(account_id.clone()),
        }
    }
    if !misses.is_empty() {
        let loaded = store::load_streams(tx, &misses)
            .await
            .map_err(store_error)?;
        for (account_id, l) in loaded {
            if let Some(head) = heads
                .get(&account_id)
                .filter(|h| h.version == l.state.version)
            {
                cache.put(head.txid, [(&account_id, &l.state)]);
            }
            states.insert(account_id, l.state);
        }
    }
    Ok(states)
}

fn rejected(unplannable: Box<(Deposit, Rejection)>) -> HandlerError {
    let (deposit, rejection) = *unplannable;
    let d = &deposit.deposited;
    HandlerError::Rejected(format!(
        "deposit {} (event {}, account {}, sequence {}): {rejection}",
        d.deposit_id, d.event_id, deposit.account_id, d.sequence
    ))
}

/// Appends the plan's events, then writes what follows from them: the projections (with their
/// NOTIFY) and a snapshot of each stream whose version crossed a multiple of `snapshot_every`.
async fn write_appended(
    tx: &mut PgConnection,
    plan: &Plan,
    snapshot_every: i64,
) -> Result<(), HandlerError> {
    let recorded_at = store::append(tx, &plan.appends)
        .await
        .map_err(store_error)?;
    let mut balances: Vec<BalanceRow> = Vec::with_capacity(plan.changed.len());
    let mut versions = Vec::with_capacity(plan.changed.len());
    let mut snapshots: Vec<(&AccountId, &AccountState)> = Vec::new();
    for c in &plan.changed {
        if let Some(row) = projection::balance_row(&c.account_id, &c.state, recorded_at) {
            balances.push(row);
            versions.push(c.state.version);
        }
        if c.before_version / snapshot_every < c.state.version / snapshot_every {
            snapshots.push((&c.account_id, &c.state));
        }
    }
    let txns: Vec<TxnRow> = plan
        .appends
        .iter()
        .filter_map(|e| match &e.event {
            AccountEvent::Deposited(d) => Some(projection::txn_row(&e.account_id, d, recorded_at)),
            AccountEvent::Opened(_) => None,
        })
        .collect();
    projection::write_live(tx, &balances, &versions, &txns).await?;
    store::write_snapshots(tx, &snapshots)
        .await
        .map_err(store_error)?;
    Ok(())
}

fn log(plan: &Plan) {
    for outcome in &plan.outcomes {
        match outcome {
            Outcome::Applied {
                deposit,
                balance_minor,
                from_parking,
            } => {
                let d = &deposit.deposited;
                let message = if *from_parking {
                    "parked event applied after the gap filled"
                } else {
                    "balance updated"
                };
                tracing::info!(event_id = %d.event_id, account_id = %deposit.account_id, deposit_id = %d.deposit_id,
                sequence = d.sequence, amount_minor = d.amount_minor, balance_minor, "{message}")
            }
            Outcome::Duplicate {
                deposit,
                last_sequence,
            } => {
                let d = &deposit.deposited;
                tracing::info!(event_id = %d.event_id, account_id = %deposit.account_id, deposit_id = %d.deposit_id,
                sequence = d.sequence, last = last_sequence, "sequence already applied; skipped")
            }
            Outcome::Parked { deposit, expected } => {
                let d = &deposit.deposited;
                tracing::warn!(event_id = %d.event_id, account_id = %deposit.account_id, deposit_id = %d.deposit_id,
                sequence = d.sequence, expected, "sequence gap: event parked until the gap fills")
            }
            Outcome::StuckParked { deposit, reason } => {
                let d = &deposit.deposited;
                tracing::error!(event_id = %d.event_id, account_id = %deposit.account_id, deposit_id = %d.deposit_id,
                sequence = d.sequence, reason = %reason, "parked event cannot be applied; it stays parked and its gap open")
            }
        }
    }
}

/// An account whose state this batch changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub account_id: AccountId,
    pub before_version: i64,
    pub state: AccountState,
}

/// What happened to one deposit, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        deposit: Deposit,
        balance_minor: i64,
        from_parking: bool,
    },
    Duplicate {
        deposit: Deposit,
        last_sequence: i64,
    },
    Parked {
        deposit: Deposit,
        expected: i64,
    },
    StuckParked {
        deposit: Deposit,
        reason: Rejection,
    },
}

/// Everything one batch decided, before any write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New events, in the order they are appended.
    pub appends: Vec<NewEvent>,
    /// Accounts whose state changed, in account order.
    pub changed: Vec<Changed>,
    /// Deposits to park.
    pub park: Vec<Deposit>,
    /// Parked rows to remove (applied now, or stale).
    pub unpark: Vec<(AccountId, i64)>,
    pub outcomes: Vec<Outcome>,
}

/// One account while the plan works on it.
struct Work {
    before_version: i64,
    state: AccountState,
    /// sequence -> (deposit, already stored in pending_events)
    parked: BTreeMap<i64, (Deposit, bool)>,
}

/// The batch's accounts: the states given, taken into [`Work`] when first met.
struct Accounts {
    states: HashMap<AccountId, AccountState>,
    work: BTreeMap<AccountId, Work>,
}

impl Accounts {
    fn get(&mut self, account_id: &AccountId) -> &mut Work {
        let states = &mut self.states;
        self.work.entry(account_id.clone()).or_insert_with(|| {
            let state = states.remove(account_id).unwrap_or_default();
            Work {
                before_version: state.version,
                state,
                parked: BTreeMap::new(),
            }
        })
    }
}

/// The ordering rule over a batch, as pure code: given the accounts' current states and parked
/// deposits, and the batch in delivery order, what to append, park and unpark. A deposit that
/// can never be applied fails the whole plan (the runtime then isolates it and dead-letters it
/// with the reason); a parked one that cannot be applied stays parked.
pub fn plan(
    states: HashMap<AccountId, AccountState>,
    parked: Vec<Deposit>,
    incoming: &[Deposit],
) -> Result<Plan, Box<(Deposit, Rejection)>> {
    let mut accounts = Accounts {
        states,
        work: BTreeMap::new(),
    };
    let mut out = Plan::default();
    for p in parked {
        let w = accounts.get(&p.account_id);
        w.parked.insert(p.sequence(), (p, true));
    }
    // Parked deposits that are already contiguous (possible only after an interrupted
    // history) are applied first, so they can never stay behind.
    for (account_id, w) in &mut accounts.work {
        drain(account_id, w, &mut out);
    }
    for cmd in incoming {
        let w = accounts.get(&cmd.account_id);
        let decision = domain::decide(&w.state, cmd).map_err(|r| Box::new((cmd.clone(), r)))?;
        follow(cmd, decision, w, &mut out);
    }
    for (account_id, w) in accounts.work {
        settle(account_id, w, &mut out);
    }
    Ok(out)
}

/// Carries out the decision on an incoming deposit.
fn follow(cmd: &Deposit, decision: Decision, w: &mut Work, out: &mut Plan) {
    match decision {
        Decision::Duplicate { last_sequence } => out.outcomes.push(Outcome::Duplicate {
            deposit: cmd.clone(),
            last_sequence,
        }),
        Decision::Early { expected } => match w.parked.entry(cmd.sequence()) {
            Entry::Occupied(_) => out.outcomes.push(Outcome::Duplicate {
                deposit: cmd.clone(),
                last_sequence: w.state.last_sequence,
            }),
            Entry::Vacant(slot) => {
                slot.insert((cmd.clone(), false));
                out.outcomes.push(Outcome::Parked {
                    deposit: cmd.clone(),
                    expected,
                });
            }
        },
        Decision::Apply(events) => {
            append(&cmd.account_id, w, events, out);
            out.outcomes.push(Outcome::Applied {
                deposit: cmd.clone(),
                balance_minor: w.state.balance_minor,
                from_parking: false,
            });
            drain(&cmd.account_id, w, out);
        }
    }
}

/// What the batch leaves of an account: its parked rows to write or remove, and its change.
fn settle(account_id: AccountId, w: Work, out: &mut Plan) {
    for (sequence, (deposit, stored)) in w.parked {
        if sequence <= w.state.last_sequence {
            // Applied through another copy: a stored row is stale, a new one never stored.
            if stored {
                out.unpark.push((account_id.clone(), sequence));
            }
        } else if !stored {
            out.park.push(deposit);
        }
    }
    if w.state.version != w.before_version {
        out.changed.push(Changed {
            account_id,
            before_version: w.before_version,
            state: w.state,
        });
    }
}

fn append(account_id: &AccountId, w: &mut Work, events: Vec<AccountEvent>, out: &mut Plan) {
    for event in events {
        w.state = domain::apply(std::mem::take(&mut w.state), &event);
        out.appends.push(NewEvent {
            account_id: account_id.clone(),
            version: w.state.version,
            event,
        });
    }
}

/// Applies parked successors while they are contiguous.
fn drain(account_id: &AccountId, w: &mut Work, out: &mut Plan) {
    loop {
        let next = w.state.last_sequence + 1;
        let Some((deposit, stored)) = w.parked.remove(&next) else {
            return;
        };
        match domain::decide(&w.state, &deposit) {
            Ok(Decision::Apply(events)) => {
                append(account_id, w, events, out);
                if stored {
                    out.unpark.push((account_id.clone(), deposit.sequence()));
                }
                out.outcomes.push(Outcome::Applied {
                    deposit,
                    balance_minor: w.state.balance_minor,
                    from_parking: true,
                });
            }
            Ok(_) => {
                // Unreachable (its sequence is exactly the next one); keep it parked.
                w.parked.insert(next, (deposit, stored));
                return;
            }
            Err(reason) => {
                out.outcomes.push(Outcome::StuckParked {
                    deposit: deposit.clone(),
                    reason,
                });
                w.parked.insert(next, (deposit, stored));
                return;
            }
        }
    }
}

//! The account aggregate as pure code: its events, its state, `apply(state, event)` and the
//! one command (`Deposit`) validated against the state. No I/O here: the store loads the
//! events, this module folds them and decides, the handler writes what it decided.
//!
//! A stream begins with [`AccountOpened`] (written together with the first deposit) followed by
//! one [`Deposited`] per applied deposit, so stream version = last applied sequence + 1.

use chrono::{DateTime, Utc};
use eventbank_events::{AccountId, Currency, DepositCompleted};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The account exists in the account service's books from its first applied deposit on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOpened {
    pub currency: Currency,
    /// Carried by the deposit event (event-carried state transfer); unknown for streams
    /// backfilled from the first read model, which never stored it.
    pub holder_name: Option<String>,
    pub email: Option<String>,
    /// When the opening deposit occurred.
    pub opened_at: DateTime<Utc>,
    /// The `DepositCompleted` that opened the account.
    pub source_event_id: Uuid,
}

/// One deposit applied to the balance of record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposited {
    /// The `DepositCompleted` event id (also the key of the `transactions` projection).
    pub event_id: Uuid,
    /// The deposit service's per-account sequence number.
    pub sequence: i64,
    pub deposit_id: Uuid,
    pub amount_minor: i64,
    pub currency: Currency,
    pub occurred_at: DateTime<Utc>,
}

/// Everything that can happen to an account stream, in its current (in-memory) shape. Stored
/// forms and their older versions are the codec's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    Opened(AccountOpened),
    Deposited(Deposited),
}

impl AccountEvent {
    /// The business time of the event.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            AccountEvent::Opened(e) => e.opened_at,
            AccountEvent::Deposited(e) => e.occurred_at,
        }
    }
}

/// The state of one account after `version` events.
///
/// Serialised as the snapshot body; a field added later must be `#[serde(default)]` or the
/// snapshot schema version bumped (old snapshots are then ignored and the stream replayed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    /// Number of events applied (0: the stream does not exist).
    pub version: i64,
    /// Set by `AccountOpened`; `None` until then.
    pub currency: Option<Currency>,
    pub holder_name: Option<String>,
    pub email: Option<String>,
    pub opened_at: Option<DateTime<Utc>>,
    pub balance_minor: i64,
    /// Highest deposit sequence applied; deposits apply strictly in sequence order.
    pub last_sequence: i64,
    pub deposit_count: i64,
    /// The latest `occurred_at` of the events applied. This state holds from this instant on:
    /// point-in-time queries count an event from its own time or its predecessor's, whichever
    /// is later, so the balance at an instant is always a prefix of the stream.
    pub effective_at: Option<DateTime<Utc>>,
}

impl AccountState {
    pub fn is_open(&self) -> bool {
        self.currency.is_some()
    }
}

/// Folds one event into the state. Total: events are facts that `decide` already validated,
/// so nothing here can fail (the balance saturates rather than wraps, which `decide` makes
/// unreachable).
pub fn apply(mut state: AccountState, event: &AccountEvent) -> AccountState {
    state.version += 1;
    let occurred_at = event.occurred_at();
    state.effective_at = Some(
        state
            .effective_at
            .map_or(occurred_at, |t| t.max(occurred_at)),
    );
    match event {
        AccountEvent::Opened(e) => {
            state.currency = Some(e.currency);
            state.holder_name.clone_from(&e.holder_name);
            state.email.clone_from(&e.email);
            state.opened_at = Some(e.opened_at);
        }
        AccountEvent::Deposited(e) => {
            state.balance_minor = state.balance_minor.saturating_add(e.amount_minor);
            state.last_sequence = e.sequence;
            state.deposit_count += 1;
        }
    }
    state
}

/// Folds a sequence of events from `state`.
pub fn replay<'a>(
    state: AccountState,
    events: impl IntoIterator<Item = &'a AccountEvent>,
) -> AccountState {
    events.into_iter().fold(state, apply)
}

/// The command: apply this deposit (from a `DepositCompleted`) to the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    pub account_id: AccountId,
    /// The event that applying it records.
    pub deposited: Deposited,
    /// Carried for the `AccountOpened` of a first deposit; not kept when parked.
    pub holder_name: Option<String>,
    pub email: Option<String>,
}

impl Deposit {
    pub fn from_event(e: &DepositCompleted) -> Self {
        Self {
            account_id: e.account_id.clone(),
            deposited: Deposited {
                event_id: e.event_id,
                sequence: e.sequence,
                deposit_id: e.deposit_id,
                amount_minor: e.amount_minor,
                currency: e.currency,
                occurred_at: e.occurred_at,
            },
            holder_name: Some(e.account.holder_name.clone()),
            email: Some(e.account.email.clone()),
        }
    }

    /// The deposit service's per-account sequence number.
    pub fn sequence(&self) -> i64 {
        self.deposited.sequence
    }
}

/// What the ordering rule makes of a deposit, given the account's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `sequence <= last applied`: already applied; acknowledge and skip.
    Duplicate { last_sequence: i64 },
    /// `sequence > last applied + 1`: an earlier deposit is missing; park this one.
    Early { expected: i64 },
    /// `sequence == last applied + 1`: append these events.
    Apply(Vec<AccountEvent>),
}

/// Why a deposit can never be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("sequence {0} is not a valid sequence (must be at least 1)")]
    InvalidSequence(i64),
    #[error("amount_minor {0} is not positive")]
    NonPositiveAmount(i64),
    #[error("deposit currency {given} differs from the account currency {account}")]
    CurrencyMismatch { account: String, given: String },
    #[error(
        "balance out of range: {balance_minor} + {amount_minor} exceeds the largest representable amount"
    )]
    BalanceOverflow {
        balance_minor: i64,
        amount_minor: i64,
    },
}

/// Validates `cmd` against `state` and decides, without changing anything.
pub fn decide(state: &AccountState, cmd: &Deposit) -> Result<Decision, Rejection> {
    let d = &cmd.deposited;
    if d.sequence < 1 {
        return Err(Rejection::InvalidSequence(d.sequence));
    }
    if d.sequence <= state.last_sequence {
        return Ok(Decision::Duplicate {
            last_sequence: state.last_sequence,
        });
    }
    let expected = state.last_sequence + 1;
    if d.sequence > expected {
        return Ok(Decision::Early { expected });
    }
    if d.amount_minor <= 0 {
        return Err(Rejection::NonPositiveAmount(d.amount_minor));
    }
    if let Some(currency) = state.currency
        && currency != d.currency
    {
        return Err(Rejection::CurrencyMismatch {
            account: currency.code().to_owned(),
            given: d.currency.code().to_owned(),
        });
    }
    if state.balance_minor.checked_add(d.amount_minor).is_none() {
        return Err(Rejection::BalanceOverflow {
            balance_minor: state.balance_minor,
            amount_minor: d.amount_minor,
        });
    }
    let mut events = Vec::with_capacity(2);
    if !state.is_open() {
        events.push(AccountEvent::Opened(AccountOpened {
            currency: d.currency,
            holder_name: cmd.holder_name.clone(),
            email: cmd.email.clone(),
            opened_at: d.occurred_at,
            source_event_id: d.event_id,
        }));
    }
    events.push(AccountEvent::Deposited(d.clone()));
    Ok(Decision::Apply(events))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn deposit(sequence: i64, amount_minor: i64, currency: &str) -> Deposit {
        Deposit {
            account_id: AccountId::parse("ACC-1").unwrap(),
            deposited: Deposited {
                event_id: Uuid::now_v7(),
                sequence,
                deposit_id: Uuid::now_v7(),
                amount_minor,
                currency: Currency::parse(currency).unwrap(),
                occurred_at: Utc::now(),
            },
            holder_name: Some("A".into()),
            email: None,
        }
    }

    /// The events of a first deposit of 5 USD.
    fn first_deposit() -> Vec<AccountEvent> {
        let Decision::Apply(events) =
            decide(&AccountState::default(), &deposit(1, 5, "USD")).unwrap()
        else {
            panic!("expected Apply");
        };
        events
    }

    #[test]
    fn the_first_deposit_opens_the_account() {
        let events = first_deposit();
        assert!(matches!(events[0], AccountEvent::Opened(_)));
        let state = replay(AccountState::default(), &events);
        assert_eq!(
            (state.version, state.balance_minor, state.last_sequence),
            (2, 5, 1)
        );
    }

    #[test]
    fn the_ordering_rule_and_validation() {
        let state = replay(AccountState::default(), &first_deposit());
        assert_eq!(
            decide(&state, &deposit(1, 5, "USD")).unwrap(),
            Decision::Duplicate { last_sequence: 1 }
        );
        assert_eq!(
            decide(&state, &deposit(3, 5, "USD")).unwrap(),
            Decision::Early { expected: 2 }
        );
        assert!(matches!(
            decide(&state, &deposit(2, 5, "EUR")),
            Err(Rejection::CurrencyMismatch { .. })
        ));
        assert!(matches!(
            decide(&state, &deposit(2, i64::MAX, "USD")),
            Err(Rejection::BalanceOverflow { .. })
        ));
        assert!(matches!(
            decide(&state, &deposit(0, 5, "USD")),
            Err(Rejection::InvalidSequence(0))
        ));
    }
}

//! Applies `DepositCompleted` events: records the deposit, updates the daily closing balances
//! from its business day on, and recomputes the accruals from that day forward.
//!
//! Runs inside the consumer runtime's transaction, after the events' ids went into
//! `processed_events`; everything here commits or rolls back with that dedup row. The batch is
//! applied with one set-based statement per step whatever its size: create and lock the
//! accounts (before anything is read), record the deposits, upsert
//! the closing balances, read the accrual inputs, upsert the accruals. Each reads and writes
//! per account only the deposits' days and the stored days after them, so a deposit on an
//! account's latest day costs the same whatever the account's history; only a back-dated one
//! pays for the days that follow it.

use crate::accrual;
use crate::metrics::InterestMetrics;
use crate::store::{self, AccrualRequest, AccrualRow, DayDelta, NewDeposit};
use chrono::NaiveDate;
use eventbank_events::{AccountId, DepositCompleted};
use eventbank_runtime::consumer::{Handler, HandlerError};
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The interest service's domain handler.
#[derive(Clone, Default)]
pub struct InterestHandler {
    metrics: InterestMetrics,
}

impl InterestHandler {
    pub fn new(metrics: InterestMetrics) -> Self {
        Self { metrics }
    }
}

/// The business day of a deposit: the UTC calendar date of when it occurred. 23:59:59 UTC and
/// 00:00:00 UTC the next second are different days.
pub fn business_day(event: &DepositCompleted) -> NaiveDate {
    event.occurred_at.date_naive()
}

impl Handler for InterestHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[DepositCompleted],
    ) -> Result<(), HandlerError> {
        // The runtime never passes an id twice, but the handler must not double-count if a
        // caller does: keep the first copy.
        let events = eventbank_runtime::batch::first_of_each_event(events);
        if events.is_empty() {
            return Ok(());
        }
        let account_currency = lock_accounts(tx, &events).await?;
        let fresh = record_deposits(tx, &events).await?;
        if fresh.is_empty() {
            return Ok(());
        }
        let deltas = day_deltas(&fresh)?;
        store::apply_deltas(tx, &deltas).await?;
        let horizons = self
            .recompute_accruals(tx, &deltas, &account_currency)
            .await?;
        self.report(&fresh, &horizons);
        Ok(())
    }
}

/// Creates the batch's unknown accounts (the first deposit of one fixes its currency), locks
/// them all, and returns each one's currency. A deposit in another currency than its account's
/// is rejected.
async fn lock_accounts(
    tx: &mut PgConnection,
    events: &[&DepositCompleted],
) -> Result<HashMap<AccountId, String>, HandlerError> {
    let mut first_currency: BTreeMap<AccountId, String> = BTreeMap::new();
    for e in events {
        first_currency
            .entry(e.account_id.clone())
            .or_insert_with(|| e.currency.code().to_owned());
    }
    let (account_ids, currencies): (Vec<AccountId>, Vec<String>) =
        first_currency.into_iter().unzip();
    let account_currency = store::create_and_lock_accounts(tx, &account_ids, &currencies).await?;
    for e in events {
        let known = account_currency.get(&e.account_id);
        if known.map(String::as_str) != Some(e.currency.code()) {
            // Adding a EUR amount to a USD balance would corrupt it; the deposit service
            // never emits this, so it is a poison message for the dead-letter queue.
            return Err(HandlerError::Rejected(format!(
                "deposit {} in {} for account {} whose currency is {}",
                e.deposit_id,
                e.currency,
                e.account_id,
                known.map_or("unknown", String::as_str)
            )));
        }
    }
    Ok(account_currency)
}

/// Records the deposits and returns those that were new; one already recorded is logged and
/// left out (balances unchanged).
async fn record_deposits(
    tx: &mut PgConnection,
    events: &[&DepositCompleted],
) -> Result<Vec<NewDeposit>, HandlerError> {
    let deposits: Vec<NewDeposit> = events
        .iter()
        .map(|e| NewDeposit {
            event_id: e.event_id,
            deposit_id: e.deposit_id,
            account_id: e.account_id.clone(),
            sequence: e.sequence,
            amount_minor: e.amount_minor,
            currency: e.currency.code().to_owned(),
            occurred_at: e.occurred_at,
            business_day: business_day(e),
        })
        .collect();
    let inserted: HashSet<_> = store::insert_deposits(tx, &deposits)
        .await?
        .into_iter()
        .collect();
    for e in events.iter().filter(|e| !inserted.contains(&e.event_id)) {
        tracing::info!(
            event_id = %e.event_id, account_id = %e.account_id, deposit_id = %e.deposit_id,
            "deposit already recorded; balances unchanged"
        );
    }
    Ok(deposits
        .into_iter()
        .filter(|d| inserted.contains(&d.event_id))
        .collect())
}

impl InterestHandler {
    /// Counts and logs the deposits applied.
    fn report(&self, fresh: &[NewDeposit], old_horizons: &HashMap<AccountId, NaiveDate>) {
        for d in fresh {
            let backdated = old_horizons
                .get(&d.account_id)
                .is_some_and(|h| d.business_day < *h);
            if backdated {
                self.metrics.backdated_deposits.inc();
            }
            self.metrics.deposits_applied.inc();
            tracing::info!(
                event_id = %d.event_id, account_id = %d.account_id, deposit_id = %d.deposit_id,
                business_day = %d.business_day, amount_minor = d.amount_minor, backdated,
                "deposit added to daily balances from its business day on; accruals recomputed"
            );
        }
    }

    /// Rewrites the stored accruals of every account in `deltas`, from its earliest changed day
    /// to its latest known day, in one upsert, and returns each account's accrual horizon as it
    /// was before (the last day already stored).
    ///
    /// When a deposit is dated after the last accrued day, the recomputation starts right after
    /// that day instead, so the stored accruals stay dense from the account's first day on. A
    /// deposit on the account's latest day therefore recomputes that one day.
    async fn recompute_accruals(
        &self,
        tx: &mut PgConnection,
        deltas: &[DayDelta],
        account_currency: &HashMap<AccountId, String>,
    ) -> Result<HashMap<AccountId, NaiveDate>, HandlerError> {
        let mut changed_from: BTreeMap<AccountId, NaiveDate> = BTreeMap::new();
        for delta in deltas {
            let from = changed_from
                .entry(delta.account_id.clone())
                .or_insert(delta.day);
            *from = (*from).min(delta.day);
        }
        let requests: Vec<AccrualRequest> = changed_from
            .iter()
            .map(|(account_id, day)| AccrualRequest {
                account_id: account_id.clone(),
                currency: account_currency
                    .get(account_id)
                    .cloned()
                    .unwrap_or_default(),
                changed_from: Some(*day),
            })
            .collect();
        let inputs = store::accrual_inputs(tx, &requests).await?;

        let mut horizons = HashMap::new();
        let mut rows: Vec<AccrualRow> = Vec::new();
        for request in &requests {
            let account_id = &request.account_id;
            let Some(input) = inputs.get(account_id) else {
                continue;
            };
            if let Some(horizon) = input.horizon {
                horizons.insert(account_id.clone(), horizon);
            }
            let Some(from) = input.from else {
                continue;
            };
            // The latest known day: the last closing balance, or further if accruals were
            // already stored beyond it.
            let to = [input.balances.last().map(|b| b.day), input.horizon]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(from);
            let days = accrual::accrue_days(&input.balances, &input.schedule, from, to);
            tracing::debug!(%account_id, %from, %to, days = days.len(), "accruals recomputed");
            self.metrics
                .accrual_days_recomputed
                .inc_by(days.len() as u64);
            rows.extend(
                AccrualRow::from_days(account_id, &request.currency, days)
                    .map_err(|e| HandlerError::Rejected(e.to_string()))?,
            );
        }
        store::upsert_accruals(tx, &rows).await?;
        Ok(horizons)
    }
}

/// The batch's amounts summed per (account, business day): one entry per pair, as
/// [`store::apply_deltas`] requires.
fn day_deltas(deposits: &[NewDeposit]) -> Result<Vec<DayDelta>, HandlerError> {
    let mut deltas: BTreeMap<(AccountId, NaiveDate), DayDelta> = BTreeMap::new();
    for d in deposits {
        let delta = deltas
            .entry((d.account_id.clone(), d.business_day))
            .or_insert_with(|| DayDelta {
                account_id: d.account_id.clone(),
                day: d.business_day,
                currency: d.currency.clone(),
                amount_minor: 0,
            });
        delta.amount_minor = delta
            .amount_minor
            .checked_add(d.amount_minor)
            .ok_or_else(|| {
                HandlerError::Rejected(format!(
                    "deposits of account {} on {} overflow a 64-bit amount",
                    d.account_id, d.business_day
                ))
            })?;
    }
    Ok(deltas.into_values().collect())
}

//! The end-of-day job: stores the accrual of every day that has ended, also for accounts that
//! received no deposit that day.
//!
//! The handler stores accruals only up to an account's latest business day (the last day a
//! deposit told it about). Days after that accrue on an unchanged closing balance; this job
//! writes them, up to yesterday (UTC): a day that is still running may yet get deposits. It
//! runs at start-up and then every `EOD_INTERVAL_SECS`, so a day is stored at most one interval
//! after it ends, and a service that was down catches up on every day it missed.
//!
//! Idempotent per (account, day): it starts after each account's last stored day and upserts,
//! so running it twice, or concurrently on two replicas, stores each day once with the same
//! values. It locks the accounts it works on (as the handler does, in id order), so a deposit
//! that recomputes the same days waits for it or it waits for the deposit, and the later one
//! computes from the earlier one's balances.

use crate::accrual;
use crate::metrics::InterestMetrics;
use crate::store::{self, AccrualRequest, AccrualRow};
use anyhow::Context;
use chrono::{NaiveDate, Utc};
use eventbank_events::AccountId;
use eventbank_runtime::Shutdown;
use sqlx::PgPool;
use std::time::Duration;
use tokio::time::MissedTickBehavior;

/// Accounts handled per transaction: bounds how long one transaction holds account locks.
pub const ACCOUNTS_PER_TRANSACTION: i64 = 100;

/// What one run stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EodOutcome {
    /// Accounts that had days to store.
    pub accounts: u64,
    /// Account-days stored.
    pub days: u64,
}

/// The scheduled job, run on the service's shutdown signal.
pub struct EndOfDay {
    pub pool: PgPool,
    pub metrics: InterestMetrics,
    /// `EOD_INTERVAL_SECS`: time between runs.
    pub interval: Duration,
}

impl EndOfDay {
    /// Runs now, then every `interval`, until shutdown. A failed run (database away) is logged
    /// and the next tick tries again; the job never ends the service.
    pub async fn run(self, shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(self.interval);
        // After a long pause (a suspended host), run once, not once per missed tick.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = ticks.tick() => {}
            }
            let Some(yesterday) = Utc::now().date_naive().pred_opt() else {
                continue;
            };
            // Checked between transactions only: a transaction in progress finishes.
            let stop = shutdown.token();
            match accrue_through(&self.pool, &self.metrics, yesterday, || stop.is_cancelled()).await
            {
                Ok(outcome) if outcome.days > 0 => tracing::info!(
                    through = %yesterday, accounts = outcome.accounts, days = outcome.days,
                    "end-of-day accruals stored for days without deposits"
                ),
                Ok(_) => tracing::debug!(through = %yesterday, "end-of-day accruals up to date"),
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"), retry_in = ?self.interval,
                    "end-of-day accrual run failed"
                ),
            }
        }
        tracing::info!("end-of-day job stopped");
    }
}

/// Stores the accrual of every day up to `through` (inclusive) that is not stored yet, for every
/// account, and returns what it stored. `stop` is asked between transactions.
pub async fn accrue_through(
    pool: &PgPool,
    metrics: &InterestMetrics,
    through: NaiveDate,
    stop: impl Fn() -> bool,
) -> anyhow::Result<EodOutcome> {
    let mut outcome = EodOutcome::default();
    let mut after: Option<AccountId> = None;
    loop {
        if stop() {
            break;
        }
        let mut conn = pool.acquire().await?;
        let page =
            store::accounts_behind(&mut conn, after.as_ref(), through, ACCOUNTS_PER_TRANSACTION)
                .await
                .context("listing accounts with days to accrue")?;
        drop(conn);
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.clone());
        let stored = accrue_accounts(pool, &page, through).await?;
        outcome.accounts += stored.accounts;
        outcome.days += stored.days;
        metrics.eod_days_accrued.inc_by(stored.days);
        if (page.len() as i64) < ACCOUNTS_PER_TRANSACTION {
            break;
        }
    }
    Ok(outcome)
}

/// One transaction: locks the accounts, then stores each one's days after its last stored day
/// (or from its first business day) up to `through`.
async fn accrue_accounts(
    pool: &PgPool,
    account_ids: &[AccountId],
    through: NaiveDate,
) -> anyhow::Result<EodOutcome> {
    let mut tx = pool.begin().await?;
    let currencies = store::lock_accounts(&mut tx, account_ids).await?;
    let requests: Vec<AccrualRequest> = account_ids
        .iter()
        .filter_map(|account_id| {
            Some(AccrualRequest {
                account_id: account_id.clone(),
                currency: currencies.get(account_id)?.clone(),
                changed_from: None,
            })
        })
        .collect();
    // Read under the lock: a deposit may have moved the horizon since the listing.
    let inputs = store::accrual_inputs(&mut tx, &requests).await?;

    let mut rows = Vec::new();
    let mut outcome = EodOutcome::default();
    for request in &requests {
        let Some(input) = inputs.get(&request.account_id) else {
            continue;
        };
        let Some(from) = input.from.filter(|f| *f <= through) else {
            continue;
        };
        let days = accrual::accrue_days(&input.balances, &input.schedule, from, through);
        outcome.accounts += 1;
        outcome.days += days.len() as u64;
        rows.extend(AccrualRow::from_days(
            &request.account_id,
            &request.currency,
            days,
        )?);
    }
    store::upsert_accruals(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(outcome)
}

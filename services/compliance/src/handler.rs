//! Applies `DepositCompleted` events: one hash-chained audit entry per event, then the reporting
//! rules (CTR and structuring), all in the consumer runtime's transaction.
//!
//! The rules look at one account at a time, so the handler first takes a transaction-scoped
//! advisory lock per account of the batch (sorted, so batches cannot deadlock): batches of one
//! account apply one after the other, and each sees every earlier deposit and alert of it,
//! whatever the partitioning. The chain is global, so its head is locked too, but last, just to
//! link and append the batch's entries: the partitions' batches run their rules side by side and
//! queue only for the append. Locking the head first would serialise whole batches of every
//! partition behind one lock (BENCHMARKS.md, Optimisations).
//!
//! Structuring has two paths per account and currency of the batch. Deposits at or after the
//! latest one recorded (the common case) take the in-order path: their running totals
//! continue the scope's rolling state, each new window's total is two running totals apart
//! (at most one index probe), and only a window that alerts reads its deposits, to name them.
//! A late deposit, or a scope whose totals were computed for another threshold, takes the
//! recompute path: the walk over every deposit its windows can hold, then the running totals
//! rewritten from it on. Either way a batch runs a fixed number of set-based statements.

use crate::chain::{self, CanonicalEntry, StoredEntry};
use crate::metrics::ComplianceMetrics;
use crate::rules::{Before, Deposit, Rolling, Rules, Structuring, Window};
use crate::store::{
    self, AccountCurrency, ActiveStructuring, AlertKind, NewAlert, Scope, ScopeState,
};
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use eventbank_events::{AccountId, DepositCompleted};
use eventbank_runtime::consumer::{Handler, HandlerError};
use serde_json::json;
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The compliance service's domain handler.
#[derive(Clone, Default)]
pub struct ComplianceHandler {
    rules: Rules,
    metrics: ComplianceMetrics,
}

impl ComplianceHandler {
    pub fn new(rules: Rules, metrics: ComplianceMetrics) -> Self {
        Self { rules, metrics }
    }
}

impl Handler for ComplianceHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[DepositCompleted],
    ) -> Result<(), HandlerError> {
        let (fresh, states) = unrecorded(tx, events).await?;
        if fresh.is_empty() {
            return Ok(());
        }
        let (alerts, superseded) = self.apply_rules(tx, &fresh, states).await?;
        let entries = append_to_chain(tx, &fresh).await?;
        self.report(&fresh, &entries, &alerts, &superseded);
        Ok(())
    }
}

/// The batch's events that have no audit entry yet, each once, with their accounts locked;
/// and the rolling state of their accounts and currencies.
async fn unrecorded<'e>(
    tx: &mut PgConnection,
    events: &'e [DepositCompleted],
) -> Result<
    (
        Vec<&'e DepositCompleted>,
        HashMap<AccountCurrency, ScopeState>,
    ),
    HandlerError,
> {
    // The runtime never passes an id twice, but a repeated id must not get two entries.
    let events = eventbank_runtime::batch::first_of_each_event(events);
    if events.is_empty() {
        return Ok((events, HashMap::new()));
    }
    let mut accounts: Vec<AccountId> = events.iter().map(|e| e.account_id.clone()).collect();
    accounts.sort();
    accounts.dedup();
    store::lock_accounts(tx, &accounts).await?;
    let mut keys: Vec<AccountCurrency> = events
        .iter()
        .map(|e| (e.account_id.clone(), e.currency.code().to_owned()))
        .collect();
    keys.sort();
    keys.dedup();
    // An event that already has an entry (applied by a path that bypassed the runtime's
    // dedup, such as a restore) is skipped: one entry per event, ever.
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let (recorded, states) = store::batch_state(tx, &ids, &keys).await?;
    for e in events.iter().filter(|e| recorded.contains(&e.event_id)) {
        tracing::info!(
            event_id = %e.event_id, account_id = %e.account_id, deposit_id = %e.deposit_id,
            "event already in the audit log; skipped"
        );
    }
    let fresh = events
        .into_iter()
        .filter(|e| !recorded.contains(&e.event_id))
        .collect();
    Ok((fresh, states))
}

/// Appends one entry per event to the chain: positions head+1, head+2, ... each linked to the
/// one before. From here to the commit every other batch of the service waits, so this part
/// is two statements and a few hashes.
async fn append_to_chain(
    tx: &mut PgConnection,
    fresh: &[&DepositCompleted],
) -> Result<Vec<StoredEntry>, HandlerError> {
    let (head_position, head_hash, recorded_at) = store::lock_head(tx).await?;
    let mut prev = head_hash;
    let mut position = head_position;
    let mut entries = Vec::with_capacity(fresh.len());
    for e in fresh {
        position += 1;
        let entry = CanonicalEntry::new(position, e, recorded_at)
            .to_text()
            .map_err(|e| HandlerError::Other(e.into()))?;
        let hash = chain::link_hash(&prev, &entry).to_vec();
        entries.push(StoredEntry {
            position,
            event_id: e.event_id,
            account_id: e.account_id.to_string(),
            entry,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
            recorded_at,
        });
    }
    store::append_entries(tx, &entries, position, &prev).await?;
    Ok(entries)
}

impl ComplianceHandler {
    /// Records the deposits and applies both rules: returns the alerts raised and the active
    /// ones superseded.
    async fn apply_rules(
        &self,
        tx: &mut PgConnection,
        fresh: &[&DepositCompleted],
        states: HashMap<AccountCurrency, ScopeState>,
    ) -> Result<(Vec<NewAlert>, Vec<ActiveStructuring>), HandlerError> {
        let threshold = self.rules.ctr_threshold_minor;
        let plan = self.plan(fresh, states);
        // Deposits first: the structuring walks and probes read them back with the precision
        // Postgres keeps, together with the earlier ones.
        let rolled: Vec<(AccountCurrency, Rolling)> = plan
            .in_order
            .iter()
            .map(|s| (s.scope.key(), s.rolled()))
            .collect();
        store::insert_deposits(tx, &plan.rows, &rolled, threshold).await?;
        store::rebuild_running_totals(tx, &plan.rebuilds, threshold).await?;
        let rebuilt: Vec<AccountCurrency> = plan.rebuilds.iter().map(|(k, _)| k.clone()).collect();
        store::refresh_scope_states(tx, &rebuilt, threshold).await?;
        let mut alerts = self.ctr_alerts(fresh);
        let (structuring, superseded) = self.structuring(tx, &plan).await?;
        // Superseded first: a replacement may name the same event, and only one alert of a
        // kind per event may be active.
        let superseded_ids: Vec<i64> = superseded.iter().map(|a| a.id).collect();
        store::supersede_alerts(tx, &superseded_ids).await?;
        alerts.extend(structuring);
        store::insert_alerts(tx, &alerts).await?;
        Ok((alerts, superseded))
    }

    /// Counts and logs what the batch did: superseded and raised alerts, appended entries.
    fn report(
        &self,
        fresh: &[&DepositCompleted],
        entries: &[StoredEntry],
        alerts: &[NewAlert],
        superseded: &[ActiveStructuring],
    ) {
        for old in superseded {
            self.metrics.superseded_alerts.inc();
            tracing::info!(
                alert_id = old.id, event_id = %old.event_id, window_end = %old.window.end,
                amount_minor = old.amount_minor,
                "structuring alert superseded: a late deposit changed the windows time order gives"
            );
        }
        for alert in alerts {
            let counter = match alert.kind {
                AlertKind::Ctr => &self.metrics.ctr_alerts,
                AlertKind::Structuring => &self.metrics.structuring_alerts,
            };
            counter.inc();
            tracing::info!(
                kind = alert.kind.as_str(), account_id = %alert.account_id,
                event_id = %alert.event_id, amount_minor = alert.amount_minor,
                currency = %alert.currency, window_start = %alert.window.start,
                window_end = %alert.window.end, "alert raised"
            );
        }
        self.metrics.audit_entries.inc_by(entries.len() as u64);
        for (e, entry) in fresh.iter().zip(entries) {
            let raised: Vec<&str> = alerts
                .iter()
                .filter(|a| a.event_id == e.event_id)
                .map(|a| a.kind.as_str())
                .collect();
            tracing::info!(
                event_id = %e.event_id, account_id = %e.account_id, deposit_id = %e.deposit_id,
                position = entry.position, hash = %chain::hex(&entry.hash), alerts = ?raised,
                "audit entry appended"
            );
        }
    }
}

impl ComplianceHandler {
    /// Rule 1: one CTR alert per deposit at or over the threshold. Its window is the deposit's
    /// instant.
    fn ctr_alerts(&self, fresh: &[&DepositCompleted]) -> Vec<NewAlert> {
        let threshold = self.rules.ctr_threshold_minor;
        fresh
            .iter()
            .filter(|e| e.amount_minor >= threshold)
            .map(|e| NewAlert {
                kind: AlertKind::Ctr,
                account_id: e.account_id.clone(),
                event_id: e.event_id,
                amount_minor: e.amount_minor,
                currency: e.currency.code().to_owned(),
                window: Window {
                    start: e.occurred_at,
                    end: e.occurred_at,
                },
                details: json!({
                    "threshold_minor": threshold,
                    "deposit_id": e.deposit_id,
                    "sequence": e.sequence,
                }),
            })
            .collect()
    }

    /// Sorts the batch's accounts and currencies into the two structuring paths (see the
    /// module documentation), from their rolling state, and gives each in-order
    /// sub-threshold deposit its running total.
    fn plan<'e>(
        &self,
        fresh: &[&'e DepositCompleted],
        mut states: HashMap<AccountCurrency, ScopeState>,
    ) -> Plan<'e> {
        let threshold = self.rules.ctr_threshold_minor;
        let mut by_scope: BTreeMap<AccountCurrency, Vec<&DepositCompleted>> = BTreeMap::new();
        for e in fresh {
            by_scope
                .entry((e.account_id.clone(), e.currency.code().to_owned()))
                .or_default()
                .push(e);
        }
        let mut totals: HashMap<uuid::Uuid, i128> = HashMap::new();
        let mut plan = Plan {
            rows: Vec::with_capacity(fresh.len()),
            rebuilds: Vec::new(),
            walks: Vec::new(),
            in_order: Vec::new(),
        };
        for (key, events) in by_scope {
            let mut under: Vec<(DateTime<Utc>, &DepositCompleted)> = events
                .into_iter()
                .filter(|e| e.amount_minor < threshold)
                .map(|e| (as_stored(e.occurred_at), e))
                .collect();
            under.sort_by_key(|(t, e)| (*t, e.event_id));
            // No row: the scope has no deposit yet.
            let state = states.remove(&key);
            let stale = state.is_some_and(|s| s.threshold_minor != threshold);
            let rolling = state.map(|s| s.rolling).unwrap_or_default();
            let Some(&(first, _)) = under.first() else {
                if stale {
                    plan.rebuilds.push((key, None));
                }
                continue;
            };
            if stale || rolling.last_at.is_some_and(|last| first < last) {
                plan.rebuilds.push((key.clone(), (!stale).then_some(first)));
                plan.walks.push(scope(key, first));
                continue;
            }
            let mut total = rolling.total;
            let mut new = Vec::with_capacity(under.len());
            for (t, e) in under {
                total += i128::from(e.amount_minor);
                totals.insert(e.event_id, total);
                new.push((t, total));
            }
            plan.in_order.push(InOrder {
                scope: scope(key, first),
                rolling,
                new,
            });
        }
        plan.rows = fresh
            .iter()
            .map(|e| (*e, totals.get(&e.event_id).copied()))
            .collect();
        plan
    }

    /// Rule 2 for both paths (see [`crate::rules`]), compared with the active alerts from
    /// where each scope's walk starts. Returns the alerts to insert and the active ones that
    /// the walk no longer gives (to supersede); an alert the walk gives again unchanged stays
    /// as it is.
    async fn structuring(
        &self,
        tx: &mut PgConnection,
        plan: &Plan<'_>,
    ) -> Result<(Vec<NewAlert>, Vec<ActiveStructuring>), HandlerError> {
        let mut scopes: Vec<Scope> = plan.walks.clone();
        scopes.extend(plan.in_order.iter().map(|s| s.scope.clone()));
        if scopes.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut state = store::structuring_state(tx, &scopes).await?;
        let mut walked: Vec<(Scope, Vec<Structuring>)> = self.recompute(tx, plan, &state).await?;
        walked.extend(self.in_order(tx, plan, &state).await?);

        let mut raise = Vec::new();
        let mut supersede = Vec::new();
        for (scope, found) in walked {
            let key = (scope.account_id.clone(), scope.currency.clone());
            let (_, existing) = state.remove(&key).unwrap_or_default();
            let alerts = found
                .into_iter()
                .map(|found| self.structuring_alert(&scope, found));
            let (new, gone) = compare_with_active(alerts, existing);
            raise.extend(new);
            supersede.extend(gone);
        }
        Ok((raise, supersede))
    }

    /// The recompute path: walks every deposit the windows from each scope's start can hold.
    async fn recompute(
        &self,
        tx: &mut PgConnection,
        plan: &Plan<'_>,
        state: &HashMap<AccountCurrency, (Option<Window>, Vec<ActiveStructuring>)>,
    ) -> Result<Vec<(Scope, Vec<Structuring>)>, HandlerError> {
        if plan.walks.is_empty() {
            return Ok(Vec::new());
        }
        let threshold = self.rules.ctr_threshold_minor;
        let window = self.rules.structuring_window;
        let mut deposits = store::deposits_for_walk(tx, &plan.walks, window, threshold).await?;
        Ok(plan
            .walks
            .iter()
            .map(|scope| {
                let key = (scope.account_id.clone(), scope.currency.clone());
                let history = deposits.remove(&key).unwrap_or_default();
                let previous = state.get(&key).and_then(|(previous, _)| *previous);
                let found = self.rules.structuring_from(&history, scope.from, previous);
                (scope.clone(), found)
            })
            .collect())
    }

    /// The in-order path: the windows ending at the new deposits, from running totals (one
    /// probe per window that starts among the recorded deposits); only the windows that alert
    /// read their deposits.
    async fn in_order(
        &self,
        tx: &mut PgConnection,
        plan: &Plan<'_>,
        state: &HashMap<AccountCurrency, (Option<Window>, Vec<ActiveStructuring>)>,
    ) -> Result<Vec<(Scope, Vec<Structuring>)>, HandlerError> {
        if plan.in_order.is_empty() {
            return Ok(Vec::new());
        }
        let ends: Vec<Vec<_>> = plan
            .in_order
            .iter()
            .map(|s| self.rules.in_order_ends(s.rolling, &s.new))
            .collect();
        let probes: Vec<(AccountCurrency, DateTime<Utc>)> = plan
            .in_order
            .iter()
            .zip(&ends)
            .flat_map(|(s, ends)| {
                ends.iter().filter_map(|end| match end.before {
                    Before::Probe(at) => Some((s.scope.key(), at)),
                    Before::Known(_) => None,
                })
            })
            .collect();
        let mut probed = store::running_totals_before(tx, &probes).await?.into_iter();
        let mut found: Vec<Vec<(Window, i128)>> = Vec::with_capacity(ends.len());
        for (s, ends) in plan.in_order.iter().zip(ends) {
            let mut windows = Vec::with_capacity(ends.len());
            for end in ends {
                let before = match end.before {
                    Before::Known(total) => total,
                    Before::Probe(_) => probed.next().ok_or_else(|| {
                        HandlerError::Other(anyhow::anyhow!(
                            "a running-total probe went unanswered"
                        ))
                    })?,
                };
                windows.push((end.window, end.through - before));
            }
            let previous = state
                .get(&s.scope.key())
                .and_then(|(previous, _)| *previous);
            found.push(self.rules.structuring_in_order(&windows, previous));
        }
        let alerting: Vec<(AccountCurrency, Window)> = plan
            .in_order
            .iter()
            .zip(&found)
            .flat_map(|(s, found)| found.iter().map(|(w, _)| (s.scope.key(), *w)))
            .collect();
        let threshold = self.rules.ctr_threshold_minor;
        let mut named = store::deposits_in_windows(tx, &alerting, threshold)
            .await?
            .into_iter();
        let mut out = Vec::with_capacity(found.len());
        for (s, found) in plan.in_order.iter().zip(found) {
            let mut structurings = Vec::with_capacity(found.len());
            for (window, total) in found {
                let inside = named.next().unwrap_or_default();
                let structuring = named_structuring(window, total, inside).ok_or_else(|| {
                    HandlerError::Other(anyhow::anyhow!(
                        "structuring window ending {} holds no recorded deposit",
                        window.end
                    ))
                })?;
                structurings.push(structuring);
            }
            out.push((s.scope.clone(), structurings));
        }
        Ok(out)
    }

    /// The alert of one structuring finding of the walk.
    fn structuring_alert(&self, scope: &Scope, found: Structuring) -> NewAlert {
        NewAlert {
            kind: AlertKind::Structuring,
            account_id: scope.account_id.clone(),
            event_id: found.event_id,
            amount_minor: found.total_minor,
            currency: scope.currency.clone(),
            window: found.window,
            details: json!({
                "threshold_minor": self.rules.ctr_threshold_minor,
                "window_seconds": self.rules.structuring_window.num_seconds(),
                "deposit_count": found.event_ids.len(),
                "event_ids": found.event_ids,
            }),
        }
    }
}

/// How the batch's accounts and currencies are handled (see [`ComplianceHandler::plan`]).
struct Plan<'e> {
    /// Every new deposit, with its running total when it is in time order.
    rows: Vec<(&'e DepositCompleted, Option<i128>)>,
    /// Running totals to recompute, from an instant on (`None`: all of them).
    rebuilds: Vec<(AccountCurrency, Option<DateTime<Utc>>)>,
    /// The recompute path's walks.
    walks: Vec<Scope>,
    /// The in-order path's scopes.
    in_order: Vec<InOrder>,
}

/// One account and currency on the in-order path.
struct InOrder {
    /// Starts at the first new instant: the windows ending there and later are walked.
    scope: Scope,
    /// The rolling state before the batch.
    rolling: Rolling,
    /// The new sub-threshold deposits' instants and running totals, in time order.
    new: Vec<(DateTime<Utc>, i128)>,
}

impl InOrder {
    /// The rolling state after the batch: its last deposit's instant and running total (it
    /// has at least one).
    fn rolled(&self) -> Rolling {
        self.new
            .last()
            .map_or(self.rolling, |&(at, total)| Rolling {
                last_at: Some(at),
                total,
            })
    }
}

fn scope((account_id, currency): AccountCurrency, from: DateTime<Utc>) -> Scope {
    Scope {
        account_id,
        currency,
        from,
    }
}

/// The instant Postgres stores for `t`: sqlx sends whole microseconds since 2000-01-01,
/// truncated towards that epoch. Window ends must be the instants the deposits table holds.
fn as_stored(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(946_684_800, 0)
        .and_then(|epoch| {
            let micros = (t - epoch).num_microseconds()?;
            epoch.checked_add_signed(TimeDelta::microseconds(micros))
        })
        .unwrap_or_else(|| t.trunc_subsecs(6))
}

/// A finding of the in-order walk with the deposits its window holds: the alert is the last
/// one's, in (time, event id) order. `None` if the window holds none (it cannot: it ends at a
/// deposit).
fn named_structuring(window: Window, total: i128, mut inside: Vec<Deposit>) -> Option<Structuring> {
    inside.sort_by_key(|d| (d.occurred_at, d.event_id));
    let event_id = inside.last()?.event_id;
    Some(Structuring {
        window,
        total_minor: i64::try_from(total).unwrap_or(i64::MAX),
        event_id,
        event_ids: inside.iter().map(|d| d.event_id).collect(),
    })
}

/// The walk's alerts of one scope against the active ones it replaces: returns those to raise
/// and the active ones to supersede (no longer given by the walk). An alert the walk gives
/// again unchanged stays as it is.
fn compare_with_active(
    walked: impl IntoIterator<Item = NewAlert>,
    existing: Vec<ActiveStructuring>,
) -> (Vec<NewAlert>, Vec<ActiveStructuring>) {
    let mut raise = Vec::new();
    let mut kept = HashSet::new();
    for alert in walked {
        let same = existing.iter().find(|old| {
            old.event_id == alert.event_id
                && old.window == alert.window
                && old.amount_minor == alert.amount_minor
                && old.details == alert.details
        });
        match same {
            Some(old) => {
                kept.insert(old.id);
            }
            None => raise.push(alert),
        }
    }
    let supersede = existing
        .into_iter()
        .filter(|old| !kept.contains(&old.id))
        .collect();
    (raise, supersede)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use uuid::Uuid;

    fn window(hour: u32) -> Window {
        let end = DateTime::parse_from_rfc3339(&format!("2024-01-01T{hour:02}:00:00Z"))
            .unwrap()
            .with_timezone(&Utc);
        Window {
            start: end - TimeDelta::hours(24),
            end,
        }
    }

    fn walked(event_id: Uuid, hour: u32, amount_minor: i64) -> NewAlert {
        NewAlert {
            kind: AlertKind::Structuring,
            account_id: AccountId::parse("ACC-0001").unwrap(),
            event_id,
            amount_minor,
            currency: "USD".into(),
            window: window(hour),
            details: json!({ "deposit_count": 2 }),
        }
    }

    fn active(id: i64, alert: &NewAlert) -> ActiveStructuring {
        ActiveStructuring {
            id,
            event_id: alert.event_id,
            window: alert.window,
            amount_minor: alert.amount_minor,
            details: alert.details.clone(),
        }
    }

    #[test]
    fn an_unchanged_alert_stays_a_changed_one_is_replaced_and_a_gone_one_superseded() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let same = walked(a, 1, 1_000_000);
        let changed_before = walked(b, 5, 1_000_000);
        let gone = walked(c, 9, 1_000_000);
        let existing = vec![
            active(1, &same),
            active(2, &changed_before),
            active(3, &gone),
        ];
        let changed_now = walked(b, 5, 1_200_000);
        let (raise, supersede) = compare_with_active([same.clone(), changed_now.clone()], existing);
        assert_eq!(raise.len(), 1);
        assert_eq!((raise[0].event_id, raise[0].amount_minor), (b, 1_200_000));
        let ids: Vec<i64> = supersede.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![2, 3]);
    }
}

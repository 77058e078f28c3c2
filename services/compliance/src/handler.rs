//! Applies `DepositCompleted` events: one hash-chained audit entry per event, then the reporting
//! rules (CTR and structuring), all in the consumer runtime's transaction.
//!
//! The chain is global, so the handler first locks the chain head: batches of all partitions
//! append one after the other. That lock also serialises the rules, which therefore always see
//! every earlier deposit and alert.

use crate::chain::{self, CanonicalEntry, StoredEntry};
use crate::metrics::ComplianceMetrics;
use crate::rules::{Deposit, Rules, Window};
use crate::store::{self, AccountRange, NewAlert, NewDeposit};
use chrono::{DateTime, Utc};
use eventbank_events::DepositCompleted;
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
        // The runtime never passes an id twice, but a repeated id must not get two entries.
        let mut seen = HashSet::new();
        let events: Vec<&DepositCompleted> =
            events.iter().filter(|e| seen.insert(e.event_id)).collect();
        if events.is_empty() {
            return Ok(());
        }

        let (head_position, head_hash) = store::lock_head(tx).await?;
        // An event that already has an entry (applied by a path that bypassed the runtime's
        // dedup, such as a restore) is skipped: one entry per event, ever.
        let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
        let recorded = store::recorded_event_ids(tx, &ids).await?;
        for e in events.iter().filter(|e| recorded.contains(&e.event_id)) {
            tracing::info!(
                event_id = %e.event_id, account_id = %e.account_id, deposit_id = %e.deposit_id,
                "event already in the audit log; skipped"
            );
        }
        let fresh: Vec<&DepositCompleted> = events
            .into_iter()
            .filter(|e| !recorded.contains(&e.event_id))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }

        // The chain: positions head+1, head+2, ... each linked to the one before.
        let recorded_at = store::transaction_time(tx).await?;
        let mut prev = head_hash;
        let mut position = head_position;
        let mut entries = Vec::with_capacity(fresh.len());
        for e in &fresh {
            position += 1;
            let entry = CanonicalEntry::new(position, e, recorded_at).to_text();
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
        store::append_entries(tx, &entries).await?;
        store::set_head(tx, position, &prev).await?;

        let alerts = self.evaluate(tx, &fresh).await?;
        let deposits: Vec<NewDeposit> = fresh
            .iter()
            .map(|e| NewDeposit {
                event_id: e.event_id,
                deposit_id: e.deposit_id,
                account_id: e.account_id.to_string(),
                amount_minor: e.amount_minor,
                currency: e.currency.code().to_owned(),
                occurred_at: e.occurred_at,
            })
            .collect();
        store::insert_deposits(tx, &deposits).await?;
        store::insert_alerts(tx, &alerts).await?;

        self.metrics.audit_entries.inc_by(entries.len() as u64);
        for (e, entry) in fresh.iter().zip(&entries) {
            let raised: Vec<&str> = alerts
                .iter()
                .filter(|a| a.event_id == e.event_id)
                .map(|a| a.kind)
                .collect();
            tracing::info!(
                event_id = %e.event_id, account_id = %e.account_id, deposit_id = %e.deposit_id,
                position = entry.position, hash = %chain::hex(&entry.hash), alerts = ?raised,
                "audit entry appended"
            );
        }
        Ok(())
    }
}

impl ComplianceHandler {
    /// Runs the rules over the new events in delivery order, as if they had arrived one at a
    /// time: each event sees the deposits recorded before it (stored, or earlier in the batch)
    /// and the structuring alerts raised before it.
    async fn evaluate(
        &self,
        tx: &mut PgConnection,
        fresh: &[&DepositCompleted],
    ) -> Result<Vec<NewAlert>, HandlerError> {
        let window = self.rules.structuring_window;
        // Everything a rule can look at for an event at t lies within [t - 24 h, t + 24 h].
        let mut spans: BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
        for e in fresh {
            let span = spans
                .entry(e.account_id.to_string())
                .or_insert((e.occurred_at, e.occurred_at));
            span.0 = span.0.min(e.occurred_at);
            span.1 = span.1.max(e.occurred_at);
        }
        let ranges: Vec<AccountRange> = spans
            .into_iter()
            .map(|(account_id, (lo, hi))| AccountRange {
                account_id,
                from: lo - window,
                to: hi + window,
            })
            .collect();
        let mut history: HashMap<String, Vec<Deposit>> =
            store::deposits_in(tx, &ranges, self.rules.ctr_threshold_minor).await?;
        let mut windows: HashMap<String, Vec<Window>> =
            store::structuring_windows(tx, &ranges).await?;

        let mut alerts = Vec::new();
        for e in fresh {
            let account_id = e.account_id.to_string();
            let deposit = Deposit {
                event_id: e.event_id,
                amount_minor: e.amount_minor,
                currency: e.currency.code().to_owned(),
                occurred_at: e.occurred_at,
            };
            let threshold = self.rules.ctr_threshold_minor;
            if self.rules.is_ctr(&deposit) {
                self.metrics.ctr_alerts.inc();
                alerts.push(NewAlert {
                    kind: "ctr",
                    account_id,
                    event_id: e.event_id,
                    amount_minor: e.amount_minor,
                    currency: deposit.currency,
                    window: Window {
                        start: e.occurred_at,
                        end: e.occurred_at,
                    },
                    details: json!({
                        "threshold_minor": threshold,
                        "deposit_id": e.deposit_id,
                        "sequence": e.sequence,
                    }),
                });
                continue;
            }
            let account_history = history.entry(account_id.clone()).or_default();
            account_history.push(deposit.clone());
            let account_windows = windows.entry(account_id.clone()).or_default();
            if let Some(found) = self
                .rules
                .structuring(account_history, &deposit, account_windows)
            {
                self.metrics.structuring_alerts.inc();
                account_windows.push(found.window);
                alerts.push(NewAlert {
                    kind: "structuring",
                    account_id,
                    event_id: e.event_id,
                    amount_minor: found.total_minor,
                    currency: deposit.currency,
                    window: found.window,
                    details: json!({
                        "threshold_minor": threshold,
                        "window_seconds": window.num_seconds(),
                        "deposit_count": found.event_ids.len(),
                        "event_ids": found.event_ids,
                    }),
                });
            }
        }
        Ok(alerts)
    }
}

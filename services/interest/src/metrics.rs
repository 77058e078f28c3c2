//! The interest service's own metrics, registered beside the runtime's consumer metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counters are atomics shared by clones, so the handler records without locking.
#[derive(Clone, Default)]
pub struct InterestMetrics {
    pub deposits_applied: Counter,
    /// Deposits dated before the account's latest known day: they rewrote later days.
    pub backdated_deposits: Counter,
    pub accrual_days_recomputed: Counter,
    /// Account-days stored by the end-of-day job (days without deposits).
    pub eod_days_accrued: Counter,
}

impl InterestMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "deposits_applied",
            "Deposits added to the daily closing balances",
            m.deposits_applied.clone(),
        );
        registry.register(
            "backdated_deposits",
            "Deposits dated before the account's latest known day, which corrected later days",
            m.backdated_deposits.clone(),
        );
        registry.register(
            "accrual_days_recomputed",
            "Account-days of interest accrual (re)computed",
            m.accrual_days_recomputed.clone(),
        );
        registry.register(
            "eod_days_accrued",
            "Account-days of interest stored by the end-of-day job",
            m.eod_days_accrued.clone(),
        );
        m
    }
}

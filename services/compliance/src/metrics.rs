//! The compliance service's own metrics, registered beside the runtime's consumer metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counters are atomics shared by clones, so the handler records without locking.
#[derive(Clone, Default)]
pub struct ComplianceMetrics {
    pub audit_entries: Counter,
    pub ctr_alerts: Counter,
    pub structuring_alerts: Counter,
    pub superseded_alerts: Counter,
}

impl ComplianceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "audit_entries_appended",
            "Entries appended to the hash-chained audit log",
            m.audit_entries.clone(),
        );
        registry.register(
            "ctr_alerts_raised",
            "Alerts for single deposits at or over the reporting threshold",
            m.ctr_alerts.clone(),
        );
        registry.register(
            "structuring_alerts_raised",
            "Alerts for sub-threshold deposits reaching the threshold within the window",
            m.structuring_alerts.clone(),
        );
        registry.register(
            "alerts_superseded",
            "Structuring alerts replaced after a late deposit changed the windows time order gives",
            m.superseded_alerts.clone(),
        );
        m
    }
}

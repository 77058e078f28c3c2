//! The email service's own Prometheus metrics (the consumer loop's are registered by the
//! runtime). Names get the `eventbank_email_` prefix from the registry; counters get `_total`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Cheap to clone: every field is a shared atomic.
#[derive(Clone, Debug, Default)]
pub struct EmailMetrics {
    pub queued: Counter,
    pub handed_off: Counter,
    pub sent: Counter,
    pub failed: Counter,
    pub retried: Counter,
    pub queue_depth: Gauge,
}

impl EmailMetrics {
    /// Creates the metrics and registers them. Tests that need no `/metrics` use `default()`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "emails_queued",
            "Confirmation emails rendered and queued (committed with their event)",
            m.queued.clone(),
        );
        registry.register(
            "emails_handed_off",
            "Queued emails passed to the sender in memory, leased, without a claim",
            m.handed_off.clone(),
        );
        registry.register(
            "emails_sent",
            "Emails accepted by the transport (SMTP server or mail folder)",
            m.sent.clone(),
        );
        registry.register(
            "emails_failed",
            "Emails given up on (permanent error or too many attempts)",
            m.failed.clone(),
        );
        registry.register(
            "email_send_retries",
            "Delivery attempts that failed transiently and were rescheduled",
            m.retried.clone(),
        );
        registry.register(
            "email_queue_depth",
            "Emails waiting to be delivered (status queued), as of the sender's last round",
            m.queue_depth.clone(),
        );
        m
    }
}

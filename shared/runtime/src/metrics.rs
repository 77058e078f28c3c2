//! Prometheus metrics. The registry is built at start-up (registration needs `&mut`), then
//! shared read-only; counters and histograms are atomics, so recording never locks.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What the shared consumer loop records, identical in every consumer service.
#[derive(Clone)]
pub struct ConsumerMetrics {
    pub consumed: Counter,
    pub duplicates: Counter,
    pub dead_lettered: Counter,
    pub retries: Counter,
    pub batch_seconds: Histogram,
    pub batch_size: Histogram,
    /// Partitions this replica consumes now (its share among the live replicas).
    pub partitions_owned: Gauge,
}

impl ConsumerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            consumed: Counter::default(),
            duplicates: Counter::default(),
            dead_lettered: Counter::default(),
            retries: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            partitions_owned: Gauge::default(),
        };
        registry.register(
            "messages_consumed",
            "Deliveries whose transaction committed (duplicates included), counted before the ack",
            m.consumed.clone(),
        );
        registry.register(
            "duplicates_skipped",
            "Deliveries whose event id was already in processed_events",
            m.duplicates.clone(),
        );
        registry.register(
            "dead_lettered",
            "Messages this service sent to its dead-letter queue",
            m.dead_lettered.clone(),
        );
        registry.register(
            "transient_retries",
            "Batches retried after a transient (database) failure",
            m.retries.clone(),
        );
        registry.register(
            "handler_batch_seconds",
            "Time to apply one batch in one transaction, commit included",
            m.batch_seconds.clone(),
        );
        registry.register(
            "handler_batch_size",
            "Deliveries per batch",
            m.batch_size.clone(),
        );
        registry.register(
            "partitions_owned",
            "Partition queues this replica consumes (its share among the live replicas)",
            m.partitions_owned.clone(),
        );
        m
    }
}

/// Whether the broker connection is up, for `/readyz` and `/metrics`.
pub fn register_broker_gauge(registry: &mut Registry) -> Gauge {
    let gauge = Gauge::default();
    registry.register(
        "broker_connected",
        "1 while the service holds a working RabbitMQ connection",
        gauge.clone(),
    );
    gauge
}

/// A registry whose metric names start with `eventbank_<service>_`.
pub fn new_registry(service: &str) -> Registry {
    Registry::with_prefix(format!("eventbank_{service}"))
}

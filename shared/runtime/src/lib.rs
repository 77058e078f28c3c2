//! What every eventbank service repeats, written once.
//!
//! - [`config`]: typed configuration from the environment, secrets that never print.
//! - [`telemetry`]: structured logs that always carry the service name.
//! - [`shutdown`]: one cancellation signal and a task tracker with a drain deadline.
//! - [`db`]: Postgres pool with start-up retry and embedded migrations.
//! - [`backoff`]: exponential backoff with jitter, one convention for every retry.
//! - [`amqp`]: connection, topology and its names under a namespace.
//! - [`publisher`]: publishes with confirms; a returned (unroutable) message is a failure.
//! - [`consumer`]: the batched consumer loop with the `processed_events` dedup transaction.
//! - [`combiner`]: one dedup transaction for the batches of all of a replica's partitions.
//! - [`membership`]: which partitions this replica consumes (advisory-lock slots).
//! - [`applied`]: the feed of applied events and `GET /applied` (SSE) on every consumer.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, RFC 9457 problem responses, the OpenAPI
//!   document and Swagger UI (`/openapi.json`, `/docs`), serving.
//! - [`metrics`]: the Prometheus registry shared by the runtime and the service.
//! - [`piggyback`]: small follow-up writes that ride the next transaction's commit.
//! - [`service`]: `start` (what every `main` does before `run`) and the consumer-service skeleton.
//! - [`trace`]: the W3C trace context carried from the deposit request through every event.
//! - [`batch`], [`account_ids`]: small helpers the consumers' handlers share.
//! - `testing` (feature `testing`, for tests only): test databases, OpenAPI conformance checks,
//!   the SMTP test sink, seeded shuffles.

pub mod account_ids;
pub mod amqp;
pub mod applied;
pub mod backoff;
pub mod batch;
pub mod combiner;
pub mod config;
pub mod consumer;
pub mod db;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod piggyback;
pub mod publisher;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

pub use config::{CommonConfig, Secret};
pub use shutdown::Shutdown;

//! The skeleton every consumer service runs: consumer loop + HTTP API + ops routes + the
//! applied feed (`GET /applied`), CORS when configured, one shutdown signal, drain. A service
//! supplies its handler, its API router and its metrics.

use crate::Shutdown;
use crate::applied::{AppliedFeed, applied_api};
use crate::config::CommonConfig;
use crate::consumer::{Consumer, Handler};
use crate::http::{self, OpsState};
use crate::metrics::{self, ConsumerMetrics};
use crate::telemetry;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;

/// What every service's `main` does before `run`: logs under the service's name, the HTTP
/// listener bound (a taken port fails here, before any connection is made), and the shutdown
/// signal wired to SIGINT/SIGTERM.
pub async fn start(
    service: &'static str,
    common: &CommonConfig,
) -> anyhow::Result<(tokio::net::TcpListener, Shutdown)> {
    telemetry::init(service, common.log_format);
    let listener = tokio::net::TcpListener::bind(common.http_addr).await?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    Ok((listener, shutdown))
}

pub struct ConsumerService<H> {
    pub config: CommonConfig,
    pub pool: PgPool,
    pub handler: Arc<H>,
    /// The service's own routes (state already applied), each with its OpenAPI path: served
    /// with the ops routes, `/openapi.json` and `/docs` (see [`http::service_router`]).
    pub api: OpenApiRouter,
    /// The registry from [`metrics::new_registry`], with the service's own metrics registered.
    pub registry: Registry,
}

impl<H: Handler> ConsumerService<H> {
    /// Runs until `shutdown` fires (or the HTTP server fails), then drains: consumers finish
    /// the batch they hold, unfinished work stays unacked for redelivery.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let mut registry = self.registry;
        let consumer_metrics = ConsumerMetrics::register(&mut registry);
        let broker_connected = metrics::register_broker_gauge(&mut registry);
        let ops = OpsState {
            pool: self.pool.clone(),
            broker_connected: broker_connected.clone(),
            broker_required: true,
            registry: Arc::new(registry),
        };
        let applied = AppliedFeed::new(self.config.service);
        let consumer = Consumer {
            config: self.config.clone(),
            pool: self.pool.clone(),
            handler: self.handler,
            metrics: consumer_metrics,
            broker_connected,
            applied: applied.clone(),
        };
        shutdown.spawn(consumer.run(shutdown.clone()));
        // `/applied` is the runtime's, the same on every consumer, so it is added here rather
        // than by each service's router.
        let api = self.api.merge(applied_api(applied, shutdown.token()));
        http::serve_service(listener, api, ops, &self.config, shutdown).await
    }
}

//! W3C trace context across the broker.
//!
//! The deposit service puts a `traceparent` in every event (and in the AMQP headers); each
//! consumer makes its span for that event a child of it. With OTLP export on (see
//! [`crate::telemetry`]) the five services' spans of one deposit form one trace; without it the
//! same ids still travel, so a caller's trace id is never lost.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` a child of the remote span named by `traceparent` (ignored if malformed or if
/// no OTLP exporter is installed).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// The `traceparent` that names `span`, when spans are being exported (else `None`).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

//! W3C trace context across the broker.
//!
//! The deposit service puts a `traceparent` in every event (and in the AMQP headers); each
//! consumer makes its span for that event a child of it. With OTLP export on (see
//! [`crate::telemetry`]) the five services' spans of one deposit form one trace; without it the
//! same ids still travel, so a caller's trace id is never lost. Every header is read and written
//! by OpenTelemetry's [`TraceContextPropagator`], so what is valid here is what the W3C says.

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// The context whose remote span `traceparent` names: an invalid span context when the header
/// is malformed.
fn extract(traceparent: &str) -> Context {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` header of `context`'s span, `None` when it has no valid one.
fn inject(context: &Context) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span named by `traceparent` (ignored if malformed or if
/// no OTLP exporter is installed).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let context = extract(traceparent);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// The `traceparent` that names `span`, when spans are being exported (else `None`).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    inject(&span.context())
}

/// A `traceparent` for work done on behalf of the caller that sent `incoming`: the caller's
/// trace id when its header is valid (so the work joins the caller's trace), a new trace
/// otherwise; always a new span id, sampled. `None` only if the random ids came out all zeros,
/// which the W3C reserves as invalid.
pub fn child_of(incoming: Option<&str>) -> Option<String> {
    let ids = RandomIdGenerator::default();
    let trace_id = incoming
        .map(|tp| extract(tp).span().span_context().clone())
        .filter(SpanContext::is_valid)
        .map_or_else(|| ids.new_trace_id(), |caller| caller.trace_id());
    let child = SpanContext::new(
        trace_id,
        ids.new_span_id(),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    inject(&Context::new().with_remote_span_context(child))
}

/// The server side of a request that may carry the caller's `traceparent`: makes `span` its
/// child, and returns the `traceparent` the request's work carries on. That is `span`'s own
/// when spans are exported (so every consumer's span joins the trace), else a new span id in the
/// caller's trace ([`child_of`]).
pub fn continue_trace(span: &tracing::Span, incoming: Option<&str>) -> Option<String> {
    if let Some(caller) = incoming {
        set_parent(span, caller);
    }
    traceparent(span).or_else(|| child_of(incoming))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_child_keeps_a_valid_callers_trace_id_with_a_new_span_id() {
        let tp = child_of(Some(CALLER)).unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"), "{tp}");
        assert_ne!(tp, CALLER);
        assert_eq!(tp.len(), CALLER.len());
    }

    #[test]
    fn an_invalid_or_missing_caller_starts_a_new_trace() {
        for incoming in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            Some("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"),
        ] {
            let tp = child_of(incoming).unwrap();
            assert_eq!(tp.len(), 55, "{tp}");
            assert!(!tp.contains("0af7651916cd43dd8448eb211c80319c"), "{tp}");
            assert!(extract(&tp).span().span_context().is_valid(), "{tp}");
        }
    }

    #[test]
    fn without_an_exporter_a_span_continues_the_callers_trace() {
        let span = tracing::info_span!("request");
        assert_eq!(traceparent(&span), None);
        let tp = continue_trace(&span, Some(CALLER)).unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
    }
}

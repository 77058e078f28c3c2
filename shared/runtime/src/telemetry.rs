//! Logging, set up once per process.
//!
//! Every line carries the service name, whatever task wrote it (axum's connection tasks carry no
//! span of ours, so a root span would not be enough): the formatter writes it itself. Per-message
//! fields (event_id, account_id, deposit_id) come from the spans the consumer loop opens.
//! `LOG_FORMAT=pretty` (default) is for people; `json` is one object per line for machines.

use crate::config::LogFormat;
use serde_json::{Map, Value};
use std::fmt;
use std::io::IsTerminal;
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`). Safe to call twice: the
/// second call is ignored, which lets tests start several services in one process.
///
/// When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP/HTTP (JSON) with
/// `service.name` = the service, so one deposit shows as one trace across the five processes
/// (the trace context travels in the event's `traceparent`; see [`crate::trace`]).
pub fn init(service: &'static str, format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // RUST_LOG filters the log lines only: exported spans do not depend on the log level.
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let spans = otlp_tracer(service).map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let registry = tracing_subscriber::registry().with(spans);
    let _ = match format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    // Colour only on a terminal: piped into a file or `scripts/up`, escapes are noise.
                    .with_ansi(
                        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                    )
                    .fmt_fields(DefaultFields::new())
                    .event_format(PrettyWithService {
                        service,
                        inner: Format::default(),
                    })
                    .with_filter(filter()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonWithService { service })
                    .with_filter(filter()),
            )
            .try_init(),
    };
}

/// The exporter's provider, kept so that [`flush`] can export what is buffered at shutdown.
static PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> =
    std::sync::OnceLock::new();

fn otlp_tracer(service: &'static str) -> Option<opentelemetry_sdk::trace::Tracer> {
    use opentelemetry::trace::TracerProvider as _;
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())?;
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and _PROTOCOL, _HEADERS, _TIMEOUT) itself.
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("{service}: OTLP export to {endpoint} disabled: {e}");
            return None;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service);
    let _ = PROVIDER.set(provider);
    Some(tracer)
}

/// Exports the spans still buffered (called once the service has drained).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    }
}

/// The default human format, prefixed by `service=<name>`.
struct PrettyWithService {
    service: &'static str,
    inner: Format,
}

impl<S, N> FormatEvent<S, N> for PrettyWithService
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "service={} ", self.service)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// One JSON object per line: time, level, service, target, message, the event's fields, and the
/// fields of every enclosing span flattened in (inner spans win).
struct JsonWithService {
    service: &'static str,
}

impl<S> FormatEvent<S, JsonFields> for JsonWithService
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut object = Map::new();
        object.insert(
            "time".into(),
            Value::String(chrono::Utc::now().to_rfc3339()),
        );
        object.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        object.insert("service".into(), Value::String(self.service.into()));
        object.insert(
            "target".into(),
            Value::String(event.metadata().target().into()),
        );
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    object.extend(map);
                }
            }
        }
        let mut visitor = JsonVisitor(&mut object);
        event.record(&mut visitor);
        let line = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        // The whole cause chain, so a log line explains itself.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.0.insert(field.name().into(), Value::String(text));
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

//! What a service installs to observe pegasus-events, as the `observability` example's
//! binary does:
//!
//! - [`install_prometheus`]: `metrics-exporter-prometheus` as the global `metrics`
//!   recorder, with the library's histogram buckets, serving `/metrics` over HTTP;
//! - [`install_tracing`]: a `tracing` subscriber that logs to stderr and hands spans to
//!   OpenTelemetry, which prints each finished span to stdout (one line: service, name,
//!   kind, trace id, span id, parent id, links) and, when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, exports them over OTLP/HTTP too; and the W3C
//!   `traceparent` propagator.
//!
//! Install both before creating producers and consumers: metric handles registered before
//! the recorder exists stay no-ops.

use std::error::Error;
use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the Prometheus exporter as the global recorder, serving `/metrics` at
/// `address`, with the buckets of [`pegasus_events::metrics::histogram_buckets`].
///
/// # Errors
///
/// When a recorder is installed already, or the address cannot be bound.
pub fn install_prometheus(address: SocketAddr) -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut builder = PrometheusBuilder::new().with_http_listener(address);
    for (name, buckets) in pegasus_events::metrics::histogram_buckets() {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)?;
    }
    builder.install()?;
    pegasus_events::metrics::describe();
    Ok(())
}

/// Installs `tracing` with OpenTelemetry for `service`; returns the provider, to
/// [`SdkTracerProvider::shutdown`] at exit so the last spans are exported.
///
/// # Errors
///
/// When the OTLP exporter cannot be built, or a subscriber is installed already.
pub fn install_tracing(service: &str) -> Result<SdkTracerProvider, Box<dyn Error + Send + Sync>> {
    let mut provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        // Each finished span, printed as one line: a reader sees the trace without a
        // collector.
        .with_simple_exporter(SpanLines {
            service: service.to_owned(),
        });
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        provider = provider.with_batch_exporter(otlp);
    }
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("observability");
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    Ok(provider)
}

/// Prints each finished span to stdout as one line, e.g.
/// `span observability-publish "send observability.order.placed" kind=Producer trace=4bf9… span=00f0… parent=3a1c… links=-`.
#[derive(Debug)]
struct SpanLines {
    service: String,
}

impl SpanExporter for SpanLines {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for span in batch {
            let links: Vec<String> = span
                .links
                .links
                .iter()
                .map(|link| link.span_context.span_id().to_string())
                .collect();
            let _ = writeln!(
                out,
                "span {} {:?} kind={:?} trace={} span={} parent={} links={}",
                self.service,
                span.name,
                span.span_kind,
                span.span_context.trace_id(),
                span.span_context.span_id(),
                span.parent_span_id,
                if links.is_empty() {
                    "-".to_owned()
                } else {
                    links.join(",")
                },
            );
        }
        Ok(())
    }
}

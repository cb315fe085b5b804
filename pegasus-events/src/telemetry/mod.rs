//! Tracing across services: W3C Trace Context on the wire and spans named by the
//! OpenTelemetry messaging conventions.
//!
//! # Guarantees
//!
//! - **The trace goes with the record.** With the `opentelemetry` feature, a publish writes
//!   the current OpenTelemetry span context (the `send <topic>` span's, a child of the
//!   caller's span) as the `traceparent` and `tracestate` headers of W3C Trace Context,
//!   version `00`, exactly as the recommendation specifies. An outbox enqueue writes the
//!   context of its `create <topic>` span, a child of the business transaction's span, into
//!   the stored row; the relay publishes the row's headers as they were stored, so the
//!   trace continues from the transaction that committed the event, not from the relay.
//!   `PublishMetadata::traceparent`, when set, is written instead.
//! - **The consumer continues it.** The `process <topic>` span around each record's
//!   handling is a child of the record's `traceparent` and also links to it: the
//!   conventions allow either for single-message processing; the parent puts producer and
//!   consumer in one trace as the design's "one trace across services" asks, and the link
//!   is what batch-aware tools follow.
//! - **Bad context never costs a record.** A `traceparent` that is not valid (wrong
//!   length, not lowercase hex, all-zero ids, version `ff`) or an oversized `tracestate`
//!   starts a new trace and is logged at debug level with a fixed reason (never the value);
//!   the record is handled as usual and never dead-lettered for it. Values taken from the
//!   wire into attributes are bounded ([`semconv::MAX_ATTRIBUTE_BYTES`]).
//! - **Nothing is paid when nobody listens.** Spans are `tracing` spans at level INFO
//!   under the target `pegasus_events::otel`; when no subscriber enables them they are
//!   `Span::none()`, and a received record's trace headers are not even read.
//!
//! # Spans and attributes
//!
//! | span | kind | when | attributes |
//! |------|------|------|------------|
//! | `send <topic>` | producer | each publish, until the acknowledgement | `messaging.system`, `messaging.operation.name`/`.type` (`send`), `messaging.destination.name`, `messaging.kafka.message.key`, `messaging.client.id`, `messaging.message.id`, then `messaging.destination.partition.id`, `messaging.kafka.offset`; on failure `error.type` and status error |
//! | `create <topic>` | producer | each outbox enqueue | as `send`, operation `create`, without partition and offset |
//! | `process <topic>` | consumer | each received record, all attempts | as `send`, operation `process`, plus `messaging.consumer.group.name`, `pegasus.attempts`; when dead-lettered `pegasus.dead_letter.reason`, `error.type` and status error. Each retry is an event on it |
//! | `send <dead-letter topic>` | producer | each dead-letter write, a child of `process` | `messaging.destination.name`, `pegasus.dead_letter.reason`, then partition and offset |
//!
//! Every name lives in [`semconv`].
//!
//! # With an OpenTelemetry SDK
//!
//! The application installs the SDK, an exporter and `tracing-opentelemetry` (0.32 or
//! later: its context activation, on by default, is what makes an entered `tracing` span
//! the current OpenTelemetry context that this crate reads). This crate depends on the
//! `opentelemetry` API crate only.

pub mod semconv;
pub(crate) mod spans;
mod trace_context;

#[cfg(feature = "opentelemetry")]
mod otel;

pub use trace_context::{
    check_tracestate, InvalidTraceContext, TraceParent, TraceParentText, MAX_TRACESTATE_BYTES,
    TRACEPARENT_LEN,
};

use tracing::Span;

/// The trace headers a publish writes: a `traceparent` formatted on the stack and, when the
/// context has one, its `tracestate`.
#[derive(Clone, Debug)]
pub(crate) struct OutgoingTrace {
    pub(crate) traceparent: TraceParentText,
    pub(crate) tracestate: Option<String>,
}

/// The context of the current span as headers: `None` without the `opentelemetry`
/// feature, or when no valid span context is current.
pub(crate) fn current_trace(span: &Span) -> Option<OutgoingTrace> {
    #[cfg(feature = "opentelemetry")]
    {
        span.in_scope(otel::current)
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        let _ = span;
        None
    }
}

/// A received record's trace headers, checked.
#[derive(Clone, Copy, Debug, Default)]
// Read only by the OpenTelemetry bridge; without it the headers are still checked.
#[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
pub(crate) struct WireTrace<'a> {
    pub(crate) traceparent: Option<TraceParent>,
    pub(crate) tracestate: Option<&'a str>,
}

impl<'a> WireTrace<'a> {
    /// Reads the two headers' values; an invalid one is logged with its reason (never its
    /// value) and left out, so the record starts a new trace.
    pub(crate) fn read(
        traceparent: Option<&[u8]>,
        tracestate: Option<&'a [u8]>,
        topic: &str,
    ) -> Self {
        let Some(value) = traceparent else {
            return WireTrace::default();
        };
        match TraceParent::parse(value) {
            Ok(parent) => WireTrace {
                traceparent: Some(parent),
                tracestate: tracestate.and_then(|state| match check_tracestate(state) {
                    Ok(state) => Some(state),
                    Err(reason) => {
                        invalid(topic, "tracestate", reason);
                        None
                    }
                }),
            },
            Err(reason) => {
                invalid(topic, "traceparent", reason);
                WireTrace::default()
            }
        }
    }
}

/// Counts a trace header that was not accepted. The record starts a new trace.
fn invalid(topic: &str, header: &'static str, reason: InvalidTraceContext) {
    tracing::debug!(
        topic,
        header,
        reason = reason.as_str(),
        "trace context header not accepted; the record starts a new trace"
    );
}

/// Makes a process span with `make`, as a child of the record's remote context when there
/// is one and the `opentelemetry` feature is on.
pub(crate) fn process_span(wire: &WireTrace<'_>, make: impl FnOnce() -> Span) -> Span {
    #[cfg(feature = "opentelemetry")]
    {
        otel::child_of_remote(wire, make)
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        let _ = wire;
        make()
    }
}

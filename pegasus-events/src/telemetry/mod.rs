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
//!   `PublishMetadata::traceparent`, when set, is written instead (as version `00`), with
//!   the metadata's `tracestate`; either is checked first, and a publish or enqueue whose
//!   metadata carries a malformed one fails with
//!   [`Error::InvalidTraceContext`](crate::Error::InvalidTraceContext) before anything is
//!   sent or stored ([`check_outgoing`]).
//! - **The consumer continues it.** The `process <topic>` span around each record's
//!   handling is a child of the record's `traceparent` and also links to it: the
//!   conventions allow either for single-message processing; the parent puts producer and
//!   consumer in one trace as the design's "one trace across services" asks, and the link
//!   is what batch-aware tools follow.
//! - **Bad context never costs a record.** A `traceparent` that is not valid (wrong
//!   length, not lowercase hex, all-zero ids, version `ff`) or an oversized `tracestate`
//!   starts a new trace, is counted (`kafka_trace_context_invalid_total`) and logged at
//!   debug level with a fixed reason (never the value);
//!   the record is handled as usual and never dead-lettered for it. Values taken from the
//!   wire into attributes are bounded ([`semconv::MAX_ATTRIBUTE_BYTES`]).
//! - **Nothing is paid when nobody listens.** Spans are `tracing` spans at level INFO
//!   under the target `pegasus_events::otel`; when no subscriber enables them they are
//!   `Span::none()`. A received record's trace headers are still found (one pass over its
//!   headers) and a `traceparent` parsed, so a malformed one is counted whether or not a
//!   span is made; that allocates nothing.
//!
//! # Spans and attributes
//!
//! | span | kind | when | attributes |
//! |------|------|------|------------|
//! | `send <topic>` | producer | each publish, until the acknowledgement | `messaging.system`, `messaging.operation.name`/`.type` (`send`), `messaging.destination.name`, `messaging.kafka.message.key`, `messaging.client.id`, `messaging.message.id`, then `messaging.destination.partition.id`, `messaging.kafka.offset`; on failure `error.type` and status error |
//! | `create <topic>` | producer | each outbox enqueue | as `send`, operation `create`, without partition and offset |
//! | `process <topic>` | consumer | each received record, all attempts | as `send`, operation `process`, plus `messaging.consumer.group.name`, `pegasus.attempts`; when dead-lettered `pegasus.dead_letter.reason`, `error.type` and status error. Each retry is a span event named `handler failed; the record will be retried` with `attempt`, `max_attempts` and `retry_in_ms` |
//! | `send <dead-letter topic>` | producer | each dead-letter write, a child of `process` | `messaging.destination.name`, `pegasus.dead_letter.reason`, then partition and offset |
//!
//! Every name lives in [`semconv`].
//!
//! A retry's span event is the runtime's WARN log line for it, emitted inside the process
//! span (one event serves the log and the trace); a subscriber that filters out the
//! library's warnings for its OpenTelemetry layer drops the events, while
//! `pegasus.attempts` still tells how many handler calls the record took.
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
    check_outgoing, check_tracestate, InvalidTraceContext, TraceParent, TraceParentText,
    MAX_TRACESTATE_BYTES, TRACEPARENT_LEN,
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
    crate::metrics::trace_context_invalid(topic, header, reason.as_str());
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

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::WireTrace;

    /// Counters by their key's text (name and labels), for one thread's local recorder.
    #[derive(Default)]
    struct Counts(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

    struct Count(Arc<AtomicU64>);

    impl metrics::CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    impl Recorder for Counts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let text = format!("{}{{{}}}", key.name(), labels.join(","));
            let count = Arc::clone(self.0.lock().unwrap().entry(text).or_default());
            Counter::from_arc(Arc::new(Count(count)))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn each_trace_header_not_accepted_is_counted_by_header_and_reason_and_starts_a_new_trace() {
        let counts = Counts::default();
        let valid = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".as_slice();
        let long_state = vec![b'v'; 600];
        let read = metrics::with_local_recorder(&counts, || {
            [
                WireTrace::read(Some(&valid[..54]), None, "t"),
                WireTrace::read(
                    Some(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
                    None,
                    "t",
                ),
                WireTrace::read(
                    Some(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
                    None,
                    "t",
                ),
                WireTrace::read(Some(valid), Some(&long_state), "t"),
                WireTrace::read(Some(valid), Some(b"k=v"), "t"),
                WireTrace::read(None, Some(b"k=v"), "t"),
            ]
        });
        for (n, wire) in read[..3].iter().enumerate() {
            assert!(wire.traceparent.is_none(), "record {n}: a new trace");
        }
        assert!(read[3].traceparent.is_some() && read[3].tracestate.is_none());
        assert_eq!(read[4].tracestate, Some("k=v"));
        assert!(read[5].traceparent.is_none() && read[5].tracestate.is_none());
        let counted: BTreeMap<String, u64> = counts
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(key, count)| (key.clone(), count.load(Ordering::Relaxed)))
            .collect();
        let expected: BTreeMap<String, u64> = [
            ("kafka_trace_context_invalid_total{topic=t,header=traceparent,reason=length}", 1),
            ("kafka_trace_context_invalid_total{topic=t,header=traceparent,reason=hex}", 1),
            ("kafka_trace_context_invalid_total{topic=t,header=traceparent,reason=zero_trace_id}", 1),
            ("kafka_trace_context_invalid_total{topic=t,header=tracestate,reason=tracestate}", 1),
        ]
        .into_iter()
        .map(|(key, count)| (key.to_owned(), count))
        .collect();
        assert_eq!(counted, expected);
    }
}

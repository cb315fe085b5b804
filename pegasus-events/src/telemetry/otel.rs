//! The bridge to the OpenTelemetry API (feature `opentelemetry`): the current span's
//! context becomes the headers a record carries, and a received record's headers become
//! the parent of its process span. Only the `opentelemetry` API crate is used: with no SDK
//! installed every context is empty and nothing is written; with an SDK and
//! `tracing-opentelemetry` (0.32 or later, whose context activation makes an entered
//! `tracing` span the current OpenTelemetry context) the spans of this crate join the
//! application's traces.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing::Span;

use super::trace_context::TraceParent;
use super::{OutgoingTrace, WireTrace};

/// The current OpenTelemetry span context as headers, if there is a valid one.
pub(crate) fn current() -> Option<OutgoingTrace> {
    Context::map_current(|cx| {
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return None;
        }
        let state = context.trace_state().header();
        Some(OutgoingTrace {
            traceparent: TraceParent {
                trace_id: context.trace_id().to_bytes(),
                span_id: context.span_id().to_bytes(),
                flags: context.trace_flags().to_u8(),
            }
            .to_header(),
            tracestate: (!state.is_empty()).then_some(state),
        })
    })
}

/// Creates a span with `make` as a child of the remote context in `wire`, and links it to
/// that context too (the messaging conventions' link to the producer, for single-message
/// processing as for batches). Without a remote context the span is made as usual.
pub(crate) fn child_of_remote(wire: &WireTrace<'_>, make: impl FnOnce() -> Span) -> Span {
    let Some(parent) = wire.traceparent else {
        return make();
    };
    let state = wire
        .tracestate
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        TraceFlags::new(parent.flags & 0x01),
        true,
        state,
    );
    let span = {
        // Current while the span is created: tracing-opentelemetry takes the current
        // OpenTelemetry context as the parent of a span created in it.
        let _remote = Context::new()
            .with_remote_span_context(remote.clone())
            .attach();
        make()
    };
    span.in_scope(|| {
        Context::map_current(|cx| {
            let current = cx.span();
            // Only the span just made, the remote context's child: if no OpenTelemetry
            // layer listens to it, the current span is someone else's.
            if current.span_context().trace_id() == remote.trace_id()
                && current.span_context().span_id() != remote.span_id()
            {
                current.add_link(remote, Vec::new());
            }
        })
    });
    span
}

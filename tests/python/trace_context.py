"""W3C Trace Context through OpenTelemetry's own Python propagator (opentelemetry-api).

    trace_context.py write TRACE_ID SPAN_ID   prints the carrier the propagator injects for
                                              a sampled span context with a tracestate
    trace_context.py read TRACEPARENT [TRACESTATE]
                                              prints what the propagator extracts

Output is one JSON object. The tests carry these values to and from Kafka records; the
propagator, not the tests, decides what a valid header is.
"""
import json
import sys

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def write(trace_id: str, span_id: str) -> dict:
    context = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("python", "wrote-this")]),
    )
    carrier: dict = {}
    TraceContextTextMapPropagator().inject(
        carrier, context=trace.set_span_in_context(NonRecordingSpan(context))
    )
    return carrier


def read(traceparent: str, tracestate: str | None) -> dict:
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    context = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier)).get_span_context()
    return {
        "valid": context.is_valid,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "sampled": context.trace_flags.sampled,
        "tracestate": context.trace_state.to_header(),
    }


if __name__ == "__main__":
    if sys.argv[1] == "write":
        print(json.dumps(write(sys.argv[2], sys.argv[3])))
    else:
        print(json.dumps(read(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)))

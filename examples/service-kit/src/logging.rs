//! Structured logs where every line written while a request is handled carries the
//! request's W3C trace id: the caller's, from a valid incoming `traceparent`, else a new
//! one. The response carries a `traceparent` with that trace id, so a client can quote it,
//! and handlers can hand it to the events they publish ([`RequestTrace::traceparent`]),
//! so the trace goes on in the consuming service.
//!
//! Events get the same: a consumer's handler wrapped in [`Traced`] runs in an `event` span
//! carrying the trace id of the record's `traceparent`, which the publishing service wrote
//! from its request's trace, so one trace id finds a flow's lines in both services.
//!
//! Output: `LOG_FORMAT=json` writes one JSON object per line (the trace id under `span`);
//! anything else the compact text form (`request{trace_id=...}: ...`). `RUST_LOG` filters,
//! `info` by default.

use std::time::Instant;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use pegasus_events::consumer::{EventContext, EventHandler, HandlerError};
use pegasus_events::Event;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event, with its spans' fields.
    Compact,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `Json` when `LOG_FORMAT` is `json` (any case), else `Compact`.
    pub fn from_env() -> Self {
        match std::env::var("LOG_FORMAT") {
            Ok(value) if value.eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Compact,
        }
    }
}

/// Installs the process's `tracing` subscriber. Returns `false` (and changes nothing) when
/// one is installed already, as when two services run in one process.
pub fn init(format: LogFormat) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Compact => builder.compact().try_init().is_ok(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
            .is_ok(),
    }
}

/// The trace a request belongs to; taken by a handler as an argument (the
/// [`trace_requests`] middleware must run on the route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTrace {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This request's span id, 16 lowercase hex digits.
    pub span_id: String,
}

impl RequestTrace {
    /// The `traceparent` naming this request as the parent (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// The trace id of a valid W3C `traceparent` (version 00 layout; a later version's
    /// extra fields are ignored, as the recommendation says), else `None`.
    pub fn trace_id_of(traceparent: &str) -> Option<&str> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        let valid = hex(version, 2)
            && version != "ff"
            && (version != "00" || parts.next().is_none())
            && is_trace_id(trace_id)
            && hex(parent_id, 16)
            && !all_zero(parent_id)
            && hex(flags, 2);
        valid.then_some(trace_id)
    }

    fn for_request(request: &Request) -> Self {
        let incoming = request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(RequestTrace::trace_id_of)
            .map(str::to_owned);
        RequestTrace {
            trace_id: incoming.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            span_id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Without the middleware (a test router): a trace of its own, still valid.
        Ok(parts
            .extensions
            .get::<RequestTrace>()
            .cloned()
            .unwrap_or_else(|| RequestTrace {
                trace_id: uuid::Uuid::new_v4().simple().to_string(),
                span_id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
            }))
    }
}

/// Middleware (`.layer(axum::middleware::from_fn(trace_requests))`): runs the request in a
/// `request` span carrying its trace id, logs its end with status and duration, and
/// answers with the `traceparent`.
pub async fn trace_requests(mut request: Request, next: Next) -> Response {
    let trace = RequestTrace::for_request(&request);
    let span = tracing::info_span!(
        "request",
        trace_id = %trace.trace_id,
        method = %request.method(),
        // The path only: a query string could carry anything.
        path = %request.uri().path(),
    );
    let traceparent = trace.traceparent();
    request.extensions_mut().insert(trace);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

/// A consumer's handler run in an `event` span that carries a trace id, as
/// [`trace_requests`] does for a request: every line logged while the event is handled
/// (by the handler, the inbox, a notifier) carries it.
///
/// The trace id is that of the record's `traceparent` when it is valid; else the
/// correlation id when that is a trace id (32 lowercase hex digits, not all zero); else the event id's 32
/// hex digits, a stand-in that still finds every line of that event.
#[derive(Clone, Debug)]
pub struct Traced<H>(pub H);

impl<E: Event, H: EventHandler<E>> EventHandler<E> for Traced<H> {
    async fn handle(&self, event: E, context: &EventContext<'_>) -> Result<(), HandlerError> {
        let span = tracing::info_span!(
            "event",
            trace_id = %event_trace_id(context),
            topic = context.topic,
        );
        self.0.handle(event, context).instrument(span).await
    }
}

/// `len` lowercase hex digits.
fn hex(part: &str, len: usize) -> bool {
    part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn all_zero(part: &str) -> bool {
    part.bytes().all(|b| b == b'0')
}

/// A W3C trace id: 32 lowercase hex digits, not all zero.
fn is_trace_id(text: &str) -> bool {
    hex(text, 32) && !all_zero(text)
}

/// The trace id an event's log lines carry ([`Traced`]).
pub fn event_trace_id(context: &EventContext<'_>) -> String {
    let from_traceparent = context
        .metadata
        .traceparent
        .as_deref()
        .and_then(RequestTrace::trace_id_of);
    let from_correlation = || context.correlation_id().filter(|id| is_trace_id(id));
    match from_traceparent.or_else(from_correlation) {
        Some(trace_id) => trace_id.to_owned(),
        None => context.event_id().simple().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn an_events_lines_carry_its_traceparents_trace_id_else_a_trace_id_correlation_else_its_id() {
        let event_id = uuid::Uuid::from_u128(0x0190a4b2_7c1e_7000_8000_000000000001);
        let metadata = |traceparent: Option<&str>, correlation: Option<&str>| {
            pegasus_events::wire::EventMetadata {
                id: event_id,
                source: "shipping-api".into(),
                event_type: "ShipmentCreatedEvent".into(),
                time: chrono::DateTime::UNIX_EPOCH,
                schema_version: 1,
                partition_key: None,
                subject: None,
                correlation_id: correlation.map(|c| c.to_owned().into()),
                causation_id: None,
                traceparent: traceparent.map(|t| t.to_owned().into()),
                tracestate: None,
                form: pegasus_events::wire::WireForm::Binary,
            }
        };
        let trace_id = |traceparent, correlation| {
            event_trace_id(&EventContext {
                metadata: metadata(traceparent, correlation),
                topic: "shipping.shipment.created",
                partition: 0,
                offset: 7,
                key: None,
                attempt: 1,
                group_id: "identity-api-shipmentcreated-consumer",
            })
        };
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let other = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(
            trace_id(Some(traceparent), Some(other)),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // A malformed traceparent is not continued; a correlation id that is a trace id is.
        assert_eq!(trace_id(Some("00-zz-yy-01"), Some(other)), other);
        // Neither: the event id, 32 hex digits like a trace id.
        assert_eq!(
            trace_id(None, Some("order-42")),
            "0190a4b27c1e70008000000000000001"
        );
        assert_eq!(trace_id(None, None), "0190a4b27c1e70008000000000000001");
    }

    #[test]
    fn only_valid_traceparents_are_continued() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            RequestTrace::trace_id_of(valid),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(RequestTrace::trace_id_of(invalid), None, "{invalid}");
        }
    }

    async fn trace_of(traceparent: Option<&str>) -> (String, String) {
        async fn handler(trace: RequestTrace) -> String {
            trace.trace_id
        }
        let app = Router::new()
            .route("/", get(handler))
            .layer(axum::middleware::from_fn(trace_requests));
        let mut request = Request::get("/");
        if let Some(value) = traceparent {
            request = request.header("traceparent", value);
        }
        let response = app
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let header = response
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("a traceparent answer");
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        (String::from_utf8_lossy(&bytes).into_owned(), header)
    }

    #[tokio::test]
    async fn a_request_continues_the_callers_trace_or_starts_one() {
        let (seen, answered) = trace_of(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .await;
        assert_eq!(seen, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(answered.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(RequestTrace::trace_id_of(&answered).is_some());

        let (seen, answered) = trace_of(Some("garbage")).await;
        assert_eq!(seen.len(), 32);
        assert_eq!(RequestTrace::trace_id_of(&answered), Some(seen.as_str()));
    }
}

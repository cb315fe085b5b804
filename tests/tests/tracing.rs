//! Traces across services, against the real broker and databases: the `traceparent` a
//! publish writes continues in the consumer's `process` span, directly and through the
//! outbox (SQLite and PostgreSQL); a context written by OpenTelemetry's Python propagator
//! continues in our handler, and ours parses with it; bad trace headers start a new trace
//! and never cost the record.
//!
//! Spans are collected by the OpenTelemetry SDK's in-memory exporter behind
//! `tracing-opentelemetry`, installed once for this test binary. Tests run in parallel, so
//! each looks only at the spans of its own trace ids.

use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use pegasus_events::consumer::{
    EventConsumer, EventContext, EventHandler, HandlerError, RetryPolicy,
};
use pegasus_events::outbox::{OutboxRelay, RelaySettings};
use pegasus_events::wire::PublishMetadata;
use pegasus_events::{Event, EventProducer, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    config, dead_letter_settings, fresh_postgres_database, header, headers_of,
    publish_with_raw_headers, read_record, run_until_done, unique, TEST_DEADLINE,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The SDK's exporter every span of this binary ends in.
fn exported() -> &'static InMemorySpanExporter {
    static INSTALLED: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &INSTALLED
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_subscriber::filter::LevelFilter::INFO)
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")));
            tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
            (exporter, provider)
        })
        .0
}

/// The finished spans of trace `trace_id`.
fn spans_of(trace_id: opentelemetry::trace::TraceId) -> Vec<SpanData> {
    exported()
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace_id)
        .collect()
}

fn named<'s>(spans: &'s [SpanData], name: &str) -> &'s SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span named {name:?} in {spans:#?}");
    found[0]
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// What a handler saw: its event, the OpenTelemetry context current while it ran (the
/// process span's), and the record's `traceparent` header.
#[derive(Clone, Debug)]
struct Seen {
    run: String,
    n: u32,
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
    traceparent: Option<String>,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl Recorder {
    fn of_run(&self, run: &str) -> Vec<Seen> {
        let seen = self.0.lock().unwrap();
        seen.iter().filter(|s| s.run == run).cloned().collect()
    }

    fn record(&self, run: &str, n: u32, context: &EventContext<'_>) {
        let (trace_id, span_id) = Context::map_current(|cx| {
            let span = cx.span();
            (
                span.span_context().trace_id(),
                span.span_context().span_id(),
            )
        });
        self.0.lock().unwrap().push(Seen {
            run: run.to_owned(),
            n,
            trace_id,
            span_id,
            traceparent: context.metadata.traceparent.as_deref().map(str::to_owned),
        });
    }
}

macro_rules! traced_event {
    ($name:ident, $topic:literal) => {
        #[derive(Debug, Clone, Serialize, Deserialize, Event)]
        #[event(topic = $topic)]
        struct $name {
            run: String,
            #[event(key)]
            n: u32,
        }

        impl EventHandler<$name> for Arc<Recorder> {
            async fn handle(
                &self,
                event: $name,
                context: &EventContext<'_>,
            ) -> Result<(), HandlerError> {
                self.record(&event.run, event.n, context);
                Ok(())
            }
        }
    };
}

traced_event!(Direct, "tests.tracing.direct");
traced_event!(ThroughOutbox, "tests.tracing.outbox");
traced_event!(Foreign, "tests.tracing.foreign");
traced_event!(Refused, "tests.tracing.refused");

async fn create_topic<E: Event>() {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<E>().partitions(1)])
        .await
        .expect("topic");
}

/// Runs a consumer of `E` until the handler saw `count` events of `run`.
async fn consume<E: Event>(recorder: &Arc<Recorder>, run: &str, count: usize)
where
    Arc<Recorder>: EventHandler<E>,
{
    let consumer = EventConsumer::builder(config("tracing-consumer"))
        .group_id(unique("tracing"))
        .settings(dead_letter_settings(&unique("tracing-dlq")))
        .handler::<E, _>(Arc::clone(recorder))
        .build()
        .unwrap();
    let watched = Arc::clone(recorder);
    let run = run.to_owned();
    run_until_done(consumer, move || watched.of_run(&run).len() >= count).await;
}

/// The process span of the record a handler saw: the one current in the handler. It is
/// picked by its id, not as the trace's only process span: tests that share a topic each
/// run a consumer from the topic's start, so another test's consumer may handle the same
/// record and add its own process span to the trace.
fn process_span_of(spans: &[SpanData], seen: &Seen, topic: &str) -> SpanData {
    let name = format!("process {topic}");
    let span = spans
        .iter()
        .find(|span| span.name == name && span.span_context.span_id() == seen.span_id)
        .unwrap_or_else(|| panic!("the span current in the handler is {name:?}: {spans:#?}"))
        .clone();
    assert_eq!(span.span_kind, SpanKind::Consumer);
    span
}

fn python() -> String {
    std::env::var("PEGASUS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "PEGASUS_TEST_PYTHON is not set: run the tests with `scripts/test`, which installs \
             opentelemetry-api into target/cloudevents-venv"
        )
    })
}

/// Runs OpenTelemetry's Python propagator (`tests/python/trace_context.py`).
fn propagator(args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/trace_context.py");
    let output = std::process::Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("the propagator script runs");
    assert!(
        output.status.success(),
        "the propagator script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_set_around_publish_continues_in_the_handlers_process_span_as_its_child_and_link() {
    exported();
    create_topic::<Direct>().await;
    let producer = EventProducer::new(&config("tracing-publisher"))
        .await
        .unwrap();
    let run = unique("run");
    let business = tracing::info_span!("business");
    let business_context = business.context().span().span_context().clone();
    assert!(
        business_context.is_valid(),
        "the SDK sampled the business span"
    );
    let delivery = producer
        .publish(&Direct {
            run: run.clone(),
            n: 7,
        })
        .instrument(business.clone())
        .await
        .unwrap();
    drop(business);

    let recorder = Arc::new(Recorder::default());
    consume::<Direct>(&recorder, &run, 1).await;
    let seen = recorder.of_run(&run).remove(0);
    assert_eq!(seen.trace_id, business_context.trace_id(), "one trace");

    let spans = spans_of(business_context.trace_id());
    let send = named(&spans, "send tests.tracing.direct");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(send.parent_span_id, business_context.span_id());
    let expected = [
        ("messaging.system", "kafka".to_owned()),
        ("messaging.operation.name", "send".to_owned()),
        ("messaging.operation.type", "send".to_owned()),
        ("messaging.destination.name", Direct::TOPIC.to_owned()),
        ("messaging.kafka.message.key", "7".to_owned()),
        ("messaging.client.id", "tracing-publisher".to_owned()),
        ("messaging.message.id", delivery.event_id.to_string()),
        (
            "messaging.destination.partition.id",
            delivery.partition.to_string(),
        ),
        ("messaging.kafka.offset", delivery.offset.to_string()),
    ];
    for (key, value) in &expected {
        assert_eq!(
            attribute(send, key).as_deref(),
            Some(value.as_str()),
            "send {key}"
        );
    }

    // The header on the wire is the send span's context, W3C version 00.
    let sent = format!(
        "00-{}-{}-01",
        send.span_context.trace_id(),
        send.span_context.span_id()
    );
    assert_eq!(seen.traceparent.as_deref(), Some(sent.as_str()));

    let process = process_span_of(&spans, &seen, Direct::TOPIC);
    assert_eq!(
        process.parent_span_id,
        send.span_context.span_id(),
        "a child of send"
    );
    assert!(process.parent_span_is_remote);
    let linked: Vec<_> = process
        .links
        .links
        .iter()
        .map(|l| l.span_context.span_id())
        .collect();
    assert_eq!(
        linked,
        vec![send.span_context.span_id()],
        "and linked to it"
    );
    for (key, value) in [
        ("messaging.operation.type", "process".to_owned()),
        ("messaging.destination.name", Direct::TOPIC.to_owned()),
        (
            "messaging.destination.partition.id",
            delivery.partition.to_string(),
        ),
        ("messaging.kafka.offset", delivery.offset.to_string()),
        ("messaging.message.id", delivery.event_id.to_string()),
        ("messaging.client.id", "tracing-consumer".to_owned()),
        ("pegasus.attempts", "1".to_owned()),
    ] {
        assert_eq!(
            attribute(&process, key).as_deref(),
            Some(value.as_str()),
            "process {key}"
        );
    }
    assert!(attribute(&process, "messaging.consumer.group.name").is_some());
    assert!(attribute(&process, "error.type").is_none(), "handled");
}

/// Enqueues one event inside a business span, commits, runs the relay until a consumer
/// handled it, and checks the handler's trace is the business transaction's.
async fn through_the_outbox(
    relay: OutboxRelay,
    enqueue: impl std::future::Future<Output = ()>,
    run: &str,
    business: tracing::Span,
) {
    let business_context = business.context().span().span_context().clone();
    enqueue.instrument(business.clone()).await;
    drop(business);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(relay.run_until(async move {
        let _ = stopped.await;
    }));
    let recorder = Arc::new(Recorder::default());
    consume::<ThroughOutbox>(&recorder, run, 1).await;
    let _ = stop.send(());
    tokio::time::timeout(TEST_DEADLINE, relaying)
        .await
        .expect("the relay stopped")
        .unwrap()
        .unwrap();

    let seen = recorder.of_run(run).remove(0);
    assert_eq!(
        seen.trace_id,
        business_context.trace_id(),
        "the handler continues the transaction's trace, not the relay's"
    );
    let spans = spans_of(business_context.trace_id());
    let create = named(&spans, "create tests.tracing.outbox");
    assert_eq!(create.span_kind, SpanKind::Producer);
    assert_eq!(create.parent_span_id, business_context.span_id());
    assert_eq!(
        attribute(create, "messaging.operation.type").as_deref(),
        Some("create")
    );
    let process = process_span_of(&spans, &seen, ThroughOutbox::TOPIC);
    assert_eq!(process.parent_span_id, create.span_context.span_id());
}

fn relay_settings() -> RelaySettings {
    RelaySettings {
        poll_interval: std::time::Duration::from_millis(100),
        dead_letter_topic: unique("tracing-dlq"),
        ..RelaySettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_continues_through_the_sqlite_outbox_from_the_enqueueing_transaction() {
    exported();
    create_topic::<ThroughOutbox>().await;
    let kafka = config("tracing-outbox");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("tracing"));
    let outbox = pegasus_events::outbox::SqliteOutbox::connect(
        &format!("sqlite://{}.db", path.display()),
        &kafka,
    )
    .await
    .unwrap();
    let run = unique("run");
    let event = ThroughOutbox {
        run: run.clone(),
        n: 1,
    };
    let enqueue = async {
        let mut tx = outbox.pool().begin().await.unwrap();
        outbox.enqueue(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    };
    let relay = outbox.relay(&kafka, relay_settings()).unwrap();
    through_the_outbox(relay, enqueue, &run, tracing::info_span!("business")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_continues_through_the_postgres_outbox_from_the_enqueueing_transaction() {
    exported();
    create_topic::<ThroughOutbox>().await;
    let kafka = config("tracing-outbox");
    let outbox =
        pegasus_events::outbox::PostgresOutbox::connect(&fresh_postgres_database().await, &kafka)
            .await
            .unwrap();
    let run = unique("run");
    let event = ThroughOutbox {
        run: run.clone(),
        n: 2,
    };
    let enqueue = async {
        let mut tx = outbox.pool().begin().await.unwrap();
        outbox.enqueue(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    };
    let relay = outbox.relay(&kafka, relay_settings()).unwrap();
    through_the_outbox(relay, enqueue, &run, tracing::info_span!("business")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_written_by_pythons_propagator_continues_in_our_handler() {
    exported();
    create_topic::<Foreign>().await;
    // Fresh ids each run: records of earlier runs stay on the topic.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = trace_id[..16].to_owned();
    let carrier = propagator(&["write", &trace_id, &span_id]);
    let run = unique("run");
    // The propagator's carrier goes onto the record as it is.
    let metadata = PublishMetadata {
        traceparent: carrier["traceparent"].as_str().map(str::to_owned),
        tracestate: carrier["tracestate"].as_str().map(str::to_owned),
        ..PublishMetadata::default()
    };
    let producer = EventProducer::new(&config("python-like")).await.unwrap();
    producer
        .publish_with(
            &Foreign {
                run: run.clone(),
                n: 1,
            },
            &metadata,
        )
        .await
        .unwrap();

    let recorder = Arc::new(Recorder::default());
    consume::<Foreign>(&recorder, &run, 1).await;
    let seen = recorder.of_run(&run).remove(0);
    assert_eq!(seen.trace_id.to_string(), trace_id);
    let spans = spans_of(seen.trace_id);
    let process = process_span_of(&spans, &seen, Foreign::TOPIC);
    assert_eq!(process.parent_span_id.to_string(), span_id);
    assert_eq!(
        process.span_context.trace_state().header(),
        "python=wrote-this",
        "the tracestate continues too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traceparent_we_write_parses_with_pythons_propagator() {
    exported();
    create_topic::<Direct>().await;
    let producer = EventProducer::new(&config("tracing-publisher"))
        .await
        .unwrap();
    let business = tracing::info_span!("business");
    let delivery = producer
        .publish(&Direct {
            run: unique("run"),
            n: 1,
        })
        .instrument(business.clone())
        .await
        .unwrap();
    let record = tokio::task::spawn_blocking(move || {
        read_record(Direct::TOPIC, delivery.partition, delivery.offset)
    })
    .await
    .unwrap();
    let headers = headers_of(&record);
    let written = header(&headers, "traceparent").expect("a traceparent was written");
    let read = propagator(&["read", written]);
    let send = named(
        &spans_of(business.context().span().span_context().trace_id()),
        "send tests.tracing.direct",
    )
    .clone();
    assert_eq!(read["valid"], true, "{written}");
    assert_eq!(read["trace_id"], send.span_context.trace_id().to_string());
    assert_eq!(read["span_id"], send.span_context.span_id().to_string());
    assert_eq!(read["sampled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_trace_context_starts_a_new_trace_and_the_record_is_still_handled() {
    exported();
    create_topic::<Foreign>().await;
    // Fresh ids each run: records of earlier runs stay on the topic.
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    let valid = format!("00-{fresh}-{}-01", &fresh[..16]);
    let valid = valid.as_str();
    let oversized_state = format!("k={}", "v".repeat(600));
    let bad: Vec<(String, Option<String>)> = vec![
        (valid[..54].to_owned(), None),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".to_owned(),
            None,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01".to_owned(),
            None,
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            None,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_owned(),
            None,
        ),
        (
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            None,
        ),
        ("x".repeat(10_000), None),
        // A valid parent with an oversized tracestate: the trace continues, the state is
        // dropped.
        (valid.to_owned(), Some(oversized_state)),
    ];
    let run = unique("run");
    // Written as another service might: our own publish refuses a malformed context.
    let producer = EventProducer::new(&config("foreign-client")).await.unwrap();
    for (n, (traceparent, tracestate)) in bad.iter().enumerate() {
        let mut headers: Vec<(&str, &[u8])> = vec![("traceparent", traceparent.as_bytes())];
        if let Some(state) = tracestate {
            headers.push(("tracestate", state.as_bytes()));
        }
        let event = Foreign {
            run: run.clone(),
            n: n as u32,
        };
        publish_with_raw_headers(&producer, &event, &headers).await;
    }

    let recorder = Arc::new(Recorder::default());
    consume::<Foreign>(&recorder, &run, bad.len()).await;
    let seen = recorder.of_run(&run);
    assert_eq!(
        seen.len(),
        bad.len(),
        "every record handled once, none dead-lettered"
    );
    for seen in &seen {
        let spans = spans_of(seen.trace_id);
        let process = process_span_of(&spans, seen, Foreign::TOPIC);
        if seen.n as usize == bad.len() - 1 {
            assert_eq!(
                seen.trace_id.to_string(),
                &valid[3..35],
                "the valid parent continues"
            );
            assert_eq!(
                process.span_context.trace_state().header(),
                "",
                "the state is dropped"
            );
        } else {
            assert_eq!(
                process.parent_span_id,
                opentelemetry::trace::SpanId::INVALID,
                "record {}: a new trace",
                seen.n
            );
            assert!(process.links.links.is_empty());
            assert!(
                attribute(&process, "error.type").is_none(),
                "handled, not failed"
            );
        }
    }
}

/// The high watermark of partition 0 of `topic`: the offset its next record gets.
fn next_offset(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", pegasus_events_tests::bootstrap())
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, std::time::Duration::from_secs(30))
        .expect("watermarks")
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_trace_context_given_to_publish_or_enqueue_is_refused_and_nothing_is_written() {
    exported();
    create_topic::<Refused>().await;
    let producer = EventProducer::new(&config("tracing-publisher"))
        .await
        .unwrap();
    let event = Refused {
        run: unique("run"),
        n: 1,
    };
    let malformed = PublishMetadata {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01".to_owned()),
        ..PublishMetadata::default()
    };
    let before = tokio::task::spawn_blocking(|| next_offset(Refused::TOPIC))
        .await
        .unwrap();
    let refused = producer.publish_with(&event, &malformed).await.unwrap_err();
    assert!(
        matches!(
            refused.error,
            pegasus_events::Error::InvalidTraceContext {
                header: "traceparent",
                reason: pegasus_events::telemetry::InvalidTraceContext::Hex,
            }
        ),
        "{refused:?}"
    );
    assert!(refused.record.is_none(), "nothing was encoded to hand back");
    // A valid record published after it lands where the refused one would have: nothing
    // reached the topic in between. (The topic is this test's alone.)
    let after = producer.publish(&event).await.unwrap();
    assert_eq!(after.offset, before, "the refused publish wrote no record");

    let kafka = config("tracing-outbox");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("refused"));
    let outbox = pegasus_events::outbox::SqliteOutbox::connect(
        &format!("sqlite://{}.db", path.display()),
        &kafka,
    )
    .await
    .unwrap();
    let oversized_state = PublishMetadata {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        tracestate: Some(format!("k={}", "v".repeat(600))),
        ..PublishMetadata::default()
    };
    let mut tx = outbox.pool().begin().await.unwrap();
    for metadata in [&malformed, &oversized_state] {
        let error = outbox
            .enqueue_with(&mut tx, &event, metadata)
            .await
            .unwrap_err();
        assert!(
            matches!(error, pegasus_events::Error::InvalidTraceContext { .. }),
            "{error:?}"
        );
    }
    tx.commit().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox")
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0, "no row written");
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.tracing.retried")]
struct Retried {
    run: String,
    #[event(key)]
    n: u32,
}

/// Fails transiently: record 1 of its run twice, then handles it; record 2 always, so it
/// is dead-lettered when its attempts are spent. Records of other runs (left on the topic
/// by earlier runs) are handled at once.
struct FailsTwice {
    run: String,
    calls: Mutex<[u32; 3]>,
}

impl EventHandler<Retried> for Arc<FailsTwice> {
    async fn handle(&self, event: Retried, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            calls[event.n as usize] += 1;
            calls[event.n as usize]
        };
        match (event.n, calls) {
            (1, 3) => Ok(()),
            _ => Err(HandlerError::transient(format!(
                "record {} fails, call {calls}",
                event.n
            ))),
        }
    }
}

/// The span events the runtime adds to a process span for each retry.
const RETRY_EVENT: &str = "handler failed; the record will be retried";

fn retry_events(span: &SpanData) -> Vec<String> {
    span.events
        .events
        .iter()
        .filter(|event| event.name == RETRY_EVENT)
        .map(|event| {
            event
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "attempt")
                .map(|kv| kv.value.to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_events_on_the_process_span_and_a_dead_letter_write_is_its_own_span() {
    exported();
    create_topic::<Retried>().await;
    let producer = EventProducer::new(&config("tracing-publisher"))
        .await
        .unwrap();
    let run = unique("run");
    // Each record in its own business span, so each has its own trace.
    let mut traces = Vec::new();
    for n in [1, 2] {
        let business = tracing::info_span!("business");
        traces.push(business.context().span().span_context().trace_id());
        producer
            .publish(&Retried {
                run: run.clone(),
                n,
            })
            .instrument(business)
            .await
            .unwrap();
    }

    let dead_letter_topic = unique("tracing-dlq");
    let settings = pegasus_events::consumer::ConsumerSettings {
        retry: RetryPolicy::default().with_max_attempts(3).with_backoff(
            std::time::Duration::from_millis(10),
            2.0,
            std::time::Duration::from_millis(50),
        ),
        ..dead_letter_settings(&dead_letter_topic)
    };
    let handler = Arc::new(FailsTwice {
        run: run.clone(),
        calls: Mutex::new([0; 3]),
    });
    let consumer = EventConsumer::builder(config("tracing-consumer"))
        .group_id(unique("tracing"))
        .settings(settings)
        .handler::<Retried, _>(handler)
        .build()
        .unwrap();
    let process_name = format!("process {}", Retried::TOPIC);
    let watched = (traces.clone(), process_name.clone());
    // Done when both process spans ended: the dead-letter write ends inside the second.
    run_until_done(consumer, move || {
        let (traces, name) = &watched;
        traces
            .iter()
            .all(|trace| spans_of(*trace).iter().any(|span| &span.name == name))
    })
    .await;

    // Record 1: two retries, then handled.
    let spans = spans_of(traces[0]);
    let handled = named(&spans, &process_name);
    assert_eq!(retry_events(handled), ["1", "2"], "{handled:#?}");
    assert_eq!(attribute(handled, "pegasus.attempts").as_deref(), Some("3"));
    assert!(attribute(handled, "error.type").is_none(), "{handled:#?}");
    assert!(
        matches!(handled.status, Status::Unset | Status::Ok),
        "handled after its retries: {:?}",
        handled.status
    );
    let dead_letter_name = format!("send {dead_letter_topic}");
    assert!(
        !spans.iter().any(|span| span.name == dead_letter_name),
        "no dead-letter write"
    );

    // Record 2: two retries, then the third failure dead-letters it.
    let spans = spans_of(traces[1]);
    let failed = named(&spans, &process_name);
    assert_eq!(retry_events(failed), ["1", "2"], "{failed:#?}");
    assert_eq!(attribute(failed, "pegasus.attempts").as_deref(), Some("3"));
    assert_eq!(attribute(failed, "error.type").as_deref(), Some("handler"));
    assert_eq!(
        attribute(failed, "pegasus.dead_letter.reason").as_deref(),
        Some("handler")
    );
    assert!(
        matches!(failed.status, Status::Error { .. }),
        "dead-lettered: {:?}",
        failed.status
    );
    let dead_letter = named(&spans, &dead_letter_name);
    assert_eq!(dead_letter.span_kind, SpanKind::Producer);
    assert_eq!(
        dead_letter.parent_span_id,
        failed.span_context.span_id(),
        "a child of the process span"
    );
    for (key, value) in [
        ("messaging.destination.name", dead_letter_topic.as_str()),
        ("pegasus.dead_letter.reason", "handler"),
    ] {
        assert_eq!(
            attribute(dead_letter, key).as_deref(),
            Some(value),
            "dead-letter send {key}"
        );
    }
    assert!(attribute(dead_letter, "messaging.kafka.offset").is_some());
}

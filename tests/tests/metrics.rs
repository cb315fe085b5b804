//! The metrics against the real broker, PostgreSQL and SQLite: each scenario runs with a
//! recorder installed and checks that every metric it touches moved by exactly the
//! expected amount.
//!
//! One recorder serves the whole test binary (the facade has one global recorder), and
//! the tests run in parallel: each uses its own client id (the `service` label), consumer
//! group and dead-letter topic, and compares series by their labels. The recorder is this
//! file's own, over `metrics-util`'s registry: `DebuggingRecorder`'s snapshot resets every
//! counter and gauge it reads, which would let one test's reading erase another's counts.
//!
//! Topics are bound to event types at compile time, so a broker that kept the records of
//! earlier runs still holds them; the consumers therefore start at the end of their topic
//! (`OffsetReset::Latest`) and the scenario begins only once a probe event published after
//! the group joined reached the handler. Probes published before that are never read; the
//! handler counts those it saw, and the expected figures include them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError, OffsetReset,
    RetryPolicy,
};
use pegasus_events::idempotency::{Inbox, InboxHandler, SqliteIdempotencyStore};
use pegasus_events::metrics as names;
use pegasus_events::outbox::{PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events::{
    Event, EventProducer, IdempotencyStore, KafkaConfig, MemoryIdempotencyStore, PublishMetadata,
    TopicAdmin, TopicSpec,
};
use pegasus_events_tests::{
    config, fresh_postgres_database, publish_with_raw_headers, unique, TEST_DEADLINE,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ------------------------------------------------------------------------ the recorder

/// A recorder that keeps every value until the process ends; reading changes nothing.
#[derive(Clone)]
struct KeepingRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for KeepingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}

/// The registry behind the global recorder, installed by the first test that asks: before
/// any client of that test exists, and every client registers its handles at creation or
/// later.
fn registry() -> &'static Registry<Key, AtomicStorage> {
    static RECORDER: OnceLock<KeepingRecorder> = OnceLock::new();
    &RECORDER
        .get_or_init(|| {
            let recorder = KeepingRecorder(Arc::new(Registry::atomic()));
            metrics::set_global_recorder(recorder.clone())
                .expect("no other recorder in this test binary");
            recorder
        })
        .0
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, (*v).to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

/// The counter's value; `None` if it was never registered.
fn counter(name: &'static str, labels: &[(&'static str, &str)]) -> Option<u64> {
    registry()
        .get_counter(&key(name, labels))
        .map(|c| c.load(Ordering::SeqCst))
}

fn gauge(name: &'static str, labels: &[(&'static str, &str)]) -> Option<f64> {
    registry()
        .get_gauge(&key(name, labels))
        .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
}

/// How many values the histogram holds.
fn histogram_count(name: &'static str, labels: &[(&'static str, &str)]) -> usize {
    registry()
        .get_histogram(&key(name, labels))
        .map_or(0, |h| h.data().len())
}

/// Waits until `condition` holds, at most 60 s; the message names what did not happen.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------ helpers

async fn create_topic<E: Event>() {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<E>().partitions(1)])
        .await
        .expect("topic");
}

/// Starts `consumer` in a task; the returned sender stops it.
fn start(
    consumer: EventConsumer,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tokio::time::timeout(
            TEST_DEADLINE,
            consumer.run_until(async {
                let _ = stopped.await;
            }),
        )
        .await
        .expect("the consumer stopped before the deadline")
        .expect("the consumer ran");
    });
    (stop, task)
}

/// Publishes probes (from `probe`) every 300 ms until `seen` says the handler got one;
/// returns how many were published.
async fn probe_until_seen<E: Event>(
    producer: &EventProducer,
    probe: impl Fn() -> E,
    seen: impl Fn() -> bool,
) -> u64 {
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen() {
        assert!(Instant::now() < deadline, "no probe reached the handler");
        producer.publish(&probe()).await.expect("probe published");
        published += 1;
        let wait = Instant::now() + Duration::from_millis(300);
        while !seen() && Instant::now() < wait {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    published
}

fn settings(dead_letter_topic: &str) -> ConsumerSettings {
    ConsumerSettings {
        offset_reset: OffsetReset::Latest,
        shutdown_timeout: Duration::from_secs(10),
        commit_interval: Duration::from_millis(200),
        retry: RetryPolicy::default().with_backoff(
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(50),
        ),
        dead_letter_topic: dead_letter_topic.to_owned(),
        ..ConsumerSettings::default()
    }
}

// ------------------------------------------------------------------------ the consumer scenario

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.metrics.scenario")]
struct Scenario {
    run: String,
    #[event(key)]
    key: u32,
    action: String,
}

/// Another event type on the same topic: the `Scenario` handler cannot decode it.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.metrics.scenario", name = "Stranger")]
struct Stranger {
    run: String,
}

#[derive(Default)]
struct ScenarioHandler {
    run: String,
    probes: AtomicUsize,
    last: AtomicBool,
}

impl EventHandler<Scenario> for Arc<ScenarioHandler> {
    async fn handle(
        &self,
        event: Scenario,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        match event.action.as_str() {
            "probe" => {
                self.probes.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            "retry-once" if context.attempt == 1 => {
                Err(HandlerError::transient("first attempt fails"))
            }
            "fail" => Err(HandlerError::transient("always fails")),
            "panic" => panic!("the scenario's panicking handler"),
            "last" => {
                self.last.store(true, Ordering::SeqCst);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A memory store whose first lookup fails, as a database outage would.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryIdempotencyStore,
    failed: AtomicBool,
}

impl IdempotencyStore for FlakyStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> pegasus_events::Result<bool> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Err(pegasus_events::Error::IdempotencyStore {
                store: "flaky",
                operation: "look an event up",
                source: "the first lookup fails".into(),
            });
        }
        self.inner.is_processed(group, event_id).await
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> pegasus_events::Result<()> {
        self.inner.mark_processed(group, event_id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_counts_once_by_outcome_retries_per_attempt_and_idempotency_lookups_hits_and_errors_exactly(
) {
    registry();
    create_topic::<Scenario>().await;
    let run = unique("run");
    let service = unique("metrics-publisher");
    let group = unique("metrics-scenario");
    let dead_letter_topic = unique("metrics-dlq");
    let producer = EventProducer::new(&config(&service)).await.unwrap();
    let handler = Arc::new(ScenarioHandler {
        run: run.clone(),
        ..ScenarioHandler::default()
    });
    let consumer = EventConsumer::builder(config("metrics-consumer"))
        .group_id(&group)
        .settings(settings(&dead_letter_topic))
        .idempotency(FlakyStore::default())
        .handler::<Scenario, _>(Arc::clone(&handler))
        .build()
        .unwrap();
    let (stop, consumer) = start(consumer);

    let event = |key: u32, action: &str| Scenario {
        run: run.clone(),
        key,
        action: action.to_owned(),
    };
    let probes_published = probe_until_seen(
        &producer,
        || event(0, "probe"),
        || handler.probes.load(Ordering::SeqCst) > 0,
    )
    .await;
    // In partition order: three handled, one retried once and handled, one failing every
    // attempt (3: retried twice, dead-lettered), one panicking (dead-lettered at once),
    // one event published twice with the same id (handled, then a duplicate), one of
    // another type (a decode failure), and the last, which ends the run.
    for key in 1..=3 {
        producer.publish(&event(key, "ok")).await.unwrap();
    }
    producer.publish(&event(4, "retry-once")).await.unwrap();
    producer.publish(&event(5, "fail")).await.unwrap();
    producer.publish(&event(6, "panic")).await.unwrap();
    let twice = PublishMetadata::new().event_id(Uuid::now_v7());
    producer
        .publish_with(&event(7, "ok"), &twice)
        .await
        .unwrap();
    producer
        .publish_with(&event(7, "ok"), &twice)
        .await
        .unwrap();
    producer
        .publish(&Stranger { run: run.clone() })
        .await
        .unwrap();
    producer.publish(&event(8, "last")).await.unwrap();
    let scenario_published = 10;

    eventually("the last event was handled", || {
        handler.last.load(Ordering::SeqCst)
    })
    .await;
    // A graceful stop: every record taken is done and counted when it returns.
    let _ = stop.send(());
    consumer.await.expect("the consumer task");

    let probes = handler.probes.load(Ordering::SeqCst) as u64;
    let topic = Scenario::TOPIC;
    let consumed = |outcome: &str, reason: &str| {
        counter(
            names::EVENTS_CONSUMED_TOTAL,
            &[
                ("topic", topic),
                ("group", &group),
                ("outcome", outcome),
                ("reason", reason),
            ],
        )
        .unwrap_or(0)
    };
    assert_eq!(consumed("handled", "none"), probes + 6, "handled");
    assert_eq!(consumed("duplicate", "none"), 1, "duplicates");
    assert_eq!(consumed("retried", "handler"), 1 + 2, "retried attempts");
    assert_eq!(
        consumed("dead_lettered", "handler"),
        1,
        "dead-lettered after errors"
    );
    assert_eq!(
        consumed("dead_lettered", "panic"),
        1,
        "dead-lettered after a panic"
    );
    assert_eq!(consumed("dead_lettered", "other"), 0);
    assert_eq!(consumed("decode_failure", "decode"), 1, "decode failures");

    // Handler calls: the probes, 3 ok, 2 attempts of retry-once, 3 of fail, 1 panic, the
    // first of the twice-published event and the last; not the duplicate or the stranger.
    assert_eq!(
        histogram_count(
            names::CONSUMER_HANDLER_DURATION_SECONDS,
            &[("topic", topic), ("group", &group)]
        ) as u64,
        probes + 11,
        "one duration per handler call"
    );
    assert_eq!(
        gauge(
            names::CONSUMER_RECORDS_IN_FLIGHT,
            &[("topic", topic), ("partition", "0"), ("group", &group)]
        ),
        Some(0.0),
        "nothing in flight after the stop"
    );

    // Lookups: every decoded record at its first attempt (probes, 3 ok, retry-once, fail,
    // panic, the event twice, last) plus the failed first lookup, asked again after it.
    let idempotency = |name| counter(name, &[("group", &group), ("check", "store")]).unwrap_or(0);
    assert_eq!(
        idempotency(names::IDEMPOTENCY_LOOKUPS_TOTAL),
        probes + 9 + 1,
        "lookups"
    );
    assert_eq!(idempotency(names::IDEMPOTENCY_HITS_TOTAL), 1, "hits");
    assert_eq!(
        idempotency(names::IDEMPOTENCY_STORE_ERRORS_TOTAL),
        1,
        "store errors"
    );

    // The publisher's counter and latency histogram, under its own service label.
    let publisher = [("topic", topic), ("service", service.as_str())];
    assert_eq!(
        counter(names::EVENTS_PUBLISHED_TOTAL, &publisher),
        Some(probes_published + scenario_published),
        "published"
    );
    assert_eq!(
        histogram_count(names::EVENTS_PUBLISH_LATENCY_SECONDS, &publisher) as u64,
        probes_published + scenario_published,
        "one latency per acknowledgement"
    );
    assert_eq!(
        counter(names::EVENTS_PUBLISH_FAILURES_TOTAL, &publisher),
        Some(0)
    );

    every_series_has_bounded_labels(&[&run]);
}

/// Every series of the library (all tests' so far) has only the documented label names,
/// the fixed outcome and reason values, and never a value of the run's own data (`ids`).
fn every_series_has_bounded_labels(ids: &[&str]) {
    let allowed: BTreeSet<&str> = [
        "topic",
        "service",
        "group",
        "partition",
        "outcome",
        "reason",
        "store",
        "check",
        "header",
    ]
    .into();
    let outcomes: BTreeSet<&str> = [
        "handled",
        "duplicate",
        "retried",
        "dead_lettered",
        "decode_failure",
    ]
    .into();
    let reasons: BTreeSet<&str> = ["none", "handler", "panic", "decode", "other"].into();
    // `kafka_trace_context_invalid_total`'s reasons: the fixed words of InvalidTraceContext.
    let trace_reasons: BTreeSet<&str> = [
        "length",
        "separator",
        "hex",
        "version",
        "zero_trace_id",
        "zero_span_id",
        "tracestate",
        "not_text",
    ]
    .into();
    let mut keys: Vec<Key> = Vec::new();
    registry().visit_counters(|key, _| keys.push(key.clone()));
    registry().visit_gauges(|key, _| keys.push(key.clone()));
    registry().visit_histograms(|key, _| keys.push(key.clone()));
    assert!(!keys.is_empty());
    for key in keys.iter().filter(|k| k.name().starts_with("kafka_")) {
        for label in key.labels() {
            assert!(
                allowed.contains(label.key()),
                "{key:?}: label {}",
                label.key()
            );
            match label.key() {
                "outcome" => assert!(outcomes.contains(label.value()), "{key:?}"),
                "reason" if key.name() == names::TRACE_CONTEXT_INVALID_TOTAL => {
                    assert!(trace_reasons.contains(label.value()), "{key:?}")
                }
                "reason" => assert!(reasons.contains(label.value()), "{key:?}"),
                "header" => assert!(
                    ["traceparent", "tracestate"].contains(&label.value()),
                    "{key:?}"
                ),
                "store" => assert!(["postgres", "sqlite"].contains(&label.value()), "{key:?}"),
                "check" => assert!(["store", "inbox"].contains(&label.value()), "{key:?}"),
                "partition" => assert!(label.value().parse::<u32>().is_ok(), "{key:?}"),
                _ => {}
            }
            for id in ids {
                assert!(!label.value().contains(id), "{key:?} carries {id}");
            }
            assert!(
                Uuid::try_parse(label.value()).is_err(),
                "{key:?} carries an id"
            );
        }
    }
}

// ------------------------------------------------------------------------ lag and in flight

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.metrics.backlog")]
struct Backlog {
    run: String,
    #[event(key)]
    key: u32,
    seq: i64,
}

#[derive(Default)]
struct StuckHandler {
    run: String,
    probes: AtomicUsize,
    handled: AtomicUsize,
    release: tokio::sync::Notify,
    released: AtomicBool,
}

/// Records of the backlog from this sequence number on wait until released.
const STUCK_AT: i64 = 3;
const BACKLOG: i64 = 10;

impl EventHandler<Backlog> for Arc<StuckHandler> {
    async fn handle(&self, event: Backlog, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        if event.seq < 0 {
            self.probes.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        if event.seq == STUCK_AT && !self.released.load(Ordering::SeqCst) {
            self.release.notified().await;
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauge_shows_the_uncommitted_backlog_of_a_stuck_consumer_and_in_flight_the_record_it_holds(
) {
    registry();
    create_topic::<Backlog>().await;
    let run = unique("run");
    let group = unique("metrics-lag");
    let producer = EventProducer::new(&config("metrics-lag-publisher"))
        .await
        .unwrap();
    let handler = Arc::new(StuckHandler {
        run: run.clone(),
        ..StuckHandler::default()
    });
    let mut consumer_config = config("metrics-lag-consumer");
    consumer_config.statistics_interval = Duration::from_millis(200);
    let consumer = EventConsumer::builder(consumer_config)
        .group_id(&group)
        .settings(settings(&unique("metrics-dlq")))
        .handler::<Backlog, _>(Arc::clone(&handler))
        .build()
        .unwrap();
    let (stop, consumer) = start(consumer);
    let event = |seq: i64| Backlog {
        run: run.clone(),
        key: 0,
        seq,
    };
    probe_until_seen(
        &producer,
        || event(-1),
        || handler.probes.load(Ordering::SeqCst) > 0,
    )
    .await;
    for result in producer
        .publish_all(&(0..BACKLOG).map(event).collect::<Vec<_>>())
        .await
    {
        result.expect("published");
    }

    let labels = [
        ("topic", Backlog::TOPIC),
        ("partition", "0"),
        ("group", group.as_str()),
    ];
    // The group committed up to the stuck record; everything from it on is the lag. The
    // worker holds the stuck record, and librdkafka queued the rest for it.
    let remaining = (BACKLOG - STUCK_AT) as f64;
    eventually("the lag is the backlog behind the stuck record", || {
        gauge(names::CONSUMER_LAG_RECORDS, &labels) == Some(remaining)
    })
    .await;
    assert_eq!(gauge(names::CONSUMER_RECORDS_IN_FLIGHT, &labels), Some(1.0));
    eventually(
        "librdkafka's queue holds the records behind the stuck one",
        || gauge(names::CONSUMER_PREFETCHED_RECORDS, &labels) == Some(remaining - 1.0),
    )
    .await;

    handler.released.store(true, Ordering::SeqCst);
    handler.release.notify_one();
    eventually(
        "the lag is gone once everything was handled and committed",
        || {
            gauge(names::CONSUMER_LAG_RECORDS, &labels) == Some(0.0)
                && gauge(names::CONSUMER_PREFETCHED_RECORDS, &labels) == Some(0.0)
        },
    )
    .await;
    assert_eq!(handler.handled.load(Ordering::SeqCst) as i64, BACKLOG);
    assert_eq!(gauge(names::CONSUMER_RECORDS_IN_FLIGHT, &labels), Some(0.0));
    let _ = stop.send(());
    consumer.await.expect("the consumer task");
}

// ------------------------------------------------------------------------ trace headers

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.metrics.traceheaders")]
struct Traced {
    run: String,
    #[event(key)]
    key: u32,
    probe: bool,
}

#[derive(Default)]
struct TracedCounter {
    run: String,
    probes: AtomicUsize,
    handled: AtomicUsize,
}

impl EventHandler<Traced> for Arc<TracedCounter> {
    async fn handle(&self, event: Traced, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.run {
            let count = if event.probe {
                &self.probes
            } else {
                &self.handled
            };
            count.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_trace_headers_are_counted_exactly_with_no_tracing_subscriber_and_still_handled()
{
    registry();
    assert!(
        !tracing::dispatcher::has_been_set(),
        "this test binary installs no tracing subscriber: no process span is listened to"
    );
    create_topic::<Traced>().await;
    let run = unique("run");
    let producer = EventProducer::new(&config("metrics-trace-publisher"))
        .await
        .unwrap();
    let handler = Arc::new(TracedCounter {
        run: run.clone(),
        ..TracedCounter::default()
    });
    let consumer = EventConsumer::builder(config("metrics-trace-consumer"))
        .group_id(unique("metrics-trace"))
        .settings(settings(&unique("metrics-dlq")))
        .handler::<Traced, _>(Arc::clone(&handler))
        .build()
        .unwrap();
    let (stop, consumer) = start(consumer);
    let event = |probe: bool| Traced {
        run: run.clone(),
        key: 0,
        probe,
    };
    probe_until_seen(
        &producer,
        || event(true),
        || handler.probes.load(Ordering::SeqCst) > 0,
    )
    .await;

    let series = |header: &str, reason: &str| {
        counter(
            names::TRACE_CONTEXT_INVALID_TOTAL,
            &[
                ("topic", Traced::TOPIC),
                ("header", header),
                ("reason", reason),
            ],
        )
        .unwrap_or(0)
    };
    let watched = [
        ("traceparent", "hex"),
        ("traceparent", "length"),
        ("traceparent", "zero_trace_id"),
        ("tracestate", "tracestate"),
    ];
    let before: Vec<u64> = watched.iter().map(|(h, r)| series(h, r)).collect();

    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let oversized_state = format!("k={}", "v".repeat(600));
    let records: Vec<Vec<(&str, &[u8])>> = vec![
        vec![(
            "traceparent",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        )],
        vec![(
            "traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        )],
        vec![("traceparent", b"00-4bf92f35")],
        vec![(
            "traceparent",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
        vec![
            ("traceparent", valid.as_bytes()),
            ("tracestate", oversized_state.as_bytes()),
        ],
        // Valid, or absent: not counted.
        vec![("traceparent", valid.as_bytes()), ("tracestate", b"k=v")],
        vec![],
    ];
    for headers in &records {
        publish_with_raw_headers(&producer, &event(false), headers).await;
    }
    eventually("every record with trace headers was handled", || {
        handler.handled.load(Ordering::SeqCst) == records.len()
    })
    .await;
    let after: Vec<u64> = watched.iter().map(|(h, r)| series(h, r)).collect();
    let moved: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        moved,
        [2, 1, 1, 1],
        "one count per malformed header, by header and reason: {watched:?}"
    );
    let _ = stop.send(());
    consumer.await.expect("the consumer task");
    assert_eq!(handler.handled.load(Ordering::SeqCst), records.len());
}

// ------------------------------------------------------------------------ revoked partitions

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.metrics.revoked")]
struct Shifted {
    run: String,
    #[event(key)]
    key: u32,
    hold: bool,
}

/// Records each partition it handled; with `gated`, holds every `hold` record until
/// `released`.
#[derive(Default)]
struct PartitionsSeen {
    run: String,
    gated: bool,
    released: AtomicBool,
    probed: std::sync::Mutex<BTreeSet<i32>>,
    held_handled: std::sync::Mutex<std::collections::BTreeMap<i32, usize>>,
}

impl EventHandler<Shifted> for Arc<PartitionsSeen> {
    async fn handle(&self, event: Shifted, context: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        if !event.hold {
            self.probed.lock().unwrap().insert(context.partition);
            return Ok(());
        }
        while self.gated && !self.released.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *self
            .held_handled
            .lock()
            .unwrap()
            .entry(context.partition)
            .or_default() += 1;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partitions_lag_and_prefetched_gauges_go_to_zero_and_stay_there_and_in_flight_returns_to_zero(
) {
    registry();
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Shifted>().partitions(2)])
        .await
        .expect("topic");
    let run = unique("run");
    let group = unique("metrics-revoke");
    let producer = EventProducer::new(&config("metrics-revoke-publisher"))
        .await
        .unwrap();
    let consumer_settings = || ConsumerSettings {
        revoke_timeout: Duration::from_millis(300),
        ..settings(&unique("metrics-dlq"))
    };
    // The first consumer reports lag; the second, which joins later and takes one of its
    // partitions, has statistics off, so only the first could set that partition's gauges.
    let first = Arc::new(PartitionsSeen {
        run: run.clone(),
        gated: true,
        ..PartitionsSeen::default()
    });
    let mut first_config = config("metrics-revoke-first");
    first_config.statistics_interval = Duration::from_millis(200);
    let (stop_first, first_task) = start(
        EventConsumer::builder(first_config)
            .group_id(&group)
            .settings(consumer_settings())
            .handler::<Shifted, _>(Arc::clone(&first))
            .build()
            .unwrap(),
    );
    // Probes until the first consumer handled one on each partition: it holds both, and
    // the group committed an offset for each (the lag is reported from then on).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut key = 0;
    while first.probed.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no probe reached both partitions"
        );
        let probe = Shifted {
            run: run.clone(),
            key,
            hold: false,
        };
        producer.publish(&probe).await.expect("probe");
        key += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = |name: &'static str, partition: i32| {
        let partition = partition.to_string();
        gauge(
            name,
            &[
                ("topic", Shifted::TOPIC),
                ("partition", partition.as_str()),
                ("group", group.as_str()),
            ],
        )
    };
    let lag = |partition: i32| read(names::CONSUMER_LAG_RECORDS, partition);
    let prefetched = |partition: i32| read(names::CONSUMER_PREFETCHED_RECORDS, partition);
    let in_flight = |partition: i32| read(names::CONSUMER_RECORDS_IN_FLIGHT, partition);
    eventually("both partitions report no lag after the probes", || {
        lag(0) == Some(0.0) && lag(1) == Some(0.0)
    })
    .await;

    // A backlog on both partitions, held by the first consumer's workers.
    let mut held = [0usize; 2];
    for key in 0..20 {
        let hold = Shifted {
            run: run.clone(),
            key,
            hold: true,
        };
        let delivery = producer.publish(&hold).await.expect("hold");
        held[delivery.partition as usize] += 1;
    }
    assert!(
        held.iter().all(|n| *n > 0),
        "both partitions hold records: {held:?}"
    );
    eventually(
        "the first consumer reports the backlog of both partitions",
        || lag(0) == Some(held[0] as f64) && lag(1) == Some(held[1] as f64),
    )
    .await;

    let second = Arc::new(PartitionsSeen {
        run: run.clone(),
        ..PartitionsSeen::default()
    });
    let mut second_config = config("metrics-revoke-second");
    second_config.statistics_interval = Duration::ZERO;
    let (stop_second, second_task) = start(
        EventConsumer::builder(second_config)
            .group_id(&group)
            .settings(consumer_settings())
            .handler::<Shifted, _>(Arc::clone(&second))
            .build()
            .unwrap(),
    );
    eventually(
        "the second consumer handled the backlog of the partition it took",
        || {
            let handled = second.held_handled.lock().unwrap();
            handled.len() == 1 && handled.iter().all(|(p, n)| *n == held[*p as usize])
        },
    )
    .await;
    let taken = *second.held_handled.lock().unwrap().keys().next().unwrap();
    let kept = 1 - taken;
    assert_eq!(
        lag(taken),
        Some(0.0),
        "the revoked partition's lag is zeroed"
    );
    assert_eq!(prefetched(taken), Some(0.0));
    eventually(
        "the first consumer still reports the partition it kept",
        || lag(kept) == Some(held[kept as usize] as f64),
    )
    .await;
    // Five of the first consumer's statistics intervals: it never sets the revoked
    // partition's gauges again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lag(taken), Some(0.0), "and stays zero");
    assert_eq!(prefetched(taken), Some(0.0));

    first.released.store(true, Ordering::SeqCst);
    // At least: a worker abandoned at the revoke finishes its record too (not committed,
    // so the partition's owner handles it again).
    eventually("the first consumer handled its partition's backlog", || {
        first
            .held_handled
            .lock()
            .unwrap()
            .get(&kept)
            .is_some_and(|n| *n >= held[kept as usize])
    })
    .await;
    eventually(
        "nothing is in flight on either partition, nor lagging",
        || in_flight(taken) == Some(0.0) && in_flight(kept) == Some(0.0) && lag(kept) == Some(0.0),
    )
    .await;
    let _ = stop_second.send(());
    second_task.await.expect("the second consumer task");
    let _ = stop_first.send(());
    first_task.await.expect("the first consumer task");
    assert_eq!(lag(kept), Some(0.0), "a stopped consumer reports no lag");
}

// ------------------------------------------------------------------------ the inbox

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.metrics.inbox")]
struct Inboxed {
    run: String,
    #[event(key)]
    key: u32,
    action: String,
}

#[derive(Default)]
struct InboxCounter {
    run: String,
    probes: AtomicUsize,
    last: AtomicBool,
}

impl InboxHandler<Inboxed, sqlx::Sqlite> for Arc<InboxCounter> {
    async fn handle(
        &self,
        event: Inboxed,
        _: &EventContext<'_>,
        _: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<(), HandlerError> {
        if event.run == self.run {
            match event.action.as_str() {
                "probe" => {
                    self.probes.fetch_add(1, Ordering::SeqCst);
                }
                "last" => self.last.store(true, Ordering::SeqCst),
                _ => {}
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_counts_a_lookup_per_delivery_and_a_hit_per_event_delivered_again() {
    registry();
    create_topic::<Inboxed>().await;
    let run = unique("run");
    let group = unique("metrics-inbox");
    let directory = std::env::temp_dir().join(unique("metrics-inbox"));
    std::fs::create_dir_all(&directory).unwrap();
    let store =
        SqliteIdempotencyStore::connect(&format!("sqlite://{}/inbox.db", directory.display()))
            .await
            .unwrap();
    let handler = Arc::new(InboxCounter {
        run: run.clone(),
        ..InboxCounter::default()
    });
    let producer = EventProducer::new(&config("metrics-inbox-publisher"))
        .await
        .unwrap();
    let consumer = EventConsumer::builder(config("metrics-inbox-consumer"))
        .group_id(&group)
        .settings(settings(&unique("metrics-dlq")))
        .handler::<Inboxed, _>(Inbox::new(store, Arc::clone(&handler)))
        .build()
        .unwrap();
    let (stop, consumer) = start(consumer);
    let event = |key: u32, action: &str| Inboxed {
        run: run.clone(),
        key,
        action: action.to_owned(),
    };
    probe_until_seen(
        &producer,
        || event(0, "probe"),
        || handler.probes.load(Ordering::SeqCst) > 0,
    )
    .await;
    let twice = PublishMetadata::new().event_id(Uuid::now_v7());
    producer
        .publish_with(&event(1, "once"), &twice)
        .await
        .unwrap();
    producer
        .publish_with(&event(1, "once"), &twice)
        .await
        .unwrap();
    producer.publish(&event(2, "last")).await.unwrap();
    eventually("the last event was handled", || {
        handler.last.load(Ordering::SeqCst)
    })
    .await;
    let _ = stop.send(());
    consumer.await.expect("the consumer task");

    let probes = handler.probes.load(Ordering::SeqCst) as u64;
    let inbox = |name| counter(name, &[("group", group.as_str()), ("check", "inbox")]).unwrap_or(0);
    assert_eq!(
        inbox(names::IDEMPOTENCY_LOOKUPS_TOTAL),
        probes + 3,
        "lookups"
    );
    assert_eq!(inbox(names::IDEMPOTENCY_HITS_TOTAL), 1, "hits");
    assert_eq!(
        inbox(names::IDEMPOTENCY_STORE_ERRORS_TOTAL),
        0,
        "store errors"
    );
    // The consumer has no store of its own: its lookups are not counted.
    assert_eq!(
        counter(
            names::IDEMPOTENCY_LOOKUPS_TOTAL,
            &[("group", group.as_str()), ("check", "store")]
        )
        .unwrap_or(0),
        0
    );
    let _ = std::fs::remove_dir_all(&directory);
}

// ------------------------------------------------------------------------ the outbox relay

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.metrics.outbox")]
struct Outboxed {
    #[event(key)]
    n: u32,
}

const OUTBOX_ROWS: u32 = 4;

/// Settings under which the backlog is measured once when the relay starts and not again
/// within the test (a poll interval of a minute), so its first reading stays readable.
fn slow_poll() -> RelaySettings {
    RelaySettings {
        poll_interval: Duration::from_secs(60),
        ..RelaySettings::default()
    }
}

/// Runs `relay` until the `service`'s published counter reaches `published`, checks the
/// relay's gauges and counters while it runs, then stops it and checks the lease is 0.
async fn run_relay_and_check(
    relay: pegasus_events::outbox::OutboxRelay,
    store: &str,
    service: &str,
    expect: RelayExpectation,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    let published = [("topic", Outboxed::TOPIC), ("service", service)];
    let labels = [("store", store)];
    eventually(
        "the relay published and measured what it was expected to",
        || {
            counter(names::EVENTS_PUBLISHED_TOTAL, &published).unwrap_or(0) == expect.published
                && gauge(names::OUTBOX_ROWS_WAITING, &labels) == Some(expect.waiting_at_start)
                && gauge(names::OUTBOX_RELAY_LEASE_HELD, &labels) == Some(1.0)
        },
    )
    .await;
    let age = gauge(names::OUTBOX_OLDEST_ROW_AGE_SECONDS, &labels).unwrap();
    if expect.waiting_at_start > 0.0 {
        assert!(age > 0.0 && age < 120.0, "oldest row age {age}");
    } else {
        assert_eq!(age, 0.0, "no row waits");
    }
    assert_eq!(
        counter(names::OUTBOX_RELAY_BATCHES_TOTAL, &labels),
        Some(expect.batches),
        "batches"
    );
    assert_eq!(
        counter(names::OUTBOX_RELAY_FAILURES_TOTAL, &labels),
        Some(0),
        "failures"
    );
    let _ = stop.send(());
    tokio::time::timeout(TEST_DEADLINE, task)
        .await
        .expect("the relay stopped")
        .expect("the relay task")
        .expect("the relay ran");
    assert_eq!(
        gauge(names::OUTBOX_RELAY_LEASE_HELD, &labels),
        Some(0.0),
        "the lease is given up at the stop"
    );
}

struct RelayExpectation {
    /// The published counter's value, total.
    published: u64,
    /// The rows waiting when the relay started.
    waiting_at_start: f64,
    /// The batches counter's value, total.
    batches: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_relay_counts_waiting_rows_one_batch_each_row_published_and_its_lease() {
    registry();
    let service = unique("metrics-pg-outbox");
    let kafka = config(&service);
    let outbox = PostgresOutbox::connect(&fresh_postgres_database().await, &kafka)
        .await
        .unwrap();
    let mut transaction = outbox.pool().begin().await.unwrap();
    let events: Vec<Outboxed> = (0..OUTBOX_ROWS).map(|n| Outboxed { n }).collect();
    outbox.enqueue_all(&mut transaction, &events).await.unwrap();
    transaction.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await; // a measurable age
    run_relay_and_check(
        outbox.relay(&kafka, slow_poll()).unwrap(),
        "postgres",
        &service,
        RelayExpectation {
            published: OUTBOX_ROWS.into(),
            waiting_at_start: OUTBOX_ROWS.into(),
            batches: 1,
        },
    )
    .await;
    // A second relay finds nothing waiting, sends no batch, and holds the lease.
    run_relay_and_check(
        outbox.relay(&kafka, slow_poll()).unwrap(),
        "postgres",
        &service,
        RelayExpectation {
            published: OUTBOX_ROWS.into(),
            waiting_at_start: 0.0,
            batches: 1,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_counts_waiting_rows_one_batch_each_row_published_and_its_lease() {
    registry();
    let service = unique("metrics-sqlite-outbox");
    let kafka = config(&service);
    let directory = std::env::temp_dir().join(unique("metrics-outbox"));
    std::fs::create_dir_all(&directory).unwrap();
    let url = format!("sqlite://{}/outbox.db", directory.display());
    let outbox = SqliteOutbox::connect(&url, &kafka).await.unwrap();
    let mut transaction = outbox.pool().begin().await.unwrap();
    let events: Vec<Outboxed> = (0..OUTBOX_ROWS).map(|n| Outboxed { n }).collect();
    outbox.enqueue_all(&mut transaction, &events).await.unwrap();
    transaction.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for waiting in [f64::from(OUTBOX_ROWS), 0.0] {
        run_relay_and_check(
            outbox.relay(&kafka, slow_poll()).unwrap(),
            "sqlite",
            &service,
            RelayExpectation {
                published: OUTBOX_ROWS.into(),
                waiting_at_start: waiting,
                batches: 1,
            },
        )
        .await;
    }
    let _ = std::fs::remove_dir_all(&directory);
}

// ------------------------------------------------------------------------ publish failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_counts_one_failure_and_no_publish() {
    registry();
    let service = unique("metrics-failing");
    // Nothing listens on port 1: the record times out after the delivery timeout.
    let mut failing = KafkaConfig::new("127.0.0.1:1")
        .with_client_id(&service)
        .with_connect_timeout(None);
    failing.producer.delivery_timeout = Duration::from_secs(1);
    let producer = EventProducer::new(&failing).await.unwrap();
    producer
        .publish(&Outboxed { n: 1 })
        .await
        .expect_err("no broker");
    let labels = [("topic", Outboxed::TOPIC), ("service", service.as_str())];
    assert_eq!(
        counter(names::EVENTS_PUBLISH_FAILURES_TOTAL, &labels),
        Some(1)
    );
    assert_eq!(counter(names::EVENTS_PUBLISHED_TOTAL, &labels), Some(0));
    assert_eq!(
        histogram_count(names::EVENTS_PUBLISH_LATENCY_SECONDS, &labels),
        0
    );
}

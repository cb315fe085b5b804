//! What tracing and metrics cost: publishing and consuming with an OpenTelemetry SDK and a
//! Prometheus recorder enabled, against both disabled, in the same process, in paired
//! rounds.
//!
//! Enabled is what an application running `examples/observability` has: a `tracing`
//! subscriber whose `tracing-opentelemetry` layer hands every span to an
//! [`SdkTracerProvider`] sampling everything (`Sampler::AlwaysOn`), through the simple
//! span processor, to an exporter that drops each finished span ([`DropSpans`]); and
//! `metrics-exporter-prometheus`'s recorder ([`PrometheusBuilder::build_recorder`], with the
//! library's histogram buckets, its upkeep run between rounds as its exporter would every
//! few seconds) receiving every metric. So each publish makes a `send` span and writes
//! `traceparent`, each record read has its `traceparent` extracted into a `process` span
//! (a child of the producer's span, linked to it), and the counters and histograms move.
//! Disabled is what an application without either has: no span listened to, trace headers
//! neither written nor read, every metric handle a no-op.
//!
//! A global subscriber and a global recorder cannot be uninstalled, so both are installed
//! once, behind one switch ([`set_enabled`]): the subscriber's only layer sits behind a
//! per-layer filter that enables INFO and above while the switch is on and nothing while
//! it is off (the callsite interest cache is rebuilt on each toggle, so a disabled span is
//! `Span::none()` after one cached check, as with no subscriber), and the recorder hands out
//! the Prometheus recorder's handles while the switch is on and no-op handles while it is
//! off. The library registers metric handles when a producer first publishes to a topic
//! and when a consumer is assigned a partition, and keeps them; so publishing uses two
//! producers, each warmed up under its own state, and each consume round builds a new
//! consumer after the toggle.
//!
//! Publishing: `publish_all` of the same events per round with each producer, on a
//! current-thread runtime (every Rust step of a publish on the calling thread), the two
//! sides alternating which goes first; the median of the paired throughput ratios
//! enabled/disabled with their spread, and the same for the process's CPU per event.
//! Consuming: the runtime reads a backlog (published with tracing on, so every record
//! carries `traceparent`) with a new group and a no-op handler, timed from the first
//! record handled to the last, as in `consume.rs`; paired rounds, median ratio.
//! Allocations are counted per publish on the calling thread (and on every thread), and
//! per delivered record on every thread, enabled against disabled.
//!
//! The run checks that each side did what it says (not its timing): every enabled publish
//! and delivery ended exactly one span at the exporter, with the delivery's span a child of
//! the record's remote context and linked to it, no disabled one ended any, and the
//! Prometheus recorder counted exactly the enabled publishes.
//!
//! Run with `scripts/bench`, or `cargo bench -p pegasus-events-benches --bench
//! observability` with `PEGASUS_BENCH_BOOTSTRAP` (or `PEGASUS_TEST_BOOTSTRAP`) set. Without
//! `--bench` (as `cargo test --all-targets` runs it) it does a short smoke run that reports
//! and checks nothing about time. `ONLY=publish` or `ONLY=consume` runs one half; `EVENTS`,
//! `ROUNDS`, `RECORDS` and `CONSUME_ROUNDS` override the full run's sizes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::{Event, EventProducer, KafkaConfig, TopicAdmin, TopicSpec};
use pegasus_events_benches::{
    all_allocations, allocations, bootstrap, median, process_cpu_time, sample, spread,
    CountingAllocator, ShipmentCreated,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use tracing::subscriber::Interest;
use tracing::Level;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::Layer as _;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// ------------------------------------------------------------------------ the switch

/// Whether tracing and metrics are enabled.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns tracing and metrics on or off. Spans already open keep their state, and metric
/// handles already registered keep theirs: call it between rounds, before creating the
/// producer or consumer of the round.
fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
    // Asks the subscriber again about every callsite (and the maximum level), so a span
    // turned off is rejected by its callsite's cached interest, as with no subscriber.
    tracing::callsite::rebuild_interest_cache();
}

fn listening(metadata: &tracing::Metadata<'_>) -> bool {
    ENABLED.load(Ordering::Relaxed) && *metadata.level() <= Level::INFO
}

/// The per-layer filter in front of the OpenTelemetry layer: INFO and above (what
/// `examples/observability` enables by default) while the switch is on, nothing while off.
struct Switch;

impl<S> Filter<S> for Switch {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        listening(metadata)
    }

    fn callsite_enabled(&self, metadata: &'static tracing::Metadata<'static>) -> Interest {
        if listening(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(if ENABLED.load(Ordering::Relaxed) {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        })
    }
}

/// The global recorder: the Prometheus recorder's handles while the switch is on, no-op
/// handles (what the facade hands out with no recorder installed) while it is off.
struct SwitchedRecorder(PrometheusRecorder);

impl Recorder for SwitchedRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &metrics::Metadata<'_>) -> Counter {
        if ENABLED.load(Ordering::SeqCst) {
            self.0.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &metrics::Metadata<'_>) -> Gauge {
        if ENABLED.load(Ordering::SeqCst) {
            self.0.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &metrics::Metadata<'_>) -> Histogram {
        if ENABLED.load(Ordering::SeqCst) {
            self.0.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

// ------------------------------------------------------------------------ the exporter

/// Spans ended and handed to the exporter, by kind.
static SEND_SPANS: AtomicU64 = AtomicU64::new(0);
static PROCESS_SPANS: AtomicU64 = AtomicU64::new(0);
/// Process spans that were a child of the record's remote context and linked to it.
static PROCESS_SPANS_CONTINUED: AtomicU64 = AtomicU64::new(0);
static OTHER_SPANS: AtomicU64 = AtomicU64::new(0);

/// An exporter that drops every span it is given, counting them by name.
#[derive(Debug)]
struct DropSpans;

impl SpanExporter for DropSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        for span in &batch {
            if span.name.starts_with("send ") {
                SEND_SPANS.fetch_add(1, Ordering::Relaxed);
            } else if span.name.starts_with("process ") {
                PROCESS_SPANS.fetch_add(1, Ordering::Relaxed);
                if span.parent_span_is_remote && !span.links.links.is_empty() {
                    PROCESS_SPANS_CONTINUED.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                OTHER_SPANS.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Installs the subscriber and the recorder, both switched off; returns the Prometheus
/// handle (upkeep, rendering) and the provider.
fn install() -> (PrometheusHandle, SdkTracerProvider) {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_simple_exporter(DropSpans)
        .build();
    let tracer = provider.tracer("pegasus-events-bench");
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Switch),
    );
    // Not `init()`: that would also route the `log` crate's records into tracing.
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in pegasus_events::metrics::histogram_buckets() {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .expect("buckets");
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(SwitchedRecorder(recorder)).expect("the only recorder");
    set_enabled(false);
    (handle, provider)
}

/// A counter's value in the Prometheus text, for the series whose labels include
/// `label`; 0 when there is none.
fn rendered_value(handle: &PrometheusHandle, name: &str, label: &str) -> f64 {
    handle
        .render()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The two sides.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Enabled,
    Disabled,
}

impl Side {
    /// Round `r`'s order: enabled first in even rounds, disabled first in odd ones.
    fn order(r: usize) -> [Side; 2] {
        if r.is_multiple_of(2) {
            [Side::Enabled, Side::Disabled]
        } else {
            [Side::Disabled, Side::Enabled]
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `(a / b)` for each pair.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

// ------------------------------------------------------------------------ publishing

const SOURCE: &str = "bench-observability";

/// Per-event figures of one publish round, and its exact counts.
struct PublishRound {
    rate: f64,
    cpu_micros: f64,
    /// Allocations on the calling thread, and on every thread.
    calling: u64,
    all: u64,
    send_spans: u64,
}

async fn publish_round(producer: &EventProducer, events: &[ShipmentCreated]) -> PublishRound {
    let spans_before = SEND_SPANS.load(Ordering::SeqCst);
    let (calling_before, all_before) = (allocations(), all_allocations());
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    for result in producer.publish_all(events).await {
        result.expect("publish acknowledged");
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    let (calling, all) = (
        allocations() - calling_before,
        all_allocations() - all_before,
    );
    let count = events.len() as f64;
    PublishRound {
        rate: count / elapsed.as_secs_f64(),
        cpu_micros: cpu.as_secs_f64() * 1e6 / count,
        calling,
        all,
        send_spans: SEND_SPANS.load(Ordering::SeqCst) - spans_before,
    }
}

async fn publish_bench(
    full: bool,
    bootstrap: &str,
    prometheus: &PrometheusHandle,
) -> Result<(), String> {
    let (events_per_round, rounds) = if full {
        (env_or("EVENTS", 20_000usize), env_or("ROUNDS", 61usize))
    } else {
        (300, 3)
    };
    let config = KafkaConfig::new(bootstrap).with_client_id(SOURCE);
    config.validate().expect("valid config");
    TopicAdmin::new(&config)
        .await
        .expect("admin")
        .ensure_topics(&[TopicSpec::for_event::<ShipmentCreated>().partitions(3)])
        .await
        .expect("topic");
    let events: Vec<ShipmentCreated> = (0..events_per_round as u64).map(sample).collect();
    let published_label = format!("topic=\"{}\"", ShipmentCreated::TOPIC);
    let published_before = rendered_value(
        prometheus,
        pegasus_events::metrics::EVENTS_PUBLISHED_TOTAL,
        &published_label,
    );

    // One producer per side, each created and warmed up (connections, metadata, producer
    // id, and its metric handles, registered on its first publish) under its own state.
    set_enabled(false);
    let disabled = EventProducer::new(&config).await.expect("producer");
    set_enabled(true);
    let enabled = EventProducer::new(&config).await.expect("producer");
    let producer = |side| match side {
        Side::Enabled => &enabled,
        Side::Disabled => &disabled,
    };
    let warm_ups = if full { 2 } else { 1 };
    for _ in 0..warm_ups {
        for side in Side::order(0) {
            set_enabled(side == Side::Enabled);
            publish_round(producer(side), &events).await;
        }
    }
    prometheus.run_upkeep();

    let mut on = Vec::new();
    let mut off = Vec::new();
    for r in 0..rounds {
        for side in Side::order(r) {
            set_enabled(side == Side::Enabled);
            let round = publish_round(producer(side), &events).await;
            match side {
                Side::Enabled => on.push(round),
                Side::Disabled => off.push(round),
            }
            // What the exporter's upkeep task does every few seconds: drain the
            // histograms' samples. Between rounds, so not timed.
            prometheus.run_upkeep();
        }
    }
    set_enabled(false);

    let figure = |rounds: &[PublishRound], f: fn(&PublishRound) -> f64| -> Vec<f64> {
        rounds.iter().map(f).collect()
    };
    let rate = |r: &PublishRound| r.rate;
    let cpu = |r: &PublishRound| r.cpu_micros;
    let rate_ratios = ratios(&figure(&on, rate), &figure(&off, rate));
    let cpu_ratios = ratios(&figure(&on, cpu), &figure(&off, cpu));
    let total = (events_per_round * rounds) as f64;
    let sum = |rounds: &[PublishRound], f: fn(&PublishRound) -> u64| -> u64 {
        rounds.iter().map(f).sum()
    };
    let per_event = |n: u64| n as f64 / total;
    let (on_calling, off_calling) = (
        per_event(sum(&on, |r| r.calling)),
        per_event(sum(&off, |r| r.calling)),
    );
    let (on_all, off_all) = (
        per_event(sum(&on, |r| r.all)),
        per_event(sum(&off, |r| r.all)),
    );

    println!(
        "observability bench, publishing ({} mode): {events_per_round} events x {rounds} paired rounds per side, broker {bootstrap}",
        if full { "full" } else { "smoke" }
    );
    println!(
        "  events/s (median): enabled {:.0}, disabled {:.0}",
        median(figure(&on, rate)),
        median(figure(&off, rate)),
    );
    println!(
        "  throughput ratio enabled/disabled: {} (target >= 0.95)",
        spread(rate_ratios)
    );
    println!(
        "  CPU per event (process, all threads; median): enabled {:.2} us, disabled {:.2} us; ratio enabled/disabled {}",
        median(figure(&on, cpu)),
        median(figure(&off, cpu)),
        spread(cpu_ratios),
    );
    println!(
        "  allocations per publish, calling thread: enabled {on_calling:.3}, disabled {off_calling:.3}, extra {:+.3}",
        on_calling - off_calling
    );
    println!(
        "  allocations per publish, all threads: enabled {on_all:.3}, disabled {off_all:.3}, extra {:+.3}",
        on_all - off_all
    );

    // What each side did, not how fast: an enabled publish ends one send span at the
    // exporter and counts in Prometheus, a disabled one does neither.
    let mut failures = Vec::new();
    let expected_spans = events_per_round as u64;
    for (side, rounds) in [(Side::Enabled, &on), (Side::Disabled, &off)] {
        let want = if side == Side::Enabled {
            expected_spans
        } else {
            0
        };
        if let Some(round) = rounds.iter().find(|r| r.send_spans != want) {
            failures.push(format!(
                "a {side:?} publish round of {events_per_round} events ended {} send spans, not {want}",
                round.send_spans
            ));
        }
    }
    let published = rendered_value(
        prometheus,
        pegasus_events::metrics::EVENTS_PUBLISHED_TOTAL,
        &published_label,
    ) - published_before;
    let enabled_publishes = (events_per_round * (rounds + warm_ups)) as f64;
    println!(
        "  {published} publishes counted by the Prometheus recorder ({enabled_publishes} enabled)"
    );
    if published != enabled_publishes {
        failures.push(format!(
            "the Prometheus recorder counted {published} publishes, the enabled rounds made {enabled_publishes}"
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

// ------------------------------------------------------------------------ consuming

/// The event read back; shaped like the design's ShipmentCreatedEvent.
#[derive(Clone, Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "bench.observability.sample", name = "ShipmentCreatedEvent")]
struct ObservedSample {
    #[event(key)]
    shipment_id: uuid::Uuid,
    tracking_number: String,
    status: String,
    created_by_user_id: String,
    created_by_email: String,
}

fn observed_sample(i: u64) -> ObservedSample {
    ObservedSample {
        shipment_id: uuid::Uuid::from_u64_pair(7, i % 1_000),
        tracking_number: format!("TRACK{i:07}"),
        status: "Created".to_owned(),
        created_by_user_id: "auth0|123".to_owned(),
        created_by_email: "user@example.com".to_owned(),
    }
}

/// Publishes, with tracing on (so every record carries `traceparent`), until the topic
/// holds at least `count` records.
async fn fill(config: &KafkaConfig, count: u64) {
    set_enabled(true);
    let producer = EventProducer::new(config).await.expect("producer");
    let watermarks: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .create()
        .expect("watermark client");
    let mut stored = 0;
    for partition in 0..3 {
        if let Ok((low, high)) =
            watermarks.fetch_watermarks(ObservedSample::TOPIC, partition, Duration::from_secs(10))
        {
            stored += (high - low).max(0) as u64;
        }
    }
    let mut next = stored;
    while next < count {
        let batch: Vec<ObservedSample> = (next..(next + 50_000).min(count))
            .map(observed_sample)
            .collect();
        for result in producer.publish_all(&batch).await {
            result.expect("backlog publish");
        }
        next += batch.len() as u64;
    }
    set_enabled(false);
}

/// Marks taken by the handler itself at the first and the last record: time, allocations
/// of every thread, the process's CPU time.
type Mark = (Instant, u64, Duration);

struct Marks {
    count: u64,
    seen: AtomicU64,
    first: OnceLock<Mark>,
    last: OnceLock<Mark>,
    done: tokio::sync::Notify,
}

impl Marks {
    fn now() -> Mark {
        (Instant::now(), all_allocations(), process_cpu_time())
    }
}

struct Count(Arc<Marks>);

impl EventHandler<ObservedSample> for Count {
    async fn handle(&self, _: ObservedSample, _: &EventContext<'_>) -> Result<(), HandlerError> {
        let marks = &self.0;
        let n = marks.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            let _ = marks.first.set(Marks::now());
        }
        if n == marks.count {
            let _ = marks.last.set(Marks::now());
            marks.done.notify_one();
        }
        Ok(())
    }
}

/// Figures of one consume round, per record, from the first record handled to the last.
struct ConsumeRound {
    rate: f64,
    cpu_micros: f64,
    allocations: u64,
    records: u64,
    process_spans: u64,
    continued: u64,
}

/// Reads `count` records with a new consumer (created after the switch was set) and a
/// new group.
async fn consume_round(config: &KafkaConfig, count: u64) -> ConsumeRound {
    let spans_before = (
        PROCESS_SPANS.load(Ordering::SeqCst),
        PROCESS_SPANS_CONTINUED.load(Ordering::SeqCst),
    );
    let marks = Arc::new(Marks {
        count,
        seen: AtomicU64::new(0),
        first: OnceLock::new(),
        last: OnceLock::new(),
        done: tokio::sync::Notify::new(),
    });
    let consumer = EventConsumer::builder(config.clone())
        .group_id(format!(
            "bench-observability-{}",
            uuid::Uuid::now_v7().simple()
        ))
        .settings(ConsumerSettings {
            commit_interval: Duration::from_millis(500),
            ..ConsumerSettings::default()
        })
        .handler::<ObservedSample, _>(Count(Arc::clone(&marks)))
        .build()
        .expect("consumer");
    let watched = Arc::clone(&marks);
    consumer
        .run_until(async move { watched.done.notified().await })
        .await
        .expect("runtime ran");
    let (&(from, allocs_from, cpu_from), &(to, allocs_to, cpu_to)) = marks
        .first
        .get()
        .zip(marks.last.get())
        .expect("every record arrived");
    let handled = count - 1;
    ConsumeRound {
        rate: handled as f64 / (to - from).as_secs_f64(),
        cpu_micros: cpu_to.saturating_sub(cpu_from).as_secs_f64() * 1e6 / handled as f64,
        allocations: allocs_to - allocs_from,
        records: handled,
        process_spans: PROCESS_SPANS.load(Ordering::SeqCst) - spans_before.0,
        continued: PROCESS_SPANS_CONTINUED.load(Ordering::SeqCst) - spans_before.1,
    }
}

async fn consume_bench(
    full: bool,
    bootstrap: &str,
    prometheus: &PrometheusHandle,
) -> Result<(), String> {
    let (per_round, rounds) = if full {
        (env_or("RECORDS", 200_000), env_or("CONSUME_ROUNDS", 15))
    } else {
        (2_000, 2)
    };
    let config = KafkaConfig::new(bootstrap).with_client_id("bench-observability-consumer");
    TopicAdmin::new(&config)
        .await
        .expect("admin")
        .ensure_topics(&[TopicSpec::for_event::<ObservedSample>().partitions(3)])
        .await
        .expect("topic");
    fill(&config, per_round).await;

    // One round each to warm up (the broker's JIT, the page cache, the group coordinator).
    for side in Side::order(0) {
        set_enabled(side == Side::Enabled);
        consume_round(&config, per_round).await;
    }
    prometheus.run_upkeep();

    let mut on = Vec::new();
    let mut off = Vec::new();
    for r in 0..rounds {
        for side in Side::order(r) {
            set_enabled(side == Side::Enabled);
            let round = consume_round(&config, per_round).await;
            match side {
                Side::Enabled => on.push(round),
                Side::Disabled => off.push(round),
            }
            prometheus.run_upkeep();
        }
    }
    set_enabled(false);

    let figure = |rounds: &[ConsumeRound], f: fn(&ConsumeRound) -> f64| -> Vec<f64> {
        rounds.iter().map(f).collect()
    };
    let rate = |r: &ConsumeRound| r.rate;
    let cpu = |r: &ConsumeRound| r.cpu_micros;
    let per_record = |rounds: &[ConsumeRound]| {
        rounds.iter().map(|r| r.allocations).sum::<u64>() as f64
            / rounds.iter().map(|r| r.records).sum::<u64>() as f64
    };
    let (on_allocs, off_allocs) = (per_record(&on), per_record(&off));
    println!(
        "observability bench, consuming ({} mode): {per_round} records x {rounds} paired rounds per side, broker {bootstrap}",
        if full { "full" } else { "smoke" }
    );
    println!(
        "  records/s (median): enabled {:.0}, disabled {:.0}",
        median(figure(&on, rate)),
        median(figure(&off, rate)),
    );
    println!(
        "  throughput ratio enabled/disabled: {} (target >= 0.95)",
        spread(ratios(&figure(&on, rate), &figure(&off, rate)))
    );
    println!(
        "  CPU per record (process, all threads; median): enabled {:.2} us, disabled {:.2} us; ratio enabled/disabled {}",
        median(figure(&on, cpu)),
        median(figure(&off, cpu)),
        spread(ratios(&figure(&on, cpu), &figure(&off, cpu))),
    );
    println!(
        "  allocations per delivered record, all threads: enabled {on_allocs:.3}, disabled {off_allocs:.3}, extra {:+.3}",
        on_allocs - off_allocs
    );
    let consumed = rendered_value(
        prometheus,
        pegasus_events::metrics::EVENTS_CONSUMED_TOTAL,
        &format!("topic=\"{}\"", ObservedSample::TOPIC),
    );
    println!("  {consumed} deliveries counted by the Prometheus recorder");

    // What each side did: an enabled delivery ends one process span, a child of the
    // record's trace context and linked to it; a disabled one ends none. The runtime may
    // handle a few records beyond the count before it stops, so at least.
    let mut failures = Vec::new();
    for round in &on {
        if round.process_spans < per_round || round.continued < per_round {
            failures.push(format!(
                "an enabled consume round of {per_round} records ended {} process spans, {} of them continuing the record's trace",
                round.process_spans, round.continued
            ));
        }
    }
    if let Some(round) = off.iter().find(|r| r.process_spans != 0) {
        failures.push(format!(
            "a disabled consume round ended {} process spans",
            round.process_spans
        ));
    }
    if consumed < (per_round * rounds as u64) as f64 {
        failures.push(format!(
            "the Prometheus recorder counted {consumed} deliveries, fewer than the enabled rounds made"
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let bootstrap = bootstrap("observability");
    let only = std::env::var("ONLY").ok();
    if only
        .as_deref()
        .is_some_and(|o| o != "publish" && o != "consume")
    {
        eprintln!("observability bench: ONLY must be publish or consume");
        std::process::exit(2);
    }
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let (prometheus, provider) = install();
    let mut failures = Vec::new();

    if runs("publish") {
        // As publish.rs: every Rust step of a publish on the calling thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(failure) = runtime.block_on(publish_bench(full, &bootstrap, &prometheus)) {
            failures.push(failure);
        }
    }
    if runs("consume") {
        // As consume.rs: the runtime's workers on two tokio threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(failure) = runtime.block_on(consume_bench(full, &bootstrap, &prometheus)) {
            failures.push(failure);
        }
    }
    println!(
        "  spans dropped by the exporter: {} send, {} process, {} other",
        SEND_SPANS.load(Ordering::SeqCst),
        PROCESS_SPANS.load(Ordering::SeqCst),
        OTHER_SPANS.load(Ordering::SeqCst),
    );
    let _ = provider.shutdown();
    if !failures.is_empty() {
        for failure in failures {
            eprintln!("observability bench: {failure}");
        }
        std::process::exit(1);
    }
}

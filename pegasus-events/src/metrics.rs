//! Metrics: what is counted when, under which labels, through the [`metrics`] facade.
//!
//! # Guarantees
//!
//! - **Counted once, when it happened.** Every metric below moves at one place in the
//!   library, at the moment the table says (an acknowledgement, a record done, a relay
//!   round), and by exactly one per event, record, attempt or batch. The README's
//!   "Metrics" section has the same table.
//! - **Bounded labels.** Labels carry only values an operator configured or the broker
//!   assigned: the topic, the partition number, the consumer group, the service (the
//!   configured `SourceService`, else the `ClientId`), the outcome and dead-letter reason
//!   (fixed sets below), the outbox's store (`postgres` or `sqlite`) and the idempotency
//!   check (`store` or `inbox`). Never an event id, a key, a payload value or an error
//!   text, so the number of series grows with the topics and partitions, not with the
//!   traffic.
//! - **Nothing per record but an atomic add.** Handles are registered once, when a
//!   producer first publishes to a topic, a partition is assigned, or a relay starts, and
//!   kept; the record path only increments them. Without a recorder installed each handle
//!   is a no-op, and the library makes no allocation for metrics on the record path
//!   either way (the benches' allocation budgets hold it to that).
//!
//! # Installing an exporter
//!
//! The library only emits; the application picks the exporter (Prometheus, StatsD,
//! OpenTelemetry, ...) and installs it as the global recorder **before** it creates
//! producers, consumers and relays: handles registered before a recorder is installed stay
//! no-ops for the life of that client. Histograms carry no buckets in the facade; an
//! exporter that needs them (Prometheus) gets this module's boundaries from
//! [`histogram_buckets`]:
//!
//! ```text
//! // With metrics-exporter-prometheus 0.18 (a dependency of the application, not of this crate):
//! let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new()
//!     .with_http_listener(([127, 0, 0, 1], 9464));
//! for (name, buckets) in pegasus_events::metrics::histogram_buckets() {
//!     builder = builder.set_buckets_for_metric(
//!         metrics_exporter_prometheus::Matcher::Full(name.to_owned()),
//!         buckets,
//!     )?;
//! }
//! builder.install()?; // then create producers and consumers
//! pegasus_events::metrics::describe(); // optional: HELP and unit lines
//! ```
//!
//! (`examples/observability` does exactly this.)
//!
//! # The metrics
//!
//! | name | type | labels | moves when |
//! |------|------|--------|------------|
//! | `kafka_events_published_total` | counter | `topic`, `service` | the broker acknowledged a record of [`EventProducer`](crate::EventProducer) or of an outbox relay |
//! | `kafka_events_publish_failures_total` | counter | `topic`, `service` | a publish failed with a [`PublishError`](crate::PublishError) holding the record |
//! | `kafka_events_publish_latency_seconds` | histogram | `topic`, `service` | an acknowledgement arrived: the time since the record was handed to librdkafka ([`PUBLISH_LATENCY_BUCKETS`]) |
//! | `kafka_events_consumed_total` | counter | `topic`, `group`, `outcome`, `reason` | a record is done (`handled`, `duplicate`, `dead_lettered`, `decode_failure`), or an attempt failed and will be retried (`retried`); see [`outcome`] and [`reason`] |
//! | `kafka_consumer_handler_duration_seconds` | histogram | `topic`, `group` | a handler call ended (success, error, panic or timeout) ([`HANDLER_DURATION_BUCKETS`]) |
//! | `kafka_consumer_lag_records` | gauge | `topic`, `partition`, `group` | librdkafka's statistics arrived ([`KafkaConfig::statistics_interval`](crate::KafkaConfig::statistics_interval)): its `consumer_lag`, the high watermark minus the group's committed offset, once the group committed one. Set to 0 when the partition is revoked or the consumer stops (a gauge cannot be unregistered), and not updated until it is assigned again. |
//! | `kafka_consumer_prefetched_records` | gauge | `topic`, `partition`, `group` | the same statistics: records fetched and not yet started by the worker, those librdkafka queued (`fetchq_cnt`) and those the worker took from its queue in its last batch read; 0 after a revoke, like the lag |
//! | `kafka_consumer_records_in_flight` | gauge | `topic`, `partition`, `group` | +1 when the partition's worker takes a record, −1 when it is done (offset stored) or given up, or when its worker is dropped mid-record, so it returns to 0 after a revoke |
//! | `kafka_outbox_rows_waiting` | gauge | `store` | once per poll interval of a relay: unpublished rows in the outbox table |
//! | `kafka_outbox_oldest_row_age_seconds` | gauge | `store` | the same query: age of the oldest unpublished row, 0 when none waits |
//! | `kafka_outbox_relay_batches_total` | counter | `store` | a relay handed a batch of at least one row to the producer |
//! | `kafka_outbox_relay_failures_total` | counter | `store` | a relay round failed (database or broker) and is retried after a backoff |
//! | `kafka_outbox_relay_lease_held` | gauge | `store` | 1 while this relay holds the lease, 0 while it stands by or after it stopped |
//! | `kafka_idempotency_lookups_total` | counter | `group`, `check` | the consumer asked its idempotency store (`check="store"`) or an inbox tried its mark (`check="inbox"`) |
//! | `kafka_idempotency_hits_total` | counter | `group`, `check` | such a lookup found the event handled before |
//! | `kafka_idempotency_store_errors_total` | counter | `group`, `check` | a lookup or mark (or the inbox's transaction) failed in the database |
//!
//! Each record a consumer finishes counts once in exactly one of the outcomes `handled`,
//! `duplicate`, `dead_lettered` and `decode_failure`; `retried` counts attempts, so a
//! record retried twice and then handled counts 2 `retried` and 1 `handled`. A record
//! whose partition was revoked before it was done counts nothing: its next owner counts
//! it. The outbox gauges are per store kind: two relays of the same kind in one process
//! (two PostgreSQL databases, say) report into the same series.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use crate::dead_letter::DeadLetterReason;

/// `kafka_events_published_total{topic, service}`: records acknowledged by the broker.
pub const EVENTS_PUBLISHED_TOTAL: &str = "kafka_events_published_total";
/// `kafka_events_publish_failures_total{topic, service}`: publishes that failed.
pub const EVENTS_PUBLISH_FAILURES_TOTAL: &str = "kafka_events_publish_failures_total";
/// `kafka_events_publish_latency_seconds{topic, service}`: enqueue to acknowledgement.
pub const EVENTS_PUBLISH_LATENCY_SECONDS: &str = "kafka_events_publish_latency_seconds";
/// `kafka_events_consumed_total{topic, group, outcome, reason}`: records done, attempts retried.
pub const EVENTS_CONSUMED_TOTAL: &str = "kafka_events_consumed_total";
/// `kafka_consumer_handler_duration_seconds{topic, group}`: one handler call.
pub const CONSUMER_HANDLER_DURATION_SECONDS: &str = "kafka_consumer_handler_duration_seconds";
/// `kafka_consumer_lag_records{topic, partition, group}`: librdkafka's `consumer_lag`.
pub const CONSUMER_LAG_RECORDS: &str = "kafka_consumer_lag_records";
/// `kafka_consumer_prefetched_records{topic, partition, group}`: librdkafka's `fetchq_cnt`
/// plus the records the worker took from its queue and has not started.
pub const CONSUMER_PREFETCHED_RECORDS: &str = "kafka_consumer_prefetched_records";
/// `kafka_consumer_records_in_flight{topic, partition, group}`: taken by the worker, not done.
pub const CONSUMER_RECORDS_IN_FLIGHT: &str = "kafka_consumer_records_in_flight";
/// `kafka_outbox_rows_waiting{store}`: unpublished outbox rows.
pub const OUTBOX_ROWS_WAITING: &str = "kafka_outbox_rows_waiting";
/// `kafka_outbox_oldest_row_age_seconds{store}`: age of the oldest unpublished row.
pub const OUTBOX_OLDEST_ROW_AGE_SECONDS: &str = "kafka_outbox_oldest_row_age_seconds";
/// `kafka_outbox_relay_batches_total{store}`: batches handed to the producer.
pub const OUTBOX_RELAY_BATCHES_TOTAL: &str = "kafka_outbox_relay_batches_total";
/// `kafka_outbox_relay_failures_total{store}`: failed relay rounds.
pub const OUTBOX_RELAY_FAILURES_TOTAL: &str = "kafka_outbox_relay_failures_total";
/// `kafka_outbox_relay_lease_held{store}`: 1 while the relay holds the lease, else 0.
pub const OUTBOX_RELAY_LEASE_HELD: &str = "kafka_outbox_relay_lease_held";
/// `kafka_idempotency_lookups_total{group, check}`: idempotency lookups.
pub const IDEMPOTENCY_LOOKUPS_TOTAL: &str = "kafka_idempotency_lookups_total";
/// `kafka_idempotency_hits_total{group, check}`: lookups that found the event handled.
pub const IDEMPOTENCY_HITS_TOTAL: &str = "kafka_idempotency_hits_total";
/// `kafka_idempotency_store_errors_total{group, check}`: failed lookups and marks.
pub const IDEMPOTENCY_STORE_ERRORS_TOTAL: &str = "kafka_idempotency_store_errors_total";
/// Counter: received `traceparent`/`tracestate` headers that were not accepted (the record
/// started a new trace), by topic, header and a fixed reason word. Every received record's
/// trace headers are checked, whether or not a tracing subscriber listens.
pub const TRACE_CONTEXT_INVALID_TOTAL: &str = "kafka_trace_context_invalid_total";

/// Label names.
pub mod label {
    /// The Kafka topic.
    pub const TOPIC: &str = "topic";
    /// The publishing service: the configured `SourceService`, else the `ClientId`.
    pub const SERVICE: &str = "service";
    /// The consumer group.
    pub const GROUP: &str = "group";
    /// The partition number, in decimal.
    pub const PARTITION: &str = "partition";
    /// What became of a record: one of [`super::outcome`].
    pub const OUTCOME: &str = "outcome";
    /// Why: one of [`super::reason`].
    pub const REASON: &str = "reason";
    /// The outbox's database: `postgres` or `sqlite`.
    pub const STORE: &str = "store";
    /// Which idempotency check: `store` (the consumer's) or `inbox`.
    pub const CHECK: &str = "check";
    /// The trace header that was not accepted: `traceparent` or `tracestate`.
    pub const HEADER: &str = "header";
}

/// Values of the `outcome` label of `kafka_events_consumed_total`.
pub mod outcome {
    /// The handler succeeded (and, with an idempotency store, the event was marked).
    pub const HANDLED: &str = "handled";
    /// The idempotency store knew the event: acknowledged without calling the handler.
    pub const DUPLICATE: &str = "duplicate";
    /// An attempt failed with a transient error and the retry policy allows another.
    pub const RETRIED: &str = "retried";
    /// Written to the dead-letter topic after a handler error or panic.
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// Could not be decoded, and went to the dead-letter topic with reason `decode`.
    pub const DECODE_FAILURE: &str = "decode_failure";
}

/// Values of the `reason` label of `kafka_events_consumed_total`.
pub mod reason {
    /// For `handled` and `duplicate`.
    pub const NONE: &str = "none";
    /// For `retried`, and `dead_lettered` after the handler's error.
    pub const HANDLER: &str = "handler";
    /// For `dead_lettered` after a panic.
    pub const PANIC: &str = "panic";
    /// For `decode_failure`.
    pub const DECODE: &str = "decode";
}

/// Buckets of `kafka_events_publish_latency_seconds`, in seconds: a local acknowledgement
/// takes about a millisecond, `acks=all` across zones tens, and a publish retried through
/// a leader change seconds, up to the 30 s delivery timeout.
pub const PUBLISH_LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of `kafka_consumer_handler_duration_seconds`, in seconds: from handlers that
/// only update memory (well under a millisecond) to the 60 s default handler timeout.
pub const HANDLER_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Every histogram with its bucket boundaries, for exporters that need them
/// (`PrometheusBuilder::set_buckets_for_metric`).
pub fn histogram_buckets() -> [(&'static str, &'static [f64]); 2] {
    [
        (EVENTS_PUBLISH_LATENCY_SECONDS, PUBLISH_LATENCY_BUCKETS),
        (CONSUMER_HANDLER_DURATION_SECONDS, HANDLER_DURATION_BUCKETS),
    ]
}

/// Gives the installed recorder each metric's unit and description (Prometheus shows them
/// as `# HELP` lines). Optional; producers, consumers and relays call it as they are
/// created. Does nothing without the `metrics` feature.
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_counter!(
            EVENTS_PUBLISHED_TOTAL,
            Unit::Count,
            "Records acknowledged by the broker"
        );
        describe_counter!(
            EVENTS_PUBLISH_FAILURES_TOTAL,
            Unit::Count,
            "Publishes that failed"
        );
        describe_histogram!(
            EVENTS_PUBLISH_LATENCY_SECONDS,
            Unit::Seconds,
            "Time from handing a record to librdkafka to its acknowledgement"
        );
        describe_counter!(
            EVENTS_CONSUMED_TOTAL,
            Unit::Count,
            "Records done by outcome, and attempts retried"
        );
        describe_histogram!(
            CONSUMER_HANDLER_DURATION_SECONDS,
            Unit::Seconds,
            "Duration of one handler call"
        );
        describe_gauge!(
            CONSUMER_LAG_RECORDS,
            Unit::Count,
            "High watermark minus the group's committed offset"
        );
        describe_gauge!(
            CONSUMER_PREFETCHED_RECORDS,
            Unit::Count,
            "Records fetched and queued by librdkafka, not yet taken by the worker"
        );
        describe_gauge!(
            CONSUMER_RECORDS_IN_FLIGHT,
            Unit::Count,
            "Records taken by the partition's worker and not yet done"
        );
        describe_gauge!(
            OUTBOX_ROWS_WAITING,
            Unit::Count,
            "Unpublished rows in the outbox table"
        );
        describe_gauge!(
            OUTBOX_OLDEST_ROW_AGE_SECONDS,
            Unit::Seconds,
            "Age of the oldest unpublished outbox row"
        );
        describe_counter!(
            OUTBOX_RELAY_BATCHES_TOTAL,
            Unit::Count,
            "Batches the outbox relay handed to the producer"
        );
        describe_counter!(
            OUTBOX_RELAY_FAILURES_TOTAL,
            Unit::Count,
            "Failed outbox relay rounds"
        );
        describe_gauge!(
            OUTBOX_RELAY_LEASE_HELD,
            "1 while this relay holds the outbox lease, else 0"
        );
        describe_counter!(
            IDEMPOTENCY_LOOKUPS_TOTAL,
            Unit::Count,
            "Idempotency lookups"
        );
        describe_counter!(
            IDEMPOTENCY_HITS_TOTAL,
            Unit::Count,
            "Idempotency lookups that found the event handled before"
        );
        describe_counter!(
            IDEMPOTENCY_STORE_ERRORS_TOTAL,
            Unit::Count,
            "Failed idempotency lookups and marks"
        );
        describe_counter!(
            TRACE_CONTEXT_INVALID_TOTAL,
            Unit::Count,
            "Received trace headers not accepted; the record started a new trace"
        );
    }
}

/// Counts a received trace header that was not accepted. Rare (a client writing bad
/// headers), so the handle is looked up each time instead of cached.
pub(crate) fn trace_context_invalid(topic: &str, header: &'static str, reason: &'static str) {
    #[cfg(feature = "metrics")]
    counter(
        TRACE_CONTEXT_INVALID_TOTAL,
        &[
            (label::TOPIC, topic),
            (label::HEADER, header),
            (label::REASON, reason),
        ],
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (topic, header, reason);
}

// The handles: the facade's own with the feature, zero-sized no-ops without, so the code
// that counts reads the same either way.
#[cfg(feature = "metrics")]
pub(crate) use metrics::{Counter, Gauge, Histogram};

#[cfg(feature = "metrics")]
fn labels(pairs: &[(&'static str, &str)]) -> Vec<metrics::Label> {
    pairs
        .iter()
        .map(|(name, value)| metrics::Label::new(*name, (*value).to_owned()))
        .collect()
}

#[cfg(feature = "metrics")]
fn counter(name: &'static str, pairs: &[(&'static str, &str)]) -> Counter {
    metrics::counter!(name, labels(pairs))
}

#[cfg(feature = "metrics")]
fn gauge(name: &'static str, pairs: &[(&'static str, &str)]) -> Gauge {
    metrics::gauge!(name, labels(pairs))
}

#[cfg(feature = "metrics")]
fn histogram(name: &'static str, pairs: &[(&'static str, &str)]) -> Histogram {
    metrics::histogram!(name, labels(pairs))
}

#[cfg(not(feature = "metrics"))]
mod noop {
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Counter;
    impl Counter {
        pub(crate) fn increment(&self, _: u64) {}
    }
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Gauge;
    // `set` is for the outbox's gauges, absent without a database feature.
    #[allow(dead_code)]
    impl Gauge {
        pub(crate) fn set(&self, _: f64) {}
        pub(crate) fn increment(&self, _: f64) {}
        pub(crate) fn decrement(&self, _: f64) {}
    }
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Histogram;
    impl Histogram {
        pub(crate) fn record(&self, _: f64) {}
    }
}
#[cfg(not(feature = "metrics"))]
pub(crate) use noop::{Counter, Gauge, Histogram};

#[cfg(not(feature = "metrics"))]
fn counter(_: &'static str, _: &[(&'static str, &str)]) -> Counter {
    Counter
}
#[cfg(not(feature = "metrics"))]
fn gauge(_: &'static str, _: &[(&'static str, &str)]) -> Gauge {
    Gauge
}
#[cfg(not(feature = "metrics"))]
fn histogram(_: &'static str, _: &[(&'static str, &str)]) -> Histogram {
    Histogram
}

// ------------------------------------------------------------------------ producer

/// The handles of one topic of one producer.
#[derive(Debug)]
pub(crate) struct PublishMetrics {
    published: Counter,
    failures: Counter,
    latency: Histogram,
}

impl PublishMetrics {
    fn new(topic: &str, service: &str) -> Self {
        let pairs = [(label::TOPIC, topic), (label::SERVICE, service)];
        PublishMetrics {
            published: counter(EVENTS_PUBLISHED_TOTAL, &pairs),
            failures: counter(EVENTS_PUBLISH_FAILURES_TOTAL, &pairs),
            latency: histogram(EVENTS_PUBLISH_LATENCY_SECONDS, &pairs),
        }
    }

    /// The broker acknowledged a record handed to librdkafka at `enqueued`.
    pub(crate) fn acknowledged(&self, enqueued: Instant) {
        self.published.increment(1);
        self.latency.record(enqueued.elapsed().as_secs_f64());
    }

    /// A publish failed.
    pub(crate) fn failed(&self) {
        self.failures.increment(1);
    }
}

/// A producer's handles, one set per topic, registered on its first publish there.
#[derive(Debug)]
pub(crate) struct ProducerMetrics {
    service: Box<str>,
    topics: std::sync::RwLock<std::collections::HashMap<Box<str>, Arc<PublishMetrics>>>,
}

impl ProducerMetrics {
    /// The handles of a producer publishing as `service`.
    pub(crate) fn new(service: &str) -> Self {
        describe();
        ProducerMetrics {
            service: service.into(),
            topics: Default::default(),
        }
    }

    /// The handles of `topic`: looked up (no allocation) after the first publish there.
    pub(crate) fn topic(&self, topic: &str) -> Arc<PublishMetrics> {
        let known = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned();
        if let Some(known) = known {
            return known;
        }
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            topics
                .entry(topic.into())
                .or_insert_with(|| Arc::new(PublishMetrics::new(topic, &self.service))),
        )
    }
}

// ------------------------------------------------------------------------ consumer

/// The idempotency handles of one consumer group and check.
#[derive(Clone, Debug)]
pub(crate) struct IdempotencyMetrics {
    lookups: Counter,
    hits: Counter,
    errors: Counter,
}

impl IdempotencyMetrics {
    pub(crate) fn new(group: &str, check: &'static str) -> Self {
        let pairs = [(label::GROUP, group), (label::CHECK, check)];
        IdempotencyMetrics {
            lookups: counter(IDEMPOTENCY_LOOKUPS_TOTAL, &pairs),
            hits: counter(IDEMPOTENCY_HITS_TOTAL, &pairs),
            errors: counter(IDEMPOTENCY_STORE_ERRORS_TOTAL, &pairs),
        }
    }

    /// A lookup answered `Ok(found)` or failed.
    pub(crate) fn lookup<E>(&self, answer: &Result<bool, E>) {
        self.lookups.increment(1);
        match answer {
            Ok(true) => self.hits.increment(1),
            Ok(false) => {}
            Err(_) => self.errors.increment(1),
        }
    }

    /// A mark (or the inbox's transaction) failed in the database.
    pub(crate) fn store_error(&self) {
        self.errors.increment(1);
    }
}

/// The handles of one partition of one consumer, registered when it is assigned.
#[derive(Debug)]
pub(crate) struct PartitionMetrics {
    handled: Counter,
    duplicate: Counter,
    retried: Counter,
    decode_failure: Counter,
    dead_lettered_handler: Counter,
    dead_lettered_panic: Counter,
    dead_lettered_other: Counter,
    handler_duration: Histogram,
    in_flight: Gauge,
    pub(crate) idempotency: IdempotencyMetrics,
}

impl PartitionMetrics {
    pub(crate) fn new(topic: &str, partition: i32, group: &str) -> Self {
        let consumed = |outcome: &'static str, reason: &'static str| {
            counter(
                EVENTS_CONSUMED_TOTAL,
                &[
                    (label::TOPIC, topic),
                    (label::GROUP, group),
                    (label::OUTCOME, outcome),
                    (label::REASON, reason),
                ],
            )
        };
        let partition = partition.to_string();
        PartitionMetrics {
            handled: consumed(outcome::HANDLED, reason::NONE),
            duplicate: consumed(outcome::DUPLICATE, reason::NONE),
            retried: consumed(outcome::RETRIED, reason::HANDLER),
            decode_failure: consumed(outcome::DECODE_FAILURE, reason::DECODE),
            dead_lettered_handler: consumed(outcome::DEAD_LETTERED, reason::HANDLER),
            dead_lettered_panic: consumed(outcome::DEAD_LETTERED, reason::PANIC),
            // The consumer dead-letters for the reasons above only; a reason added later
            // still counts, under its own name.
            dead_lettered_other: consumed(outcome::DEAD_LETTERED, "other"),
            handler_duration: histogram(
                CONSUMER_HANDLER_DURATION_SECONDS,
                &[(label::TOPIC, topic), (label::GROUP, group)],
            ),
            in_flight: gauge(
                CONSUMER_RECORDS_IN_FLIGHT,
                &[
                    (label::TOPIC, topic),
                    (label::PARTITION, &partition),
                    (label::GROUP, group),
                ],
            ),
            idempotency: IdempotencyMetrics::new(group, "store"),
        }
    }

    /// The worker took a record; it counts as in flight until the returned guard drops:
    /// when the worker is done with it or gave it up, and also when the worker's task is
    /// dropped mid-record (a consumer shutting down while an abandoned handler still
    /// runs), so the gauge always returns to 0.
    pub(crate) fn taken(&self) -> InFlight<'_> {
        self.in_flight.increment(1.0);
        InFlight(&self.in_flight)
    }

    /// The handler succeeded (and the event was marked, with an idempotency store).
    pub(crate) fn handled(&self) {
        self.handled.increment(1);
    }

    /// The idempotency store knew the event.
    pub(crate) fn duplicate(&self) {
        self.duplicate.increment(1);
    }

    /// An attempt failed and will be retried.
    pub(crate) fn retried(&self) {
        self.retried.increment(1);
    }

    /// The dead-letter topic acknowledged the record.
    pub(crate) fn dead_lettered(&self, why: DeadLetterReason) {
        match why {
            DeadLetterReason::Decode => self.decode_failure.increment(1),
            DeadLetterReason::Handler => self.dead_lettered_handler.increment(1),
            DeadLetterReason::Panic => self.dead_lettered_panic.increment(1),
            _ => self.dead_lettered_other.increment(1),
        }
    }

    /// A handler call that started at `started` ended.
    pub(crate) fn handler_took(&self, started: Instant) {
        self.handler_duration
            .record(started.elapsed().as_secs_f64());
    }
}

/// A record counted in `kafka_consumer_records_in_flight` until this drops.
#[must_use = "the record counts as in flight until this drops"]
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Per topic, per partition: the lag and prefetched gauges, and how many records the
/// partition's worker took from its queue and has not started.
#[cfg(feature = "metrics")]
type LagGauges = std::collections::HashMap<
    Box<str>,
    std::collections::HashMap<i32, (Gauge, Gauge, Arc<AtomicUsize>)>,
>;

/// A consumer's handles: its group, and the lag gauges fed by librdkafka's statistics.
pub(crate) struct ConsumerMetrics {
    group: Arc<str>,
    /// Per topic and partition: the lag and prefetched gauges of the partitions assigned
    /// to this consumer. Touched by the statistics callback, every
    /// `statistics_interval`, and by the rebalance callbacks.
    #[cfg(feature = "metrics")]
    lag: std::sync::Mutex<LagGauges>,
}

impl ConsumerMetrics {
    pub(crate) fn new(group: Arc<str>) -> Self {
        describe();
        ConsumerMetrics {
            group,
            #[cfg(feature = "metrics")]
            lag: Default::default(),
        }
    }

    /// The handles of a partition just assigned; from now on its lag and prefetched
    /// gauges are set from librdkafka's statistics (the prefetched one plus `taken`, the
    /// records its worker took from the queue and has not started), until it is revoked.
    pub(crate) fn partition(
        &self,
        topic: &str,
        partition: i32,
        taken: &Arc<AtomicUsize>,
    ) -> PartitionMetrics {
        #[cfg(feature = "metrics")]
        {
            let mut lag = self.lag.lock().unwrap_or_else(|e| e.into_inner());
            let gauges = lag
                .entry(topic.into())
                .or_default()
                .entry(partition)
                .or_insert_with(|| {
                    let number = partition.to_string();
                    let pairs = [
                        (label::TOPIC, topic),
                        (label::PARTITION, number.as_str()),
                        (label::GROUP, &*self.group),
                    ];
                    (
                        gauge(CONSUMER_LAG_RECORDS, &pairs),
                        gauge(CONSUMER_PREFETCHED_RECORDS, &pairs),
                        Arc::clone(taken),
                    )
                });
            gauges.2 = Arc::clone(taken);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = taken;
        PartitionMetrics::new(topic, partition, &self.group)
    }

    /// A partition was revoked (or the consumer stopped): this consumer no longer reports
    /// it. The `metrics` facade cannot unregister a gauge, so its lag and prefetched
    /// gauges are set to 0 and no longer updated; librdkafka's statistics may still list
    /// the partition, with figures that are no longer this consumer's to report. The
    /// partition's next owner sets them again (the same series when it is in this
    /// process).
    pub(crate) fn revoked(&self, topic: &str, partition: i32) {
        #[cfg(feature = "metrics")]
        {
            let mut lag = self.lag.lock().unwrap_or_else(|e| e.into_inner());
            let gauges = lag
                .get_mut(topic)
                .and_then(|partitions| partitions.remove(&partition));
            if let Some((lag_gauge, prefetched, _)) = gauges {
                lag_gauge.set(0.0);
                prefetched.set(0.0);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (topic, partition);
    }

    /// Sets the lag and prefetched gauges from librdkafka's statistics JSON. Reads only
    /// the fields it needs, borrowing the topic names; malformed JSON changes nothing.
    #[cfg(feature = "metrics")]
    pub(crate) fn statistics(&self, json: &[u8]) {
        let stats: statistics::Stats<'_> = match serde_json::from_slice(json) {
            Ok(stats) => stats,
            Err(error) => {
                tracing::debug!(%error, "librdkafka's statistics could not be read");
                return;
            }
        };
        let mut lag = self.lag.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, topic_stats) in &stats.topics {
            for (partition, partition_stats) in &topic_stats.partitions {
                // -1 is librdkafka's unassigned partition (UA); skip it and junk.
                let Ok(partition) = partition.parse::<i32>() else {
                    continue;
                };
                if partition < 0 {
                    continue;
                }
                // Only the partitions this consumer holds: a revoked one stays at 0.
                let Some((lag_gauge, prefetched, taken)) = lag
                    .get_mut(topic.as_ref())
                    .and_then(|partitions| partitions.get_mut(&partition))
                else {
                    continue;
                };
                // -1: no committed offset or no watermark yet; the last value stands.
                if partition_stats.consumer_lag >= 0 {
                    lag_gauge.set(partition_stats.consumer_lag as f64);
                }
                if partition_stats.fetchq_cnt >= 0 {
                    let taken = taken.load(std::sync::atomic::Ordering::Relaxed);
                    prefetched.set(partition_stats.fetchq_cnt as f64 + taken as f64);
                }
            }
        }
    }
}

/// The parts of librdkafka's statistics JSON the gauges need; the rest is skipped.
#[cfg(feature = "metrics")]
mod statistics {
    use std::borrow::Cow;
    use std::collections::HashMap;

    #[derive(serde::Deserialize)]
    pub(super) struct Stats<'a> {
        #[serde(borrow, default)]
        pub(super) topics: HashMap<Cow<'a, str>, Topic<'a>>,
    }

    #[derive(serde::Deserialize)]
    pub(super) struct Topic<'a> {
        #[serde(borrow, default)]
        pub(super) partitions: HashMap<Cow<'a, str>, Partition>,
    }

    #[derive(serde::Deserialize)]
    pub(super) struct Partition {
        #[serde(default = "unknown")]
        pub(super) consumer_lag: i64,
        #[serde(default = "unknown")]
        pub(super) fetchq_cnt: i64,
    }

    fn unknown() -> i64 {
        -1
    }
}

// ------------------------------------------------------------------------ inbox

/// An inbox's idempotency handles, registered for the first group it serves.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Clone, Debug, Default)]
pub(crate) struct InboxMetrics {
    cached: std::sync::OnceLock<(Box<str>, IdempotencyMetrics)>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl InboxMetrics {
    /// Runs `count` with the handles of `group`: the cached ones (an inbox serves one
    /// consumer, so one group), or, for an inbox shared by several groups, handles
    /// registered for this call.
    pub(crate) fn with<R>(&self, group: &str, count: impl FnOnce(&IdempotencyMetrics) -> R) -> R {
        let (cached_group, metrics) = self
            .cached
            .get_or_init(|| (group.into(), IdempotencyMetrics::new(group, "inbox")));
        if &**cached_group == group {
            count(metrics)
        } else {
            count(&IdempotencyMetrics::new(group, "inbox"))
        }
    }
}

// ------------------------------------------------------------------------ outbox relay

/// An outbox relay's handles.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug)]
pub(crate) struct RelayMetrics {
    service: Box<str>,
    /// `kafka_events_published_total` per topic, registered at its first row.
    published: std::collections::HashMap<Box<str>, Counter>,
    batches: Counter,
    failures: Counter,
    lease_held: Gauge,
    rows_waiting: Gauge,
    oldest_age: Gauge,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl RelayMetrics {
    /// The handles of a relay publishing as `service` from a `store` outbox.
    pub(crate) fn new(service: &str, store: &'static str) -> Self {
        describe();
        let pairs = [(label::STORE, store)];
        let metrics = RelayMetrics {
            service: service.into(),
            published: Default::default(),
            batches: counter(OUTBOX_RELAY_BATCHES_TOTAL, &pairs),
            failures: counter(OUTBOX_RELAY_FAILURES_TOTAL, &pairs),
            lease_held: gauge(OUTBOX_RELAY_LEASE_HELD, &pairs),
            rows_waiting: gauge(OUTBOX_ROWS_WAITING, &pairs),
            oldest_age: gauge(OUTBOX_OLDEST_ROW_AGE_SECONDS, &pairs),
        };
        metrics.lease_held.set(0.0);
        metrics
    }

    /// The broker acknowledged a row's record.
    pub(crate) fn published(&mut self, topic: &str) {
        if let Some(counter) = self.published.get(topic) {
            counter.increment(1);
            return;
        }
        let counter = counter(
            EVENTS_PUBLISHED_TOTAL,
            &[(label::TOPIC, topic), (label::SERVICE, &self.service)],
        );
        counter.increment(1);
        self.published.insert(topic.into(), counter);
    }

    /// A batch of at least one row went to the producer.
    pub(crate) fn batch(&self) {
        self.batches.increment(1);
    }

    /// A round failed.
    pub(crate) fn failed(&self) {
        self.failures.increment(1);
    }

    /// Whether the relay holds the lease now.
    pub(crate) fn lease(&self, held: bool) {
        self.lease_held.set(if held { 1.0 } else { 0.0 });
    }

    /// The outbox holds `rows` unpublished rows, the oldest `oldest_age_seconds` old.
    pub(crate) fn backlog(&self, rows: i64, oldest_age_seconds: f64) {
        self.rows_waiting.set(rows.max(0) as f64);
        self.oldest_age.set(oldest_age_seconds.max(0.0));
    }
}

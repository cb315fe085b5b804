//! Hardening against the real broker and databases: bytes no client of ours writes,
//! settings at their limits, hung handlers, and failures outside a handler.
//!
//! Each test says in its name what it proves; each failed before the fix it covers (a
//! panic, a stalled partition, or a silent `Ok`).
#![allow(unsafe_code)] // `raw_header`: librdkafka is the only client that writes such names.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError, HandlerSettings,
    RetryPolicy,
};
use pegasus_events::dead_letter::{DeadLetterQueue, DeadLetterReason, ReplayFilter};
use pegasus_events::idempotency::{PostgresIdempotencyStore, SqliteIdempotencyStore};
use pegasus_events::wire::{self, ByteHeaders};
use pegasus_events::{Error, Event, IdempotencyStore, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    bootstrap, config, dead_letter_settings, fresh_postgres_database, read_record, run_until_done,
    unique, DeadLetterWatch, TEST_DEADLINE,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.hardening.probe", name = "ProbeEvent")]
struct Probe {
    run: String,
    n: u32,
}

async fn create_topics(names: &[&str]) {
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|n| TopicSpec::new(*n).partitions(1))
        .collect();
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&specs)
        .await
        .expect("topics");
}

/// `headers` with one more header whose name is `name`, whatever its bytes: rdkafka only
/// takes names as `&str`, librdkafka's C API takes any bytes.
fn raw_header(headers: OwnedHeaders, name: &[u8], value: &[u8]) -> OwnedHeaders {
    let native = std::ptr::from_ref(headers.as_borrowed())
        .cast_mut()
        .cast::<rdkafka::bindings::rd_kafka_headers_t>();
    // SAFETY: rdkafka's `BorrowedHeaders` view of `headers` sits at the address of
    // librdkafka's headers (rdkafka creates it by casting that pointer), alive while
    // `headers` is; librdkafka copies the name and value.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_header_add(
            native,
            name.as_ptr().cast(),
            isize::try_from(name.len()).unwrap(),
            value.as_ptr().cast(),
            isize::try_from(value.len()).unwrap(),
        )
    };
    assert_eq!(
        error,
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    headers
}

fn cloudevent_headers(id: Uuid) -> OwnedHeaders {
    let id = id.to_string();
    let time = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    [
        ("ce_specversion", "1.0"),
        ("ce_id", id.as_str()),
        ("ce_source", "a-client-that-is-not-ours"),
        ("ce_type", Probe::NAME),
        ("ce_time", time.as_str()),
        ("content-type", "application/json"),
        ("ce_schemaversion", "1"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    })
}

async fn send(topic: &str, headers: OwnedHeaders, payload: &[u8]) -> (i32, i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let delivery = producer
        .send(
            FutureRecord::<[u8], [u8]>::to(topic)
                .headers(headers)
                .payload(payload),
            Duration::from_secs(30),
        )
        .await
        .expect("the broker takes the record");
    (delivery.partition, delivery.offset)
}

/// Records every event the consumer hands over, by its `n`.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(u32, u32)>>>);

impl Seen {
    fn numbers(&self) -> Vec<u32> {
        self.0.lock().unwrap().iter().map(|(n, _)| *n).collect()
    }
}

impl EventHandler<Probe> for Seen {
    async fn handle(&self, event: Probe, context: &EventContext<'_>) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push((event.n, context.attempt));
        Ok(())
    }
}

/// On a topic of its own: its poison record must reach only this test's dead-letter topic.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.hardening.badname", name = "BadNameEvent")]
struct BadName {
    run: String,
    n: u32,
}

#[derive(Clone, Default)]
struct SeenBadNames(Arc<Mutex<Vec<u32>>>, String);

impl EventHandler<BadName> for SeenBadNames {
    async fn handle(&self, event: BadName, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.1 {
            self.0.lock().unwrap().push(event.n);
        }
        Ok(())
    }
}

/// Hands this run's events to the handler it wraps and acknowledges the others: the probe
/// topic is shared by this file's tests, and a broker may hold earlier runs' records.
struct OfRun<H>(H, String);

impl<H: EventHandler<Probe>> EventHandler<Probe> for OfRun<H> {
    async fn handle(&self, event: Probe, context: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.1 {
            return self.0.handle(event, context).await;
        }
        Ok(())
    }
}

/// Publishes this run's probe number `n` with CloudEvents headers; where it landed.
async fn send_probe(run: &str, n: u32, id: Uuid) -> (i32, i64) {
    let payload = serde_json::to_vec(&Probe {
        run: run.to_owned(),
        n,
    })
    .unwrap();
    send(Probe::TOPIC, cloudevent_headers(id), &payload).await
}

#[tokio::test]
async fn a_header_name_that_is_not_utf8_is_decoded_consumed_and_dead_lettered_without_a_panic() {
    let run = unique("badname");
    let dlq = unique("dlq-badname");
    create_topics(&[BadName::TOPIC, &dlq]).await;
    let bad_name: &[u8] = &[b'x', 0xff, 0xfe, b'-', 0xc3, 0x28];
    let headers = || {
        cloudevent_headers(Uuid::now_v7()).insert(Header {
            key: "ce_type",
            value: Some(BadName::NAME),
        })
    };
    let payload = |n| {
        serde_json::to_vec(&BadName {
            run: run.clone(),
            n,
        })
        .unwrap()
    };
    let first = send(
        BadName::TOPIC,
        raw_header(headers(), bad_name, b"value"),
        &payload(1),
    )
    .await;
    // Not JSON: dead-lettered, with the name that is not UTF-8 copied byte for byte.
    let poison_payload = format!("not json {run}");
    let poison = send(
        BadName::TOPIC,
        raw_header(headers(), bad_name, b"value"),
        poison_payload.as_bytes(),
    )
    .await;
    send(BadName::TOPIC, headers(), &payload(3)).await;

    // The public decoder reads past the name (it is no header of the contract); the
    // second `ce_type` header wins, as the contract says for a repeated name.
    let record = read_record(BadName::TOPIC, first.0, first.1);
    assert_eq!(
        wire::event_type(&record).expect("a type").as_deref(),
        Some(BadName::NAME)
    );
    let decoded = wire::decode::<BadName, _>(&record).expect("decodes");
    assert_eq!(
        (decoded.event.run.as_str(), decoded.event.n),
        (run.as_str(), 1)
    );

    // The runtime handles both good records of this run; the poison is dead-lettered.
    let seen = SeenBadNames(Arc::default(), run.clone());
    let consumer = EventConsumer::builder(config("badname"))
        .group_id(unique("badname-group"))
        .settings(dead_letter_settings(&dlq))
        .handler::<BadName, _>(seen.clone())
        .build()
        .unwrap();
    let done = seen.clone();
    run_until_done(consumer, move || done.0.lock().unwrap().len() >= 2).await;
    assert_eq!(
        *seen.0.lock().unwrap(),
        [1, 3],
        "both good records handled, in order"
    );

    // The dead letter is the poison, byte for byte, bad name included. (On a broker that
    // kept earlier runs' records, their poisons are in this run's dead-letter topic too:
    // the consumer read the topic from its start.)
    let letters = records_with_payload(&dlq, poison_payload.as_bytes());
    assert_eq!(letters.len(), 1, "the poison was dead-lettered once");
    let letter = &letters[0];
    let original = read_record(BadName::TOPIC, poison.0, poison.1);
    assert_eq!(letter.payload(), original.payload());
    let headers_of = |m: &rdkafka::message::OwnedMessage| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        m.headers()
            .map(|h| {
                h.iter_bytes()
                    .map(|h| (h.name.to_vec(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let copied = headers_of(letter);
    let expected = headers_of(&original);
    assert_eq!(&copied[..expected.len()], &expected[..]);
    assert!(copied.iter().any(|(name, _)| name == bad_name));
    assert!(copied
        .iter()
        .any(|(name, value)| name == b"dlq-reason" && value.as_deref() == Some(b"decode")));

    // The reader does not fail for the whole topic: it counts the letter it cannot keep
    // as text (its header name), and goes on.
    let report = DeadLetterQueue::new(&config("dlq-reader"))
        .unwrap()
        .topic(&dlq)
        .replay(&ReplayFilter::new().event_ids([]))
        .await
        .expect("the dead-letter topic is readable");
    assert!(report.examined >= 1);
    assert_eq!(
        report.unreadable, report.examined,
        "every poison has the name"
    );
    assert_eq!(report.replayed, 0);
}

/// Every record of partition 0 of `topic` whose value is `payload`, read until 2 s pass
/// without a new record. Headers are not touched: rdkafka's own header accessor panics
/// on the names these records carry.
fn records_with_payload(topic: &str, payload: &[u8]) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("payload-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + TEST_DEADLINE;
    let mut found = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) || found.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no record with the payload in {topic}"
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            quiet_since = Instant::now();
            if message.payload() == Some(payload) {
                found.push(message.detach());
            }
        }
    }
    found
}

/// The offset a group committed for partition 0 of `topic`.
fn committed_offset(group: &str, topic: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed.elements()[0].offset()
}

#[tokio::test]
async fn timeouts_of_duration_max_wait_forever_and_the_consumer_still_stops_and_commits() {
    let run = unique("forever");
    let dlq = unique("dlq-forever");
    create_topics(&[Probe::TOPIC, &dlq]).await;
    let (_, offset) = send_probe(&run, 7, Uuid::now_v7()).await;
    let group = unique("forever-group");
    let seen = Seen::default();
    let consumer = EventConsumer::builder(config("forever"))
        .group_id(&group)
        .settings(ConsumerSettings {
            shutdown_timeout: Duration::MAX,
            revoke_timeout: Duration::MAX,
            handler_timeout: None,
            retry: RetryPolicy::default().with_backoff(Duration::MAX, 2.0, Duration::MAX),
            ..dead_letter_settings(&dlq)
        })
        .handler::<Probe, _>(OfRun(seen.clone(), run))
        .build()
        .expect("Duration::MAX is a valid timeout and backoff");
    let done = seen.clone();
    let started = Instant::now();
    run_until_done(consumer, move || !done.numbers().is_empty()).await;
    assert_eq!(seen.numbers(), [7]);
    assert!(started.elapsed() < TEST_DEADLINE);
    // Stopping committed the handled record: the group resumes after it.
    assert_eq!(
        committed_offset(&group, Probe::TOPIC),
        Offset::Offset(offset + 1)
    );
}

#[tokio::test]
async fn a_purge_with_an_age_of_duration_max_keeps_every_mark_on_sqlite_and_postgres() {
    let group = "purge-forever";
    let event = Uuid::now_v7();
    let dir = std::env::temp_dir().join(unique("purge-forever"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite =
        SqliteIdempotencyStore::connect(&format!("sqlite://{}", dir.join("marks.db").display()))
            .await
            .unwrap();
    sqlite.mark_processed(group, event).await.unwrap();
    assert_eq!(sqlite.purge_older_than(Duration::MAX).await.unwrap(), 0);
    assert!(sqlite.is_processed(group, event).await.unwrap());

    let postgres = PostgresIdempotencyStore::connect(&fresh_postgres_database().await)
        .await
        .unwrap();
    postgres.mark_processed(group, event).await.unwrap();
    assert_eq!(postgres.purge_older_than(Duration::MAX).await.unwrap(), 0);
    assert!(postgres.is_processed(group, event).await.unwrap());
    // An age just inside the range still purges: the mark is younger than a year.
    let year = Duration::from_secs(365 * 86_400);
    assert_eq!(postgres.purge_older_than(year).await.unwrap(), 0);
    assert_eq!(postgres.purge_older_than(Duration::ZERO).await.unwrap(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_negative_version_in_the_schema_history_is_refused_with_a_typed_error() {
    let dir = std::env::temp_dir().join(unique("history"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("history.db").display());
    let store = SqliteIdempotencyStore::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE pegasus_schema_history SET version = -version WHERE component = 'idempotency'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store.pool().close().await;
    match SqliteIdempotencyStore::connect(&url).await {
        Err(Error::SchemaHistoryCorrupt {
            store: "sqlite",
            component: "idempotency",
            found: -1,
        }) => {}
        other => panic!("expected SchemaHistoryCorrupt, got {other:?}"),
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Hangs on its first attempt at each event until dropped; handles later attempts.
#[derive(Clone, Default)]
struct HangsOnce {
    seen: Seen,
    attempts: Arc<AtomicUsize>,
    /// Set when the hung attempt's future was dropped.
    dropped: Arc<AtomicBool>,
    /// Whether an attempt started while the hung one was still alive.
    overlapped: Arc<AtomicBool>,
    hang_always: bool,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl EventHandler<Probe> for HangsOnce {
    async fn handle(&self, event: Probe, context: &EventContext<'_>) -> Result<(), HandlerError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.hang_always || context.attempt == 1 {
            let _guard = SetOnDrop(Arc::clone(&self.dropped));
            std::future::pending::<()>().await;
        }
        if !self.dropped.load(Ordering::SeqCst) {
            self.overlapped.store(true, Ordering::SeqCst);
        }
        self.seen.handle(event, context).await
    }
}

#[tokio::test]
async fn a_hung_handler_is_dropped_at_its_timeout_and_the_record_retried() {
    let run = unique("hung");
    let dlq = unique("dlq-hung");
    create_topics(&[Probe::TOPIC, &dlq]).await;
    // The probe topic is shared by this file's tests: the handler takes this run's only.
    let handler = HangsOnce::default();
    send_probe(&run, 1, Uuid::now_v7()).await;
    let consumer = EventConsumer::builder(config("hung"))
        .group_id(unique("hung-group"))
        .settings(dead_letter_settings(&dlq))
        .handler_with::<Probe, _>(
            OfRun(handler.clone(), run),
            HandlerSettings::new()
                .timeout(Some(Duration::from_millis(300)))
                .retry(RetryPolicy::default().with_backoff(
                    Duration::from_millis(10),
                    2.0,
                    Duration::from_millis(10),
                )),
        )
        .build()
        .unwrap();
    let done = handler.seen.clone();
    run_until_done(consumer, move || !done.numbers().is_empty()).await;
    assert_eq!(
        *handler.seen.0.lock().unwrap(),
        [(1, 2)],
        "handled at attempt 2"
    );
    assert!(
        handler.dropped.load(Ordering::SeqCst),
        "the hung attempt was dropped"
    );
    assert!(
        !handler.overlapped.load(Ordering::SeqCst),
        "no attempt ran beside the hung one"
    );
}

#[tokio::test]
async fn a_handler_that_always_hangs_is_dead_lettered_once_its_attempts_timed_out() {
    let run = unique("hangs");
    let dlq = unique("dlq-hangs");
    create_topics(&[Probe::TOPIC, &dlq]).await;
    let handler = HangsOnce {
        hang_always: true,
        ..HangsOnce::default()
    };
    let id = Uuid::now_v7();
    send_probe(&run, 1, id).await;
    let consumer = EventConsumer::builder(config("hangs"))
        .group_id(unique("hangs-group"))
        .settings(ConsumerSettings {
            handler_timeout: Some(Duration::from_millis(200)),
            retry: RetryPolicy::default().with_max_attempts(2).with_backoff(
                Duration::from_millis(10),
                2.0,
                Duration::from_millis(10),
            ),
            ..dead_letter_settings(&dlq)
        })
        .handler::<Probe, _>(OfRun(handler.clone(), run))
        .build()
        .unwrap();
    let watch = DeadLetterWatch::start(&dlq);
    run_until_done(consumer, watch.arrived()).await;
    let letters = watch.letters();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.event_id(), Some(id));
    assert_eq!(letter.reason, DeadLetterReason::Handler);
    assert_eq!(letter.attempts, 2);
    assert!(letter.error.contains("timeout"), "{}", letter.error);
    assert_eq!(handler.attempts.load(Ordering::SeqCst), 2);
    assert!(handler.seen.numbers().is_empty());
}

/// A store whose `mark_processed` panics: a bug in a user's store, outside any handler.
struct ExplodingStore;

impl IdempotencyStore for ExplodingStore {
    async fn is_processed(&self, _: &str, _: Uuid) -> pegasus_events::Result<bool> {
        Ok(false)
    }

    async fn mark_processed(&self, _: &str, _: Uuid) -> pegasus_events::Result<()> {
        panic!("the store exploded");
    }
}

#[tokio::test]
async fn a_worker_that_dies_outside_the_handler_stops_the_consumer_with_an_error_naming_its_partition(
) {
    let run = unique("dies");
    let dlq = unique("dlq-dies");
    create_topics(&[Probe::TOPIC, &dlq]).await;
    let (partition, offset) = send_probe(&run, 1, Uuid::now_v7()).await;
    let group = unique("dies-group");
    let consumer = EventConsumer::builder(config("dies"))
        .group_id(&group)
        .settings(dead_letter_settings(&dlq))
        .idempotency(ExplodingStore)
        .handler::<Probe, _>(Seen::default())
        .build()
        .unwrap();
    // Never asked to stop: only the dead worker can end the run.
    let ran = tokio::time::timeout(TEST_DEADLINE, consumer.run_until(std::future::pending()))
        .await
        .expect("the consumer returns instead of running on with a stalled partition");
    match ran {
        Err(Error::TaskFailed { task, reason }) => {
            assert!(task.contains(Probe::TOPIC), "{task}");
            assert!(task.contains(&format!("partition {partition}")), "{task}");
            assert!(reason.contains("the store exploded"), "{reason}");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    // The record the worker held was not committed: it is delivered again.
    let committed = committed_offset(&group, Probe::TOPIC);
    assert!(
        !matches!(committed, Offset::Offset(at) if at > offset),
        "{committed:?} past the record at {offset}"
    );
}

#[tokio::test]
async fn no_handler_outlives_the_consumer_a_handler_still_running_at_the_deadline_is_dropped_before_run_until_returns(
) {
    let run = unique("outlives");
    let dlq = unique("dlq-outlives");
    create_topics(&[Probe::TOPIC, &dlq]).await;
    send_probe(&run, 1, Uuid::now_v7()).await;
    let handler = HangsOnce {
        hang_always: true,
        ..HangsOnce::default()
    };
    let consumer = EventConsumer::builder(config("outlives"))
        .group_id(unique("outlives-group"))
        .settings(ConsumerSettings {
            shutdown_timeout: Duration::from_millis(300),
            handler_timeout: None,
            ..dead_letter_settings(&dlq)
        })
        .handler::<Probe, _>(OfRun(handler.clone(), run))
        .build()
        .unwrap();
    let attempts = Arc::clone(&handler.attempts);
    let started = Instant::now();
    run_until_done(consumer, move || attempts.load(Ordering::SeqCst) >= 1).await;
    // The handler never finishes by itself: only the consumer dropping it sets this.
    assert!(
        handler.dropped.load(Ordering::SeqCst),
        "the hung handler was still running after run_until returned"
    );
    assert!(started.elapsed() < TEST_DEADLINE);
}

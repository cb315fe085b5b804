//! Retry policies, the dead-letter topic and replay, against the real broker.
//!
//! Each test uses a dead-letter topic of its own, so what it reads there is exactly what
//! its consumer wrote.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pegasus_events::consumer::{
    EventConsumer, EventContext, EventHandler, HandlerError, RetryPolicy,
};
use pegasus_events::dead_letter::{DeadLetter, DeadLetterQueue, DeadLetterReason, ReplayFilter};
use pegasus_events::{
    Event, EventProducer, IdempotencyStore, MemoryIdempotencyStore, TopicAdmin, TopicSpec,
};
use pegasus_events_tests::{
    bootstrap, config, dead_letter_settings, read_record, run_until_done, run_with_signal, unique,
    FaultScenario, TEST_DEADLINE,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default().with_max_attempts(3).with_backoff(
        Duration::from_millis(10),
        2.0,
        Duration::from_millis(50),
    )
}

async fn create_topic(name: &str, partitions: i32) {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::new(name).partitions(partitions)])
        .await
        .expect("topic");
}

/// Reads the dead-letter topic until it holds `count` letters; fails after the deadline.
async fn dead_letters(topic: &str, count: usize) -> Vec<DeadLetter> {
    let queue = DeadLetterQueue::new(&config("dlq-reader"))
        .unwrap()
        .topic(topic);
    let deadline = tokio::time::Instant::now() + TEST_DEADLINE;
    loop {
        let letters = queue.read(&ReplayFilter::new()).await.expect("readable");
        if letters.len() >= count || tokio::time::Instant::now() > deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every log line of this test binary, from every thread.
fn global_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&buffer));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        buffer
    })
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.deadletter.parcel", name = "ParcelEvent")]
struct Parcel {
    run: String,
    #[event(key)]
    key: u32,
    seq: u32,
    /// What the handler does with it: `ok`, `flaky` (fails every attempt), `permanent`
    /// or `panic`.
    fate: String,
    #[event(sensitive)]
    recipient_email: String,
}

struct ParcelHandler {
    run: String,
    handled: Mutex<BTreeMap<u32, Vec<u32>>>,
    attempts: Mutex<HashMap<(u32, u32), u32>>,
    ok_count: AtomicUsize,
}

impl EventHandler<Parcel> for Arc<ParcelHandler> {
    async fn handle(&self, event: Parcel, context: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        *self
            .attempts
            .lock()
            .unwrap()
            .entry((event.key, event.seq))
            .or_default() += 1;
        match event.fate.as_str() {
            "flaky" => Err(HandlerError::transient(format!(
                "courier rejected {} on attempt {}",
                event.recipient_email, context.attempt
            ))),
            "permanent" => Err(HandlerError::permanent(format!(
                "no such address: {}",
                event.recipient_email
            ))),
            "panic" => panic!("parcel for {} broke the handler", event.recipient_email),
            _ => {
                self.handled
                    .lock()
                    .unwrap()
                    .entry(event.key)
                    .or_default()
                    .push(event.seq);
                self.ok_count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

/// A poison record put on the topic, and what its dead letter must say.
struct Poison {
    /// Its key and number in the run, as the handler sees them.
    key: u32,
    seq: u32,
    partition: i32,
    offset: i64,
    reason: DeadLetterReason,
    /// How often the policy lets the handler be called with it: 3 for a transient
    /// failure (`fast_retry`), 1 for a permanent failure or a panic, 0 for a record that
    /// cannot be decoded. The dead letter says as much.
    attempts: u32,
}

fn ce_headers(event_type: &str, version: &str) -> OwnedHeaders {
    [
        ("ce_specversion", "1.0".to_owned()),
        ("ce_id", uuid::Uuid::now_v7().to_string()),
        ("ce_source", "elsewhere".to_owned()),
        ("ce_type", event_type.to_owned()),
        ("ce_time", "2026-01-15T10:30:00Z".to_owned()),
        ("content-type", "application/json".to_owned()),
        ("ce_schemaversion", version.to_owned()),
    ]
    .iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_str()),
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_byte_for_byte_with_reason_and_attempts_while_good_records_keep_their_order(
) {
    let logs = global_logs();
    create_topic(Parcel::TOPIC, 3).await;
    let dlq = unique("tests-dlq");
    let run = unique("run");
    let email = format!("{}@secret.example", unique("alice"));
    let producer = EventProducer::new(&config("parcel-publisher"))
        .await
        .unwrap();
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();

    let mut poisons = Vec::new();
    let mut expected_ok: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for seq in 0..12u32 {
        for key in 0..10u32 {
            // Every eighth record of a key is poison, of a kind that rotates; the last
            // record of every key is good, so all poison precedes a good record.
            let kind = (seq + key) % 8;
            let poison = seq < 11 && kind < 7 && (seq * 10 + key) % 3 == 0;
            let parcel = Parcel {
                run: run.clone(),
                key,
                seq,
                fate: "ok".to_owned(),
                recipient_email: email.clone(),
            };
            if !poison {
                producer.publish(&parcel).await.unwrap();
                expected_ok.entry(key).or_default().push(seq);
                continue;
            }
            let (reason, attempts) = match kind % 7 {
                0 => (DeadLetterReason::Handler, 3), // flaky: all 3 attempts fail
                1 => (DeadLetterReason::Handler, 1), // permanent: not retried
                2 => (DeadLetterReason::Panic, 1),
                _ => (DeadLetterReason::Decode, 1),
            };
            let delivery = match kind % 7 {
                0..=2 => {
                    let fate = ["flaky", "permanent", "panic"][(kind % 7) as usize];
                    let delivery = producer
                        .publish(&Parcel {
                            fate: fate.to_owned(),
                            ..parcel
                        })
                        .await
                        .unwrap();
                    (delivery.partition, delivery.offset)
                }
                kind => {
                    let good = serde_json::to_string(&parcel).unwrap();
                    let (value, headers) = match kind {
                        3 => (
                            "{\"run\": not json".to_owned(),
                            ce_headers("ParcelEvent", "1"),
                        ),
                        4 => (good, ce_headers("SomethingElseEvent", "1")),
                        5 => (good, ce_headers("ParcelEvent", "9")),
                        _ => (r#"{"run":42}"#.to_owned(), ce_headers("ParcelEvent", "1")),
                    };
                    let key_text = key.to_string();
                    let delivery = raw
                        .send(
                            FutureRecord::to(Parcel::TOPIC)
                                .key(&key_text)
                                .payload(&value)
                                .headers(headers),
                            Duration::from_secs(10),
                        )
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap();
                    (delivery.partition, delivery.offset)
                }
            };
            poisons.push(Poison {
                key,
                seq,
                partition: delivery.0,
                offset: delivery.1,
                reason,
                attempts,
            });
        }
    }
    assert!(poisons.len() >= 20, "enough poison of every kind");
    for reason in [
        DeadLetterReason::Decode,
        DeadLetterReason::Handler,
        DeadLetterReason::Panic,
    ] {
        assert!(poisons.iter().any(|p| p.reason == reason));
    }
    let expected_good: usize = expected_ok.values().map(Vec::len).sum();

    let handler = Arc::new(ParcelHandler {
        run: run.clone(),
        handled: Mutex::default(),
        attempts: Mutex::default(),
        ok_count: AtomicUsize::new(0),
    });
    let group = unique("parcel");
    let consumer = EventConsumer::builder(config("parcel-test"))
        .group_id(&group)
        .settings(dead_letter_settings(&dlq))
        .handler_with_retry::<Parcel, _>(Arc::clone(&handler), fast_retry())
        .build()
        .unwrap();
    let watched = Arc::clone(&handler);
    run_until_done(consumer, move || {
        watched.ok_count.load(Ordering::SeqCst) >= expected_good
    })
    .await;

    assert_eq!(
        *handler.handled.lock().unwrap(),
        expected_ok,
        "every good record was handled once, in order per key"
    );

    // The topic also holds earlier runs' records; their decode poison is dead-lettered
    // again by this new group. Keep this run's letters.
    let ours: std::collections::HashSet<(i32, i64)> =
        poisons.iter().map(|p| (p.partition, p.offset)).collect();
    let letters: Vec<DeadLetter> = dead_letters(&dlq, poisons.len())
        .await
        .into_iter()
        .filter(|l| ours.contains(&(l.original_partition, l.original_offset)))
        .collect();
    assert_eq!(
        letters.len(),
        poisons.len(),
        "one dead letter per poison record"
    );
    let by_origin: HashMap<(i32, i64), &DeadLetter> = letters
        .iter()
        .map(|l| ((l.original_partition, l.original_offset), l))
        .collect();
    for poison in &poisons {
        let letter = by_origin
            .get(&(poison.partition, poison.offset))
            .unwrap_or_else(|| panic!("no dead letter for offset {}", poison.offset));
        assert_eq!(
            letter.reason, poison.reason,
            "reason of offset {}",
            poison.offset
        );
        assert_eq!(
            letter.attempts, poison.attempts,
            "attempts of offset {}",
            poison.offset
        );
        assert_eq!(letter.record.topic, Parcel::TOPIC);
        assert_eq!(letter.consumer_group, group);
        assert!(!letter.error.is_empty());
        assert!(
            !letter.error.contains(&email),
            "a sensitive value reached dlq-error: {}",
            letter.error
        );
        if poison.reason != DeadLetterReason::Decode {
            assert!(letter.error.contains("<redacted>"), "{}", letter.error);
        }
        assert!((chrono::Utc::now() - letter.failed_at).num_minutes() < 10);

        // Byte for byte: key, value and every original header, in order.
        let original = read_record(Parcel::TOPIC, poison.partition, poison.offset);
        let stored = read_record(&dlq, letter.partition, letter.offset);
        assert_eq!(stored.key(), original.key());
        assert_eq!(stored.payload(), original.payload());
        let original_headers: Vec<(&str, Option<&[u8]>)> = original
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let stored_headers: Vec<(&str, Option<&[u8]>)> = stored
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        assert_eq!(
            &stored_headers[..original_headers.len()],
            &original_headers[..],
            "the original headers come first, unchanged"
        );
        let added: Vec<&str> = stored_headers[original_headers.len()..]
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            added,
            [
                "dlq-original-topic",
                "dlq-original-partition",
                "dlq-original-offset",
                "dlq-original-timestamp",
                "dlq-consumer-group",
                "dlq-reason",
                "dlq-error",
                "dlq-attempts",
                "dlq-failed-at"
            ]
        );
    }
    // Each poison record reached the handler exactly as often as the policy allows (a
    // record that cannot be decoded never reaches it).
    {
        let attempts = handler.attempts.lock().unwrap();
        for poison in &poisons {
            let expected = if poison.reason == DeadLetterReason::Decode {
                0
            } else {
                poison.attempts
            };
            assert_eq!(
                attempts
                    .get(&(poison.key, poison.seq))
                    .copied()
                    .unwrap_or(0),
                expected,
                "handler calls for the {:?} poison record key {} seq {} (offset {})",
                poison.reason,
                poison.key,
                poison.seq,
                poison.offset
            );
        }
        assert!(
            poisons
                .iter()
                .any(|p| p.reason == DeadLetterReason::Handler && p.attempts == 3),
            "a transiently failing record is among the poison"
        );
    }

    let handled_calls: usize = handler.handled.lock().unwrap().values().map(Vec::len).sum();
    let handled: usize = handler
        .handled
        .lock()
        .unwrap()
        .values()
        .map(|seqs| seqs.iter().collect::<std::collections::HashSet<_>>().len())
        .sum();
    // A good record delivered to the handler more than once (its attempts beyond one).
    let good_redeliveries: u32 = {
        let attempts = handler.attempts.lock().unwrap();
        expected_ok
            .iter()
            .flat_map(|(key, seqs)| seqs.iter().map(move |seq| (*key, *seq)))
            .map(|k| attempts.get(&k).copied().unwrap_or(0).saturating_sub(1))
            .sum()
    };
    FaultScenario {
        name: "poison records (malformed JSON, wrong type, newer version, failing, permanent, panicking) among good ones",
        sent: expected_good + poisons.len(),
        acknowledged: Some(expected_good + poisons.len()),
        handled: Some(handled + letters.len()),
        lost: expected_good + poisons.len() - handled - letters.len(),
        duplicate_deliveries: good_redeliveries as usize,
        duplicate_effects: Some(handled_calls - handled),
    }
    .record();

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("record dead-lettered"),
        "dead letters are logged"
    );
    assert!(!logs.contains(&email), "a sensitive value reached the log");
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.deadletter.blocked")]
struct Blocked {
    run: String,
    n: u32,
}

struct BlockedHandler {
    run: String,
    seen: Mutex<Vec<u32>>,
}

impl EventHandler<Blocked> for Arc<BlockedHandler> {
    async fn handle(&self, event: Blocked, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        self.seen.lock().unwrap().push(event.n);
        if event.n == 1 {
            return Err(HandlerError::permanent(std::io::Error::other("rejected")));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dead_letter_write_leaves_the_record_uncommitted_and_nothing_after_it_passes() {
    create_topic(Blocked::TOPIC, 1).await;
    let run = unique("run");
    let producer = EventProducer::new(&config("blocked-publisher"))
        .await
        .unwrap();
    for n in 0..3 {
        producer
            .publish(&Blocked {
                run: run.clone(),
                n,
            })
            .await
            .unwrap();
    }
    let group = unique("blocked");
    let handler = |run: &str| {
        Arc::new(BlockedHandler {
            run: run.to_owned(),
            seen: Mutex::new(Vec::new()),
        })
    };

    // A dead-letter topic the broker refuses: a valid name (the runtime checks names when
    // it is built), but the broker's own group-offsets topic, to which no client may
    // append.
    let mut refusing = config("blocked-test");
    refusing.producer.delivery_timeout = Duration::from_secs(2);
    let first = handler(&run);
    let consumer = EventConsumer::builder(refusing)
        .group_id(&group)
        .settings(dead_letter_settings("__consumer_offsets"))
        .handler::<Blocked, _>(Arc::clone(&first))
        .build()
        .unwrap();
    let watched = Arc::clone(&first);
    let started = tokio::time::Instant::now();
    run_until_done(consumer, move || {
        !watched.seen.lock().unwrap().is_empty() && started.elapsed() > Duration::from_secs(8)
    })
    .await;
    assert_eq!(
        *first.seen.lock().unwrap(),
        vec![0, 1],
        "the partition waits at the record whose dead-letter write fails"
    );

    // With a working dead-letter topic, the same group starts again at record 1.
    let dlq = unique("tests-dlq");
    let second = handler(&run);
    let consumer = EventConsumer::builder(config("blocked-test"))
        .group_id(&group)
        .settings(dead_letter_settings(&dlq))
        .handler::<Blocked, _>(Arc::clone(&second))
        .build()
        .unwrap();
    let watched = Arc::clone(&second);
    run_until_done(consumer, move || watched.seen.lock().unwrap().contains(&2)).await;
    assert_eq!(
        *second.seen.lock().unwrap(),
        vec![1, 2],
        "record 1 was not committed while its dead letter was not written"
    );
    let letters = dead_letters(&dlq, 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Handler);
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.deadletter.replayed")]
struct Replayed {
    run: String,
    #[event(key)]
    n: u32,
}

/// The memory store, counting the duplicates it recognised among `watched` events (the
/// topic also holds earlier runs' records and replays).
#[derive(Default)]
struct CountingStore {
    inner: MemoryIdempotencyStore,
    watched: Mutex<std::collections::HashSet<uuid::Uuid>>,
    duplicates: AtomicUsize,
}

impl IdempotencyStore for CountingStore {
    async fn is_processed(
        &self,
        group: &str,
        event_id: uuid::Uuid,
    ) -> pegasus_events::Result<bool> {
        let seen = self.inner.is_processed(group, event_id).await?;
        if seen && self.watched.lock().unwrap().contains(&event_id) {
            self.duplicates.fetch_add(1, Ordering::SeqCst);
        }
        Ok(seen)
    }

    async fn mark_processed(
        &self,
        group: &str,
        event_id: uuid::Uuid,
    ) -> pegasus_events::Result<()> {
        self.inner.mark_processed(group, event_id).await
    }
}

struct ReplayHandler {
    run: String,
    /// Fails permanently on multiples of 3 while set: the bug that a fix removes.
    buggy: bool,
    seen: Mutex<Vec<(u32, uuid::Uuid)>>,
}

impl EventHandler<Replayed> for Arc<ReplayHandler> {
    async fn handle(
        &self,
        event: Replayed,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        if self.buggy && event.n.is_multiple_of(3) {
            return Err(HandlerError::permanent(std::io::Error::other("bug")));
        }
        self.seen
            .lock()
            .unwrap()
            .push((event.n, context.event_id()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_keep_their_identity_and_are_handled_once_after_the_fix() {
    create_topic(Replayed::TOPIC, 3).await;
    let dlq = unique("tests-dlq");
    let run = unique("run");
    let group = unique("replay");
    let producer = EventProducer::new(&config("replay-publisher"))
        .await
        .unwrap();
    let mut ids = HashMap::new();
    for n in 0..10 {
        let delivery = producer
            .publish(&Replayed {
                run: run.clone(),
                n,
            })
            .await
            .unwrap();
        ids.insert(n, delivery.event_id);
    }
    let store = Arc::new(CountingStore::default());
    store.watched.lock().unwrap().extend(ids.values().copied());
    let handler = |buggy| {
        Arc::new(ReplayHandler {
            run: run.clone(),
            buggy,
            seen: Mutex::new(Vec::new()),
        })
    };
    let consumer_with = |handler: &Arc<ReplayHandler>| {
        EventConsumer::builder(config("replay-test"))
            .group_id(&group)
            .settings(dead_letter_settings(&dlq))
            .idempotency(Arc::clone(&store))
            .handler::<Replayed, _>(Arc::clone(handler))
            .build()
            .unwrap()
    };

    let buggy = handler(true);
    let watched = Arc::clone(&buggy);
    let dlq_name = dlq.clone();
    run_with_signal(consumer_with(&buggy), async move {
        // Stop once the good records are handled and the bad ones dead-lettered.
        while watched.seen.lock().unwrap().len() < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        dead_letters(&dlq_name, 4).await;
    })
    .await;
    let letters = dead_letters(&dlq, 4).await;
    assert_eq!(letters.len(), 4, "0, 3, 6 and 9 were dead-lettered");

    let queue = DeadLetterQueue::new(&config("replayer"))
        .unwrap()
        .topic(&dlq);
    // A filter on one event id selects that letter only.
    let only_three = queue
        .read(&ReplayFilter::new().event_ids([ids[&3]]))
        .await
        .unwrap();
    assert_eq!(only_three.len(), 1);
    assert_eq!(only_three[0].event_id(), Some(ids[&3]));
    assert!(queue
        .read(&ReplayFilter::new().reason(DeadLetterReason::Decode))
        .await
        .unwrap()
        .is_empty());

    let filter = ReplayFilter::new()
        .original_topic(Replayed::TOPIC)
        .consumer_group(&group)
        .reason(DeadLetterReason::Handler);
    let report = queue.replay(&filter).await.unwrap();
    assert_eq!((report.matched, report.replayed), (4, 4));

    let fixed = handler(false);
    let watched = Arc::clone(&fixed);
    run_until_done(consumer_with(&fixed), move || {
        watched.seen.lock().unwrap().len() >= 4
    })
    .await;
    let mut seen = fixed.seen.lock().unwrap().clone();
    seen.sort();
    let expected: Vec<(u32, uuid::Uuid)> = [0, 3, 6, 9].iter().map(|n| (*n, ids[n])).collect();
    assert_eq!(
        seen, expected,
        "each replayed record handled once, with its original ce_id"
    );

    // Replaying the same letters again: the idempotency store recognises every one.
    let report = queue.replay(&filter).await.unwrap();
    assert_eq!(report.replayed, 4);
    let again = handler(false);
    let counted = Arc::clone(&store);
    run_until_done(consumer_with(&again), move || {
        counted.duplicates.load(Ordering::SeqCst) >= 4
    })
    .await;
    assert_eq!(store.duplicates.load(Ordering::SeqCst), 4);
    let effects = buggy.seen.lock().unwrap().len() + fixed.seen.lock().unwrap().len();
    let distinct: std::collections::HashSet<u32> = buggy
        .seen
        .lock()
        .unwrap()
        .iter()
        .chain(fixed.seen.lock().unwrap().iter())
        .map(|(n, _)| *n)
        .collect();
    FaultScenario {
        name: "dead letters replayed after the fix, then replayed again (idempotency store)",
        sent: 10,
        acknowledged: Some(ids.len()),
        handled: Some(distinct.len()),
        lost: 10 - distinct.len(),
        duplicate_deliveries: store.duplicates.load(Ordering::SeqCst),
        duplicate_effects: Some(effects + again.seen.lock().unwrap().len() - distinct.len()),
    }
    .record();
    assert!(
        again.seen.lock().unwrap().is_empty(),
        "duplicates were acknowledged without calling the handler"
    );
}

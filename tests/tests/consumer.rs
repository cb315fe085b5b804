//! The consumer runtime against the real broker: order per key, consumer groups, restarts,
//! failures, shutdown, undecodable records and mixed topics.
//!
//! Topics are bound to event types at compile time, so each test has its own event type
//! and topic; each run marks its events with a unique `run` id and ignores older ones, so
//! the tests also pass against a broker that kept data from earlier runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError, RetryPolicy,
};
use pegasus_events::dead_letter::{DeadLetterQueue, DeadLetterReason, ReplayFilter};
use pegasus_events::{Event, EventProducer, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    bootstrap, config, header, headers_of, read_record, run_until_done, run_until_done_watching,
    run_with_signal, unique, HandlerFailures, OwnBroker, TEST_DEADLINE,
};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};

async fn create_topic<E: Event>(partitions: i32) {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<E>().partitions(partitions)])
        .await
        .expect("topic");
}

async fn publish_all<E: Event>(events: &[E]) {
    let producer = EventProducer::new(&config("test-publisher")).await.unwrap();
    for result in producer.publish_all(events).await {
        result.expect("published");
    }
}

/// Short timeouts; failures retried without limit (these tests are about the partition
/// not moving past a failing record; `dead_letters.rs` covers limits and the dead-letter
/// topic), and a dead-letter topic of the test's own.
fn fast_settings() -> ConsumerSettings {
    ConsumerSettings {
        shutdown_timeout: Duration::from_secs(10),
        revoke_timeout: Duration::from_secs(10),
        commit_interval: Duration::from_millis(200),
        retry: RetryPolicy::forever().with_backoff(
            Duration::from_millis(20),
            2.0,
            Duration::from_millis(200),
        ),
        dead_letter_topic: unique("tests-dlq"),
        ..ConsumerSettings::default()
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.consumer.ordered")]
struct Ordered {
    run: String,
    #[event(key)]
    key: u32,
    seq: u32,
}

/// Records what a handler saw, per key, for this run only.
#[derive(Default)]
struct SeenPerKey {
    run: String,
    seen: Mutex<BTreeMap<u32, Vec<u32>>>,
    count: AtomicUsize,
}

impl EventHandler<Ordered> for Arc<SeenPerKey> {
    async fn handle(&self, event: Ordered, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.run {
            self.seen
                .lock()
                .unwrap()
                .entry(event.key)
                .or_default()
                .push(event.seq);
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_three_partitions_reach_the_handler_in_order_per_key() {
    create_topic::<Ordered>(3).await;
    let run = unique("run");
    let events: Vec<Ordered> = (0..10_000)
        .map(|i| Ordered {
            run: run.clone(),
            key: i % 100,
            seq: i / 100,
        })
        .collect();
    publish_all(&events).await;

    let seen = Arc::new(SeenPerKey {
        run,
        ..SeenPerKey::default()
    });
    let consumer = EventConsumer::builder(config("ordering-test"))
        .group_id(unique("ordering"))
        .settings(fast_settings())
        .handler::<Ordered, _>(Arc::clone(&seen))
        .build()
        .unwrap();
    let watched = Arc::clone(&seen);
    run_until_done(consumer, move || {
        watched.count.load(Ordering::SeqCst) >= 10_000
    })
    .await;

    let seen = seen.seen.lock().unwrap();
    assert_eq!(seen.len(), 100, "every key arrived");
    for (key, seqs) in seen.iter() {
        let expected: Vec<u32> = (0..100).collect();
        assert_eq!(
            seqs, &expected,
            "key {key}: in publish order, each exactly once"
        );
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.consumer.shared")]
struct Shared {
    run: String,
    #[event(key)]
    n: u32,
}

#[derive(Default)]
struct Collect {
    run: String,
    seen: Mutex<Vec<u32>>,
}

impl EventHandler<Shared> for Arc<Collect> {
    async fn handle(&self, event: Shared, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.run {
            self.seen.lock().unwrap().push(event.n);
        }
        Ok(())
    }
}

fn collector(run: &str) -> Arc<Collect> {
    Arc::new(Collect {
        run: run.to_owned(),
        ..Collect::default()
    })
}

fn len(c: &Arc<Collect>) -> usize {
    c.seen.lock().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_one_group_split_the_partitions_and_see_every_event_exactly_once() {
    create_topic::<Shared>(3).await;
    let run = unique("run");
    let group = unique("split");
    let (first, second) = (collector(&run), collector(&run));
    let total = 3_000;
    let consumer = |handler: &Arc<Collect>| {
        EventConsumer::builder(config("split-test"))
            .group_id(&group)
            .settings(fast_settings())
            .handler::<Shared, _>(Arc::clone(handler))
            .build()
            .unwrap()
    };
    let (a, b) = (consumer(&first), consumer(&second));
    let (wa, wb) = (Arc::clone(&first), Arc::clone(&second));
    let done = move || len(&wa) + len(&wb) >= total;
    let done2 = done.clone();
    let publisher = async {
        // Let both members join before anything is published.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let events: Vec<Shared> = (0..total as u32)
            .map(|n| Shared {
                run: run.clone(),
                n,
            })
            .collect();
        publish_all(&events).await;
    };
    tokio::join!(run_until_done(a, done), run_until_done(b, done2), publisher);

    let (a, b) = (first.seen.lock().unwrap(), second.seen.lock().unwrap());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both members got partitions: {} and {}",
        a.len(),
        b.len()
    );
    let mut all: Vec<u32> = a.iter().chain(b.iter()).copied().collect();
    all.sort_unstable();
    let expected: Vec<u32> = (0..total as u32).collect();
    assert_eq!(all, expected, "every event exactly once across the group");
}

/// Waits (at most [`TEST_DEADLINE`]) until `holds()`.
async fn until_health(what: &str, holds: impl Fn() -> bool) {
    tokio::time::timeout(TEST_DEADLINE, async {
        while !holds() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {TEST_DEADLINE:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_when_a_member_joined_its_group_and_how_many_partitions_it_holds_across_rebalances(
) {
    create_topic::<Shared>(3).await;
    let group = unique("health");
    let member = || {
        EventConsumer::builder(config("health-test"))
            .group_id(&group)
            .settings(fast_settings())
            .handler::<Shared, _>(collector("none"))
            .build()
            .unwrap()
    };
    let (first, second) = (member(), member());
    let (first_health, second_health) = (first.health(), second.health());
    assert!(!first_health.has_joined_group(), "not before run");
    assert_eq!(first_health.assigned_partitions(), 0);

    let (stop_first, first_stops) = tokio::sync::oneshot::channel::<()>();
    let first_run = tokio::spawn(run_with_signal(first, async {
        let _ = first_stops.await;
    }));
    until_health("the first member holds all three partitions", || {
        first_health.has_joined_group() && first_health.assigned_partitions() == 3
    })
    .await;

    let (stop_second, second_stops) = tokio::sync::oneshot::channel::<()>();
    let second_run = tokio::spawn(run_with_signal(second, async {
        let _ = second_stops.await;
    }));
    until_health("the two members split the three partitions", || {
        let (a, b) = (
            first_health.assigned_partitions(),
            second_health.assigned_partitions(),
        );
        second_health.has_joined_group() && a >= 1 && b >= 1 && a + b == 3
    })
    .await;

    // The second leaves: its health says so at once, and the first takes all back.
    let _ = stop_second.send(());
    second_run.await.expect("the second member's task");
    assert!(!second_health.has_joined_group(), "not after run returned");
    assert_eq!(second_health.assigned_partitions(), 0);
    until_health("the first member holds all three partitions again", || {
        first_health.assigned_partitions() == 3
    })
    .await;
    assert!(first_health.has_joined_group());

    let _ = stop_first.send(());
    first_run.await.expect("the first member's task");
    assert!(!first_health.has_joined_group());
    assert_eq!(first_health.assigned_partitions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_group_receives_every_event_as_well() {
    create_topic::<Shared>(3).await;
    let run = unique("run");
    let events: Vec<Shared> = (0..500)
        .map(|n| Shared {
            run: run.clone(),
            n,
        })
        .collect();
    publish_all(&events).await;
    for group in [unique("first-group"), unique("second-group")] {
        let seen = collector(&run);
        let consumer = EventConsumer::builder(config("groups-test"))
            .group_id(group)
            .settings(fast_settings())
            .handler::<Shared, _>(Arc::clone(&seen))
            .build()
            .unwrap();
        let watched = Arc::clone(&seen);
        run_until_done(consumer, move || len(&watched) >= 500).await;
        let mut got = seen.seen.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, (0..500).collect::<Vec<u32>>());
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.consumer.resumed")]
struct Resumed {
    run: String,
    #[event(key)]
    n: u32,
}

#[derive(Default)]
struct ResumeProbe {
    run: String,
    seen: Mutex<Vec<u32>>,
}

impl EventHandler<Resumed> for Arc<ResumeProbe> {
    async fn handle(&self, event: Resumed, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.run {
            // Slow enough that each session stops close to its target.
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.seen.lock().unwrap().push(event.n);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_after_its_last_commit_losing_and_redoing_nothing() {
    create_topic::<Resumed>(3).await;
    let run = unique("run");
    let group = unique("resume");
    let events: Vec<Resumed> = (0..2_000)
        .map(|n| Resumed {
            run: run.clone(),
            n,
        })
        .collect();
    publish_all(&events).await;

    let mut sessions = Vec::new();
    for stop_after in [700_usize, 1_400, 2_000] {
        let probe = Arc::new(ResumeProbe {
            run: run.clone(),
            ..ResumeProbe::default()
        });
        let total_before: usize = sessions.iter().map(Vec::len).sum();
        let consumer = EventConsumer::builder(config("resume-test"))
            .group_id(&group)
            .settings(fast_settings())
            .handler::<Resumed, _>(Arc::clone(&probe))
            .build()
            .unwrap();
        let watched = Arc::clone(&probe);
        let wanted = stop_after.saturating_sub(total_before).max(1);
        run_until_done(consumer, move || {
            watched.seen.lock().unwrap().len() >= wanted
        })
        .await;
        let seen = probe.seen.lock().unwrap().clone();
        sessions.push(seen);
    }
    let mut all: Vec<u32> = sessions.iter().flatten().copied().collect();
    let handled = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        handled,
        "nothing committed was handled again after a restart"
    );
    assert_eq!(
        all,
        (0..2_000).collect::<Vec<u32>>(),
        "nothing was lost across restarts"
    );
    assert!(
        sessions.iter().all(|s| !s.is_empty()),
        "each session did part of the work"
    );
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.consumer.failing")]
struct Failing {
    run: String,
    n: u32,
}

struct FailOn {
    run: String,
    fail_on: Option<u32>,
    panic_instead: bool,
    seen: Mutex<Vec<(u32, u32)>>,
}

impl FailOn {
    fn new(run: &str, fail_on: Option<u32>, panic_instead: bool) -> Arc<Self> {
        Arc::new(FailOn {
            run: run.to_owned(),
            fail_on,
            panic_instead,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn attempts_of(&self, n: u32) -> Vec<u32> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(m, _)| *m == n)
            .map(|(_, a)| *a)
            .collect()
    }

    fn handled(&self) -> Vec<u32> {
        let mut seen: Vec<u32> = self.seen.lock().unwrap().iter().map(|(n, _)| *n).collect();
        seen.dedup();
        seen
    }
}

impl EventHandler<Failing> for Arc<FailOn> {
    async fn handle(&self, event: Failing, context: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        self.seen.lock().unwrap().push((event.n, context.attempt));
        if Some(event.n) == self.fail_on {
            if self.panic_instead {
                if context.attempt < 3 {
                    panic!(
                        "handler panics on {} (attempt {})",
                        event.n, context.attempt
                    );
                }
            } else {
                return Err(HandlerError::transient(std::io::Error::other(
                    "database unavailable",
                )));
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handlers_record_is_not_passed_and_is_seen_again_after_restart() {
    create_topic::<Failing>(1).await;
    let run = unique("run");
    let group = unique("failing");
    let events: Vec<Failing> = (0..10)
        .map(|n| Failing {
            run: run.clone(),
            n,
        })
        .collect();
    publish_all(&events).await;

    let failing = FailOn::new(&run, Some(5), false);
    let consumer = EventConsumer::builder(config("failing-test"))
        .group_id(&group)
        .settings(fast_settings())
        .handler::<Failing, _>(Arc::clone(&failing))
        .build()
        .unwrap();
    let watched = Arc::clone(&failing);
    run_until_done(consumer, move || watched.attempts_of(5).len() >= 3).await;
    assert_eq!(
        failing.handled(),
        vec![0, 1, 2, 3, 4, 5],
        "the partition did not move past 5"
    );
    assert_eq!(
        failing.attempts_of(5)[..3],
        [1, 2, 3],
        "attempts are counted per record"
    );

    let fixed = FailOn::new(&run, None, false);
    let consumer = EventConsumer::builder(config("failing-test"))
        .group_id(&group)
        .settings(fast_settings())
        .handler::<Failing, _>(Arc::clone(&fixed))
        .build()
        .unwrap();
    let watched = Arc::clone(&fixed);
    run_until_done(consumer, move || watched.handled().len() >= 5).await;
    assert_eq!(
        fixed.handled(),
        vec![5, 6, 7, 8, 9],
        "resumed at the failed record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_dead_lettered_without_crashing_the_runtime() {
    create_topic::<Failing>(1).await;
    let run = unique("run");
    let events: Vec<Failing> = (0..6)
        .map(|n| Failing {
            run: run.clone(),
            n,
        })
        .collect();
    let producer = EventProducer::new(&config("test-publisher")).await.unwrap();
    let deliveries: Vec<_> = producer
        .publish_all(&events)
        .await
        .into_iter()
        .map(|result| result.expect("published"))
        .collect();
    let panicking = &deliveries[2];
    let panicky = FailOn::new(&run, Some(2), true);
    let group = unique("panic");
    let settings = fast_settings();
    let dlq = settings.dead_letter_topic.clone();
    let consumer = EventConsumer::builder(config("panic-test"))
        .group_id(&group)
        .settings(settings)
        .handler::<Failing, _>(Arc::clone(&panicky))
        .build()
        .unwrap();
    let watched = Arc::clone(&panicky);
    run_until_done(consumer, move || watched.handled().len() >= 6).await;
    assert_eq!(panicky.handled(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        panicky.attempts_of(2),
        vec![1],
        "a panic is not retried, even under a retry-forever policy: the record is dead-lettered"
    );

    // The dead-letter topic (this test's own) holds the panicking record, and only it.
    let queue = DeadLetterQueue::new(&config("dlq-reader"))
        .unwrap()
        .topic(&dlq);
    let deadline = tokio::time::Instant::now() + TEST_DEADLINE;
    let letters = loop {
        let letters = queue.read(&ReplayFilter::new()).await.expect("readable");
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter on {dlq}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.reason, DeadLetterReason::Panic);
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.consumer_group, group);
    assert_eq!(letter.record.topic, Failing::TOPIC);
    assert_eq!(
        (letter.original_partition, letter.original_offset),
        (panicking.partition, panicking.offset)
    );
    assert_eq!(letter.event_id(), Some(panicking.event_id));
    assert!(
        letter.error.contains("handler panics on 2 (attempt 1)"),
        "the panic's message is the error: {}",
        letter.error
    );

    // As stored: the original key, value and headers, then the dead-letter headers.
    let original = read_record(Failing::TOPIC, panicking.partition, panicking.offset);
    let stored = read_record(&dlq, letter.partition, letter.offset);
    assert_eq!(stored.key(), original.key());
    assert_eq!(stored.payload(), original.payload());
    let original_headers = headers_of(&original);
    let stored_headers = headers_of(&stored);
    assert_eq!(
        stored_headers[..original_headers.len()],
        original_headers[..],
        "the original headers come first, unchanged"
    );
    let added: Vec<(&str, &str)> = stored_headers[original_headers.len()..]
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let partition = panicking.partition.to_string();
    let offset = panicking.offset.to_string();
    let names: Vec<&str> = added.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
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
    let added_header = |name| header(&stored_headers, name);
    assert_eq!(added_header("dlq-original-topic"), Some(Failing::TOPIC));
    assert_eq!(
        added_header("dlq-original-partition"),
        Some(partition.as_str())
    );
    assert_eq!(added_header("dlq-original-offset"), Some(offset.as_str()));
    assert_eq!(added_header("dlq-consumer-group"), Some(group.as_str()));
    assert_eq!(added_header("dlq-reason"), Some("panic"));
    assert_eq!(added_header("dlq-error"), Some(letter.error.as_str()));
    assert_eq!(added_header("dlq-attempts"), Some("1"));
    assert!(
        chrono::DateTime::parse_from_rfc3339(added_header("dlq-failed-at").unwrap()).is_ok(),
        "dlq-failed-at is a time: {added:?}"
    );
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.consumer.slow")]
struct Slow {
    run: String,
    n: u32,
}

struct SlowOn {
    run: String,
    slow_on: u32,
    slow_for: Duration,
    started: Mutex<Vec<u32>>,
    finished: Mutex<Vec<u32>>,
    slow_started: tokio::sync::Notify,
}

impl EventHandler<Slow> for Arc<SlowOn> {
    async fn handle(&self, event: Slow, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        self.started.lock().unwrap().push(event.n);
        if event.n == self.slow_on {
            self.slow_started.notify_one();
            tokio::time::sleep(self.slow_for).await;
        }
        self.finished.lock().unwrap().push(event.n);
        Ok(())
    }
}

fn slow_handler(run: &str, slow_for: Duration) -> Arc<SlowOn> {
    Arc::new(SlowOn {
        run: run.to_owned(),
        slow_on: 3,
        slow_for,
        started: Mutex::new(Vec::new()),
        finished: Mutex::new(Vec::new()),
        slow_started: tokio::sync::Notify::new(),
    })
}

async fn shutdown_during_slow_handler(
    slow_for: Duration,
    shutdown_timeout: Duration,
) -> (Vec<u32>, Vec<u32>) {
    create_topic::<Slow>(1).await;
    let run = unique("run");
    let group = unique("slow");
    let events: Vec<Slow> = (0..8)
        .map(|n| Slow {
            run: run.clone(),
            n,
        })
        .collect();
    publish_all(&events).await;

    let slow = slow_handler(&run, slow_for);
    let consumer = EventConsumer::builder(config("slow-test"))
        .group_id(&group)
        .settings(ConsumerSettings {
            shutdown_timeout,
            ..fast_settings()
        })
        .handler::<Slow, _>(Arc::clone(&slow))
        .build()
        .unwrap();
    let signal_on = Arc::clone(&slow);
    run_with_signal(
        consumer,
        async move { signal_on.slow_started.notified().await },
    )
    .await;
    let first_session = slow.finished.lock().unwrap().clone();

    let after = slow_handler(&run, Duration::ZERO);
    let consumer = EventConsumer::builder(config("slow-test"))
        .group_id(&group)
        .settings(fast_settings())
        .handler::<Slow, _>(Arc::clone(&after))
        .build()
        .unwrap();
    let watched = Arc::clone(&after);
    run_until_done(consumer, move || {
        watched.finished.lock().unwrap().contains(&7)
    })
    .await;
    let second_session = after.finished.lock().unwrap().clone();
    (first_session, second_session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_slow_handler_lets_it_finish_and_commits_what_finished_and_nothing_else()
{
    let (first, second) =
        shutdown_during_slow_handler(Duration::from_secs(2), Duration::from_secs(10)).await;
    assert_eq!(
        first,
        vec![0, 1, 2, 3],
        "the slow record finished within the shutdown timeout"
    );
    assert_eq!(
        second,
        vec![4, 5, 6, 7],
        "only what did not finish is handled after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_shutdown_timeout_leaves_its_record_uncommitted() {
    let (first, second) =
        shutdown_during_slow_handler(Duration::from_secs(6), Duration::from_millis(500)).await;
    assert_eq!(
        first,
        vec![0, 1, 2],
        "the slow record did not finish before shutdown returned"
    );
    assert_eq!(
        second,
        vec![3, 4, 5, 6, 7],
        "so it is handled again after restart"
    );
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.consumer.mixed-quality")]
struct Quality {
    run: String,
    n: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_do_not_stop_the_good_records_around_them() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    create_topic::<Quality>(1).await;
    let run = unique("run");
    let producer = EventProducer::new(&config("quality-test")).await.unwrap();
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let ce_headers = |event_type: &str, version: &str| {
        OwnedHeaders::new()
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(&uuid::Uuid::now_v7().to_string()),
            })
            .insert(Header {
                key: "ce_source",
                value: Some("elsewhere"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some(event_type),
            })
            .insert(Header {
                key: "ce_time",
                value: Some("2026-01-15T10:30:00Z"),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "ce_schemaversion",
                value: Some(version),
            })
    };
    let good_value = |n: u32| {
        serde_json::to_string(&Quality {
            run: run.clone(),
            n,
        })
        .unwrap()
    };
    let mut n = 0;
    for bad in 0..4 {
        producer
            .publish(&Quality {
                run: run.clone(),
                n,
            })
            .await
            .unwrap();
        n += 1;
        let (value, headers) = match bad {
            0 => ("{not json".to_owned(), ce_headers("Quality", "1")),
            1 => (good_value(999), ce_headers("SomethingElse", "1")),
            2 => (good_value(999), ce_headers("Quality", "9")),
            _ => (r#"{"run":42}"#.to_owned(), ce_headers("Quality", "1")),
        };
        raw.send(
            FutureRecord::to(Quality::TOPIC)
                .key("bad")
                .payload(&value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    producer
        .publish(&Quality {
            run: run.clone(),
            n,
        })
        .await
        .unwrap();

    struct Good {
        run: String,
        seen: Mutex<Vec<u32>>,
    }
    impl EventHandler<Quality> for Arc<Good> {
        async fn handle(&self, event: Quality, _: &EventContext<'_>) -> Result<(), HandlerError> {
            if event.run == self.run {
                self.seen.lock().unwrap().push(event.n);
            }
            Ok(())
        }
    }
    let good = Arc::new(Good {
        run,
        seen: Mutex::new(Vec::new()),
    });
    let consumer = EventConsumer::builder(config("quality-test"))
        .group_id(unique("quality"))
        .settings(fast_settings())
        .handler::<Quality, _>(Arc::clone(&good))
        .build()
        .unwrap();
    let watched = Arc::clone(&good);
    run_until_done(consumer, move || watched.seen.lock().unwrap().len() >= 5).await;
    assert_eq!(*good.seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(
    topic = "tests-mixed-events",
    name = "UserCreatedEvent",
    free_form_topic
)]
struct UserCreated {
    run: String,
    n: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(
    topic = "tests-mixed-events",
    name = "UserDeactivatedEvent",
    free_form_topic
)]
struct UserDeactivated {
    run: String,
    n: u32,
}

#[derive(Default)]
struct MixedProbe {
    run: String,
    seen: Mutex<Vec<(&'static str, u32)>>,
}

impl EventHandler<UserCreated> for Arc<MixedProbe> {
    async fn handle(
        &self,
        event: UserCreated,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        assert_eq!(context.metadata.event_type, "UserCreatedEvent");
        if event.run == self.run {
            self.seen.lock().unwrap().push(("created", event.n));
        }
        Ok(())
    }
}

impl EventHandler<UserDeactivated> for Arc<MixedProbe> {
    async fn handle(
        &self,
        event: UserDeactivated,
        _: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if event.run == self.run {
            self.seen.lock().unwrap().push(("deactivated", event.n));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_topic_dispatches_each_record_to_the_handler_of_its_ce_type() {
    create_topic::<UserCreated>(1).await;
    let run = unique("run");
    let producer = EventProducer::new(&config("identity-api")).await.unwrap();
    for n in 0..6 {
        if n % 2 == 0 {
            producer
                .publish(&UserCreated {
                    run: run.clone(),
                    n,
                })
                .await
                .unwrap();
        } else {
            producer
                .publish(&UserDeactivated {
                    run: run.clone(),
                    n,
                })
                .await
                .unwrap();
        }
    }
    let probe = Arc::new(MixedProbe {
        run,
        ..MixedProbe::default()
    });
    // The created-handler asserts on its context: a failed assertion fails the test at
    // once, with its message, instead of being dead-lettered.
    let failures = HandlerFailures::default();
    let consumer = EventConsumer::builder(config("mixed-test"))
        .group_id(unique("mixed"))
        .settings(fast_settings())
        .handler::<UserCreated, _>(failures.watch(Arc::clone(&probe)))
        .handler::<UserDeactivated, _>(failures.watch(Arc::clone(&probe)))
        .build()
        .unwrap();
    let watched = Arc::clone(&probe);
    run_until_done_watching(consumer, &failures, move || {
        watched.seen.lock().unwrap().len() >= 6
    })
    .await;
    assert_eq!(
        *probe.seen.lock().unwrap(),
        vec![
            ("created", 0),
            ("deactivated", 1),
            ("created", 2),
            ("deactivated", 3),
            ("created", 4),
            ("deactivated", 5)
        ]
    );
}

// ---------------------------------------------------------------------------------------

#[test]
fn the_default_group_id_follows_the_designs_convention() {
    use pegasus_events::consumer::default_group_id;
    assert_eq!(
        default_group_id("identity-api", "ShipmentCreatedEvent"),
        "identity-api-shipmentcreated-consumer"
    );
    assert_eq!(
        default_group_id("shipping-api", "UserCreated"),
        "shipping-api-usercreated-consumer"
    );
    let consumer = EventConsumer::builder(config("identity-api"))
        .handler::<Shared, _>(collector("x"))
        .build()
        .unwrap();
    assert_eq!(consumer.group_id(), "identity-api-shared-consumer");
}

#[test]
fn registering_the_same_event_type_twice_is_a_config_error() {
    let error = EventConsumer::builder(config("dup"))
        .handler::<UserCreated, _>(Arc::new(MixedProbe::default()))
        .handler::<UserCreated, _>(Arc::new(MixedProbe::default()))
        .build()
        .unwrap_err();
    assert!(
        matches!(error, pegasus_events::Error::Config { .. }),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.consumer.orphaned")]
struct Orphaned {
    n: u32,
}

struct CountAll(Arc<AtomicUsize>);

impl EventHandler<Orphaned> for CountAll {
    async fn handle(&self, _: Orphaned, _: &EventContext<'_>) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_its_deadline_when_the_broker_is_gone() {
    let broker = OwnBroker::start("orphan");
    let address = broker.bootstrap().to_owned();
    let config = pegasus_events::KafkaConfig::new(&address).with_client_id("orphan-test");
    let producer = EventProducer::new(&config).await.unwrap();
    for result in producer
        .publish_all(&(0..10).map(|n| Orphaned { n }).collect::<Vec<_>>())
        .await
    {
        result.unwrap();
    }
    let handled = Arc::new(AtomicUsize::new(0));
    let consumer = EventConsumer::builder(config)
        .settings(ConsumerSettings {
            shutdown_timeout: Duration::from_secs(2),
            ..fast_settings()
        })
        .handler::<Orphaned, _>(CountAll(Arc::clone(&handled)))
        .build()
        .unwrap();
    let watched = Arc::clone(&handled);
    let started = std::time::Instant::now();
    let signal = async move {
        while watched.load(Ordering::SeqCst) < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The broker disappears while the consumer runs; then shutdown is asked for.
        tokio::task::spawn_blocking(move || broker.stop())
            .await
            .unwrap();
    };
    let shutdown_asked = Arc::new(Mutex::new(None::<std::time::Instant>));
    let mark = Arc::clone(&shutdown_asked);
    tokio::time::timeout(
        TEST_DEADLINE,
        consumer.run_until(async move {
            signal.await;
            *mark.lock().unwrap() = Some(std::time::Instant::now());
        }),
    )
    .await
    .expect("shutdown did not hang")
    .unwrap();
    let asked = shutdown_asked
        .lock()
        .unwrap()
        .expect("shutdown was asked for");
    let took = asked.elapsed();
    eprintln!("shutdown with the broker gone took {took:?}");
    assert_eq!(handled.load(Ordering::SeqCst), 10);
    // Deadline: shutdown timeout (2 s) plus the documented close grace (10 s).
    assert!(took < Duration::from_secs(13), "shutdown took {took:?}");
    assert!(started.elapsed() < TEST_DEADLINE);
}

//! A broker that goes away after start, under a running consumer and producer: the
//! outage is logged once when it starts, summarised while it lasts and logged once when it
//! ends (not once per poll); the consumer's health shows it; a publish that times out
//! meanwhile names the address and the cause; and the consumer goes on once the broker is
//! back.
//!
//! Alone in its file because it installs the process-wide log subscriber: the consumer
//! logs from its own threads, which a per-thread subscriber would not see.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pegasus_events::connection::OUTAGE_SUMMARY_INTERVAL;
use pegasus_events::consumer::{ConsumerStatus, EventConsumer, EventContext, EventHandler};
use pegasus_events::{
    Error, Event, EventProducer, HandlerError, KafkaConfig, TopicAdmin, TopicSpec, UnreachableCause,
};
use pegasus_events_tests::{kafka_script, LogBuffer, OwnBroker};
use serde::{Deserialize, Serialize};

/// The whole test, broker start and restart included, ends within this.
const TEST_DEADLINE: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.outage.survived")]
struct Survived {
    n: u32,
}

/// The events handled, by number; a redelivery (the broker may be killed before the
/// consumer's last commit reached it) adds nothing.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<BTreeSet<u32>>>);

impl Seen {
    fn all_of(&self, numbers: std::ops::Range<u32>) -> bool {
        let seen = self.0.lock().unwrap();
        numbers.into_iter().all(|n| seen.contains(&n))
    }
}

impl EventHandler<Survived> for Seen {
    async fn handle(&self, event: Survived, _: &EventContext<'_>) -> Result<(), HandlerError> {
        self.0.lock().unwrap().insert(event.n);
        Ok(())
    }
}

/// Every line logged in the process, at `info` and above: the consumer logs from its own
/// threads, which a per-thread subscriber would not see.
fn install_process_logs() -> LogBuffer {
    let logs = LogBuffer::default();
    tracing::subscriber::set_global_default(logs.subscriber(tracing::Level::INFO))
        .expect("the only subscriber of this test process");
    logs
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_logged_once_summarised_and_ended_shown_in_health_and_waited_out() {
    tokio::time::timeout(TEST_DEADLINE, outage_scenario())
        .await
        .expect("the scenario ends within its deadline");
}

async fn outage_scenario() {
    let logs = install_process_logs();
    let broker = OwnBroker::start("outage");
    let (name, address) = (broker.name().to_owned(), broker.bootstrap().to_owned());
    let config = KafkaConfig::new(&address).with_client_id("outage-test");
    TopicAdmin::new(&config)
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Survived>().partitions(2)])
        .await
        .unwrap();
    let producer = EventProducer::new(&config).await.unwrap();
    let mut impatient_config = config.clone();
    impatient_config.producer.delivery_timeout = Duration::from_secs(3);
    let impatient = EventProducer::new(&impatient_config).await.unwrap();

    let seen = Seen::default();
    let consumer = EventConsumer::builder(config.clone())
        .handler::<Survived, _>(seen.clone())
        .build()
        .unwrap();
    let health = consumer.health();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));

    for result in producer
        .publish_all(&(0..10).map(|n| Survived { n }).collect::<Vec<_>>())
        .await
    {
        result.unwrap();
    }
    wait_for(
        "10 handled before the outage",
        Duration::from_secs(60),
        || seen.all_of(0..10),
    )
    .await;
    assert!(health.is_ready(), "{:?}", health.status());

    kafka_script(&["kill-node", "1", "--name", &name, "--signal", "KILL"]);
    let killed = Instant::now();
    // The first failure librdkafka reports is the lost connection; the attempts to
    // reconnect that follow are refused.
    wait_for(
        "the outage, refused connections, in the health",
        Duration::from_secs(60),
        || {
            matches!(
                health.status(),
                ConsumerStatus::BrokersUnreachable {
                    cause: Some(UnreachableCause::ConnectionRefused { ref broker }),
                    ..
                } if *broker == address
            )
        },
    )
    .await;
    assert!(!health.is_ready());

    // A publish meanwhile fails after its delivery timeout naming the address and cause.
    let error = impatient
        .publish(&Survived { n: 999 })
        .await
        .expect_err("no broker to acknowledge it");
    match &error.error {
        Error::BrokersUnreachable {
            client,
            bootstrap,
            cause: UnreachableCause::ConnectionRefused { .. },
            ..
        } => {
            assert_eq!(*client, "producer");
            assert_eq!(bootstrap, &address);
        }
        other => panic!("expected BrokersUnreachable, got {other:?}"),
    }

    // Down long enough for one summary.
    let down_for = OUTAGE_SUMMARY_INTERVAL + Duration::from_secs(5);
    tokio::time::sleep(down_for.saturating_sub(killed.elapsed())).await;
    kafka_script(&["start-node", "1", "--name", &name]);
    wait_for(
        "the end of the outage in the health",
        Duration::from_secs(90),
        || health.is_ready(),
    )
    .await;

    for result in producer
        .publish_all(&(10..20).map(|n| Survived { n }).collect::<Vec<_>>())
        .await
    {
        result.unwrap();
    }
    wait_for(
        "10 more handled after the outage",
        Duration::from_secs(90),
        || seen.all_of(0..20),
    )
    .await;
    let _ = stop.send(());
    running
        .await
        .unwrap()
        .expect("the consumer ran through the outage");
    assert_eq!(health.status(), ConsumerStatus::Stopped);

    let text = logs.text();
    let consumer_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("client=\"consumer\""))
        .collect();
    let count = |needle: &str| consumer_lines.iter().filter(|l| l.contains(needle)).count();
    let started = count("no Kafka broker reachable at") - count("still no Kafka broker");
    let summaries = count("still no Kafka broker reachable at");
    let ended = count("reachable again after");
    let loud = consumer_lines
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    eprintln!(
        "outage of {:?}: consumer lines {} (warn or error {loud}): started {started}, \
         summaries {summaries}, ended {ended}",
        down_for,
        consumer_lines.len()
    );
    for line in &consumer_lines {
        eprintln!("  {line}");
    }
    assert_eq!(started, 1, "the start is logged once");
    assert!(
        (1..=2).contains(&summaries),
        "one summary per {OUTAGE_SUMMARY_INTERVAL:?}: {summaries}"
    );
    assert_eq!(ended, 1, "the end is logged once");
    assert!(
        consumer_lines
            .iter()
            .any(|l| l.contains("no Kafka broker reachable at") && l.contains("connection refused")),
        "the start names the cause"
    );
    // Before, a consumer logged every 50 ms poll during an outage (about 800 lines here);
    // now the outage lines above and librdkafka's own, each at most once per 30 s.
    assert!(
        loud <= 20,
        "{loud} warn or error lines from the consumer in a {down_for:?} outage"
    );
}

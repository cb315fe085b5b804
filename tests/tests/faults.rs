//! Fault tests: processes killed, brokers stopped, leaders lost. Each proves that no
//! acknowledged event is lost, bounds its own runtime and stops what it started.
//!
//! Each scenario appends its counts to `target/fault-scenarios.tsv` (read by
//! `scripts/test`, which prints them, and the source of the README's table).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::{
    Event, EventProducer, IdempotencyStore, KafkaConfig, MemoryIdempotencyStore, TopicAdmin,
    TopicSpec,
};
use pegasus_events_tests::{
    bootstrap, config, kafka_script, unique, FaultScenario, LedgerEntry, OwnBroker, BOOTSTRAP_ENV,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};

/// Kills the child with SIGKILL when dropped, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------

fn killable_consumer(group: &str, database: &str, run: &str, deliveries: &str) -> Reaped {
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_killable_consumer"))
            .args([group, database, run, deliveries])
            .env(BOOTSTRAP_ENV, bootstrap())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("the consumer process starts"),
    )
}

async fn effects_count(pool: &sqlx::SqlitePool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await
        .unwrap_or(0) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_at_random_points_and_restarted_handles_every_event_and_applies_none_twice(
) {
    const EVENTS: usize = 50_000;
    const KILLS: usize = 5;
    let deadline = Instant::now() + Duration::from_secs(300);
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<LedgerEntry>().partitions(3)])
        .await
        .unwrap();
    let run = unique("run");
    let producer = EventProducer::new(&config("ledger-publisher"))
        .await
        .unwrap();
    let entries: Vec<LedgerEntry> = (0..EVENTS as u32)
        .map(|n| LedgerEntry {
            run: run.clone(),
            account: n % 200,
            n,
        })
        .collect();
    let acknowledged = producer
        .publish_all(&entries)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(
        acknowledged, EVENTS,
        "every event acknowledged before the test"
    );

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("ledger"));
    std::fs::create_dir_all(&dir).unwrap();
    let database = dir.join("ledger.db").display().to_string();
    let deliveries = dir.join("deliveries.log").display().to_string();
    let group = unique("ledger");
    let reader = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            format!("sqlite://{database}")
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true),
        )
        .await
        .unwrap();

    let mut kills = 0;
    while kills < KILLS {
        let before = effects_count(&reader).await;
        let child = killable_consumer(&group, &database, &run, &deliveries);
        // Let it apply a random number of entries (it may be mid-batch, mid-transaction or
        // mid-commit when the signal lands), then kill it without warning.
        let target = before + fastrand_between(500, 4_000);
        while effects_count(&reader).await < target.min(EVENTS - 1) {
            assert!(
                Instant::now() < deadline,
                "the consumer made no progress in time"
            );
            tokio::time::sleep(Duration::from_millis(fastrand_between(1, 30) as u64)).await;
        }
        drop(child); // SIGKILL, then reaped
        kills += 1;
    }

    let mut last = killable_consumer(&group, &database, &run, &deliveries);
    while effects_count(&reader).await < EVENTS {
        assert!(
            Instant::now() < deadline,
            "not every entry was applied in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A graceful stop at the end (SIGTERM), so the last offsets are committed.
    let _ = Command::new("kill")
        .args(["-TERM", &last.0.id().to_string()])
        .status();
    let _ = last.0.wait();

    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT n) FROM effects")
        .fetch_one(&reader)
        .await
        .unwrap();
    let applied = effects_count(&reader).await;
    // Every delivery of this run's records to a consumer process, across all of them: one
    // line per first attempt, `<event id> <partition> <offset>` (retries are not
    // deliveries).
    let delivery_log = std::fs::read_to_string(&deliveries).unwrap();
    let mut position_of: HashMap<&str, (&str, &str)> = HashMap::new();
    let mut delivered = 0;
    for line in delivery_log.lines() {
        let [id, partition, offset] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("a malformed line in the deliveries file: {line:?}");
        };
        delivered += 1;
        let position = *position_of.entry(id).or_insert((partition, offset));
        assert_eq!(
            position,
            (partition, offset),
            "event {id} was delivered from two records: it was on the topic once"
        );
    }
    let delivered_events = position_of.len();
    FaultScenario {
        name: "consumer process killed with SIGKILL 5 times while handling, restarted",
        sent: EVENTS,
        acknowledged: Some(acknowledged),
        handled: Some(distinct as usize),
        lost: EVENTS - distinct as usize,
        duplicate_deliveries: delivered - delivered_events,
        duplicate_effects: Some(applied - distinct as usize),
    }
    .record();
    assert_eq!(distinct as usize, EVENTS, "every entry applied");
    assert_eq!(applied, EVENTS, "no entry applied twice");
    assert_eq!(delivered_events, EVENTS, "every event was delivered");
}

fn fastrand_between(low: usize, high: usize) -> usize {
    // Seeded from the clock: different kill points on every run.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    low + nanos % (high - low)
}

// ---------------------------------------------------------------------------------------
// Broker faults while a producer and a consumer run.

/// An event of the broker-fault scenarios: its run and its number in the run.
trait Numbered: Event + Clone {
    fn new(run: &str, n: u32) -> Self;
    fn run(&self) -> &str;
    fn n(&self) -> u32;
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.fault.restarted")]
struct AcrossRestart {
    run: String,
    #[event(key)]
    account: u32,
    n: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.fault.leaderless")]
struct AcrossLeaderLoss {
    run: String,
    #[event(key)]
    account: u32,
    n: u32,
}

macro_rules! numbered {
    ($ty:ident) => {
        impl Numbered for $ty {
            fn new(run: &str, n: u32) -> Self {
                $ty {
                    run: run.to_owned(),
                    account: n % 100,
                    n,
                }
            }
            fn run(&self) -> &str {
                &self.run
            }
            fn n(&self) -> u32 {
                self.n
            }
        }
    };
}
numbered!(AcrossRestart);
numbered!(AcrossLeaderLoss);

/// What the consumer of a scenario saw.
struct Tally {
    run: String,
    handled: Mutex<HashSet<u32>>,
    calls: AtomicUsize,
    /// Redeliveries of an event already handled, caught by the idempotency store.
    duplicates_caught: AtomicUsize,
}

/// The scenarios' handler: records which events of the run it handled.
struct TallyHandler(Arc<Tally>);

impl<E: Numbered> EventHandler<E> for TallyHandler {
    async fn handle(&self, event: E, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run() == self.0.run {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            self.0.handled.lock().unwrap().insert(event.n());
        }
        Ok(())
    }
}

/// The memory store, counting the redeliveries it recognises.
struct CountingStore {
    inner: MemoryIdempotencyStore,
    tally: Arc<Tally>,
}

impl IdempotencyStore for CountingStore {
    async fn is_processed(&self, group: &str, id: uuid::Uuid) -> pegasus_events::Result<bool> {
        let seen = self.inner.is_processed(group, id).await?;
        if seen {
            self.tally.duplicates_caught.fetch_add(1, Ordering::SeqCst);
        }
        Ok(seen)
    }

    async fn mark_processed(&self, group: &str, id: uuid::Uuid) -> pegasus_events::Result<()> {
        self.inner.mark_processed(group, id).await
    }
}

/// Publishes `total` events in small batches while a consumer runs, calls `fault` after a
/// third of them, and waits until the consumer handled every acknowledged event.
async fn publish_and_consume_through<E: Numbered>(
    config: KafkaConfig,
    name: &str,
    total: u32,
    fault: impl FnOnce() + Send + 'static,
) {
    let deadline = Instant::now() + Duration::from_secs(240);
    let run = unique("run");
    let tally = Arc::new(Tally {
        run: run.clone(),
        handled: Mutex::default(),
        calls: AtomicUsize::new(0),
        duplicates_caught: AtomicUsize::new(0),
    });
    let consumer = EventConsumer::builder(config.clone())
        .group_id(unique("through-faults"))
        .settings(ConsumerSettings {
            commit_interval: Duration::from_millis(200),
            dead_letter_topic: unique("tests-dlq"),
            ..ConsumerSettings::default()
        })
        .idempotency(CountingStore {
            inner: MemoryIdempotencyStore::default(),
            tally: Arc::clone(&tally),
        })
        .handler::<E, _>(TallyHandler(Arc::clone(&tally)))
        .build()
        .unwrap();
    let all_handled = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::clone(&all_handled);
    let consuming = tokio::spawn(consumer.run_until(async move { finished.notified().await }));

    let producer = EventProducer::new(&config).await.unwrap();
    let mut acknowledged = HashSet::new();
    let mut fault = Some(fault);
    let mut faulted = None;
    for start in (0..total).step_by(200) {
        if start >= total / 3 {
            if let Some(fault) = fault.take() {
                faulted = Some(tokio::task::spawn_blocking(fault));
            }
        }
        let batch: Vec<E> = (start..(start + 200).min(total))
            .map(|n| E::new(&run, n))
            .collect();
        for (event, result) in batch.iter().zip(producer.publish_all(&batch).await) {
            if result.is_ok() {
                acknowledged.insert(event.n());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(faulted) = faulted {
        faulted.await.expect("the fault was injected");
    }
    let published_after_fault = acknowledged
        .iter()
        .filter(|n| **n >= total / 3 + 200)
        .count();
    assert!(
        published_after_fault > 0,
        "publishing went on after the fault"
    );
    loop {
        let missing = acknowledged
            .iter()
            .filter(|n| !tally.handled.lock().unwrap().contains(n))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged events were not handled in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_handled.notify_one();
    tokio::time::timeout(Duration::from_secs(60), consuming)
        .await
        .expect("the consumer stopped")
        .unwrap()
        .unwrap();

    let handled = tally.handled.lock().unwrap().len();
    let lost = acknowledged
        .iter()
        .filter(|n| !tally.handled.lock().unwrap().contains(n))
        .count();
    let calls = tally.calls.load(Ordering::SeqCst);
    let caught = tally.duplicates_caught.load(Ordering::SeqCst);
    FaultScenario {
        name,
        sent: total as usize,
        acknowledged: Some(acknowledged.len()),
        handled: Some(handled),
        lost,
        duplicate_deliveries: caught + (calls - handled),
        duplicate_effects: Some(calls - handled),
    }
    .record();
    assert_eq!(lost, 0, "no acknowledged event lost");
    assert_eq!(calls, handled, "no event handled twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_broker_killed_and_restarted_under_load_loses_no_acknowledged_event() {
    let broker = OwnBroker::start("restarted");
    let (name, address) = (broker.name().to_owned(), broker.bootstrap().to_owned());
    let mut config = KafkaConfig::new(&address).with_client_id("restart-test");
    // Long enough for librdkafka to hold and resend what it could not deliver meanwhile.
    config.producer.delivery_timeout = Duration::from_secs(120);
    TopicAdmin::new(&config)
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<AcrossRestart>().partitions(3)])
        .await
        .unwrap();
    publish_and_consume_through::<AcrossRestart>(
        config,
        "single broker killed (SIGKILL) and restarted while publishing and consuming",
        20_000,
        move || {
            kafka_script(&["kill-node", "1", "--name", &name, "--signal", "KILL"]);
            std::thread::sleep(Duration::from_secs(3));
            kafka_script(&["start-node", "1", "--name", &name]);
        },
    )
    .await;
}

fn cluster_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the three-broker cluster")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_leader_killed_during_acks_all_publishing_loses_no_acknowledged_event() {
    let address = cluster_env("PEGASUS_TEST_CLUSTER_BOOTSTRAP");
    let cluster = cluster_env("PEGASUS_TEST_CLUSTER_NAME");
    let mut config = KafkaConfig::new(&address).with_client_id("leader-test");
    config.producer.delivery_timeout = Duration::from_secs(120);
    TopicAdmin::new(&config)
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<AcrossLeaderLoss>()
            .partitions(3)
            .replication_factor(3)
            .config("min.insync.replicas", "2")])
        .await
        .unwrap();
    let metadata: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &address)
        .create()
        .unwrap();
    let leader_of = move || -> i32 {
        let found = metadata
            .fetch_metadata(Some(AcrossLeaderLoss::TOPIC), Duration::from_secs(10))
            .unwrap();
        found.topics()[0].partitions()[0].leader()
    };
    let leader = leader_of();
    assert!(
        (1..=3).contains(&leader),
        "partition 0 has a leader: {leader}"
    );
    let node = leader.to_string();
    let restart_cluster = cluster.clone();
    // Restarts the node whatever happens, so later tests find the whole cluster.
    struct Restart(String, String);
    impl Drop for Restart {
        fn drop(&mut self) {
            kafka_script(&["start-node", &self.1, "--name", &self.0]);
        }
    }
    let _restart = Restart(restart_cluster, node.clone());
    publish_and_consume_through::<AcrossLeaderLoss>(
        config,
        "leader of partition 0 killed (SIGKILL) on the 3-broker cluster, acks=all",
        20_000,
        move || {
            kafka_script(&["kill-node", &node, "--name", &cluster, "--signal", "KILL"]);
        },
    )
    .await;
    let new_leader = leader_of();
    assert_ne!(new_leader, leader, "leadership moved to another broker");
}

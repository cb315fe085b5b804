//! Fault tests of the outbox relay: killed between the broker's acknowledgement and the
//! mark, and the broker stopped under load. Each bounds its runtime and stops what it
//! started.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pegasus_events::outbox::{PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events::{Event, KafkaConfig, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    bootstrap, config, fresh_postgres_database, header, headers_of, kafka_script, unique,
    BOOTSTRAP_ENV,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use serde::{Deserialize, Serialize};

const DEADLINE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.outbox.relayed")]
struct Relayed {
    run: String,
    #[event(key)]
    account: u32,
    n: u32,
}

/// Kills the child with SIGKILL when dropped, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_process(database: &str, url: &str) -> Reaped {
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_outbox_relay"))
            .args([database, url, &unique("tests-dlq")])
            .env(BOOTSTRAP_ENV, bootstrap())
            .spawn()
            .expect("the relay process starts"),
    )
}

/// Every record of `run` on `bootstrap_servers`, read from the beginning, once `want` of
/// them are distinct events (by `ce_id`), after waiting `settle` for late duplicates.
fn read_run(
    bootstrap_servers: &str,
    run: &str,
    want: usize,
    settle: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", unique("relay-readback"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[Relayed::TOPIC]).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut found = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut complete_at: Option<Instant> = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} events arrived",
            ids.len()
        );
        if complete_at.is_some_and(|at| at.elapsed() >= settle) {
            return found;
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let ours = message
                .payload()
                .and_then(|p| serde_json::from_slice::<Relayed>(p).ok())
                .is_some_and(|e| e.run == run);
            if ours {
                let message = message.detach();
                ids.insert(header(&headers_of(&message), "ce_id").unwrap().to_owned());
                found.push(message);
                if ids.len() >= want && complete_at.is_none() {
                    complete_at = Some(Instant::now());
                }
            }
        }
    }
}

/// Checks that every event arrived, and that copies of an event are the same record.
/// Returns (distinct events, duplicate records).
fn distinct_and_duplicates(records: &[OwnedMessage]) -> (usize, usize) {
    let mut by_id: HashMap<String, &OwnedMessage> = HashMap::new();
    let mut duplicates = 0;
    for record in records {
        let id = header(&headers_of(record), "ce_id").unwrap().to_owned();
        match by_id.get(&id) {
            Some(first) => {
                duplicates += 1;
                assert_eq!(
                    first.payload(),
                    record.payload(),
                    "a duplicate is the same event"
                );
                assert_eq!(first.key(), record.key());
                assert_eq!(headers_of(first), headers_of(record));
            }
            None => {
                by_id.insert(id, record);
            }
        }
    }
    (by_id.len(), duplicates)
}

async fn create_topic(config: &KafkaConfig) {
    TopicAdmin::new(config)
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Relayed>().partitions(3)])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_the_acknowledgement_and_the_mark_republishes_with_the_same_ids() {
    const EVENTS: u32 = 2_000;
    let kafka = config("orders-api");
    create_topic(&kafka).await;
    // A database of its own: the relay's first batch must be this test's rows.
    let url = fresh_postgres_database().await;
    let outbox = PostgresOutbox::connect(&url, &kafka).await.unwrap();
    let run = unique("run");
    for chunk in 0..(EVENTS / 100) {
        let mut tx = outbox.pool().begin().await.unwrap();
        for n in chunk * 100..(chunk + 1) * 100 {
            let event = Relayed {
                run: run.clone(),
                account: n % 20,
                n,
            };
            outbox.enqueue(&mut tx, &event).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    // Holding a SHARE lock lets the relay read and publish, but its UPDATE (the mark)
    // waits: the relay is then exactly between the acknowledgement and the mark.
    let mut blocker = outbox.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE pegasus_outbox IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let relay = relay_process("postgres", &url);
    let servers = bootstrap();
    // The relay's first batch goes out, then it waits on the mark of that batch.
    let first_batch = RelaySettings::default().batch_size as usize;
    let first_copy = tokio::task::spawn_blocking({
        let run = run.clone();
        move || read_run(&servers, &run, first_batch, Duration::from_millis(500))
    })
    .await
    .unwrap();
    assert_eq!(
        first_copy.len(),
        first_batch,
        "one batch published, then the mark waited"
    );
    drop(relay); // SIGKILL while it waits on the mark
    let unmarked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pegasus_outbox
         WHERE published_at IS NULL AND convert_from(payload, 'UTF8') LIKE '%' || $1 || '%'",
    )
    .bind(&run)
    .fetch_one(outbox.pool())
    .await
    .unwrap();
    assert_eq!(
        unmarked,
        i64::from(EVENTS),
        "the kill landed before the mark"
    );
    // PostgreSQL notices a vanished client only when it next talks to it: the killed
    // relay's UPDATE would still run once the lock is released. End that session, as a
    // crash before the statement reached the server would have.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE pid <> pg_backend_pid() AND query LIKE 'UPDATE pegasus_outbox%'",
    )
    .execute(outbox.pool())
    .await
    .unwrap();
    blocker.rollback().await.unwrap();

    // The restarted relay publishes the unmarked rows again, then marks them.
    let restarted = relay_process("postgres", &url);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox WHERE published_at IS NULL")
                .fetch_one(outbox.pool())
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows still unpublished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(restarted);
    let servers = bootstrap();
    let all = tokio::task::spawn_blocking({
        let run = run.clone();
        move || read_run(&servers, &run, EVENTS as usize, Duration::from_secs(2))
    })
    .await
    .unwrap();
    let (distinct, duplicates) = distinct_and_duplicates(&all);
    eprintln!("relay crash: {distinct} events, {duplicates} republished duplicates, {unmarked} rows unmarked at the kill");
    assert_eq!(distinct, EVENTS as usize, "every event published");
    assert_eq!(
        duplicates, first_batch,
        "the published but unmarked batch went out again, with the same ce_ids"
    );
}

/// Stops its own broker on drop, whatever the test did.
struct OwnBroker(String);

impl Drop for OwnBroker {
    fn drop(&mut self) {
        kafka_script(&["stop", "--name", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_catches_up_after_the_broker_was_down_under_load_and_loses_nothing() {
    const EVENTS: u32 = 3_000;
    let name = unique("relay-broker");
    let address = kafka_script(&["start", "--name", &name]);
    let _broker = OwnBroker(name.clone());
    let mut kafka = KafkaConfig::new(&address).with_client_id("orders-api");
    kafka.producer.delivery_timeout = Duration::from_secs(10);
    create_topic(&kafka).await;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("relay"));
    let outbox = SqliteOutbox::connect(&format!("sqlite://{}.db", path.display()), &kafka)
        .await
        .unwrap();
    let relay = outbox
        .relay(
            &kafka,
            RelaySettings {
                poll_interval: Duration::from_millis(50),
                error_backoff: Duration::from_millis(100),
                dead_letter_topic: unique("tests-dlq"),
                ..RelaySettings::default()
            },
        )
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(relay.run_until(async move {
        let _ = stopped.await;
    }));

    let run = unique("run");
    let mut fault = None;
    for n in 0..EVENTS {
        if n == EVENTS / 3 {
            // The broker goes away (SIGKILL) for 12 s, longer than the delivery timeout,
            // while events keep being committed.
            let name = name.clone();
            fault = Some(tokio::task::spawn_blocking(move || {
                kafka_script(&["kill-node", "1", "--name", &name, "--signal", "KILL"]);
                std::thread::sleep(Duration::from_secs(12));
                kafka_script(&["start-node", "1", "--name", &name]);
            }));
        }
        let mut tx = outbox.pool().begin().await.unwrap();
        let event = Relayed {
            run: run.clone(),
            account: n % 20,
            n,
        };
        outbox.enqueue(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    fault.unwrap().await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox WHERE published_at IS NULL")
                .fetch_one(outbox.pool())
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows still unpublished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, relaying)
        .await
        .expect("the relay stopped")
        .unwrap()
        .unwrap();
    let all = tokio::task::spawn_blocking({
        let run = run.clone();
        move || read_run(&address, &run, EVENTS as usize, Duration::from_secs(1))
    })
    .await
    .unwrap();
    let (distinct, duplicates) = distinct_and_duplicates(&all);
    eprintln!("relay across a broker outage: {distinct} events, {duplicates} duplicates");
    assert_eq!(distinct, EVENTS as usize, "nothing lost");
}

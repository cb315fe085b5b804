//! The transactional outbox on a real PostgreSQL server and on SQLite, relayed to the real
//! broker: atomic with the caller's transaction, the wire contract's headers, order per
//! key, and a malformed row that does not block the rows behind it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pegasus_events::dead_letter::{DeadLetter, DeadLetterQueue, DeadLetterReason, ReplayFilter};
use pegasus_events::outbox::{OutboxRelay, PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events::{Event, KafkaConfig, PublishMetadata, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    bootstrap, config, fresh_postgres_database, header, headers_of, postgres_url,
    read_until_settled, unique,
};
use rdkafka::message::{Message, OwnedMessage};
use serde::{Deserialize, Serialize};
use tracing::instrument::WithSubscriber;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.outbox.placed", name = "OrderPlacedEvent")]
struct OrderPlaced {
    run: String,
    #[event(key)]
    order_id: u32,
    seq: u32,
}

async fn create_topic() {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<OrderPlaced>().partitions(3)])
        .await
        .unwrap();
}

fn relay_settings(dead_letter_topic: &str) -> RelaySettings {
    RelaySettings {
        poll_interval: Duration::from_millis(100),
        dead_letter_topic: dead_letter_topic.to_owned(),
        ..RelaySettings::default()
    }
}

/// How long a read waits, after the last expected event arrived, for a record of the run
/// that should not be there (a duplicate, a rolled-back event): well beyond the relay's
/// poll interval, 100 ms.
const SETTLE: Duration = Duration::from_secs(2);

/// Reads `topic` from the beginning until `want` distinct events of `run` arrived and then
/// `settle` passed without another record of the run; returns every record of the run
/// read, duplicates included, in the order read, per partition.
fn read_run(topic: &str, run: &str, want: usize, settle: Duration) -> Vec<OwnedMessage> {
    let ours =
        |payload: &[u8]| serde_json::from_slice::<OrderPlaced>(payload).is_ok_and(|e| e.run == run);
    read_until_settled(&bootstrap(), topic, ours, want, settle, DEADLINE)
}

/// Runs `relay` while `body` runs, then stops it.
/// The `seq` of each record's `OrderPlaced`, in the order read.
fn seqs_of(records: &[OwnedMessage]) -> Vec<u32> {
    records
        .iter()
        .map(|r| {
            serde_json::from_slice::<OrderPlaced>(r.payload().unwrap())
                .unwrap()
                .seq
        })
        .collect()
}

async fn with_relay<T>(relay: OutboxRelay, body: impl std::future::Future<Output = T>) -> T {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run_until(async move {
        let _ = stopped.await;
    }));
    let result = body.await;
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the relay stopped")
        .unwrap()
        .unwrap();
    result
}

fn assert_wire_headers(record: &OwnedMessage, event_id: Uuid, event: &OrderPlaced) {
    let headers = headers_of(record);
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "content-type",
            "ce_schemaversion",
            "ce_partitionkey",
            "ce_correlationid"
        ]
    );
    assert_eq!(header(&headers, "ce_specversion"), Some("1.0"));
    assert_eq!(
        header(&headers, "ce_id"),
        Some(event_id.to_string().as_str())
    );
    assert_eq!(header(&headers, "ce_source"), Some("orders-api"));
    assert_eq!(header(&headers, "ce_type"), Some("OrderPlacedEvent"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "ce_schemaversion"), Some("1"));
    let key = event.order_id.to_string();
    assert_eq!(header(&headers, "ce_partitionkey"), Some(key.as_str()));
    assert_eq!(header(&headers, "ce_correlationid"), Some("checkout-42"));
    assert!(chrono::DateTime::parse_from_rfc3339(header(&headers, "ce_time").unwrap()).is_ok());
    assert_eq!(record.key(), Some(key.as_bytes()));
    assert_eq!(
        serde_json::from_slice::<OrderPlaced>(record.payload().unwrap()).unwrap(),
        *event
    );
}

fn metadata() -> PublishMetadata {
    PublishMetadata {
        correlation_id: Some("checkout-42".to_owned()),
        ..PublishMetadata::default()
    }
}

// ---------------------------------------------------------------------------------------

/// A new SQLite database file under the tests' temporary directory, as a URL.
fn sqlite_url() -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("outbox"));
    format!("sqlite://{}.db", path.display())
}

/// An outbox on a new SQLite database.
async fn sqlite_outbox(config: &KafkaConfig) -> SqliteOutbox {
    SqliteOutbox::connect(&sqlite_url(), config).await.unwrap()
}

/// An outbox in a database of its own on the tests' PostgreSQL server.
async fn fresh_postgres_outbox(config: &KafkaConfig) -> PostgresOutbox {
    let url = fresh_postgres_database().await;
    PostgresOutbox::connect(&url, config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rollback_leaves_no_event_and_commit_publishes_it_with_the_wire_headers() {
    create_topic().await;
    let kafka = config("orders-api");
    let outbox = PostgresOutbox::connect(&postgres_url(), &kafka)
        .await
        .unwrap();
    let run = unique("run");
    let event = |seq| OrderPlaced {
        run: run.clone(),
        order_id: 7,
        seq,
    };

    let mut tx = outbox.pool().begin().await.unwrap();
    let rolled_back = outbox
        .enqueue_with(&mut tx, &event(0), &metadata())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox WHERE event_id = $1")
        .bind(rolled_back)
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0, "a rolled-back event does not exist");

    let mut tx = outbox.pool().begin().await.unwrap();
    let committed = outbox
        .enqueue_with(&mut tx, &event(1), &metadata())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = outbox
        .relay(&kafka, relay_settings(&unique("tests-dlq")))
        .unwrap();
    let records = with_relay(relay, async {
        tokio::task::spawn_blocking({
            let run = run.clone();
            move || read_run(OrderPlaced::TOPIC, &run, 1, SETTLE)
        })
        .await
        .unwrap()
    })
    .await;
    assert_eq!(records.len(), 1, "only the committed event is published");
    assert_wire_headers(&records[0], committed, &event(1));
    let published: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT published_at FROM pegasus_outbox WHERE event_id = $1")
            .bind(committed)
            .fetch_one(outbox.pool())
            .await
            .unwrap();
    assert!(
        published.is_some(),
        "marked published after the acknowledgement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rollback_leaves_no_event_and_commit_publishes_it_with_the_wire_headers() {
    create_topic().await;
    let kafka = config("orders-api");
    let outbox = sqlite_outbox(&kafka).await;
    let run = unique("run");
    let event = |seq| OrderPlaced {
        run: run.clone(),
        order_id: 9,
        seq,
    };

    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue_with(&mut tx, &event(0), &metadata())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox")
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0, "a rolled-back event does not exist");

    let mut tx = outbox.pool().begin().await.unwrap();
    let committed = outbox
        .enqueue_with(&mut tx, &event(1), &metadata())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = outbox
        .relay(&kafka, relay_settings(&unique("tests-dlq")))
        .unwrap();
    let records = with_relay(relay, async {
        tokio::task::spawn_blocking({
            let run = run.clone();
            move || read_run(OrderPlaced::TOPIC, &run, 1, SETTLE)
        })
        .await
        .unwrap()
    })
    .await;
    assert_eq!(records.len(), 1);
    assert_wire_headers(&records[0], committed, &event(1));
}

/// `events` events of `run` in transactions of 1 to 20 events, over 25 keys, each key's
/// events numbered 0, 1, 2, ... in commit order.
fn transactions_over_25_keys(run: &str, events: u32) -> Vec<Vec<OrderPlaced>> {
    let mut seq_of: HashMap<u32, u32> = HashMap::new();
    let mut transactions = Vec::new();
    let mut n = 0;
    while n < events {
        let size = (1 + n % 20).min(events - n);
        let transaction = (n..n + size)
            .map(|i| {
                let order_id = i % 25;
                let seq = seq_of.entry(order_id).or_default();
                *seq += 1;
                OrderPlaced {
                    run: run.to_owned(),
                    order_id,
                    seq: *seq - 1,
                }
            })
            .collect();
        transactions.push(transaction);
        n += size;
    }
    transactions
}

/// Reads `events` records of `run` back and checks that every key's events arrived in
/// the order they were committed.
async fn assert_each_keys_order(run: &str, events: u32) {
    let run = run.to_owned();
    let records = tokio::task::spawn_blocking(move || {
        read_run(OrderPlaced::TOPIC, &run, events as usize, SETTLE)
    })
    .await
    .unwrap();
    let mut per_key: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for record in &records {
        let event: OrderPlaced = serde_json::from_slice(record.payload().unwrap()).unwrap();
        per_key.entry(event.order_id).or_default().push(event.seq);
    }
    assert_eq!(per_key.len(), 25);
    for (key, seqs) in per_key {
        let expected: Vec<u32> = (0..seqs.len() as u32).collect();
        assert_eq!(seqs, expected, "order of key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_relay_keeps_the_order_of_each_keys_events_across_many_transactions() {
    create_topic().await;
    let kafka = config("orders-api");
    let outbox = PostgresOutbox::connect(&postgres_url(), &kafka)
        .await
        .unwrap();
    let run = unique("run");
    let relay = outbox
        .relay(&kafka, relay_settings(&unique("tests-dlq")))
        .unwrap();
    const EVENTS: u32 = 2_000;
    with_relay(relay, async {
        // Committed while the relay runs; every other transaction uses enqueue_all.
        for (n, events) in transactions_over_25_keys(&run, EVENTS).iter().enumerate() {
            let mut tx = outbox.pool().begin().await.unwrap();
            if n % 2 == 0 {
                outbox.enqueue_all(&mut tx, events).await.unwrap();
            } else {
                for event in events {
                    outbox.enqueue(&mut tx, event).await.unwrap();
                }
            }
            tx.commit().await.unwrap();
        }
        assert_each_keys_order(&run, EVENTS).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_relay_keeps_the_order_of_each_keys_events_across_a_backlog_of_pipelined_batches(
) {
    create_topic().await;
    let kafka = config("orders-api");
    let outbox = sqlite_outbox(&kafka).await;
    let run = unique("run");
    // A backlog first, read by a relay in batches of 100: the relay keeps two batches in
    // flight, so this checks the order across batches sent before the previous was acked.
    const EVENTS: u32 = 2_000;
    for (n, events) in transactions_over_25_keys(&run, EVENTS).iter().enumerate() {
        let mut tx = outbox.pool().begin().await.unwrap();
        if n % 2 == 0 {
            outbox.enqueue_all(&mut tx, events).await.unwrap();
        } else {
            for event in events {
                outbox.enqueue(&mut tx, event).await.unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
    let settings = RelaySettings {
        batch_size: 100,
        ..relay_settings(&unique("tests-dlq"))
    };
    let relay = outbox.relay(&kafka, settings).unwrap();
    with_relay(relay, assert_each_keys_order(&run, EVENTS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_outbox_row_is_dead_lettered_and_does_not_block_the_rows_behind_it() {
    create_topic().await;
    let kafka = config("orders-api");
    let outbox = sqlite_outbox(&kafka).await;
    let run = unique("run");
    // A row written by hand (another writer, a bad migration): its headers are not JSON.
    sqlx::query(
        "INSERT INTO pegasus_outbox (event_id, topic, message_key, payload, headers)
         VALUES (?, ?, ?, ?, 'not json')",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(OrderPlaced::TOPIC)
    .bind(b"3".as_slice())
    .bind(br#"{"broken":true}"#.as_slice())
    .execute(outbox.pool())
    .await
    .unwrap();
    let mut tx = outbox.pool().begin().await.unwrap();
    for seq in 0..3 {
        outbox
            .enqueue(
                &mut tx,
                &OrderPlaced {
                    run: run.clone(),
                    order_id: 3,
                    seq,
                },
            )
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let dlq = unique("tests-dlq");
    let relay = outbox.relay(&kafka, relay_settings(&dlq)).unwrap();
    let records = with_relay(relay, async {
        tokio::task::spawn_blocking({
            let run = run.clone();
            move || read_run(OrderPlaced::TOPIC, &run, 3, SETTLE)
        })
        .await
        .unwrap()
    })
    .await;
    assert_eq!(records.len(), 3, "the good rows were published");
    let letters = DeadLetterQueue::new(&config("dlq-reader"))
        .unwrap()
        .topic(&dlq)
        .read(&ReplayFilter::new())
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Decode);
    assert_eq!(letters[0].record.topic, OrderPlaced::TOPIC);
    assert_eq!(
        letters[0].record.payload.as_deref(),
        Some(br#"{"broken":true}"#.as_slice())
    );
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox WHERE published_at IS NULL")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
    assert_eq!(
        unpublished, 0,
        "the malformed row is marked too, so it is not retried forever"
    );
}

/// An outbox row as stored: id, key, value and headers (a JSON array of pairs).
type StoredRow = (i64, Vec<u8>, Vec<u8>, String);

/// What the tests of both databases need of an outbox.
trait TestOutbox: Clone + Send + Sync + 'static {
    /// Commits `events` in one transaction.
    fn commit<E: Event + Send + Sync>(
        &self,
        events: Vec<E>,
    ) -> impl std::future::Future<Output = ()> + Send;
    fn relay_with(&self, settings: RelaySettings) -> OutboxRelay;
    /// A relay publishing through `kafka`.
    fn relay_through(&self, kafka: &KafkaConfig, settings: RelaySettings) -> OutboxRelay;
    /// How many rows the outbox table holds, published or not.
    fn rows(&self) -> impl std::future::Future<Output = i64> + Send;
    /// How many rows are not marked published.
    fn unpublished(&self) -> impl std::future::Future<Output = i64> + Send;
    /// The rows stored for `topic`, in id order, exactly as the relay reads them.
    fn rows_of(
        &self,
        topic: &'static str,
    ) -> impl std::future::Future<Output = Vec<StoredRow>> + Send;
}

/// The same for both outboxes: they differ in types, not in calls.
macro_rules! test_outbox {
    ($($outbox:ty),+) => {$(
        impl TestOutbox for $outbox {
            async fn commit<E: Event + Send + Sync>(&self, events: Vec<E>) {
                let mut tx = self.pool().begin().await.unwrap();
                self.enqueue_all(&mut tx, &events).await.unwrap();
                tx.commit().await.unwrap();
            }
            fn relay_with(&self, settings: RelaySettings) -> OutboxRelay {
                self.relay(&config("orders-api"), settings).unwrap()
            }
            fn relay_through(&self, kafka: &KafkaConfig, settings: RelaySettings) -> OutboxRelay {
                self.relay(kafka, settings).unwrap()
            }
            async fn rows(&self) -> i64 {
                sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox")
                    .fetch_one(self.pool())
                    .await
                    .unwrap()
            }
            async fn unpublished(&self) -> i64 {
                sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox WHERE published_at IS NULL")
                    .fetch_one(self.pool())
                    .await
                    .unwrap()
            }
            async fn rows_of(&self, topic: &'static str) -> Vec<StoredRow> {
                // The topic is one of this file's constants: no quote to escape.
                sqlx::query_as(&format!(
                    "SELECT id, message_key, payload, headers FROM pegasus_outbox
                     WHERE topic = '{topic}' ORDER BY id"
                ))
                .fetch_all(self.pool())
                .await
                .unwrap()
            }
        }
    )+};
}

test_outbox!(PostgresOutbox, SqliteOutbox);

/// Two relays on one database, `first` and `second` being two connections to it: the
/// first becomes active and the second waits; with both running, each event is published
/// once; when the first stops, the second takes over; every key's order is kept.
async fn two_relays_publish_each_event_once(first: impl TestOutbox, second: impl TestOutbox) {
    create_topic().await;
    let run = unique("run");
    let batch = |range: std::ops::Range<u32>| -> Vec<Vec<OrderPlaced>> {
        range
            .map(|seq| {
                (0..5)
                    .map(|order_id| OrderPlaced {
                        run: run.clone(),
                        order_id,
                        seq,
                    })
                    .collect()
            })
            .collect()
    };
    // Until `want` events are there; `settle` longer for late duplicates.
    let read = |want: usize, settle: Duration| {
        let run = run.clone();
        tokio::task::spawn_blocking(move || read_run(OrderPlaced::TOPIC, &run, want, settle))
    };

    // The first relay starts alone and becomes the active one; the second waits.
    let active = first.relay_with(relay_settings(&unique("tests-dlq")));
    let (stop_active, active_stopped) = tokio::sync::oneshot::channel::<()>();
    let active = tokio::spawn(active.run_until(async move {
        let _ = active_stopped.await;
    }));
    for events in batch(0..100) {
        first.commit(events).await;
    }
    read(500, Duration::ZERO).await.unwrap();
    let standby = second.relay_with(relay_settings(&unique("tests-dlq")));
    let records = with_relay(standby, async {
        for events in batch(100..200) {
            second.commit(events).await;
        }
        read(1_000, Duration::ZERO).await.unwrap();
        // The active relay goes away; the standby must take over the rest.
        stop_active.send(()).unwrap();
        tokio::time::timeout(DEADLINE, active)
            .await
            .expect("the active relay stopped")
            .unwrap()
            .unwrap();
        for events in batch(200..300) {
            first.commit(events).await;
        }
        // Every event, and then no record for a while: a duplicate published by either
        // relay, also after the takeover, would be among them.
        read(1_500, SETTLE).await.unwrap()
    })
    .await;

    let mut ids = std::collections::HashSet::new();
    let mut per_key: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for record in &records {
        ids.insert(header(&headers_of(record), "ce_id").unwrap().to_owned());
        let event: OrderPlaced = serde_json::from_slice(record.payload().unwrap()).unwrap();
        per_key.entry(event.order_id).or_default().push(event.seq);
    }
    assert_eq!(ids.len(), 1_500, "every event published");
    assert_eq!(records.len(), 1_500, "no event published twice");
    for (key, seqs) in per_key {
        assert_eq!(seqs, (0..300).collect::<Vec<u32>>(), "order of key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_postgres_database_publish_each_event_once_and_the_standby_takes_over() {
    let kafka = config("orders-api");
    // A database of its own, so no other test's relay holds the lease.
    let url = fresh_postgres_database().await;
    let first = PostgresOutbox::connect(&url, &kafka).await.unwrap();
    let second = PostgresOutbox::connect(&url, &kafka).await.unwrap();
    two_relays_publish_each_event_once(first, second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_sqlite_file_publish_each_event_once_and_the_standby_takes_over() {
    let kafka = config("orders-api");
    let url = sqlite_url();
    // Two pools on one file, as two processes of the service would have.
    let first = SqliteOutbox::connect(&url, &kafka).await.unwrap();
    let second = SqliteOutbox::connect(&url, &kafka).await.unwrap();
    two_relays_publish_each_event_once(first, second).await;
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.outbox.unserializable")]
struct GridUpdated {
    /// JSON objects need string keys: serde_json refuses to write this map.
    cells: HashMap<(u32, u32), String>,
}

#[tokio::test]
async fn an_event_that_cannot_be_serialized_fails_the_enqueue_with_a_typed_error_and_stores_nothing(
) {
    let kafka = config("grid-api");
    let outbox = sqlite_outbox(&kafka).await;
    let event = GridUpdated {
        cells: HashMap::from([((1, 2), "x".to_owned())]),
    };
    let mut tx = outbox.pool().begin().await.unwrap();
    let error = outbox.enqueue(&mut tx, &event).await.unwrap_err();
    assert!(
        matches!(
            &error,
            pegasus_events::Error::Serialize {
                event_type: "GridUpdated",
                ..
            }
        ),
        "{error:?}"
    );
    // enqueue_all encodes every event before it writes any.
    let fine = GridUpdated {
        cells: HashMap::new(),
    };
    let error = outbox
        .enqueue_all(&mut tx, [&fine, &event, &fine])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, pegasus_events::Error::Serialize { .. }),
        "{error:?}"
    );
    // The caller's transaction is still usable; it decides to roll back.
    tx.rollback().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox")
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);

    let outbox = PostgresOutbox::connect(&fresh_postgres_database().await, &kafka)
        .await
        .unwrap();
    let mut tx = outbox.pool().begin().await.unwrap();
    let error = outbox.enqueue(&mut tx, &event).await.unwrap_err();
    assert!(
        matches!(&error, pegasus_events::Error::Serialize { .. }),
        "{error:?}"
    );
    let error = outbox
        .enqueue_all(&mut tx, vec![&fine, &event])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, pegasus_events::Error::Serialize { .. }),
        "{error:?}"
    );
    tx.commit().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox")
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(
        stored, 0,
        "nothing was written even though the transaction committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_takes_over_the_lease_of_a_crashed_relay_once_it_expired() {
    create_topic().await;
    let kafka = config("orders-api");
    let url = sqlite_url();
    let outbox = SqliteOutbox::connect(&url, &kafka).await.unwrap();
    let run = unique("run");
    let event = |seq| OrderPlaced {
        run: run.clone(),
        order_id: 1,
        seq,
    };
    let unpublished = || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox WHERE published_at IS NULL")
                .fetch_one(outbox.pool())
                .await
                .unwrap();
        n
    };
    let settings = RelaySettings {
        lease_ttl: Duration::from_secs(4),
        ..relay_settings(&unique("tests-dlq"))
    };
    // The first relay takes the lease and publishes, then dies without giving it up (its
    // task is dropped mid-run, as a crashed process would leave it).
    let crashed = tokio::spawn(
        outbox
            .relay(&kafka, settings.clone())
            .unwrap()
            .run_until(std::future::pending()),
    );
    outbox.commit(vec![event(0)]).await;
    let deadline = Instant::now() + DEADLINE;
    while unpublished().await > 0 {
        assert!(Instant::now() < deadline, "the first relay published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crashed.abort();
    let _ = crashed.await;

    // Its lease has seconds left: the successor stands by until it expires.
    let successor = outbox.relay(&kafka, settings).unwrap();
    let records = with_relay(successor, async {
        outbox.commit(vec![event(1), event(2)]).await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(
            unpublished().await,
            2,
            "nothing published while the crashed relay's lease lasts"
        );
        let run = run.clone();
        tokio::task::spawn_blocking(move || read_run(OrderPlaced::TOPIC, &run, 3, SETTLE))
            .await
            .unwrap()
    })
    .await;
    let seqs = seqs_of(&records);
    assert_eq!(
        seqs,
        [0, 1, 2],
        "all published, in order, once the lease expired"
    );
}

/// With a retention of zero the relay deletes each row once the broker acknowledged it;
/// with the default it keeps it, marked.
async fn retention_zero_deletes_published_rows(outbox: impl TestOutbox) {
    create_topic().await;
    let run = unique("run");
    let events: Vec<OrderPlaced> = (0..50)
        .map(|seq| OrderPlaced {
            run: run.clone(),
            order_id: seq % 5,
            seq,
        })
        .collect();
    let keep = outbox.relay_with(relay_settings(&unique("tests-dlq")));
    with_relay(keep, async {
        outbox.commit(events[..25].to_vec()).await;
        let run = run.clone();
        tokio::task::spawn_blocking(move || read_run(OrderPlaced::TOPIC, &run, 25, Duration::ZERO))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(outbox.rows().await, 25, "the default retention keeps rows");

    let settings = RelaySettings {
        retention: Duration::ZERO,
        ..relay_settings(&unique("tests-dlq"))
    };
    let records = with_relay(outbox.relay_with(settings), async {
        outbox.commit(events[25..].to_vec()).await;
        let records = {
            let run = run.clone();
            tokio::task::spawn_blocking(move || read_run(OrderPlaced::TOPIC, &run, 50, SETTLE))
                .await
                .unwrap()
        };
        // The deletion follows the acknowledgement; wait for it.
        let deadline = Instant::now() + DEADLINE;
        while outbox.rows().await > 25 {
            assert!(Instant::now() < deadline, "published rows were deleted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        records
    })
    .await;
    assert_eq!(records.len(), 50, "every event published");
    assert_eq!(
        outbox.rows().await,
        25,
        "only the rows kept by the first relay remain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_relay_with_zero_retention_deletes_each_row_once_it_was_acknowledged() {
    let outbox = fresh_postgres_outbox(&config("orders-api")).await;
    retention_zero_deletes_published_rows(outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_with_zero_retention_deletes_each_row_once_it_was_acknowledged() {
    let outbox = sqlite_outbox(&config("orders-api")).await;
    retention_zero_deletes_published_rows(outbox).await;
}

// --- Woken by the commit, not by polling ------------------------------------------------

/// Commits one event at a time to a relay whose poll interval is unbounded
/// (`Duration::MAX`), and requires each to be marked published within `WOKEN_WITHIN`: only
/// a wake-up on the commit can publish it, as the relay never polls. The first event is
/// published once the relay is running, so every later one arrives while it waits.
async fn each_commit_wakes_the_relay(outbox: impl TestOutbox) {
    /// Far longer than a wake-up takes (milliseconds), and no poll ever comes.
    const WOKEN_WITHIN: Duration = Duration::from_secs(20);
    create_topic().await;
    let run = unique("run");
    let settings = RelaySettings {
        poll_interval: Duration::MAX,
        ..relay_settings(&unique("tests-dlq"))
    };
    with_relay(outbox.relay_with(settings), async {
        for seq in 0..5 {
            outbox
                .commit(vec![OrderPlaced {
                    run: run.clone(),
                    order_id: seq,
                    seq,
                }])
                .await;
            let committed = Instant::now();
            while outbox.unpublished().await > 0 {
                assert!(
                    committed.elapsed() < WOKEN_WITHIN,
                    "event {seq} was published without a poll, woken by its commit"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    let records =
        tokio::task::spawn_blocking(move || read_run(OrderPlaced::TOPIC, &run, 5, Duration::ZERO))
            .await
            .unwrap();
    assert_eq!(records.len(), 5, "every event on the topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_that_never_polls_is_woken_by_each_enqueue_committed_in_its_process() {
    each_commit_wakes_the_relay(sqlite_outbox(&config("orders-api")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_relay_that_never_polls_is_woken_by_each_commit_through_listen_notify() {
    let outbox = fresh_postgres_outbox(&config("orders-api")).await;
    each_commit_wakes_the_relay(outbox).await;
}

/// A transaction that enqueued and rolled back leaves the connection's commit hook armed;
/// the next commit on that connection (which enqueued nothing) wakes the relay once for
/// nothing, and the events committed after it are still published on their own wake-ups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_sqlite_enqueue_neither_publishes_nor_stops_later_commits_waking_the_relay() {
    create_topic().await;
    let outbox = sqlite_outbox(&config("orders-api")).await;
    let run = unique("run");
    let event = |seq| OrderPlaced {
        run: run.clone(),
        order_id: seq,
        seq,
    };
    let settings = RelaySettings {
        poll_interval: Duration::MAX,
        ..relay_settings(&unique("tests-dlq"))
    };
    with_relay(outbox.relay_with(settings), async {
        let mut tx = outbox.pool().begin().await.unwrap();
        outbox.enqueue(&mut tx, &event(0)).await.unwrap();
        tx.rollback().await.unwrap();
        // Commits that enqueue nothing, on whichever connection the rollback used.
        for _ in 0..4 {
            let mut tx = outbox.pool().begin().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        for seq in 1..4 {
            let mut tx = outbox.pool().begin().await.unwrap();
            outbox.enqueue(&mut tx, &event(seq)).await.unwrap();
            tx.commit().await.unwrap();
            let committed = Instant::now();
            while outbox.unpublished().await > 0 {
                assert!(
                    committed.elapsed() < Duration::from_secs(20),
                    "event {seq} was published, woken by its commit"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    let records = tokio::task::spawn_blocking({
        let run = run.clone();
        move || read_run(OrderPlaced::TOPIC, &run, 3, SETTLE)
    })
    .await
    .unwrap();
    let seqs = seqs_of(&records);
    assert_eq!(
        seqs.len(),
        3,
        "the rolled-back event was never published: {seqs:?}"
    );
    assert!(
        !seqs.contains(&0),
        "the rolled-back event was never published"
    );
}

// --- Rows the broker refuses for good -------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.outbox.oversized", name = "AttachmentAddedEvent")]
struct AttachmentAdded {
    run: String,
    #[event(key)]
    order_id: u32,
    content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.outbox.limited", name = "NoteAddedEvent")]
struct NoteAdded {
    run: String,
    #[event(key)]
    n: u32,
    text: String,
}

/// The largest record batch `tests.outbox.oversized` takes (its `max.message.bytes`):
/// an `AttachmentAdded` of 50,000 characters is refused by the broker, for good.
const OVERSIZED_TOPIC_LIMIT: &str = "10000";
/// The same for `tests.outbox.limited`: a `NoteAdded` fits, a producer batch of a dozen
/// of them does not.
const LIMITED_TOPIC_LIMIT: &str = "4000";

async fn create_topics_with_limits() {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[
            TopicSpec::for_event::<OrderPlaced>().partitions(3),
            TopicSpec::for_event::<AttachmentAdded>()
                .partitions(1)
                .config("max.message.bytes", OVERSIZED_TOPIC_LIMIT),
            TopicSpec::for_event::<NoteAdded>()
                .partitions(1)
                .config("max.message.bytes", LIMITED_TOPIC_LIMIT),
        ])
        .await
        .unwrap();
}

/// Every line written through `tracing` by the futures it is attached to.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn dispatch(&self) -> tracing::Dispatch {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .into()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// How many rounds of the relay failed (each is followed by a backoff).
    fn failed_rounds(&self) -> usize {
        self.text().matches("outbox relay round failed").count()
    }
}

/// Runs `relay`, its log lines going to `logs`, until `stop` is sent.
fn spawn_logged(
    relay: OutboxRelay,
    logs: &Logs,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<pegasus_events::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        relay
            .run_until(async move {
                let _ = stopped.await;
            })
            .with_subscriber(logs.dispatch()),
    );
    (stop, running)
}

async fn stop_relay(
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<pegasus_events::Result<()>>,
) {
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the relay stopped")
        .unwrap()
        .unwrap();
}

/// Waits until no row is unpublished; fails after `limit` with the count left.
async fn all_marked_within(outbox: &impl TestOutbox, limit: Duration, logs: &Logs) -> Duration {
    let started = Instant::now();
    loop {
        let left = outbox.unpublished().await;
        if left == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{left} rows still unpublished after {limit:?}; {} relay rounds failed",
            logs.failed_rounds()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The dead letters of `topic`, each with the raw record as the broker holds it.
async fn dead_letters_of(topic: &str, want: usize) -> Vec<(DeadLetter, OwnedMessage)> {
    let letters = DeadLetterQueue::new(&config("dlq-reader"))
        .unwrap()
        .topic(topic)
        .read(&ReplayFilter::new())
        .await
        .unwrap();
    let raw = {
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            read_until_settled(&bootstrap(), &topic, |_| true, want, SETTLE, DEADLINE)
        })
        .await
        .unwrap()
    };
    assert_eq!(letters.len(), raw.len());
    letters.into_iter().zip(raw).collect()
}

/// Checks that `letter` is `row`, refused by the broker: its key, value and headers byte
/// for byte, then the relay's `dlq-` headers in the wire format's order, with reason
/// `publish` and the broker's error.
fn assert_publish_dead_letter(
    letter: &DeadLetter,
    raw: &OwnedMessage,
    topic: &str,
    row: &StoredRow,
    error: &str,
) {
    let (id, key, payload, headers) = row;
    let headers: Vec<(String, String)> = serde_json::from_str(headers).unwrap();
    assert_eq!(letter.reason, DeadLetterReason::Publish);
    assert_eq!(letter.consumer_group, "outbox-relay");
    assert_eq!(letter.record.topic, topic);
    assert_eq!(letter.original_partition, -1);
    assert_eq!(letter.original_offset, *id, "the outbox row id");
    assert_eq!(letter.original_timestamp, None);
    assert_eq!(letter.record.key.as_deref(), Some(key.as_slice()));
    assert_eq!(letter.record.payload.as_deref(), Some(payload.as_slice()));
    let original: Vec<(String, Option<Vec<u8>>)> = headers
        .iter()
        .map(|(name, value)| (name.clone(), Some(value.as_bytes().to_vec())))
        .collect();
    assert_eq!(
        letter.record.headers, original,
        "every original header, in order"
    );
    assert!(
        letter.error.contains(error),
        "dlq-error names the broker's error: {:?}",
        letter.error
    );
    assert_eq!(letter.attempts, 2, "sent with its batch, then on its own");
    let names: Vec<String> = headers_of(raw).into_iter().map(|(name, _)| name).collect();
    let mut expected: Vec<String> = headers.into_iter().map(|(name, _)| name).collect();
    expected.extend(
        [
            "dlq-original-topic",
            "dlq-original-partition",
            "dlq-original-offset",
            "dlq-consumer-group",
            "dlq-reason",
            "dlq-error",
            "dlq-attempts",
            "dlq-failed-at",
        ]
        .map(str::to_owned),
    );
    assert_eq!(names, expected);
    assert_eq!(header(&headers_of(raw), "dlq-reason"), Some("publish"));
}

/// One row the broker refuses for good (larger than its topic's `max.message.bytes`),
/// committed behind 100 of 10,000 good rows: it goes to the relay's dead-letter topic with
/// reason `publish` and is marked, and the good rows are published at full speed (no round
/// of the relay fails, so it never backs off), each key's in order.
async fn a_refused_row_is_dead_lettered_and_the_rows_behind_it_flow(outbox: impl TestOutbox) {
    const GOOD: u32 = 10_000;
    create_topics_with_limits().await;
    let run = unique("run");
    let events: Vec<OrderPlaced> = transactions_over_25_keys(&run, GOOD)
        .into_iter()
        .flatten()
        .collect();
    outbox.commit(events[..100].to_vec()).await;
    outbox
        .commit(vec![AttachmentAdded {
            run: run.clone(),
            order_id: 3,
            content: "x".repeat(50_000),
        }])
        .await;
    for chunk in events[100..].chunks(1_000) {
        outbox.commit(chunk.to_vec()).await;
    }
    let refused = outbox.rows_of(AttachmentAdded::TOPIC).await;
    assert_eq!(refused.len(), 1);

    let dlq = unique("tests-dlq");
    let logs = Logs::default();
    let (stop, running) = spawn_logged(outbox.relay_with(relay_settings(&dlq)), &logs);
    let took = all_marked_within(&outbox, Duration::from_secs(60), &logs).await;
    assert_each_keys_order(&run, GOOD).await;
    stop_relay(stop, running).await;
    eprintln!(
        "{} good rows and one refused row handled in {took:.1?}",
        GOOD
    );
    assert_eq!(
        logs.failed_rounds(),
        0,
        "no round failed, so the relay never backed off:\n{}",
        logs.text()
    );

    let letters = dead_letters_of(&dlq, 1).await;
    assert_eq!(letters.len(), 1, "only the refused row is dead-lettered");
    let (letter, raw) = &letters[0];
    eprintln!("dlq-error: {}", letter.error);
    assert_publish_dead_letter(
        letter,
        raw,
        AttachmentAdded::TOPIC,
        &refused[0],
        "Message size too large",
    );
    assert_eq!(
        outbox.rows().await,
        i64::from(GOOD) + 1,
        "marked, not deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_row_the_broker_refuses_is_dead_lettered_and_10000_rows_behind_it_publish_without_backoff(
) {
    let outbox = fresh_postgres_outbox(&config("orders-api")).await;
    a_refused_row_is_dead_lettered_and_the_rows_behind_it_flow(outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_row_the_broker_refuses_is_dead_lettered_and_10000_rows_behind_it_publish_without_backoff(
) {
    let outbox = sqlite_outbox(&config("orders-api")).await;
    a_refused_row_is_dead_lettered_and_the_rows_behind_it_flow(outbox).await;
}

/// The broker refuses a whole producer batch when it is larger than the topic's
/// `max.message.bytes`: every good record in a batch with the oversized one fails with
/// the same error. The relay sends each refused record again on its own, so only the one
/// refused alone is dead-lettered; every good one is published, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_record_refused_on_its_own_is_dead_lettered_not_the_good_ones_refused_in_its_batch(
) {
    create_topics_with_limits().await;
    let outbox = sqlite_outbox(&config("orders-api")).await;
    let run = unique("run");
    let note = |n: u32, size: usize| NoteAdded {
        run: run.clone(),
        n,
        text: "y".repeat(size),
    };
    // 60 notes of about 300 bytes on the wire; the 21st is 8,000 characters.
    let notes: Vec<NoteAdded> = (0..60)
        .map(|n| note(n, if n == 20 { 8_000 } else { 20 }))
        .collect();
    outbox.commit(notes).await;
    let rows = outbox.rows_of(NoteAdded::TOPIC).await;

    let dlq = unique("tests-dlq");
    let logs = Logs::default();
    let (stop, running) = spawn_logged(outbox.relay_with(relay_settings(&dlq)), &logs);
    let took = all_marked_within(&outbox, Duration::from_secs(60), &logs).await;
    let published = {
        let run = run.clone();
        tokio::task::spawn_blocking(move || {
            let ours = |payload: &[u8]| {
                serde_json::from_slice::<NoteAdded>(payload).is_ok_and(|e| e.run == run)
            };
            read_until_settled(&bootstrap(), NoteAdded::TOPIC, ours, 59, SETTLE, DEADLINE)
        })
        .await
        .unwrap()
    };
    stop_relay(stop, running).await;
    eprintln!("60 notes handled in {took:.1?}");
    let mut numbers: Vec<u32> = published
        .iter()
        .map(|r| {
            serde_json::from_slice::<NoteAdded>(r.payload().unwrap())
                .unwrap()
                .n
        })
        .collect();
    numbers.sort_unstable();
    let good: Vec<u32> = (0..60).filter(|&n| n != 20).collect();
    assert_eq!(numbers, good, "every good note published, once");
    assert_eq!(logs.failed_rounds(), 0, "{}", logs.text());
    assert!(
        logs.text().contains("sending each again on its own"),
        "good records were refused with the oversized one, in its batch"
    );
    let letters = dead_letters_of(&dlq, 1).await;
    assert_eq!(letters.len(), 1, "only the oversized note is dead-lettered");
    let (letter, raw) = &letters[0];
    assert_publish_dead_letter(
        letter,
        raw,
        NoteAdded::TOPIC,
        &rows[20],
        "Message size too large",
    );
}

/// A record larger than the relay's own producer takes (`message.max.bytes`) is refused
/// by librdkafka before it is sent, and its dead letter, larger still, is refused the same
/// way. The relay cannot put it anywhere on the broker: it leaves the row unmarked (nothing
/// lost), logs it, and reads past it, so the rows behind it are published without a failed
/// round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_even_for_its_dead_letter_stays_unmarked_and_does_not_hold_the_rows_behind_it(
) {
    create_topics_with_limits().await;
    let outbox = sqlite_outbox(&config("orders-api")).await;
    let run = unique("run");
    const GOOD: u32 = 2_000;
    let events: Vec<OrderPlaced> = transactions_over_25_keys(&run, GOOD)
        .into_iter()
        .flatten()
        .collect();
    outbox.commit(events[..10].to_vec()).await;
    outbox
        .commit(vec![OrderPlaced {
            run: "z".repeat(30_000),
            order_id: 3,
            seq: 0,
        }])
        .await;
    outbox.commit(events[10..].to_vec()).await;

    let mut kafka = config("orders-api");
    kafka
        .properties
        .insert("message.max.bytes".to_owned(), "20000".to_owned());
    let logs = Logs::default();
    let relay = outbox.relay_through(&kafka, relay_settings(&unique("tests-dlq")));
    let (stop, running) = spawn_logged(relay, &logs);
    let started = Instant::now();
    loop {
        let left = outbox.unpublished().await;
        if left == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{left} rows unpublished after 60 s; {} relay rounds failed",
            logs.failed_rounds()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    assert_each_keys_order(&run, GOOD).await;
    stop_relay(stop, running).await;
    eprintln!("{GOOD} good rows published past the unpublishable one in {took:.1?}");
    assert_eq!(logs.failed_rounds(), 0, "{}", logs.text());
    assert_eq!(outbox.unpublished().await, 1, "the row is kept, unmarked");
    let text = logs.text();
    assert!(
        text.contains("could not be dead-lettered") && text.contains("MessageSizeTooLarge"),
        "the row and both refusals are logged:\n{text}"
    );
}

// --- A relay that lost its lease ---------------------------------------------------------

/// `OrderPlaced` events of `run` on keys 0 to 4, numbered `seqs` on each key, in commit
/// order.
fn five_keys(run: &str, seqs: std::ops::Range<u32>) -> Vec<OrderPlaced> {
    seqs.flat_map(|seq| {
        (0..5).map(move |order_id| OrderPlaced {
            run: run.to_owned(),
            order_id,
            seq,
        })
    })
    .collect()
}

/// Checks that `records` hold `distinct` events, `copies` records in all, and that the
/// first copy of each key's events arrived in commit order.
fn assert_every_event_in_order(records: &[OwnedMessage], distinct: usize, copies: usize) {
    let mut seen = std::collections::HashSet::new();
    let mut per_key: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for record in records {
        if !seen.insert(header(&headers_of(record), "ce_id").unwrap().to_owned()) {
            continue;
        }
        let event: OrderPlaced = serde_json::from_slice(record.payload().unwrap()).unwrap();
        per_key.entry(event.order_id).or_default().push(event.seq);
    }
    assert_eq!(seen.len(), distinct, "every event published");
    assert_eq!(records.len(), copies, "records, copies included");
    for (key, seqs) in per_key {
        let expected: Vec<u32> = (0..seqs.len() as u32).collect();
        assert_eq!(seqs, expected, "order of key {key}");
    }
}

/// The end of a lease test: the first relay, which lost its lease with 200 events
/// published and unmarked, has marked nothing, and published nothing of the 100
/// committed after the loss; stopped, it leaves the lease alone. Then `take_over` lets a
/// second relay have the lease, which publishes every row: the 200 again (same `ce_id`),
/// and the 100.
async fn after_the_loss<O: TestOutbox>(
    outbox: &O,
    run: &str,
    first: (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<pegasus_events::Result<()>>,
    ),
    logs: &Logs,
    take_over: impl std::future::Future<Output = ()>,
) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        outbox.unpublished().await,
        200,
        "the relay marked nothing after it lost the lease"
    );
    outbox.commit(five_keys(run, 40..60)).await;
    let before = {
        let run = run.to_owned();
        // The 200 published before the loss, then a settle period of 2 s in which the
        // first relay polls every 20 ms: anything it published is among them.
        tokio::task::spawn_blocking(move || read_run(OrderPlaced::TOPIC, &run, 200, SETTLE))
            .await
            .unwrap()
    };
    assert_eq!(
        before.len(),
        200,
        "the relay published nothing after it lost the lease"
    );
    assert_eq!(outbox.unpublished().await, 300);
    let (stop, running) = first;
    stop_relay(stop, running).await;
    assert!(
        logs.text().contains("lost its lease"),
        "the loss is logged:\n{}",
        logs.text()
    );

    take_over.await;
    let second = outbox.relay_with(RelaySettings {
        poll_interval: Duration::from_millis(20),
        ..relay_settings(&unique("tests-dlq"))
    });
    let all = with_relay(second, async {
        all_marked_within(outbox, DEADLINE, &Logs::default()).await;
        let run = run.to_owned();
        tokio::task::spawn_blocking(move || read_run(OrderPlaced::TOPIC, &run, 300, SETTLE))
            .await
            .unwrap()
    })
    .await;
    assert_every_event_in_order(&all, 300, 500);
}

/// Two relays on one SQLite file. The first publishes 200 events and, while its mark
/// waits on the database's write lock, loses its lease: the lease row gets another
/// relay's name, as a takeover after the lease expired writes it (the first relay was
/// paused, here on the lock, past its lease). It must then neither mark those rows (they
/// are the new holder's to publish) nor publish anything more, though its own record of
/// the lease, renewed a moment ago, says it still has 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_whose_lease_was_taken_over_marks_and_publishes_nothing_more() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{Connection, SqliteConnection};

    create_topic().await;
    let kafka = config("orders-api");
    let url = sqlite_url();
    // The relay's pool as `SqliteOutbox::connect` opens it, but with a busy_timeout long
    // enough for the test's read of the topic while the relay's mark waits on the write
    // lock (10 s could run out on a loaded machine; the relay would then send again).
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(
            url.parse::<SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(DEADLINE),
        )
        .await
        .unwrap();
    let outbox = SqliteOutbox::with_pool(pool, &kafka).await.unwrap();
    let run = unique("run");
    let settings = RelaySettings {
        lease_ttl: Duration::from_secs(60),
        poll_interval: Duration::from_millis(20),
        ..relay_settings(&unique("tests-dlq"))
    };
    let logs = Logs::default();
    let first = spawn_logged(outbox.relay(&kafka, settings).unwrap(), &logs);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox_relay_lease")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
        if leased == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the first relay took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The rows are committed on a connection that takes the database's one write lock
    // again at once: in WAL mode the relay still reads and publishes them, and its mark
    // waits (its busy_timeout, above).
    let options = url
        .parse::<SqliteConnectOptions>()
        .unwrap()
        .journal_mode(SqliteJournalMode::Wal);
    let mut blocker = SqliteConnection::connect_with(&options).await.unwrap();
    let mut tx = blocker.begin_with("BEGIN IMMEDIATE").await.unwrap();
    outbox
        .enqueue_all(&mut tx, &five_keys(&run, 0..40))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    {
        let run = run.clone();
        tokio::task::spawn_blocking(move || {
            read_run(OrderPlaced::TOPIC, &run, 200, Duration::ZERO)
        })
        .await
        .unwrap();
    }
    // Taken over, in the transaction the relay's mark waits for.
    let ten_minutes_on = chrono::Utc::now().timestamp_millis() + 600_000;
    sqlx::query(
        "UPDATE pegasus_outbox_relay_lease SET holder = 'another-relay', expires_at_ms = ?",
    )
    .bind(ten_minutes_on)
    .execute(&mut blocker)
    .await
    .unwrap();
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();

    after_the_loss(&outbox, &run, first, &logs, async {
        // The other relay gives the lease up.
        sqlx::query("DELETE FROM pegasus_outbox_relay_lease")
            .execute(outbox.pool())
            .await
            .unwrap();
    })
    .await;
}

/// The same on PostgreSQL, whose lease is the advisory lock of the relay's session. The
/// relay publishes 200 events and, while its mark waits on a table lock, its session ends
/// (terminated, as an administrator, `idle_session_timeout` or a network cut end it) and
/// another session takes the advisory lock. The relay must not mark those rows (the mark
/// does not run on another connection of the pool), nor publish anything more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_relay_whose_lock_session_ended_marks_and_publishes_nothing_more() {
    use sqlx::Connection;

    create_topic().await;
    let kafka = config("orders-api");
    let url = fresh_postgres_database().await;
    let outbox = PostgresOutbox::connect(&url, &kafka).await.unwrap();
    let run = unique("run");
    outbox.commit(five_keys(&run, 0..40)).await;
    // A SHARE lock lets the relay read and publish, but not mark.
    let mut blocker = outbox.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE pegasus_outbox IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let settings = RelaySettings {
        poll_interval: Duration::from_millis(20),
        ..relay_settings(&unique("tests-dlq"))
    };
    let logs = Logs::default();
    let first = spawn_logged(outbox.relay(&kafka, settings).unwrap(), &logs);
    {
        let run = run.clone();
        tokio::task::spawn_blocking(move || {
            read_run(OrderPlaced::TOPIC, &run, 200, Duration::ZERO)
        })
        .await
        .unwrap();
    }
    // Another session queues for the lock first, so it is granted the moment the relay's
    // session ends: were it to ask only after the termination, the relay (retrying on a
    // new connection) could take the lock back first, and `pg_advisory_lock` would wait
    // for ever.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    let queued = tokio::spawn(async move {
        sqlx::query("SELECT pg_advisory_lock(hashtext('pegasus_outbox_relay'))")
            .execute(&mut other)
            .await
            .unwrap();
        other
    });
    let in_this_database =
        "locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let waiting_since = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM pg_locks WHERE {in_this_database} AND NOT granted"
        ))
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            waiting_since.elapsed() < DEADLINE,
            "the other session never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ended: Vec<bool> = sqlx::query_scalar(&format!(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE {in_this_database} AND granted"
    ))
    .fetch_all(&mut *blocker)
    .await
    .unwrap();
    assert_eq!(ended, [true], "the relay's lock session ended");
    let other = tokio::time::timeout(DEADLINE, queued)
        .await
        .expect("the other session got the lock")
        .unwrap();
    blocker.rollback().await.unwrap();

    after_the_loss(&outbox, &run, first, &logs, async {
        // The other session ends, and its lock with it.
        other.close().await.unwrap();
    })
    .await;
}

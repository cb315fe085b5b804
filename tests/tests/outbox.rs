//! The transactional outbox on a real PostgreSQL server and on SQLite, relayed to the real
//! broker: atomic with the caller's transaction, the wire contract's headers, order per
//! key, and a malformed row that does not block the rows behind it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use pegasus_events::dead_letter::{DeadLetterQueue, DeadLetterReason, ReplayFilter};
use pegasus_events::outbox::{OutboxRelay, PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events::{Event, PublishMetadata, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    bootstrap, config, fresh_postgres_database, header, headers_of, postgres_url,
    read_until_settled, unique,
};
use rdkafka::message::{Message, OwnedMessage};
use serde::{Deserialize, Serialize};
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
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("outbox"));
    let outbox = SqliteOutbox::connect(&format!("sqlite://{}.db", path.display()), &kafka)
        .await
        .unwrap();
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
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("outbox"));
    let outbox = SqliteOutbox::connect(&format!("sqlite://{}.db", path.display()), &kafka)
        .await
        .unwrap();
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
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("outbox"));
    let outbox = SqliteOutbox::connect(&format!("sqlite://{}.db", path.display()), &kafka)
        .await
        .unwrap();
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

/// What the two-relay test needs of an outbox, on either database.
trait TestOutbox: Clone + Send + Sync + 'static {
    /// Commits `events` in one transaction.
    fn commit(&self, events: Vec<OrderPlaced>) -> impl std::future::Future<Output = ()> + Send;
    fn relay_with(&self, settings: RelaySettings) -> OutboxRelay;
    /// How many rows the outbox table holds, published or not.
    fn rows(&self) -> impl std::future::Future<Output = i64> + Send;
}

/// The same for both outboxes: they differ in types, not in calls.
macro_rules! test_outbox {
    ($($outbox:ty),+) => {$(
        impl TestOutbox for $outbox {
            async fn commit(&self, events: Vec<OrderPlaced>) {
                let mut tx = self.pool().begin().await.unwrap();
                self.enqueue_all(&mut tx, &events).await.unwrap();
                tx.commit().await.unwrap();
            }
            fn relay_with(&self, settings: RelaySettings) -> OutboxRelay {
                self.relay(&config("orders-api"), settings).unwrap()
            }
            async fn rows(&self) -> i64 {
                sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox")
                    .fetch_one(self.pool())
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
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("outbox"));
    let url = format!("sqlite://{}.db", path.display());
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
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("outbox"));
    let outbox = SqliteOutbox::connect(&format!("sqlite://{}.db", path.display()), &kafka)
        .await
        .unwrap();
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
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("outbox"));
    let url = format!("sqlite://{}.db", path.display());
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
    let seqs: Vec<u32> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<OrderPlaced>(r.payload().unwrap())
                .unwrap()
                .seq
        })
        .collect();
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
    let url = fresh_postgres_database().await;
    let outbox = PostgresOutbox::connect(&url, &config("orders-api"))
        .await
        .unwrap();
    retention_zero_deletes_published_rows(outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_with_zero_retention_deletes_each_row_once_it_was_acknowledged() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("outbox"));
    let outbox = SqliteOutbox::connect(
        &format!("sqlite://{}.db", path.display()),
        &config("orders-api"),
    )
    .await
    .unwrap();
    retention_zero_deletes_published_rows(outbox).await;
}

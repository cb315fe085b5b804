//! Idempotency stores: one conformance suite run against every store (memory, SQLite, a
//! real PostgreSQL server), what is particular to each, and the runtime skipping a
//! duplicate delivery on the real broker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::idempotency::{
    Inbox, InboxHandler, PostgresIdempotencyStore, SqliteIdempotencyStore,
};
use pegasus_events::{
    Event, EventProducer, IdempotencyStore, MemoryIdempotencyStore, PublishMetadata, TopicAdmin,
    TopicSpec,
};
use pegasus_events_tests::{config, fresh_postgres_database, postgres_url, unique};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What every store must do. Groups are unique per call, so stores that persist across
/// runs (SQLite files, the PostgreSQL server) start clean for the suite.
async fn conformance<S: IdempotencyStore>(store: Arc<S>) {
    let group = unique("group");
    let other_group = unique("group");
    let event = Uuid::now_v7();

    assert!(
        !store.is_processed(&group, event).await.unwrap(),
        "an event never marked is not processed"
    );
    store.mark_processed(&group, event).await.unwrap();
    assert!(
        store.is_processed(&group, event).await.unwrap(),
        "a marked event is processed"
    );
    assert!(
        !store.is_processed(&other_group, event).await.unwrap(),
        "marks are per consumer group"
    );
    assert!(
        !store.is_processed(&group, Uuid::now_v7()).await.unwrap(),
        "marks are per event id"
    );
    store
        .mark_processed(&group, event)
        .await
        .expect("marking twice is not an error");

    // Workers of several partitions mark at once, some the same event.
    let events: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = Arc::clone(&store);
        let group = group.clone();
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            for (i, event) in events.iter().enumerate() {
                if i % 8 == worker || i % 5 == 0 {
                    store.mark_processed(&group, *event).await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for event in &events {
        assert!(store.is_processed(&group, *event).await.unwrap());
        assert!(!store.is_processed(&other_group, *event).await.unwrap());
    }
}

#[tokio::test]
async fn the_memory_store_passes_the_conformance_suite() {
    conformance(Arc::new(MemoryIdempotencyStore::default())).await;
}

#[tokio::test]
async fn the_sqlite_store_passes_the_conformance_suite() {
    let path = sqlite_path();
    let store = SqliteIdempotencyStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn the_postgres_store_passes_the_conformance_suite() {
    let store = PostgresIdempotencyStore::connect(&postgres_url())
        .await
        .unwrap();
    conformance(Arc::new(store)).await;
}

fn sqlite_path() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir).unwrap();
    dir.join(format!("{}.db", unique("marks")))
}

#[tokio::test]
async fn the_memory_store_forgets_the_oldest_mark_when_full_and_every_mark_after_its_ttl() {
    let store = MemoryIdempotencyStore::new(3, Duration::from_secs(3600));
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        store.mark_processed("g", *id).await.unwrap();
    }
    assert_eq!(store.len(), 3, "bounded");
    assert!(
        !store.is_processed("g", ids[0]).await.unwrap(),
        "oldest evicted"
    );
    assert!(store.is_processed("g", ids[3]).await.unwrap());

    let short = MemoryIdempotencyStore::new(10, Duration::from_millis(50));
    short.mark_processed("g", ids[0]).await.unwrap();
    assert!(short.is_processed("g", ids[0]).await.unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(!short.is_processed("g", ids[0]).await.unwrap(), "expired");
    assert!(short.is_empty());
}

#[tokio::test]
async fn the_sqlite_store_keeps_its_marks_across_a_restart_and_purges_old_ones() {
    let url = format!("sqlite://{}", sqlite_path().display());
    let id = Uuid::now_v7();
    {
        let store = SqliteIdempotencyStore::connect(&url).await.unwrap();
        store.mark_processed("g", id).await.unwrap();
    }
    let reopened = SqliteIdempotencyStore::connect(&url).await.unwrap();
    assert!(
        reopened.is_processed("g", id).await.unwrap(),
        "the mark survived"
    );
    assert_eq!(
        reopened
            .purge_older_than(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        reopened
            .purge_older_than(Duration::from_millis(1))
            .await
            .unwrap(),
        1
    );
    assert!(!reopened.is_processed("g", id).await.unwrap());
}

#[tokio::test]
async fn the_postgres_store_keeps_its_marks_across_a_reconnect_and_purges_old_ones() {
    // A database of its own: the purge must not delete the marks of the tests running
    // beside it, and it must find no mark but this test's.
    let url = fresh_postgres_database().await;
    let group = unique("group");
    let id = Uuid::now_v7();
    {
        let store = PostgresIdempotencyStore::connect(&url).await.unwrap();
        store.mark_processed(&group, id).await.unwrap();
    }
    let reconnected = PostgresIdempotencyStore::connect(&url).await.unwrap();
    assert!(
        reconnected.is_processed(&group, id).await.unwrap(),
        "the mark survived"
    );
    assert_eq!(
        reconnected
            .purge_older_than(Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "a mark younger than the age is kept"
    );
    assert!(reconnected.is_processed(&group, id).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        reconnected
            .purge_older_than(Duration::from_millis(1))
            .await
            .unwrap(),
        1,
        "the one mark, older than the age, is purged"
    );
    assert!(!reconnected.is_processed(&group, id).await.unwrap());
}

#[tokio::test]
async fn an_unreachable_postgres_server_is_a_typed_error_naming_the_store() {
    let error = PostgresIdempotencyStore::connect("postgres://nobody@127.0.0.1:1/none")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            pegasus_events::Error::IdempotencyStore {
                store: "postgres",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("postgres"), "{error}");
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.idempotency.charged")]
struct Charged {
    run: String,
    n: u32,
}

struct Charges {
    run: String,
    calls: AtomicUsize,
    saw_last: std::sync::atomic::AtomicBool,
}

impl EventHandler<Charged> for Arc<Charges> {
    async fn handle(&self, event: Charged, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.run {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if event.n == 99 {
                self.saw_last.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// Publishes each of `n` events twice with the same `ce_id` and counts handler calls.
async fn duplicates_skipped_with(store: impl IdempotencyStore) {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Charged>().partitions(1)])
        .await
        .unwrap();
    let run = unique("run");
    let producer = EventProducer::new(&config("charges-publisher"))
        .await
        .unwrap();
    for n in 0..5 {
        let event = Charged {
            run: run.clone(),
            n,
        };
        let metadata = PublishMetadata {
            event_id: Some(Uuid::now_v7()),
            ..PublishMetadata::default()
        };
        producer.publish_with(&event, &metadata).await.unwrap();
        producer.publish_with(&event, &metadata).await.unwrap();
    }
    // A last, unique event marks the end of this run's records.
    producer
        .publish(&Charged {
            run: run.clone(),
            n: 99,
        })
        .await
        .unwrap();
    let charges = Arc::new(Charges {
        run,
        calls: AtomicUsize::new(0),
        saw_last: std::sync::atomic::AtomicBool::new(false),
    });
    let consumer = EventConsumer::builder(config("charges-test"))
        .group_id(unique("charges"))
        .settings(ConsumerSettings {
            dead_letter_topic: unique("tests-dlq"),
            ..ConsumerSettings::default()
        })
        .idempotency(store)
        .handler::<Charged, _>(Arc::clone(&charges))
        .build()
        .unwrap();
    let watched = Arc::clone(&charges);
    tokio::time::timeout(
        Duration::from_secs(120),
        consumer.run_until(async move {
            // The last record is behind every duplicate in the one partition.
            while !watched.saw_last.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }),
    )
    .await
    .expect("in time")
    .expect("ran");
    assert_eq!(
        charges.calls.load(Ordering::SeqCst),
        6,
        "5 events delivered twice and 1 once: 6 handler calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_is_acknowledged_without_calling_the_handler_memory() {
    duplicates_skipped_with(MemoryIdempotencyStore::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_is_acknowledged_without_calling_the_handler_sqlite() {
    let url = format!("sqlite://{}", sqlite_path().display());
    duplicates_skipped_with(SqliteIdempotencyStore::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_is_acknowledged_without_calling_the_handler_postgres() {
    duplicates_skipped_with(
        PostgresIdempotencyStore::connect(&postgres_url())
            .await
            .unwrap(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// The inbox: the handler's writes and the mark in one transaction.

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.idempotency.deposited")]
struct Deposited {
    run: String,
    #[event(key)]
    account: u32,
    amount: i64,
}

/// Writes a ledger row, then fails on the first attempt of every event: the row must roll
/// back with the mark.
struct Ledger {
    run: String,
    calls: AtomicUsize,
    saw_last: std::sync::atomic::AtomicBool,
}

macro_rules! ledger_for {
    ($db:ty, $insert:literal) => {
        impl InboxHandler<Deposited, $db> for Arc<Ledger> {
            async fn handle(
                &self,
                event: Deposited,
                context: &EventContext<'_>,
                transaction: &mut sqlx::Transaction<'static, $db>,
            ) -> Result<(), HandlerError> {
                if event.run != self.run {
                    return Ok(());
                }
                self.calls.fetch_add(1, Ordering::SeqCst);
                sqlx::query($insert)
                    .bind(context.event_id().to_string())
                    .bind(event.amount)
                    .execute(&mut **transaction)
                    .await?;
                if context.attempt == 1 {
                    return Err(HandlerError::transient(std::io::Error::other(
                        "the business write failed after the row was written",
                    )));
                }
                if event.amount == 999 {
                    self.saw_last.store(true, Ordering::SeqCst);
                }
                Ok(())
            }
        }
    };
}
ledger_for!(
    sqlx::Sqlite,
    "INSERT INTO ledger (event_id, amount) VALUES (?, ?)"
);
ledger_for!(
    sqlx::Postgres,
    "INSERT INTO ledger (event_id, amount) VALUES ($1, $2)"
);

/// Publishes 3 deposits, each twice with the same `ce_id`, then a last one; returns the
/// ids of the 4 distinct events.
async fn publish_deposits(run: &str) -> Vec<Uuid> {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Deposited>().partitions(1)])
        .await
        .unwrap();
    let producer = EventProducer::new(&config("deposits-publisher"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for amount in [10, 20, 30, 999] {
        let event = Deposited {
            run: run.to_owned(),
            account: 1,
            amount,
        };
        let metadata = PublishMetadata {
            event_id: Some(Uuid::now_v7()),
            ..PublishMetadata::default()
        };
        ids.push(metadata.event_id.unwrap());
        producer.publish_with(&event, &metadata).await.unwrap();
        if amount != 999 {
            producer.publish_with(&event, &metadata).await.unwrap();
        }
    }
    ids
}

fn ledger(run: &str) -> Arc<Ledger> {
    Arc::new(Ledger {
        run: run.to_owned(),
        calls: AtomicUsize::new(0),
        saw_last: std::sync::atomic::AtomicBool::new(false),
    })
}

async fn run_inbox_consumer(consumer: EventConsumer, ledger: &Arc<Ledger>) {
    let watched = Arc::clone(ledger);
    tokio::time::timeout(
        Duration::from_secs(120),
        consumer.run_until(async move {
            while !watched.saw_last.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }),
    )
    .await
    .expect("in time")
    .expect("ran");
}

fn consumer_settings() -> ConsumerSettings {
    ConsumerSettings {
        dead_letter_topic: unique("tests-dlq"),
        retry: pegasus_events::RetryPolicy::default().with_backoff(
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(50),
        ),
        ..ConsumerSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_inbox_rolls_back_the_mark_with_a_failed_write_and_applies_each_event_once() {
    let run = unique("run");
    let ids = publish_deposits(&run).await;
    let url = format!("sqlite://{}", sqlite_path().display());
    let store = SqliteIdempotencyStore::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE ledger (event_id TEXT NOT NULL, amount INTEGER NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let handler = ledger(&run);
    let consumer = EventConsumer::builder(config("inbox-test"))
        .group_id(unique("inbox"))
        .settings(consumer_settings())
        .handler::<Deposited, _>(Inbox::new(store.clone(), Arc::clone(&handler)))
        .build()
        .unwrap();
    run_inbox_consumer(consumer, &handler).await;

    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_id, amount FROM ledger ORDER BY amount")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let expected: Vec<(String, i64)> = ids
        .iter()
        .zip([10, 20, 30, 999])
        .map(|(id, amount)| (id.to_string(), amount))
        .collect();
    assert_eq!(rows, expected, "each deposit applied exactly once");
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        8,
        "each event: a failed first attempt, rolled back, and one that committed; duplicates never reach the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_inbox_rolls_back_the_mark_with_a_failed_write_and_applies_each_event_once() {
    let run = unique("run");
    let ids = publish_deposits(&run).await;
    let store = PostgresIdempotencyStore::connect(&postgres_url())
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS ledger (event_id TEXT NOT NULL, amount BIGINT NOT NULL)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let handler = ledger(&run);
    let consumer = EventConsumer::builder(config("inbox-test"))
        .group_id(unique("inbox"))
        .settings(consumer_settings())
        .handler::<Deposited, _>(Inbox::new(store.clone(), Arc::clone(&handler)))
        .build()
        .unwrap();
    run_inbox_consumer(consumer, &handler).await;

    let id_texts: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_id, amount FROM ledger WHERE event_id = ANY($1) ORDER BY amount",
    )
    .bind(&id_texts)
    .fetch_all(store.pool())
    .await
    .unwrap();
    let expected: Vec<(String, i64)> = id_texts.into_iter().zip([10, 20, 30, 999]).collect();
    assert_eq!(rows, expected, "each deposit applied exactly once");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 8);
}

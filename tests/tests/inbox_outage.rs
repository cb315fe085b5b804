//! Fault test: the inbox's PostgreSQL server stops for 10 s under load.
//!
//! A database outage is not the handler's failure: the records wait it out, spending no
//! attempt, and none is dead-lettered or overtaken by a later record of its key. The test
//! runs a PostgreSQL server of its own (`scripts/postgres`), so stopping it disturbs no
//! other test, and stops it again whatever happens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pegasus_events::consumer::{ConsumerSettings, EventConsumer, EventContext, HandlerError};
use pegasus_events::idempotency::{Inbox, InboxHandler, PostgresIdempotencyStore};
use pegasus_events::{Event, EventProducer, TopicAdmin, TopicSpec};
use pegasus_events_tests::{config, dead_letters_now, unique, FaultScenario, TEST_DEADLINE};
use serde::{Deserialize, Serialize};

const KEYS: u32 = 4;
const PER_KEY: u32 = 250;
const OUTAGE: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.inbox.outage")]
struct Credited {
    run: String,
    #[event(key)]
    account: u32,
    seq: u32,
}

/// The project's PostgreSQL script, `scripts/postgres ARGS`; its standard output.
fn postgres_script(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postgres");
    let output = std::process::Command::new(script)
        .args(args)
        .output()
        .expect("scripts/postgres runs");
    assert!(
        output.status.success(),
        "scripts/postgres {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Stops this test's server when the test ends, however it ends.
struct Server(String);

impl Drop for Server {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postgres");
        let _ = std::process::Command::new(script)
            .args(["stop", "--name", &self.0])
            .output();
    }
}

struct Applier {
    run: String,
    /// First attempts per event id: a count above one is a duplicate delivery.
    first_attempts: Mutex<HashMap<uuid::Uuid, usize>>,
    calls: AtomicUsize,
}

impl InboxHandler<Credited, sqlx::Postgres> for Arc<Applier> {
    async fn handle(
        &self,
        event: Credited,
        context: &EventContext<'_>,
        transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        if context.attempt == 1 {
            *self
                .first_attempts
                .lock()
                .unwrap()
                .entry(context.event_id())
                .or_default() += 1;
        }
        sqlx::query("INSERT INTO applied (account, seq) VALUES ($1, $2)")
            .bind(i64::from(event.account))
            .bind(i64::from(event.seq))
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }
}

async fn applied_rows(url: &str) -> Option<Vec<(i64, i64)>> {
    let pool = sqlx::PgPool::connect(url).await.ok()?;
    let rows = sqlx::query_as("SELECT account, seq FROM applied ORDER BY id")
        .fetch_all(&pool)
        .await
        .ok();
    pool.close().await;
    rows
}

#[tokio::test]
async fn the_inbox_waits_out_a_postgres_outage_without_dead_letters_losses_or_reordering() {
    let started = Instant::now();
    let name = unique("inbox-outage");
    let url = postgres_script(&["start", "--name", &name]);
    let _server = Server(name.clone());
    let run = unique("outage");
    let dlq = unique("dlq-inbox-outage");
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[
            TopicSpec::for_event::<Credited>().partitions(2),
            TopicSpec::new(&dlq).partitions(1),
        ])
        .await
        .unwrap();
    // A short acquire timeout, so the outage reaches the inbox as errors within each
    // attempt (with the default 10 s, a first attempt could simply wait most of it out).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&url)
        .await
        .unwrap();
    let store = PostgresIdempotencyStore::with_pool(pool).await.unwrap();
    sqlx::query("CREATE TABLE applied (id bigserial PRIMARY KEY, account bigint, seq bigint)")
        .execute(store.pool())
        .await
        .unwrap();

    let producer = EventProducer::new(&config("outage-publisher"))
        .await
        .unwrap();
    let events: Vec<Credited> = (0..PER_KEY)
        .flat_map(|seq| {
            let run = run.clone();
            (0..KEYS).map(move |account| Credited {
                run: run.clone(),
                account,
                seq,
            })
        })
        .collect();
    let acknowledged = producer
        .publish_all(&events)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(acknowledged, events.len(), "the broker took every event");
    let sent = events.len();

    let applier = Arc::new(Applier {
        run: run.clone(),
        first_attempts: Mutex::default(),
        calls: AtomicUsize::new(0),
    });
    let consumer = EventConsumer::builder(config("outage"))
        .group_id(unique("outage-group"))
        .settings(ConsumerSettings {
            shutdown_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(200),
            dead_letter_topic: dlq.clone(),
            ..ConsumerSettings::default()
        })
        .handler::<Credited, _>(Inbox::new(store.clone(), Arc::clone(&applier)))
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run_until(async move {
        let _ = stop_rx.await;
    }));

    // Stop the server once the consumer is well under way, for OUTAGE.
    let deadline = Instant::now() + TEST_DEADLINE;
    while applier.calls.load(Ordering::SeqCst) < sent / 5 {
        assert!(Instant::now() < deadline, "the consumer never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    postgres_script(&["stop", "--name", &name]);
    let stopped_at = applier.calls.load(Ordering::SeqCst);
    tokio::time::sleep(OUTAGE).await;
    let restarted_url = postgres_script(&["start", "--name", &name]);
    assert_eq!(restarted_url, url, "the server came back on its port");

    let rows = loop {
        let rows = applied_rows(&url).await.unwrap_or_default();
        if rows.len() >= sent || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Let a duplicate that would follow the last row arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = applied_rows(&url).await.unwrap_or(rows);
    let _ = stop_tx.send(());
    running
        .await
        .unwrap()
        .expect("the consumer ran and stopped");

    let letters = dead_letters_now(&dlq).await;
    let mut distinct: Vec<(i64, i64)> = rows.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let duplicate_effects = rows.len() - distinct.len();
    let duplicate_deliveries: usize = applier
        .first_attempts
        .lock()
        .unwrap()
        .values()
        .map(|n| n - 1)
        .sum();
    FaultScenario {
        name: "PostgreSQL stopped 10 s under an Inbox consumer",
        sent,
        acknowledged: Some(acknowledged),
        handled: Some(distinct.len()),
        lost: sent - distinct.len(),
        duplicate_deliveries,
        duplicate_effects: Some(duplicate_effects),
    }
    .record();

    assert!(
        stopped_at < sent,
        "the outage began before the work was done"
    );
    assert!(
        letters.is_empty(),
        "dead-lettered during the outage: {letters:?}"
    );
    assert_eq!(distinct.len(), sent, "every event applied");
    assert_eq!(duplicate_effects, 0, "each event applied once");
    for account in 0..i64::from(KEYS) {
        let seqs: Vec<i64> = rows
            .iter()
            .filter(|(a, _)| *a == account)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "account {account} applied out of order: {seqs:?}"
        );
    }
    assert!(started.elapsed() < TEST_DEADLINE * 2);
}

//! A consumer process for the crash tests: it applies each `LedgerEntry` of one run to a
//! SQLite database, and the test kills it with SIGKILL at random moments.
//!
//! Usage: `killable_consumer <group> <sqlite file> <run> <deliveries file>`, with the
//! broker in `PEGASUS_TEST_BOOTSTRAP`. The effect of an entry is a row in `effects`,
//! written in the same transaction as the idempotency mark, so a duplicate delivery can
//! never apply it twice. Every delivery of a record to the runtime (each idempotency check)
//! is appended to the deliveries file (one line, unbuffered), so the test can count
//! redeliveries across the kills.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::idempotency::SqliteIdempotencyStore;
use pegasus_events::IdempotencyStore;
use pegasus_events_tests::{config, LedgerEntry};
use uuid::Uuid;

struct Ledger {
    run: String,
    store: SqliteIdempotencyStore,
}

/// The SQLite store, writing down every event id it is asked about: one line per delivery.
struct Counted {
    store: SqliteIdempotencyStore,
    deliveries: Mutex<std::fs::File>,
}

impl IdempotencyStore for Counted {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> pegasus_events::Result<bool> {
        let _ = writeln!(
            self.deliveries.lock().unwrap_or_else(|e| e.into_inner()),
            "{event_id}"
        );
        self.store.is_processed(group, event_id).await
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> pegasus_events::Result<()> {
        self.store.mark_processed(group, event_id).await
    }
}

impl EventHandler<LedgerEntry> for Ledger {
    async fn handle(
        &self,
        entry: LedgerEntry,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if entry.run != self.run {
            return Ok(());
        }
        let mut transaction = self.store.pool().begin().await?;
        if !self
            .store
            .mark_processed_in(&mut transaction, context.group_id, context.event_id())
            .await?
        {
            // Applied before, in a transaction that committed: nothing to do.
            return Ok(());
        }
        sqlx::query("INSERT INTO effects (event_id, n) VALUES (?, ?)")
            .bind(context.event_id().to_string())
            .bind(entry.n)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, group, database, run, deliveries] = &args[..] else {
        return Err(
            "usage: killable_consumer <group> <sqlite file> <run> <deliveries file>".into(),
        );
    };
    let store = SqliteIdempotencyStore::connect(&format!("sqlite://{database}")).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS effects (event_id TEXT NOT NULL, n INTEGER NOT NULL)")
        .execute(store.pool())
        .await?;
    let deliveries = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(deliveries)?;
    let settings = ConsumerSettings {
        commit_interval: Duration::from_millis(500),
        // A static member: the restarted process takes over the killed one's partitions
        // at once, instead of waiting for its session to time out.
        properties: vec![
            ("group.instance.id".to_owned(), format!("{group}-member")),
            ("session.timeout.ms".to_owned(), "6000".to_owned()),
        ],
        ..ConsumerSettings::default()
    };
    EventConsumer::builder(config("killable-consumer"))
        .group_id(group)
        .settings(settings)
        .idempotency(Counted {
            store: store.clone(),
            deliveries: Mutex::new(deliveries),
        })
        .handler::<LedgerEntry, _>(Ledger {
            run: run.clone(),
            store,
        })
        .build()?
        .run()
        .await?;
    Ok(())
}

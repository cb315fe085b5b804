//! A consumer process for the crash tests: it applies each `LedgerEntry` of one run to a
//! SQLite database, and the test kills it with SIGKILL at random moments.
//!
//! Usage: `killable_consumer <group> <sqlite file> <run> <deliveries file>`, with the
//! broker in `PEGASUS_TEST_BOOTSTRAP`. The effect of an entry is a row in `effects`,
//! written through the library's `Inbox`, in the same transaction as the idempotency
//! mark, so a duplicate delivery can never apply it twice. Every delivery of a record of
//! the run to this process, that is its first attempt (a retry of the same delivery is not
//! another delivery), is appended to the deliveries file as one line
//! `<event id> <partition> <offset>`, so the test can count redeliveries across the kills.
//!
//! There is no idempotency check before the handler (`ConsumerBuilder::idempotency`): it
//! would answer a redelivery without calling any handler, so it could not be counted here;
//! the inbox's own mark, in the handler's transaction, recognises it instead.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::idempotency::{Inbox, InboxHandler, SqliteIdempotencyStore};
use pegasus_events_tests::{config, LedgerEntry};

/// Applies an entry: one row in `effects`, in the inbox's transaction.
struct Ledger {
    run: String,
}

/// Writes down the first attempt at each record of the run, then hands it on.
struct Deliveries<H> {
    run: String,
    log: Mutex<std::fs::File>,
    handler: H,
}

impl<H: EventHandler<LedgerEntry>> EventHandler<LedgerEntry> for Deliveries<H> {
    async fn handle(
        &self,
        entry: LedgerEntry,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if entry.run == self.run && context.attempt == 1 {
            // One write per line: a kill never leaves half a line behind.
            let line = format!(
                "{} {} {}\n",
                context.event_id(),
                context.partition,
                context.offset
            );
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(line.as_bytes())?;
        }
        self.handler.handle(entry, context).await
    }
}

impl InboxHandler<LedgerEntry, sqlx::Sqlite> for Ledger {
    async fn handle(
        &self,
        entry: LedgerEntry,
        context: &EventContext<'_>,
        transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<(), HandlerError> {
        if entry.run != self.run {
            return Ok(());
        }
        sqlx::query("INSERT INTO effects (event_id, n) VALUES (?, ?)")
            .bind(context.event_id().to_string())
            .bind(entry.n)
            .execute(&mut **transaction)
            .await?;
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
    let log = std::fs::OpenOptions::new()
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
        .handler::<LedgerEntry, _>(Deliveries {
            run: run.clone(),
            log: Mutex::new(log),
            handler: Inbox::new(store, Ledger { run: run.clone() }),
        })
        .build()?
        .run()
        .await?;
    Ok(())
}

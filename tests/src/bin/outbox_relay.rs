//! An outbox relay process for the crash tests: it publishes the outbox of one database
//! until SIGTERM, and the tests kill it with SIGKILL.
//!
//! Usage: `outbox_relay postgres|sqlite <database url> <dead-letter topic>`, with the
//! broker in `PEGASUS_TEST_BOOTSTRAP`.

use std::time::Duration;

use pegasus_events::consumer::shutdown_signal;
use pegasus_events::outbox::{PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events_tests::config;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, database, url, dead_letter_topic] = &args[..] else {
        return Err(
            "usage: outbox_relay postgres|sqlite <database url> <dead-letter topic>".into(),
        );
    };
    let kafka = config("outbox-relay");
    let settings = RelaySettings {
        poll_interval: Duration::from_millis(100),
        dead_letter_topic: dead_letter_topic.clone(),
        ..RelaySettings::default()
    };
    let relay = match database.as_str() {
        "postgres" => PostgresOutbox::connect(url, &kafka)
            .await?
            .relay(&kafka, settings)?,
        "sqlite" => SqliteOutbox::connect(url, &kafka)
            .await?
            .relay(&kafka, settings)?,
        other => return Err(format!("unknown database `{other}`").into()),
    };
    relay.run_until(shutdown_signal()).await?;
    Ok(())
}

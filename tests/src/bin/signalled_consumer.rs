//! A consumer process for the SIGTERM test (`tests/tests/signals.rs`): it runs
//! `EventConsumer::run`, which stops on SIGTERM, with a handler that takes a while per
//! record, and writes down when it starts and when it finishes each one.
//!
//! Usage: `signalled_consumer <group> <run> <handling ms> <log file>`, with the broker in
//! `PEGASUS_TEST_BOOTSTRAP`. For each `Signalled` event of the run the handler appends
//! `started <n>` to the log, sleeps the handling time, then appends `finished <n>`; one
//! write per line. The process exits with status 0 once `run` returned `Ok`.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events_tests::{config, Signalled};

struct Slow {
    run: String,
    handling: Duration,
    log: Mutex<std::fs::File>,
}

impl Slow {
    fn note(&self, line: &str) -> std::io::Result<()> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(format!("{line}\n").as_bytes())
    }
}

impl EventHandler<Signalled> for Slow {
    async fn handle(&self, event: Signalled, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        self.note(&format!("started {}", event.n))?;
        tokio::time::sleep(self.handling).await;
        self.note(&format!("finished {}", event.n))?;
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, group, run, handling_ms, log] = &args[..] else {
        return Err("usage: signalled_consumer <group> <run> <handling ms> <log file>".into());
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    EventConsumer::builder(config("signal-test"))
        .group_id(group)
        .settings(ConsumerSettings {
            shutdown_timeout: Duration::from_secs(5),
            // Long enough that only the shutdown's final commit can store the offsets of
            // the records handled last.
            commit_interval: Duration::from_secs(60),
            dead_letter_topic: format!("tests-dlq-{group}"),
            ..ConsumerSettings::default()
        })
        .handler::<Signalled, _>(Slow {
            run: run.clone(),
            handling: Duration::from_millis(handling_ms.parse()?),
            log: Mutex::new(log),
        })
        .build()?
        .run()
        .await?;
    Ok(())
}

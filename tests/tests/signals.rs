//! `EventConsumer::run` stops gracefully on SIGTERM. This is its own test binary because it
//! signals its own process: no other test may be running in it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::{Event, EventProducer};
use pegasus_events_tests::{config, unique};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.consumer.signalled")]
struct Signalled {
    run: String,
}

struct Count {
    run: String,
    seen: Arc<AtomicUsize>,
}

impl EventHandler<Signalled> for Count {
    async fn handle(&self, event: Signalled, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.run {
            self.seen.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_running_consumer_gracefully() {
    let run = unique("run");
    let producer = EventProducer::new(&config("signal-test")).unwrap();
    producer
        .publish(&Signalled { run: run.clone() })
        .await
        .unwrap();

    let seen = Arc::new(AtomicUsize::new(0));
    let consumer = EventConsumer::builder(config("signal-test"))
        .group_id(unique("signal"))
        .settings(ConsumerSettings {
            shutdown_timeout: Duration::from_secs(5),
            ..ConsumerSettings::default()
        })
        .handler::<Signalled, _>(Count {
            run,
            seen: Arc::clone(&seen),
        })
        .build()
        .unwrap();
    let running = tokio::spawn(consumer.run());

    // Once the event was handled, the consumer (and its signal handler) is surely running.
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the event was handled");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());

    let result = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run() returned after SIGTERM")
        .expect("the task did not panic");
    assert!(result.is_ok(), "{result:?}");
}

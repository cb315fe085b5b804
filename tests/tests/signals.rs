//! `EventConsumer::run` stops gracefully on SIGTERM: a consumer process
//! (`src/bin/signalled_consumer.rs`) is signalled while its handler is in the middle of a
//! record. Graceful means: the record being handled finishes, no record starts after it,
//! the offsets of everything handled are committed (a new consumer of the group resumes
//! right after them and handles nothing twice), and the process exits, with status 0,
//! within the shutdown's bound.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::{Event, EventProducer, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    bootstrap, config, run_until_done, unique, Signalled, BOOTSTRAP_ENV, TEST_DEADLINE,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const EVENTS: u32 = 12;
/// How long the process's handler takes per record.
const HANDLING: Duration = Duration::from_millis(1_000);
/// The process's `shutdown_timeout` (5 s) plus the runtime's 10 s for the final commit and
/// leaving the group: `run` returns within this after the signal, whatever happens.
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// Kills the child with SIGKILL when dropped, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The (started, finished) records of the process's log, in the order written.
fn read_log(path: &std::path::Path) -> (Vec<u32>, Vec<u32>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut started, mut finished) = (Vec::new(), Vec::new());
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("started", n)) => started.push(n.parse().unwrap()),
            Some(("finished", n)) => finished.push(n.parse().unwrap()),
            _ => panic!("a malformed line in the handler's log: {line:?}"),
        }
    }
    (started, finished)
}

/// Records which events of the run a consumer handled, in order.
struct Seen {
    run: String,
    seen: Mutex<Vec<u32>>,
}

/// [`Seen`], shared with the test.
struct SeenBy(Arc<Seen>);

impl EventHandler<Signalled> for SeenBy {
    async fn handle(&self, event: Signalled, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run == self.0.run {
            self.0.seen.lock().unwrap().push(event.n);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_record_being_handled_finish_commits_what_was_handled_and_exits_in_bounded_time(
) {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Signalled>().partitions(1)])
        .await
        .unwrap();
    let run = unique("run");
    let producer = EventProducer::new(&config("signal-test")).await.unwrap();
    let events: Vec<Signalled> = (0..EVENTS)
        .map(|n| Signalled {
            run: run.clone(),
            n,
        })
        .collect();
    let offsets: Vec<i64> = producer
        .publish_all(&events)
        .await
        .into_iter()
        .map(|result| result.expect("published").offset)
        .collect();

    let group = unique("signal");
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("signalled"));
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_signalled_consumer"))
            .args([
                group.as_str(),
                run.as_str(),
                &HANDLING.as_millis().to_string(),
                log.to_str().unwrap(),
            ])
            .env(BOOTSTRAP_ENV, bootstrap())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("the consumer process starts"),
    );

    // Signal it while its handler is in the middle of its third record.
    let deadline = Instant::now() + TEST_DEADLINE;
    let started_at_the_signal = loop {
        let (started, finished) = read_log(&log);
        if started.contains(&2) && !finished.contains(&2) {
            break started;
        }
        assert!(
            finished.len() < 3 && Instant::now() < deadline,
            "the signal did not land in the middle of record 2: started {started:?}, \
             finished {finished:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < EXIT_BOUND,
            "the process did not exit within {EXIT_BOUND:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    assert!(
        exit.success(),
        "the process exited with {exit:?} (signal {:?}): run() returned an error or the signal killed it",
        exit.signal()
    );

    // The record in flight (it takes a second) finished; nothing started after the signal.
    let (started, finished) = read_log(&log);
    assert_eq!(
        started, started_at_the_signal,
        "no record started after the signal"
    );
    assert_eq!(
        finished,
        [0, 1, 2],
        "every record started before the signal finished, record 2 included"
    );
    let last: u32 = 2;

    // Their offsets are committed: the group's position is right after the last one.
    let committed = tokio::task::spawn_blocking({
        let group = group.clone();
        move || {
            let reader: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut partitions = TopicPartitionList::new();
            partitions.add_partition(Signalled::TOPIC, 0);
            reader
                .committed_offsets(partitions, Duration::from_secs(10))
                .unwrap()
                .find_partition(Signalled::TOPIC, 0)
                .unwrap()
                .offset()
        }
    })
    .await
    .unwrap();
    assert_eq!(
        committed,
        Offset::Offset(offsets[last as usize] + 1),
        "the group's committed offset is the one after the last record handled"
    );

    // A new consumer of the group resumes right after them: the rest, each once.
    let seen = Arc::new(Seen {
        run: run.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let consumer = EventConsumer::builder(config("signal-test"))
        .group_id(&group)
        .settings(ConsumerSettings {
            shutdown_timeout: Duration::from_secs(5),
            dead_letter_topic: unique("tests-dlq"),
            ..ConsumerSettings::default()
        })
        .handler::<Signalled, _>(SeenBy(Arc::clone(&seen)))
        .build()
        .unwrap();
    let watched = Arc::clone(&seen);
    run_until_done(consumer, move || {
        watched.seen.lock().unwrap().contains(&(EVENTS - 1))
    })
    .await;
    assert_eq!(
        *seen.seen.lock().unwrap(),
        (last + 1..EVENTS).collect::<Vec<u32>>(),
        "the group resumed after the records handled before the signal: none again, none lost"
    );
    eprintln!(
        "SIGTERM while record 2 was handled: it finished, the process exited {took:.1?} after \
         the signal"
    );
}

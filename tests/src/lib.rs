//! Support for the integration tests: the broker under test, unique names, and a plain
//! rdkafka consumer that reads records back exactly as they are on the broker.
//!
//! The broker is the real Apache Kafka that `scripts/test` starts with `scripts/kafka`; its
//! address arrives in `PEGASUS_TEST_BOOTSTRAP`. Without it every broker test fails (never
//! skips) with a message that says how to start one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pegasus_events::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The environment variable that carries the bootstrap address of the broker under test.
pub const BOOTSTRAP_ENV: &str = "PEGASUS_TEST_BOOTSTRAP";

/// The bootstrap address of the real broker under test.
///
/// # Panics
///
/// When `PEGASUS_TEST_BOOTSTRAP` is unset: the tests must fail, not skip, without a broker.
pub fn bootstrap() -> String {
    match std::env::var(BOOTSTRAP_ENV) {
        Ok(address) if !address.trim().is_empty() => address,
        _ => panic!(
            "{BOOTSTRAP_ENV} is not set: run the tests with `scripts/test`, which starts a real \
             Apache Kafka broker, or start one with `scripts/kafka start` and export its address"
        ),
    }
}

/// The environment variable that carries the URL of the PostgreSQL server under test.
pub const POSTGRES_ENV: &str = "PEGASUS_TEST_POSTGRES_URL";

/// The URL of the real PostgreSQL server under test.
///
/// # Panics
///
/// When `PEGASUS_TEST_POSTGRES_URL` is unset: the tests must fail, not skip, without one.
pub fn postgres_url() -> String {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{POSTGRES_ENV} is not set: run the tests with `scripts/test`, which starts a real \
             PostgreSQL server (installing it from Debian's packages if needed), or start one \
             with `scripts/postgres start` and export the URL it prints"
        ),
    }
}

/// A new, empty database on the PostgreSQL server under test, for a test that must not
/// see other tests' tables; returns its URL.
///
/// # Panics
///
/// When the server is unreachable or refuses to create it.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let url = postgres_url();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .expect("the PostgreSQL server under test answers");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("a test database can be created");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A configuration for the broker under test with a short delivery timeout.
pub fn config(client_id: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(bootstrap()).with_client_id(client_id);
    config.producer.delivery_timeout = Duration::from_secs(30);
    config
}

/// A name no other test in this run uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4().simple()
    )
}

fn raw_consumer() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("readback"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a plain rdkafka consumer can be created")
}

/// Reads the record at `topic`/`partition`/`offset` with a plain rdkafka consumer.
///
/// # Panics
///
/// When the record does not arrive within 30 s.
pub fn read_record(topic: &str, partition: i32, offset: i64) -> OwnedMessage {
    let consumer = raw_consumer();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("valid offset");
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) if message.offset() == offset => return message.detach(),
            Some(Ok(_)) | None => {}
            Some(Err(e)) => panic!("reading {topic}/{partition}@{offset} failed: {e}"),
        }
    }
    panic!("record {topic}/{partition}@{offset} did not arrive within 30 s");
}

/// Reads `topic` from its beginning with a plain consumer of `bootstrap_servers` and returns
/// every record whose payload `ours` accepts, in the order read, once `want` distinct
/// events (by `ce_id`) are among them and then `settle` passed without another record of
/// ours: a duplicate that arrives after the last expected event is in the result.
///
/// # Panics
///
/// When fewer than `want` distinct events arrived, or records of ours were still arriving,
/// after `deadline`; when a record of ours has no `ce_id`.
pub fn read_until_settled(
    bootstrap_servers: &str,
    topic: &str,
    ours: impl Fn(&[u8]) -> bool,
    want: usize,
    settle: Duration,
    deadline: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", unique("settled-readback"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a plain rdkafka consumer can be created");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + deadline;
    let mut found = Vec::new();
    let mut ids = std::collections::HashSet::new();
    // Since when nothing new of ours arrived, once `want` events are in.
    let mut quiet_since: Option<Instant> = None;
    loop {
        if quiet_since.is_some_and(|since| since.elapsed() >= settle) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} events arrived on {topic} ({} records); {}",
            ids.len(),
            found.len(),
            if ids.len() >= want {
                "records kept arriving"
            } else {
                "some never came"
            }
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            if message.payload().is_some_and(&ours) {
                let message = message.detach();
                let id = header(&headers_of(&message), "ce_id")
                    .expect("a record of ours has a ce_id")
                    .to_owned();
                ids.insert(id);
                found.push(message);
                if ids.len() >= want {
                    quiet_since = Some(Instant::now());
                }
            }
        }
    }
}

/// Runs the project's broker script, `scripts/kafka ARGS`, and returns what it printed on
/// standard output (the bootstrap address for `start`).
///
/// # Panics
///
/// When the script fails; its standard error is in the message.
pub fn kafka_script(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka");
    let output = std::process::Command::new(script)
        .args(args)
        .output()
        .expect("scripts/kafka runs");
    assert!(
        output.status.success(),
        "scripts/kafka {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A broker of the test's own (`scripts/kafka start --name <prefix>-...`), for tests that
/// kill or stop it; stopped on drop, whatever the test did.
pub struct OwnBroker {
    name: String,
    bootstrap: String,
}

impl OwnBroker {
    /// Starts it, named after `prefix`.
    pub fn start(prefix: &str) -> Self {
        let name = unique(prefix);
        let bootstrap = kafka_script(&["start", "--name", &name]);
        OwnBroker { name, bootstrap }
    }

    /// Its cluster name, for `scripts/kafka kill-node` and `start-node`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Stops it (again on drop, which finds it stopped).
    pub fn stop(&self) {
        kafka_script(&["stop", "--name", &self.name]);
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The settings of the dead-letter tests: quick commits and shutdown, and `dead_letter_topic`.
pub fn dead_letter_settings(dead_letter_topic: &str) -> pegasus_events::consumer::ConsumerSettings {
    pegasus_events::consumer::ConsumerSettings {
        shutdown_timeout: std::time::Duration::from_secs(10),
        commit_interval: std::time::Duration::from_millis(200),
        dead_letter_topic: dead_letter_topic.to_owned(),
        ..pegasus_events::consumer::ConsumerSettings::default()
    }
}

/// The headers of a record as (name, UTF-8 value) pairs, in order.
pub fn headers_of(message: &OwnedMessage) -> Vec<(String, String)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_owned(), value.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The value of header `name`, if present.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Log lines written through `tracing`, kept in memory for a test to read.
#[derive(Clone, Default)]
pub struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// A subscriber that writes every line at `level` and above into this buffer.
    pub fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Collects every log line written through `tracing` while `f` runs, on this thread, for
/// tests that prove a secret never reaches a log.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buffer = LogBuffer::default();
    let result = tracing::subscriber::with_default(buffer.subscriber(tracing::Level::TRACE), f);
    (result, buffer.text())
}

/// The event of the crash tests, shared by the test and the consumer process it kills
/// (`src/bin/killable_consumer.rs`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, pegasus_events::Event)]
#[event(topic = "tests.fault.ledger", name = "LedgerEntryEvent")]
pub struct LedgerEntry {
    /// Which test run published it.
    pub run: String,
    /// The partition key.
    #[event(key)]
    pub account: u32,
    /// Its number in the run, from 0.
    pub n: u32,
}

/// The event of the SIGTERM test, shared by the test and the consumer process it signals
/// (`src/bin/signalled_consumer.rs`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, pegasus_events::Event)]
#[event(topic = "tests.signals.sigterm", name = "SignalledEvent")]
pub struct Signalled {
    /// Which test run published it.
    pub run: String,
    /// Its number in the run, from 0.
    pub n: u32,
}

/// The counts of one fault scenario, as the README's table shows them.
#[derive(Debug)]
pub struct FaultScenario<'a> {
    /// What happened.
    pub name: &'a str,
    /// Events (records) put on the topic.
    pub sent: usize,
    /// Of those, acknowledged by the broker; `None` when the scenario cannot count it
    /// (printed as `-`, never an assumed value).
    pub acknowledged: Option<usize>,
    /// Distinct events handled (or, for poison, dead-lettered); `None` when nothing
    /// handles them in the scenario.
    pub handled: Option<usize>,
    /// Acknowledged events neither handled nor dead-lettered.
    pub lost: usize,
    /// Deliveries of an event that had been delivered before.
    pub duplicate_deliveries: usize,
    /// Events whose effect was applied more than once; `None` when the scenario applies
    /// no effects.
    pub duplicate_effects: Option<usize>,
}

impl FaultScenario<'_> {
    /// Prints the counts and appends them to `target/fault-scenarios.tsv`, which
    /// `scripts/test` prints at the end of the run.
    pub fn record(&self) {
        let counted =
            |count: Option<usize>| count.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.name,
            self.sent,
            counted(self.acknowledged),
            counted(self.handled),
            self.lost,
            self.duplicate_deliveries,
            counted(self.duplicate_effects)
        );
        eprint!("fault scenario: {line}");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/fault-scenarios.tsv");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write;
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// How long a test waits for a consumer to see what it expects before it fails.
pub const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `consumer` until `done()` holds, then shuts it down gracefully.
///
/// # Panics
///
/// When `done()` does not hold within [`TEST_DEADLINE`], or the consumer fails.
pub async fn run_until_done(
    consumer: pegasus_events::EventConsumer,
    done: impl Fn() -> bool + Send + 'static,
) {
    run_until_done_watching(consumer, &HandlerFailures::default(), done).await;
}

/// [`run_until_done`] for a consumer whose handlers are watched by `failures`: as soon as
/// one of them fails (a failed `assert!` in it, which the runtime would catch and
/// dead-letter), the consumer is shut down and the test fails with that failure's message,
/// instead of waiting for the deadline.
///
/// # Panics
///
/// When a watched handler failed, when `done()` does not hold within [`TEST_DEADLINE`],
/// or when the consumer fails.
pub async fn run_until_done_watching(
    consumer: pegasus_events::EventConsumer,
    failures: &HandlerFailures,
    done: impl Fn() -> bool + Send + 'static,
) {
    let watched = failures.clone();
    let stop = async move {
        while !done() && watched.first().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ran = tokio::time::timeout(TEST_DEADLINE, consumer.run_until(stop)).await;
    if let Some(failure) = failures.first() {
        panic!("{failure}");
    }
    ran.expect("the consumer saw what it waited for before the deadline")
        .expect("the consumer ran");
}

/// The failures of the handlers a test watches with [`HandlerFailures::watch`]. The
/// runtime catches a handler's panic and dead-letters the record, so a failed `assert!` in
/// a handler would otherwise show only as a test that runs into its deadline;
/// [`run_until_done_watching`] fails the test at once with the first failure's message.
#[derive(Clone, Debug, Default)]
pub struct HandlerFailures(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl HandlerFailures {
    /// `handler`, with every panic (a failed assertion) and every `Err` it returns recorded
    /// here before the runtime sees it; the runtime then treats it as usual.
    pub fn watch<H>(&self, handler: H) -> Watched<H> {
        Watched {
            handler,
            failures: self.clone(),
        }
    }

    /// The first failure recorded, if any.
    pub fn first(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned()
    }

    fn record(&self, failure: String) {
        eprintln!("{failure}");
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(failure);
    }
}

/// A handler watched by [`HandlerFailures`]; it handles exactly as the handler it wraps.
pub struct Watched<H> {
    handler: H,
    failures: HandlerFailures,
}

impl<E, H> pegasus_events::consumer::EventHandler<E> for Watched<H>
where
    E: pegasus_events::Event,
    H: pegasus_events::consumer::EventHandler<E>,
{
    async fn handle(
        &self,
        event: E,
        context: &pegasus_events::consumer::EventContext<'_>,
    ) -> Result<(), pegasus_events::consumer::HandlerError> {
        let at = format!(
            "{}/{}@{} (attempt {})",
            context.topic, context.partition, context.offset, context.attempt
        );
        match CatchUnwind(Box::pin(self.handler.handle(event, context))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                self.failures
                    .record(format!("a watched handler failed on {at}: {error}"));
                Err(error)
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic payload".to_owned());
                self.failures
                    .record(format!("a watched handler panicked on {at}: {message}"));
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// A future's output, or its panic.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Runs `consumer` until `signal` completes, then shuts it down gracefully.
///
/// # Panics
///
/// When that takes longer than [`TEST_DEADLINE`], or the consumer fails.
pub async fn run_with_signal(
    consumer: pegasus_events::EventConsumer,
    signal: impl std::future::Future<Output = ()> + Send,
) {
    tokio::time::timeout(TEST_DEADLINE, consumer.run_until(signal))
        .await
        .expect("stopped before the deadline")
        .expect("the consumer ran");
}

/// Every dead letter the dead-letter topic `topic` holds now.
///
/// # Panics
///
/// When the topic cannot be read.
pub async fn dead_letters_now(topic: &str) -> Vec<pegasus_events::DeadLetter> {
    pegasus_events::DeadLetterQueue::new(&config("dlq-reader"))
        .expect("a dead-letter reader")
        .topic(topic)
        .read(&pegasus_events::ReplayFilter::new())
        .await
        .expect("the dead-letter topic is readable")
}

/// Reads the dead-letter topic `topic` in the background until it holds a dead letter,
/// for a test whose consumer runs until then ([`DeadLetterWatch::arrived`]).
pub struct DeadLetterWatch {
    letters: std::sync::Arc<std::sync::Mutex<Vec<pegasus_events::DeadLetter>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DeadLetterWatch {
    /// Starts reading `topic` every 200 ms.
    pub fn start(topic: &str) -> Self {
        DeadLetterWatch::start_with(&config("dlq-reader"), topic)
    }

    /// Starts reading `topic` every 200 ms as the client `reader` configures (a broker
    /// other than the one under test, credentials).
    pub fn start_with(reader: &KafkaConfig, topic: &str) -> Self {
        let letters: std::sync::Arc<std::sync::Mutex<Vec<pegasus_events::DeadLetter>>> =
            std::sync::Arc::default();
        let found = std::sync::Arc::clone(&letters);
        let queue = pegasus_events::DeadLetterQueue::new(reader)
            .expect("a dead-letter reader")
            .topic(topic);
        let task = tokio::spawn(async move {
            loop {
                let read = queue
                    .read(&pegasus_events::ReplayFilter::new())
                    .await
                    .unwrap_or_default();
                if !read.is_empty() {
                    *found.lock().unwrap_or_else(|e| e.into_inner()) = read;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        DeadLetterWatch { letters, task }
    }

    /// Whether a dead letter arrived, as a condition for [`run_until_done`].
    pub fn arrived(&self) -> impl Fn() -> bool + Send + 'static {
        let letters = std::sync::Arc::clone(&self.letters);
        move || !letters.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// The dead letters read when the first arrived (none if none did); stops reading.
    pub fn letters(self) -> Vec<pegasus_events::DeadLetter> {
        self.task.abort();
        std::mem::take(&mut *self.letters.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Publishes `event` as another service's instrumentation might: a binary-mode record with
/// the contract's `ce_` headers and `extra` headers written byte for byte, through
/// [`pegasus_events::EventProducer::republish`], which sends a record unchanged. The
/// library's own publish refuses a malformed `traceparent` or `tracestate`; a record from
/// elsewhere may still carry one.
///
/// # Panics
///
/// When the broker does not acknowledge the record.
pub async fn publish_with_raw_headers<E: pegasus_events::Event>(
    producer: &pegasus_events::EventProducer,
    event: &E,
    extra: &[(&str, &[u8])],
) -> pegasus_events::Delivery {
    let id = uuid::Uuid::now_v7().to_string();
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let version = E::VERSION.to_string();
    let contract: [(&str, &[u8]); 7] = [
        ("ce_specversion", b"1.0"),
        ("ce_id", id.as_bytes()),
        ("ce_source", b"another-service"),
        ("ce_type", E::NAME.as_bytes()),
        ("ce_time", time.as_bytes()),
        ("content-type", b"application/json"),
        ("ce_schemaversion", version.as_bytes()),
    ];
    let record = pegasus_events::EncodedRecord {
        topic: E::TOPIC.to_owned(),
        key: Some(id.clone().into_bytes()),
        payload: Some(serde_json::to_vec(event).expect("the event serializes")),
        headers: contract
            .iter()
            .chain(extra)
            .map(|(name, value)| ((*name).to_owned(), Some(value.to_vec())))
            .collect(),
    };
    producer.republish(&record).await.expect("acknowledged")
}

//! The consumer runtime: consumer groups, at-least-once commits, ordering per partition,
//! graceful shutdown.
//!
//! # Guarantees
//!
//! - **At least once.** A record's offset is committed only after its handler returned `Ok`
//!   and so did the handler of every earlier record of its partition. A crash at any point
//!   leads to redelivery, never to a lost event.
//! - **Order per partition, and so per key.** The records of one partition are handled one
//!   at a time, in offset order. Different partitions are handled concurrently.
//! - **Bounded memory.** At most
//!   [`max_in_flight_per_partition`](ConsumerSettings::max_in_flight_per_partition) records
//!   per assigned partition are fetched ahead of its worker (librdkafka's
//!   `queued.min.messages`); beyond that librdkafka stops fetching for the partition until
//!   the worker catches up, so a backlog of any size costs the same memory.
//! - **No allocation per record** in the runtime beyond decoding: each partition has its
//!   own librdkafka queue, read by a worker that is generic over the handler, and the
//!   handler gets the record's metadata borrowed from the record.
//! - **Rebalances.** When partitions are revoked, the records being handled may finish
//!   (up to [`revoke_timeout`](ConsumerSettings::revoke_timeout)), records not started are
//!   left to the next owner, and the offsets of what finished are committed synchronously
//!   before the partitions are given up. In normal operation nothing is handled twice.
//! - **Failures are retried in place, then dead-lettered.** A handler's transient error is
//!   retried by its [`RetryPolicy`] (by default 3 attempts, 100 ms then 200 ms apart, with
//!   jitter); the partition waits meanwhile, so per-key order holds. When the attempts are
//!   used up, on a [permanent](HandlerError::permanent) error or on a panic, the record goes
//!   to the dead-letter topic (`dlq-events`, see [`crate::dead_letter`]) byte for byte with
//!   the reason, and its offset is committed only after the dead-letter topic acknowledged
//!   it. A failing dead-letter write is retried; the offset stays uncommitted meanwhile, so
//!   nothing is lost.
//! - **Undecodable records** (malformed JSON, another `ce_type`, an unknown schema version)
//!   never crash or block the runtime: each goes to the dead-letter topic with reason
//!   `decode` at once (retrying cannot fix it), and the good records after it are handled.
//! - **Idempotency** (optional, [`ConsumerBuilder::idempotency`]): a record whose event id
//!   the store knows for this group is acknowledged without calling the handler; an event
//!   is marked processed after its handler succeeded and before its offset is stored.
//! - **Shutdown.** [`EventConsumer::run_until`] returns after its signal: fetching stops, the
//!   records being handled may finish up to
//!   [`shutdown_timeout`](ConsumerSettings::shutdown_timeout), their offsets are committed,
//!   and the consumer leaves the group. It returns by that deadline (plus the close grace)
//!   even when the broker is gone.
//!
//! # Example
//!
//! ```no_run
//! use pegasus_events::consumer::{EventConsumer, EventContext, EventHandler, HandlerError};
//! use pegasus_events::{Event, KafkaConfig};
//! # #[derive(Debug, serde::Serialize, serde::Deserialize, Event)]
//! # #[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
//! # struct ShipmentCreated { #[event(key)] shipment_id: String, tracking_number: String }
//!
//! struct ShipmentCreatedConsumer;
//!
//! impl EventHandler<ShipmentCreated> for ShipmentCreatedConsumer {
//!     async fn handle(&self, event: ShipmentCreated, _: &EventContext<'_>) -> Result<(), HandlerError> {
//!         println!("processing shipment created: {}", event.tracking_number);
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), pegasus_events::Error> {
//! let config = KafkaConfig::from_env()?.with_client_id("identity-api");
//! // Group id by the design's convention: identity-api-shipmentcreated-consumer.
//! EventConsumer::builder(config)
//!     .handler::<ShipmentCreated, _>(ShipmentCreatedConsumer)
//!     .build()?
//!     .run() // until SIGINT or SIGTERM
//!     .await
//! # }
//! ```

mod dispatch;
mod handler;
mod partition;
mod retry;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::{OnceLock, Weak};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

pub use handler::{EventContext, EventHandler, FailureKind, HandlerError};
pub use retry::RetryPolicy;

use crate::config::{client_error, is_secret_property, KafkaConfig};
use crate::dead_letter::{DeadLetterWriter, DEFAULT_TOPIC};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::idempotency::{DynIdempotencyStore, IdempotencyStore};
use dispatch::{DynRecordHandler, Mixed, Typed};
use partition::{PartitionState, SpawnWorker, WorkerArgs, WorkerEnv};

/// Where a group without committed offsets starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OffsetReset {
    /// From the oldest record still stored (the design's `AutoOffsetReset.Earliest`).
    Earliest,
    /// Only records published after the group first joined.
    Latest,
}

/// Settings of the consumer runtime; the defaults are written next to each field.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerSettings {
    /// Where a new group starts: [`OffsetReset::Earliest`].
    pub offset_reset: OffsetReset,
    /// Records of one partition fetched ahead of its handler, at most: 10,000
    /// (librdkafka's `queued.min.messages`; its byte cap `queued.max.messages.kbytes`,
    /// 64 MiB by default, applies too and can be set through `KafkaConfig::properties`).
    pub max_in_flight_per_partition: usize,
    /// How long records being handled may take to finish at shutdown: 30 s.
    pub shutdown_timeout: Duration,
    /// How long records being handled may take to finish when their partition is revoked:
    /// 30 s.
    pub revoke_timeout: Duration,
    /// How long the broker may hold a fetch that finds no new records: 100 ms.
    ///
    /// librdkafka keeps one fetch in flight per broker, for the partitions whose queues
    /// have room. When those are all caught up, the broker holds the fetch this long, and
    /// partitions that meanwhile drained their queues wait for it; librdkafka's 500 ms
    /// default cut the runtime's throughput to a quarter when some partitions were at
    /// their end and others had a backlog (measured in the `consume` benchmark).
    pub fetch_max_wait: Duration,
    /// How often processed offsets are committed in the background: 1 s. Revocation and
    /// shutdown also commit.
    pub commit_interval: Duration,
    /// How failed records are retried, for handlers registered without a policy of their
    /// own: [`RetryPolicy::default`] (3 attempts, 100 ms doubling, 20 % jitter, 10 s cap).
    pub retry: RetryPolicy,
    /// Where records that cannot be handled go: `dlq-events`
    /// ([`DEFAULT_TOPIC`]). Create it like the other
    /// topics, or let the broker create it on first use.
    pub dead_letter_topic: String,
    /// librdkafka properties for the consumer only (e.g. `fetch.wait.max.ms`), on top of
    /// `KafkaConfig::properties`, which every client gets: none.
    pub properties: Vec<(String, String)>,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            offset_reset: OffsetReset::Earliest,
            max_in_flight_per_partition: 10_000,
            shutdown_timeout: Duration::from_secs(30),
            revoke_timeout: Duration::from_secs(30),
            fetch_max_wait: Duration::from_millis(100),
            commit_interval: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            dead_letter_topic: DEFAULT_TOPIC.to_owned(),
            properties: Vec::new(),
        }
    }
}

impl ConsumerSettings {
    fn validate(&self) -> Result<()> {
        self.retry.validate("consumer.retry")?;
        if self.dead_letter_topic.trim().is_empty() {
            return Err(Error::Config {
                field: "consumer.dead_letter_topic".to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
        if self.max_in_flight_per_partition == 0 {
            return Err(Error::Config {
                field: "consumer.max_in_flight_per_partition".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        if self.commit_interval.is_zero() {
            return Err(Error::Config {
                field: "consumer.commit_interval".to_owned(),
                reason: "must be more than zero".to_owned(),
            });
        }
        Ok(())
    }
}

/// Builds an [`EventConsumer`]: its handlers, group and settings.
#[must_use]
pub struct ConsumerBuilder {
    config: KafkaConfig,
    group_id: Option<String>,
    first_event: Option<&'static str>,
    registrations: HashMap<&'static str, Vec<Registration>>,
    settings: ConsumerSettings,
    idempotency: Option<Arc<dyn DynIdempotencyStore>>,
    error: Option<Error>,
}

/// One registered handler, kept in both forms: the typed one drives a worker alone on its
/// topic without allocating; the erased one joins a mixed topic's `ce_type` table.
struct Registration {
    event_type: &'static str,
    typed: Arc<dyn SpawnWorker>,
    erased: Arc<dyn DynRecordHandler>,
}

impl ConsumerBuilder {
    /// Registers `handler` for events of type `E`, on `E`'s topic. Several event types may
    /// share a topic (the design's `identity-events`): records are then dispatched on
    /// `ce_type`.
    ///
    /// Its failures are retried by the consumer's [`ConsumerSettings::retry`] policy.
    pub fn handler<E: Event, H: EventHandler<E>>(self, handler: H) -> Self {
        self.register::<E, H>(handler, None)
    }

    /// Registers `handler` like [`ConsumerBuilder::handler`], with its own retry policy.
    pub fn handler_with_retry<E: Event, H: EventHandler<E>>(
        mut self,
        handler: H,
        retry: RetryPolicy,
    ) -> Self {
        if let Err(error) = retry.validate(&format!("retry policy of `{}`", E::NAME)) {
            self.error.get_or_insert(error);
        }
        self.register::<E, H>(handler, Some(retry))
    }

    /// Skips events this consumer group handled before, as `store` remembers them, and
    /// marks each event processed once its handler succeeded (see
    /// [`crate::idempotency`]).
    pub fn idempotency(mut self, store: impl IdempotencyStore) -> Self {
        self.idempotency = Some(Arc::new(store));
        self
    }

    fn register<E: Event, H: EventHandler<E>>(
        mut self,
        handler: H,
        retry: Option<RetryPolicy>,
    ) -> Self {
        self.first_event.get_or_insert(E::NAME);
        let registrations = self.registrations.entry(E::TOPIC).or_default();
        if registrations.iter().any(|r| r.event_type == E::NAME) {
            self.error.get_or_insert(Error::Config {
                field: format!("handler for `{}`", E::NAME),
                reason: "registered twice in one consumer".to_owned(),
            });
            return self;
        }
        let typed = Arc::new(Typed::<E, H>::new(handler, retry));
        registrations.push(Registration {
            event_type: E::NAME,
            typed: Arc::clone(&typed) as Arc<dyn SpawnWorker>,
            erased: typed,
        });
        self
    }

    /// Sets the consumer group, instead of `<client id>-<first event type>-consumer`.
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// Replaces the runtime settings.
    pub fn settings(mut self, settings: ConsumerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Validates everything and creates the consumer (not yet connected).
    pub fn build(self) -> Result<EventConsumer> {
        if let Some(error) = self.error {
            return Err(error);
        }
        self.config.validate()?;
        self.settings.validate()?;
        let Some(first_event) = self.first_event else {
            return Err(Error::Config {
                field: "handlers".to_owned(),
                reason: "register at least one handler".to_owned(),
            });
        };
        let group_id = match self.group_id {
            Some(group_id) if group_id.trim().is_empty() => {
                return Err(Error::Config {
                    field: "group_id".to_owned(),
                    reason: "must not be empty".to_owned(),
                })
            }
            Some(group_id) => group_id,
            None => default_group_id(&self.config.client_id, first_event),
        };
        let routes = self
            .registrations
            .into_iter()
            .map(|(topic, mut registrations)| {
                let route = if registrations.len() == 1 {
                    registrations.remove(0).typed
                } else {
                    let by_type = registrations
                        .into_iter()
                        .map(|r| (r.event_type, r.erased))
                        .collect();
                    Arc::new(Mixed { by_type }) as Arc<dyn SpawnWorker>
                };
                (topic, route)
            })
            .collect();
        Ok(EventConsumer {
            config: self.config,
            group_id: group_id.into(),
            routes,
            settings: self.settings,
            idempotency: self.idempotency,
        })
    }
}

/// The design's group id convention: `identity-api` consuming `ShipmentCreatedEvent` is
/// `identity-api-shipmentcreated-consumer`.
pub fn default_group_id(client_id: &str, event_type: &str) -> String {
    let lower = event_type.to_ascii_lowercase();
    let entity = lower
        .strip_suffix("event")
        .filter(|rest| !rest.is_empty())
        .unwrap_or(&lower);
    format!("{client_id}-{entity}-consumer")
}

/// A consumer group member that hands each record to its typed handler.
pub struct EventConsumer {
    config: KafkaConfig,
    group_id: Arc<str>,
    routes: HashMap<&'static str, Arc<dyn SpawnWorker>>,
    settings: ConsumerSettings,
    idempotency: Option<Arc<dyn DynIdempotencyStore>>,
}

impl std::fmt::Debug for EventConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventConsumer")
            .field("group_id", &self.group_id)
            .field("topics", &self.routes.keys().collect::<Vec<_>>())
            .field("settings", &self.settings)
            .field("idempotent", &self.idempotency.is_some())
            .finish_non_exhaustive()
    }
}

impl EventConsumer {
    /// Starts building a consumer with the connection settings of `config`.
    pub fn builder(config: KafkaConfig) -> ConsumerBuilder {
        ConsumerBuilder {
            config,
            group_id: None,
            first_event: None,
            registrations: HashMap::new(),
            settings: ConsumerSettings::default(),
            idempotency: None,
            error: None,
        }
    }

    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes, then shuts down gracefully: fetching stops, records
    /// being handled may finish within the shutdown timeout, their offsets are committed,
    /// and the consumer leaves the group.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let EventConsumer {
            config,
            group_id,
            routes,
            settings,
            idempotency,
        } = self;
        let env = Arc::new(WorkerEnv {
            group_id: Arc::clone(&group_id),
            dead_letters: DeadLetterWriter::new(&config, &settings.dead_letter_topic)?,
            settings: settings.clone(),
            idempotency,
            secrets: secrets_of(&config),
        });
        let shared = Arc::new(Shared {
            group_id,
            routes,
            settings,
            env,
            runtime: tokio::runtime::Handle::current(),
            workers: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        });
        let consumer = Arc::new(create_consumer(&config, &shared)?);
        // The rebalance callbacks split partition queues, which needs the consumer's Arc.
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let topics: Vec<&str> = shared.routes.keys().copied().collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| Error::Consumer {
                operation: "subscribe",
                source,
            })?;
        tracing::info!(group = %shared.group_id, ?topics, "consumer started");

        let (finished_tx, mut finished_rx) = oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("pegasus-poll-{}", shared.group_id))
            .spawn(move || {
                poll_loop(consumer, &thread_shared);
                let _ = finished_tx.send(());
            })
            .map_err(|e| Error::Config {
                field: "consumer thread".to_owned(),
                reason: e.to_string(),
            })?;

        tokio::select! {
            () = shutdown => {}
            _ = &mut finished_rx => {}
        }
        shared.stopping.store(true, Ordering::Release);
        // The poll thread closes workers within the shutdown timeout, then commits and
        // leaves the group; closing may hang when the broker is gone, so bound the wait.
        let grace = shared.settings.shutdown_timeout + CLOSE_GRACE;
        if tokio::time::timeout(grace, finished_rx).await.is_err() {
            tracing::warn!(
                group = %shared.group_id,
                waited_ms = grace.as_millis() as u64,
                "consumer did not close in time (broker unreachable?); returning anyway"
            );
        }
        tracing::info!(group = %shared.group_id, "consumer stopped");
        Ok(())
    }
}

/// The configuration's secret values, to scrub from error text.
fn secrets_of(config: &KafkaConfig) -> Vec<String> {
    config
        .sasl_password
        .iter()
        .map(|p| p.expose().to_owned())
        .chain(
            config
                .properties
                .iter()
                .filter(|(name, _)| is_secret_property(name))
                .map(|(_, value)| value.clone()),
        )
        .filter(|s| !s.is_empty())
        .collect()
}

fn create_consumer(
    config: &KafkaConfig,
    shared: &Arc<Shared>,
) -> Result<BaseConsumer<RuntimeContext>> {
    let settings = &shared.settings;
    let mut client = config.client_config();
    client
        .set("group.id", &*shared.group_id)
        .set(
            "auto.offset.reset",
            match settings.offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        )
        // Offsets are stored by the runtime only after a record was handled, and
        // committed in the background from what was stored: at-least-once.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            settings.commit_interval.as_millis().to_string(),
        )
        .set("enable.partition.eof", "false")
        .set(
            "queued.min.messages",
            settings.max_in_flight_per_partition.to_string(),
        )
        // When a partition's queue is full, librdkafka waits this long before fetching for
        // it again (1 s by default), which would cap a small queue at a few records per
        // millisecond; a short wait keeps the queue topped up.
        .set("fetch.queue.backoff.ms", "5")
        .set(
            "fetch.wait.max.ms",
            settings.fetch_max_wait.as_millis().to_string(),
        );
    for (name, value) in &settings.properties {
        client.set(name, value);
    }
    client
        .create_with_context(RuntimeContext {
            shared: Arc::clone(shared),
            consumer: OnceLock::new(),
        })
        .map_err(|e| client_error("consumer", e))
}

/// Extra time, beyond the shutdown timeout, for the final commit and leaving the group.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long one poll waits for a record; also how often offsets are stored when idle.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// What the poll thread, the rebalance callbacks and the workers share.
struct Shared {
    group_id: Arc<str>,
    routes: HashMap<&'static str, Arc<dyn SpawnWorker>>,
    settings: ConsumerSettings,
    env: Arc<WorkerEnv>,
    runtime: tokio::runtime::Handle,
    workers: Mutex<HashMap<(Arc<str>, i32), Worker>>,
    stopping: AtomicBool,
}

/// The poll thread's view of one partition's worker.
struct Worker {
    strays: mpsc::UnboundedSender<OwnedMessage>,
    state: Arc<PartitionState>,
}

type SharedConsumer = Arc<BaseConsumer<RuntimeContext>>;

impl Shared {
    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, i32), Worker>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives each newly assigned partition its own queue and worker. Runs in the rebalance
    /// callback right after librdkafka's assign, before any record of it is fetched.
    fn start_workers(&self, consumer: &SharedConsumer, assigned: &TopicPartitionList) {
        let mut workers = self.workers();
        for element in assigned.elements() {
            let Some((topic, route)) = self.routes.get_key_value(element.topic()) else {
                continue;
            };
            let topic: Arc<str> = Arc::from(*topic);
            let partition = element.partition();
            let key = (Arc::clone(&topic), partition);
            if workers.contains_key(&key) {
                continue;
            }
            let queue = consumer.split_partition_queue(&topic, partition);
            if queue.is_none() {
                tracing::warn!(%topic, partition, "cannot split the partition queue; its records come through the main queue");
            }
            let state = Arc::new(PartitionState::new(topic, partition));
            let (strays, stray_receiver) = mpsc::unbounded_channel();
            Arc::clone(route).spawn_worker(
                &self.runtime,
                WorkerArgs {
                    queue,
                    strays: stray_receiver,
                    consumer: Arc::clone(consumer),
                    state: Arc::clone(&state),
                    env: Arc::clone(&self.env),
                },
            );
            tracing::debug!(topic = %state.topic, partition, "partition assigned");
            workers.insert(key, Worker { strays, state });
        }
    }

    /// Stops the workers of `revoked` (all when `None`): records being handled may finish
    /// and store their offsets until `deadline`; then the stored offsets are committed
    /// synchronously, before the partitions are given up.
    fn stop_workers(
        &self,
        consumer: &BaseConsumer<RuntimeContext>,
        revoked: Option<&TopicPartitionList>,
        deadline: Instant,
    ) {
        let stopping: Vec<Worker> = {
            let mut workers = self.workers();
            match revoked {
                None => workers.drain().map(|(_, w)| w).collect(),
                Some(list) => list
                    .elements()
                    .iter()
                    .filter_map(|e| workers.remove(&(Arc::from(e.topic()), e.partition())))
                    .collect(),
            }
        };
        if stopping.is_empty() {
            return;
        }
        for worker in &stopping {
            if !worker.state.close(deadline) {
                tracing::warn!(
                    topic = %worker.state.topic,
                    partition = worker.state.partition,
                    group = %self.group_id,
                    "handler still running after the deadline; its record stays uncommitted and may be handled again"
                );
            }
        }
        commit_stored(consumer, &self.group_id);
    }

    /// Hands a record that arrived through the consumer's main queue to its worker.
    fn route_stray(&self, message: OwnedMessage) {
        let workers = self.workers();
        let key = (Arc::<str>::from(message.topic()), message.partition());
        match workers.get(&key) {
            Some(worker) => {
                let _ = worker.strays.send(message);
            }
            None => tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                "record for a partition without a worker; it will be fetched again"
            ),
        }
    }
}

fn commit_stored(consumer: &BaseConsumer<RuntimeContext>, group_id: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing was stored since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(group = %group_id, %error, "committing offsets failed"),
    }
}

/// The poll thread: serves rebalances and the consumer's main queue (records reach the
/// partition workers through their own queues), until the runtime stops; then it stops
/// the workers, commits, and closes the consumer.
fn poll_loop(consumer: SharedConsumer, shared: &Shared) {
    while !shared.stopping.load(Ordering::Acquire) {
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => shared.route_stray(message.detach()),
            Some(Err(error)) => tracing::warn!(group = %shared.group_id, %error, "poll failed"),
            None => {}
        }
    }
    let deadline = Instant::now() + shared.settings.shutdown_timeout;
    shared.stop_workers(&consumer, None, deadline);
    consumer.unsubscribe();
    // Workers hold the consumer through their partition queues; they let go as they end.
    // Closing (leaving the group) happens when the last handle drops, here if in time.
    let wait_until = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&consumer) > 1 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(consumer);
}

/// Connects librdkafka's rebalance callbacks (run on the poll thread) to the workers.
struct RuntimeContext {
    shared: Arc<Shared>,
    /// The consumer itself, set right after creation, to split partition queues.
    consumer: OnceLock<Weak<BaseConsumer<RuntimeContext>>>,
}

impl ClientContext for RuntimeContext {}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            tracing::debug!(group = %self.shared.group_id, partitions = revoked.count(), "partitions revoked");
            let deadline = Instant::now() + self.shared.settings.revoke_timeout;
            self.shared.stop_workers(consumer, Some(revoked), deadline);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => match self.consumer.get().and_then(Weak::upgrade) {
                Some(consumer) => self.shared.start_workers(&consumer, assigned),
                None => tracing::error!("consumer handle missing during assignment"),
            },
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(group = %self.shared.group_id, %error, "rebalance failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn secrets_scrubbed_from_error_text_are_the_password_and_password_like_properties() {
        let mut config = KafkaConfig::new("localhost:9092");
        config.sasl_password = Some(Secret::new("hunter2-sasl"));
        config
            .properties
            .insert("ssl.key.password".to_owned(), "hunter2-key".to_owned());
        config
            .properties
            .insert("socket.timeout.ms".to_owned(), "60000".to_owned());
        let secrets = secrets_of(&config);
        assert_eq!(secrets, ["hunter2-sasl", "hunter2-key"]);
        let scrubbed = crate::dead_letter::redact(
            "login with hunter2-sasl failed; key hunter2-key; timeout 60000",
            secrets.iter().map(String::as_str),
        );
        assert_eq!(
            scrubbed,
            "login with <redacted> failed; key <redacted>; timeout 60000"
        );
    }
}

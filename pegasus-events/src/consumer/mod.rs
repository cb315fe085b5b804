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
//! - **Bounded memory.** librdkafka fetches ahead for a partition until its queue holds
//!   [`max_in_flight_per_partition`](ConsumerSettings::max_in_flight_per_partition) records
//!   (`queued.min.messages`, a refill threshold: one fetch response, at most
//!   `fetch.message.max.bytes`, 1 MiB by default, can overshoot it), and never beyond
//!   `queued.max.messages.kbytes` (64 MiB by default) per partition queue, plus the at
//!   most 64 records its worker took from the queue and has not handled yet. Records that
//!   reach the consumer's main queue before their partition has its own queue go to a
//!   channel bounded to the same count. Memory grows with the assigned partitions, not
//!   with the backlog.
//! - **No allocation per record** in the runtime beyond decoding: each partition has its
//!   own librdkafka queue, read up to 64 records at a time (no event object and no
//!   allocation per record) by a worker that is generic over the handler, and the
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

pub(crate) mod dispatch;
mod handler;
mod health;
mod native_queue;
mod partition;
mod retry;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::{OnceLock, Weak};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::connection::{check_brokers, ClientWatch, Watching};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

pub use handler::{EventContext, EventHandler, FailureKind, HandlerError};
pub use health::{ConsumerHealth, ConsumerStatus};
pub use retry::RetryPolicy;

use crate::config::{client_error, shown_properties, KafkaConfig};
use crate::dead_letter::{self, DeadLetterWriter, DEFAULT_TOPIC};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::idempotency::{DynIdempotencyStore, IdempotencyStore};
use dispatch::{panic_message, DynRecordHandler, Mixed, Typed};
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
#[derive(Clone, PartialEq)]
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
    /// How long one attempt of a handler may take: 60 s. A handler still running then is
    /// dropped (its future is cancelled, never left running beside a new attempt) and the
    /// attempt counts as a transient failure, retried by the retry policy, so a hung call
    /// cannot stall its partition. `None` lets a handler take as long as it likes.
    /// [`HandlerSettings::timeout`] overrides it per handler. The time counts from the
    /// handler's first `.await` that waits: a timeout can only end a call at a wait, so
    /// work done before the first one was never bounded by it.
    pub handler_timeout: Option<Duration>,
    /// librdkafka properties for the consumer only (e.g. `fetch.min.bytes`), on top of
    /// `KafkaConfig::properties`, which every client gets: none. The properties the
    /// runtime's guarantees depend on ([`RUNTIME_PROPERTIES`]) are refused, and so are
    /// those with a typed setting.
    pub properties: Vec<(String, String)>,
}

/// librdkafka consumer properties the runtime sets itself and a user may not override:
/// the group, and the offset handling that at-least-once rests on (turning
/// `enable.auto.offset.store` on, for one, would commit records before they are
/// handled). The typed settings cover the others: `auto.offset.reset` is
/// [`ConsumerSettings::offset_reset`], `auto.commit.interval.ms` is
/// [`ConsumerSettings::commit_interval`], `queued.min.messages` is
/// [`ConsumerSettings::max_in_flight_per_partition`], `fetch.wait.max.ms` is
/// [`ConsumerSettings::fetch_max_wait`].
pub const RUNTIME_PROPERTIES: &[&str] = &[
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
    "auto.commit.interval.ms",
    "queued.min.messages",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "statistics.interval.ms",
];

impl std::fmt::Debug for ConsumerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<(&str, &str)> =
            shown_properties(self.properties.iter().map(|(k, v)| (k, v))).collect();
        f.debug_struct("ConsumerSettings")
            .field("offset_reset", &self.offset_reset)
            .field(
                "max_in_flight_per_partition",
                &self.max_in_flight_per_partition,
            )
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("fetch_max_wait", &self.fetch_max_wait)
            .field("commit_interval", &self.commit_interval)
            .field("retry", &self.retry)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("handler_timeout", &self.handler_timeout)
            .field("properties", &properties)
            .finish()
    }
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
            handler_timeout: Some(DEFAULT_HANDLER_TIMEOUT),
            properties: Vec::new(),
        }
    }
}

/// [`ConsumerSettings::handler_timeout`]'s default.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(60);

impl ConsumerSettings {
    /// Checks every setting; an error names the field. `Duration::MAX` is valid for the
    /// shutdown, revoke and handler timeouts (wait for as long as it takes); the settings
    /// that become librdkafka properties are checked against librdkafka's ranges here, so
    /// the error names our field rather than librdkafka's property.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &str, reason: &str| {
            Err(Error::Config {
                field: format!("consumer.{field}"),
                reason: reason.to_owned(),
            })
        };
        self.retry.validate("consumer.retry")?;
        crate::config::validate_topic_name("consumer.dead_letter_topic", &self.dead_letter_topic)?;
        if !(1..=10_000_000).contains(&self.max_in_flight_per_partition) {
            return invalid(
                "max_in_flight_per_partition",
                "must be from 1 to 10,000,000",
            );
        }
        if self.commit_interval.is_zero() || self.commit_interval > Duration::from_secs(86_400) {
            return invalid(
                "commit_interval",
                "must be more than zero and at most 24 hours",
            );
        }
        if self.fetch_max_wait > Duration::from_secs(300) {
            return invalid("fetch_max_wait", "must be at most 300 s");
        }
        if self.handler_timeout.is_some_and(|t| t.is_zero()) {
            return invalid(
                "handler_timeout",
                "must be more than zero (None lets handlers take as long as they like)",
            );
        }
        for (name, _) in &self.properties {
            crate::config::validate_property_name("consumer.properties", name)?;
            if RUNTIME_PROPERTIES.contains(&name.as_str()) {
                return invalid(
                    &format!("properties.{name}"),
                    "is set by the consumer runtime (its at-least-once guarantee depends on \
                     it) or by a typed ConsumerSettings field; remove it",
                );
            }
        }
        Ok(())
    }
}

/// Settings of one handler, overriding the consumer's ([`ConsumerBuilder::handler_with`]).
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use]
pub struct HandlerSettings {
    retry: Option<RetryPolicy>,
    timeout: Option<Option<Duration>>,
}

impl HandlerSettings {
    /// The consumer's settings, overriding nothing yet.
    pub fn new() -> Self {
        HandlerSettings::default()
    }

    /// This handler's retry policy instead of [`ConsumerSettings::retry`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// This handler's attempt timeout instead of [`ConsumerSettings::handler_timeout`];
    /// `None` lets it take as long as it likes.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn validate(&self, event_type: &str) -> Result<()> {
        if let Some(retry) = &self.retry {
            retry.validate(&format!("retry policy of `{event_type}`"))?;
        }
        if self.timeout.is_some_and(|t| t.is_some_and(|t| t.is_zero())) {
            return Err(Error::Config {
                field: format!("timeout of `{event_type}`"),
                reason: "must be more than zero (None lets the handler take as long as it likes)"
                    .to_owned(),
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
    encryption: Option<crate::encryption::Encryption>,
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
        self.register::<E, H>(handler, HandlerSettings::new())
    }

    /// Registers `handler` like [`ConsumerBuilder::handler`], with its own retry policy.
    pub fn handler_with_retry<E: Event, H: EventHandler<E>>(
        self,
        handler: H,
        retry: RetryPolicy,
    ) -> Self {
        self.handler_with::<E, H>(handler, HandlerSettings::new().retry(retry))
    }

    /// Registers `handler` like [`ConsumerBuilder::handler`], with settings of its own
    /// (retry policy, attempt timeout).
    pub fn handler_with<E: Event, H: EventHandler<E>>(
        mut self,
        handler: H,
        settings: HandlerSettings,
    ) -> Self {
        if let Err(error) = settings.validate(E::NAME) {
            self.error.get_or_insert(error);
        }
        self.register::<E, H>(handler, settings)
    }

    /// Skips events this consumer group handled before, as `store` remembers them, and
    /// marks each event processed once its handler succeeded (see
    /// [`crate::idempotency`]).
    pub fn idempotency(mut self, store: impl IdempotencyStore) -> Self {
        self.idempotency = Some(Arc::new(store));
        self
    }

    /// Decrypts the `#[event(encrypted)]` fields of the records it reads with
    /// `encryption` ([`crate::encryption`]). Without it, a record of an event type with
    /// such fields is a decode error ([`Error::EncryptionNotConfigured`]) and goes to the
    /// dead-letter topic.
    pub fn encryption(mut self, encryption: crate::encryption::Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    fn register<E: Event, H: EventHandler<E>>(
        mut self,
        handler: H,
        settings: HandlerSettings,
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
        let typed = Arc::new(Typed::<E, H>::new(
            handler,
            settings.retry,
            settings.timeout,
        ));
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
            health: ConsumerHealth::new(ClientWatch::new(
                &self.config,
                "consumer",
                Watching::Client,
            )),
            config: self.config,
            group_id: group_id.into(),
            routes,
            settings: self.settings,
            idempotency: self.idempotency,
            encryption: self.encryption,
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
    /// Also holds the client's watch, which the runtime's librdkafka callbacks report to.
    health: ConsumerHealth,
    config: KafkaConfig,
    group_id: Arc<str>,
    routes: HashMap<&'static str, Arc<dyn SpawnWorker>>,
    settings: ConsumerSettings,
    idempotency: Option<Arc<dyn DynIdempotencyStore>>,
    encryption: Option<crate::encryption::Encryption>,
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
            encryption: None,
            error: None,
        }
    }

    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The topics it handles, sorted.
    pub fn topics(&self) -> Vec<&'static str> {
        sorted_topics(&self.routes)
    }

    /// The topic its dead letters go to.
    pub fn dead_letter_topic(&self) -> &str {
        &self.settings.dead_letter_topic
    }

    /// The consumer's health, to clone and ask from a readiness check while it runs:
    /// [`ConsumerStatus::Running`] once it subscribed with its brokers reachable,
    /// [`ConsumerStatus::BrokersUnreachable`] during an outage.
    pub fn health(&self) -> ConsumerHealth {
        self.health.clone()
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes, then shuts down gracefully: fetching stops, records
    /// being handled may finish within the shutdown timeout, their offsets are committed,
    /// and the consumer leaves the group. Every task the consumer started has ended (or,
    /// past the deadline, was aborted) when this returns.
    ///
    /// It first waits for a broker at the bootstrap address to answer, at most
    /// [`KafkaConfig::connect_timeout`], and otherwise returns
    /// [`Error::BrokersUnreachable`] naming the address and the cause. Once running, a
    /// broker outage is waited out: logged when it starts, summarised every 30 s, logged
    /// when it ends, and shown by [`EventConsumer::health`].
    ///
    /// Returns [`Error::TaskFailed`] when a partition worker or the poll thread died (a
    /// panic outside a handler, such as in an [`IdempotencyStore`]): the consumer then
    /// stops the same graceful way instead of running on with a stalled partition, and
    /// the record that worker held is delivered again after a restart.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let health = self.health.clone();
        let result = self.run_to_end(shutdown).await;
        health.stopped();
        result
    }

    /// [`EventConsumer::run_until`], before the health says it stopped.
    async fn run_to_end(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let EventConsumer {
            health,
            config,
            group_id,
            routes,
            settings,
            idempotency,
            encryption,
        } = self;
        check_brokers(&config, "consumer").await?;
        let (failures, mut worker_failures) = mpsc::unbounded_channel();
        let env = Arc::new(WorkerEnv {
            group_id: Arc::clone(&group_id),
            client_id: config.client_id.as_str().into(),
            dead_letters: DeadLetterWriter::new(&config, &settings.dead_letter_topic)?,
            secrets: secrets_of(&config, &settings),
            settings: settings.clone(),
            idempotency,
            encryption,
            failures,
        });
        let shared = Arc::new(Shared {
            watch: health.watch().clone(),
            health: health.clone(),
            metrics: crate::metrics::ConsumerMetrics::new(Arc::clone(&group_id)),
            group_id,
            routes,
            settings,
            env,
            runtime: tokio::runtime::Handle::current(),
            workers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
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
        health.running();

        // The poll thread's end: `Ok(Some(error))` when the broker refused the group or a
        // topic, `Err(panic message)` when it panicked.
        let (finished_tx, mut finished_rx) =
            oneshot::channel::<std::result::Result<Option<Error>, String>>();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("pegasus-poll-{}", shared.group_id))
            .spawn(move || {
                let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    poll_loop(consumer, &thread_shared)
                }));
                let _ = finished_tx
                    .send(polled.map_err(|panic| panic_message("the poll loop", &*panic)));
            })
            .map_err(|source| Error::Spawn {
                what: "the consumer's poll thread",
                source,
            })?;

        let mut failure = None;
        let mut poll_ended = None;
        tokio::select! {
            () = shutdown => {}
            ended = &mut finished_rx => poll_ended = Some(ended),
            Some(error) = worker_failures.recv() => failure = Some(error),
        }
        shared.stopping.store(true, Ordering::Release);
        // The poll thread closes workers within the shutdown timeout, then commits and
        // leaves the group; closing may hang when the broker is gone, so bound the wait.
        let grace = shared.settings.shutdown_timeout.saturating_add(CLOSE_GRACE);
        if poll_ended.is_none() {
            match tokio::time::timeout(grace, &mut finished_rx).await {
                Ok(ended) => poll_ended = Some(ended),
                Err(_) => tracing::warn!(
                    group = %shared.group_id,
                    waited_ms = crate::limits::millis(grace),
                    "consumer did not close in time (broker unreachable?); returning anyway"
                ),
            }
        }
        let poll_failure = match poll_ended {
            Some(Ok(Err(panic))) => Some(panic),
            Some(Ok(Ok(Some(refused)))) => {
                tracing::error!(group = %shared.group_id, error = %refused, "consumer stopped: the broker refused it");
                failure.get_or_insert(refused);
                None
            }
            // The thread ended without a word: it cannot, short of an abort.
            Some(Err(_)) => Some("ended without reporting".to_owned()),
            Some(Ok(Ok(None))) | None => None,
        };
        if let Some(reason) = poll_failure {
            let reason =
                dead_letter::redact(&reason, shared.env.secrets.iter().map(String::as_str));
            tracing::error!(group = %shared.group_id, %reason, "the consumer's poll thread died");
            failure.get_or_insert(Error::TaskFailed {
                task: "the consumer's poll thread".to_owned(),
                reason,
            });
        }
        shared.stop_tasks().await;
        if let Ok(error) = worker_failures.try_recv() {
            failure.get_or_insert(error);
        }
        tracing::info!(group = %shared.group_id, "consumer stopped");
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The configuration's secret values, to scrub from error text.
fn secrets_of(config: &KafkaConfig, settings: &ConsumerSettings) -> Vec<String> {
    config.secret_values(settings.properties.iter().map(|(k, v)| (k, v)))
}

fn create_consumer(
    config: &KafkaConfig,
    shared: &Arc<Shared>,
) -> Result<BaseConsumer<RuntimeContext>> {
    let settings = &shared.settings;
    let mut client = config.client_config()?;
    // Before the runtime's own settings, so these could never override them even if
    // validation let one through.
    for (name, value) in &settings.properties {
        client.set(name, value);
    }
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
    // The lag gauges come from librdkafka's statistics; without metrics nothing reads them.
    if cfg!(feature = "metrics") && !config.statistics_interval.is_zero() {
        client.set(
            "statistics.interval.ms",
            config.statistics_interval.as_millis().to_string(),
        );
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
/// How long closed workers get to end their tasks, and then aborted ones to unwind.
const TASK_GRACE: Duration = Duration::from_secs(2);
/// How often the poll thread asks the brokers for metadata while all of them are down.
const OUTAGE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long that request may take.
const OUTAGE_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
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
    /// Records why brokers cannot be reached, logs outages and librdkafka's lines.
    watch: ClientWatch,
    /// What `EventConsumer::health` reports; told the assignment after each rebalance.
    health: ConsumerHealth,
    /// The consumer's metric handles; the lag gauges are set from librdkafka's statistics.
    metrics: crate::metrics::ConsumerMetrics,
    group_id: Arc<str>,
    routes: HashMap<&'static str, Arc<dyn SpawnWorker>>,
    settings: ConsumerSettings,
    env: Arc<WorkerEnv>,
    runtime: tokio::runtime::Handle,
    workers: Mutex<HashMap<(Arc<str>, i32), Worker>>,
    /// Every partition worker's task, so none outlives the consumer.
    tasks: Mutex<JoinSet<()>>,
    stopping: AtomicBool,
}

/// The poll thread's view of one partition's worker.
struct Worker {
    strays: mpsc::Sender<OwnedMessage>,
    state: Arc<PartitionState>,
}

type SharedConsumer = Arc<BaseConsumer<RuntimeContext>>;

impl Shared {
    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, i32), Worker>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every worker task before the consumer returns. The poll thread closed them
    /// already, unless it died or is still closing past the grace period: those are
    /// closed now without waiting, and a task still running after a short wait (a handler
    /// past its deadline) is aborted, which drops the handler's future.
    async fn stop_tasks(&self) {
        for (_, worker) in self.workers().drain() {
            worker.state.close(Some(Instant::now()));
        }
        let mut tasks = std::mem::take(&mut *self.tasks());
        let ended = tokio::time::timeout(TASK_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if ended.is_err() {
            tracing::warn!(
                group = %self.group_id,
                tasks = tasks.len(),
                "partition workers still running past the deadline; aborting them"
            );
            tasks.abort_all();
            let _ = tokio::time::timeout(TASK_GRACE, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        }
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
            // Records the worker took from its queue and has not started: they count as
            // prefetched, like those still in librdkafka's queue.
            let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let queue =
                native_queue::BatchQueue::split(consumer, &topic, partition, Arc::clone(&taken));
            if queue.is_none() {
                tracing::warn!(%topic, partition, "cannot split the partition queue; its records come through the main queue");
            }
            let metrics = self.metrics.partition(&topic, partition, &taken);
            let state = Arc::new(PartitionState::new(topic, partition, metrics));
            // Bounded like the partition's own queue: a worker that falls behind holds the
            // poll thread back instead of letting records pile up in memory.
            let (strays, stray_receiver) = mpsc::channel(self.settings.max_in_flight_per_partition);
            let mut tasks = self.tasks();
            // Reap the tasks of partitions revoked earlier, so the set does not grow.
            while tasks.try_join_next().is_some() {}
            Arc::clone(route).spawn_worker(
                &mut tasks,
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
    /// and store their offsets until `deadline` (for as long as they take without one);
    /// then the stored offsets are committed synchronously, before the partitions are
    /// given up.
    fn stop_workers(
        &self,
        consumer: &BaseConsumer<RuntimeContext>,
        revoked: Option<&TopicPartitionList>,
        deadline: Option<Instant>,
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
            // This consumer stops reporting the partition's lag at once: from here on the
            // figures are its next owner's.
            self.metrics
                .revoked(&worker.state.topic, worker.state.partition);
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

    /// Hands a record that arrived through the consumer's main queue to its worker,
    /// waiting while the worker's bounded queue is full (backpressure: the poll thread
    /// reads no further meanwhile). A worker that ended drops it: its offset was never
    /// stored, so the partition's next owner reads it again.
    fn route_stray(&self, message: OwnedMessage) {
        let key = (Arc::<str>::from(message.topic()), message.partition());
        let sender = self.workers().get(&key).map(|w| w.strays.clone());
        match sender {
            Some(strays) => {
                let _ = strays.blocking_send(message);
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
fn poll_loop(consumer: SharedConsumer, shared: &Shared) -> Option<Error> {
    // A topic to ask the brokers about during an outage, to notice its end.
    let probe_topic = shared.routes.keys().next().copied();
    let mut last_probe = Instant::now();
    let mut refused = None;
    while !shared.stopping.load(Ordering::Acquire) {
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => {
                shared.watch.reachable();
                shared.route_stray(message.detach());
            }
            // The client's watch reported it already, once per outage rather than per poll.
            Some(Err(error)) if crate::connection::is_connection_error(&error) => {}
            // librdkafka reports a refused group or topic once and then retries quietly
            // forever; no retry grants an ACL, so the consumer stops and says why.
            Some(Err(error)) if refusal(&error).is_some() => {
                refused = Some(shared.refused(&consumer, &error));
                break;
            }
            Some(Err(error)) => shared.watch.log_deduplicated(
                tracing::Level::WARN,
                "POLL",
                &format!("group {}: poll failed: {error}", shared.group_id),
            ),
            None => {}
        }
        if shared.watch.is_down() && last_probe.elapsed() >= OUTAGE_PROBE_INTERVAL {
            last_probe = Instant::now();
            // Nothing else tells that an outage ended while the topics are quiet: a
            // metadata answer does. It costs one request a second, during outages only.
            if consumer
                .fetch_metadata(probe_topic, OUTAGE_PROBE_TIMEOUT)
                .is_ok()
            {
                shared.watch.reachable();
            } else {
                shared.watch.summarise_if_due();
            }
        }
    }
    let deadline = crate::limits::deadline(shared.settings.shutdown_timeout);
    shared.stop_workers(&consumer, None, deadline);
    consumer.unsubscribe();
    // Workers hold the consumer through their partition queues; they let go as they end.
    // Closing (leaving the group) happens when the last handle drops, here if in time.
    let wait_until = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&consumer) > 1 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(consumer);
    refused
}

/// The topics a consumer handles, sorted.
fn sorted_topics(routes: &HashMap<&'static str, Arc<dyn SpawnWorker>>) -> Vec<&'static str> {
    let mut topics: Vec<&'static str> = routes.keys().copied().collect();
    topics.sort_unstable();
    topics
}

/// The resource kind a poll error says the broker refused, if it is a refusal.
fn refusal(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    match error.rdkafka_error_code()? {
        code @ (RDKafkaErrorCode::GroupAuthorizationFailed
        | RDKafkaErrorCode::TopicAuthorizationFailed) => Some(code),
        _ => None,
    }
}

impl Shared {
    /// The [`Error::NotAuthorized`] a refusal stands for. librdkafka's error names no
    /// topic, so a refused topic is found by asking for each one's metadata (which the
    /// broker refuses for a topic the principal may not describe).
    fn refused(&self, consumer: &BaseConsumer<RuntimeContext>, error: &KafkaError) -> Error {
        use crate::acl::{AclOperation, AclResource};
        if refusal(error) == Some(RDKafkaErrorCode::GroupAuthorizationFailed) {
            return self.watch.not_authorized(
                AclOperation::Read,
                AclResource::Group(self.group_id.to_string()),
            );
        }
        let topics = sorted_topics(&self.routes);
        let denied = topics.iter().find(|topic| {
            consumer
                .fetch_metadata(Some(topic), Duration::from_secs(2))
                .is_ok_and(|metadata| {
                    metadata.topics().iter().any(|t| {
                        t.error().map(RDKafkaErrorCode::from)
                            == Some(RDKafkaErrorCode::TopicAuthorizationFailed)
                    })
                })
        });
        // Not found (the metadata requests failed too): name every topic it reads.
        let topic = denied.map_or_else(|| topics.join(", "), |topic| (*topic).to_owned());
        self.watch
            .not_authorized(AclOperation::Read, AclResource::Topic(topic))
    }
}

/// Connects librdkafka's rebalance callbacks (run on the poll thread) to the workers.
struct RuntimeContext {
    shared: Arc<Shared>,
    /// The consumer itself, set right after creation, to split partition queues.
    consumer: OnceLock<Weak<BaseConsumer<RuntimeContext>>>,
}

impl ClientContext for RuntimeContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        self.shared.watch.log(level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.watch.error(error, reason);
    }

    /// librdkafka's statistics, every `statistics_interval`: the lag gauges.
    #[cfg(feature = "metrics")]
    fn stats_raw(&self, statistics: &[u8]) {
        self.shared.metrics.statistics(statistics);
    }
}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            tracing::debug!(group = %self.shared.group_id, partitions = revoked.count(), "partitions revoked");
            let deadline = crate::limits::deadline(self.shared.settings.revoke_timeout);
            self.shared.stop_workers(consumer, Some(revoked), deadline);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => match self.consumer.get().and_then(Weak::upgrade) {
                Some(consumer) => {
                    self.shared.start_workers(&consumer, assigned);
                    // The workers are the partitions handled now, whether the assignment
                    // was the whole set (eager) or an addition (cooperative).
                    self.shared.health.assigned(self.shared.workers().len());
                }
                None => tracing::error!("consumer handle missing during assignment"),
            },
            Rebalance::Revoke(_) => self.shared.health.assigned(self.shared.workers().len()),
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
        let mut settings = ConsumerSettings::default();
        settings.properties.push((
            "sasl.oauthbearer.client.secret".to_owned(),
            "hunter2-oauth".to_owned(),
        ));
        let secrets = secrets_of(&config, &settings);
        assert_eq!(secrets, ["hunter2-sasl", "hunter2-key", "hunter2-oauth"]);
        let scrubbed = crate::dead_letter::redact(
            "login with hunter2-sasl failed; key hunter2-key; timeout 60000",
            secrets.iter().map(String::as_str),
        );
        assert_eq!(
            scrubbed,
            "login with <redacted> failed; key <redacted>; timeout 60000"
        );
    }

    #[test]
    fn properties_the_runtime_owns_are_refused_by_name() {
        for name in RUNTIME_PROPERTIES {
            let settings = ConsumerSettings {
                properties: vec![((*name).to_owned(), "true".to_owned())],
                ..ConsumerSettings::default()
            };
            match settings.validate() {
                Err(Error::Config { field, .. }) => {
                    assert_eq!(field, format!("consumer.properties.{name}"));
                }
                other => panic!("{name} accepted: {other:?}"),
            }
        }
        let fine = ConsumerSettings {
            properties: vec![("fetch.min.bytes".to_owned(), "1".to_owned())],
            ..ConsumerSettings::default()
        };
        assert!(fine.validate().is_ok());
        let built = EventConsumer::builder(KafkaConfig::new("localhost:9092"))
            .settings(ConsumerSettings {
                properties: vec![("enable.auto.offset.store".to_owned(), "true".to_owned())],
                ..ConsumerSettings::default()
            })
            .handler::<crate::property_tests::UserCreatedForTests, _>(NoOp)
            .build();
        assert!(
            matches!(&built, Err(Error::Config { field, .. }) if field.contains("enable.auto.offset.store")),
            "{built:?}"
        );
    }

    struct NoOp;

    impl EventHandler<crate::property_tests::UserCreatedForTests> for NoOp {
        async fn handle(
            &self,
            _: crate::property_tests::UserCreatedForTests,
            _: &EventContext<'_>,
        ) -> std::result::Result<(), HandlerError> {
            Ok(())
        }
    }

    #[test]
    fn consumer_settings_debug_hides_secret_properties() {
        let settings = ConsumerSettings {
            properties: vec![
                (
                    "sasl.oauthbearer.client.secret".to_owned(),
                    "hunter2-oauth".to_owned(),
                ),
                ("fetch.min.bytes".to_owned(), "4096".to_owned()),
            ],
            ..ConsumerSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2-oauth"), "{shown}");
        assert!(shown.contains("4096") && shown.contains("***"), "{shown}");
    }

    #[test]
    fn zero_timeouts_and_bad_topic_names_are_refused_and_duration_max_is_accepted() {
        let refused = |settings: ConsumerSettings, field: &str| match settings.validate() {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        };
        refused(
            ConsumerSettings {
                handler_timeout: Some(Duration::ZERO),
                ..Default::default()
            },
            "consumer.handler_timeout",
        );
        refused(
            ConsumerSettings {
                dead_letter_topic: "dlq events".into(),
                ..Default::default()
            },
            "consumer.dead_letter_topic",
        );
        refused(
            ConsumerSettings {
                fetch_max_wait: Duration::MAX,
                ..Default::default()
            },
            "consumer.fetch_max_wait",
        );
        let forever = ConsumerSettings {
            shutdown_timeout: Duration::MAX,
            revoke_timeout: Duration::MAX,
            handler_timeout: Some(Duration::MAX),
            ..ConsumerSettings::default()
        };
        assert!(forever.validate().is_ok());
    }
}

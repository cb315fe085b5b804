//! The transactional outbox: an event is stored in the same database transaction as the
//! business write that caused it, and a relay publishes it afterwards.
//!
//! # Guarantees
//!
//! - **Atomic with the business write.** [`PostgresOutbox::enqueue`] and
//!   [`SqliteOutbox::enqueue`] insert the encoded event (topic, key, the `ce_` headers of
//!   `docs/wire-format.md`, payload) inside the caller's transaction: if it rolls back, the event
//!   never existed; if it commits, the event will be published (or, should the broker
//!   refuse it for good, dead-lettered).
//! - **Published at least once, marked only after the acknowledgement.** The relay marks a
//!   row published only after the broker acknowledged it (`acks=all`, idempotent producer).
//!   A crash between the acknowledgement and the mark publishes the row again, with the
//!   same `ce_id`, so idempotent consumers drop the duplicate.
//! - **Order per key, across outages.** Rows are published in insertion order by one
//!   active relay at a time, at most two batches in flight; the idempotent producer keeps
//!   that order within each partition, so events with the same key arrive in the order
//!   they were committed. The relay's producer has no delivery timeout, so during a broker
//!   outage no record fails while a later one of its partition gets through; a batch that
//!   failed anyway settles the batch behind it before any row is read again. A record the
//!   broker refuses for good leaves the order for the dead-letter topic (below); when the
//!   broker refused a whole producer batch because of it (a batch larger than the topic's
//!   `max.message.bytes`, an invalid record), the other records of that batch are sent
//!   again on their own, after later records of their partition were taken.
//! - **One active relay per database, fenced.** A relay publishes only while it holds the
//!   lease; other instances wait as hot standbys. On PostgreSQL the lease is a session
//!   advisory lock, taken over the moment the holder's connection ends (a crash included).
//!   On SQLite it is a row with an expiry ([`RelaySettings::lease_ttl`]), renewed as the
//!   relay works, given up when it stops, taken over after the expiry when it crashed.
//!   Reading rows to publish and marking them are single statements that run only while
//!   the relay holds the lease (on SQLite they check the lease row names it; on PostgreSQL
//!   they run on the session holding the lock). A relay that lost the lease (paused past
//!   its expiry, its session ended), or cannot renew it, stops publishing at once: it marks
//!   nothing more, gives up its batches in flight (dropping its producer, so records
//!   librdkafka had not sent yet never are) and stands by; the holder publishes those rows
//!   again, with the same `ce_id`. Records already on the wire at that moment may still
//!   land: only the broker could fence them (Kafka transactions).
//! - **Bad rows do not block.** A row that cannot be read (malformed headers) goes to the
//!   dead-letter topic with reason `decode`; a row whose record the broker refuses for good
//!   (too large, not authorised, an invalid topic: `docs/wire-format.md` section 7 lists
//!   the errors and why) goes there with reason `publish`. Either is marked, and the round
//!   does not fail, so the rows behind it move on at full speed, with no backoff. A row
//!   whose dead letter is refused too (a record over the producer's own
//!   `message.max.bytes` always is: the letter is larger) stays unmarked, nothing lost,
//!   and is skipped until the relay restarts; the relay logs it as an error.
//!
//! On PostgreSQL, a statement trigger on the table sends `NOTIFY pegasus_outbox`
//! (delivered on commit), and the relay wakes on it, so an event is published within
//! milliseconds of the commit; polling is the fallback. On SQLite, a transaction that
//! enqueued through a [`SqliteOutbox`] (or a clone) wakes that outbox's relays when it
//! commits (a commit hook), so events enqueued in the relay's own process are published
//! within milliseconds too; the relay polls for events enqueued by other processes.
//! Published rows are marked, and deleted after [`RelaySettings::retention`], or deleted at
//! once with a retention of zero. The tables are created and migrated by the library
//! ([`crate::migrations`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

use crate::config::{client_error, KafkaConfig};
use crate::connection::{check_brokers, ClientWatch, WatchedProducer, Watching};
use crate::dead_letter::DeadLetterReason;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::wire::{self, OutgoingHeaders, PublishMetadata};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PostgresOutbox;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteOutbox;

/// An event encoded for the outbox table, exactly as the producer would put it on the wire.
pub(crate) struct EncodedEvent {
    pub(crate) event_id: Uuid,
    pub(crate) topic: &'static str,
    pub(crate) key: String,
    pub(crate) payload: Vec<u8>,
    /// The headers as a JSON array of `[name, value]` pairs, in wire order.
    pub(crate) headers: String,
}

/// Encodes `event` for an outbox row; a serialization failure is the typed
/// [`Error::Serialize`], returned before anything is written. The `#[event(encrypted)]`
/// fields are encrypted with `encryption` here, so the row holds no plaintext of them;
/// without it, such an event is refused ([`Error::EncryptionNotConfigured`]).
pub(crate) async fn encode<E: Event>(
    source: &str,
    base_event_fields: bool,
    event: &E,
    metadata: Option<&PublishMetadata>,
    encryption: Option<&crate::encryption::Encryption>,
) -> Result<EncodedEvent> {
    let mut payload = Vec::with_capacity(256);
    // A constant per event type: events without encrypted fields take the first arm only.
    let resolved = if E::ENCRYPTED_FIELDS.is_empty() {
        wire::encode_event(event, source, metadata, base_event_fields, &mut payload)?
    } else {
        crate::encryption::encode_event(
            encryption,
            "the outbox was given no encryption keys (its `with_encryption`); nothing was stored",
            event,
            source,
            metadata,
            base_event_fields,
            &mut payload,
        )
        .await?
    };
    let metadata = resolved.as_ref().or(metadata);
    let mut key = String::new();
    let keyed = event.write_partition_key(&mut key);
    let span = crate::telemetry::spans::create(E::TOPIC);
    let trace = crate::telemetry::current_trace(&span);
    let outgoing = OutgoingHeaders::new::<E>(source, keyed.then_some(key.as_str()), metadata)
        .with_trace(trace.as_ref());
    crate::telemetry::spans::outgoing(&span, outgoing.event_id_str(), outgoing.record_key());
    let mut pairs: Vec<(&str, String)> = Vec::with_capacity(10);
    outgoing.for_each(|name, value| pairs.push((name, value.to_owned())));
    let headers = serde_json::to_string(&pairs).map_err(|e| Error::Serialize {
        event_type: E::NAME,
        detail: e.to_string(),
    })?;
    Ok(EncodedEvent {
        event_id: outgoing.event_id(),
        topic: E::TOPIC,
        key: outgoing.record_key().to_owned(),
        payload,
        headers,
    })
}

/// One stored event, as the relay reads it (the event id travels in its `ce_id` header).
#[derive(Clone, Debug)]
pub(crate) struct OutboxRow {
    /// Its position in the outbox: rows are published in this order.
    pub(crate) id: i64,
    /// The topic to publish to.
    pub(crate) topic: String,
    /// The record key.
    pub(crate) key: Option<Vec<u8>>,
    /// The record value.
    pub(crate) payload: Vec<u8>,
    /// The headers as stored: a JSON array of `[name, value]` pairs.
    pub(crate) headers: String,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether this relay holds the lease, as [`OutboxStorage::hold_lease`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lease {
    /// Held, without a break since this relay last had it: what it sent meanwhile is still
    /// its own to mark.
    Kept,
    /// Taken just now: this relay did not hold it, or lost it in between (another relay
    /// may have published since), so what it had sent before is no longer its own.
    Taken,
    /// Another relay holds it.
    Elsewhere,
}

/// The outcome of a statement that runs only while this relay holds the lease.
#[derive(Debug)]
pub(crate) enum Fenced<T> {
    /// The relay held the lease when the statement ran; its result.
    Held(T),
    /// The relay does not hold the lease: the statement changed nothing.
    Lost,
}

/// What the relay needs from a database. Reading rows to publish and marking them are
/// fenced: each is one statement that runs only while this relay holds the lease, so a
/// relay that lost it (paused past its expiry, its session ended) neither sends rows the
/// new holder is publishing nor marks rows as its own.
pub(crate) trait OutboxStorage: Send + Sync + 'static {
    /// Whether this relay may publish now: it holds the lease (renewing it when due), or
    /// just took it.
    fn hold_lease(&self) -> BoxFuture<'_, Result<Lease>>;
    /// Gives the lease up, so a standby takes over at once (the relay is stopping).
    fn release_lease(&self) -> BoxFuture<'_, ()>;
    /// The oldest unpublished rows, at most `limit`, in id order, leaving out the id range
    /// `in_flight` (first and last id of the batch sent and not yet acknowledged) and the
    /// rows `skip`. A row committed late inside that range is read in the next round, once
    /// the range is no longer in flight: delayed by one round, never skipped.
    fn unpublished<'a>(
        &'a self,
        limit: i64,
        in_flight: Option<(i64, i64)>,
        skip: &'a [i64],
    ) -> BoxFuture<'a, Result<Fenced<Vec<OutboxRow>>>>;
    /// Marks rows published, or deletes them when `delete` (a retention of zero).
    fn mark_published<'a>(
        &'a self,
        ids: &'a [i64],
        delete: bool,
    ) -> BoxFuture<'a, Result<Fenced<()>>>;
    /// Deletes rows published more than `age` ago; returns how many.
    fn purge_published(&self, age: Duration) -> BoxFuture<'_, Result<u64>>;
    /// Returns when new rows may be there: on a notification, or after `at_most`.
    fn wait_for_rows(&self, at_most: Duration) -> BoxFuture<'_, ()>;
    /// The database, for the metrics' `store` label: `postgres` or `sqlite`.
    fn kind(&self) -> &'static str;
    /// How many rows are unpublished, and the age of the oldest in seconds (0 for none):
    /// one aggregate query over the unpublished rows' partial index, asked once per poll
    /// interval for the metrics, never per row.
    fn backlog(&self) -> BoxFuture<'_, Result<(i64, f64)>>;
}

/// Settings of the relay; defaults next to each field.
#[derive(Clone, Debug, PartialEq)]
pub struct RelaySettings {
    /// Rows read and published per round: 2,000. The relay holds at most two batches of
    /// rows in memory (one being acknowledged, the next being sent). Larger batches reach
    /// the broker in larger produce requests: in the outbox bench (2026-12-03, alternated
    /// runs of three rounds) 2,000 instead of 500 took the PostgreSQL relay from a median
    /// of 0.46 to 0.50 of the commits alone (0.52 to 0.61 deleting rows) and the broker's
    /// CPU per relayed event from 5.5-14 to 2.5-3 µs; on SQLite it made no difference
    /// measurable (0.37-0.46 either way); 5,000 was no better than 2,000. Debezium's
    /// `max.batch.size` is 2,048.
    pub batch_size: i64,
    /// How long the relay sleeps when it found nothing and no notification came: 1 s on
    /// PostgreSQL (a fallback for lost notifications), and SQLite's polling interval.
    pub poll_interval: Duration,
    /// Wait after a failed round (database or broker down), doubling up to 30 s: 200 ms.
    pub error_backoff: Duration,
    /// Published rows are deleted after this long: 7 days. Zero deletes each row as soon
    /// as it is acknowledged, instead of marking it (the cheapest for the database: on
    /// PostgreSQL a delete costs about a seventh of the update that marks a row).
    pub retention: Duration,
    /// Where rows that cannot be read, and rows the broker refuses for good, go:
    /// `dlq-events`.
    pub dead_letter_topic: String,
    /// SQLite: how long the active relay's lease lasts without renewal: 15 s. It is renewed
    /// once a third of it passed, also while the relay waits out a broker outage; a relay
    /// that crashed is replaced after at most this long (one that stops gracefully gives
    /// the lease up at once). (PostgreSQL's lease is a session advisory lock, released the
    /// moment the holder's connection ends.)
    pub lease_ttl: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch_size: 2_000,
            poll_interval: Duration::from_secs(1),
            error_backoff: Duration::from_millis(200),
            retention: Duration::from_secs(7 * 24 * 60 * 60),
            dead_letter_topic: crate::dead_letter::DEFAULT_TOPIC.to_owned(),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

impl RelaySettings {
    /// Checks every setting; an error names the field. `Duration::MAX` is valid wherever a
    /// duration is (a retention that long keeps every row).
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &str, reason: &str| {
            Err(Error::Config {
                field: format!("relay.{field}"),
                reason: reason.to_owned(),
            })
        };
        if self.batch_size < 1 {
            return invalid("batch_size", "must be at least 1");
        }
        // Zero would make the relay query the database in a loop without pause.
        if self.poll_interval.is_zero() {
            return invalid("poll_interval", "must be more than zero");
        }
        if self.error_backoff.is_zero() {
            return invalid("error_backoff", "must be more than zero");
        }
        if self.lease_ttl < Duration::from_millis(10) {
            return invalid("lease_ttl", "must be at least 10 ms");
        }
        crate::config::validate_topic_name("relay.dead_letter_topic", &self.dead_letter_topic)
    }
}

/// Publishes what the outbox holds, in order, and marks it published after the broker's
/// acknowledgement. Made by [`PostgresOutbox::relay`] or [`SqliteOutbox::relay`].
pub struct OutboxRelay {
    storage: Arc<dyn OutboxStorage>,
    /// The producer's settings, for a new producer after the lease was lost.
    producer_config: rdkafka::ClientConfig,
    /// `None` after the lease was lost, until the relay sends again.
    producer: Option<WatchedProducer>,
    watch: ClientWatch,
    check: KafkaConfig,
    delivery_timeout: Duration,
    settings: RelaySettings,
    /// Rows the broker refused for good whose dead letter it refused too: left unmarked
    /// (nothing is lost) and not read again while this relay runs.
    parked: BTreeSet<i64>,
    /// The relay's metric handles ([`crate::metrics`]).
    metrics: crate::metrics::RelayMetrics,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// At most this many rows are parked ([`OutboxRelay::parked`]); past it a row whose dead
/// letter is refused fails the round, as any failed delivery does. So many means the
/// dead-letter topic itself is refused (its size limit, its ACLs): an outage to fix, not
/// a few bad rows to step over, and the list goes into every read of the outbox.
const MAX_PARKED: usize = 1_000;

/// The consumer group written in the dead letters of the relay.
const RELAY_GROUP: &str = "outbox-relay";

/// A batch handed to the producer whose acknowledgements are not yet awaited.
struct InFlight {
    /// Every row of the batch, in id order.
    ids: Vec<i64>,
    /// Each readable row with its delivery, in id order.
    deliveries: Vec<(Sent, std::result::Result<DeliveryFuture, KafkaError>)>,
    /// Rows whose headers cannot be read, with why.
    unreadable: Vec<(OutboxRow, String)>,
}

/// What one round of the relay did.
enum Round {
    /// Published this many rows; a full batch means more may be waiting.
    Published(usize),
    /// Another relay holds the lease.
    Standby,
}

/// What the broker refused for good: sending the record again cannot succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// The record's topic (not authorised, an invalid name): every record of the topic
    /// gets the same answer, so the refusal is the record's own.
    Topic,
    /// The record, or the producer batch it was sent in (too large, invalid): the broker
    /// refuses a whole batch for one record, so a record refused in a batch is sent again
    /// on its own before it counts as refused.
    Record,
}

/// Whether `error` is a refusal that sending again cannot cure. Only these errors, each
/// about the record or its topic and not about the cluster's state:
///
/// - `MessageSizeTooLarge` (librdkafka's own `message.max.bytes`, checked before sending,
///   or the topic's `max.message.bytes`), `MessageBatchTooLarge` (larger than a log
///   segment) and `InvalidRecord` (the broker's validation): [`Refusal::Record`];
/// - `TopicAuthorizationFailed` and `InvalidTopic` (a name the broker never accepts, such
///   as an internal topic): [`Refusal::Topic`]. An ACL can be granted later; the dead
///   letters are then replayed, rather than every topic's rows waiting behind this one.
///
/// Everything else is retried, the order kept. `UnknownTopicOrPartition` in particular:
/// librdkafka itself retries it (the topic may be being created, or its leader moving),
/// and a topic created late is the usual deployment slip, cured within minutes; dead
/// letters would put that topic's events out of order for a transient condition. So are
/// errors about the producer or the cluster (cluster authorisation, fenced or unknown
/// producer ids, timeouts): they are not a record's fault, and every record would follow.
fn refusal(error: &KafkaError) -> Option<Refusal> {
    let KafkaError::MessageProduction(code) = error else {
        return None;
    };
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge
        | RDKafkaErrorCode::MessageBatchTooLarge
        | RDKafkaErrorCode::InvalidRecord => Some(Refusal::Record),
        RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::InvalidTopic => {
            Some(Refusal::Topic)
        }
        _ => None,
    }
}

/// A row handed to the producer, with its headers as read from the row.
struct Sent {
    row: OutboxRow,
    headers: Vec<(String, String)>,
}

/// A row whose record was refused for good.
struct Refused {
    sent: Sent,
    error: KafkaError,
    /// How many times it was sent.
    attempts: u32,
}

/// Why the relay stopped publishing in the middle of a round.
enum Stop {
    /// The lease is held elsewhere, or a statement found it lost.
    LeaseLost,
    /// Renewing the lease failed: the relay cannot tell whether it still holds it.
    RenewalFailed(Error),
    /// The database failed; the lease is not known to be lost.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Stop::Failed(error)
    }
}

/// What became of a batch whose rows were all awaited.
#[derive(Default)]
struct Settled {
    /// Rows refused in their producer batch, to be sent again on their own.
    retry_alone: Vec<Refused>,
    /// The first failure that sending again may cure; those rows stay unmarked.
    failed: Option<Error>,
}

impl Settled {
    fn absorb(&mut self, other: Settled) {
        self.retry_alone.extend(other.retry_alone);
        if let Some(later) = other.failed {
            match self.failed {
                None => self.failed = Some(later),
                Some(_) => tracing::warn!(error = %later, "outbox relay batch failed"),
            }
        }
    }
}

/// The longest the relay's producer waits for more records to fill a batch: a user's
/// `linger` above it applies to their own producers only.
const RELAY_LINGER: Duration = Duration::from_millis(1);

impl OutboxRelay {
    pub(crate) fn new(
        storage: Arc<dyn OutboxStorage>,
        config: &KafkaConfig,
        settings: RelaySettings,
    ) -> Result<Self> {
        config.validate()?;
        settings.validate()?;
        // No delivery timeout: librdkafka retries a record until the broker takes it, so a
        // record never fails while a later one of its partition gets through, which would
        // put it behind that one when it is sent again (the order per key would break).
        // An outage holds the round up instead; the relay catches up when it ends.
        let mut producer_config = config.producer_config()?;
        producer_config.set("message.timeout.ms", "0");
        // A linger of at most 1 ms: the configured one (5 ms by default) would delay every
        // event of a quiet outbox by that much, and none at all makes librdkafka send the
        // first records of each batch the relay hands it in requests of their own. Measured
        // with the outbox bench: 1 ms instead of 0 takes PostgreSQL's relay from about 0.50
        // to 0.58-0.67 of the commits alone, at 0.3 ms more commit-to-acknowledgement latency.
        producer_config.set(
            "linger.ms",
            config
                .producer
                .linger
                .min(RELAY_LINGER)
                .as_millis()
                .to_string(),
        );
        let watch = ClientWatch::new(config, "outbox relay", Watching::Client);
        let producer = producer_config
            .create_with_context(watch.clone())
            .map_err(|e| client_error("outbox relay producer", e))?;
        let metrics = crate::metrics::RelayMetrics::new(config.source(), storage.kind());
        Ok(OutboxRelay {
            metrics,
            storage,
            producer_config,
            producer: Some(producer),
            watch,
            check: config.clone(),
            delivery_timeout: config.producer.delivery_timeout,
            settings,
            parked: BTreeSet::new(),
        })
    }

    /// The producer, made anew after the lease was lost.
    fn producer(&mut self) -> Result<WatchedProducer> {
        if let Some(producer) = &self.producer {
            return Ok(producer.clone());
        }
        let producer: WatchedProducer = self
            .producer_config
            .create_with_context(self.watch.clone())
            .map_err(|e| client_error("outbox relay producer", e))?;
        self.producer = Some(producer.clone());
        Ok(producer)
    }

    /// Publishes until `shutdown` completes. Then the round in progress and the batches in
    /// flight get the producer's delivery timeout to be acknowledged and marked (during a
    /// broker outage they never are: those rows stay unmarked and are published again,
    /// with the same `ce_id`, by the next relay). The database or the broker being down is
    /// logged and retried with backoff, never returned.
    ///
    /// It first waits for a broker at the bootstrap address to answer, at most
    /// [`KafkaConfig::connect_timeout`], and otherwise returns
    /// [`Error::BrokersUnreachable`] naming the address and the cause.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        check_brokers(&self.check, "outbox relay").await?;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut failures = 0u32;
        let mut last_purge = tokio::time::Instant::now();
        let mut in_flight = None;
        let delivery_timeout = self.delivery_timeout;
        let mut last_backlog: Option<tokio::time::Instant> = None;
        loop {
            // The backlog gauges: one query per poll interval, before the round, so the
            // first reading is what waited when the relay started.
            if cfg!(feature = "metrics")
                && last_backlog.is_none_or(|at| at.elapsed() >= self.settings.poll_interval)
            {
                last_backlog = Some(tokio::time::Instant::now());
                self.measure_backlog().await;
            }
            // A round can last as long as a broker outage: shutdown must not wait for it.
            let outcome = {
                let round = self.round(&mut in_flight);
                let mut round = std::pin::pin!(round);
                tokio::select! {
                    outcome = &mut round => Ok(outcome),
                    () = &mut shutdown => {
                        let deadline = tokio::time::Instant::now() + delivery_timeout;
                        let _ = tokio::time::timeout_at(deadline, &mut round).await;
                        Err(deadline)
                    }
                }
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(deadline) => return self.stop(in_flight, deadline).await,
            };
            let wait = match outcome {
                Ok(Round::Published(n)) => {
                    failures = 0;
                    if n as i64 >= self.settings.batch_size {
                        Duration::ZERO
                    } else {
                        self.settings.poll_interval
                    }
                }
                Ok(Round::Standby) => self.settings.poll_interval,
                Err(error) => {
                    self.metrics.failed();
                    failures = failures.saturating_add(1);
                    let wait = self
                        .settings
                        .error_backoff
                        .saturating_mul(1 << failures.min(8))
                        .min(Duration::from_secs(30));
                    tracing::warn!(%error, retry_in_ms = crate::limits::millis(wait), "outbox relay round failed");
                    wait
                }
            };
            if last_purge.elapsed() > Duration::from_secs(60) {
                last_purge = tokio::time::Instant::now();
                match self.storage.purge_published(self.settings.retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "published outbox rows purged"),
                    Err(error) => tracing::warn!(%error, "purging the outbox failed"),
                }
            }
            let stop = if wait.is_zero() {
                // Still check for shutdown between full batches.
                futures_util::FutureExt::now_or_never(&mut shutdown).is_some()
            } else {
                tokio::select! {
                    () = &mut shutdown => true,
                    () = self.storage.wait_for_rows(wait) => false,
                }
            };
            if stop {
                let deadline = tokio::time::Instant::now() + delivery_timeout;
                return self.stop(in_flight, deadline).await;
            }
        }
    }

    /// Completes the batch in flight until `deadline`, then gives the lease up. Rows
    /// refused in their batch are left unmarked: the next relay sends them on their own.
    async fn stop(
        &mut self,
        in_flight: Option<InFlight>,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        let completed = match in_flight {
            Some(batch) => match tokio::time::timeout_at(deadline, self.complete(batch)).await {
                Ok(Ok(settled)) => settled.failed.map_or(Ok(()), Err),
                Ok(Err(Stop::LeaseLost)) => Ok(()),
                Ok(Err(Stop::RenewalFailed(error) | Stop::Failed(error))) => Err(error),
                Err(_) => {
                    tracing::warn!(
                        "outbox relay stopped with unacknowledged rows; they will be published again"
                    );
                    Ok(())
                }
            },
            None => Ok(()),
        };
        self.storage.release_lease().await;
        self.metrics.lease(false);
        completed
    }

    /// Sets the backlog gauges from the database; a failure is only logged (the round
    /// that follows reports a database outage).
    async fn measure_backlog(&self) {
        match self.storage.backlog().await {
            Ok((rows, oldest_age)) => self.metrics.backlog(rows, oldest_age),
            Err(error) => tracing::debug!(%error, "reading the outbox backlog failed"),
        }
    }

    /// One round: reads the next batch (leaving out the one in flight), hands it to the
    /// producer, then awaits and marks the batch sent in the previous round. So reading
    /// and marking overlap the broker's acknowledgements, and two batches at most are in
    /// flight, in id order. When the outbox is drained, the new batch is completed too.
    /// When the lease turns out lost, the batches in flight are given up
    /// ([`OutboxRelay::abandon`]) and the relay stands by.
    async fn round(&mut self, in_flight: &mut Option<InFlight>) -> Result<Round> {
        let lease = self.storage.hold_lease().await?;
        self.metrics.lease(lease != Lease::Elsewhere);
        if lease != Lease::Kept {
            // Whatever was sent under an earlier hold is not this relay's to mark: another
            // relay may have published those rows meanwhile.
            if let Some(batch) = in_flight.take() {
                self.abandon(Some(batch)).await;
            }
            if lease == Lease::Elsewhere {
                return Ok(Round::Standby);
            }
        }
        let sending = in_flight
            .as_ref()
            .and_then(|batch| Some((*batch.ids.first()?, *batch.ids.last()?)));
        let parked: Vec<i64> = self.parked.iter().copied().collect();
        let rows = match self
            .storage
            .unpublished(self.settings.batch_size, sending, &parked)
            .await?
        {
            Fenced::Held(rows) => rows,
            Fenced::Lost => {
                if let Some(batch) = in_flight.take() {
                    self.abandon(Some(batch)).await;
                }
                return Ok(Round::Standby);
            }
        };
        let read = rows.len();
        if read > 0 {
            self.metrics.batch();
        }
        let batch = self.send(rows).await?;
        let previous = in_flight.replace(batch);
        let mut settled = Settled::default();
        if let Some(previous) = previous {
            match self.complete(previous).await {
                Ok(done) => settled = done,
                Err(stop) => return self.stopped(stop, in_flight).await,
            }
        }
        // When the outbox is drained, or the previous batch did not all go through, the
        // batch behind it is settled now: failed rows are read again, and refused ones
        // sent on their own, only once nothing else is in flight.
        let trouble = settled.failed.is_some() || !settled.retry_alone.is_empty();
        if (read as i64) < self.settings.batch_size || trouble {
            if let Some(batch) = in_flight.take() {
                match self.complete(batch).await {
                    Ok(done) => settled.absorb(done),
                    Err(stop) => return self.stopped(stop, in_flight).await,
                }
            }
        }
        if !settled.retry_alone.is_empty() {
            let alone = std::mem::take(&mut settled.retry_alone);
            match self.send_alone(alone).await {
                Ok(done) => settled.absorb(done),
                Err(stop) => return self.stopped(stop, in_flight).await,
            }
        }
        match settled.failed {
            Some(error) => Err(error),
            None => Ok(Round::Published(read)),
        }
    }

    /// Ends a round that stopped publishing while a batch was awaited: on a lost lease or
    /// a failed renewal the batches in flight are given up; on a database failure the
    /// batch behind is still awaited and marked, so the failed rows are not sent again
    /// while later ones are still in flight.
    async fn stopped(&mut self, stop: Stop, in_flight: &mut Option<InFlight>) -> Result<Round> {
        match stop {
            Stop::LeaseLost => {
                self.abandon(in_flight.take()).await;
                Ok(Round::Standby)
            }
            Stop::RenewalFailed(error) => {
                self.abandon(in_flight.take()).await;
                Err(error)
            }
            Stop::Failed(error) => {
                if let Some(batch) = in_flight.take() {
                    match self.complete(batch).await {
                        Ok(settled) => {
                            if let Some(later) = settled.failed {
                                tracing::warn!(error = %later, "outbox relay batch failed");
                            }
                        }
                        Err(Stop::LeaseLost | Stop::RenewalFailed(_)) => {
                            self.abandon(None).await;
                        }
                        Err(Stop::Failed(later)) => {
                            tracing::warn!(error = %later, "outbox relay batch failed");
                        }
                    }
                }
                Err(error)
            }
        }
    }

    /// Gives up what this relay sent while it held the lease, once it no longer does:
    /// nothing of it is marked (the holder publishes those rows again, with the same
    /// `ce_id`), and the producer is dropped, which purges what librdkafka still holds:
    /// records not yet sent never are, and the acknowledgements of those in flight are
    /// ignored. A new producer is made when the relay publishes again. Records already on
    /// the wire may still land; only the broker could fence those (Kafka transactions).
    async fn abandon(&mut self, batch: Option<InFlight>) {
        self.metrics.lease(false);
        let rows = batch.as_ref().map_or(0, |batch| batch.ids.len());
        drop(batch);
        if let Some(producer) = self.producer.take() {
            // The drop purges and then waits up to 500 ms for librdkafka: off the runtime.
            let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
        }
        tracing::warn!(
            rows,
            "outbox relay lost its lease; the rows it sent and did not mark are the holder's"
        );
    }

    /// Hands every readable row to the producer without awaiting acknowledgements.
    async fn send(&mut self, rows: Vec<OutboxRow>) -> Result<InFlight> {
        let producer = self.producer()?;
        let mut batch = InFlight {
            ids: rows.iter().map(|row| row.id).collect(),
            deliveries: Vec::with_capacity(rows.len()),
            unreadable: Vec::new(),
        };
        for row in rows {
            let headers: Vec<(String, String)> = match serde_json::from_str(&row.headers) {
                Ok(headers) => headers,
                Err(error) => {
                    batch.unreadable.push((row, error.to_string()));
                    continue;
                }
            };
            let sent = Sent { row, headers };
            let delivery = self.enqueue(&producer, record(&sent)).await;
            batch.deliveries.push((sent, delivery));
        }
        Ok(batch)
    }

    /// Awaits the batch's acknowledgements, dead-letters its unreadable rows and the rows
    /// the broker refused for good, and marks every row acknowledged or dead-lettered. A
    /// row whose delivery failed otherwise stays unmarked, to be read again, and the
    /// outcome carries the failure; a row refused in its producer batch is returned, to
    /// be sent again on its own. Nothing is marked when the lease turns out lost.
    async fn complete(&mut self, batch: InFlight) -> std::result::Result<Settled, Stop> {
        let mut published = Vec::with_capacity(batch.ids.len());
        let mut settled = Settled::default();
        let mut refused = Vec::new();
        let mut renew = self.renewal().await;
        for (sent, delivery) in batch.deliveries {
            let (acknowledged, batched) = match delivery {
                Ok(delivery) => (self.acknowledged(delivery, &mut renew).await?, true),
                // librdkafka refused it before sending, on its own.
                Err(error) => (Err(error), false),
            };
            match acknowledged {
                Ok(()) => {
                    trace_acknowledged(&sent);
                    self.metrics.published(&sent.row.topic);
                    published.push(sent.row.id);
                }
                Err(error) => match refusal(&error) {
                    Some(Refusal::Record) if batched => settled.retry_alone.push(Refused {
                        sent,
                        error,
                        attempts: 1,
                    }),
                    Some(_) => refused.push(Refused {
                        sent,
                        error,
                        attempts: 1,
                    }),
                    None => {
                        settled.failed.get_or_insert(Error::Delivery {
                            topic: sent.row.topic,
                            source: error,
                        });
                    }
                },
            }
        }
        for (row, reason) in &batch.unreadable {
            let error = format!("outbox row {} has malformed headers: {reason}", row.id);
            let letter = Letter {
                row,
                headers: &[],
                reason: DeadLetterReason::Decode,
                error: &error,
                attempts: 1,
            };
            self.settle_letter(letter, &mut published, &mut settled)
                .await;
        }
        for refused in &refused {
            self.dead_letter_refused(refused, &mut published, &mut settled)
                .await;
        }
        self.mark(&published).await?;
        Ok(settled)
    }

    /// Sends each row refused in its producer batch again, on its own, and awaits it before
    /// the next: nothing else is in flight then, so the broker judges that record alone.
    /// Acknowledged, it is marked; refused again, it is dead-lettered.
    async fn send_alone(&mut self, rows: Vec<Refused>) -> std::result::Result<Settled, Stop> {
        tracing::info!(
            rows = rows.len(),
            "outbox records refused with their producer batch; sending each again on its own"
        );
        let producer = self.producer()?;
        let mut published = Vec::with_capacity(rows.len());
        let mut settled = Settled::default();
        let mut renew = self.renewal().await;
        for mut refused in rows {
            let delivery = self.enqueue(&producer, record(&refused.sent)).await;
            refused.attempts += 1;
            let acknowledged = match delivery {
                Ok(delivery) => self.acknowledged(delivery, &mut renew).await?,
                Err(error) => Err(error),
            };
            match acknowledged {
                Ok(()) => {
                    trace_acknowledged(&refused.sent);
                    self.metrics.published(&refused.sent.row.topic);
                    published.push(refused.sent.row.id);
                }
                Err(error) if refusal(&error).is_some() => {
                    refused.error = error;
                    self.dead_letter_refused(&refused, &mut published, &mut settled)
                        .await;
                }
                Err(error) => {
                    settled.failed.get_or_insert(Error::Delivery {
                        topic: refused.sent.row.topic,
                        source: error,
                    });
                }
            }
        }
        self.mark(&published).await?;
        Ok(settled)
    }

    /// Marks `published` (deletes the rows with a retention of zero), only while this
    /// relay holds the lease.
    async fn mark(&self, published: &[i64]) -> std::result::Result<(), Stop> {
        match self
            .storage
            .mark_published(published, self.settings.retention.is_zero())
            .await?
        {
            Fenced::Held(()) => Ok(()),
            Fenced::Lost => Err(Stop::LeaseLost),
        }
    }

    /// A timer for renewing the lease while acknowledgements are awaited, first due a
    /// third of the lease from now.
    async fn renewal(&self) -> tokio::time::Interval {
        let mut renew = tokio::time::interval(self.settings.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        renew
    }

    /// Awaits one record's acknowledgement. While the broker is down that takes as long as
    /// the outage; the lease is renewed meanwhile, so no standby takes over rows that are
    /// still in flight. A renewal that fails, or finds the lease lost, stops the wait:
    /// this relay may no longer publish, so it does not wait to mark.
    async fn acknowledged(
        &self,
        mut delivery: DeliveryFuture,
        renew: &mut tokio::time::Interval,
    ) -> std::result::Result<std::result::Result<(), KafkaError>, Stop> {
        loop {
            tokio::select! {
                acknowledged = &mut delivery => {
                    return Ok(match acknowledged {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(error),
                        Err(_) => Err(KafkaError::Canceled),
                    });
                }
                _ = renew.tick() => match self.storage.hold_lease().await {
                    Ok(Lease::Kept) => {}
                    Ok(Lease::Taken | Lease::Elsewhere) => return Err(Stop::LeaseLost),
                    Err(error) => return Err(Stop::RenewalFailed(error)),
                },
            }
        }
    }

    /// Dead-letters a row the broker refused for good, with reason `publish`.
    async fn dead_letter_refused(
        &mut self,
        refused: &Refused,
        published: &mut Vec<i64>,
        settled: &mut Settled,
    ) {
        let Sent { row, headers } = &refused.sent;
        // A refused topic is named as every refusal is: principal, operation, topic.
        let reason = match refused.error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => self
                .watch
                .not_authorized(
                    crate::acl::AclOperation::Write,
                    crate::acl::AclResource::Topic(row.topic.clone()),
                )
                .to_string(),
            _ => refused.error.to_string(),
        };
        let error = format!("outbox row {} refused: {reason}", row.id);
        let letter = Letter {
            row,
            headers,
            reason: DeadLetterReason::Publish,
            error: &error,
            attempts: refused.attempts,
        };
        self.settle_letter(letter, published, settled).await;
    }

    /// Writes `letter` and adds its row to `published` (to be marked). When the
    /// dead-letter topic refuses the letter for good too (it is larger than the row's
    /// record, so a record over librdkafka's own `message.max.bytes` always is), the row
    /// is parked: left unmarked, so nothing is lost, and not read again while this relay
    /// runs. Any other failure to write it leaves the row unmarked and fails the round.
    async fn settle_letter(
        &mut self,
        letter: Letter<'_>,
        published: &mut Vec<i64>,
        settled: &mut Settled,
    ) {
        let (row, reason) = (letter.row, letter.reason);
        match self.dead_letter(&letter).await {
            Ok(()) => {
                tracing::error!(
                    row = row.id,
                    topic = %row.topic,
                    %reason,
                    error = letter.error,
                    "outbox row dead-lettered"
                );
                published.push(row.id);
            }
            Err(Error::Delivery {
                source: letter_error,
                ..
            }) if refusal(&letter_error).is_some() && self.parked.len() < MAX_PARKED => {
                tracing::error!(
                    row = row.id,
                    topic = %row.topic,
                    %reason,
                    error = letter.error,
                    dead_letter_error = %letter_error,
                    "outbox row could not be dead-lettered: the dead-letter topic refused it \
                     too; left unmarked and skipped until the relay restarts"
                );
                self.parked.insert(row.id);
            }
            Err(failed) => {
                settled.failed.get_or_insert(failed);
            }
        }
    }

    /// Hands `record` to librdkafka without waiting for its acknowledgement, so a whole
    /// batch is in flight at once; waits only while librdkafka's queue is full.
    async fn enqueue(
        &self,
        producer: &WatchedProducer,
        mut record: FutureRecord<'_, [u8], [u8]>,
    ) -> std::result::Result<DeliveryFuture, KafkaError> {
        let started = tokio::time::Instant::now();
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if started.elapsed() < self.delivery_timeout =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Writes a dead letter to the relay's dead-letter topic and awaits the broker's
    /// acknowledgement: the row's key and value, `headers` (the row's own, in order), then
    /// the `dlq-` headers of `docs/wire-format.md` section 7 for outbox rows.
    async fn dead_letter(&mut self, letter: &Letter<'_>) -> Result<()> {
        use crate::dead_letter::header;
        let producer = self.producer()?;
        let row = letter.row;
        let id = row.id.to_string();
        let failed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let attempts = letter.attempts.to_string();
        let error = crate::dead_letter::truncate(letter.error, crate::dead_letter::MAX_ERROR_BYTES);
        let dlq = [
            (header::ORIGINAL_TOPIC, row.topic.as_str()),
            (header::ORIGINAL_PARTITION, "-1"),
            (header::ORIGINAL_OFFSET, id.as_str()),
            (header::CONSUMER_GROUP, RELAY_GROUP),
            (header::REASON, letter.reason.as_str()),
            (header::ERROR, error),
            (header::ATTEMPTS, attempts.as_str()),
            (header::FAILED_AT, failed_at.as_str()),
        ];
        let headers = letter
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .chain(dlq)
            .fold(
                OwnedHeaders::new_with_capacity(letter.headers.len() + 8),
                |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    })
                },
            );
        let mut record = FutureRecord::to(&self.settings.dead_letter_topic)
            .payload(row.payload.as_slice())
            .headers(headers);
        if let Some(key) = &row.key {
            record = record.key(key.as_slice());
        }
        producer
            .send(record, self.delivery_timeout)
            .await
            .map_err(|(source, _)| Error::Delivery {
                topic: self.settings.dead_letter_topic.clone(),
                source,
            })?;
        Ok(())
    }
}

/// A dead letter of the relay, before it is written.
struct Letter<'a> {
    row: &'a OutboxRow,
    /// The row's headers, as its record carried them (none when they cannot be read).
    headers: &'a [(String, String)],
    reason: DeadLetterReason,
    error: &'a str,
    attempts: u32,
}

/// Logs, at trace level, that the broker acknowledged `sent`'s record: the moment the relay
/// learnt it (its delivery report), with the row and its event id. This is what the outbox
/// bench times commit-to-publish latency against. The header lookup runs only when
/// something listens at trace level.
fn trace_acknowledged(sent: &Sent) {
    if tracing::enabled!(tracing::Level::TRACE) {
        let event_id = sent
            .headers
            .iter()
            .find(|(name, _)| name == crate::wire::header::ID)
            .map_or("", |(_, value)| value.as_str());
        tracing::trace!(row = sent.row.id, event_id, "outbox row acknowledged");
    }
}

/// The record of a row: its topic, key, value and headers, in order.
fn record(sent: &Sent) -> FutureRecord<'_, [u8], [u8]> {
    let Sent { row, headers } = sent;
    let headers = headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    );
    let record = FutureRecord::to(&row.topic)
        .payload(row.payload.as_slice())
        .headers(headers);
    match &row.key {
        Some(key) => record.key(key.as_slice()),
        None => record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_about_the_record_or_its_topic_are_for_good() {
        let refusal_of = |code| refusal(&KafkaError::MessageProduction(code));
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            assert_eq!(refusal_of(code), Some(Refusal::Record), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert_eq!(refusal_of(code), Some(Refusal::Topic), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::PurgeQueue,
        ] {
            assert_eq!(refusal_of(code), None, "{code:?}");
        }
        assert_eq!(refusal(&KafkaError::Canceled), None);
    }
}

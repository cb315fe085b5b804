//! The transactional outbox: an event is stored in the same database transaction as the
//! business write that caused it, and a relay publishes it afterwards.
//!
//! # Guarantees
//!
//! - **Atomic with the business write.** [`PostgresOutbox::enqueue`] and
//!   [`SqliteOutbox::enqueue`] insert the encoded event (topic, key, the `ce_` headers of
//!   `docs/wire-format.md`, payload) inside the caller's transaction: if it rolls back, the event
//!   never existed; if it commits, the event will be published.
//! - **Published at least once, marked only after the acknowledgement.** The relay marks a
//!   row published only after the broker acknowledged it (`acks=all`, idempotent producer).
//!   A crash between the acknowledgement and the mark publishes the row again, with the
//!   same `ce_id`, so idempotent consumers drop the duplicate.
//! - **Order per key, across outages.** Rows are published in insertion order by one
//!   active relay at a time, at most two batches in flight; the idempotent producer keeps
//!   that order within each partition, so events with the same key arrive in the order
//!   they were committed. The relay's producer has no delivery timeout, so during a broker
//!   outage no record fails while a later one of its partition gets through; a batch that
//!   failed anyway (the broker refused a record) settles the batch behind it before any
//!   row is read again.
//! - **One active relay per database.** A relay publishes only while it holds the lease;
//!   other instances wait as hot standbys. On PostgreSQL the lease is a session advisory
//!   lock, taken over the moment the holder's connection ends (a crash included). On
//!   SQLite it is a row with an expiry ([`RelaySettings::lease_ttl`]), renewed as the relay
//!   works, given up when it stops, taken over after the expiry when it crashed.
//! - **Bad rows do not block.** A row that cannot be read (malformed headers) goes to the
//!   dead-letter topic with reason `decode` and is marked, so the rows behind it move on.
//!
//! On PostgreSQL, a statement trigger on the table sends `NOTIFY pegasus_outbox`
//! (delivered on commit), and the relay wakes on it, so an event is published within
//! milliseconds of the commit; polling is the fallback. On SQLite the relay polls.
//! Published rows are marked, and deleted after [`RelaySettings::retention`], or deleted at
//! once with a retention of zero. The tables are created and migrated by the library
//! ([`crate::migrations`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::config::{client_error, KafkaConfig};
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
/// [`Error::Serialize`], returned before anything is written.
pub(crate) fn encode<E: Event>(
    source: &str,
    base_event_fields: bool,
    event: &E,
    metadata: Option<&PublishMetadata>,
) -> Result<EncodedEvent> {
    let mut payload = Vec::with_capacity(256);
    let resolved = wire::encode_event(event, source, metadata, base_event_fields, &mut payload)?;
    let metadata = resolved.as_ref().or(metadata);
    let mut key = String::new();
    let keyed = event.write_partition_key(&mut key);
    let outgoing = OutgoingHeaders::new::<E>(source, keyed.then_some(key.as_str()), metadata);
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

/// What the relay needs from a database.
pub(crate) trait OutboxStorage: Send + Sync + 'static {
    /// Whether this relay may publish now: it holds the lease, or just took it.
    fn hold_lease(&self) -> BoxFuture<'_, Result<bool>>;
    /// Gives the lease up, so a standby takes over at once (the relay is stopping).
    fn release_lease(&self) -> BoxFuture<'_, ()>;
    /// The oldest unpublished rows, at most `limit`, in id order, leaving out the id range
    /// `in_flight` (first and last id of the batch sent and not yet acknowledged). A row
    /// committed late inside that range is read in the next round, once the range is no
    /// longer in flight: delayed by one round, never skipped.
    fn unpublished(
        &self,
        limit: i64,
        in_flight: Option<(i64, i64)>,
    ) -> BoxFuture<'_, Result<Vec<OutboxRow>>>;
    /// Marks rows published.
    /// Marks rows published, or deletes them when `delete` (a retention of zero).
    fn mark_published<'a>(&'a self, ids: &'a [i64], delete: bool) -> BoxFuture<'a, Result<()>>;
    /// Deletes rows published more than `age` ago; returns how many.
    fn purge_published(&self, age: Duration) -> BoxFuture<'_, Result<u64>>;
    /// Returns when new rows may be there: on a notification, or after `at_most`.
    fn wait_for_rows(&self, at_most: Duration) -> BoxFuture<'_, ()>;
}

/// Settings of the relay; defaults next to each field.
#[derive(Clone, Debug, PartialEq)]
pub struct RelaySettings {
    /// Rows read and published per round: 500.
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
    /// Where rows that cannot be read go: `dlq-events`.
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
            batch_size: 500,
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
    producer: FutureProducer,
    delivery_timeout: Duration,
    settings: RelaySettings,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A batch handed to the producer whose acknowledgements are not yet awaited.
struct InFlight {
    /// Every row of the batch, in id order.
    ids: Vec<i64>,
    /// Each readable row's delivery, in id order.
    deliveries: Vec<(i64, std::result::Result<DeliveryFuture, KafkaError>)>,
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
        let producer = config
            .producer_config()
            .set("message.timeout.ms", "0")
            .create()
            .map_err(|e| client_error("outbox relay producer", e))?;
        Ok(OutboxRelay {
            storage,
            producer,
            delivery_timeout: config.producer.delivery_timeout,
            settings,
        })
    }

    /// Publishes until `shutdown` completes. Then the round in progress and the batches in
    /// flight get the producer's delivery timeout to be acknowledged and marked (during a
    /// broker outage they never are: those rows stay unmarked and are published again,
    /// with the same `ce_id`, by the next relay). The database or the broker being down is
    /// logged and retried with backoff, never returned.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut failures = 0u32;
        let mut last_purge = tokio::time::Instant::now();
        let mut in_flight = None;
        loop {
            // A round can last as long as a broker outage: shutdown must not wait for it.
            let outcome = {
                let round = self.round(&mut in_flight);
                let mut round = std::pin::pin!(round);
                tokio::select! {
                    outcome = &mut round => Ok(outcome),
                    () = &mut shutdown => {
                        let deadline = tokio::time::Instant::now() + self.delivery_timeout;
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
                let deadline = tokio::time::Instant::now() + self.delivery_timeout;
                return self.stop(in_flight, deadline).await;
            }
        }
    }

    /// Completes the batch in flight until `deadline`, then gives the lease up.
    async fn stop(
        &self,
        in_flight: Option<InFlight>,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        let completed = match in_flight {
            Some(batch) => match tokio::time::timeout_at(deadline, self.complete(batch)).await {
                Ok(completed) => completed,
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
        completed
    }

    /// One round: reads the next batch (leaving out the one in flight), hands it to the
    /// producer, then awaits and marks the batch sent in the previous round. So reading
    /// and marking overlap the broker's acknowledgements, and two batches at most are in
    /// flight, in id order. When the outbox is drained, the new batch is completed too.
    async fn round(&self, in_flight: &mut Option<InFlight>) -> Result<Round> {
        if !self.storage.hold_lease().await? {
            // Lost the lease: whatever is in flight is still ours to mark.
            if let Some(batch) = in_flight.take() {
                self.complete(batch).await?;
            }
            return Ok(Round::Standby);
        }
        let sending = in_flight
            .as_ref()
            .and_then(|batch| Some((*batch.ids.first()?, *batch.ids.last()?)));
        let rows = self
            .storage
            .unpublished(self.settings.batch_size, sending)
            .await?;
        let read = rows.len();
        let batch = self.send(rows).await;
        let previous = in_flight.replace(batch);
        if let Some(previous) = previous {
            if let Err(error) = self.complete(previous).await {
                // Settle the batch behind it before anything is read again, so the failed
                // rows are not sent again while later ones are still in flight.
                if let Some(batch) = in_flight.take() {
                    if let Err(later) = self.complete(batch).await {
                        tracing::warn!(error = %later, "outbox relay batch failed");
                    }
                }
                return Err(error);
            }
        }
        if (read as i64) < self.settings.batch_size {
            if let Some(batch) = in_flight.take() {
                self.complete(batch).await?;
            }
        }
        Ok(Round::Published(read))
    }

    /// Hands every readable row to the producer without awaiting acknowledgements.
    async fn send(&self, rows: Vec<OutboxRow>) -> InFlight {
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
            let headers = headers.iter().fold(
                OwnedHeaders::new_with_capacity(headers.len()),
                |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    })
                },
            );
            let mut record = FutureRecord::to(&row.topic)
                .payload(row.payload.as_slice())
                .headers(headers);
            if let Some(key) = &row.key {
                record = record.key(key.as_slice());
            }
            let delivery = self.enqueue(record).await;
            batch.deliveries.push((row.id, delivery));
        }
        batch
    }

    /// Awaits the batch's acknowledgements, dead-letters its unreadable rows and marks
    /// every row that was acknowledged (or dead-lettered). A row whose delivery failed
    /// stays unmarked, to be read again, and the round reports the failure.
    async fn complete(&self, batch: InFlight) -> Result<()> {
        let mut published = Vec::with_capacity(batch.ids.len());
        let mut first_error = None;
        // While the broker is down the acknowledgements take as long as the outage; keep
        // the lease meanwhile, so no standby takes over rows that are still in flight.
        let mut renew = tokio::time::interval(self.settings.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        for (id, delivery) in batch.deliveries {
            let delivery = match delivery {
                Ok(mut delivery) => loop {
                    tokio::select! {
                        acknowledged = &mut delivery => break Ok(acknowledged),
                        _ = renew.tick() => {
                            if let Err(error) = self.storage.hold_lease().await {
                                tracing::warn!(%error, "renewing the outbox relay lease failed");
                            }
                        }
                    }
                },
                Err(error) => Err(error),
            };
            let acknowledged = match delivery {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err((error, _)))) => Err(error),
                Ok(Err(_)) => Err(KafkaError::Canceled),
                Err(error) => Err(error),
            };
            match acknowledged {
                Ok(()) => published.push(id),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        for (row, reason) in &batch.unreadable {
            self.dead_letter(row, reason).await?;
            published.push(row.id);
        }
        self.storage
            .mark_published(&published, self.settings.retention.is_zero())
            .await?;
        match first_error {
            Some(source) => Err(Error::Delivery {
                topic: "outbox".to_owned(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Hands `record` to librdkafka without waiting for its acknowledgement, so a whole
    /// batch is in flight at once; waits only while librdkafka's queue is full.
    async fn enqueue(
        &self,
        mut record: FutureRecord<'_, [u8], [u8]>,
    ) -> std::result::Result<DeliveryFuture, KafkaError> {
        let started = tokio::time::Instant::now();
        loop {
            match self.producer.send_result(record) {
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

    /// Sends an unreadable row to the dead-letter topic, as it is stored.
    async fn dead_letter(&self, row: &OutboxRow, reason: &str) -> Result<()> {
        use crate::dead_letter::header;
        let id = row.id.to_string();
        let failed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let error = format!("outbox row {id} has malformed headers: {reason}");
        let headers = [
            (header::ORIGINAL_TOPIC, row.topic.as_str()),
            (header::ORIGINAL_PARTITION, "-1"),
            (header::ORIGINAL_OFFSET, id.as_str()),
            (header::CONSUMER_GROUP, "outbox-relay"),
            (header::REASON, "decode"),
            (header::ERROR, error.as_str()),
            (header::ATTEMPTS, "1"),
            (header::FAILED_AT, failed_at.as_str()),
        ]
        .iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        });
        let mut record = FutureRecord::to(&self.settings.dead_letter_topic)
            .payload(row.payload.as_slice())
            .headers(headers);
        if let Some(key) = &row.key {
            record = record.key(key.as_slice());
        }
        self.producer
            .send(record, self.delivery_timeout)
            .await
            .map_err(|(source, _)| Error::Delivery {
                topic: self.settings.dead_letter_topic.clone(),
                source,
            })?;
        tracing::error!(row = row.id, topic = %row.topic, "outbox row dead-lettered: malformed headers");
        Ok(())
    }
}

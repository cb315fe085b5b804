//! The typed producer.
//!
//! # Guarantees
//!
//! - [`EventProducer::publish`] returns `Ok` only after the broker acknowledged the record:
//!   with the defaults (`acks=all`, idempotent producer) that means every in-sync replica
//!   has it, and librdkafka's retries can neither duplicate nor reorder it.
//! - Events with the same partition key land in the same partition in the order they were
//!   published from one producer.
//! - A publish that cannot be acknowledged within
//!   [`ProducerSettings::delivery_timeout`](crate::config::ProducerSettings) fails with a
//!   [`PublishError`] that hands back the exact record (same `ce_id`, key, value and
//!   headers), so the caller can retry it with [`EventProducer::republish`] and idempotent
//!   consumers still see one event. The event itself is only borrowed, so it stays with
//!   the caller. Nothing panics on a broker failure.
//! - [`EventProducer::publish_all`] enqueues every event before waiting for any
//!   acknowledgement, so a batch costs one round of broker acknowledgements, not one per
//!   event.
//!
//! # Example
//!
//! ```no_run
//! # use pegasus_events::{Event, EventProducer, KafkaConfig};
//! # #[derive(Debug, serde::Serialize, serde::Deserialize, Event)]
//! # #[event(topic = "shipping.shipment.created")]
//! # struct ShipmentCreated { #[event(key)] shipment_id: String }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = EventProducer::new(&KafkaConfig::from_env()?).await?;
//! let delivery = producer
//!     .publish(&ShipmentCreated { shipment_id: "42".into() })
//!     .await?;
//! println!("stored at partition {} offset {}", delivery.partition, delivery.offset);
//! # Ok(()) }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::future_producer::{DeliveryFuture, OwnedDeliveryResult};
use rdkafka::producer::{FutureRecord, Producer};
use tracing::Span;
use uuid::Uuid;

use crate::acl::{AclOperation, AclResource};
use crate::config::{client_error, KafkaConfig};
use crate::connection::{check_brokers, ClientWatch, WatchedProducer, Watching};
use crate::error::Error;
use crate::event::Event;
use crate::metrics::PublishMetrics;
use crate::telemetry::{self, spans};
use crate::wire::ByteHeaders;
use crate::wire::{self, OutgoingHeaders, PublishMetadata};

/// Where an acknowledged event was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The event id written to `ce_id`.
    pub event_id: Uuid,
    /// The partition the record landed in.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// A record exactly as it was (or would have been) put on the wire, owned.
///
/// A failed publish hands it back; [`EventProducer::republish`] sends it again unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedRecord {
    /// The topic.
    pub topic: String,
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub payload: Option<Vec<u8>>,
    /// The headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl EncodedRecord {
    /// The value of the first header named `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The event id from the `ce_id` header, when there is one.
    pub fn event_id(&self) -> Option<Uuid> {
        self.header(wire::header::ID)
            .and_then(|id| Uuid::try_parse(id).ok())
    }

    fn from_message(message: &OwnedMessage) -> Self {
        let headers = message
            .headers()
            .map(|h| {
                // The producer wrote these names from text, so they are UTF-8; reading them
                // as bytes keeps this path free of rdkafka's panicking accessor anyway.
                h.iter_bytes()
                    .map(|h| {
                        (
                            String::from_utf8_lossy(h.name).into_owned(),
                            h.value.map(<[u8]>::to_vec),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        EncodedRecord {
            topic: message.topic().to_owned(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    fn owned_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: v.as_deref(),
                })
            },
        )
    }
}

// The payload may hold sensitive values: Debug shows sizes, never bytes.
impl fmt::Debug for EncodedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("EncodedRecord")
            .field("topic", &self.topic)
            .field("event_id", &self.event_id())
            .field("key_len", &self.key.as_ref().map(Vec::len))
            .field("payload_len", &self.payload.as_ref().map(Vec::len))
            .field("headers", &names)
            .finish()
    }
}

/// A publish that failed: the reason, and the record to retry with.
///
/// Its message names the event and the topic; the reason is its
/// [`source`](std::error::Error::source), so an error chain shows each cause once.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(self.record.as_deref()))]
pub struct PublishError {
    /// Why it failed.
    #[source]
    pub error: Error,
    /// The record, byte for byte, with its `ce_id`; `None` only when the event could not
    /// be serialized (then there is no record).
    pub record: Option<Box<EncodedRecord>>,
}

fn describe(record: Option<&EncodedRecord>) -> String {
    match record {
        Some(record) => match record.event_id() {
            Some(id) => format!("cannot publish event {id} to topic `{}`", record.topic),
            None => format!("cannot publish a record to topic `{}`", record.topic),
        },
        None => "cannot publish the event: it was not encoded".to_owned(),
    }
}

impl PublishError {
    /// The record to retry with, if one was built.
    pub fn into_record(self) -> Option<EncodedRecord> {
        self.record.map(|r| *r)
    }
}

impl From<PublishError> for Error {
    fn from(error: PublishError) -> Self {
        error.error
    }
}

/// Publishes typed events; cheap to clone (the underlying client is shared).
#[derive(Clone)]
pub struct EventProducer {
    producer: WatchedProducer,
    watch: ClientWatch,
    source: Arc<str>,
    /// `messaging.client.id` of the send spans.
    client_id: Arc<str>,
    metrics: Arc<crate::metrics::ProducerMetrics>,
    delivery_timeout: Duration,
    base_event_fields: bool,
    /// Fails what the producer holds when the brokers refuse it ([`fail_fast_on_refusal`]);
    /// stopped when the last clone is dropped.
    _sentinel: Arc<Sentinel>,
    /// The keys of `#[event(encrypted)]` fields; `None` refuses to publish such events.
    encryption: Option<crate::encryption::Encryption>,
}

/// A task that ends when this is dropped.
struct Sentinel(tokio::task::JoinHandle<()>);

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// While all brokers refuse the producer for a reason waiting cannot cure (failed
/// authentication, a failed TLS handshake), purges the records waiting in librdkafka's
/// queues, so each publish fails now with [`Error::BrokersUnreachable`] naming the cause
/// rather than after the delivery timeout; nothing is on the wire then, so nothing purged
/// was delivered. Matters when the connection check is off, or the brokers start refusing
/// a running producer (credentials revoked).
async fn fail_fast_on_refusal(producer: WatchedProducer, watch: ClientWatch) {
    loop {
        watch.incurable_outage().await;
        producer.purge(rdkafka::producer::PurgeConfig::default().queue());
        // Records enqueued meanwhile are purged at the next signal: librdkafka reports
        // each reconnect attempt's failure again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventProducer")
            .field("source", &self.source)
            .field("delivery_timeout", &self.delivery_timeout)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Reused buffer for formatting partition keys; librdkafka copies the key on enqueue.
    static KEY_BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

impl EventProducer {
    /// Validates `config`, waits for a broker at its bootstrap address to answer (at most
    /// [`KafkaConfig::connect_timeout`]) and creates the producer.
    ///
    /// Fails with [`Error::Config`] naming a bad setting, or with
    /// [`Error::BrokersUnreachable`] naming the address and the cause (connection refused,
    /// host name not resolved, ...) when no broker answered in time.
    pub async fn new(config: &KafkaConfig) -> Result<Self, Error> {
        config.validate()?;
        tracing::debug!(config = ?config, "creating event producer");
        check_brokers(config, "producer").await?;
        let watch = ClientWatch::new(config, "producer", Watching::Client);
        let producer: WatchedProducer = config
            .producer_config()?
            .create_with_context(watch.clone())
            .map_err(|e| client_error("producer", e))?;
        let sentinel = Sentinel(tokio::spawn(fail_fast_on_refusal(
            producer.clone(),
            watch.clone(),
        )));
        Ok(EventProducer {
            _sentinel: Arc::new(sentinel),
            producer,
            watch,
            source: config.source().into(),
            client_id: config.client_id.as_str().into(),
            metrics: Arc::new(crate::metrics::ProducerMetrics::new(config.source())),
            delivery_timeout: config.producer.delivery_timeout,
            base_event_fields: config.producer.base_event_fields,
            encryption: None,
        })
    }

    /// This producer, encrypting the `#[event(encrypted)]` fields of the events it
    /// publishes with `encryption` ([`crate::encryption`]). Without it, publishing an event
    /// type that has such fields fails with
    /// [`Error::EncryptionNotConfigured`] and sends nothing.
    pub fn with_encryption(mut self, encryption: crate::encryption::Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// The `ce_source` this producer writes.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Publishes `event` and waits for the broker's acknowledgement.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Delivery, PublishError> {
        let pending = self
            .enqueue(event, None, self.metrics.topic(E::TOPIC))
            .await?;
        pending.acknowledged(self).await
    }

    /// Publishes `event` with explicit metadata (correlation id, causation id, subject, a
    /// fixed event id) and waits for the acknowledgement.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        metadata: &PublishMetadata,
    ) -> Result<Delivery, PublishError> {
        let pending = self
            .enqueue(event, Some(metadata), self.metrics.topic(E::TOPIC))
            .await?;
        pending.acknowledged(self).await
    }

    /// Publishes every event, enqueuing all of them before waiting for any
    /// acknowledgement. The results are in the order of `events`.
    pub async fn publish_all<'e, E: Event>(
        &self,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Vec<Result<Delivery, PublishError>> {
        let mut pending = Vec::new();
        // Every event of the batch goes to `E::TOPIC`: its metric handles are looked up once.
        let metrics = self.metrics.topic(E::TOPIC);
        for event in events {
            pending.push(self.enqueue(event, None, Arc::clone(&metrics)).await);
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Ok(p) => p.acknowledged(self).await,
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Sends a record handed back by a failed publish again, unchanged (same `ce_id`).
    pub async fn republish(&self, record: &EncodedRecord) -> Result<Delivery, PublishError> {
        let event_id = record.event_id().unwrap_or_default();
        let headers = record.owned_headers();
        let mut future_record = FutureRecord::to(&record.topic).headers(headers);
        if let Some(key) = &record.key {
            future_record = future_record.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            future_record = future_record.payload(payload.as_slice());
        }
        let delivery = self.send_with_backpressure(future_record).await?;
        Pending {
            topic: &record.topic,
            event_id,
            delivery,
            span: Span::none(),
            metrics: self.metrics.topic(&record.topic),
            enqueued: Instant::now(),
        }
        .acknowledged(self)
        .await
    }

    /// Waits until every enqueued record was acknowledged or failed, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        self.producer
            .flush(timeout)
            .map_err(|source| Error::Flush { source })
    }

    /// Encodes `event` and hands it to librdkafka; the returned [`Pending`] resolves on
    /// the broker's acknowledgement.
    async fn enqueue<E: Event>(
        &self,
        event: &E,
        metadata: Option<&PublishMetadata>,
        metrics: Arc<PublishMetrics>,
    ) -> Result<Pending<'static>, PublishError> {
        let mut payload = Vec::with_capacity(256);
        // A constant per event type: events without encrypted fields take the first arm
        // only, exactly as before encryption existed.
        let resolved = if E::ENCRYPTED_FIELDS.is_empty() {
            wire::encode_event(
                event,
                &self.source,
                metadata,
                self.base_event_fields,
                &mut payload,
            )
        } else {
            crate::encryption::encode_event(
                self.encryption.as_ref(),
                "the producer was given no encryption keys (EventProducer::with_encryption); \
                 nothing was published",
                event,
                &self.source,
                metadata,
                self.base_event_fields,
                &mut payload,
            )
            .await
        }
        .map_err(|error| PublishError {
            error,
            record: None,
        })?;
        let metadata = resolved.as_ref().or(metadata);
        let enqueued = Instant::now();
        // The key and headers are formatted into reused and stack buffers and copied by
        // librdkafka, so they cost no allocation per publish.
        let (event_id, delivery, span) = KEY_BUFFER.with_borrow_mut(|key| {
            key.clear();
            let keyed = event.write_partition_key(key);
            let span = spans::send(E::TOPIC, &self.client_id);
            let trace = telemetry::current_trace(&span);
            let outgoing =
                OutgoingHeaders::new::<E>(&self.source, keyed.then_some(key.as_str()), metadata)
                    .with_trace(trace.as_ref());
            spans::outgoing(&span, outgoing.event_id_str(), outgoing.record_key());
            let mut record = FutureRecord::to(E::TOPIC)
                .key(outgoing.record_key())
                .payload(payload.as_slice());
            record.headers = Some(outgoing.to_kafka_headers());
            let sent = self
                .producer
                .send_result(record)
                .map_err(|(error, record)| {
                    // The key borrows the reused buffer: take an owned copy for the retry.
                    (error, outgoing.record_key().to_owned(), record.headers)
                });
            (outgoing.event_id(), sent, span)
        });
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err((error, key, headers)) => {
                let mut retry = FutureRecord::to(E::TOPIC)
                    .key(key.as_str())
                    .payload(payload.as_slice());
                retry.headers = headers;
                match self.retry_enqueue(error, retry).await {
                    Ok(delivery) => delivery,
                    Err(error) => {
                        spans::failed(&span, error_type(&error.error));
                        return Err(error);
                    }
                }
            }
        };
        Ok(Pending {
            topic: E::TOPIC,
            event_id,
            delivery,
            span,
            metrics,
            enqueued,
        })
    }

    /// Enqueues a record, waiting while librdkafka's queue is full, up to the delivery
    /// timeout.
    async fn send_with_backpressure(
        &self,
        record: FutureRecord<'_, [u8], [u8]>,
    ) -> Result<DeliveryFuture, PublishError> {
        match self.producer.send_result(record) {
            Ok(delivery) => Ok(delivery),
            Err((error, record)) => self.retry_enqueue(error, record).await,
        }
    }

    async fn retry_enqueue<K, P>(
        &self,
        mut error: KafkaError,
        mut record: FutureRecord<'_, K, P>,
    ) -> Result<DeliveryFuture, PublishError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let started = Instant::now();
        loop {
            let queue_full = error == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
            if !queue_full || started.elapsed() >= self.delivery_timeout {
                let message = OwnedMessage::new(
                    record.payload.map(|p| p.to_bytes().to_vec()),
                    record.key.map(|k| k.to_bytes().to_vec()),
                    record.topic.to_owned(),
                    rdkafka::Timestamp::NotAvailable,
                    record.partition.unwrap_or(-1),
                    -1,
                    record.headers,
                );
                return Err(self.delivery_error(error, &message, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((e, r)) => {
                    error = e;
                    record = r;
                }
            }
        }
    }
}

/// An enqueued record waiting for the broker's acknowledgement.
struct Pending<'t> {
    topic: &'t str,
    event_id: Uuid,
    delivery: DeliveryFuture,
    /// The publish's `send` span, open until the acknowledgement.
    span: Span,
    /// The topic's metric handles, and when the record was handed to librdkafka.
    metrics: Arc<PublishMetrics>,
    enqueued: Instant,
}

impl Pending<'_> {
    async fn acknowledged(mut self, producer: &EventProducer) -> Result<Delivery, PublishError> {
        // Moved out, not cloned: `wait` consumes the rest and never needs the span, and
        // a clone of an enabled span costs a reference-count round trip per publish.
        let span = std::mem::replace(&mut self.span, Span::none());
        let outcome = self.wait(producer).await;
        match &outcome {
            Ok(delivery) => spans::stored(&span, delivery.partition, delivery.offset),
            Err(error) => spans::failed(&span, error_type(&error.error)),
        }
        outcome
    }

    async fn wait(self, producer: &EventProducer) -> Result<Delivery, PublishError> {
        let result: OwnedDeliveryResult = match self.delivery.await {
            Ok(result) => result,
            // librdkafka drops the delivery callback only when the producer is destroyed.
            Err(_canceled) => {
                self.metrics.failed();
                return Err(PublishError {
                    error: Error::Delivery {
                        topic: self.topic.to_owned(),
                        source: KafkaError::Canceled,
                    },
                    record: None,
                });
            }
        };
        match result {
            Ok(delivery) => {
                producer.watch.reachable();
                self.metrics.acknowledged(self.enqueued);
                Ok(Delivery {
                    event_id: self.event_id,
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((error, message)) => {
                Err(producer.delivery_error(error, &message, self.enqueued.elapsed()))
            }
        }
    }
}

/// A fixed word for a failed publish, for `error.type`: librdkafka's error code when
/// there is one.
fn error_type(error: &Error) -> &'static str {
    match error {
        Error::BrokersUnreachable { .. } => "brokers_unreachable",
        Error::NotAuthorized { .. } => "not_authorized",
        Error::Delivery { source, .. } => match source.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut) => "message_timed_out",
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => "message_too_large",
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => "topic_authorization_failed",
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => "unknown_topic_or_partition",
            Some(RDKafkaErrorCode::QueueFull) => "queue_full",
            _ => "delivery",
        },
        _ => "publish",
    }
}

impl EventProducer {
    /// The error of a failed publish: a timeout while no broker was reachable is
    /// [`Error::BrokersUnreachable`], naming the address and the last cause.
    fn delivery_error(
        &self,
        source: KafkaError,
        message: &OwnedMessage,
        waited: Duration,
    ) -> PublishError {
        let record = EncodedRecord::from_message(message);
        self.metrics.topic(&record.topic).failed();
        let error = match source.rdkafka_error_code() {
            // Purged by `fail_fast_on_refusal`: the refusal is the cause.
            Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::PurgeQueue) => self
                .watch
                .unreachable_error(waited)
                .unwrap_or_else(|| Error::Delivery {
                    topic: record.topic.clone(),
                    source,
                }),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => self.watch.not_authorized(
                AclOperation::Write,
                AclResource::Topic(record.topic.clone()),
            ),
            _ => Error::Delivery {
                topic: record.topic.clone(),
                source,
            },
        };
        tracing::warn!(
            topic = %record.topic,
            event_id = ?record.event_id(),
            %error,
            "publish failed"
        );
        PublishError {
            error,
            record: Some(Box::new(record)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_errors_chain_names_the_event_and_topic_and_shows_each_cause_once() {
        let id = Uuid::from_u128(7);
        let error = PublishError {
            error: Error::Delivery {
                topic: "shipping.shipment.created".to_owned(),
                source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            },
            record: Some(Box::new(EncodedRecord {
                topic: "shipping.shipment.created".to_owned(),
                key: None,
                payload: None,
                headers: vec![("ce_id".to_owned(), Some(id.to_string().into_bytes()))],
            })),
        };
        let mut chain = vec![error.to_string()];
        let mut cause = std::error::Error::source(&error);
        while let Some(current) = cause {
            chain.push(current.to_string());
            cause = current.source();
        }
        assert_eq!(
            chain[0],
            format!("cannot publish event {id} to topic `shipping.shipment.created`")
        );
        let mut distinct = chain.clone();
        distinct.dedup();
        assert_eq!(distinct, chain, "a cause shown twice: {chain:?}");
        assert!(
            chain[1].starts_with("publishing to topic `shipping.shipment.created` timed out"),
            "{chain:?}"
        );
    }

    #[tokio::test]
    async fn a_flush_that_times_out_is_error_flush() {
        // Nothing listens on port 1: the record stays queued, and flushing cannot finish.
        let mut config = KafkaConfig::new("127.0.0.1:1").with_connect_timeout(None);
        config.producer.delivery_timeout = Duration::from_secs(2);
        let producer = EventProducer::new(&config).await.unwrap();
        let publishing = producer.clone();
        let pending = tokio::spawn(async move {
            let event = crate::property_tests::UserCreatedForTests::sample();
            let _ = publishing.publish(&event).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        match producer.flush(Duration::from_millis(100)) {
            Err(Error::Flush { .. }) => {}
            other => panic!("expected Error::Flush, got {other:?}"),
        }
        pending.abort();
    }
}

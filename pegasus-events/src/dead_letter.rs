//! The dead-letter topic: records that could not be handled, kept byte for byte, and their
//! replay.
//!
//! # Guarantees
//!
//! - **Nothing is lost.** The consumer runtime dead-letters a record when its handler's
//!   attempts are used up, on a permanent failure, on a panic, or when the record cannot be
//!   decoded. The record's offset is committed only after the dead-letter topic
//!   acknowledged the copy (with `acks=all` and the idempotent producer); if that write
//!   fails, the offset stays uncommitted and the write is retried until it succeeds or the
//!   partition is given up, in which case the next owner handles the record again.
//! - **Byte for byte.** The dead-lettered record has the original key, value and every
//!   original header (names, values and order) unchanged, followed by the `dlq-` headers of
//!   the wire contract ([`header`]).
//! - **No secrets in the error.** `dlq-error` holds the failure's text with the values of
//!   the event's `#[event(sensitive)]` fields and the configuration's secrets replaced by
//!   `<redacted>`, truncated to 4 KiB. Decode errors never carry payload values at all.
//! - **Exact replay.** [`DeadLetterQueue::replay`] publishes each selected record back to
//!   its original topic with its original key, value and headers, minus the `dlq-` ones: the
//!   same `ce_id`, so an idempotent consumer that handled it before recognises it.
//!
//! # Example
//!
//! ```no_run
//! use pegasus_events::dead_letter::{DeadLetterQueue, DeadLetterReason, ReplayFilter};
//! use pegasus_events::KafkaConfig;
//!
//! # async fn run() -> Result<(), pegasus_events::Error> {
//! let dead_letters = DeadLetterQueue::new(&KafkaConfig::from_env()?)?;
//! let report = dead_letters
//!     .replay(
//!         &ReplayFilter::new()
//!             .original_topic("shipping.shipment.created")
//!             .reason(DeadLetterReason::Handler),
//!     )
//!     .await?;
//! println!("replayed {} of {} dead letters", report.replayed, report.examined);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::config::{client_error, KafkaConfig};
use crate::connection::{check_brokers, ClientWatch, WatchedProducer, Watching};
use crate::error::{Error, Result};
use crate::producer::EncodedRecord;
use crate::wire::{self, ByteHeaders};

/// The dead-letter topic of the design: `dlq-events`.
pub const DEFAULT_TOPIC: &str = "dlq-events";
/// The group id prefix of [`DeadLetterQueue`]'s readers: each read uses a new group
/// `pegasus-dlq-reader-<uuid v7>`, so ACLs grant it by prefix.
pub const READER_GROUP_PREFIX: &str = "pegasus-dlq-reader-";

/// The headers a dead-lettered record carries besides its original ones (all UTF-8).
pub mod header {
    /// Every dead-letter header starts with this; replay drops them.
    pub const PREFIX: &str = "dlq-";
    /// Topic the record was read from.
    pub const ORIGINAL_TOPIC: &str = "dlq-original-topic";
    /// Its partition, decimal.
    pub const ORIGINAL_PARTITION: &str = "dlq-original-partition";
    /// Its offset, decimal.
    pub const ORIGINAL_OFFSET: &str = "dlq-original-offset";
    /// Its timestamp, milliseconds since the epoch.
    pub const ORIGINAL_TIMESTAMP: &str = "dlq-original-timestamp";
    /// The consumer group that failed to handle it.
    pub const CONSUMER_GROUP: &str = "dlq-consumer-group";
    /// `decode`, `handler`, `panic` or `publish`.
    pub const REASON: &str = "dlq-reason";
    /// The failure's text: redacted, at most 4 KiB.
    pub const ERROR: &str = "dlq-error";
    /// How many times the record was tried.
    pub const ATTEMPTS: &str = "dlq-attempts";
    /// RFC 3339 UTC time of the last failure.
    pub const FAILED_AT: &str = "dlq-failed-at";
}

/// Longest `dlq-error` value, in bytes.
pub const MAX_ERROR_BYTES: usize = 4096;

/// Why a record was dead-lettered (`dlq-reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// It could not be decoded: malformed JSON, a missing or wrong header, an unknown
    /// schema version, an event type no handler takes.
    Decode,
    /// The handler failed permanently, or on every allowed attempt.
    Handler,
    /// The handler panicked.
    Panic,
    /// The outbox relay could not publish the record: the broker refused it for good (too
    /// large, not authorised, an invalid topic), so sending it again cannot succeed. Written
    /// by the relay (group `outbox-relay`), never by a consumer.
    Publish,
}

impl DeadLetterReason {
    /// The header value: `decode`, `handler`, `panic` or `publish`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::Handler => "handler",
            DeadLetterReason::Panic => "panic",
            DeadLetterReason::Publish => "publish",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "decode" => Some(DeadLetterReason::Decode),
            "handler" => Some(DeadLetterReason::Handler),
            "panic" => Some(DeadLetterReason::Panic),
            "publish" => Some(DeadLetterReason::Publish),
            _ => None,
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dead-lettered record as read back from the dead-letter topic.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The original record: its topic is `dlq-original-topic`, and key, value and headers
    /// are as they were read (the `dlq-` headers removed). Replay publishes exactly this.
    pub record: EncodedRecord,
    /// The partition it was read from.
    pub original_partition: i32,
    /// Its offset there.
    pub original_offset: i64,
    /// Its timestamp, milliseconds since the epoch, when it had one.
    pub original_timestamp: Option<i64>,
    /// The group that failed to handle it.
    pub consumer_group: String,
    /// Why it was dead-lettered.
    pub reason: DeadLetterReason,
    /// The failure's text (redacted).
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it failed the last time.
    pub failed_at: DateTime<Utc>,
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset in the dead-letter topic.
    pub offset: i64,
}

impl DeadLetter {
    /// The event id (`ce_id`), when the record had one.
    pub fn event_id(&self) -> Option<Uuid> {
        self.record.event_id()
    }

    /// The id a consumer gave this record when it read it as plain JSON without an id of
    /// its own (no `ce_specversion`, no `ce_id`, not structured mode): derived from where
    /// it was stored, `None` for any other record. Replay writes it as the record's `ce_id`,
    /// so the replayed record keeps the id it had ([`wire::plain_record_id`]).
    pub fn plain_record_id(&self) -> Option<Uuid> {
        let has = |name: &str| self.record.headers.iter().any(|(n, _)| n == name);
        let content_type = self.record.header(wire::header::CONTENT_TYPE);
        let structured = wire::is_structured(content_type.map(str::as_bytes));
        let plain = !has(wire::header::SPEC_VERSION) && !has(wire::header::ID) && !structured;
        plain.then(|| {
            wire::plain_record_id(
                &self.record.topic,
                self.original_partition,
                self.original_offset,
            )
        })
    }

    /// Reads a dead-letter record; an error names the `dlq-` header that is missing or
    /// malformed.
    fn from_message<M>(message: &M) -> Result<Self>
    where
        M: Message,
        M::Headers: ByteHeaders,
    {
        let mut original = Vec::new();
        let mut dlq = HashMap::new();
        if let Some(headers) = message.headers() {
            for h in headers.iter_bytes() {
                // `EncodedRecord` keeps names as text, so a record with a name that is not
                // UTF-8 cannot be replayed byte for byte: it is unreadable, not altered.
                let name = std::str::from_utf8(h.name).map_err(|_| Error::MalformedHeader {
                    header: "(header name)",
                    reason: "a header name is not UTF-8".to_owned(),
                })?;
                if name.starts_with(header::PREFIX) {
                    let value = h.value.and_then(|v| std::str::from_utf8(v).ok());
                    dlq.insert(name.to_owned(), value.unwrap_or_default().to_owned());
                } else {
                    original.push((name.to_owned(), h.value.map(<[u8]>::to_vec)));
                }
            }
        }
        let get = |name: &'static str| {
            dlq.get(name)
                .map(String::as_str)
                .ok_or(Error::MissingHeader { header: name })
        };
        let malformed = |name: &'static str, what: &str| Error::MalformedHeader {
            header: name,
            reason: format!("expected {what}"),
        };
        let number = |name: &'static str| -> Result<i64> {
            get(name)?
                .parse()
                .map_err(|_| malformed(name, "a decimal integer"))
        };
        let original_topic = get(header::ORIGINAL_TOPIC)?.to_owned();
        let reason_text = get(header::REASON)?;
        let reason = DeadLetterReason::parse(reason_text).ok_or_else(|| {
            malformed(header::REASON, "`decode`, `handler`, `panic` or `publish`")
        })?;
        let failed_at = DateTime::parse_from_rfc3339(get(header::FAILED_AT)?)
            .map_err(|_| malformed(header::FAILED_AT, "an RFC 3339 time"))?
            .with_timezone(&Utc);
        Ok(DeadLetter {
            record: EncodedRecord {
                topic: original_topic,
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers: original,
            },
            original_partition: i32::try_from(number(header::ORIGINAL_PARTITION)?)
                .map_err(|_| malformed(header::ORIGINAL_PARTITION, "a partition number"))?,
            original_offset: number(header::ORIGINAL_OFFSET)?,
            original_timestamp: get(header::ORIGINAL_TIMESTAMP)
                .ok()
                .and_then(|t| t.parse().ok()),
            consumer_group: get(header::CONSUMER_GROUP)?.to_owned(),
            reason,
            error: get(header::ERROR).unwrap_or_default().to_owned(),
            attempts: u32::try_from(number(header::ATTEMPTS)?)
                .map_err(|_| malformed(header::ATTEMPTS, "a count of attempts"))?,
            failed_at,
            partition: message.partition(),
            offset: message.offset(),
        })
    }
}

/// Which dead letters to read or replay; every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct ReplayFilter {
    original_topic: Option<String>,
    reason: Option<DeadLetterReason>,
    consumer_group: Option<String>,
    failed_from: Option<DateTime<Utc>>,
    failed_until: Option<DateTime<Utc>>,
    event_ids: Option<Vec<Uuid>>,
}

impl ReplayFilter {
    /// Every dead letter.
    pub fn new() -> Self {
        ReplayFilter::default()
    }

    /// Only records read from `topic`.
    pub fn original_topic(mut self, topic: impl Into<String>) -> Self {
        self.original_topic = Some(topic.into());
        self
    }

    /// Only records dead-lettered for `reason`.
    pub fn reason(mut self, reason: DeadLetterReason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Only records that `group` failed to handle.
    pub fn consumer_group(mut self, group: impl Into<String>) -> Self {
        self.consumer_group = Some(group.into());
        self
    }

    /// Only records whose last failure (`dlq-failed-at`) is in `from..until`.
    pub fn failed_between(mut self, from: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        self.failed_from = Some(from);
        self.failed_until = Some(until);
        self
    }

    /// Only records with one of these event ids (`ce_id`, or for a plain record without
    /// one, the id derived from its place: [`DeadLetter::plain_record_id`]).
    pub fn event_ids(mut self, ids: impl IntoIterator<Item = Uuid>) -> Self {
        self.event_ids = Some(ids.into_iter().collect());
        self
    }

    /// Whether `letter` is selected.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.original_topic
            .as_ref()
            .is_none_or(|t| *t == letter.record.topic)
            && self.reason.is_none_or(|r| r == letter.reason)
            && self
                .consumer_group
                .as_ref()
                .is_none_or(|g| *g == letter.consumer_group)
            && self.failed_from.is_none_or(|from| letter.failed_at >= from)
            && self
                .failed_until
                .is_none_or(|until| letter.failed_at < until)
            && self.event_ids.as_ref().is_none_or(|ids| {
                letter
                    .event_id()
                    .or_else(|| letter.plain_record_id())
                    .is_some_and(|id| ids.contains(&id))
            })
    }
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters read.
    pub examined: usize,
    /// Of those, selected by the filter.
    pub matched: usize,
    /// Of those, published back and acknowledged.
    pub replayed: usize,
    /// Records in the dead-letter topic without readable `dlq-` headers (written by
    /// something else); left alone.
    pub unreadable: usize,
}

/// Reads and replays the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetterQueue {
    config: KafkaConfig,
    topic: String,
    read_timeout: Duration,
}

impl std::fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetterQueue {
    /// The dead-letter topic [`DEFAULT_TOPIC`] of the cluster `config` points at.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        config.validate()?;
        Ok(DeadLetterQueue {
            config: config.clone(),
            topic: DEFAULT_TOPIC.to_owned(),
            read_timeout: Duration::from_secs(30),
        })
    }

    /// Uses `topic` instead of [`DEFAULT_TOPIC`].
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// How long reading may go without progress before it fails: 30 s.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Reads every dead letter the topic holds now (up to its end when the call starts)
    /// that `filter` selects, in partition and offset order. Records without readable
    /// `dlq-` headers are skipped.
    pub async fn read(&self, filter: &ReplayFilter) -> Result<Vec<DeadLetter>> {
        let (letters, _) = self.read_with_counts(filter).await?;
        Ok(letters)
    }

    /// Publishes every dead letter `filter` selects back to its original topic, with its
    /// original key, value and non-`dlq-` headers, and waits for each acknowledgement.
    /// The dead letters stay in the dead-letter topic.
    pub async fn replay(&self, filter: &ReplayFilter) -> Result<ReplayReport> {
        let (letters, mut report) = self.read_with_counts(filter).await?;
        let producer: WatchedProducer = self
            .config
            .producer_config()?
            .create_with_context(ClientWatch::new(
                &self.config,
                "replay producer",
                Watching::Client,
            ))
            .map_err(|e| client_error("replay producer", e))?;
        let timeout = self.config.producer.delivery_timeout;
        for letter in &letters {
            let record = &letter.record;
            let mut headers = record.headers.iter().fold(
                OwnedHeaders::new_with_capacity(record.headers.len() + 1),
                |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: value.as_deref(),
                    })
                },
            );
            // A plain record without an id of its own was known by an id derived from its
            // old place; at its new place it would get another, so it carries it along.
            let plain_id = letter.plain_record_id().map(|id| id.to_string());
            if let Some(id) = &plain_id {
                headers = headers.insert(Header {
                    key: wire::header::ID,
                    value: Some(id.as_str()),
                });
            }
            let mut outgoing = FutureRecord::to(&record.topic).headers(headers);
            if let Some(key) = &record.key {
                outgoing = outgoing.key(key.as_slice());
            }
            if let Some(payload) = &record.payload {
                outgoing = outgoing.payload(payload.as_slice());
            }
            producer
                .send(outgoing, timeout)
                .await
                .map_err(|(source, _)| Error::Delivery {
                    topic: record.topic.clone(),
                    source,
                })?;
            report.replayed += 1;
            tracing::info!(
                topic = %record.topic,
                dead_letter_partition = letter.partition,
                dead_letter_offset = letter.offset,
                event_id = ?letter.event_id(),
                "dead letter replayed"
            );
        }
        Ok(report)
    }

    async fn read_with_counts(
        &self,
        filter: &ReplayFilter,
    ) -> Result<(Vec<DeadLetter>, ReplayReport)> {
        check_brokers(&self.config, "dead-letter reader").await?;
        let queue = self.clone();
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || queue.read_blocking(&filter))
            .await
            .map_err(|e| Error::TaskFailed {
                task: "the dead-letter reader".to_owned(),
                reason: e.to_string(),
            })?
    }

    fn read_blocking(&self, filter: &ReplayFilter) -> Result<(Vec<DeadLetter>, ReplayReport)> {
        let mut report = ReplayReport::default();
        let mut letters = Vec::new();
        let mut client = self.config.client_config()?;
        client
            .set(
                "group.id",
                format!("{READER_GROUP_PREFIX}{}", Uuid::now_v7()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer<ClientWatch> = client
            .create_with_context(ClientWatch::new(
                &self.config,
                "dead-letter reader",
                Watching::Client,
            ))
            .map_err(|e| client_error("dead-letter reader", e))?;
        let consumer_error = |operation, source| Error::Consumer { operation, source };
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), self.read_timeout)
            .map_err(|e| consumer_error("fetch dead-letter topic metadata", e))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        // Read up to the end as it is now: records dead-lettered during the read are left
        // for the next one.
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, partition, self.read_timeout)
                .map_err(|e| consumer_error("fetch dead-letter watermarks", e))?;
            if high > low {
                remaining.insert(partition, high);
                assignment
                    .add_partition_offset(&self.topic, partition, Offset::Offset(low))
                    .map_err(|e| consumer_error("assign dead-letter partitions", e))?;
            }
        }
        if remaining.is_empty() {
            return Ok((letters, report));
        }
        consumer
            .assign(&assignment)
            .map_err(|e| consumer_error("assign dead-letter partitions", e))?;
        let mut last_progress = Instant::now();
        while !remaining.is_empty() {
            if last_progress.elapsed() > self.read_timeout {
                return Err(Error::Consumer {
                    operation: "read the dead-letter topic",
                    source: KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                    ),
                });
            }
            let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
                // Nothing came: a partition whose position reached its end is done even if
                // its last offsets held no record to return (a transaction marker).
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        if let (Offset::Offset(at), Some(&end)) =
                            (element.offset(), remaining.get(&element.partition()))
                        {
                            if at >= end {
                                remaining.remove(&element.partition());
                            }
                        }
                    }
                }
                continue;
            };
            let message = polled.map_err(|e| consumer_error("read the dead-letter topic", e))?;
            last_progress = Instant::now();
            let partition = message.partition();
            let Some(&end) = remaining.get(&partition) else {
                continue;
            };
            if message.offset() >= end {
                remaining.remove(&partition);
                continue;
            }
            if message.offset() + 1 >= end {
                remaining.remove(&partition);
            }
            report.examined += 1;
            match DeadLetter::from_message(&message) {
                Ok(letter) if filter.matches(&letter) => {
                    report.matched += 1;
                    letters.push(letter);
                }
                Ok(_) => {}
                Err(error) => {
                    report.unreadable += 1;
                    tracing::warn!(
                        topic = %self.topic,
                        partition,
                        offset = message.offset(),
                        %error,
                        "record in the dead-letter topic is not a dead letter; skipped"
                    );
                }
            }
        }
        letters.sort_by_key(|l| (l.partition, l.offset));
        Ok((letters, report))
    }
}

/// Why and how often a record failed, for its dead-letter headers.
pub(crate) struct Failure<'a> {
    pub(crate) group: &'a str,
    pub(crate) reason: DeadLetterReason,
    /// Already redacted.
    pub(crate) error: &'a str,
    pub(crate) attempts: u32,
}

/// Writes dead letters for the consumer runtime.
pub(crate) struct DeadLetterWriter {
    producer: WatchedProducer,
    /// The producer's watch, which knows the principal a refusal names.
    watch: ClientWatch,
    topic: String,
    timeout: Duration,
}

impl DeadLetterWriter {
    pub(crate) fn new(config: &KafkaConfig, topic: &str) -> Result<Self> {
        // The consumer beside it reports broker outages; this one would repeat them.
        let watch = ClientWatch::new(config, "dead-letter producer", Watching::Companion);
        let producer = config
            .producer_config()?
            .create_with_context(watch.clone())
            .map_err(|e| client_error("dead-letter producer", e))?;
        Ok(DeadLetterWriter {
            producer,
            watch,
            topic: topic.to_owned(),
            timeout: config.producer.delivery_timeout,
        })
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// The [`Error::NotAuthorized`] a failed write stands for, when the broker refused the
    /// principal `WRITE` on the dead-letter topic: retrying cannot heal that.
    pub(crate) fn refusal(&self, error: &KafkaError) -> Option<Error> {
        (error.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed)).then(
            || {
                self.watch.not_authorized(
                    crate::acl::AclOperation::Write,
                    crate::acl::AclResource::Topic(self.topic.clone()),
                )
            },
        )
    }

    /// Copies `message` to the dead-letter topic and waits for the acknowledgement.
    ///
    /// The original headers are copied by librdkafka itself, never read back as Rust
    /// strings: names and values stay exactly as they were, whatever their bytes.
    pub(crate) async fn write(
        &self,
        message: &OwnedMessage,
        failure: &Failure<'_>,
    ) -> std::result::Result<(i32, i64), KafkaError> {
        let mut headers = message.headers().cloned().unwrap_or_default();
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let timestamp = message.timestamp().to_millis().map(|t| t.to_string());
        let attempts = failure.attempts.to_string();
        let failed_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let error = truncate(failure.error, MAX_ERROR_BYTES);
        let mut add = |key: &str, value: &str| {
            headers = std::mem::replace(&mut headers, OwnedHeaders::new()).insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        };
        add(header::ORIGINAL_TOPIC, message.topic());
        add(header::ORIGINAL_PARTITION, &partition);
        add(header::ORIGINAL_OFFSET, &offset);
        if let Some(timestamp) = &timestamp {
            add(header::ORIGINAL_TIMESTAMP, timestamp);
        }
        add(header::CONSUMER_GROUP, failure.group);
        add(header::REASON, failure.reason.as_str());
        add(header::ERROR, error);
        add(header::ATTEMPTS, &attempts);
        add(header::FAILED_AT, &failed_at);
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(error, _)| error)
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` with every occurrence of each of `values` replaced by `<redacted>`.
///
/// Each value is also matched as `Debug` and JSON would escape it, since error messages
/// often quote values that way.
pub(crate) fn redact<'v>(text: &str, values: impl IntoIterator<Item = &'v str>) -> String {
    let mut out = text.to_owned();
    for value in values {
        if value.is_empty() {
            continue;
        }
        let debug = format!("{value:?}");
        let json = serde_json::to_string(value).unwrap_or_default();
        for form in [value, debug.trim_matches('"'), json.trim_matches('"')] {
            if !form.is_empty() && out.contains(form) {
                out = out.replace(form, crate::event::REDACTED);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate(&"x".repeat(5000), MAX_ERROR_BYTES).len(), 4096);
    }

    #[test]
    fn redaction_replaces_plain_debug_and_json_forms() {
        let text = r#"rejected "pa\"ss" for pa"ss and pa\"ss"#;
        let out = redact(text, ["pa\"ss"]);
        assert!(
            !out.contains("pa\"ss") && !out.contains(r#"pa\"ss"#),
            "{out}"
        );
        assert_eq!(
            redact("user 42 failed", ["42", ""]),
            "user <redacted> failed"
        );
    }

    #[test]
    fn filter_conditions_all_have_to_hold() {
        let letter = DeadLetter {
            record: EncodedRecord {
                topic: "a.b.c".to_owned(),
                key: None,
                payload: None,
                headers: vec![(
                    "ce_id".to_owned(),
                    Some(b"0190b6a4-7c3e-7d2a-9b1e-2f4c5d6e7f80".to_vec()),
                )],
            },
            original_partition: 0,
            original_offset: 1,
            original_timestamp: None,
            consumer_group: "g".to_owned(),
            reason: DeadLetterReason::Decode,
            error: String::new(),
            attempts: 1,
            failed_at: DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            partition: 0,
            offset: 0,
        };
        let id = letter.event_id().unwrap();
        assert!(ReplayFilter::new().matches(&letter));
        assert!(ReplayFilter::new()
            .original_topic("a.b.c")
            .reason(DeadLetterReason::Decode)
            .consumer_group("g")
            .event_ids([id])
            .matches(&letter));
        assert!(!ReplayFilter::new().original_topic("x.y.z").matches(&letter));
        assert!(!ReplayFilter::new()
            .reason(DeadLetterReason::Panic)
            .matches(&letter));
        assert!(!ReplayFilter::new()
            .event_ids([Uuid::nil()])
            .matches(&letter));
        let hour = chrono::Duration::hours(1);
        assert!(ReplayFilter::new()
            .failed_between(letter.failed_at - hour, letter.failed_at + hour)
            .matches(&letter));
        assert!(!ReplayFilter::new()
            .failed_between(letter.failed_at + hour, letter.failed_at + hour * 2)
            .matches(&letter));
    }
}

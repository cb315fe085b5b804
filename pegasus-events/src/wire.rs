//! The wire format: CloudEvents 1.0 in Kafka binary content mode, plus the design's
//! extensions, exactly as `docs/wire-format.md` specifies.
//!
//! # Guarantees
//!
//! - Writing: the record value is the event serialized by serde, with no envelope; the key
//!   is the partition key (or the event id when the event has no key field); the headers
//!   are `ce_specversion`, `ce_id` (a v7 UUID unless the caller gives one), `ce_source`,
//!   `ce_type`, `ce_time` (RFC 3339 UTC with milliseconds), `content-type`,
//!   `ce_schemaversion`, `ce_partitionkey` when keyed, and the optional `ce_subject`,
//!   `ce_correlationid`, `ce_causationid`, `traceparent` and `tracestate`.
//! - Reading accepts three forms: binary mode (the above), structured mode
//!   (`content-type: application/cloudevents+json`, the whole event as JSON with the payload
//!   under `data`), and plain JSON with no `ce_` header at all, as the .NET services publish.
//!   A plain record's id is derived deterministically from topic, partition and offset, so
//!   a redelivery has the same id.
//! - Every way a record can fail to decode is a typed [`Error`] ([`Error::is_decode_error`]
//!   is true for all of them); decoding never panics and never puts payload values into the
//!   error.
//! - Reading borrows from the record: [`EventMetadata`] holds `Cow`s that point into the
//!   record's headers, so decoding allocates nothing beyond what serde needs for the event.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use chrono::{DateTime, Datelike, Timelike, Utc};
use rdkafka::message::{Message, Timestamp};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Event;
pub use crate::record_headers::{ByteHeaders, HeaderBytes};

/// Header names of the wire contract. Other services and tools read these: they are part of
/// the public contract and never change.
pub mod header {
    /// CloudEvents spec version, always `1.0`.
    pub const SPEC_VERSION: &str = "ce_specversion";
    /// Event id (the design's `EventId`).
    pub const ID: &str = "ce_id";
    /// Publishing service (the design's `SourceService`).
    pub const SOURCE: &str = "ce_source";
    /// Event type name (the design's `EventType`).
    pub const TYPE: &str = "ce_type";
    /// When the event occurred (the design's `OccurredAt`).
    pub const TIME: &str = "ce_time";
    /// Media type of the value.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Schema version of the payload.
    pub const SCHEMA_VERSION: &str = "ce_schemaversion";
    /// Partition key (CloudEvents partitioning extension).
    pub const PARTITION_KEY: &str = "ce_partitionkey";
    /// Entity id the event is about.
    pub const SUBJECT: &str = "ce_subject";
    /// Correlation id of the business flow.
    pub const CORRELATION_ID: &str = "ce_correlationid";
    /// `ce_id` of the event that caused this one.
    pub const CAUSATION_ID: &str = "ce_causationid";
    /// W3C Trace Context parent.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C Trace Context vendor state.
    pub const TRACESTATE: &str = "tracestate";
}

/// The header names as bytes, to match names read as bytes ([`ByteHeaders`]).
mod name {
    pub(super) const SPEC_VERSION: &[u8] = super::header::SPEC_VERSION.as_bytes();
    pub(super) const ID: &[u8] = super::header::ID.as_bytes();
    pub(super) const SOURCE: &[u8] = super::header::SOURCE.as_bytes();
    pub(super) const TYPE: &[u8] = super::header::TYPE.as_bytes();
    pub(super) const TIME: &[u8] = super::header::TIME.as_bytes();
    pub(super) const CONTENT_TYPE: &[u8] = super::header::CONTENT_TYPE.as_bytes();
    pub(super) const SCHEMA_VERSION: &[u8] = super::header::SCHEMA_VERSION.as_bytes();
    pub(super) const PARTITION_KEY: &[u8] = super::header::PARTITION_KEY.as_bytes();
    pub(super) const SUBJECT: &[u8] = super::header::SUBJECT.as_bytes();
    pub(super) const CORRELATION_ID: &[u8] = super::header::CORRELATION_ID.as_bytes();
    pub(super) const CAUSATION_ID: &[u8] = super::header::CAUSATION_ID.as_bytes();
    pub(super) const TRACEPARENT: &[u8] = super::header::TRACEPARENT.as_bytes();
    pub(super) const TRACESTATE: &[u8] = super::header::TRACESTATE.as_bytes();
}

/// The CloudEvents version written and read.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of a binary-mode value.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The content type prefix of a structured-mode record.
pub const CONTENT_TYPE_CLOUDEVENTS: &str = "application/cloudevents";

/// Namespace of the deterministic ids given to plain JSON records (UUID v5 of
/// `topic/partition/offset`).
pub const PLAIN_RECORD_ID_NAMESPACE: Uuid =
    Uuid::from_u128(0x6a1f_4c2e_9b7d_4e0a_8f35_2d61_c0de_e7e1);

/// Optional metadata given when publishing; everything not set is filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishMetadata {
    /// The event id; a new v7 UUID when unset. Setting it lets a retry keep its identity.
    pub event_id: Option<Uuid>,
    /// When the event occurred; now when unset.
    pub occurred_at: Option<DateTime<Utc>>,
    /// `ce_subject`: the entity the event is about.
    pub subject: Option<String>,
    /// `ce_correlationid`: ties the events of one business flow together.
    pub correlation_id: Option<String>,
    /// `ce_causationid`: the id of the event that caused this one.
    pub causation_id: Option<String>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
}

impl PublishMetadata {
    /// Empty metadata.
    pub fn new() -> Self {
        PublishMetadata::default()
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id (the `ce_id` of the causing event).
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Sets the event id.
    pub fn event_id(mut self, id: Uuid) -> Self {
        self.event_id = Some(id);
        self
    }

    /// Sets when the event occurred.
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = Some(at);
        self
    }
}

/// A fixed-capacity string on the stack, so formatting ids and times allocates nothing.
pub(crate) struct StackStr<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    pub(crate) const fn new() -> Self {
        StackStr {
            bytes: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the prefix is valid UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Formats `time` as RFC 3339 in UTC with milliseconds (`2026-01-15T10:30:00.123Z`).
pub(crate) fn format_time(time: &DateTime<Utc>) -> StackStr<32> {
    let mut out = StackStr::new();
    // Years past 9999 do not fit RFC 3339; clamp rather than fail a publish.
    let year = time.year().clamp(0, 9999);
    let _ = write!(
        out,
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second().min(59),
        (time.nanosecond() % 1_000_000_000) / 1_000_000,
    );
    out
}

/// The header values of one outgoing event, formatted without heap allocation.
///
/// This is the one place that decides which headers a published event carries; the
/// producer and the outbox both write from it.
pub struct OutgoingHeaders<'a> {
    id: Uuid,
    id_text: [u8; 36],
    time: StackStr<32>,
    version: StackStr<10>,
    source: &'a str,
    event_type: &'static str,
    partition_key: Option<&'a str>,
    metadata: Option<&'a PublishMetadata>,
}

impl<'a> OutgoingHeaders<'a> {
    /// The headers of `E` published by `source`, keyed by `partition_key` when the event
    /// has a key field.
    pub fn new<E: Event>(
        source: &'a str,
        partition_key: Option<&'a str>,
        metadata: Option<&'a PublishMetadata>,
    ) -> Self {
        let id = metadata
            .and_then(|m| m.event_id)
            .unwrap_or_else(Uuid::now_v7);
        let time = metadata
            .and_then(|m| m.occurred_at)
            .unwrap_or_else(Utc::now);
        let mut id_text = [0u8; 36];
        id.as_hyphenated().encode_lower(&mut id_text);
        let mut version = StackStr::new();
        let _ = write!(version, "{}", E::VERSION);
        OutgoingHeaders {
            id,
            id_text,
            time: format_time(&time),
            version,
            source,
            event_type: E::NAME,
            partition_key,
            metadata,
        }
    }

    /// The event id.
    pub fn event_id(&self) -> Uuid {
        self.id
    }

    /// The event id as text: the record key of an event without a key field.
    pub fn event_id_str(&self) -> &str {
        // encode_lower writes ASCII hex and hyphens only.
        std::str::from_utf8(&self.id_text).unwrap_or_default()
    }

    /// The record key: the partition key, or the event id.
    pub fn record_key(&self) -> &str {
        match self.partition_key {
            Some(key) => key,
            None => self.event_id_str(),
        }
    }

    /// Calls `write` with every header name and value, in the order of the contract.
    pub fn for_each(&self, mut write: impl FnMut(&'static str, &str)) {
        write(header::SPEC_VERSION, SPEC_VERSION);
        write(header::ID, self.event_id_str());
        write(header::SOURCE, self.source);
        write(header::TYPE, self.event_type);
        write(header::TIME, self.time.as_str());
        write(header::CONTENT_TYPE, CONTENT_TYPE_JSON);
        write(header::SCHEMA_VERSION, self.version.as_str());
        if let Some(key) = self.partition_key {
            write(header::PARTITION_KEY, key);
        }
        if let Some(metadata) = self.metadata {
            let optional = [
                (header::SUBJECT, &metadata.subject),
                (header::CORRELATION_ID, &metadata.correlation_id),
                (header::CAUSATION_ID, &metadata.causation_id),
                (header::TRACEPARENT, &metadata.traceparent),
                (header::TRACESTATE, &metadata.tracestate),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    write(name, value);
                }
            }
        }
    }
}

impl OutgoingHeaders<'_> {
    /// The headers as librdkafka takes them; the values are copied into librdkafka's own
    /// memory, so this costs no Rust allocation.
    pub fn to_kafka_headers(&self) -> rdkafka::message::OwnedHeaders {
        let mut headers = Some(rdkafka::message::OwnedHeaders::new_with_capacity(10));
        self.for_each(|name, value| {
            headers = headers.take().map(|h| {
                h.insert(rdkafka::message::Header {
                    key: name,
                    value: Some(value),
                })
            });
        });
        headers.unwrap_or_default()
    }
}

/// Serializes `event` as the record value: plain JSON exactly as serde writes it.
pub fn encode_payload<E: Event>(event: &E, out: &mut Vec<u8>) -> Result<()> {
    serde_json::to_writer(out, event).map_err(|e| Error::Serialize {
        event_type: E::NAME,
        detail: e.to_string(),
    })
}

/// Decodes a JSON payload into `E` exactly (no version logic), with an error that carries
/// no value from the payload.
pub fn decode_payload<E: Event>(payload: &[u8]) -> Result<E> {
    serde_json::from_slice(payload).map_err(|e| payload_error::<E>(&e))
}

/// Builds [`Error::MalformedPayload`] without any value from the payload: serde's data
/// errors quote the offending value (`invalid type: string "alice@example.com"`), which may
/// be a sensitive field, so only messages that name fields, never values, are kept.
fn payload_error<E: Event>(error: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let detail = match error.classify() {
        Category::Syntax => "not valid JSON".to_owned(),
        Category::Eof => "JSON ends early".to_owned(),
        Category::Io => "read error".to_owned(),
        Category::Data => {
            let message = error.to_string();
            let names_a_field = ["missing field `", "unknown field `", "duplicate field `"]
                .iter()
                .any(|prefix| message.starts_with(prefix));
            if names_a_field {
                // "missing field `x` at line 1 column 2": keep the part before " at line".
                message
                    .split(" at line ")
                    .next()
                    .unwrap_or("does not match the event's fields")
                    .to_owned()
            } else {
                "a value does not match the event's field types".to_owned()
            }
        }
    };
    Error::MalformedPayload {
        event_type: E::NAME,
        detail,
        line: error.line(),
        column: error.column(),
    }
}

/// Which of the three accepted forms a record was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireForm {
    /// CloudEvents binary content mode: `ce_` headers and a plain JSON value.
    Binary,
    /// CloudEvents structured content mode: the whole event as JSON.
    Structured,
    /// Plain JSON with no CloudEvents attributes, as the .NET services publish.
    PlainJson,
}

/// The metadata of a received event, borrowed from the record where possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMetadata<'a> {
    /// `ce_id`, or the derived id of a plain JSON record.
    pub id: Uuid,
    /// `ce_source`; the topic for a plain JSON record.
    pub source: Cow<'a, str>,
    /// `ce_type`.
    pub event_type: Cow<'a, str>,
    /// `ce_time`; the record timestamp for a plain JSON record.
    pub time: DateTime<Utc>,
    /// `ce_schemaversion` as written by the publisher (before any upcast); 1 for plain JSON.
    pub schema_version: u32,
    /// `ce_partitionkey`.
    pub partition_key: Option<Cow<'a, str>>,
    /// `ce_subject`.
    pub subject: Option<Cow<'a, str>>,
    /// `ce_correlationid`.
    pub correlation_id: Option<Cow<'a, str>>,
    /// `ce_causationid`.
    pub causation_id: Option<Cow<'a, str>>,
    /// `traceparent`.
    pub traceparent: Option<Cow<'a, str>>,
    /// `tracestate`.
    pub tracestate: Option<Cow<'a, str>>,
    /// The form the record was in.
    pub form: WireForm,
}

impl EventMetadata<'_> {
    /// A copy that owns its strings, to keep past the record.
    pub fn into_owned(self) -> EventMetadata<'static> {
        let own = |v: Option<Cow<'_, str>>| v.map(|v| Cow::Owned(v.into_owned()));
        EventMetadata {
            id: self.id,
            source: Cow::Owned(self.source.into_owned()),
            event_type: Cow::Owned(self.event_type.into_owned()),
            time: self.time,
            schema_version: self.schema_version,
            partition_key: own(self.partition_key),
            subject: own(self.subject),
            correlation_id: own(self.correlation_id),
            causation_id: own(self.causation_id),
            traceparent: own(self.traceparent),
            tracestate: own(self.tracestate),
            form: self.form,
        }
    }
}

/// A decoded event with its metadata.
#[derive(Clone, Debug)]
pub struct Decoded<'a, E> {
    /// The event, upcast to the newest version.
    pub event: E,
    /// Its metadata.
    pub metadata: EventMetadata<'a>,
}

/// The headers of the contract found on a record (the last one wins when a name repeats).
#[derive(Default)]
struct FoundHeaders<'a> {
    spec_version: Option<&'a [u8]>,
    id: Option<&'a [u8]>,
    source: Option<&'a [u8]>,
    event_type: Option<&'a [u8]>,
    time: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    schema_version: Option<&'a [u8]>,
    partition_key: Option<&'a [u8]>,
    subject: Option<&'a [u8]>,
    correlation_id: Option<&'a [u8]>,
    causation_id: Option<&'a [u8]>,
    traceparent: Option<&'a [u8]>,
    tracestate: Option<&'a [u8]>,
    any_cloudevents: bool,
}

impl<'a> FoundHeaders<'a> {
    fn read<M>(message: &'a M) -> Self
    where
        M: Message,
        M::Headers: ByteHeaders,
    {
        let mut found = FoundHeaders::default();
        let Some(headers) = message.headers() else {
            return found;
        };
        for h in headers.iter_bytes() {
            // Names are compared as bytes: a name that is not UTF-8 is no header of the
            // contract, and must not stop the others from being read.
            let slot = match h.name {
                name::SPEC_VERSION => &mut found.spec_version,
                name::ID => &mut found.id,
                name::SOURCE => &mut found.source,
                name::TYPE => &mut found.event_type,
                name::TIME => &mut found.time,
                name::CONTENT_TYPE => &mut found.content_type,
                name::SCHEMA_VERSION => &mut found.schema_version,
                name::PARTITION_KEY => &mut found.partition_key,
                name::SUBJECT => &mut found.subject,
                name::CORRELATION_ID => &mut found.correlation_id,
                name::CAUSATION_ID => &mut found.causation_id,
                name::TRACEPARENT => &mut found.traceparent,
                name::TRACESTATE => &mut found.tracestate,
                other => {
                    found.any_cloudevents |= other.starts_with(b"ce_");
                    continue;
                }
            };
            found.any_cloudevents |= h.name.starts_with(b"ce_");
            *slot = h.value;
        }
        found
    }
}

fn text<'a>(name: &'static str, value: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(value).map_err(|_| Error::MalformedHeader {
        header: name,
        reason: "not UTF-8".to_owned(),
    })
}

fn required<'a>(name: &'static str, value: Option<&'a [u8]>) -> Result<&'a str> {
    text(name, value.ok_or(Error::MissingHeader { header: name })?)
}

fn optional<'a>(name: &'static str, value: Option<&'a [u8]>) -> Result<Option<Cow<'a, str>>> {
    value.map(|v| text(name, v).map(Cow::Borrowed)).transpose()
}

fn parse_id(name: &'static str, value: &str) -> Result<Uuid> {
    Uuid::try_parse(value).map_err(|_| Error::MalformedHeader {
        header: name,
        reason: "not a UUID".to_owned(),
    })
}

fn parse_time(name: &'static str, value: &str) -> Result<DateTime<Utc>> {
    if let Some(time) = parse_utc_time_fast(value.as_bytes()) {
        return Ok(time);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Error::MalformedHeader {
            header: name,
            reason: "not an RFC 3339 time".to_owned(),
        })
}

/// Parses the shape this library (and most CloudEvents SDKs) writes,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, without chrono's general RFC 3339 parser, which costs
/// a noticeable share of decoding a record. Anything else returns `None` and goes through
/// chrono.
fn parse_utc_time_fast(text: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(text: &[u8], from: usize, len: usize) -> Option<u32> {
        text.get(from..from + len)?.iter().try_fold(0u32, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    }
    if text.len() < 20 || text[text.len() - 1] != b'Z' {
        return None;
    }
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, sep)| text[at] != sep) {
        return None;
    }
    let year = i32::try_from(digits(text, 0, 4)?).ok()?;
    let (month, day) = (digits(text, 5, 2)?, digits(text, 8, 2)?);
    let (hour, minute, second) = (
        digits(text, 11, 2)?,
        digits(text, 14, 2)?,
        digits(text, 17, 2)?,
    );
    let nanos = match text.len() - 20 {
        0 => 0,
        fraction_len @ 2..=10 if text[19] == b'.' => {
            let digits_len = fraction_len - 1;
            digits(text, 20, digits_len)? * 10u32.pow(9 - digits_len as u32)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
}

fn parse_version(name: &'static str, value: &str) -> Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(version) if version >= 1 => Ok(version),
        _ => Err(Error::MalformedHeader {
            header: name,
            reason: "not a schema version (a whole number from 1)".to_owned(),
        }),
    }
}

fn check_type<E: Event>(found: &str) -> Result<()> {
    if found == E::NAME {
        Ok(())
    } else {
        Err(Error::EventTypeMismatch {
            expected: E::NAME,
            found: found.to_owned(),
        })
    }
}

/// The event type a record declares, in any of the three forms; `None` for plain JSON.
///
/// Mixed topics (the design's `identity-events`) dispatch on it before decoding.
pub fn event_type<M>(message: &M) -> Result<Option<Cow<'_, str>>>
where
    M: Message,
    M::Headers: ByteHeaders,
{
    let found = FoundHeaders::read(message);
    if is_structured(found.content_type) {
        let payload = message.payload().ok_or(Error::EmptyPayload)?;
        let envelope: StructuredEnvelope<'_> =
            serde_json::from_slice(payload).map_err(|_| Error::MalformedHeader {
                header: header::CONTENT_TYPE,
                reason: "structured-mode value is not a CloudEvent JSON object".to_owned(),
            })?;
        return Ok(Some(envelope.event_type));
    }
    if !found.any_cloudevents {
        return Ok(None);
    }
    required(header::TYPE, found.event_type).map(|t| Some(Cow::Borrowed(t)))
}

fn is_structured(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        ct.len() >= CONTENT_TYPE_CLOUDEVENTS.len()
            && ct[..CONTENT_TYPE_CLOUDEVENTS.len()]
                .eq_ignore_ascii_case(CONTENT_TYPE_CLOUDEVENTS.as_bytes())
    })
}

fn is_json_content_type(value: &str) -> bool {
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case(CONTENT_TYPE_JSON)
}

/// Decodes a Kafka record into `E` and its metadata, in whichever of the three forms it is.
pub fn decode<E, M>(message: &M) -> Result<Decoded<'_, E>>
where
    E: Event,
    M: Message,
    M::Headers: ByteHeaders,
{
    let found = FoundHeaders::read(message);
    if is_structured(found.content_type) {
        return decode_structured(message);
    }
    if found.any_cloudevents {
        return decode_binary(message, &found);
    }
    decode_plain(message)
}

fn decode_binary<'a, E: Event, M: Message>(
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Decoded<'a, E>> {
    let spec = required(header::SPEC_VERSION, found.spec_version)?;
    if spec != SPEC_VERSION {
        return Err(Error::UnsupportedSpecVersion {
            found: spec.to_owned(),
        });
    }
    let event_type = required(header::TYPE, found.event_type)?;
    check_type::<E>(event_type)?;
    let id = parse_id(header::ID, required(header::ID, found.id)?)?;
    let source = required(header::SOURCE, found.source)?;
    let time = parse_time(header::TIME, required(header::TIME, found.time)?)?;
    let content_type = required(header::CONTENT_TYPE, found.content_type)?;
    if !is_json_content_type(content_type) {
        return Err(Error::MalformedHeader {
            header: header::CONTENT_TYPE,
            reason: format!("expected `{CONTENT_TYPE_JSON}`"),
        });
    }
    let schema_version = parse_version(
        header::SCHEMA_VERSION,
        required(header::SCHEMA_VERSION, found.schema_version)?,
    )?;
    let payload = message.payload().ok_or(Error::EmptyPayload)?;
    let event = E::decode_version(schema_version, payload)?;
    Ok(Decoded {
        event,
        metadata: EventMetadata {
            id,
            source: Cow::Borrowed(source),
            event_type: Cow::Borrowed(event_type),
            time,
            schema_version,
            partition_key: optional(header::PARTITION_KEY, found.partition_key)?,
            subject: optional(header::SUBJECT, found.subject)?,
            correlation_id: optional(header::CORRELATION_ID, found.correlation_id)?,
            causation_id: optional(header::CAUSATION_ID, found.causation_id)?,
            traceparent: optional(header::TRACEPARENT, found.traceparent)?,
            tracestate: optional(header::TRACESTATE, found.tracestate)?,
            form: WireForm::Binary,
        },
    })
}

/// A schema version in structured mode may be written as a JSON string or number.
#[derive(Deserialize)]
#[serde(untagged)]
enum VersionValue<'a> {
    Number(u64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

/// The CloudEvents JSON format, with the payload left unparsed.
#[derive(Deserialize)]
struct StructuredEnvelope<'a> {
    #[serde(borrow)]
    specversion: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    datacontenttype: Option<Cow<'a, str>>,
    #[serde(borrow)]
    schemaversion: Option<VersionValue<'a>>,
    #[serde(borrow)]
    partitionkey: Option<Cow<'a, str>>,
    #[serde(borrow)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow)]
    correlationid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    causationid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tracestate: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

fn decode_structured<E: Event, M: Message>(message: &M) -> Result<Decoded<'_, E>> {
    const ATTRIBUTE: &str = "content-type";
    let payload = message.payload().ok_or(Error::EmptyPayload)?;
    let envelope: StructuredEnvelope<'_> =
        serde_json::from_slice(payload).map_err(|e| Error::MalformedPayload {
            event_type: E::NAME,
            detail: "structured-mode value is not a CloudEvent JSON object with a `type`"
                .to_owned(),
            line: e.line(),
            column: e.column(),
        })?;
    let missing = |name: &'static str| Error::MissingHeader { header: name };
    let spec = envelope.specversion.ok_or_else(|| missing("specversion"))?;
    if spec != SPEC_VERSION {
        return Err(Error::UnsupportedSpecVersion {
            found: spec.into_owned(),
        });
    }
    check_type::<E>(&envelope.event_type)?;
    let id = parse_id("id", &envelope.id.ok_or_else(|| missing("id"))?)?;
    let source = envelope.source.ok_or_else(|| missing("source"))?;
    let time = parse_time("time", &envelope.time.ok_or_else(|| missing("time"))?)?;
    if let Some(content_type) = &envelope.datacontenttype {
        if !is_json_content_type(content_type) {
            return Err(Error::MalformedHeader {
                header: ATTRIBUTE,
                reason: format!("datacontenttype must be `{CONTENT_TYPE_JSON}`"),
            });
        }
    }
    let schema_version = match envelope
        .schemaversion
        .ok_or_else(|| missing("schemaversion"))?
    {
        VersionValue::Number(n) => {
            u32::try_from(n)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or(Error::MalformedHeader {
                    header: "schemaversion",
                    reason: "not a schema version (a whole number from 1)".to_owned(),
                })?
        }
        VersionValue::Text(text) => parse_version("schemaversion", &text)?,
    };
    let data = envelope.data.ok_or(Error::EmptyPayload)?;
    let event = E::decode_version(schema_version, data.get().as_bytes())?;
    Ok(Decoded {
        event,
        metadata: EventMetadata {
            id,
            source,
            event_type: envelope.event_type,
            time,
            schema_version,
            partition_key: envelope.partitionkey,
            subject: envelope.subject,
            correlation_id: envelope.correlationid,
            causation_id: envelope.causationid,
            traceparent: envelope.traceparent,
            tracestate: envelope.tracestate,
            form: WireForm::Structured,
        },
    })
}

/// The id given to a plain JSON record: a UUID v5 of `topic/partition/offset`, so every
/// redelivery of the same record has the same id.
pub fn plain_record_id(topic: &str, partition: i32, offset: i64) -> Uuid {
    let mut name = StackStr::<320>::new();
    if write!(name, "{topic}/{partition}/{offset}").is_ok() {
        Uuid::new_v5(&PLAIN_RECORD_ID_NAMESPACE, name.as_str().as_bytes())
    } else {
        // Topic names are at most 249 bytes, so this branch is for hand-made records only.
        Uuid::new_v5(
            &PLAIN_RECORD_ID_NAMESPACE,
            format!("{topic}/{partition}/{offset}").as_bytes(),
        )
    }
}

fn decode_plain<E: Event, M: Message>(message: &M) -> Result<Decoded<'_, E>> {
    let payload = message.payload().ok_or(Error::EmptyPayload)?;
    let event = E::decode_version(1, payload)?;
    let time = match message.timestamp() {
        Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => {
            DateTime::from_timestamp_millis(ms).unwrap_or_default()
        }
        Timestamp::NotAvailable => DateTime::<Utc>::default(),
    };
    let partition_key = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(Cow::Borrowed);
    Ok(Decoded {
        event,
        metadata: EventMetadata {
            id: plain_record_id(message.topic(), message.partition(), message.offset()),
            source: Cow::Borrowed(message.topic()),
            event_type: Cow::Borrowed(E::NAME),
            time,
            schema_version: 1,
            partition_key,
            subject: None,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            form: WireForm::PlainJson,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_time_parser_agrees_with_chrono_and_declines_other_shapes() {
        for text in [
            "2026-01-15T10:30:00Z",
            "2026-01-15T10:30:00.1Z",
            "2026-01-15T10:30:00.123Z",
            "2026-01-15T10:30:00.123456Z",
            "2026-01-15T10:30:00.123456789Z",
            "2024-02-29T23:59:59.999Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(parse_utc_time_fast(text.as_bytes()), Some(chrono), "{text}");
        }
        for text in [
            "2026-01-15T10:30:00+02:00",
            "2026-01-15 10:30:00Z",
            "2026-02-30T10:30:00Z",
            "2026-01-15T10:30:00.Z",
            "2026-01-15T25:30:00Z",
            "2026-01-15T10:30:00.1234567890Z",
            "20260115T103000Z",
        ] {
            assert_eq!(parse_utc_time_fast(text.as_bytes()), None, "{text}");
        }
        let offset = parse_time(header::TIME, "2026-01-15T12:30:00+02:00").unwrap();
        assert_eq!(
            offset,
            parse_time(header::TIME, "2026-01-15T10:30:00Z").unwrap()
        );
    }

    #[test]
    fn written_times_read_back_exactly_to_the_millisecond() {
        let time = DateTime::parse_from_rfc3339("2026-01-15T10:30:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let written = format_time(&time);
        assert_eq!(written.as_str(), "2026-01-15T10:30:00.123Z");
        let read = parse_time(header::TIME, written.as_str()).unwrap();
        assert_eq!(read.timestamp_millis(), time.timestamp_millis());
    }
}

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
//!
//! # Layout
//!
//! | file | what it holds |
//! |------|---------------|
//! | `header.rs` | the header names of the contract |
//! | `outgoing.rs` | the headers we write, [`PublishMetadata`] |
//! | `read.rs` | reading the contract's headers as bytes, attributes shared by the forms |
//! | `binary.rs`, `structured.rs`, `plain.rs` | the three read forms |
//! | `ids.rs` | event ids, and the ids derived for records that carry none |
//! | `time.rs` | times as written and read |
//! | `metadata.rs` | [`EventMetadata`], [`Decoded`], [`WireForm`] |
//! | `byte_headers.rs` | [`ByteHeaders`]: header names and values as bytes |

use std::borrow::Cow;

use rdkafka::message::Message;

use crate::error::{Error, Result};
use crate::event::Event;

mod base_event;
mod binary;
mod byte_headers;
pub mod header;
mod ids;
mod metadata;
mod outgoing;
mod plain;
mod read;
mod structured;
mod time;

pub use crate::event::{decode_payload, encode_payload};
#[cfg(test)]
pub(crate) use byte_headers::with_raw_header;
pub use byte_headers::{ByteHeaders, HeaderBytes};
pub use ids::{
    event_id_from_text, plain_record_id, FOREIGN_ID_NAMESPACE, PLAIN_RECORD_ID_NAMESPACE,
};
pub use metadata::{Decoded, EventMetadata, WireForm};
pub(crate) use outgoing::encode_event;
pub use outgoing::{OutgoingHeaders, PublishMetadata};

use read::required;
pub(crate) use read::FoundHeaders;

/// The CloudEvents version written and read.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of a binary-mode value.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The content type prefix of a structured-mode record.
pub const CONTENT_TYPE_CLOUDEVENTS: &str = "application/cloudevents";

/// The event type a record declares, in any of the three forms; for plain JSON its
/// `eventType`/`EventType` field (the design's `BaseEvent`), `None` without one.
///
/// Mixed topics (the design's `identity-events`) dispatch on it before decoding.
pub fn event_type<M>(message: &M) -> Result<Option<Cow<'_, str>>>
where
    M: Message,
    M::Headers: ByteHeaders,
{
    event_type_found(message, &FoundHeaders::read(message))
}

/// [`event_type`] with the record's headers already read.
pub(crate) fn event_type_found<'a, M: Message>(
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Option<Cow<'a, str>>> {
    if is_structured(found.content_type) {
        let payload = message.payload().ok_or_else(|| Error::EmptyPayload)?;
        let envelope: structured::StructuredEnvelope<'_> = serde_json::from_slice(payload)
            .map_err(|_| Error::MalformedHeader {
                header: header::CONTENT_TYPE,
                reason: "structured-mode value is not a CloudEvent JSON object".to_owned(),
            })?;
        return Ok(Some(envelope.event_type));
    }
    if found.spec_version.is_none() {
        return Ok(message.payload().and_then(plain::declared_type));
    }
    required(header::TYPE, found.event_type).map(|t| Some(Cow::Borrowed(t)))
}

/// Whether a `content-type` value marks a structured-mode record (`application/cloudevents`
/// and anything after it, compared ignoring ASCII case).
pub(crate) fn is_structured(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        ct.len() >= CONTENT_TYPE_CLOUDEVENTS.len()
            && ct[..CONTENT_TYPE_CLOUDEVENTS.len()]
                .eq_ignore_ascii_case(CONTENT_TYPE_CLOUDEVENTS.as_bytes())
    })
}

pub(super) fn is_json_content_type(value: &str) -> bool {
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
    decode_found(message, &FoundHeaders::read(message))
}

/// [`decode`] with the record's headers already read (the consumer reads them once per
/// record, for its trace context and for decoding).
pub(crate) fn decode_found<'a, E: Event, M: Message>(
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Decoded<'a, E>> {
    if is_structured(found.content_type) {
        return structured::decode_structured(message);
    }
    if found.spec_version.is_some() {
        return binary::decode_binary(message, found);
    }
    plain::decode_plain(message, found)
}

/// A record read up to its event: the metadata checked, and the event's JSON found (the
/// record value, or `data` in structured mode). Decrypting fields happens between this and
/// decoding the event (`crate::encryption`).
pub(crate) struct Located<'a> {
    pub(crate) metadata: EventMetadata<'a>,
    pub(crate) payload: &'a [u8],
}

impl<'a> Located<'a> {
    /// Decodes the event from the payload as it is. An event type with encrypted fields
    /// in the record's schema version is refused here, with
    /// [`Error::EncryptionNotConfigured`]: its payload must be decrypted first.
    pub(crate) fn decode<E: Event>(self) -> Result<Decoded<'a, E>> {
        let version = self.metadata.schema_version;
        if E::HAS_ENCRYPTED_FIELDS && !E::encrypted_fields(version).is_empty() {
            return Err(Error::EncryptionNotConfigured {
                event_type: E::NAME,
                missing: "the reader was given no encryption keys (the consumer's `encryption`)",
            });
        }
        let payload = self.payload;
        self.decode_plaintext(payload)
    }

    /// Decodes the event from `payload` (the located payload, decrypted).
    pub(crate) fn decode_plaintext<E: Event>(self, payload: &[u8]) -> Result<Decoded<'a, E>> {
        let event = E::decode_version(self.metadata.schema_version, payload)?;
        Ok(Decoded {
            event,
            metadata: self.metadata,
        })
    }
}

/// [`decode_found`] up to the event ([`Located`]).
pub(crate) fn locate_found<'a, E: Event, M: Message>(
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Located<'a>> {
    if is_structured(found.content_type) {
        return structured::locate_structured::<E, M>(message);
    }
    if found.spec_version.is_some() {
        return binary::locate_binary::<E, M>(message, found);
    }
    plain::locate_plain::<E, M>(message, found)
}

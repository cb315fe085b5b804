//! Reading the contract's headers off a record, as bytes, and parsing the attributes the
//! read forms share. Nothing here panics on any bytes: a header name that is not UTF-8 is
//! no header of the contract, and a value that cannot be used is a typed error.

use std::borrow::Cow;

use rdkafka::message::Message;
use uuid::Uuid;

use super::byte_headers::ByteHeaders;
use crate::error::{Error, Result};
use crate::event::Event;

/// The header names as bytes, to match names read as bytes ([`ByteHeaders`]).
pub(super) mod name {
    pub(super) const SPEC_VERSION: &[u8] = super::super::header::SPEC_VERSION.as_bytes();
    pub(super) const ID: &[u8] = super::super::header::ID.as_bytes();
    pub(super) const SOURCE: &[u8] = super::super::header::SOURCE.as_bytes();
    pub(super) const TYPE: &[u8] = super::super::header::TYPE.as_bytes();
    pub(super) const TIME: &[u8] = super::super::header::TIME.as_bytes();
    pub(super) const CONTENT_TYPE: &[u8] = super::super::header::CONTENT_TYPE.as_bytes();
    pub(super) const SCHEMA_VERSION: &[u8] = super::super::header::SCHEMA_VERSION.as_bytes();
    pub(super) const PARTITION_KEY: &[u8] = super::super::header::PARTITION_KEY.as_bytes();
    pub(super) const SUBJECT: &[u8] = super::super::header::SUBJECT.as_bytes();
    pub(super) const CORRELATION_ID: &[u8] = super::super::header::CORRELATION_ID.as_bytes();
    pub(super) const CAUSATION_ID: &[u8] = super::super::header::CAUSATION_ID.as_bytes();
    pub(super) const TRACEPARENT: &[u8] = super::super::header::TRACEPARENT.as_bytes();
    pub(super) const TRACESTATE: &[u8] = super::super::header::TRACESTATE.as_bytes();
}

/// The headers of the contract found on a record (the last one wins when a name repeats).
#[derive(Default)]
pub(crate) struct FoundHeaders<'a> {
    pub(crate) spec_version: Option<&'a [u8]>,
    pub(crate) id: Option<&'a [u8]>,
    pub(crate) source: Option<&'a [u8]>,
    pub(crate) event_type: Option<&'a [u8]>,
    pub(crate) time: Option<&'a [u8]>,
    pub(crate) content_type: Option<&'a [u8]>,
    pub(crate) schema_version: Option<&'a [u8]>,
    pub(crate) partition_key: Option<&'a [u8]>,
    pub(crate) subject: Option<&'a [u8]>,
    pub(crate) correlation_id: Option<&'a [u8]>,
    pub(crate) causation_id: Option<&'a [u8]>,
    pub(crate) traceparent: Option<&'a [u8]>,
    pub(crate) tracestate: Option<&'a [u8]>,
}

impl<'a> FoundHeaders<'a> {
    pub(crate) fn read<M>(message: &'a M) -> Self
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
                _ => continue,
            };
            *slot = h.value;
        }
        found
    }
}

pub(super) fn text<'a>(name: &'static str, value: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(value).map_err(|_| Error::MalformedHeader {
        header: name,
        reason: "not UTF-8".to_owned(),
    })
}

pub(super) fn required<'a>(name: &'static str, value: Option<&'a [u8]>) -> Result<&'a str> {
    text(
        name,
        value.ok_or_else(|| Error::MissingHeader { header: name })?,
    )
}

/// An optional attribute: one that is not UTF-8 is left out rather than failing the
/// record (read leniently: the event itself is intact).
pub(super) fn optional(value: Option<&[u8]>) -> Option<Cow<'_, str>> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(Cow::Borrowed)
}

/// The event id an `id` attribute (or the design's `EventId`) stands for: the UUID it is,
/// or, for any other non-empty text (CloudEvents allows any string), a UUID v5 of that
/// text, the same on every delivery ([`super::ids::event_id_from_text`]).
pub(super) fn parse_id(name: &'static str, value: &str) -> Result<Uuid> {
    super::ids::event_id_from_text(value).ok_or_else(|| Error::MalformedHeader {
        header: name,
        reason: "empty (an event id is required and must not be empty)".to_owned(),
    })
}

pub(super) fn parse_version(name: &'static str, value: &str) -> Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(version) if version >= 1 => Ok(version),
        _ => Err(Error::MalformedHeader {
            header: name,
            reason: "not a schema version (a whole number from 1)".to_owned(),
        }),
    }
}

pub(super) fn check_type<E: Event>(found: &str) -> Result<()> {
    if found == E::NAME {
        Ok(())
    } else {
        Err(Error::EventTypeMismatch {
            expected: E::NAME,
            found: found.to_owned(),
        })
    }
}

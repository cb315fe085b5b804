//! Plain JSON records, as the .NET services of the design publish them: no CloudEvents
//! binary-mode attributes (no `ce_specversion`), the event as the record value.
//!
//! # The identity of a plain record
//!
//! - The design's `BaseEvent` fields in the payload, when present ([`super::base_event`]):
//!   `eventId` is the event id (a UUID, or a UUID v5 of its text), `occurredAt` the time,
//!   `eventType` the type (checked against the handler's, and used to pick the handler on
//!   a topic with several types), `sourceService` the source.
//! - Otherwise a `ce_id` header, when the record has one: the dead-letter replay writes it
//!   into a plain record that had no id of its own, so a replayed record keeps its id.
//! - Otherwise an id derived from where the record is stored ([`plain_record_id`]), the
//!   same on every redelivery; the time is the record's timestamp, the source its topic.
//!
//! The schema version of a plain record is 1.

use std::borrow::Cow;

use rdkafka::message::Message;

use super::base_event::BaseEventFields;
use super::header;
use super::ids::plain_record_id;
use super::metadata::{Decoded, EventMetadata, WireForm};
use super::read::{check_type, optional, parse_id, FoundHeaders};
use super::time::{parse_time_loosely, record_time};
use super::Located;
use crate::error::{Error, Result};
use crate::event::Event;

pub(super) fn decode_plain<'a, E: Event, M: Message>(
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Decoded<'a, E>> {
    locate_plain::<E, M>(message, found)?.decode()
}

/// [`decode_plain`] up to the event: the identity read and the payload found. The event's
/// own fields are decoded after the identity (whose errors thus come first).
pub(super) fn locate_plain<'a, E: Event, M: Message>(
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Located<'a>> {
    let payload = message.payload().ok_or_else(|| Error::EmptyPayload)?;
    let base = BaseEventFields::read(payload);
    if let Some(event_type) = &base.event_type {
        check_type::<E>(event_type)?;
    }
    let id = match (&base.event_id, optional(found.id)) {
        (Some(id), _) => parse_id("eventId", id)?,
        (None, Some(id)) => parse_id(header::ID, &id)?,
        (None, None) => plain_record_id(message.topic(), message.partition(), message.offset()),
    };
    let time = match &base.occurred_at {
        Some(time) => parse_time_loosely("occurredAt", time)?,
        None => record_time(message),
    };
    let partition_key = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(Cow::Borrowed);
    Ok(Located {
        payload,
        metadata: EventMetadata {
            id,
            source: base
                .source_service
                .unwrap_or(Cow::Borrowed(message.topic())),
            event_type: base.event_type.unwrap_or(Cow::Borrowed(E::NAME)),
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

/// The type a plain record declares in its payload (`eventType`/`EventType`), if any.
pub(super) fn declared_type(payload: &[u8]) -> Option<Cow<'_, str>> {
    BaseEventFields::read(payload).event_type
}

//! CloudEvents binary content mode: the attributes in `ce_` headers, the event as the
//! record value.

use std::borrow::Cow;

use rdkafka::message::Message;

use super::metadata::{Decoded, EventMetadata, WireForm};
use super::read::{check_type, optional, parse_id, parse_version, required, FoundHeaders};
use super::time::parse_time;
use super::{header, is_json_content_type, CONTENT_TYPE_JSON, SPEC_VERSION};
use crate::error::{Error, Result};
use crate::event::Event;

pub(super) fn decode_binary<'a, E: Event, M: Message>(
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

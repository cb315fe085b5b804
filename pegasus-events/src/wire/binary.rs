//! CloudEvents binary content mode: the attributes in `ce_` headers, the event as the
//! record value.

use std::borrow::Cow;

use rdkafka::message::Message;

use super::metadata::{Decoded, EventMetadata, WireForm};
use super::read::{check_type, optional, parse_id, parse_version, required, text, FoundHeaders};
use super::time::{parse_time, record_time};
use super::Located;
use super::{header, is_json_content_type, CONTENT_TYPE_JSON, SPEC_VERSION};
use crate::error::{Error, Result};
use crate::event::Event;

/// Decodes a binary-mode record: `ce_specversion`, `ce_id`, `ce_source` and `ce_type` are
/// required, as CloudEvents requires them; no `ce_time` is the record's timestamp, no
/// `content-type` is JSON, no `ce_schemaversion` is version 1.
pub(super) fn decode_binary<'a, E: Event, M: Message>(
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Decoded<'a, E>> {
    locate_binary::<E, M>(message, found)?.decode()
}

/// [`decode_binary`] up to the event: the metadata checked and the payload found.
pub(super) fn locate_binary<'a, E: Event, M: Message>(
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Located<'a>> {
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
    // CloudEvents requires only the four above; the others have defaults.
    let time = match found.time {
        Some(time) => parse_time(header::TIME, text(header::TIME, time)?)?,
        None => record_time(message),
    };
    if let Some(content_type) = found.content_type {
        if !is_json_content_type(text(header::CONTENT_TYPE, content_type)?) {
            return Err(Error::MalformedHeader {
                header: header::CONTENT_TYPE,
                reason: format!("expected `{CONTENT_TYPE_JSON}`"),
            });
        }
    }
    let schema_version = match found.schema_version {
        Some(version) => parse_version(
            header::SCHEMA_VERSION,
            text(header::SCHEMA_VERSION, version)?,
        )?,
        None => 1,
    };
    let payload = message.payload().ok_or_else(|| Error::EmptyPayload)?;
    Ok(Located {
        payload,
        metadata: EventMetadata {
            id,
            source: Cow::Borrowed(source),
            event_type: Cow::Borrowed(event_type),
            time,
            schema_version,
            partition_key: optional(found.partition_key),
            subject: optional(found.subject),
            correlation_id: optional(found.correlation_id),
            causation_id: optional(found.causation_id),
            traceparent: optional(found.traceparent),
            tracestate: optional(found.tracestate),
            form: WireForm::Binary,
        },
    })
}

//! CloudEvents structured content mode: the whole event as one JSON object, the payload
//! under `data`.

use std::borrow::Cow;

use rdkafka::message::Message;
use serde::Deserialize;

use super::metadata::{Decoded, EventMetadata, WireForm};
use super::read::{check_type, parse_id, parse_version};
use super::time::{parse_time, record_time};
use super::Located;
use super::{is_json_content_type, CONTENT_TYPE_JSON, SPEC_VERSION};
use crate::error::{Error, Result};
use crate::event::Event;

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
pub(super) struct StructuredEnvelope<'a> {
    #[serde(borrow)]
    specversion: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    pub(super) event_type: Cow<'a, str>,
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

pub(super) fn decode_structured<E: Event, M: Message>(message: &M) -> Result<Decoded<'_, E>> {
    locate_structured::<E, M>(message)?.decode()
}

/// [`decode_structured`] up to the event: the metadata checked and `data` found.
pub(super) fn locate_structured<E: Event, M: Message>(message: &M) -> Result<Located<'_>> {
    const ATTRIBUTE: &str = "content-type";
    let payload = message.payload().ok_or_else(|| Error::EmptyPayload)?;
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
    // CloudEvents requires only specversion, id, source and type; the others default.
    let time = match &envelope.time {
        Some(time) => parse_time("time", time)?,
        None => record_time(message),
    };
    if let Some(content_type) = &envelope.datacontenttype {
        if !is_json_content_type(content_type) {
            return Err(Error::MalformedHeader {
                header: ATTRIBUTE,
                reason: format!("datacontenttype must be `{CONTENT_TYPE_JSON}`"),
            });
        }
    }
    let schema_version = match envelope.schemaversion.unwrap_or(VersionValue::Number(1)) {
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
    Ok(Located {
        payload: data.get().as_bytes(),
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

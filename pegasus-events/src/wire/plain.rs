//! Plain JSON records, as the .NET services of the design publish them: no CloudEvents
//! attributes, the event as the record value.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use rdkafka::message::{Message, Timestamp};

use super::ids::plain_record_id;
use super::metadata::{Decoded, EventMetadata, WireForm};
use crate::error::{Error, Result};
use crate::event::Event;

pub(super) fn decode_plain<E: Event, M: Message>(message: &M) -> Result<Decoded<'_, E>> {
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

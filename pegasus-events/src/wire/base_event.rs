//! The design's `BaseEvent` in a plain JSON payload: `EventId`, `OccurredAt`, `EventType`
//! and `SourceService`, as a .NET service serializes them (camelCase with
//! System.Text.Json's web defaults, PascalCase without).
//!
//! Reading: a plain record that carries them is read with its own id, time, type and
//! source (see [`super::plain`]). Writing (opt-in, `ProducerSettings::base_event_fields`):
//! the four fields are written at the start of the JSON object, camelCase, so a .NET
//! consumer built exactly as the design's services reads every field; the CloudEvents
//! headers are written as always.

use std::borrow::Cow;

use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The `BaseEvent` fields found in a payload, borrowed from it where possible.
#[derive(Default, Deserialize)]
pub(super) struct BaseEventFields<'a> {
    #[serde(borrow, rename = "eventId", alias = "EventId")]
    pub(super) event_id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "occurredAt", alias = "OccurredAt")]
    pub(super) occurred_at: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "eventType", alias = "EventType")]
    pub(super) event_type: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "sourceService", alias = "SourceService")]
    pub(super) source_service: Option<Cow<'a, str>>,
}

impl<'a> BaseEventFields<'a> {
    /// The fields of `payload`; none when it is not a JSON object, or when a field is not
    /// a string (the event is then decoded as a payload without them, and any real
    /// problem with it is the event's decode error).
    pub(super) fn read(payload: &'a [u8]) -> Self {
        serde_json::from_slice(payload).unwrap_or_default()
    }

    fn any(&self) -> Option<&'static str> {
        [
            (self.event_id.is_some(), "eventId"),
            (self.occurred_at.is_some(), "occurredAt"),
            (self.event_type.is_some(), "eventType"),
            (self.source_service.is_some(), "sourceService"),
        ]
        .into_iter()
        .find_map(|(present, name)| present.then_some(name))
    }
}

/// Writes the four `BaseEvent` fields at the start of `payload`, a serialized event.
///
/// Fails with [`Error::Serialize`] when the event is not a JSON object, or already has a
/// field of one of those names (they would be written twice, and readers disagree on
/// which wins).
pub(crate) fn write_base_event_fields(
    payload: &mut Vec<u8>,
    event_type: &'static str,
    event_id: Uuid,
    occurred_at: &str,
    source: &str,
) -> Result<()> {
    let fail = |detail: String| Error::Serialize { event_type, detail };
    if payload.first() != Some(&b'{') {
        return Err(fail(
            "BaseEvent fields need the event to serialize as a JSON object".to_owned(),
        ));
    }
    if let Some(name) = BaseEventFields::read(payload).any() {
        return Err(fail(format!(
            "the event has a field `{name}` of its own; BaseEvent fields would be written twice"
        )));
    }
    let mut head = Vec::with_capacity(160 + source.len());
    head.extend_from_slice(b"{\"eventId\":\"");
    head.extend_from_slice(event_id.hyphenated().to_string().as_bytes());
    head.extend_from_slice(b"\",\"occurredAt\":\"");
    head.extend_from_slice(occurred_at.as_bytes());
    head.extend_from_slice(b"\",\"eventType\":");
    serde_json::to_writer(&mut head, event_type).map_err(|e| fail(e.to_string()))?;
    head.extend_from_slice(b",\"sourceService\":");
    serde_json::to_writer(&mut head, source).map_err(|e| fail(e.to_string()))?;
    // `{}` becomes `{...fields}`; `{"a":1}` becomes `{...fields,"a":1}`.
    let rest = &payload[1..];
    if rest.first() != Some(&b'}') {
        head.push(b',');
    }
    head.extend_from_slice(rest);
    *payload = head;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_event_fields_are_written_first_in_camel_case_and_read_back_in_either_case() {
        let id = Uuid::from_u128(1);
        let mut payload = br#"{"userId":"u1"}"#.to_vec();
        write_base_event_fields(
            &mut payload,
            "UserCreatedEvent",
            id,
            "2026-01-15T10:30:00.123Z",
            "identity-api",
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            r#"{"eventId":"00000000-0000-0000-0000-000000000001","occurredAt":"2026-01-15T10:30:00.123Z","eventType":"UserCreatedEvent","sourceService":"identity-api","userId":"u1"}"#
        );
        let mut empty = b"{}".to_vec();
        write_base_event_fields(&mut empty, "E", id, "t", "s\"q").unwrap();
        let value: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(value["sourceService"], "s\"q");
        let pascal = br#"{"EventId":"x","OccurredAt":"t","EventType":"T","SourceService":"S"}"#;
        let read = BaseEventFields::read(pascal);
        assert_eq!(read.event_id.as_deref(), Some("x"));
        assert_eq!(read.event_type.as_deref(), Some("T"));
        assert_eq!(read.source_service.as_deref(), Some("S"));
    }

    #[test]
    fn an_event_that_is_no_object_or_has_a_base_event_field_is_refused() {
        let id = Uuid::from_u128(1);
        let mut array = b"[1]".to_vec();
        assert!(matches!(
            write_base_event_fields(&mut array, "E", id, "t", "s"),
            Err(Error::Serialize { .. })
        ));
        let mut clash = br#"{"eventType":"mine"}"#.to_vec();
        assert!(matches!(
            write_base_event_fields(&mut clash, "E", id, "t", "s"),
            Err(Error::Serialize { detail, .. }) if detail.contains("eventType")
        ));
        assert_eq!(clash, br#"{"eventType":"mine"}"#);
    }
}

//! What a reader gets: the event, its metadata and the form it came in.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

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

/// A decoded event with its metadata. Its `Debug` shows the event through
/// [`Event::redacted`](crate::Event::redacted): sensitive fields never reach a log.
#[derive(Clone)]
pub struct Decoded<'a, E> {
    /// The event, upcast to the newest version.
    pub event: E,
    /// Its metadata.
    pub metadata: EventMetadata<'a>,
}

impl<E: crate::Event> std::fmt::Debug for Decoded<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("event", &self.event.redacted())
            .field("metadata", &self.metadata)
            .finish()
    }
}

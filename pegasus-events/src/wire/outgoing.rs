//! The headers we write: one place decides which headers a published event carries, in
//! which order and with which values; the producer and the outbox both write from it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::header;
use super::time::{decimal, format_time, StackStr};
use super::{CONTENT_TYPE_JSON, SPEC_VERSION};
use crate::error::Error;
use crate::event::Event;
use crate::telemetry::{check_outgoing, check_tracestate, OutgoingTrace, TraceParent};

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
    /// W3C `traceparent`, written instead of the current span's context. It must be valid
    /// ([`check_outgoing`](crate::telemetry::check_outgoing)); a publish or an outbox enqueue
    /// with a malformed one fails with
    /// [`Error::InvalidTraceContext`](crate::Error::InvalidTraceContext). It is written as
    /// version `00`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`, written with [`PublishMetadata::traceparent`] (never without it);
    /// checked by the recommendation's grammar like the `traceparent`.
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
    /// The current span's context, written unless `metadata` sets a `traceparent`.
    trace: Option<&'a OutgoingTrace>,
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
        OutgoingHeaders {
            id,
            id_text,
            time: format_time(&time),
            version: decimal(E::VERSION),
            source,
            event_type: E::NAME,
            partition_key,
            metadata,
            trace: None,
        }
    }

    /// Also writes `trace` as the `traceparent` and `tracestate` headers, unless the
    /// metadata sets a `traceparent` of its own (which then wins, with its `tracestate`).
    pub(crate) fn with_trace(mut self, trace: Option<&'a OutgoingTrace>) -> Self {
        self.trace = trace;
        self
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
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    write(name, value);
                }
            }
        }
        // The metadata's context, formatted as version 00. The producer and the outbox
        // refused a malformed one before getting here (`encode_event`); should a caller of
        // this public type hand one in anyway, it is left out, never written as it is.
        let given = self
            .metadata
            .and_then(|m| m.traceparent.as_deref())
            .and_then(|parent| TraceParent::parse(parent.as_bytes()).ok());
        if let Some(parent) = given {
            write(header::TRACEPARENT, parent.to_header().as_str());
            let state = self.metadata.and_then(|m| m.tracestate.as_deref());
            if let Some(state) = state.and_then(|s| check_tracestate(s.as_bytes()).ok()) {
                write(header::TRACESTATE, state);
            }
        }
        let explicit = self.metadata.is_some_and(|m| m.traceparent.is_some());
        if let Some(trace) = self.trace.filter(|_| !explicit) {
            write(header::TRACEPARENT, trace.traceparent.as_str());
            if let Some(state) = &trace.tracestate {
                write(header::TRACESTATE, state);
            }
        }
    }
}

impl OutgoingHeaders<'_> {
    /// The headers as librdkafka takes them; the values are copied into librdkafka's own
    /// memory, so this costs no Rust allocation.
    ///
    /// The list is built anew for every record even though five of its headers are the same
    /// for every event of a type: librdkafka takes ownership of a record's list, and copying
    /// a prepared one (`rd_kafka_headers_copy`) allocates and copies each header again,
    /// exactly as inserting it does. What a type shares (names, `ce_source`, `ce_type`,
    /// the constants) is already borrowed, not formatted, so there is nothing left to
    /// prepare on our side; the per-header cost is librdkafka's (one `malloc` per header on
    /// the publishing thread, freed on librdkafka's thread after the acknowledgement).
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

/// Serializes `event` as the record value into `out`; with `base_event_fields`
/// ([`crate::ProducerSettings::base_event_fields`]) the design's `BaseEvent` fields are
/// written into it too. Their id and time are fixed here, and the metadata to write the
/// headers from is returned, so payload and headers carry the same id and time; `None`
/// means: write the headers from the caller's metadata.
pub(crate) fn encode_event<E: Event>(
    event: &E,
    source: &str,
    metadata: Option<&PublishMetadata>,
    base_event_fields: bool,
    out: &mut Vec<u8>,
) -> crate::error::Result<Option<PublishMetadata>> {
    // First, so a refused context leaves nothing published or stored.
    if let Some(metadata) = metadata {
        check_outgoing(
            metadata.traceparent.as_deref(),
            metadata.tracestate.as_deref(),
        )
        .map_err(|(header, reason)| Error::InvalidTraceContext { header, reason })?;
    }
    crate::event::encode_payload(event, out)?;
    if !base_event_fields {
        return Ok(None);
    }
    let mut resolved = metadata.cloned().unwrap_or_default();
    let id = *resolved.event_id.get_or_insert_with(Uuid::now_v7);
    let time = *resolved.occurred_at.get_or_insert_with(Utc::now);
    super::base_event::write_base_event_fields(
        out,
        E::NAME,
        id,
        format_time(&time).as_str(),
        source,
    )?;
    Ok(Some(resolved))
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;
    use crate::property_tests::UserCreatedForTests;

    #[test]
    fn a_malformed_trace_context_in_the_metadata_is_refused_before_anything_is_encoded() {
        let event = UserCreatedForTests::sample();
        let long = format!("00-{}", "z".repeat(100_000));
        let cases = [
            (Some(long.as_str()), None, "traceparent", "wrong length"),
            (
                Some("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"),
                None,
                "traceparent",
                "bad hex",
            ),
            (
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                Some("not a list"),
                "tracestate",
                "key=value",
            ),
            (None, Some("k=v"), "tracestate", "without a traceparent"),
        ];
        for (traceparent, tracestate, header, reason) in cases {
            let metadata = PublishMetadata {
                traceparent: traceparent.map(str::to_owned),
                tracestate: tracestate.map(str::to_owned),
                ..PublishMetadata::default()
            };
            let mut out = Vec::new();
            let error = encode_event(&event, "s", Some(&metadata), false, &mut out).unwrap_err();
            assert!(
                matches!(error, Error::InvalidTraceContext { header: h, .. } if h == header),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(message.starts_with(&format!("`{header}` ")), "{message}");
            assert!(message.contains(reason), "{message}");
            assert!(message.len() < 200, "the value is never shown: {message}");
            assert!(out.is_empty(), "nothing encoded");
        }
    }

    #[test]
    fn a_valid_traceparent_in_the_metadata_is_written_as_version_00_with_its_tracestate() {
        let metadata = PublishMetadata {
            traceparent: Some(
                " cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later ".to_owned(),
            ),
            tracestate: Some("k=v".to_owned()),
            ..PublishMetadata::default()
        };
        let outgoing = OutgoingHeaders::new::<UserCreatedForTests>("s", None, Some(&metadata));
        let mut written = Vec::new();
        outgoing.for_each(|name, value| {
            if name.starts_with("trace") {
                written.push((name, value.to_owned()));
            }
        });
        assert_eq!(
            written,
            [
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()
                ),
                ("tracestate", "k=v".to_owned()),
            ]
        );
    }

    #[test]
    fn a_keyed_event_gets_the_contract_headers_in_order_with_the_key_as_partitionkey() {
        let event = UserCreatedForTests::sample();
        let mut key = String::new();
        assert!(event.write_partition_key(&mut key));
        let metadata = PublishMetadata::new()
            .event_id(Uuid::from_u128(0x0190_f5d2_2222_7000_8000_0000_0000_0003))
            .occurred_at("2026-01-15T10:30:00.123456Z".parse().unwrap());
        let outgoing = OutgoingHeaders::new::<UserCreatedForTests>(
            "identity-api",
            Some(&key),
            Some(&metadata),
        );
        let mut written = Vec::new();
        outgoing.for_each(|name, value| written.push((name, value.to_owned())));
        let expected = [
            ("ce_specversion", "1.0"),
            ("ce_id", "0190f5d2-2222-7000-8000-000000000003"),
            ("ce_source", "identity-api"),
            ("ce_type", "UserCreatedEvent"),
            ("ce_time", "2026-01-15T10:30:00.123Z"),
            ("content-type", "application/json"),
            ("ce_schemaversion", "1"),
            ("ce_partitionkey", "u1"),
        ];
        let written_pairs: Vec<(&str, &str)> =
            written.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(written_pairs, expected);
        assert_eq!(
            outgoing.record_key(),
            "u1",
            "ce_partitionkey repeats the key"
        );

        // What librdkafka is handed is the same list, byte for byte.
        let kafka = outgoing.to_kafka_headers();
        let handed: Vec<(&str, &[u8])> = kafka
            .iter()
            .map(|h| (h.key, h.value.unwrap_or_default()))
            .collect();
        let expected_bytes: Vec<(&str, &[u8])> =
            expected.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        assert_eq!(handed, expected_bytes);
        assert!(
            !written.iter().any(|(_, v)| v.contains("a@example.com")),
            "a sensitive value never reaches a header"
        );
    }
}

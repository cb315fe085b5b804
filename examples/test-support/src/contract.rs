//! The wire contract (`docs/wire-format.md`, sections 1, 2 and 5) checked on a record read
//! raw: the record the services publish for a request, keyed by the entity it is about,
//! with that entity as subject and the request's trace.

use std::collections::BTreeSet;

use chrono::{DateTime, SubsecRound, Utc};
use pegasus_events::wire::{header, CONTENT_TYPE_JSON, SPEC_VERSION};
use pegasus_events::Event;
use uuid::Uuid;

use crate::RawRecord;

/// The headers of a keyed event published with a subject, a correlation id and a
/// `traceparent` (as the services publish every event of a request), in the contract's
/// order: nothing else, nothing twice.
pub const CONTRACT_HEADERS: [&str; 11] = [
    header::SPEC_VERSION,
    header::ID,
    header::SOURCE,
    header::TYPE,
    header::TIME,
    header::CONTENT_TYPE,
    header::SCHEMA_VERSION,
    header::PARTITION_KEY,
    header::SUBJECT,
    header::CORRELATION_ID,
    header::TRACEPARENT,
];

/// The fields of the design's `ShipmentCreatedEvent` value (`destination` is left out
/// when none was given).
pub const SHIPMENT_CREATED_FIELDS: [&str; 6] = [
    "shipmentId",
    "trackingNumber",
    "status",
    "createdAt",
    "createdByUserId",
    "createdByEmail",
];

/// What one record must hold beyond what the contract fixes for every record of its event
/// type.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    /// `ce_source`: the publishing service (`identity-api`, `shipping-api`).
    pub source: &'a str,
    /// The record key, and so `ce_partitionkey`; also `ce_subject`, as the services make
    /// the entity an event is keyed by its subject.
    pub key: &'a str,
    /// The trace id (32 lowercase hex digits) of the request that made the event:
    /// `ce_correlationid`, and the trace `traceparent` continues.
    pub trace_id: &'a str,
    /// When the request was sent: `ce_time`, the time of the `enqueue` during the request,
    /// is not earlier (both cut to the millisecond, as `ce_time` is).
    pub sent: DateTime<Utc>,
    /// When its answer came: `ce_time` is not later.
    pub answered: DateTime<Utc>,
    /// The value's JSON fields, exactly.
    pub fields: &'a [&'a str],
    /// `(text, field)`: `text` is the value's `field`, and appears nowhere else in the
    /// record (key, value and headers together hold it once). For a sensitive value, such
    /// as the user's email as `createdByEmail`.
    pub only_as: &'a [(&'a str, &'a str)],
    /// Texts that appear nowhere in the record, in any letter case (a password, the word
    /// `password`).
    pub nowhere: &'a [&'a str],
}

/// What a record that matched the contract holds.
#[derive(Clone, Debug)]
pub struct Checked<E> {
    /// `ce_id`: the event id a consumer records it under.
    pub id: Uuid,
    /// `ce_time`.
    pub time: DateTime<Utc>,
    /// The value, decoded.
    pub event: E,
}

/// Checks `record` against the contract for an `E` published as `expected` says, and fails
/// the test at the first difference:
///
/// - the key is `expected.key`;
/// - the headers are exactly [`CONTRACT_HEADERS`], in that order, none without a value:
///   `ce_specversion` `1.0`; `ce_id` a UUID v7 in lowercase hyphenated form; `ce_source`
///   `expected.source`; `ce_type` `E::NAME`; `ce_time` `YYYY-MM-DDTHH:MM:SS.mmmZ`, from
///   `expected.sent` to `expected.answered`; `content-type` `application/json`;
///   `ce_schemaversion` `E::VERSION` in decimal; `ce_partitionkey` and `ce_subject` the
///   key; `ce_correlationid` `expected.trace_id`; `traceparent`
///   `00-{trace id}-{16 lowercase hex digits}-01`, the request's trace continued;
/// - the value is an `E` exactly as serde writes it (no envelope, no added field), with
///   exactly `expected.fields`;
/// - each `expected.only_as` text is its field's value and nowhere else, and no
///   `expected.nowhere` text is anywhere in the record.
///
/// Returns the event id, the time and the event, for the caller's checks of its values.
pub fn assert_contract_record<E: Event>(record: &RawRecord, expected: &Expected<'_>) -> Checked<E> {
    let text = record.all_text();
    assert_eq!(
        record.key.as_deref(),
        Some(expected.key.as_bytes()),
        "the key: {text}"
    );
    assert_eq!(record.header_names(), CONTRACT_HEADERS, "{text}");
    assert!(
        record.headers.iter().all(|(_, value)| value.is_some()),
        "a null header value: {record:?}"
    );
    assert_eq!(record.header(header::SPEC_VERSION), Some(SPEC_VERSION));

    let ce_id = record.header(header::ID).expect("ce_id");
    let id = Uuid::parse_str(ce_id).expect("ce_id a UUID");
    assert_eq!(
        ce_id,
        id.hyphenated().to_string(),
        "ce_id lowercase, hyphenated"
    );
    assert_eq!(id.get_version_num(), 7, "ce_id a v7 UUID: {ce_id}");

    assert_eq!(record.header(header::SOURCE), Some(expected.source));
    assert_eq!(record.header(header::TYPE), Some(E::NAME));

    let time = record.header(header::TIME).expect("ce_time");
    assert_eq!(time.len(), 24, "ce_time: {time}");
    assert!(
        time.as_bytes()[19] == b'.' && time.ends_with('Z'),
        "ce_time with milliseconds and Z: {time}"
    );
    let time: DateTime<Utc> = time.parse().expect("ce_time in RFC 3339");
    let (sent, answered) = (expected.sent.trunc_subsecs(3), expected.answered);
    assert!(
        sent <= time && time <= answered,
        "ce_time {time} during the request ({sent} to {answered})"
    );

    assert_eq!(record.header(header::CONTENT_TYPE), Some(CONTENT_TYPE_JSON));
    let version = E::VERSION.to_string();
    assert_eq!(
        record.header(header::SCHEMA_VERSION),
        Some(version.as_str())
    );
    assert_eq!(record.header(header::PARTITION_KEY), Some(expected.key));
    assert_eq!(record.header(header::SUBJECT), Some(expected.key));
    assert_eq!(
        record.header(header::CORRELATION_ID),
        Some(expected.trace_id),
        "the request's trace id"
    );
    let continued = record.header(header::TRACEPARENT).expect("traceparent");
    let parts: Vec<&str> = continued.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent: {continued}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", expected.trace_id, "01"),
        "traceparent continues the request's trace: {continued}"
    );
    assert!(
        parts[2].len() == 16
            && parts[2]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "traceparent's span id: {continued}"
    );

    // The value: the event exactly as serde writes it, with the contract's fields.
    let value = record.value.as_deref().expect("a value");
    let event: E = serde_json::from_slice(value).expect("the event");
    assert_eq!(
        serde_json::to_vec(&event).expect("JSON"),
        value,
        "the value as serde writes the event"
    );
    let fields: BTreeSet<String> = expected.fields.iter().map(|f| (*f).to_owned()).collect();
    assert_eq!(record.fields(), fields, "the value's fields");
    let json = record.json();

    for (secret, field) in expected.only_as {
        assert_eq!(json[field], *secret, "{field}");
        assert_eq!(
            text.matches(secret).count(),
            1,
            "{secret:?} only as {field}: {text}"
        );
    }
    let lowercase = text.to_lowercase();
    for absent in expected.nowhere {
        assert!(
            !lowercase.contains(&absent.to_lowercase()),
            "{absent:?} is in the record: {text}"
        );
    }
    Checked { id, time, event }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use chrono::Duration;
    use event_contracts::{ShipmentCreatedEvent, ShipmentStatus};

    use super::*;

    const EMAIL: &str = "ada@example.com";
    const PASSWORD: &str = "correct horse battery staple";
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    /// The shipment id: key, partition key and subject.
    const KEY: &str = "0190f5d2-2222-7000-8000-000000000001";
    /// A v7 event id.
    const ID: &str = "0190f5d2-2222-7000-8000-000000000003";
    /// When the request was sent, and the event's time.
    const TIME: &str = "2026-01-15T10:30:00.123Z";

    /// A record keyed [`KEY`] with `value` and `headers`, every header with a value.
    fn record(value: &str, headers: &[(&str, &str)]) -> RawRecord {
        RawRecord {
            key: Some(KEY.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), Some(value.as_bytes().to_vec())))
                .collect(),
        }
    }

    /// The value of a shipment numbered `tracking`, as serde writes it.
    fn event(tracking: &str) -> String {
        serde_json::to_string(&ShipmentCreatedEvent {
            shipment_id: KEY.parse().expect("a UUID"),
            tracking_number: tracking.to_owned(),
            status: ShipmentStatus::Created,
            created_at: TIME.parse().expect("a time"),
            created_by_user_id: "user-1".to_owned(),
            created_by_email: EMAIL.to_owned(),
            destination: None,
        })
        .expect("JSON")
    }

    /// A record's headers, names and values, in order.
    type Headers = Vec<(&'static str, String)>;

    /// The headers of [`event`]'s record on the contract, in order.
    fn headers() -> Headers {
        vec![
            (header::SPEC_VERSION, "1.0".to_owned()),
            (header::ID, ID.to_owned()),
            (header::SOURCE, "shipping-api".to_owned()),
            (header::TYPE, "ShipmentCreatedEvent".to_owned()),
            (header::TIME, TIME.to_owned()),
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::SCHEMA_VERSION, "1".to_owned()),
            (header::PARTITION_KEY, KEY.to_owned()),
            (header::SUBJECT, KEY.to_owned()),
            (header::CORRELATION_ID, TRACE_ID.to_owned()),
            (
                header::TRACEPARENT,
                format!("00-{TRACE_ID}-00f067aa0ba902b7-01"),
            ),
        ]
    }

    /// [`assert_contract_record`] on a record of `value` and `headers`, for a request sent
    /// at [`TIME`] and answered 5 ms later.
    fn check(value: &str, headers: &[(&'static str, String)]) -> Checked<ShipmentCreatedEvent> {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let time: DateTime<Utc> = TIME.parse().expect("a time");
        assert_contract_record(
            &record(value, &headers),
            &Expected {
                source: "shipping-api",
                key: KEY,
                trace_id: TRACE_ID,
                sent: time,
                answered: time + Duration::milliseconds(5),
                fields: &SHIPMENT_CREATED_FIELDS,
                only_as: &[(EMAIL, "createdByEmail")],
                nowhere: &[PASSWORD, "password"],
            },
        )
    }

    #[test]
    fn a_record_on_the_contract_passes_with_its_id_time_and_event() {
        let checked = check(&event("T1"), &headers());
        assert_eq!(checked.id.to_string(), ID);
        assert_eq!(checked.time, TIME.parse::<DateTime<Utc>>().expect("a time"));
        assert_eq!(checked.event.tracking_number, "T1");
    }

    #[test]
    fn each_departure_from_the_contract_fails_the_check() {
        let with = |name: &str, value: &str| {
            let mut changed = headers();
            changed
                .iter_mut()
                .find(|(n, _)| *n == name)
                .expect("a header")
                .1 = value.to_owned();
            changed
        };
        let mut swapped = headers();
        swapped.swap(2, 3);
        let mut missing = headers();
        missing.retain(|(name, _)| *name != header::SUBJECT);
        let mut extra = headers();
        extra.push((header::TRACESTATE, "a=b".to_owned()));
        let cases: Vec<(&str, String, Headers)> = vec![
            ("headers out of order", event("T1"), swapped),
            ("a header missing", event("T1"), missing),
            ("a header more", event("T1"), extra),
            (
                "a v4 ce_id",
                event("T1"),
                with(header::ID, "9f1c7a52-5d1e-4b8a-9f3e-2d5c6b7a8e90"),
            ),
            (
                "an uppercase ce_id",
                event("T1"),
                with(header::ID, &ID.to_uppercase()),
            ),
            (
                "another source",
                event("T1"),
                with(header::SOURCE, "identity-api"),
            ),
            (
                "another type",
                event("T1"),
                with(header::TYPE, "UserCreatedEvent"),
            ),
            (
                "ce_time with microseconds",
                event("T1"),
                with(header::TIME, "2026-01-15T10:30:00.123000Z"),
            ),
            (
                "ce_time before the request",
                event("T1"),
                with(header::TIME, "2026-01-15T10:30:00.122Z"),
            ),
            (
                "ce_time after the answer",
                event("T1"),
                with(header::TIME, "2026-01-15T10:30:00.129Z"),
            ),
            (
                "another schema version",
                event("T1"),
                with(header::SCHEMA_VERSION, "2"),
            ),
            (
                "another subject",
                event("T1"),
                with(header::SUBJECT, "user-1"),
            ),
            (
                "another correlation id",
                event("T1"),
                with(header::CORRELATION_ID, "0af7651916cd43dd8448eb211c80319c"),
            ),
            (
                "another trace",
                event("T1"),
                with(
                    header::TRACEPARENT,
                    "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01",
                ),
            ),
            (
                "a field more in the value",
                event("T1").replacen('{', r#"{"extra":1,"#, 1),
                headers(),
            ),
            ("the email twice", event(EMAIL), headers()),
            ("the password", event("PASSWORD-1"), headers()),
        ];
        for (what, value, headers) in cases {
            let checked = catch_unwind(AssertUnwindSafe(|| check(&value, &headers)));
            assert!(checked.is_err(), "{what}: passed the check");
        }
    }
}

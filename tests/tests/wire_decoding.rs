//! Every way a record can fail to decode gives a typed error, never a panic, and never a
//! sensitive value. These use hand-made records, so they need no broker.

use pegasus_events::{wire, Error, Event};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "identity.user.created", name = "UserCreatedEvent")]
struct UserCreated {
    #[event(key)]
    user_id: String,
    #[event(sensitive)]
    email: String,
    age: u32,
}

const GOOD_VALUE: &str = r#"{"userId":"u-1","email":"alice@example.com","age":30}"#;

fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(*v),
        })
    })
}

fn good_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ce_specversion", "1.0"),
        ("ce_id", "0190f5d2-2222-7000-8000-000000000003"),
        ("ce_source", "identity-api"),
        ("ce_type", "UserCreatedEvent"),
        ("ce_time", "2026-01-15T10:30:00.123Z"),
        ("content-type", "application/json"),
        ("ce_schemaversion", "1"),
        ("ce_partitionkey", "u-1"),
    ]
}

fn record(value: Option<&str>, pairs: &[(&str, &str)]) -> OwnedMessage {
    OwnedMessage::new(
        value.map(|v| v.as_bytes().to_vec()),
        Some(b"u-1".to_vec()),
        "identity.user.created".into(),
        Timestamp::CreateTime(1_768_473_000_000),
        2,
        17,
        Some(headers(pairs)),
    )
}

fn without(name: &str) -> Vec<(&'static str, &'static str)> {
    good_headers()
        .into_iter()
        .filter(|(n, _)| *n != name)
        .collect()
}

fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut pairs = without(name);
    pairs.push((name, value));
    pairs
}

fn decode_error(message: &OwnedMessage) -> Error {
    let error = wire::decode::<UserCreated, _>(message).expect_err("must not decode");
    assert!(error.is_decode_error(), "{error:?} is a decode error");
    let shown = format!("{error} {error:?}");
    assert!(
        !shown.contains("alice@example.com"),
        "sensitive value in error: {shown}"
    );
    error
}

#[test]
fn a_well_formed_binary_record_decodes() {
    let message = record(Some(GOOD_VALUE), &good_headers());
    let decoded = wire::decode::<UserCreated, _>(&message).unwrap();
    assert_eq!(decoded.event.user_id, "u-1");
    assert_eq!(decoded.metadata.partition_key.as_deref(), Some("u-1"));
    assert_eq!(decoded.metadata.source, "identity-api");
}

#[test]
fn each_missing_attribute_cloudevents_requires_is_named() {
    for name in ["ce_id", "ce_source", "ce_type"] {
        match decode_error(&record(Some(GOOD_VALUE), &without(name))) {
            Error::MissingHeader { header } => assert_eq!(header, name),
            other => panic!("without {name}: {other:?}"),
        }
    }
    // Without `ce_specversion` a record is no binary-mode CloudEvent: it is read as plain
    // JSON (its `ce_id` still names it), as docs/wire-format.md says.
    let without_spec = record(Some(GOOD_VALUE), &without("ce_specversion"));
    let plain = wire::decode::<UserCreated, _>(&without_spec).unwrap();
    assert_eq!(plain.metadata.form, wire::WireForm::PlainJson);
    assert_eq!(
        plain.metadata.id.to_string(),
        "0190f5d2-2222-7000-8000-000000000003"
    );
}

#[test]
fn the_optional_attributes_default_when_absent() {
    // No ce_time: the record's timestamp; no content-type: JSON; no ce_schemaversion: 1.
    let minimal: Vec<_> = good_headers()
        .into_iter()
        .filter(|(n, _)| ["ce_specversion", "ce_id", "ce_source", "ce_type"].contains(n))
        .collect();
    let minimal = record(Some(GOOD_VALUE), &minimal);
    let decoded = wire::decode::<UserCreated, _>(&minimal).unwrap();
    assert_eq!(decoded.event.age, 30);
    assert_eq!(decoded.metadata.time.timestamp_millis(), 1_768_473_000_000);
    assert_eq!(decoded.metadata.schema_version, 1);
    assert_eq!(
        decoded.metadata.partition_key, None,
        "only ce_partitionkey names it"
    );
    assert_eq!(decoded.metadata.form, wire::WireForm::Binary);
}

#[test]
fn an_unknown_specversion_is_rejected() {
    let error = decode_error(&record(Some(GOOD_VALUE), &with("ce_specversion", "0.3")));
    assert!(matches!(error, Error::UnsupportedSpecVersion { ref found } if found == "0.3"));
}

#[test]
fn a_record_of_another_event_type_is_a_type_mismatch() {
    let error = decode_error(&record(
        Some(GOOD_VALUE),
        &with("ce_type", "UserDeletedEvent"),
    ));
    assert!(matches!(
        error,
        Error::EventTypeMismatch { expected: "UserCreatedEvent", ref found } if found == "UserDeletedEvent"
    ));
}

#[test]
fn malformed_header_values_are_named() {
    let cases = [
        ("ce_id", ""),
        ("ce_time", "yesterday"),
        ("ce_schemaversion", "0"),
        ("ce_schemaversion", "two"),
        ("content-type", "application/xml"),
    ];
    for (name, value) in cases {
        match decode_error(&record(Some(GOOD_VALUE), &with(name, value))) {
            Error::MalformedHeader { header, .. } => assert_eq!(header, name),
            other => panic!("{name}={value}: {other:?}"),
        }
    }
}

#[test]
fn a_newer_schema_version_than_known_is_a_typed_error() {
    let error = decode_error(&record(Some(GOOD_VALUE), &with("ce_schemaversion", "2")));
    assert!(matches!(
        error,
        Error::UnknownSchemaVersion {
            found: 2,
            newest: 1,
            ..
        }
    ));
}

#[test]
fn malformed_json_and_wrong_shapes_are_typed_errors_without_the_values() {
    let bad_values = [
        "{not json",
        "",
        r#"{"userId":"u-1","email":"alice@example.com""#,
        r#"{"userId":"u-1","email":"alice@example.com","age":"alice@example.com"}"#,
        r#"{"userId":"u-1","email":["alice@example.com"],"age":1}"#,
        r#"{"userId":"u-1","age":1}"#,
        r#"[1,2,3]"#,
    ];
    for value in bad_values {
        match decode_error(&record(Some(value), &good_headers())) {
            Error::MalformedPayload { event_type, .. } => {
                assert_eq!(event_type, "UserCreatedEvent")
            }
            other => panic!("{value}: {other:?}"),
        }
    }
    let missing = decode_error(&record(
        Some(r#"{"userId":"u-1","age":1}"#),
        &good_headers(),
    ));
    assert!(
        missing.to_string().contains("missing field `email`"),
        "{missing}"
    );
}

#[test]
fn a_record_without_a_value_is_an_empty_payload_error() {
    assert!(matches!(
        decode_error(&record(None, &good_headers())),
        Error::EmptyPayload
    ));
}

#[test]
fn a_non_utf8_header_is_malformed_not_a_panic() {
    let headers = OwnedHeaders::new().insert(Header {
        key: "ce_specversion",
        value: Some(&[0xff_u8, 0xfe][..]),
    });
    let message = OwnedMessage::new(
        Some(GOOD_VALUE.as_bytes().to_vec()),
        None,
        "identity.user.created".into(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(headers),
    );
    assert!(matches!(
        decode_error(&message),
        Error::MalformedHeader {
            header: "ce_specversion",
            ..
        }
    ));
}

#[test]
fn structured_records_missing_attributes_are_named() {
    let structured = |json: &str| {
        OwnedMessage::new(
            Some(json.as_bytes().to_vec()),
            None,
            "identity.user.created".into(),
            Timestamp::NotAvailable,
            0,
            5,
            Some(headers(&[("content-type", "application/cloudevents+json")])),
        )
    };
    let no_id = structured(&format!(
        r#"{{"specversion":"1.0","source":"s","type":"UserCreatedEvent","time":"2026-01-15T10:30:00Z","schemaversion":1,"data":{GOOD_VALUE}}}"#
    ));
    assert!(matches!(
        decode_error(&no_id),
        Error::MissingHeader { header: "id" }
    ));
    // Only specversion, id, source and type are required; time and schemaversion default.
    let minimal = structured(&format!(
        r#"{{"specversion":"1.0","id":"order-17","source":"s","type":"UserCreatedEvent","data":{GOOD_VALUE}}}"#
    ));
    let decoded = wire::decode::<UserCreated, _>(&minimal).unwrap();
    assert_eq!(decoded.metadata.schema_version, 1);
    assert_eq!(
        decoded.metadata.id,
        uuid::Uuid::new_v5(&wire::FOREIGN_ID_NAMESPACE, b"order-17"),
        "an id that is no UUID stands for a UUID v5 of its text"
    );
    let not_object = structured("[]");
    assert!(matches!(
        decode_error(&not_object),
        Error::MalformedPayload { .. }
    ));
    let ok = structured(&format!(
        r#"{{"specversion":"1.0","id":"0190f5d2-2222-7000-8000-000000000003","source":"s","type":"UserCreatedEvent","time":"2026-01-15T10:30:00Z","schemaversion":1,"data":{GOOD_VALUE}}}"#
    ));
    assert_eq!(wire::decode::<UserCreated, _>(&ok).unwrap().event.age, 30);
    assert_eq!(
        wire::event_type(&ok).unwrap().as_deref(),
        Some("UserCreatedEvent"),
        "mixed topics can dispatch on the structured type"
    );
}

#[test]
fn plain_json_records_get_a_deterministic_id_and_the_record_time() {
    let message = OwnedMessage::new(
        Some(GOOD_VALUE.as_bytes().to_vec()),
        Some(b"u-1".to_vec()),
        "identity.user.created".into(),
        Timestamp::CreateTime(1_768_473_000_000),
        2,
        17,
        None,
    );
    let decoded = wire::decode::<UserCreated, _>(&message).unwrap();
    assert_eq!(
        decoded.metadata.id,
        wire::plain_record_id("identity.user.created", 2, 17)
    );
    assert_ne!(
        decoded.metadata.id,
        wire::plain_record_id("identity.user.created", 2, 18)
    );
    assert_eq!(decoded.metadata.time.timestamp_millis(), 1_768_473_000_000);
    assert_eq!(decoded.metadata.schema_version, 1);
    assert_eq!(wire::event_type(&message).unwrap(), None);
}

#[test]
fn the_redacted_view_of_an_event_never_shows_a_sensitive_field() {
    let event = UserCreated {
        user_id: "u-1".into(),
        email: "alice@example.com".into(),
        age: 30,
    };
    let shown = format!("{:?} {}", event.redacted(), event.redacted());
    assert!(!shown.contains("alice@example.com"), "{shown}");
    assert!(
        shown.contains("<redacted>") && shown.contains("u-1"),
        "{shown}"
    );
}

//! Runtime behaviour of the code `#[derive(Event)]` generates: metadata constants, partition
//! keys, the redacted view, and decoding across schema versions.

use pegasus_events::{Error, Event};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment.created")]
struct ShipmentCreated {
    #[event(key)]
    shipment_id: u64,
    tracking_number: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(
    topic = "identity.user.registered",
    name = "UserRegisteredEvent",
    version = 4
)]
struct UserRegistered {
    #[event(key)]
    user_id: String,
    #[event(sensitive)]
    email_address: String,
    #[event(sensitive)]
    password_hash: String,
    display_name: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.metrics.sampled")]
struct MetricsSampled {
    depots: u32,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "identity-events", free_form_topic, name = "PasswordChanged")]
struct PasswordChanged {
    #[event(key)]
    r#user: uuid::Uuid,
}

// A three-version chain: V1 -> V2 -> V3 (the current type).

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(
    topic = "shipping.shipment.status-changed",
    name = "ShipmentStatusChanged"
)]
struct StatusChangedV1 {
    #[event(key)]
    shipment_id: u64,
    status: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(
    topic = "shipping.shipment.status-changed",
    name = "ShipmentStatusChanged"
)]
#[event(version = 2, upcast_from = StatusChangedV1)]
struct StatusChangedV2 {
    #[event(key)]
    shipment_id: u64,
    status: String,
    depot: String,
}

impl From<StatusChangedV1> for StatusChangedV2 {
    fn from(v1: StatusChangedV1) -> Self {
        StatusChangedV2 {
            shipment_id: v1.shipment_id,
            status: v1.status,
            depot: "unknown".to_owned(),
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(
    topic = "shipping.shipment.status-changed",
    name = "ShipmentStatusChanged"
)]
#[event(version = 3, upcast_from = StatusChangedV2)]
struct StatusChanged {
    #[event(key)]
    shipment_id: u64,
    status: Status,
    depot: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Status {
    InTransit,
    Delivered,
    Other(String),
}

impl From<StatusChangedV2> for StatusChanged {
    fn from(v2: StatusChangedV2) -> Self {
        let status = match v2.status.as_str() {
            "in-transit" => Status::InTransit,
            "delivered" => Status::Delivered,
            _ => Status::Other(v2.status),
        };
        StatusChanged {
            shipment_id: v2.shipment_id,
            status,
            depot: v2.depot,
        }
    }
}

fn payload<E: Serialize>(event: &E) -> Vec<u8> {
    serde_json::to_vec(event).expect("test events serialize")
}

#[test]
fn name_defaults_to_struct_ident_and_version_to_one() {
    assert_eq!(ShipmentCreated::TOPIC, "shipping.shipment.created");
    assert_eq!(ShipmentCreated::NAME, "ShipmentCreated");
    assert_eq!(ShipmentCreated::VERSION, 1);
    assert_eq!(ShipmentCreated::OLDEST_VERSION, 1);
}

#[test]
fn explicit_name_and_version_are_used() {
    assert_eq!(UserRegistered::TOPIC, "identity.user.registered");
    assert_eq!(UserRegistered::NAME, "UserRegisteredEvent");
    assert_eq!(UserRegistered::VERSION, 4);
    // Without `upcast_from`, the only decodable version is the current one.
    assert_eq!(UserRegistered::OLDEST_VERSION, 4);
}

#[test]
fn free_form_topic_is_used_verbatim() {
    assert_eq!(PasswordChanged::TOPIC, "identity-events");
    assert_eq!(PasswordChanged::NAME, "PasswordChanged");
}

#[test]
fn partition_key_is_display_of_key_field() {
    let event = ShipmentCreated {
        shipment_id: 42,
        tracking_number: "TRK-1".to_owned(),
    };
    const { assert!(ShipmentCreated::KEYED) };
    assert_eq!(event.partition_key().as_deref(), Some("42"));

    let user = uuid::Uuid::from_u128(0x1234);
    let changed = PasswordChanged { user };
    assert_eq!(changed.partition_key(), Some(user.to_string()));
}

#[test]
fn partition_key_is_appended_to_the_callers_buffer() {
    let event = ShipmentCreated {
        shipment_id: 7,
        tracking_number: String::new(),
    };
    let mut buffer = String::from("prefix:");
    assert!(event.write_partition_key(&mut buffer));
    assert_eq!(buffer, "prefix:7");
}

#[test]
fn unkeyed_event_has_no_partition_key() {
    let event = MetricsSampled { depots: 3 };
    const { assert!(!MetricsSampled::KEYED) };
    let mut buffer = String::new();
    assert!(!event.write_partition_key(&mut buffer));
    assert!(buffer.is_empty());
    assert_eq!(event.partition_key(), None);
}

#[test]
fn redacted_view_hides_every_sensitive_field() {
    let event = UserRegistered {
        user_id: "u-1".to_owned(),
        email_address: "secret-mail@example.com".to_owned(),
        password_hash: "secret-hash".to_owned(),
        display_name: "Ada".to_owned(),
    };
    for shown in [
        format!("{:?}", event.redacted()),
        format!("{:#?}", event.redacted()),
        format!("{}", event.redacted()),
    ] {
        assert!(
            !shown.contains("secret"),
            "a sensitive value leaked: {shown}"
        );
        assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
    }
}

#[test]
fn visit_sensitive_yields_the_sensitive_values_and_nothing_else() {
    let event = UserRegistered {
        user_id: "u-1".to_owned(),
        email_address: "secret-mail@example.com".to_owned(),
        password_hash: "secret-hash".to_owned(),
        display_name: "Ada".to_owned(),
    };
    let mut visited = Vec::new();
    event.visit_sensitive(&mut |value| visited.push(value.to_owned()));
    assert_eq!(visited, ["secret-mail@example.com", "secret-hash"]);

    let mut none = Vec::new();
    MetricsSampled { depots: 3 }.visit_sensitive(&mut |value| none.push(value.to_owned()));
    assert!(none.is_empty(), "no sensitive field, nothing visited");
}

#[test]
fn redacted_view_is_debug_with_rust_field_names() {
    let event = UserRegistered {
        user_id: "u-1".to_owned(),
        email_address: "a@example.com".to_owned(),
        password_hash: "h".to_owned(),
        display_name: "Ada".to_owned(),
    };
    assert_eq!(
        format!("{:?}", event.redacted()),
        r#"UserRegistered { user_id: "u-1", email_address: <redacted>, password_hash: <redacted>, display_name: "Ada" }"#
    );
    // Raw identifiers are shown as written, without `r#`.
    let changed = PasswordChanged {
        user: uuid::Uuid::nil(),
    };
    assert_eq!(
        format!("{:?}", changed.redacted()),
        "PasswordChanged { user: 00000000-0000-0000-0000-000000000000 }"
    );
}

#[test]
fn current_version_payload_decodes_directly() {
    let event = ShipmentCreated {
        shipment_id: 1,
        tracking_number: "TRK".to_owned(),
    };
    let decoded = ShipmentCreated::decode_version(1, &payload(&event)).unwrap();
    assert_eq!(decoded, event);
}

#[test]
fn upcast_chain_turns_v1_payload_into_v3() {
    assert_eq!(StatusChanged::OLDEST_VERSION, 1);
    assert_eq!(StatusChangedV2::OLDEST_VERSION, 1);

    let v1 = StatusChangedV1 {
        shipment_id: 9,
        status: "delivered".to_owned(),
    };
    let decoded = StatusChanged::decode_version(1, &payload(&v1)).unwrap();
    assert_eq!(
        decoded,
        StatusChanged {
            shipment_id: 9,
            status: Status::Delivered,
            depot: "unknown".to_owned(),
        }
    );
}

#[test]
fn upcast_chain_turns_v2_payload_into_v3() {
    let v2 = StatusChangedV2 {
        shipment_id: 9,
        status: "lost".to_owned(),
        depot: "BER".to_owned(),
    };
    let decoded = StatusChanged::decode_version(2, &payload(&v2)).unwrap();
    assert_eq!(
        decoded,
        StatusChanged {
            shipment_id: 9,
            status: Status::Other("lost".to_owned()),
            depot: "BER".to_owned(),
        }
    );
}

#[test]
fn current_version_of_a_chain_is_not_upcast() {
    let v3 = StatusChanged {
        shipment_id: 9,
        status: Status::InTransit,
        depot: "HAM".to_owned(),
    };
    let decoded = StatusChanged::decode_version(3, &payload(&v3)).unwrap();
    assert_eq!(decoded, v3);
    // The version, not the payload's shape, decides the path: labelled v1, the same bytes
    // are read as a v1 and upcast.
    let relabelled = StatusChanged::decode_version(1, &payload(&v3)).unwrap();
    assert_eq!(relabelled.status, Status::Other("InTransit".to_owned()));
    assert_eq!(relabelled.depot, "unknown");
}

#[test]
fn newer_version_than_known_is_unknown_schema_version_error() {
    let v3 = StatusChanged {
        shipment_id: 9,
        status: Status::InTransit,
        depot: "HAM".to_owned(),
    };
    let error = StatusChanged::decode_version(4, &payload(&v3)).unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnknownSchemaVersion {
                event_type: "ShipmentStatusChanged",
                found: 4,
                newest: 3,
            }
        ),
        "{error:?}"
    );
    assert!(error.is_decode_error());
}

#[test]
fn older_version_without_upcast_is_unsupported_schema_version_error() {
    let event = UserRegistered {
        user_id: "u-1".to_owned(),
        email_address: "a@example.com".to_owned(),
        password_hash: "h".to_owned(),
        display_name: "Ada".to_owned(),
    };
    let error = UserRegistered::decode_version(3, &payload(&event)).unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnsupportedSchemaVersion {
                event_type: "UserRegisteredEvent",
                found: 3,
                oldest: 4,
            }
        ),
        "{error:?}"
    );
}

#[test]
fn version_older_than_the_chain_is_unsupported_schema_version_error() {
    let error = StatusChanged::decode_version(0, b"{}").unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnsupportedSchemaVersion {
                found: 0,
                oldest: 1,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn malformed_payload_is_typed_error() {
    let error =
        ShipmentCreated::decode_version(1, br#"{"shipment_id": "not a number"}"#).unwrap_err();
    assert!(
        matches!(
            error,
            Error::MalformedPayload {
                event_type: "ShipmentCreated",
                line: 1,
                ..
            }
        ),
        "{error:?}"
    );

    // The same holds for a payload that reaches an older type through the chain.
    let error = StatusChanged::decode_version(1, b"not json").unwrap_err();
    assert!(
        matches!(
            error,
            Error::MalformedPayload {
                event_type: "ShipmentStatusChanged",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn serde_attributes_shape_the_payload_not_the_metadata() {
    let event = UserRegistered {
        user_id: "u-1".to_owned(),
        email_address: "a@example.com".to_owned(),
        password_hash: "h".to_owned(),
        display_name: "Ada".to_owned(),
    };
    let json: serde_json::Value = serde_json::from_slice(&payload(&event)).unwrap();
    assert_eq!(json["displayName"], "Ada");
    let decoded = UserRegistered::decode_version(4, &payload(&event)).unwrap();
    assert_eq!(decoded.partition_key().as_deref(), Some("u-1"));
}

/// An event defined by a `macro_rules!` whose attribute values arrive as `$x:literal`
/// fragments: the compiler hands them to the derive inside invisible groups.
macro_rules! event_on {
    ($ty:ident, $topic:literal, $name:literal, $version:literal) => {
        #[derive(Debug, Serialize, Deserialize, Event)]
        #[event(topic = $topic, name = $name, version = $version)]
        struct $ty {
            #[event(key)]
            id: u32,
        }
    };
}

event_on!(FromMacro, "shipping.parcel.weighed", "ParcelWeighed", 2);

#[test]
fn attribute_values_from_macro_literal_fragments_are_read() {
    assert_eq!(FromMacro::TOPIC, "shipping.parcel.weighed");
    assert_eq!(FromMacro::NAME, "ParcelWeighed");
    assert_eq!(FromMacro::VERSION, 2);
    assert_eq!(FromMacro { id: 7 }.partition_key().as_deref(), Some("7"));
}

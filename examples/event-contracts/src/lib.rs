//! The events the Identity and Shipping services exchange, defined once so that the
//! publisher and every consumer compile against the same types: a field renamed or retyped
//! here breaks both sides at build time instead of on the wire.
//!
//! Each event is bound to its topic and its .NET type name (`ce_type`) by
//! `#[derive(Event)]`; its JSON is camelCase, the shape System.Text.Json writes, so .NET
//! services read and write the same records. Emails are `#[event(sensitive)]`: they never
//! appear in a log line, an error or a header. No event carries a password, a password
//! hash or a token (Identity keeps those to itself).
//!
//! Ordering: every user event carries the user's `version`, which Identity raises by one
//! with each change, and every shipment event the shipment's `version`. A consumer keeps
//! the highest version it applied and ignores an event with a lower one, so a redelivered
//! or late update never overwrites a newer state.
//!
//! [`general`] puts the same events on the general topics (`identity-events`,
//! `shipping-events`), unchanged but for the topic.

use chrono::{DateTime, Utc};
use pegasus_events::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod general;

/// The topic names, for code that needs them as values (topic creation, health output,
/// responses); the events themselves are bound to their topics by their derive.
pub mod topics {
    /// `UserCreatedEvent`: a user registered with Identity.
    pub const USER_CREATED: &str = "identity.user.created";
    /// `UserUpdatedEvent`: a user's profile changed.
    pub const USER_UPDATED: &str = "identity.user.updated";
    /// `UserDeactivatedEvent`: a user was deactivated.
    pub const USER_DEACTIVATED: &str = "identity.user.deactivated";
    /// Identity's general topic, several event types on one topic.
    pub const IDENTITY_EVENTS: &str = "identity-events";
    /// `ShipmentCreatedEvent`: a shipment was created.
    pub const SHIPMENT_CREATED: &str = "shipping.shipment.created";
    /// `ShipmentUpdatedEvent`: a shipment's details changed.
    pub const SHIPMENT_UPDATED: &str = "shipping.shipment.updated";
    /// `ShipmentStatusChangedEvent`: a shipment moved to another status.
    pub const SHIPMENT_STATUS_CHANGED: &str = "shipping.shipment.status-changed";
    /// Shipping's general topic, several event types on one topic.
    pub const SHIPPING_EVENTS: &str = "shipping-events";
    /// The dead-letter topic every service's consumers and relays write to.
    pub const DEAD_LETTERS: &str = "dlq-events";
}

/// A user registered with Identity. Shipping keeps a local copy of the user from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "identity.user.created", name = "UserCreatedEvent")]
pub struct UserCreatedEvent {
    /// The user's id, the `sub` of the tokens Identity issues; the partition key, so all
    /// events of one user stay in order within a topic.
    #[event(key)]
    pub user_id: String,
    /// The user's email.
    #[event(sensitive)]
    pub email: String,
    /// The user's display name.
    pub name: String,
    /// When the user registered.
    pub created_at: DateTime<Utc>,
    /// The user's version: 1 at registration.
    pub version: i64,
}

/// A user's profile changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "identity.user.updated", name = "UserUpdatedEvent")]
pub struct UserUpdatedEvent {
    /// The user's id.
    #[event(key)]
    pub user_id: String,
    /// The user's email after the change.
    #[event(sensitive)]
    pub email: String,
    /// The user's display name after the change.
    pub name: String,
    /// When the change was made.
    pub updated_at: DateTime<Utc>,
    /// The user's version after the change; a consumer that holds a higher one ignores
    /// this event.
    pub version: i64,
}

/// A user was deactivated: from now on the user may not act in any service. Deactivation
/// is final; no event makes the user active again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "identity.user.deactivated", name = "UserDeactivatedEvent")]
pub struct UserDeactivatedEvent {
    /// The user's id.
    #[event(key)]
    pub user_id: String,
    /// When the user was deactivated.
    pub deactivated_at: DateTime<Utc>,
    /// The user's version after the deactivation.
    pub version: i64,
}

/// Where a shipment is in its life.
///
/// Written as its name (`"InTransit"`), as the .NET services write their status strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShipmentStatus {
    /// Registered, not yet on its way.
    Created,
    /// On its way.
    InTransit,
    /// Handed over at its destination.
    Delivered,
    /// Called off before delivery.
    Cancelled,
}

impl ShipmentStatus {
    /// The status as written on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ShipmentStatus::Created => "Created",
            ShipmentStatus::InTransit => "InTransit",
            ShipmentStatus::Delivered => "Delivered",
            ShipmentStatus::Cancelled => "Cancelled",
        }
    }

    /// The status named `name` exactly as [`ShipmentStatus::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Self> {
        [
            ShipmentStatus::Created,
            ShipmentStatus::InTransit,
            ShipmentStatus::Delivered,
            ShipmentStatus::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

impl std::fmt::Display for ShipmentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shipment was created (the design's "Create Shipment" flow). Identity appends it to
/// the creating user's activity log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
pub struct ShipmentCreatedEvent {
    /// The shipment's id; the partition key, so one shipment's events stay in order.
    #[event(key)]
    pub shipment_id: Uuid,
    /// The carrier's tracking number.
    pub tracking_number: String,
    /// The status at creation, always `Created`.
    pub status: ShipmentStatus,
    /// When the shipment was created.
    pub created_at: DateTime<Utc>,
    /// The id of the user who created it.
    pub created_by_user_id: String,
    /// That user's email.
    #[event(sensitive)]
    pub created_by_email: String,
    /// Where the shipment goes, when given. Absent from the JSON when unknown, so a
    /// consumer written against the design's six fields reads it unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// A shipment's details (tracking number, destination) changed; its status did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "shipping.shipment.updated", name = "ShipmentUpdatedEvent")]
pub struct ShipmentUpdatedEvent {
    /// The shipment's id.
    #[event(key)]
    pub shipment_id: Uuid,
    /// The tracking number after the change.
    pub tracking_number: String,
    /// The destination after the change, if any.
    pub destination: Option<String>,
    /// When the change was made.
    pub updated_at: DateTime<Utc>,
    /// The id of the user who made it.
    pub updated_by_user_id: String,
    /// The shipment's version after the change (1 at creation).
    pub version: i64,
}

/// A shipment moved from one status to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(
    topic = "shipping.shipment.status-changed",
    name = "ShipmentStatusChangedEvent"
)]
pub struct ShipmentStatusChangedEvent {
    /// The shipment's id.
    #[event(key)]
    pub shipment_id: Uuid,
    /// The tracking number, so a consumer can say which shipment without a lookup.
    pub tracking_number: String,
    /// The status before the change.
    pub old_status: ShipmentStatus,
    /// The status after the change.
    pub new_status: ShipmentStatus,
    /// When the change was made.
    pub changed_at: DateTime<Utc>,
    /// The id of the user who made it.
    pub changed_by_user_id: String,
    /// The shipment's version after the change.
    pub version: i64,
}

#[cfg(test)]
mod tests {
    use pegasus_events::wire::{decode_payload, encode_payload};
    use serde_json::Value;

    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-15T10:30:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("a valid timestamp")
    }

    /// Encodes `event` as the library writes a record value, checks its JSON keys, and
    /// decodes it back to the same value.
    fn round_trip<E: Event + PartialEq + std::fmt::Debug>(event: &E, keys: &[&str]) -> Value {
        let mut bytes = Vec::new();
        encode_payload(event, &mut bytes).expect("encodes");
        let json: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        let object = json.as_object().expect("a JSON object");
        let mut found: Vec<&str> = object.keys().map(String::as_str).collect();
        found.sort_unstable();
        let mut expected = keys.to_vec();
        expected.sort_unstable();
        assert_eq!(found, expected, "{}'s JSON keys", E::NAME);
        for key in object.keys() {
            assert!(!key.to_ascii_lowercase().contains("password"), "{key}");
        }
        let back: E = decode_payload(&bytes).expect("decodes");
        assert_eq!(&back, event);
        json
    }

    fn user_created() -> UserCreatedEvent {
        UserCreatedEvent {
            user_id: "user-1".into(),
            email: "user@example.com".into(),
            name: "Ada".into(),
            created_at: at(),
            version: 1,
        }
    }

    #[test]
    fn topics_and_names_are_the_designs() {
        let bound = [
            (UserCreatedEvent::TOPIC, UserCreatedEvent::NAME),
            (UserUpdatedEvent::TOPIC, UserUpdatedEvent::NAME),
            (UserDeactivatedEvent::TOPIC, UserDeactivatedEvent::NAME),
            (ShipmentCreatedEvent::TOPIC, ShipmentCreatedEvent::NAME),
            (ShipmentUpdatedEvent::TOPIC, ShipmentUpdatedEvent::NAME),
            (
                ShipmentStatusChangedEvent::TOPIC,
                ShipmentStatusChangedEvent::NAME,
            ),
        ];
        assert_eq!(
            bound,
            [
                (topics::USER_CREATED, "UserCreatedEvent"),
                (topics::USER_UPDATED, "UserUpdatedEvent"),
                (topics::USER_DEACTIVATED, "UserDeactivatedEvent"),
                (topics::SHIPMENT_CREATED, "ShipmentCreatedEvent"),
                (topics::SHIPMENT_UPDATED, "ShipmentUpdatedEvent"),
                (
                    topics::SHIPMENT_STATUS_CHANGED,
                    "ShipmentStatusChangedEvent"
                ),
            ]
        );
        assert_eq!(topics::IDENTITY_EVENTS, "identity-events");
        assert_eq!(topics::SHIPPING_EVENTS, "shipping-events");
        assert_eq!(topics::DEAD_LETTERS, "dlq-events");
    }

    #[test]
    fn every_event_is_keyed_by_its_entity() {
        let mut key = String::new();
        assert!(user_created().write_partition_key(&mut key));
        assert_eq!(key, "user-1");
        for keyed in [
            UserUpdatedEvent::KEYED,
            UserDeactivatedEvent::KEYED,
            ShipmentCreatedEvent::KEYED,
            ShipmentUpdatedEvent::KEYED,
            ShipmentStatusChangedEvent::KEYED,
        ] {
            assert!(keyed);
        }
    }

    #[test]
    fn user_events_round_trip_in_camel_case() {
        let created = round_trip(
            &user_created(),
            &["userId", "email", "name", "createdAt", "version"],
        );
        assert_eq!(created["createdAt"], "2026-01-15T10:30:00Z");
        round_trip(
            &UserUpdatedEvent {
                user_id: "user-1".into(),
                email: "new@example.com".into(),
                name: "Ada L.".into(),
                updated_at: at(),
                version: 2,
            },
            &["userId", "email", "name", "updatedAt", "version"],
        );
        round_trip(
            &UserDeactivatedEvent {
                user_id: "user-1".into(),
                deactivated_at: at(),
                version: 3,
            },
            &["userId", "deactivatedAt", "version"],
        );
    }

    #[test]
    fn shipment_events_round_trip_in_camel_case() {
        let id = Uuid::now_v7();
        let mut created = ShipmentCreatedEvent {
            shipment_id: id,
            tracking_number: "TRACK123".into(),
            status: ShipmentStatus::Created,
            created_at: at(),
            created_by_user_id: "auth0|123".into(),
            created_by_email: "user@example.com".into(),
            destination: None,
        };
        // Without a destination: exactly the design's six fields.
        let json = round_trip(
            &created,
            &[
                "shipmentId",
                "trackingNumber",
                "status",
                "createdAt",
                "createdByUserId",
                "createdByEmail",
            ],
        );
        assert_eq!(json["status"], "Created");
        created.destination = Some("Oslo".into());
        round_trip(
            &created,
            &[
                "shipmentId",
                "trackingNumber",
                "status",
                "createdAt",
                "createdByUserId",
                "createdByEmail",
                "destination",
            ],
        );
        round_trip(
            &ShipmentUpdatedEvent {
                shipment_id: id,
                tracking_number: "TRACK124".into(),
                destination: Some("Bergen".into()),
                updated_at: at(),
                updated_by_user_id: "auth0|123".into(),
                version: 2,
            },
            &[
                "shipmentId",
                "trackingNumber",
                "destination",
                "updatedAt",
                "updatedByUserId",
                "version",
            ],
        );
        let json = round_trip(
            &ShipmentStatusChangedEvent {
                shipment_id: id,
                tracking_number: "TRACK124".into(),
                old_status: ShipmentStatus::Created,
                new_status: ShipmentStatus::InTransit,
                changed_at: at(),
                changed_by_user_id: "auth0|123".into(),
                version: 3,
            },
            &[
                "shipmentId",
                "trackingNumber",
                "oldStatus",
                "newStatus",
                "changedAt",
                "changedByUserId",
                "version",
            ],
        );
        assert_eq!(json["newStatus"], "InTransit");
    }

    #[test]
    fn the_designs_plain_shipment_json_decodes() {
        // The record the design shows on `shipping.shipment.created`.
        let design = br#"{
            "shipmentId": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "trackingNumber": "TRACK123",
            "status": "Created",
            "createdAt": "2026-01-15T10:30:00Z",
            "createdByUserId": "auth0|123",
            "createdByEmail": "user@example.com"
        }"#;
        let event: ShipmentCreatedEvent = decode_payload(design).expect("decodes");
        assert_eq!(event.tracking_number, "TRACK123");
        assert_eq!(event.destination, None);
    }

    #[test]
    fn emails_are_redacted() {
        let shown = format!("{:?}", user_created().redacted());
        assert!(!shown.contains("user@example.com"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn statuses_parse_as_written() {
        for status in [
            ShipmentStatus::Created,
            ShipmentStatus::InTransit,
            ShipmentStatus::Delivered,
            ShipmentStatus::Cancelled,
        ] {
            assert_eq!(ShipmentStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).expect("serializes"),
                status.as_str()
            );
        }
        assert_eq!(ShipmentStatus::parse("intransit"), None);
    }
}

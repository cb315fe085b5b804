//! The general topics, `identity-events` and `shipping-events`: a copy of an event there
//! is the same event as on its own topic, byte for byte. [`OnIdentityEvents<E>`] and
//! [`OnShippingEvents<E>`] have the same JSON, `ce_type`, schema versions, partition key
//! and redaction as `E`; only the topic differs. So a consumer of a general topic
//! registers one handler per wrapped type, the runtime dispatches each record on its
//! `ce_type`, and each user's (or shipment's) events stay in order there too, since both
//! copies are keyed alike.
//!
//! Only the owner's events can be wrapped: [`OnIdentityEvents`] takes Identity's three
//! user events ([`IdentityEvent`]), [`OnShippingEvents`] Shipping's three shipment events
//! ([`ShippingEvent`]); both traits are sealed, so a shipment event on `identity-events`
//! does not compile.
//!
//! Why wrappers: pegasus-events binds an event type to one topic at compile time
//! (`Event::TOPIC`), and its producer, outbox and consumer take the topic from the type;
//! there is no "this event, that topic". A second `Event` implementation around the same
//! contract type is the way to put it on a second topic. For the same reason a general
//! topic's name is fixed here; a setting can switch a copy on, not rename the topic.
//!
//! Both wrappers are written by one `macro_rules!` (`general_topic!`), so they cannot
//! drift apart; a generic wrapper with a topic marker would need a `PhantomData` field,
//! and `OnIdentityEvents(event)` could no longer be written.

use std::fmt;

use pegasus_events::Event;
use serde::{Deserialize, Serialize};

use crate::topics;

mod sealed {
    /// Keeps [`super::IdentityEvent`] and [`super::ShippingEvent`] to this crate's events.
    pub trait Sealed {}
}

/// An event Identity publishes, and so may copy to `identity-events`: `UserCreatedEvent`,
/// `UserUpdatedEvent`, `UserDeactivatedEvent`. Sealed.
pub trait IdentityEvent: Event + sealed::Sealed {}

/// An event Shipping publishes, and so may copy to `shipping-events`:
/// `ShipmentCreatedEvent`, `ShipmentUpdatedEvent`, `ShipmentStatusChangedEvent`. Sealed.
pub trait ShippingEvent: Event + sealed::Sealed {}

macro_rules! owned_by {
    ($owner:ident: $($event:ty),+) => {$(
        impl sealed::Sealed for $event {}
        impl $owner for $event {}
    )+};
}

owned_by!(IdentityEvent: crate::UserCreatedEvent, crate::UserUpdatedEvent, crate::UserDeactivatedEvent);
owned_by!(ShippingEvent: crate::ShipmentCreatedEvent, crate::ShipmentUpdatedEvent, crate::ShipmentStatusChangedEvent);

/// Writes one general topic's wrapper: a transparent newtype whose `Event` implementation
/// forwards everything to the wrapped event except the topic.
macro_rules! general_topic {
    ($(#[$doc:meta])* $name:ident, $owner:ident, $topic:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name<E>(pub E);

        impl<E: $owner> Event for $name<E> {
            const TOPIC: &'static str = $topic;
            const NAME: &'static str = E::NAME;
            const VERSION: u32 = E::VERSION;
            const OLDEST_VERSION: u32 = E::OLDEST_VERSION;
            const KEYED: bool = E::KEYED;

            fn write_partition_key(&self, out: &mut String) -> bool {
                self.0.write_partition_key(out)
            }

            fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt_redacted(f)
            }

            fn visit_sensitive(&self, visit: &mut dyn FnMut(&str)) {
                self.0.visit_sensitive(visit);
            }

            // Upcasting from an older schema version is the wrapped event's own.
            fn decode_version(
                version: u32,
                payload: &[u8],
            ) -> Result<Self, pegasus_events::Error> {
                E::decode_version(version, payload).map($name)
            }
        }
    };
}

general_topic!(
    /// One of Identity's user events as copied to `identity-events`: the same JSON,
    /// `ce_type`, versions, key and redaction as `E` on its own topic.
    OnIdentityEvents,
    IdentityEvent,
    topics::IDENTITY_EVENTS
);

general_topic!(
    /// One of Shipping's shipment events as copied to `shipping-events`: the same JSON,
    /// `ce_type`, versions, key and redaction as `E` on its own topic.
    OnShippingEvents,
    ShippingEvent,
    topics::SHIPPING_EVENTS
);

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use pegasus_events::wire::{decode_payload, encode_payload};
    use uuid::Uuid;

    use super::*;
    use crate::{ShipmentCreatedEvent, ShipmentStatus, UserCreatedEvent};

    /// Asserts that `copy` is `event` on `topic`: everything else the same, and the
    /// copy's bytes decode back to the event.
    fn assert_same_event_on<E, W>(event: &E, copy: &W, topic: &str, inner: impl Fn(W) -> E)
    where
        E: Event + PartialEq + fmt::Debug,
        W: Event,
    {
        assert_eq!(W::TOPIC, topic);
        assert_ne!(W::TOPIC, E::TOPIC);
        assert_eq!(W::NAME, E::NAME);
        assert_eq!(W::VERSION, E::VERSION);
        assert_eq!(W::OLDEST_VERSION, E::OLDEST_VERSION);
        assert_eq!(W::KEYED, E::KEYED);
        assert!(copy.partition_key().is_some());
        assert_eq!(copy.partition_key(), event.partition_key());
        assert_eq!(
            format!("{:?}", copy.redacted()),
            format!("{:?}", event.redacted())
        );
        let (mut sensitive_copy, mut sensitive_event) = (Vec::new(), Vec::new());
        copy.visit_sensitive(&mut |value| sensitive_copy.push(value.to_owned()));
        event.visit_sensitive(&mut |value| sensitive_event.push(value.to_owned()));
        assert_eq!(sensitive_copy, sensitive_event);
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        encode_payload(copy, &mut mine).expect("encodes");
        encode_payload(event, &mut theirs).expect("encodes");
        assert_eq!(mine, theirs);
        let back: W = decode_payload(&mine).expect("decodes");
        assert_eq!(&inner(back), event);
        let back: W = W::decode_version(E::VERSION, &theirs).expect("decodes");
        assert_eq!(&inner(back), event);
    }

    #[test]
    fn a_copy_on_identity_events_is_the_same_event_on_another_topic() {
        let event = UserCreatedEvent {
            user_id: "u1".into(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            created_at: Utc::now(),
            version: 1,
        };
        let copy = OnIdentityEvents(event.clone());
        assert_same_event_on(&event, &copy, "identity-events", |copy| copy.0);
        // The email is sensitive in both, so neither shows it.
        assert!(!format!("{:?}", copy.redacted()).contains("ada@example.com"));
    }

    #[test]
    fn a_copy_on_shipping_events_is_the_same_event_on_another_topic() {
        let event = ShipmentCreatedEvent {
            shipment_id: Uuid::now_v7(),
            tracking_number: "TRACK1".into(),
            destination: Some("Oslo".into()),
            status: ShipmentStatus::Created,
            created_at: Utc::now(),
            created_by_user_id: "u1".into(),
            created_by_email: "ada@example.com".into(),
        };
        let copy = OnShippingEvents(event.clone());
        assert_same_event_on(&event, &copy, "shipping-events", |copy| copy.0);
        assert!(!format!("{:?}", copy.redacted()).contains("ada@example.com"));
    }
}

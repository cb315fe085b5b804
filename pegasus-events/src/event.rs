//! The event model: what an event is, where it goes, and how it is shown in logs.
//!
//! # Guarantees
//!
//! - An event type is bound to exactly one topic, one type name (`ce_type`) and one schema
//!   version at compile time, by `#[derive(Event)]`. No topic string appears at a call site.
//! - Events with the same partition key go to the same partition, in the order they were
//!   published. The key is the field marked `#[event(key)]`, formatted with `Display`;
//!   without one, the event id is the key.
//! - The redacted view ([`Event::redacted`]) never shows a field marked
//!   `#[event(sensitive)]`. The library only ever logs events through that view, and never
//!   writes event values into errors or headers.
//! - A record of an older schema version is upcast to the newest type through the chain
//!   declared with `#[event(upcast_from = Older)]`; a version newer than the code knows is a
//!   typed decode error ([`Error::UnknownSchemaVersion`]).
//!
//! # Defining an event
//!
//! ```
//! use pegasus_events::Event;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[serde(rename_all = "camelCase")]
//! #[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
//! struct ShipmentCreated {
//!     #[event(key)]
//!     shipment_id: uuid::Uuid,
//!     tracking_number: String,
//!     #[event(sensitive)]
//!     created_by_email: String,
//! }
//!
//! assert_eq!(ShipmentCreated::TOPIC, "shipping.shipment.created");
//! assert_eq!(ShipmentCreated::NAME, "ShipmentCreatedEvent");
//! assert_eq!(ShipmentCreated::VERSION, 1);
//! ```

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::encryption::EncryptedField;
use crate::error::Error;

/// A typed event bound to its topic, type name and schema version.
///
/// Implement it with `#[derive(Event)]`; a hand-written implementation must uphold the same
/// rules the derive checks (topic shape, version at least 1, no sensitive value in
/// [`Event::fmt_redacted`]).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The topic every event of this type is published to, e.g. `shipping.shipment.created`.
    const TOPIC: &'static str;
    /// The event type name written to `ce_type`, e.g. `ShipmentCreatedEvent`.
    const NAME: &'static str;
    /// The schema version written to `ce_schemaversion`; 1 for the first version.
    const VERSION: u32;
    /// The oldest schema version this type can decode (through its upcast chain).
    const OLDEST_VERSION: u32 = Self::VERSION;
    /// Whether the event has a field marked `#[event(key)]`.
    const KEYED: bool;
    /// The fields of this version marked `#[event(encrypted)]`, by JSON name; empty (the
    /// default) for an event without them, whose publishing and decoding then cost nothing
    /// extra ([`crate::encryption`]).
    const ENCRYPTED_FIELDS: &'static [EncryptedField] = &[];
    /// Whether this version or an older one it upcasts from has encrypted fields.
    const HAS_ENCRYPTED_FIELDS: bool = !Self::ENCRYPTED_FIELDS.is_empty();

    /// Appends the partition key (the `#[event(key)]` field, formatted with `Display`) to
    /// `out` and returns `true`, or returns `false` when the event has no key field.
    ///
    /// Writing into a caller's buffer lets the producer reuse one allocation per thread.
    fn write_partition_key(&self, out: &mut String) -> bool;

    /// Formats the event like `Debug`, but with every `#[event(sensitive)]` field replaced
    /// by `<redacted>`.
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;

    /// Calls `visit` with the values of the `#[event(sensitive)]` fields as text (each
    /// string and number inside them), so the runtime can scrub them from error text
    /// before it is logged or written to a dead-letter header.
    ///
    /// The default visits nothing; `#[derive(Event)]` overrides it when a field is
    /// sensitive.
    fn visit_sensitive(&self, visit: &mut dyn FnMut(&str)) {
        let _ = visit;
    }

    /// Decodes a JSON payload written with schema version `version` into this type,
    /// upcasting older versions through the declared chain.
    ///
    /// The default decodes only [`Event::VERSION`]; `#[derive(Event)]` overrides it when
    /// `upcast_from` is given.
    fn decode_version(version: u32, payload: &[u8]) -> Result<Self, Error> {
        decode_exact::<Self>(version, payload)
    }

    /// The encrypted fields of schema version `version` of this event: its own
    /// [`Event::ENCRYPTED_FIELDS`] for [`Event::VERSION`], an older type's list for an older
    /// version (`#[derive(Event)]` follows the `upcast_from` chain), none otherwise.
    fn encrypted_fields(version: u32) -> &'static [EncryptedField] {
        if version == Self::VERSION {
            Self::ENCRYPTED_FIELDS
        } else {
            &[]
        }
    }

    /// A view of the event for logs, with sensitive fields redacted.
    fn redacted(&self) -> Redacted<'_, Self>
    where
        Self: Sized,
    {
        Redacted(self)
    }

    /// The partition key as a new string, if the event has one.
    fn partition_key(&self) -> Option<String> {
        let mut key = String::new();
        self.write_partition_key(&mut key).then_some(key)
    }
}

/// A `Debug` and `Display` view of an event with its sensitive fields redacted.
///
/// Obtained from [`Event::redacted`]; this is the only way the library prints an event.
pub struct Redacted<'a, E: ?Sized>(pub &'a E);

impl<E: Event> fmt::Debug for Redacted<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_redacted(f)
    }
}

impl<E: Event> fmt::Display for Redacted<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_redacted(f)
    }
}

/// The placeholder shown instead of a sensitive value.
pub const REDACTED: &str = "<redacted>";

/// Decodes `payload` as exactly version `E::VERSION` of `E`; any other version is an error
/// that says whether it was older or newer than what `E` knows.
pub fn decode_exact<E: Event>(version: u32, payload: &[u8]) -> Result<E, Error> {
    check_version::<E>(version)?;
    if version < E::VERSION {
        return Err(Error::UnsupportedSchemaVersion {
            event_type: E::NAME,
            found: version,
            oldest: E::OLDEST_VERSION,
        });
    }
    decode_payload::<E>(payload)
}

/// Rejects versions newer than `E::VERSION` and versions older than `E::OLDEST_VERSION`.
pub fn check_version<E: Event>(version: u32) -> Result<(), Error> {
    if version > E::VERSION {
        return Err(Error::UnknownSchemaVersion {
            event_type: E::NAME,
            found: version,
            newest: E::VERSION,
        });
    }
    if version < E::OLDEST_VERSION {
        return Err(Error::UnsupportedSchemaVersion {
            event_type: E::NAME,
            found: version,
            oldest: E::OLDEST_VERSION,
        });
    }
    Ok(())
}

/// Serializes `event` as the record value: plain JSON exactly as serde writes it.
pub fn encode_payload<E: Event>(event: &E, out: &mut Vec<u8>) -> Result<(), Error> {
    serde_json::to_writer(out, event).map_err(|e| Error::Serialize {
        event_type: E::NAME,
        detail: e.to_string(),
    })
}

/// Decodes a JSON payload into `E` exactly (no version logic), with an error that carries
/// no value from the payload.
pub fn decode_payload<E: Event>(payload: &[u8]) -> Result<E, Error> {
    serde_json::from_slice(payload).map_err(|e| payload_error::<E>(&e))
}

/// Builds [`Error::MalformedPayload`] without any value from the payload: serde's data
/// errors quote the offending value (`invalid type: string "alice@example.com"`), which may
/// be a sensitive field, so only messages that name fields, never values, are kept.
fn payload_error<E: Event>(error: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let detail = match error.classify() {
        Category::Syntax => "not valid JSON".to_owned(),
        Category::Eof => "JSON ends early".to_owned(),
        Category::Io => "read error".to_owned(),
        Category::Data => {
            let message = error.to_string();
            let names_a_field = ["missing field `", "unknown field `", "duplicate field `"]
                .iter()
                .any(|prefix| message.starts_with(prefix));
            if names_a_field {
                // "missing field `x` at line 1 column 2": keep the part before " at line".
                message
                    .split(" at line ")
                    .next()
                    .unwrap_or("does not match the event's fields")
                    .to_owned()
            } else {
                "a value does not match the event's field types".to_owned()
            }
        }
    };
    Error::MalformedPayload {
        event_type: E::NAME,
        detail,
        line: error.line(),
        column: error.column(),
    }
}

/// Items used by the code `#[derive(Event)]` generates. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::encryption::EncryptedField;
    pub use crate::event::decode_payload;
    pub use crate::event::{check_version, REDACTED};

    /// Compile-time string equality, for the derive's upcast checks.
    pub const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Visits every string and number inside `value` as serde would write it; for
    /// [`Event::visit_sensitive`](crate::Event::visit_sensitive).
    pub fn visit_sensitive_value<T: ?Sized + serde::Serialize>(
        value: &T,
        visit: &mut dyn FnMut(&str),
    ) {
        fn walk(value: &serde_json::Value, visit: &mut dyn FnMut(&str)) {
            match value {
                serde_json::Value::String(s) => visit(s),
                serde_json::Value::Number(n) => visit(&n.to_string()),
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, visit)),
                serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, visit)),
                serde_json::Value::Bool(_) | serde_json::Value::Null => {}
            }
        }
        if let Ok(json) = serde_json::to_value(value) {
            walk(&json, visit);
        }
    }

    /// A value whose `Debug` prints the redaction placeholder without quotes.
    pub struct RedactedField;

    impl core::fmt::Debug for RedactedField {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(REDACTED)
        }
    }
}

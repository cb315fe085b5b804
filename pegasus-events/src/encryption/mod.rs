//! Field encryption: `#[event(encrypted)]` fields travel as AES-256-GCM envelopes, with
//! keys from a [`KeyProvider`] and, for erasure by forgetting a key, per-subject keys from
//! a [`SubjectKeyStore`].
//!
//! # Guarantees
//!
//! - **No plaintext on the wire.** A field marked `#[event(encrypted)]` is encrypted before
//!   the record leaves the process. Publishing such an event through a producer without
//!   [`Encryption`] fails with [`Error::EncryptionNotConfigured`]; so does enqueueing it in
//!   an outbox without its `with_encryption` (an outbox with it stores the encrypted
//!   payload, which the relay publishes as it is). Encrypted fields are also sensitive: never in
//!   a log line, an error or a dead-letter header written by this crate.
//! - **Self-contained, interoperable values.** The field's JSON value becomes a string: the
//!   base64 of a versioned envelope naming its key, with a random 96-bit nonce, bound to
//!   the event id, the event type and the field's JSON name (`envelope.rs`,
//!   `docs/wire-format.md`, "Encrypted fields"). The plaintext is the field's value as
//!   serde_json writes it (compact JSON, UTF-8). Every other member of the payload is
//!   written exactly as without encryption.
//! - **Rotation without downtime.** Values name their key; a reader decrypts with any key
//!   of its ring ([`KeyRing`]). Adding a key to readers, then making it current on writers,
//!   needs no coordinated restart.
//! - **Refused, not guessed.** A value under a key the ring does not hold
//!   ([`Error::UnknownEncryptionKey`]), one that fails authentication (tampered, or copied
//!   from another event or field: [`Error::DecryptionFailed`]), a malformed envelope or a
//!   plain value where an envelope belongs ([`Error::MalformedEncryptedField`]) are decode
//!   errors: the consumer sends the record to the dead-letter topic with reason `decode`.
//!   Nothing panics on any input.
//! - **Erasure by forgetting a key.** A field marked `#[event(encrypted, subject = f)]`
//!   is encrypted under a key of its own for each value of field `f` (see [`subject`]).
//!   After [`Encryption::forget_subject`], such a field decodes as `null`, so `None` (the
//!   derive requires an `Option`), and the event is handled as usual, never dead-lettered.
//!   A subject key store that cannot be reached holds the record and retries, like an
//!   idempotency store that cannot be reached.
//! - **Zero cost otherwise.** Whether an event type has encrypted fields is a constant
//!   ([`Event::HAS_ENCRYPTED_FIELDS`]): the publish and consume paths of other events
//!   compile to what they were, with no extra allocation.
//!
//! # Schema versions
//!
//! A record is decrypted with the encrypted-field list of the schema version it was
//! written with ([`Event::encrypted_fields`]): with `upcast_from`, an older version's
//! fields are the older type's. Decryption happens before upcasting, so the older type
//! sees plaintext.
//!
//! # Why the payload is rewritten after serde, not inside it
//!
//! serde's `Serialize` of a field has no way to know the event id it will be bound to, nor
//! to wait for a subject key held in a database. So the event is serialized as usual, and
//! the members named by [`Event::ENCRYPTED_FIELDS`] are replaced in the JSON object, every
//! other member being copied as written; reading does the opposite before serde decodes.
//! This costs one more pass over the payload for events with encrypted fields only. The
//! derive computes each field's JSON name from `#[serde(rename)]` and `rename_all`, and
//! refuses serde attributes that would move or hide the field (`flatten`, `skip`, `alias`,
//! differing serialize and deserialize names, `transparent`, `into`, `from`); as a last
//! guard, an encrypted field missing from the serialized object fails the publish instead
//! of going out unencrypted under another name.
//!
//! # Example
//!
//! ```
//! use pegasus_events::encryption::{Encryption, EncryptionKey, KeyRing};
//! use pegasus_events::Event;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[serde(rename_all = "camelCase")]
//! #[event(topic = "identity.user.created", name = "UserCreatedEvent")]
//! struct UserCreated {
//!     #[event(key)]
//!     user_id: String,
//!     #[event(encrypted)]
//!     email: String,
//!     #[event(encrypted, subject = user_id)]
//!     date_of_birth: Option<String>,
//! }
//!
//! let ring = KeyRing::new("2026-01", [EncryptionKey::new("2026-01", [7; 32])?])?;
//! let encryption = Encryption::new(ring);
//! assert_eq!(UserCreated::ENCRYPTED_FIELDS[0].name, "email");
//! assert_eq!(UserCreated::ENCRYPTED_FIELDS[1].subject, Some("userId"));
//! # let _ = encryption;
//! # Ok::<(), pegasus_events::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::Message;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::wire::{ByteHeaders, Decoded, FoundHeaders, PublishMetadata};

mod envelope;
mod keys;
mod payload;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod subject;

pub use keys::{EncryptionKey, KeyProvider, KeyRing};
#[cfg(feature = "postgres")]
pub use postgres::PostgresSubjectKeyStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSubjectKeyStore;
pub use subject::{MemorySubjectKeyStore, StoredSubjectKey, SubjectKeyStore};

use envelope::{Binding, KeyKind, Refused};
use subject::SubjectKeys;

/// One field marked `#[event(encrypted)]`, as the derive describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncryptedField {
    /// The field's JSON name (after `#[serde(rename)]` and `rename_all`); also the name
    /// its value is bound to.
    pub name: &'static str,
    /// With `subject = f`: the JSON name of field `f`, whose value names the subject key.
    pub subject: Option<&'static str>,
}

/// The keys of encrypted fields, given to a producer
/// ([`EventProducer::with_encryption`](crate::EventProducer::with_encryption)) and a
/// consumer ([`ConsumerBuilder::encryption`](crate::consumer::ConsumerBuilder::encryption)).
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct Encryption {
    keys: Arc<dyn KeyProvider>,
    subjects: Option<Arc<SubjectKeys>>,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryption")
            .field("keys", &self.keys)
            .field("subject_keys", &self.subjects.is_some())
            .finish()
    }
}

/// The default bound on how long a process caches a subject key:
/// [`Encryption::with_subject_keys`].
pub const DEFAULT_SUBJECT_KEY_CACHE_TTL: Duration = Duration::from_secs(30);

impl Encryption {
    /// Encryption with the keys of `keys` (usually a [`KeyRing`]).
    pub fn new(keys: impl KeyProvider) -> Self {
        Encryption {
            keys: Arc::new(keys),
            subjects: None,
        }
    }

    /// Also keeps per-subject keys in `store`, caching each for at most `cache_ttl`
    /// ([`DEFAULT_SUBJECT_KEY_CACHE_TTL`] is a fair default): a subject forgotten by
    /// another process stops decrypting here within that time.
    pub fn with_subject_keys(mut self, store: impl SubjectKeyStore, cache_ttl: Duration) -> Self {
        self.subjects = Some(Arc::new(SubjectKeys::new(store, cache_ttl)));
        self
    }

    /// The key provider.
    pub fn keys(&self) -> &dyn KeyProvider {
        &*self.keys
    }

    /// Deletes the key of `subject`, so every value encrypted under it, wherever it is
    /// stored, decodes as erased from now on (in other processes, within their cache's
    /// bound). Returns whether the subject had a key.
    pub async fn forget_subject(&self, subject: &str) -> Result<bool> {
        self.subject_keys("")?.forget(subject).await
    }

    fn subject_keys(&self, event_type: &'static str) -> Result<&SubjectKeys> {
        self.subjects
            .as_deref()
            .ok_or(Error::EncryptionNotConfigured {
                event_type,
                missing: "no subject key store was given (Encryption::with_subject_keys)",
            })
    }

    /// Decodes a record like [`crate::wire::decode`], decrypting its encrypted fields
    /// first: for reading records outside the consumer runtime (tests, tools, dead letters).
    pub async fn decode<'a, E, M>(&self, message: &'a M) -> Result<Decoded<'a, E>>
    where
        E: Event,
        M: Message,
        M::Headers: ByteHeaders,
    {
        decode_found(Some(self), message, &FoundHeaders::read(message)).await
    }

    /// Serializes `event` as the record value with its encrypted fields encrypted, bound
    /// to the event id `event_id` (the record's `ce_id`), into `out`: what the producer
    /// writes, for tests, tools and benchmarks.
    pub async fn encode_payload<E: Event>(
        &self,
        event: &E,
        event_id: Uuid,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let mut plain = Vec::with_capacity(256);
        crate::event::encode_payload(event, &mut plain)?;
        if E::ENCRYPTED_FIELDS.is_empty() {
            out.extend_from_slice(&plain);
            return Ok(());
        }
        self.encrypt_payload(E::NAME, E::ENCRYPTED_FIELDS, event_id, &plain, out)
            .await
    }

    /// Encrypts `plaintext` (a JSON value) under the ring's current key for the field
    /// `field` of the event `event_id` of type `event_type`; returns the text that is the
    /// field's JSON string. For tests and other implementations; publishing does this
    /// itself.
    pub fn encrypt_value(
        &self,
        event_id: Uuid,
        event_type: &'static str,
        field: &'static str,
        plaintext: &[u8],
    ) -> Result<String> {
        let key = self.keys.current_key()?;
        let binding = Binding {
            event_id,
            event_type,
            field,
        };
        envelope::seal(&key, KeyKind::Ring, &binding, plaintext)
            .map_err(|refused| refused_error(refused, event_type, field))
    }

    /// Decrypts `text` (an encrypted field's JSON string) written under a ring key for the
    /// field `field` of the event `event_id` of type `event_type`; returns the plaintext
    /// JSON. The opposite of [`Encryption::encrypt_value`].
    pub fn decrypt_value(
        &self,
        event_id: Uuid,
        event_type: &'static str,
        field: &'static str,
        text: &str,
    ) -> Result<Vec<u8>> {
        let binding = Binding {
            event_id,
            event_type,
            field,
        };
        let bytes = envelope::decode_text(text).map_err(|r| refused_error(r, event_type, field))?;
        let envelope = envelope::parse(&bytes).map_err(|r| refused_error(r, event_type, field))?;
        if envelope.kind != KeyKind::Ring {
            return Err(refused_error(
                Refused::Malformed("encrypted under a subject key"),
                event_type,
                field,
            ));
        }
        let key = self.ring_key(envelope.key_id, event_type, field)?;
        envelope
            .open(&key, &binding)
            .map_err(|r| refused_error(r, event_type, field))
    }

    fn ring_key(
        &self,
        id: &str,
        event_type: &'static str,
        field: &'static str,
    ) -> Result<EncryptionKey> {
        self.keys
            .key(id)
            .ok_or_else(|| Error::UnknownEncryptionKey {
                event_type,
                field,
                key_id: id.to_owned(),
            })
    }

    /// Replaces each of `fields` in the JSON object `plain` by its envelope, into `out`.
    pub(crate) async fn encrypt_payload(
        &self,
        event_type: &'static str,
        fields: &'static [EncryptedField],
        event_id: Uuid,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let not_encrypted = |field: &'static str, reason: &'static str| Error::Encryption {
            event_type,
            field,
            reason,
        };
        let members = payload::members(plain).ok_or_else(|| Error::Serialize {
            event_type,
            detail: "an event with encrypted fields must serialize to a JSON object".to_owned(),
        })?;
        for field in fields {
            if !members.0.iter().any(|m| m.name == field.name) {
                return Err(not_encrypted(
                    field.name,
                    "the serialized event has no member of that name (serde skipped or \
                     renamed it), so it was not published",
                ));
            }
        }
        out.reserve(plain.len() + 64 * fields.len());
        out.push(b'{');
        for (i, member) in members.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            payload::write_name(out, &member.name);
            out.push(b':');
            let Some(field) = fields.iter().find(|f| member.name == f.name) else {
                out.extend_from_slice(member.value.get().as_bytes());
                continue;
            };
            let binding = Binding {
                event_id,
                event_type,
                field: field.name,
            };
            let (key, kind) = match field.subject {
                None => (
                    self.keys
                        .current_key()
                        .map_err(|e| with_type(e, event_type))?,
                    KeyKind::Ring,
                ),
                Some(subject_field) => {
                    let subject = members
                        .0
                        .iter()
                        .find(|m| m.name == subject_field)
                        .and_then(|m| payload::subject_text(m.value))
                        .ok_or_else(|| {
                            not_encrypted(
                                field.name,
                                "its subject field is missing, empty, or not a string or number",
                            )
                        })?;
                    let keys = self.subject_keys(event_type)?;
                    (
                        keys.for_writing(&subject, &*self.keys).await?,
                        KeyKind::Subject,
                    )
                }
            };
            let text = envelope::seal(&key, kind, &binding, member.value.get().as_bytes())
                .map_err(|r| refused_error(r, event_type, field.name))?;
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
        Ok(())
    }

    /// Replaces each of `fields` in the JSON object `payload` by its plaintext, or by
    /// `null` when it is under a forgotten subject key.
    pub(crate) async fn decrypt_payload(
        &self,
        event_type: &'static str,
        fields: &'static [EncryptedField],
        event_id: Uuid,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        let members = payload::members(payload).ok_or_else(|| Error::MalformedPayload {
            event_type,
            detail: "an event with encrypted fields is a JSON object".to_owned(),
            line: 0,
            column: 0,
        })?;
        let mut out = Vec::with_capacity(payload.len());
        out.push(b'{');
        for (i, member) in members.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            payload::write_name(&mut out, &member.name);
            out.push(b':');
            let Some(field) = fields.iter().find(|f| member.name == f.name) else {
                out.extend_from_slice(member.value.get().as_bytes());
                continue;
            };
            let malformed =
                |reason| refused_error(Refused::Malformed(reason), event_type, field.name);
            let text: String = serde_json::from_str(member.value.get())
                .map_err(|_| malformed("the value is not a string (not encrypted)"))?;
            let bytes = envelope::decode_text(&text)
                .map_err(|r| refused_error(r, event_type, field.name))?;
            let envelope =
                envelope::parse(&bytes).map_err(|r| refused_error(r, event_type, field.name))?;
            let key = match (envelope.kind, field.subject) {
                (KeyKind::Ring, None) => self.ring_key(envelope.key_id, event_type, field.name)?,
                (KeyKind::Subject, Some(_)) => {
                    let keys = self.subject_keys(event_type)?;
                    match keys.for_reading(envelope.key_id, &*self.keys).await? {
                        Some(key) => key,
                        None => {
                            out.extend_from_slice(b"null");
                            continue;
                        }
                    }
                }
                (KeyKind::Ring, Some(_)) => {
                    return Err(malformed(
                        "under a ring key where the event declares a subject key",
                    ))
                }
                (KeyKind::Subject, None) => {
                    return Err(malformed(
                        "under a subject key where the event declares a ring key",
                    ))
                }
            };
            let binding = Binding {
                event_id,
                event_type,
                field: field.name,
            };
            let plain = envelope
                .open(&key, &binding)
                .map_err(|r| refused_error(r, event_type, field.name))?;
            if serde_json::from_slice::<&serde_json::value::RawValue>(&plain).is_err() {
                return Err(malformed("the decrypted value is not one JSON value"));
            }
            out.extend_from_slice(&plain);
        }
        out.push(b'}');
        Ok(out)
    }
}

fn with_type(error: Error, event_type: &'static str) -> Error {
    match error {
        Error::EncryptionNotConfigured { missing, .. } => Error::EncryptionNotConfigured {
            event_type,
            missing,
        },
        other => other,
    }
}

fn refused_error(refused: Refused, event_type: &'static str, field: &'static str) -> Error {
    match refused {
        Refused::Malformed(reason) => Error::MalformedEncryptedField {
            event_type,
            field,
            reason,
        },
        Refused::Authentication => Error::DecryptionFailed { event_type, field },
    }
}

/// Serializes `event` for publishing with its encrypted fields encrypted; the event id is
/// fixed here (it is bound into every value), so the metadata to write the headers from is
/// always returned.
pub(crate) async fn encode_event<E: Event>(
    encryption: Option<&Encryption>,
    missing: &'static str,
    event: &E,
    source: &str,
    metadata: Option<&PublishMetadata>,
    base_event_fields: bool,
    out: &mut Vec<u8>,
) -> Result<Option<PublishMetadata>> {
    let encryption = encryption.ok_or(Error::EncryptionNotConfigured {
        event_type: E::NAME,
        missing,
    })?;
    let mut resolved = metadata.cloned().unwrap_or_default();
    let event_id = *resolved.event_id.get_or_insert_with(Uuid::now_v7);
    let mut plain = Vec::with_capacity(256);
    let written = crate::wire::encode_event(
        event,
        source,
        Some(&resolved),
        base_event_fields,
        &mut plain,
    )?;
    if let Some(written) = written {
        resolved = written;
    }
    encryption
        .encrypt_payload(E::NAME, E::ENCRYPTED_FIELDS, event_id, &plain, out)
        .await?;
    Ok(Some(resolved))
}

/// [`crate::wire::decode_found`], decrypting the encrypted fields of the record's schema
/// version with `encryption` (an error without it).
pub(crate) async fn decode_found<'a, E: Event, M: Message>(
    encryption: Option<&Encryption>,
    message: &'a M,
    found: &FoundHeaders<'a>,
) -> Result<Decoded<'a, E>> {
    let located = crate::wire::locate_found::<E, M>(message, found)?;
    let fields = E::encrypted_fields(located.metadata.schema_version);
    if fields.is_empty() {
        return located.decode();
    }
    let Some(encryption) = encryption else {
        return located.decode();
    };
    let plain = encryption
        .decrypt_payload(E::NAME, fields, located.metadata.id, located.payload)
        .await?;
    located.decode_plaintext(&plain)
}

#[cfg(test)]
mod tests;

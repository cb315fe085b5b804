//! The payload's encryption end to end, without a broker: derived events through
//! `encode_event` and `decode_found` on an in-memory record.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
use serde::{Deserialize, Serialize};

use super::*;
use crate::wire::OutgoingHeaders;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, crate::Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "identity.user.created", name = "UserCreatedEvent")]
struct UserCreated {
    #[event(key)]
    user_id: String,
    display_name: String,
    #[event(encrypted)]
    email_address: String,
    #[event(encrypted, subject = user_id)]
    date_of_birth: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, crate::Event)]
#[event(topic = "identity.user.created", name = "UserCreatedEvent")]
struct PlainUserCreated {
    #[event(key)]
    user_id: String,
    display_name: String,
}

fn user() -> UserCreated {
    UserCreated {
        user_id: "u-1".into(),
        display_name: "Ada".into(),
        email_address: "ada@example.com".into(),
        date_of_birth: Some("1815-12-10".into()),
    }
}

fn ring(current: &str) -> KeyRing {
    KeyRing::new(
        current,
        [
            EncryptionKey::new("k1", [1; 32]).unwrap(),
            EncryptionKey::new("k2", [2; 32]).unwrap(),
        ],
    )
    .unwrap()
}

fn encryption(current: &str, store: &MemorySubjectKeyStore) -> Encryption {
    Encryption::new(ring(current)).with_subject_keys(store.clone(), Duration::from_secs(60))
}

/// The record a producer would send: binary-mode headers and the encoded payload.
async fn record<E: Event>(encryption: Option<&Encryption>, event: &E) -> Result<OwnedMessage> {
    let mut payload = Vec::new();
    let metadata = if E::ENCRYPTED_FIELDS.is_empty() {
        crate::wire::encode_event(event, "test", None, false, &mut payload)?
    } else {
        encode_event(
            encryption,
            "no keys",
            event,
            "test",
            None,
            false,
            &mut payload,
        )
        .await?
    };
    let outgoing = OutgoingHeaders::new::<E>("test", None, metadata.as_ref());
    let mut headers = OwnedHeaders::new();
    outgoing.for_each(|name, value| {
        headers = std::mem::take(&mut headers).insert(Header {
            key: name,
            value: Some(value),
        });
    });
    Ok(OwnedMessage::new(
        Some(payload),
        None,
        E::TOPIC.to_owned(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(headers),
    ))
}

async fn decode<E: Event>(encryption: Option<&Encryption>, message: &OwnedMessage) -> Result<E> {
    let found = FoundHeaders::read(message);
    decode_found::<E, _>(encryption, message, &found)
        .await
        .map(|d| d.event)
}

fn payload_text(message: &OwnedMessage) -> String {
    String::from_utf8(message.payload().unwrap().to_vec()).unwrap()
}

#[test]
fn the_derive_lists_encrypted_fields_by_json_name_and_hides_them_from_the_redacted_view() {
    assert_eq!(
        UserCreated::ENCRYPTED_FIELDS,
        [
            EncryptedField {
                name: "emailAddress",
                subject: None
            },
            EncryptedField {
                name: "dateOfBirth",
                subject: Some("userId")
            },
        ]
    );
    const { assert!(UserCreated::HAS_ENCRYPTED_FIELDS && !PlainUserCreated::HAS_ENCRYPTED_FIELDS) };
    let shown = format!("{:?}", user().redacted());
    assert!(
        !shown.contains("ada@example.com") && !shown.contains("1815"),
        "{shown}"
    );
    let mut sensitive = Vec::new();
    user().visit_sensitive(&mut |v| sensitive.push(v.to_owned()));
    assert_eq!(sensitive, ["ada@example.com", "1815-12-10"]);
}

#[tokio::test]
async fn an_event_round_trips_with_its_encrypted_fields_absent_from_the_payload() {
    let store = MemorySubjectKeyStore::new();
    let enc = encryption("k1", &store);
    let message = record(Some(&enc), &user()).await.unwrap();
    let text = payload_text(&message);
    assert!(
        !text.contains("ada@example.com") && !text.contains("1815"),
        "{text}"
    );
    assert!(
        text.starts_with(r#"{"userId":"u-1","displayName":"Ada","emailAddress":""#),
        "other members are written as serde writes them, in order: {text}"
    );
    assert_eq!(
        decode::<UserCreated>(Some(&enc), &message).await.unwrap(),
        user()
    );
}

#[tokio::test]
async fn a_record_written_under_the_old_current_key_is_read_after_rotation() {
    let store = MemorySubjectKeyStore::new();
    let before = record(Some(&encryption("k1", &store)), &user())
        .await
        .unwrap();
    let after_rotation = encryption("k2", &store);
    assert_eq!(
        decode::<UserCreated>(Some(&after_rotation), &before)
            .await
            .unwrap(),
        user()
    );
    let written_now = record(Some(&after_rotation), &user()).await.unwrap();
    let only_k2 =
        Encryption::new(KeyRing::new("k2", [EncryptionKey::new("k2", [2; 32]).unwrap()]).unwrap())
            .with_subject_keys(store.clone(), Duration::from_secs(60));
    // The subject key rows are wrapped under k1 (the current key when they were made):
    // k1 must stay in the ring to read them; the ring field alone reads with k2.
    let error = decode::<UserCreated>(Some(&only_k2), &written_now)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::SubjectKeyUnusable { .. }), "{error}");
}

#[tokio::test]
async fn an_unknown_key_id_a_tampered_value_or_a_value_copied_between_events_is_a_decode_error() {
    let store = MemorySubjectKeyStore::new();
    let enc = encryption("k2", &store);
    let message = record(Some(&enc), &user()).await.unwrap();
    let reader = Encryption::new(KeyRing::reading_only([
        EncryptionKey::new("k1", [1; 32]).unwrap()
    ]))
    .with_subject_keys(store.clone(), Duration::from_secs(60));
    let error = decode::<UserCreated>(Some(&reader), &message)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::UnknownEncryptionKey { field: "emailAddress", key_id, .. } if key_id == "k2"),
        "{error}"
    );
    assert!(error.is_decode_error());

    // Tampered: one character of the ciphertext changed.
    let text = payload_text(&message);
    let at = text.find(r#""emailAddress":""#).unwrap() + 40;
    let mut tampered = text.clone().into_bytes();
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = with_payload(&message, tampered);
    let error = decode::<UserCreated>(Some(&enc), &tampered)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::DecryptionFailed {
                field: "emailAddress",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.is_decode_error());

    // The same payload under another event id (the headers of a second event).
    let other = record(Some(&enc), &user()).await.unwrap();
    let copied = with_payload(&other, message.payload().unwrap().to_vec());
    let error = decode::<UserCreated>(Some(&enc), &copied)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::DecryptionFailed { .. }), "{error}");

    // A plaintext where an envelope belongs is refused, not accepted.
    let plain = text.replacen(
        &text[text.find(r#""emailAddress":"#).unwrap()..text.find(r#","dateOfBirth""#).unwrap()],
        r#""emailAddress":"ada@example.com""#,
        1,
    );
    let error = decode::<UserCreated>(Some(&enc), &with_payload(&message, plain.into_bytes()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::MalformedEncryptedField { .. }),
        "{error}"
    );
    assert!(!error.to_string().contains("ada@"), "{error}");
}

fn with_payload(message: &OwnedMessage, payload: Vec<u8>) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload),
        None,
        message.topic().to_owned(),
        Timestamp::NotAvailable,
        0,
        0,
        message.headers().cloned(),
    )
}

#[tokio::test]
async fn a_forgotten_subject_decodes_as_none_and_a_new_key_is_made_for_new_events() {
    let store = MemorySubjectKeyStore::new();
    let enc = encryption("k1", &store);
    let message = record(Some(&enc), &user()).await.unwrap();
    assert!(enc.forget_subject("u-1").await.unwrap());
    let erased = decode::<UserCreated>(Some(&enc), &message).await.unwrap();
    assert_eq!(erased.date_of_birth, None);
    assert_eq!(
        erased.email_address, "ada@example.com",
        "ring fields are not erased"
    );
    let later = record(Some(&enc), &user()).await.unwrap();
    assert_eq!(
        decode::<UserCreated>(Some(&enc), &later).await.unwrap(),
        user()
    );
    assert_eq!(
        decode::<UserCreated>(Some(&enc), &message)
            .await
            .unwrap()
            .date_of_birth,
        None
    );
}

#[tokio::test]
async fn without_keys_publishing_is_refused_and_reading_is_a_decode_error() {
    let error = record(None, &user()).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::EncryptionNotConfigured {
                event_type: "UserCreatedEvent",
                ..
            }
        ),
        "{error}"
    );
    let no_subjects = Encryption::new(ring("k1"));
    let error = record(Some(&no_subjects), &user()).await.unwrap_err();
    assert!(
        matches!(error, Error::EncryptionNotConfigured { .. }),
        "{error}"
    );

    let store = MemorySubjectKeyStore::new();
    let message = record(Some(&encryption("k1", &store)), &user())
        .await
        .unwrap();
    let error = decode::<UserCreated>(None, &message).await.unwrap_err();
    assert!(matches!(error, Error::EncryptionNotConfigured { .. }) && error.is_decode_error());
    let error = crate::wire::decode::<UserCreated, _>(&message).unwrap_err();
    assert!(
        matches!(error, Error::EncryptionNotConfigured { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn an_event_without_encrypted_fields_is_encoded_exactly_as_before() {
    let event = PlainUserCreated {
        user_id: "u".into(),
        display_name: "d".into(),
    };
    let message = record(None, &event).await.unwrap();
    assert_eq!(
        payload_text(&message),
        r#"{"user_id":"u","display_name":"d"}"#
    );
    assert_eq!(
        decode::<PlainUserCreated>(None, &message).await.unwrap(),
        event
    );
}

#[test]
fn encrypt_value_and_decrypt_value_are_inverse_and_bound_to_the_field() {
    let enc = Encryption::new(ring("k1"));
    let id = Uuid::from_u128(42);
    let text = enc
        .encrypt_value(id, "UserCreatedEvent", "email", br#""a@b""#)
        .unwrap();
    assert_eq!(
        enc.decrypt_value(id, "UserCreatedEvent", "email", &text)
            .unwrap(),
        br#""a@b""#
    );
    assert!(matches!(
        enc.decrypt_value(id, "UserCreatedEvent", "name", &text),
        Err(Error::DecryptionFailed { .. })
    ));
}

mod versions {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, crate::Event)]
    #[event(topic = "identity.user.renamed", name = "UserRenamedEvent")]
    pub(super) struct RenamedV1 {
        #[event(key)]
        pub(super) user_id: String,
        #[event(encrypted)]
        pub(super) name: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize, crate::Event)]
    #[event(topic = "identity.user.renamed", name = "UserRenamedEvent", version = 2, upcast_from = RenamedV1)]
    pub(super) struct RenamedV2 {
        #[event(key)]
        pub(super) user_id: String,
        pub(super) full_name: String,
    }

    impl From<RenamedV1> for RenamedV2 {
        fn from(v1: RenamedV1) -> Self {
            RenamedV2 {
                user_id: v1.user_id,
                full_name: v1.name,
            }
        }
    }

    #[tokio::test]
    async fn an_older_versions_encrypted_fields_are_decrypted_with_its_own_list_before_upcasting() {
        const { assert!(RenamedV2::HAS_ENCRYPTED_FIELDS && RenamedV2::ENCRYPTED_FIELDS.is_empty()) };
        let enc = Encryption::new(ring("k1"));
        let v1 = RenamedV1 {
            user_id: "u".into(),
            name: "Ada Lovelace".into(),
        };
        let message = record(Some(&enc), &v1).await.unwrap();
        assert!(!payload_text(&message).contains("Ada"));
        let v2 = decode::<RenamedV2>(Some(&enc), &message).await.unwrap();
        assert_eq!(v2.full_name, "Ada Lovelace");
        // A version 2 record has no encrypted field and needs no keys.
        let plain = record(None, &v2).await.unwrap();
        assert_eq!(decode::<RenamedV2>(None, &plain).await.unwrap(), v2);
    }
}

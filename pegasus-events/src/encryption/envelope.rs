//! The encrypted value of one field: its binary layout, its associated data, and sealing
//! and opening it with AES-256-GCM.
//!
//! The layout is specified for other implementations in `docs/wire-format.md`
//! ("Encrypted fields"); this file is the reference. In short, the field's JSON value is a
//! string holding the standard base64 (RFC 4648 §4, with padding) of:
//!
//! | bytes | what |
//! |-------|------|
//! | 1 | format version, `0x01` |
//! | 1 | key kind: `0x01` a key of the key ring, `0x02` a subject key |
//! | 2 | length `n` of the key id, big-endian, 1 to 1024 |
//! | `n` | the key id, UTF-8 |
//! | 12 | the nonce, random per value |
//! | rest | the ciphertext followed by the 16-byte GCM tag |
//!
//! The associated data is the header (the bytes before the nonce) followed by three
//! length-prefixed strings (2-byte big-endian length, then UTF-8): the event id in its
//! 36-character lowercase hyphenated form, the event type (`ce_type`), and the field's
//! JSON name. Binding the header stops a value from being moved to another key id or kind;
//! binding the id, type and name stops it from being copied into another event or field.

use aes_gcm::aead::{Aead, AeadCore, OsRng, Payload};
use base64::Engine;
use uuid::Uuid;

use super::keys::EncryptionKey;

/// The format version this library writes and reads.
pub(crate) const FORMAT_V1: u8 = 1;
/// The nonce length of AES-GCM as used here (96 bits).
pub(crate) const NONCE_LEN: usize = 12;
/// The GCM tag length.
pub(crate) const TAG_LEN: usize = 16;
/// The longest key id the format carries.
pub(crate) const MAX_KEY_ID_LEN: usize = 1024;

/// Which kind of key a value was encrypted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// A key of the key ring, named by its id.
    Ring,
    /// A per-subject key, named by its key id (not the subject).
    Subject,
}

impl KeyKind {
    fn byte(self) -> u8 {
        match self {
            KeyKind::Ring => 1,
            KeyKind::Subject => 2,
        }
    }
}

/// What a value is bound to: the event it belongs to and the field it is in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Binding<'a> {
    /// `ce_id`.
    pub(crate) event_id: Uuid,
    /// `ce_type`.
    pub(crate) event_type: &'a str,
    /// The field's JSON name.
    pub(crate) field: &'a str,
}

/// Why an envelope was refused; fixed words, never bytes of the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a well-formed envelope; the text says what is wrong.
    Malformed(&'static str),
    /// The tag did not verify: wrong key, tampered bytes, or another event or field.
    Authentication,
}

/// A parsed envelope, borrowing from its decoded bytes.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    pub(crate) kind: KeyKind,
    pub(crate) key_id: &'a str,
    header: &'a [u8],
    nonce: &'a [u8],
    sealed: &'a [u8],
}

/// The header bytes: version, kind, key id length, key id.
fn header(kind: KeyKind, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key_id.len());
    out.push(FORMAT_V1);
    out.push(kind.byte());
    out.extend_from_slice(&(key_id.len() as u16).to_be_bytes());
    out.extend_from_slice(key_id.as_bytes());
    out
}

/// The associated data of a value: its header, then the binding's three strings, each
/// with a 2-byte big-endian length.
pub(crate) fn associated_data(header: &[u8], binding: &Binding<'_>) -> Vec<u8> {
    let mut id = [0u8; 36];
    let id = binding.event_id.as_hyphenated().encode_lower(&mut id);
    let parts: [&[u8]; 3] = [
        id.as_bytes(),
        binding.event_type.as_bytes(),
        binding.field.as_bytes(),
    ];
    let mut out =
        Vec::with_capacity(header.len() + parts.iter().map(|p| 2 + p.len()).sum::<usize>());
    out.extend_from_slice(header);
    for part in parts {
        // Type names and field names are short; a longer one is cut at the length the
        // prefix can say, the same way on both sides (and refused before sealing).
        let len = part.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&part[..len]);
    }
    out
}

/// Encrypts `plaintext` under `key` (of `kind`), bound to `binding`; returns the base64
/// text that becomes the field's JSON string.
pub(crate) fn seal(
    key: &EncryptionKey,
    kind: KeyKind,
    binding: &Binding<'_>,
    plaintext: &[u8],
) -> Result<String, Refused> {
    let key_id = key.id();
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN {
        return Err(Refused::Malformed(
            "the key id is empty or longer than 1024 bytes",
        ));
    }
    if binding.event_type.len() > usize::from(u16::MAX)
        || binding.field.len() > usize::from(u16::MAX)
    {
        return Err(Refused::Malformed(
            "the event type or field name is too long",
        ));
    }
    let header = header(kind, key_id);
    let aad = associated_data(&header, binding);
    let nonce = aes_gcm::Aes256Gcm::generate_nonce(&mut OsRng);
    let sealed = key
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| Refused::Malformed("the value is too long to encrypt"))?;
    let mut bytes = header;
    bytes.reserve(NONCE_LEN + sealed.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Decodes the base64 text of a field into the envelope's bytes.
pub(crate) fn decode_text(text: &str) -> Result<Vec<u8>, Refused> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| Refused::Malformed("not standard base64"))
}

/// Reads the layout of an envelope's bytes, without decrypting.
pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope<'_>, Refused> {
    let [version, kind, high, low, rest @ ..] = bytes else {
        return Err(Refused::Malformed("shorter than an envelope's header"));
    };
    if *version != FORMAT_V1 {
        return Err(Refused::Malformed("unknown format version"));
    }
    let kind = match kind {
        1 => KeyKind::Ring,
        2 => KeyKind::Subject,
        _ => return Err(Refused::Malformed("unknown key kind")),
    };
    let id_len = usize::from(u16::from_be_bytes([*high, *low]));
    if id_len == 0 || id_len > MAX_KEY_ID_LEN {
        return Err(Refused::Malformed(
            "the key id length is 0 or more than 1024",
        ));
    }
    if rest.len() < id_len + NONCE_LEN + TAG_LEN {
        return Err(Refused::Malformed("shorter than its key id, nonce and tag"));
    }
    let (key_id, rest) = rest.split_at(id_len);
    let key_id =
        std::str::from_utf8(key_id).map_err(|_| Refused::Malformed("the key id is not UTF-8"))?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    Ok(Envelope {
        kind,
        key_id,
        header: &bytes[..4 + id_len],
        nonce,
        sealed,
    })
}

impl Envelope<'_> {
    /// Decrypts with `key`, checking the tag against the binding.
    pub(crate) fn open(
        &self,
        key: &EncryptionKey,
        binding: &Binding<'_>,
    ) -> Result<Vec<u8>, Refused> {
        let aad = associated_data(self.header, binding);
        let nonce = aes_gcm::Nonce::from_slice(self.nonce);
        key.cipher()
            .decrypt(
                nonce,
                Payload {
                    msg: self.sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| Refused::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> EncryptionKey {
        EncryptionKey::new(id, [byte; 32]).unwrap()
    }

    fn binding<'a>(field: &'a str) -> Binding<'a> {
        Binding {
            event_id: Uuid::from_u128(0x0190_f5d2_2222_7000_8000_0000_0000_0003),
            event_type: "UserCreatedEvent",
            field,
        }
    }

    fn open_text(text: &str, key: &EncryptionKey, b: &Binding<'_>) -> Result<Vec<u8>, Refused> {
        let bytes = decode_text(text)?;
        parse(&bytes)?.open(key, b)
    }

    #[test]
    fn an_envelope_round_trips_and_names_its_key_and_kind() {
        let k = key("k1", 7);
        let text = seal(&k, KeyKind::Ring, &binding("email"), br#""a@example.com""#).unwrap();
        assert!(!text.contains("example"));
        let bytes = decode_text(&text).unwrap();
        let envelope = parse(&bytes).unwrap();
        assert_eq!((envelope.kind, envelope.key_id), (KeyKind::Ring, "k1"));
        assert_eq!(bytes.len(), 4 + 2 + NONCE_LEN + 15 + TAG_LEN);
        assert_eq!(
            envelope.open(&k, &binding("email")).unwrap(),
            br#""a@example.com""#
        );
        let again = seal(&k, KeyKind::Ring, &binding("email"), br#""a@example.com""#).unwrap();
        assert_ne!(text, again, "a fresh nonce per value");
    }

    #[test]
    fn a_value_bound_to_another_event_field_type_key_or_kind_is_refused() {
        let k = key("k1", 7);
        let b = binding("email");
        let text = seal(&k, KeyKind::Ring, &b, b"1").unwrap();
        let other_event = Binding {
            event_id: Uuid::from_u128(9),
            ..b
        };
        let other_type = Binding {
            event_type: "UserDeletedEvent",
            ..b
        };
        for wrong in [other_event, other_type, binding("name")] {
            assert_eq!(open_text(&text, &k, &wrong), Err(Refused::Authentication));
        }
        assert_eq!(
            open_text(&text, &key("k1", 8), &b),
            Err(Refused::Authentication)
        );
        // The header is bound: a value relabelled as another kind or key id fails.
        let mut bytes = decode_text(&text).unwrap();
        bytes[1] = 2;
        assert_eq!(
            parse(&bytes).unwrap().open(&k, &b),
            Err(Refused::Authentication)
        );
        let mut bytes = decode_text(&text).unwrap();
        bytes[5] = b'2';
        assert_eq!(
            parse(&bytes).unwrap().open(&k, &b),
            Err(Refused::Authentication)
        );
    }

    #[test]
    fn a_flipped_bit_in_the_nonce_ciphertext_or_tag_is_refused() {
        let k = key("k1", 7);
        let b = binding("email");
        let bytes = decode_text(&seal(&k, KeyKind::Ring, &b, b"\"secret\"").unwrap()).unwrap();
        for at in 6..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[at] ^= 0x01;
            assert_eq!(
                parse(&tampered).unwrap().open(&k, &b),
                Err(Refused::Authentication),
                "byte {at}"
            );
        }
    }

    #[test]
    fn malformed_envelopes_are_refused_with_a_reason() {
        let k = key("k1", 7);
        let b = binding("f");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut unknown_kind = vec![1u8, 3, 0, 1, b'k'];
        unknown_kind.extend_from_slice(&[0; NONCE_LEN + TAG_LEN]);
        let cases: [(String, &str); 6] = [
            ("not base64!".to_owned(), "base64"),
            (String::new(), "header"),
            (b64(&[1, 1]), "header"),
            (b64(&[2, 1, 0, 1, b'k']), "format version"),
            (b64(&unknown_kind), "kind"),
            (b64(&[1, 1, 0, 1, b'k', 0, 0]), "shorter"),
        ];
        for (text, reason) in cases {
            match open_text(&text, &k, &b) {
                Err(Refused::Malformed(why)) => assert!(why.contains(reason), "{text}: {why}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let zero_len = [1u8, 1, 0, 0];
        assert!(matches!(parse(&zero_len), Err(Refused::Malformed(_))));
        let mut not_utf8 = vec![1u8, 1, 0, 1, 0xff];
        not_utf8.extend_from_slice(&[0; NONCE_LEN + TAG_LEN]);
        assert_eq!(
            parse(&not_utf8).unwrap_err(),
            Refused::Malformed("the key id is not UTF-8")
        );
    }

    #[test]
    fn the_associated_data_is_the_header_then_three_length_prefixed_strings() {
        let aad = associated_data(&header(KeyKind::Ring, "k1"), &binding("email"));
        let mut expected = vec![1u8, 1, 0, 2, b'k', b'1', 0, 36];
        expected.extend_from_slice(b"0190f5d2-2222-7000-8000-000000000003");
        expected.extend_from_slice(&[0, 16]);
        expected.extend_from_slice(b"UserCreatedEvent");
        expected.extend_from_slice(&[0, 5]);
        expected.extend_from_slice(b"email");
        assert_eq!(aad, expected);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_or_text_never_panic_and_never_open(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
            text in ".{0,64}",
        ) {
            let k = key("k1", 7);
            let b = binding("f");
            if let Ok(envelope) = parse(&bytes) {
                proptest::prop_assert_eq!(envelope.open(&k, &b), Err(Refused::Authentication));
            }
            let _ = open_text(&text, &k, &b);
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            proptest::prop_assert!(open_text(&encoded, &k, &b).is_err());
        }
    }
}

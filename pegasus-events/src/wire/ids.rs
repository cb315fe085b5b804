//! Event ids: the `ce_id` written is a v7 UUID; a record read without one gets an id
//! derived from where it is stored, the same on every redelivery.

use std::fmt::Write as _;

use uuid::Uuid;

use super::time::StackStr;

/// Namespace of the deterministic ids given to plain JSON records (UUID v5 of
/// `topic/partition/offset`).
pub const PLAIN_RECORD_ID_NAMESPACE: Uuid =
    Uuid::from_u128(0x6a1f_4c2e_9b7d_4e0a_8f35_2d61_c0de_e7e1);

/// Namespace of the ids given to events whose id is not a UUID (UUID v5 of the id's text).
pub const FOREIGN_ID_NAMESPACE: Uuid = Uuid::from_u128(0x2b4e_91d7_5c3a_4f68_9e02_71a5_d4c8_3f90);

/// The UUID an event id stands for: the id itself when it is a UUID (hyphenated, simple,
/// braced or URN form, as .NET and other SDKs write them), otherwise a UUID v5 of its
/// text under [`FOREIGN_ID_NAMESPACE`], so every delivery of the event has the same id;
/// `None` for an empty id.
pub fn event_id_from_text(text: &str) -> Option<Uuid> {
    if text.is_empty() {
        return None;
    }
    Some(
        Uuid::try_parse(text)
            .unwrap_or_else(|_| Uuid::new_v5(&FOREIGN_ID_NAMESPACE, text.as_bytes())),
    )
}

/// The id given to a plain JSON record: a UUID v5 of `topic/partition/offset`, so every
/// redelivery of the same record has the same id.
pub fn plain_record_id(topic: &str, partition: i32, offset: i64) -> Uuid {
    let mut name = StackStr::<320>::new();
    if write!(name, "{topic}/{partition}/{offset}").is_ok() {
        Uuid::new_v5(&PLAIN_RECORD_ID_NAMESPACE, name.as_str().as_bytes())
    } else {
        // Topic names are at most 249 bytes, so this branch is for hand-made records only.
        Uuid::new_v5(
            &PLAIN_RECORD_ID_NAMESPACE,
            format!("{topic}/{partition}/{offset}").as_bytes(),
        )
    }
}

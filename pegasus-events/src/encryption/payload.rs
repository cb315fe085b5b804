//! Rewriting a JSON payload field by field: the encrypted fields' values are replaced
//! (by their envelope when writing, by their plaintext when reading), every other member
//! is copied byte for byte, in its order.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// One member of a JSON object: its name (borrowed unless it had escapes) and its value
/// as written.
pub(crate) struct Member<'a> {
    pub(crate) name: Cow<'a, str>,
    pub(crate) value: &'a RawValue,
}

/// The members of a JSON object, in order.
pub(crate) struct Members<'a>(pub(crate) Vec<Member<'a>>);

struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((name, value)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    members.push(Member {
                        name: name.0,
                        value,
                    });
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// Reads the members of the JSON object `json`; `None` when it is not one.
pub(crate) fn members(json: &[u8]) -> Option<Members<'_>> {
    serde_json::from_slice(json).ok()
}

/// Writes `name` as a JSON string.
pub(crate) fn write_name(out: &mut Vec<u8>, name: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, name);
}

/// The text a subject field's JSON value names its subject by: a string's content or a
/// number as written; `None` for anything else or an empty string.
pub(crate) fn subject_text(value: &RawValue) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(value.get()).ok()? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_order_and_bytes_and_escaped_names_are_read() {
        let json = br#"{"b":1, "a\u0041":{"x":[1,2]},"c":"s"}"#;
        let members = members(json).unwrap();
        let seen: Vec<(&str, &str)> = members
            .0
            .iter()
            .map(|m| (m.name.as_ref(), m.value.get()))
            .collect();
        assert_eq!(
            seen,
            [("b", "1"), ("aA", r#"{"x":[1,2]}"#), ("c", r#""s""#)]
        );
        assert!(super::members(b"[1]").is_none());
        assert!(super::members(b"{\"a\":").is_none());
    }

    #[test]
    fn a_subject_is_a_non_empty_string_or_a_number() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert_eq!(subject_text(&raw(r#""u-1""#)).as_deref(), Some("u-1"));
        assert_eq!(subject_text(&raw("42")).as_deref(), Some("42"));
        for bad in [r#""""#, "null", "true", "[1]", "{}"] {
            assert_eq!(subject_text(&raw(bad)), None, "{bad}");
        }
    }
}

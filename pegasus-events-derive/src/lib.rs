//! `#[derive(Event)]` for [pegasus-events](https://docs.rs/pegasus-events): binds a struct to
//! its topic, event type name and schema version at compile time, and checks them there.
//!
//! Use it through `pegasus_events::Event` (the `derive` feature, on by default), not from
//! this crate directly; the generated code names `::pegasus_events`.
//!
//! # Attribute grammar
//!
//! On the struct (several `#[event(...)]` attributes may be combined; each key at most once):
//!
//! | Key | Value | Default |
//! |-----|-------|---------|
//! | `topic` | string literal, required | |
//! | `name` | non-empty string literal, the `ce_type` | the struct's identifier |
//! | `version` | integer literal from 1 to `u32::MAX` | `1` |
//! | `upcast_from` | path of the previous version's type | none |
//! | `free_form_topic` | flag | off |
//!
//! On a field:
//!
//! | Key | Meaning |
//! |-----|---------|
//! | `key` | the partition key, written with `Display`; at most one field |
//! | `sensitive` | shown as `<redacted>` in the redacted view; any number of fields |
//! | `encrypted` | encrypted on the wire with AES-256-GCM under the key ring's current key (`pegasus_events::encryption`); also sensitive |
//! | `subject = field` | with `encrypted`: under a per-subject key named by `field`'s value, erased (`None`) once that subject is forgotten; the field must be an `Option` |
//!
//! Other attributes (`serde`, `doc`, other derives) are left alone.
//!
//! # What is checked
//!
//! While expanding, every problem is collected and reported at once, at the token that
//! caused it:
//!
//! - The input is a struct with named fields and no generic parameters or lifetimes.
//! - `topic` follows `<service>.<entity>.<action>`: three dot-separated parts of lowercase
//!   ASCII letters, digits and hyphens, none empty or starting or ending with a hyphen, e.g.
//!   `shipping.shipment.status-changed`. With `free_form_topic` it only has to be a legal
//!   Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
//! - Keys are known, not repeated, and in their place (struct or field); values have the
//!   right kind; `name` is not empty and `version` is at least 1.
//! - At most one field is `key`, and the key field is not `sensitive` or `encrypted` (the
//!   key is written in clear to the record key and the `ce_partitionkey` header).
//! - `subject` comes with `encrypted`, names another field of the struct that is not itself
//!   encrypted, and is on a field of type `Option<..>` (erasure decodes it as `None`).
//! - An `encrypted` field keeps one JSON name: no `#[serde(flatten)]`, `skip*`, `alias` or
//!   differing serialize and deserialize names on it, no `transparent`, `into`, `from`,
//!   `try_from` or differing `rename_all` rules on the struct. Its JSON name, with
//!   `rename` and `rename_all` applied as serde applies them, is in `ENCRYPTED_FIELDS`.
//!
//! The compiler then checks, at the span of the offending type or path:
//!
//! - the key field's type implements `Display`, and every field that is not `sensitive`
//!   implements `Debug`;
//! - with `upcast_from = Older`: `Older` is an `Event` with the same `topic` and `name` and a
//!   lower `version`, and `Older: Into<Self>`.
//!
//! # What is generated
//!
//! An `impl pegasus_events::Event` inside `const _: () = { ... };`, naming everything by
//! absolute path. With `upcast_from = Older`, `OLDEST_VERSION` is `Older`'s and
//! `decode_version` decodes an older version as `Older` (which may upcast further) and
//! converts it with `Into`, so a chain V1 → V2 → V3 decodes a version 1 payload as V3.

mod attr;
mod check;
mod ctxt;
mod expand;
mod serde_attr;
mod symbol;

use proc_macro::TokenStream;

/// Implements `pegasus_events::Event` for a struct; see the crate docs for the attributes.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    let expanded = expand::derive_event(&input);
    expanded
        .unwrap_or_else(|errors| expand::fallback(&input, errors))
        .into()
}

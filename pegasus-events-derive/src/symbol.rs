//! The words of the `#[event(...)]` attribute, so that parsing, checks and messages name
//! them the same way.

use std::fmt;

use syn::Path;

/// One attribute keyword.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Symbol(&'static str);

/// The attribute itself: `#[event(...)]`.
pub(crate) const EVENT: Symbol = Symbol("event");

/// Struct: the topic the event is published to.
pub(crate) const TOPIC: Symbol = Symbol("topic");
/// Struct: the event type name written to `ce_type`.
pub(crate) const NAME: Symbol = Symbol("name");
/// Struct: the schema version.
pub(crate) const VERSION: Symbol = Symbol("version");
/// Struct: the previous version of the event, which this one is built from.
pub(crate) const UPCAST_FROM: Symbol = Symbol("upcast_from");
/// Struct: opt out of the `<service>.<entity>.<action>` topic convention.
pub(crate) const FREE_FORM_TOPIC: Symbol = Symbol("free_form_topic");

/// Field: the partition key.
pub(crate) const KEY: Symbol = Symbol("key");
/// Field: hidden from the redacted view.
pub(crate) const SENSITIVE: Symbol = Symbol("sensitive");

/// Field: encrypted on the wire (AES-256-GCM), and sensitive.
pub(crate) const ENCRYPTED: Symbol = Symbol("encrypted");
/// Field, with `encrypted`: the field whose value names the subject key.
pub(crate) const SUBJECT: Symbol = Symbol("subject");

/// The keys accepted on the struct, in the order the docs list them.
pub(crate) const STRUCT_KEYS: [Symbol; 5] = [TOPIC, NAME, VERSION, UPCAST_FROM, FREE_FORM_TOPIC];
/// The keys accepted on a field.
pub(crate) const FIELD_KEYS: [Symbol; 4] = [KEY, SENSITIVE, ENCRYPTED, SUBJECT];

impl Symbol {
    /// The keyword as written in source.
    pub(crate) fn as_str(self) -> &'static str {
        self.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

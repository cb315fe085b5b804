//! The generated code names everything by absolute path: user items called `core`, `std`,
//! `Result`, `String`, `Formatter` or like the derive's helpers change nothing, and strict
//! lints stay quiet.
#![deny(warnings, missing_docs, unused_qualifications, non_upper_case_globals)]

use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[allow(dead_code)]
mod core {}
#[allow(dead_code)]
mod std {}
#[allow(dead_code)]
type Result = ();
#[allow(dead_code)]
struct String;
#[allow(dead_code)]
struct Formatter;
#[allow(dead_code)]
fn partition_key_must_implement_display() {}

/// Shadows `DebugStruct::field` for method-call syntax.
trait Field {
    /// Not the one the derive wants.
    fn field(&mut self);
}

impl<T> Field for T {
    fn field(&mut self) {}
}

/// A documented event.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "ops.hygiene.checked")]
pub struct HygieneChecked {
    /// The key.
    #[event(key)]
    pub id: u32,
    /// A secret.
    #[event(sensitive)]
    pub token: ::std::string::String,
}

fn main() {
    let event = HygieneChecked {
        id: 1,
        token: "t0ken".to_owned(),
    };
    assert_eq!(event.partition_key().as_deref(), Some("1"));
    assert_eq!(
        format!("{:?}", event.redacted()),
        "HygieneChecked { id: 1, token: <redacted> }"
    );
}

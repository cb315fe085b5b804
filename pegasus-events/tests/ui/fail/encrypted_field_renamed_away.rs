use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "identity.user.registered")]
struct UserRegistered {
    #[event(encrypted)]
    #[serde(skip_serializing_if = "String::is_empty")]
    email: String,
    #[event(encrypted)]
    #[serde(rename(serialize = "mail", deserialize = "email_address"))]
    backup_email: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(transparent)]
#[event(topic = "identity.user.changed")]
struct UserChanged {
    #[event(encrypted)]
    email: String,
}

fn main() {}

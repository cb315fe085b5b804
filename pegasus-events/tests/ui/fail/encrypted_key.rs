use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "identity.user.registered")]
struct UserRegistered {
    #[event(key, encrypted)]
    email: String,
}

fn main() {}

use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "identity.user.registered")]
struct UserRegistered {
    #[event(key)]
    user_id: String,
    #[event(encrypted, subject = user_id)]
    date_of_birth: String,
}

fn main() {}

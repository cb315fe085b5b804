use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "identity.user.registered")]
struct UserRegistered {
    #[event(key)]
    user_id: String,
    #[event(encrypted, subject = customer_id)]
    date_of_birth: Option<String>,
    #[event(subject = user_id)]
    nickname: Option<String>,
}

fn main() {}

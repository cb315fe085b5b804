use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "identity-events", free_form_topic = true)]
struct UserDeleted {
    #[event(key = true)]
    id: u64,
}

fn main() {}

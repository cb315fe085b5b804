// Topics shared with other systems opt out of the naming convention, but must still be
// legal Kafka topic names.
use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "identity-events", free_form_topic)]
struct UserDeleted {
    #[event(key)]
    user_id: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(free_form_topic, topic = "Legacy_Shipping.Events-v2")]
struct LegacyShipmentMoved {
    shipment: String,
}

fn main() {
    assert_eq!(UserDeleted::TOPIC, "identity-events");
    assert_eq!(LegacyShipmentMoved::TOPIC, "Legacy_Shipping.Events-v2");
}

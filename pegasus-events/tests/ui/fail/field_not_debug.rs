use pegasus_events::Event;
use serde::{Deserialize, Serialize};

// No `Debug`: fine for a sensitive field, which the redacted view never formats, but not
// for the others.
#[derive(Serialize, Deserialize)]
struct Address {
    street: String,
}

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment.created")]
struct ShipmentCreated {
    id: u64,
    #[event(sensitive)]
    recipient: Address,
    origin: Address,
}

fn main() {}

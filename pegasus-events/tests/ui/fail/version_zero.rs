use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment.created", version = 0)]
struct ShipmentCreated {
    id: u64,
}

fn main() {}

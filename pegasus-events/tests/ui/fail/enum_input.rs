use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment.changed")]
enum ShipmentEvent {
    Created { id: u64 },
    Delivered { id: u64 },
}

fn main() {}

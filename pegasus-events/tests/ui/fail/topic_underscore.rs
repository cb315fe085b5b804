use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment.status_changed")]
struct ShipmentStatusChanged {
    id: u64,
}

fn main() {}

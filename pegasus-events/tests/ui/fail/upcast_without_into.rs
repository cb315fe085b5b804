use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(
    topic = "shipping.shipment.created",
    name = "ShipmentCreated",
    version = 1
)]
struct ShipmentCreatedV1 {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(
    topic = "shipping.shipment.created",
    name = "ShipmentCreated",
    version = 2
)]
#[event(upcast_from = ShipmentCreatedV1)]
struct ShipmentCreated {
    id: u64,
    depot: String,
}

fn main() {}

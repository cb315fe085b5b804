use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ShipmentCreatedV1 {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment.created", version = 2, upcast_from = ShipmentCreatedV1)]
struct ShipmentCreated {
    id: u64,
}

impl From<ShipmentCreatedV1> for ShipmentCreated {
    fn from(v1: ShipmentCreatedV1) -> Self {
        ShipmentCreated { id: v1.id }
    }
}

fn main() {}

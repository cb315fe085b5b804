use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ShipmentId(u64);

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment.created")]
struct ShipmentCreated {
    #[event(key)]
    id: ShipmentId,
}

fn main() {}

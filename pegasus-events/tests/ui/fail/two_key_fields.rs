use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment.created")]
struct ShipmentCreated {
    #[event(key)]
    shipment_id: u64,
    #[event(key)]
    depot_id: u64,
}

fn main() {}

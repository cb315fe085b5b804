use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "Shipping.Shipment.Created", version = 0, nmae = "Created")]
#[event(name = "")]
struct ShipmentCreated<T> {
    #[event(key)]
    shipment_id: u64,
    #[event(key, sensitive)]
    recipient_email: String,
    #[event(redact)]
    payload: T,
}

fn main() {}

use pegasus_events::Event;
use serde::Serialize;

#[derive(Debug, Serialize, Event)]
#[event(topic = "shipping.shipment.created")]
struct ShipmentCreated<'a> {
    id: &'a str,
}

fn main() {}

// When the derive reports an error, uses of the type as an `Event` elsewhere add no errors
// of their own: only the real mistake is shown.
use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.shipment")]
struct ShipmentCreated {
    #[event(key)]
    id: u64,
}

fn topic_of<E: Event>() -> &'static str {
    E::TOPIC
}

fn main() {
    let event = ShipmentCreated { id: 1 };
    let _ = (
        topic_of::<ShipmentCreated>(),
        event.partition_key(),
        ShipmentCreated::VERSION,
    );
    println!("{:?}", event.redacted());
}

// Without an `#[event(key)]` field the event is unkeyed (the producer keys it by event id).
use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "ops.cache.flushed")]
struct CacheFlushed {}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "ops.depot.sampled")]
struct DepotSampled {
    #[event(sensitive)]
    operator: String,
    load: f32,
}

fn main() {
    assert!(!CacheFlushed::KEYED);
    assert!(!DepotSampled::KEYED);
    assert_eq!(CacheFlushed {}.partition_key(), None);
    assert_eq!(format!("{:?}", CacheFlushed {}.redacted()), "CacheFlushed");
}

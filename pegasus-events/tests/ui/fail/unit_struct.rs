use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "ops.cache.flushed")]
struct CacheFlushed;

fn main() {}

// Only `topic` is required: the name is the struct's identifier and the version is 1.
use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "billing.invoice.issued")]
struct InvoiceIssued {
    #[event(key)]
    invoice_id: u64,
}

fn main() {
    assert_eq!(InvoiceIssued::TOPIC, "billing.invoice.issued");
    assert_eq!(InvoiceIssued::NAME, "InvoiceIssued");
    assert_eq!(InvoiceIssued::VERSION, 1);
    assert_eq!(InvoiceIssued::OLDEST_VERSION, 1);
    assert!(InvoiceIssued::KEYED);
}

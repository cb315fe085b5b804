// A keyed event with several sensitive fields, serde renames, doc comments and the event
// attributes split over several `#[event(...)]` lines.
use pegasus_events::Event;
use serde::{Deserialize, Serialize};

/// A customer signed up.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "identity.customer.signed-up")]
#[event(name = "CustomerSignedUpEvent", version = 2)]
struct CustomerSignedUp {
    /// The customer.
    #[event(key)]
    customer_id: uuid::Uuid,
    #[event(sensitive)]
    email_address: String,
    #[serde(rename = "phone")]
    #[event(sensitive)]
    phone_number: Option<String>,
    display_name: String,
    r#type: String,
}

fn main() {
    let event = CustomerSignedUp {
        customer_id: uuid::Uuid::nil(),
        email_address: "ada@example.com".to_owned(),
        phone_number: Some("+44 20 7946 0000".to_owned()),
        display_name: "Ada".to_owned(),
        r#type: "person".to_owned(),
    };
    assert_eq!(CustomerSignedUp::NAME, "CustomerSignedUpEvent");
    assert_eq!(CustomerSignedUp::VERSION, 2);
    assert_eq!(
        event.partition_key().unwrap(),
        uuid::Uuid::nil().to_string()
    );
    let shown = format!("{:?}", event.redacted());
    assert!(!shown.contains("ada@"));
    assert!(!shown.contains("7946"));
    assert!(shown.contains("type: \"person\""));
}

use pegasus_events::encryption::EncryptedField;
use pegasus_events::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "PascalCase")]
#[event(topic = "identity.user.registered")]
struct UserRegistered {
    #[event(key)]
    user_id: String,
    #[event(encrypted)]
    email_address: String,
    #[event(encrypted)]
    #[serde(rename = "dob")]
    date_of_birth: String,
    #[event(encrypted, subject = user_id)]
    home_address: Option<String>,
    #[event(encrypted, subject = user_id)]
    r#type: std::option::Option<u8>,
}

fn main() {
    assert_eq!(
        UserRegistered::ENCRYPTED_FIELDS,
        [
            EncryptedField { name: "EmailAddress", subject: None },
            EncryptedField { name: "dob", subject: None },
            EncryptedField { name: "HomeAddress", subject: Some("UserId") },
            EncryptedField { name: "Type", subject: Some("UserId") },
        ]
    );
    let shown = format!(
        "{:?}",
        UserRegistered {
            user_id: "u".into(),
            email_address: "a@b".into(),
            date_of_birth: "d".into(),
            home_address: None,
            r#type: Some(1),
        }
        .redacted()
    );
    assert!(!shown.contains("a@b"), "{shown}");
}

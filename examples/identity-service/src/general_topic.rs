//! Identity's general topic, `identity-events`: when it is switched on, every user event
//! is also enqueued there, in the same transaction as the change and its own topic's copy,
//! so a service that follows all of Identity's changes reads one topic, in order per user
//! (both copies are keyed by the user id), and dispatches on `ce_type`.
//!
//! pegasus-events binds an event type to one topic at compile time (`Event::TOPIC`), and
//! its outbox and producer take the topic from the type; there is no "this event, that
//! topic". [`OnGeneralTopic`] is therefore a second `Event` implementation around the same
//! contract type: the same `ce_type`, version, key, JSON and redaction, another topic. For
//! the same reason the topic's name is not free: the setting switches it on and must name
//! `identity-events`.
//!
//! The setting is `Identity:GeneralTopic` in appsettings.json or `IDENTITY_GENERAL_TOPIC`
//! in the environment (the environment wins). It is not under `Kafka`: pegasus-events
//! reads that section and refuses keys it does not know.

use std::fmt;

use event_contracts::topics;
use pegasus_events::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The environment variable that switches the general topic on.
pub const GENERAL_TOPIC_ENV: &str = "IDENTITY_GENERAL_TOPIC";

/// An event of Identity's as published to the general topic `identity-events`: the
/// same JSON, `ce_type`, version and key as `E` on its own topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OnGeneralTopic<E>(pub E);

impl<E: Event> Event for OnGeneralTopic<E> {
    const TOPIC: &'static str = topics::IDENTITY_EVENTS;
    const NAME: &'static str = E::NAME;
    const VERSION: u32 = E::VERSION;
    const OLDEST_VERSION: u32 = E::OLDEST_VERSION;
    const KEYED: bool = E::KEYED;

    fn write_partition_key(&self, out: &mut String) -> bool {
        self.0.write_partition_key(out)
    }

    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_redacted(f)
    }

    fn visit_sensitive(&self, visit: &mut dyn FnMut(&str)) {
        self.0.visit_sensitive(visit);
    }

    fn decode_version(version: u32, payload: &[u8]) -> Result<Self, pegasus_events::Error> {
        E::decode_version(version, payload).map(OnGeneralTopic)
    }
}

/// Whether the general topic is on, from the parsed appsettings.json (if any) and an
/// environment lookup: off when unset or empty, on when it names `identity-events`.
///
/// # Errors
///
/// [`service_kit::Error::InvalidSetting`] naming the setting when it names another topic.
pub fn general_topic_setting(
    file: Option<&Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<bool, service_kit::Error> {
    let (value, setting) = match env(GENERAL_TOPIC_ENV) {
        Some(value) => (value, GENERAL_TOPIC_ENV),
        None => match file
            .and_then(|json| json.get("Identity"))
            .and_then(|section| section.get("GeneralTopic"))
        {
            None | Some(Value::Null) => return Ok(false),
            Some(Value::String(value)) => (value.clone(), "Identity:GeneralTopic"),
            Some(_) => (String::from("?"), "Identity:GeneralTopic"),
        },
    };
    match value.trim() {
        "" => Ok(false),
        topics::IDENTITY_EVENTS => Ok(true),
        _ => Err(service_kit::Error::InvalidSetting {
            setting: setting.to_owned(),
            reason: format!(
                "must be {} or empty (event types are bound to their topics at compile time)",
                topics::IDENTITY_EVENTS
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use event_contracts::UserCreatedEvent;
    use pegasus_events::wire::{decode_payload, encode_payload};
    use serde_json::json;

    use super::*;

    #[test]
    fn the_general_copy_is_the_same_event_on_another_topic() {
        let event = UserCreatedEvent {
            user_id: "u1".into(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            created_at: Utc::now(),
            version: 1,
        };
        let copy = OnGeneralTopic(event.clone());
        assert_eq!(<OnGeneralTopic<UserCreatedEvent>>::TOPIC, "identity-events");
        assert_eq!(
            <OnGeneralTopic<UserCreatedEvent>>::NAME,
            UserCreatedEvent::NAME
        );
        assert_eq!(copy.partition_key(), event.partition_key());
        assert_eq!(
            format!("{:?}", copy.redacted()),
            format!("{:?}", event.redacted())
        );
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        encode_payload(&copy, &mut mine).expect("encodes");
        encode_payload(&event, &mut theirs).expect("encodes");
        assert_eq!(mine, theirs);
        let back: OnGeneralTopic<UserCreatedEvent> = decode_payload(&mine).expect("decodes");
        assert_eq!(back.0, event);
    }

    #[test]
    fn the_setting_switches_the_topic_on_and_refuses_other_names() {
        let none = |_: &str| None;
        assert!(!general_topic_setting(None, &none).expect("off"));
        let file = json!({ "Identity": { "GeneralTopic": "identity-events" } });
        assert!(general_topic_setting(Some(&file), &none).expect("on"));
        let empty = |_: &str| Some(String::new());
        assert!(!general_topic_setting(Some(&file), &empty).expect("env wins"));
        let other = |_: &str| Some("user-events".to_owned());
        match general_topic_setting(None, &other) {
            Err(service_kit::Error::InvalidSetting { setting, .. }) => {
                assert_eq!(setting, GENERAL_TOPIC_ENV);
            }
            result => panic!("{result:?}"),
        }
        let file = json!({ "Identity": { "GeneralTopic": 1 } });
        assert!(general_topic_setting(Some(&file), &none).is_err());
    }
}

//! Identity's general topic, `identity-events`: when it is switched on, every user event
//! is also enqueued there, in the same transaction as the change and its own topic's copy,
//! so a service that follows all of Identity's changes reads one topic, in order per user
//! (both copies are keyed by the user id), and dispatches on `ce_type`.
//!
//! The copy is [`OnIdentityEvents`](event_contracts::general::OnIdentityEvents): the same `ce_type`,
//! version, key, JSON and redaction as the event on its own topic, another topic. Since
//! pegasus-events binds an event type to its topic at compile time, the topic's name is
//! not free: the setting switches it on and must name `identity-events`.
//!
//! The setting is `Identity:GeneralTopic` in appsettings.json or `IDENTITY_GENERAL_TOPIC`
//! in the environment (the environment wins), read by the shared
//! [`service_kit::TopicSwitch`]. It is not under `Kafka`: pegasus-events reads that
//! section and refuses keys it does not know.

use event_contracts::topics;
use serde_json::Value;
use service_kit::TopicSwitch;

/// The environment variable that switches the general topic on.
pub const GENERAL_TOPIC_ENV: &str = "IDENTITY_GENERAL_TOPIC";

/// The setting: `Identity:GeneralTopic`, `IDENTITY_GENERAL_TOPIC`, naming
/// `identity-events`.
pub const GENERAL_TOPIC: TopicSwitch = TopicSwitch {
    section: "Identity",
    key: "GeneralTopic",
    env: GENERAL_TOPIC_ENV,
    topic: topics::IDENTITY_EVENTS,
};

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
    GENERAL_TOPIC.read(file, env)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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

//! Property tests: whatever the bytes of a record and whatever the settings, nothing
//! panics, and every failure is a typed [`Error`].
//!
//! Records are built as other clients could write them: header names and values of any
//! bytes (names that are not UTF-8 included, through librdkafka's C API), repeated and
//! missing contract headers, and payloads of any bytes or of almost-right JSON.

use std::time::Duration;

use proptest::prelude::*;
use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp};
use serde::{Deserialize, Serialize};

use crate::consumer::dispatch::{Env, Held, Mixed, Outcome, Record, RecordHandler, Typed};
use crate::consumer::{ConsumerSettings, EventContext, EventHandler, HandlerError, RetryPolicy};
use crate::error::Error;
use crate::wire::with_raw_header;
use crate::{wire, Event, KafkaConfig};

#[derive(Debug, Serialize, Deserialize, crate::Event)]
#[event(topic = "props.user.changed", name = "UserCreatedEvent")]
pub(crate) struct UserCreated {
    #[event(key)]
    user_id: String,
    #[event(sensitive)]
    email: String,
}

/// An event type for other modules' unit tests.
pub(crate) type UserCreatedForTests = UserCreated;

impl UserCreated {
    pub(crate) fn sample() -> Self {
        UserCreated {
            user_id: "u1".to_owned(),
            email: "a@example.com".to_owned(),
        }
    }
}

#[test]
fn a_decoded_events_debug_hides_its_sensitive_fields() {
    let headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", "0190a4b2-7c1e-7000-8000-000000000001"),
        ("ce_source", "s"),
        ("ce_type", "UserCreatedEvent"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
    .collect::<Vec<_>>();
    let message = record(
        &headers,
        Some(br#"{"user_id":"u1","email":"alice@example.com"}"#.to_vec()),
        None,
    );
    let decoded = wire::decode::<UserCreated, _>(&message).unwrap();
    let shown = format!("{decoded:?}");
    assert!(!shown.contains("alice@example.com"), "{shown}");
    assert!(shown.contains("u1"), "{shown}");
}

#[derive(Debug, Serialize, Deserialize, crate::Event)]
#[event(topic = "props.user.changed", name = "UserDeletedEvent", version = 2)]
struct UserDeleted {
    user_id: String,
}

/// Header names: the contract's, near misses, and arbitrary bytes.
fn header_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type",
            "ce_schemaversion", "ce_partitionkey", "ce_subject", "ce_correlationid",
            "ce_causationid", "traceparent", "tracestate", "ce_", "CE_TYPE", "dlq-reason",
        ])
        .prop_map(|n| n.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

/// Header values: valid ones for the contract's headers, near misses, arbitrary bytes.
fn header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "1.0", "0.3", "0190a4b2-7c1e-7000-8000-000000000001", "not-a-uuid",
            "identity-api", "UserCreatedEvent", "UserDeletedEvent", "2026-01-15T10:30:00.123Z",
            "2026-13-45T99:99:99Z", "application/json", "application/cloudevents+json",
            "application/cloudevents+json; charset=utf-8", "text/plain", "1", "2", "0", "-1",
            "4294967296", "99999999999999999999", "",
        ])
        .prop_map(|v| Some(v.as_bytes().to_vec())),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Some),
        1 => Just(None),
    ]
}

/// Payloads: events, structured envelopes, near misses, and arbitrary bytes.
fn payload() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        2 => prop::sample::select(vec![
            r#"{"user_id":"u1","email":"a@example.com"}"#,
            r#"{"user_id":"u1"}"#,
            r#"{"user_id":1,"email":["a"]}"#,
            r#"{"specversion":"1.0","id":"0190a4b2-7c1e-7000-8000-000000000001","source":"s","type":"UserCreatedEvent","time":"2026-01-15T10:30:00Z","schemaversion":1,"data":{"user_id":"u1","email":"a@example.com"}}"#,
            r#"{"specversion":"1.0","type":"UserCreatedEvent","schemaversion":-3,"data":null}"#,
            r#"{"specversion":"1.0","type":"UserDeletedEvent","schemaversion":18446744073709551615}"#,
            r#"{"type":7}"#,
            "[]", "null", "", "{", "\u{0}",
        ])
        .prop_map(|p| Some(p.as_bytes().to_vec())),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        1 => Just(None),
    ]
}

fn record(
    headers: &[(Vec<u8>, Option<Vec<u8>>)],
    payload: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
) -> OwnedMessage {
    let headers = headers
        .iter()
        .fold(OwnedHeaders::new(), |all, (name, value)| {
            with_raw_header(all, name, value.as_deref())
        });
    OwnedMessage::new(
        payload,
        key,
        "props.user.changed".to_owned(),
        Timestamp::CreateTime(1_768_473_000_000),
        0,
        42,
        Some(headers),
    )
}

struct Accept;

impl EventHandler<UserCreated> for Accept {
    async fn handle(&self, _: UserCreated, _: &EventContext<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl EventHandler<UserDeleted> for Accept {
    async fn handle(&self, _: UserDeleted, _: &EventContext<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The outcome of the dispatch path is a handled record or a typed decode error.
fn assert_handled_or_undecodable(outcome: Outcome) -> Result<(), TestCaseError> {
    match outcome {
        Outcome::Handled { .. } => Ok(()),
        Outcome::Undecodable(error) => {
            prop_assert!(error.is_decode_error(), "{error:?} is no decode error");
            Ok(())
        }
        Outcome::Panicked { message } => Err(TestCaseError::fail(message)),
        Outcome::Failed { error, .. } => Err(TestCaseError::fail(error)),
        Outcome::Duplicate | Outcome::StoreUnavailable(_) => {
            Err(TestCaseError::fail("no store was given"))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoding_any_record_returns_an_event_or_a_typed_decode_error(
        headers in prop::collection::vec((header_name(), header_value()), 0..12),
        payload in payload(),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
    ) {
        let message = record(&headers, payload, key);
        if let Err(error) = wire::decode::<UserCreated, _>(&message) {
            prop_assert!(error.is_decode_error(), "{error:?}");
        }
        if let Err(error) = wire::decode::<UserDeleted, _>(&message) {
            prop_assert!(error.is_decode_error(), "{error:?}");
        }
        if let Err(error) = wire::event_type(&message) {
            prop_assert!(error.is_decode_error(), "{error:?}");
        }
    }

    #[test]
    fn the_dispatch_path_handles_any_record_or_names_why_it_cannot(
        headers in prop::collection::vec((header_name(), header_value()), 0..12),
        payload in payload(),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
    ) {
        let message = record(&headers, payload, key);
        let metrics = crate::metrics::PartitionMetrics::new("props", 0, "props");
        let env = Env { group_id: "props", idempotency: None, encryption: None, handler_timeout: None, metrics: &metrics };
        let typed = Typed::<UserCreated, Accept>::new(Accept, None, None);
        let mixed = Mixed {
            by_type: [
                (UserCreated::NAME, std::sync::Arc::new(Typed::<UserCreated, Accept>::new(Accept, None, None)) as _),
                (UserDeleted::NAME, std::sync::Arc::new(Typed::<UserDeleted, Accept>::new(Accept, None, None)) as _),
            ]
            .into_iter()
            .collect(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let held = Held::Owned(&message);
        let headers = held.contract_headers();
        let record = Record { message: held, headers: &headers };
        let (single, several) = runtime.block_on(async {
            (
                typed.handle(record, 1, &env).await,
                mixed.handle(record, 1, &env).await,
            )
        });
        assert_handled_or_undecodable(single)?;
        assert_handled_or_undecodable(several)?;
    }
}

/// Durations from zero to `Duration::MAX`, with the edges over-represented.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
        (0u64..100_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn retry_policy() -> impl Strategy<Value = RetryPolicy> {
    (
        any::<u32>(),
        duration(),
        any::<f64>(),
        duration(),
        any::<f64>(),
    )
        .prop_map(
            |(max_attempts, initial_backoff, multiplier, max_backoff, jitter)| RetryPolicy {
                max_attempts,
                initial_backoff,
                multiplier,
                max_backoff,
                jitter,
            },
        )
}

fn topic_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("dlq-events".to_owned()),
        Just(String::new()),
        Just(".".to_owned()),
        Just("a".repeat(250)),
        "[a-zA-Z0-9._-]{1,20}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_consumer_settings_validate_to_ok_or_a_config_error_and_valid_ones_never_overflow(
        retry in retry_policy(),
        shutdown_timeout in duration(),
        revoke_timeout in duration(),
        fetch_max_wait in duration(),
        commit_interval in duration(),
        handler_timeout in prop::option::of(duration()),
        max_in_flight_per_partition in any::<usize>(),
        dead_letter_topic in topic_name(),
        properties in prop::collection::vec((any::<String>(), any::<String>()), 0..3),
    ) {
        let settings = ConsumerSettings {
            retry,
            shutdown_timeout,
            revoke_timeout,
            fetch_max_wait,
            commit_interval,
            handler_timeout,
            max_in_flight_per_partition,
            dead_letter_topic,
            properties,
            ..ConsumerSettings::default()
        };
        match settings.validate() {
            Ok(()) => {
                // What the runtime computes from valid settings never panics.
                for attempt in [1, 2, 30, u32::MAX] {
                    let _ = settings.retry.backoff(attempt);
                }
                let _ = crate::limits::deadline(settings.shutdown_timeout);
                let _ = crate::limits::deadline(settings.revoke_timeout);
                let _ = settings.shutdown_timeout.saturating_add(Duration::from_secs(10));
                let _ = format!("{settings:?}");
            }
            Err(Error::Config { field, .. }) => prop_assert!(!field.is_empty()),
            Err(other) => prop_assert!(false, "not a config error: {other:?}"),
        }
    }

    #[test]
    fn any_kafka_config_validates_to_ok_or_a_config_error(
        bootstrap_servers in prop_oneof![Just("localhost:9092".to_owned()), any::<String>()],
        client_id in prop_oneof![Just("svc".to_owned()), any::<String>()],
        delivery_timeout in duration(),
        linger in duration(),
        properties in prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
    ) {
        let mut config = KafkaConfig::new(bootstrap_servers).with_client_id(client_id);
        config.producer.delivery_timeout = delivery_timeout;
        config.producer.linger = linger;
        config.properties = properties;
        match config.validate() {
            Ok(()) => {
                let _ = config.producer_config();
            }
            Err(Error::Config { .. }) => {}
            Err(other) => prop_assert!(false, "not a config error: {other:?}"),
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_relay_settings_validate_to_ok_or_a_config_error(
        batch_size in any::<i64>(),
        poll_interval in duration(),
        error_backoff in duration(),
        retention in duration(),
        lease_ttl in duration(),
        dead_letter_topic in topic_name(),
    ) {
        let settings = crate::outbox::RelaySettings {
            batch_size,
            poll_interval,
            error_backoff,
            retention,
            lease_ttl,
            dead_letter_topic,
        };
        match settings.validate() {
            Ok(()) => {
                prop_assert!(!settings.poll_interval.is_zero());
                prop_assert!(!settings.error_backoff.is_zero());
                let _ = crate::limits::utc_ago(settings.retention);
                let _ = settings.error_backoff.saturating_mul(1 << 8);
            }
            Err(Error::Config { field, .. }) => prop_assert!(field.starts_with("relay.")),
            Err(other) => prop_assert!(false, "not a config error: {other:?}"),
        }
    }
}

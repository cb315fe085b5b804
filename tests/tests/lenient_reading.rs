//! Write strictly, read leniently: every valid CloudEvent other clients write, and the
//! design's plain .NET events, are read with their identity, through the real broker.
//!
//! The CloudEvents records are written by the CloudEvents Python SDK (`cloudevents` from
//! PyPI, in the virtual environment `scripts/test` makes under `target/`, named by
//! `PEGASUS_TEST_PYTHON`): the SDK decides their bytes, the test only carries them to the
//! broker. The plain records are built as System.Text.Json writes the design's `BaseEvent`
//! (web defaults: camelCase) and as it writes without them (PascalCase).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError, RetryPolicy,
};
use pegasus_events::dead_letter::{DeadLetterQueue, ReplayFilter};
use pegasus_events::wire::{self, WireForm, FOREIGN_ID_NAMESPACE};
use pegasus_events::{Error, Event, EventProducer, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    bootstrap, config, dead_letters_now, header, headers_of, run_until_done, unique,
    DeadLetterWatch,
};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.lenient.user", name = "UserCreatedEvent")]
struct UserCreated {
    user_id: String,
    email: String,
    run: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.lenient.user", name = "UserDeletedEvent")]
struct UserDeleted {
    user_id: String,
    run: String,
}

/// What a handler saw of one record.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    event_type: String,
    id: Uuid,
    source: String,
    time: DateTime<Utc>,
    form: WireForm,
}

#[derive(Clone, Default)]
struct Recorder {
    run: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn record(&self, run: &str, context: &EventContext<'_>) {
        if run == self.run {
            let m = &context.metadata;
            self.seen.lock().unwrap().push(Seen {
                event_type: m.event_type.to_string(),
                id: m.id,
                source: m.source.to_string(),
                time: m.time,
                form: m.form,
            });
        }
    }
}

impl EventHandler<UserCreated> for Recorder {
    async fn handle(&self, e: UserCreated, c: &EventContext<'_>) -> Result<(), HandlerError> {
        self.record(&e.run, c);
        Ok(())
    }
}

impl EventHandler<UserDeleted> for Recorder {
    async fn handle(&self, e: UserDeleted, c: &EventContext<'_>) -> Result<(), HandlerError> {
        self.record(&e.run, c);
        Ok(())
    }
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A record to put on the broker as it is, with the timestamp it is given.
struct Raw {
    name: String,
    headers: Vec<(String, Vec<u8>)>,
    value: Vec<u8>,
    /// What the writer says the event's id and time are.
    id: String,
    time: Option<DateTime<Utc>>,
}

/// The records the CloudEvents Python SDK writes for this run.
fn sdk_records(run: &str) -> Vec<Raw> {
    let python = std::env::var("PEGASUS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "PEGASUS_TEST_PYTHON is not set: run the tests with `scripts/test`, which installs \
             the CloudEvents Python SDK into target/cloudevents-venv"
        )
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/cloudevents_records.py");
    let output = std::process::Command::new(python)
        .args([script, run])
        .output()
        .expect("the Python SDK script runs");
    assert!(
        output.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Raw {
                name: v["name"].as_str().unwrap().to_owned(),
                headers: v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap().to_owned(),
                            unhex(h[1].as_str().unwrap()),
                        )
                    })
                    .collect(),
                value: unhex(v["value"].as_str().unwrap()),
                id: v["id"].as_str().unwrap().to_owned(),
                time: v["time"]
                    .as_str()
                    .map(|t| DateTime::parse_from_rfc3339(t).unwrap().to_utc()),
            }
        })
        .collect()
}

async fn send_raw(topic: &str, raw: &Raw, timestamp_ms: i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let headers = raw
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key: key.as_str(),
                value: Some(value.as_slice()),
            })
        });
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic)
                .headers(headers)
                .payload(&raw.value)
                .timestamp(timestamp_ms),
            Duration::from_secs(30),
        )
        .await
        .expect("the broker takes the record");
}

#[tokio::test]
async fn every_valid_cloudevent_and_the_designs_plain_events_are_read_with_their_identity() {
    let run = unique("lenient");
    let dlq = unique("dlq-lenient");
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[
            TopicSpec::for_event::<UserCreated>().partitions(1),
            TopicSpec::new(&dlq).partitions(1),
        ])
        .await
        .unwrap();
    // Record timestamps set by the test: a record without a time of its own gets this.
    let stamp = DateTime::parse_from_rfc3339("2026-02-03T04:05:06.789Z")
        .unwrap()
        .to_utc();
    let mut records = sdk_records(&run);
    assert_eq!(records.len(), 4, "the SDK wrote the four CloudEvents forms");
    // The design's plain .NET events: camelCase BaseEvent (System.Text.Json web defaults,
    // seven fraction digits), and PascalCase with a DateTime of unspecified kind.
    let net_id = Uuid::new_v4();
    records.push(Raw {
        name: "dotnet-camel".into(),
        headers: vec![],
        value: serde_json::to_vec(&serde_json::json!({
            "eventId": net_id, "occurredAt": "2026-01-15T10:30:00.1234567Z",
            "eventType": "UserCreatedEvent", "sourceService": "identity-api",
            "userId": "u-net", "email": "net@example.com", "run": run,
        }))
        .unwrap(),
        id: net_id.to_string(),
        time: Some(
            DateTime::parse_from_rfc3339("2026-01-15T10:30:00.1234567Z")
                .unwrap()
                .to_utc(),
        ),
    });
    records.push(Raw {
        name: "dotnet-pascal".into(),
        headers: vec![],
        value: serde_json::to_vec(&serde_json::json!({
            "EventId": "not-a-guid-but-an-id", "OccurredAt": "2026-01-15T10:30:00",
            "EventType": "UserDeletedEvent", "SourceService": "identity-worker",
            "userId": "u-net", "run": run,
        }))
        .unwrap(),
        id: "not-a-guid-but-an-id".into(),
        time: Some(
            DateTime::parse_from_rfc3339("2026-01-15T10:30:00Z")
                .unwrap()
                .to_utc(),
        ),
    });
    for raw in &records {
        send_raw(UserCreated::TOPIC, raw, stamp.timestamp_millis()).await;
    }

    let recorder = Recorder {
        run: run.clone(),
        ..Recorder::default()
    };
    let consumer = EventConsumer::builder(config("lenient"))
        .group_id(unique("lenient-group"))
        .settings(ConsumerSettings {
            dead_letter_topic: dlq.clone(),
            commit_interval: Duration::from_millis(200),
            shutdown_timeout: Duration::from_secs(10),
            ..ConsumerSettings::default()
        })
        .handler::<UserCreated, _>(recorder.clone())
        .handler::<UserDeleted, _>(recorder.clone())
        .build()
        .unwrap();
    let seen = Arc::clone(&recorder.seen);
    let want = records.len();
    run_until_done(consumer, move || seen.lock().unwrap().len() >= want).await;

    let seen = recorder.seen.lock().unwrap().clone();
    let expected: Vec<Seen> = records
        .iter()
        .map(|raw| {
            let (event_type, source, form) = match raw.name.as_str() {
                "sdk-binary" => ("UserCreatedEvent", "python-sdk", WireForm::Binary),
                "sdk-binary-minimal" => ("UserDeletedEvent", "python-sdk", WireForm::Binary),
                "sdk-structured" => ("UserCreatedEvent", "python-sdk", WireForm::Structured),
                "sdk-structured-minimal" => {
                    ("UserDeletedEvent", "python-sdk", WireForm::Structured)
                }
                "dotnet-camel" => ("UserCreatedEvent", "identity-api", WireForm::PlainJson),
                "dotnet-pascal" => ("UserDeletedEvent", "identity-worker", WireForm::PlainJson),
                other => panic!("unexpected record {other}"),
            };
            Seen {
                event_type: event_type.to_owned(),
                // A UUID is the id; any other text stands for a UUID v5 of it.
                id: Uuid::try_parse(&raw.id)
                    .unwrap_or_else(|_| Uuid::new_v5(&FOREIGN_ID_NAMESPACE, raw.id.as_bytes())),
                source: source.to_owned(),
                // No time of its own: the record's timestamp.
                time: raw.time.unwrap_or(stamp),
                form,
            }
        })
        .collect();
    assert_eq!(seen, expected);
    let letters = dead_letters_now(&dlq).await;
    assert!(letters.is_empty(), "nothing dead-lettered: {letters:?}");
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.lenient.plain", name = "PlainEvent")]
struct Plain {
    run: String,
    n: u32,
}

/// Fails permanently the first time it sees each event of its run, then handles it.
#[derive(Clone, Default)]
struct FailsOnce {
    run: String,
    ids: Arc<Mutex<HashMap<u32, Vec<Uuid>>>>,
}

impl EventHandler<Plain> for FailsOnce {
    async fn handle(&self, event: Plain, context: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        let first = {
            let mut ids = self.ids.lock().unwrap();
            let seen = ids.entry(event.n).or_default();
            seen.push(context.event_id());
            seen.len() == 1
        };
        if first {
            return Err(HandlerError::permanent(std::io::Error::other("not yet")));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_plain_record_without_an_id_keeps_its_derived_id_when_replayed_from_the_dead_letter_topic(
) {
    let run = unique("plain-replay");
    let dlq = unique("dlq-plain-replay");
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[
            TopicSpec::for_event::<Plain>().partitions(1),
            TopicSpec::new(&dlq).partitions(1),
        ])
        .await
        .unwrap();
    let raw = Raw {
        name: "plain".into(),
        headers: vec![],
        value: serde_json::to_vec(&Plain {
            run: run.clone(),
            n: 1,
        })
        .unwrap(),
        id: String::new(),
        time: None,
    };
    send_raw(Plain::TOPIC, &raw, Utc::now().timestamp_millis()).await;
    let handler = FailsOnce {
        run: run.clone(),
        ..FailsOnce::default()
    };
    let settings = ConsumerSettings {
        dead_letter_topic: dlq.clone(),
        retry: RetryPolicy::no_retry(),
        commit_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(10),
        ..ConsumerSettings::default()
    };
    let group = unique("plain-replay-group");
    let consumer = EventConsumer::builder(config("plain-replay"))
        .group_id(&group)
        .settings(settings.clone())
        .handler::<Plain, _>(handler.clone())
        .build()
        .unwrap();
    let watch = DeadLetterWatch::start(&dlq);
    run_until_done(consumer, watch.arrived()).await;
    let first_id = handler.ids.lock().unwrap()[&1][0];
    let letter = watch.letters()[0].clone();
    assert_eq!(letter.event_id(), None, "the record carries no ce_id");
    assert_eq!(letter.plain_record_id(), Some(first_id));

    let report = DeadLetterQueue::new(&config("dlq-reader"))
        .unwrap()
        .topic(&dlq)
        .replay(&ReplayFilter::new().event_ids([first_id]))
        .await
        .unwrap();
    assert_eq!((report.matched, report.replayed), (1, 1));
    let consumer = EventConsumer::builder(config("plain-replay"))
        .group_id(&group)
        .settings(settings)
        .handler::<Plain, _>(handler.clone())
        .build()
        .unwrap();
    let ids = Arc::clone(&handler.ids);
    run_until_done(consumer, move || ids.lock().unwrap()[&1].len() >= 2).await;
    let ids = handler.ids.lock().unwrap()[&1].clone();
    assert_eq!(
        ids,
        [first_id, first_id],
        "the replayed record has the id it had"
    );
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.lenient.baseevent", name = "ShipmentCreatedEvent")]
struct ShipmentCreated {
    #[event(key)]
    shipment_id: String,
    tracking_number: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.lenient.baseevent", name = "Clashing")]
struct Clashing {
    event_type: String,
}

#[tokio::test]
async fn base_event_fields_are_written_into_the_payload_when_asked_and_agree_with_the_headers() {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<ShipmentCreated>().partitions(1)])
        .await
        .unwrap();
    let mut settings = config("shipping-api");
    settings.producer.base_event_fields = true;
    let producer = EventProducer::new(&settings).await.unwrap();
    let run = unique("baseevent");
    let delivery = producer
        .publish(&ShipmentCreated {
            shipment_id: run.clone(),
            tracking_number: "TRACK123".into(),
        })
        .await
        .unwrap();
    let record = pegasus_events_tests::read_record(
        ShipmentCreated::TOPIC,
        delivery.partition,
        delivery.offset,
    );
    let headers = headers_of(&record);
    let payload: serde_json::Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
    // The four fields first, named as System.Text.Json's web defaults name them.
    let text = std::str::from_utf8(record.payload().unwrap()).unwrap();
    let expected_start = format!(
        r#"{{"eventId":"{}","occurredAt":"{}","eventType":"ShipmentCreatedEvent","sourceService":"{}","shipmentId""#,
        header(&headers, "ce_id").unwrap(),
        header(&headers, "ce_time").unwrap(),
        header(&headers, "ce_source").unwrap(),
    );
    assert!(text.starts_with(&expected_start), "{text}");
    assert_eq!(payload["eventId"], header(&headers, "ce_id").unwrap());
    assert_eq!(payload["occurredAt"], header(&headers, "ce_time").unwrap());
    assert_eq!(payload["eventType"], "ShipmentCreatedEvent");
    assert_eq!(
        payload["sourceService"],
        header(&headers, "ce_source").unwrap()
    );
    assert_eq!(payload["trackingNumber"], "TRACK123");
    // Still read as the binary-mode event it is.
    let decoded = wire::decode::<ShipmentCreated, _>(&record).unwrap();
    assert_eq!(decoded.event.shipment_id, run);
    assert_eq!(decoded.metadata.id, delivery.event_id);

    // An event with a field of one of those names would carry it twice: refused.
    let error = producer
        .publish(&Clashing {
            event_type: "mine".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error.error, Error::Serialize { detail, .. } if detail.contains("eventType")),
        "{error:?}"
    );
}

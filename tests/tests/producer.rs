//! The typed producer against the real broker: acknowledgement, the exact wire contract of
//! `docs/wire-format.md`, ordering per key, batches, compression, topic creation and failure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pegasus_events::wire::{self, header};
use pegasus_events::{
    Compression, Error, Event, EventProducer, KafkaConfig, PublishMetadata, TopicAdmin, TopicSpec,
    UnreachableCause, WireForm,
};
use pegasus_events_tests::{bootstrap, config, header as find, headers_of, read_record, unique};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The design's ShipmentCreatedEvent, shaped as the example value of docs/wire-format.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
struct ShipmentCreated {
    #[event(key)]
    shipment_id: Uuid,
    tracking_number: String,
    status: String,
    created_at: DateTime<Utc>,
    created_by_user_id: String,
    #[event(sensitive)]
    created_by_email: String,
}

fn shipment() -> ShipmentCreated {
    ShipmentCreated {
        shipment_id: Uuid::parse_str("3fa85f64-5717-4562-b3fc-2c963f66afa6").unwrap(),
        tracking_number: "TRACK123".into(),
        status: "Created".into(),
        created_at: "2026-01-15T10:30:00Z".parse().unwrap(),
        created_by_user_id: "auth0|123".into(),
        created_by_email: "user@example.com".into(),
    }
}

/// An event without a key field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.audit.recorded", version = 3)]
struct AuditRecorded {
    action: String,
}

/// Ordering and batch tests use their own topic, created with 3 partitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(topic = "tests.order.step-recorded")]
struct StepRecorded {
    #[event(key)]
    order: u32,
    step: u32,
}

/// Compression tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(topic = "tests.compression.sampled")]
struct CompressionSampled {
    #[event(key)]
    codec: String,
    text: String,
}

async fn producer(client_id: &str) -> EventProducer {
    EventProducer::new(&config(client_id))
        .await
        .expect("producer")
}

#[tokio::test]
async fn published_record_carries_exactly_the_wire_contract_headers_key_and_value() {
    let producer = producer("shipping-api").await;
    let event = shipment();
    let metadata = PublishMetadata::new()
        .subject("3fa85f64-5717-4562-b3fc-2c963f66afa6")
        .correlation_id("corr-42")
        .causation_id("0190f5d2-0000-7000-8000-000000000001");
    let before = Utc::now();
    let delivery = producer
        .publish_with(&event, &metadata)
        .await
        .expect("acknowledged");
    assert!(delivery.offset >= 0);

    let record = read_record(ShipmentCreated::TOPIC, delivery.partition, delivery.offset);
    assert_eq!(
        record.key(),
        Some(b"3fa85f64-5717-4562-b3fc-2c963f66afa6".as_slice())
    );
    assert_eq!(
        record.payload(),
        Some(
            br#"{"shipmentId":"3fa85f64-5717-4562-b3fc-2c963f66afa6","trackingNumber":"TRACK123","status":"Created","createdAt":"2026-01-15T10:30:00Z","createdByUserId":"auth0|123","createdByEmail":"user@example.com"}"#
                .as_slice()
        ),
        "the value is the event as serde writes it, with no envelope"
    );

    let headers = headers_of(&record);
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "content-type",
            "ce_schemaversion",
            "ce_partitionkey",
            "ce_subject",
            "ce_correlationid",
            "ce_causationid",
        ],
        "exactly the contract's headers, nothing else"
    );
    assert_eq!(find(&headers, "ce_specversion"), Some("1.0"));
    let id = Uuid::parse_str(find(&headers, "ce_id").unwrap()).unwrap();
    assert_eq!(id, delivery.event_id);
    assert_eq!(
        id.get_version_num(),
        7,
        "event ids are time-ordered v7 UUIDs"
    );
    assert_eq!(find(&headers, "ce_source"), Some("shipping-api"));
    assert_eq!(find(&headers, "ce_type"), Some("ShipmentCreatedEvent"));
    let time = find(&headers, "ce_time").unwrap();
    assert_eq!(time.len(), "2026-01-15T10:30:00.123Z".len(), "{time}");
    assert!(time.ends_with('Z'), "{time}");
    let time: DateTime<Utc> = time.parse().unwrap();
    assert!(time >= before - chrono::Duration::milliseconds(1) && time <= Utc::now());
    assert_eq!(find(&headers, "content-type"), Some("application/json"));
    assert_eq!(find(&headers, "ce_schemaversion"), Some("1"));
    assert_eq!(
        find(&headers, "ce_partitionkey"),
        Some("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    );
    assert_eq!(
        find(&headers, "ce_subject"),
        Some("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    );
    assert_eq!(find(&headers, "ce_correlationid"), Some("corr-42"));
    assert_eq!(
        find(&headers, "ce_causationid"),
        Some("0190f5d2-0000-7000-8000-000000000001")
    );
    for (name, _) in &headers {
        assert_eq!(name, &name.to_lowercase(), "header names are lowercase");
    }
    assert!(
        !headers.iter().any(|(_, v)| v.contains("user@example.com")),
        "a sensitive value never reaches a header"
    );
}

#[tokio::test]
async fn unkeyed_event_is_keyed_by_its_event_id_without_a_partitionkey_header() {
    let producer = producer("audit-api").await;
    let delivery = producer
        .publish(&AuditRecorded {
            action: "login".into(),
        })
        .await
        .expect("acknowledged");
    let record = read_record(AuditRecorded::TOPIC, delivery.partition, delivery.offset);
    let id = delivery.event_id.to_string();
    assert_eq!(record.key(), Some(id.as_bytes()));
    let headers = headers_of(&record);
    assert_eq!(find(&headers, "ce_id"), Some(id.as_str()));
    assert_eq!(find(&headers, "ce_partitionkey"), None);
    assert_eq!(find(&headers, "ce_schemaversion"), Some("3"));
    assert_eq!(find(&headers, "ce_type"), Some("AuditRecorded"));
    assert_eq!(headers.len(), 7, "only the required headers: {headers:?}");
}

#[tokio::test]
async fn record_read_back_decodes_into_the_same_event_and_metadata() {
    let producer = producer("shipping-api").await;
    let event = shipment();
    let delivery = producer
        .publish_with(&event, &PublishMetadata::new().correlation_id("flow-7"))
        .await
        .expect("acknowledged");
    let record = read_record(ShipmentCreated::TOPIC, delivery.partition, delivery.offset);
    let decoded = wire::decode::<ShipmentCreated, _>(&record).expect("decodes");
    assert_eq!(decoded.event, event);
    assert_eq!(decoded.metadata.id, delivery.event_id);
    assert_eq!(decoded.metadata.source, "shipping-api");
    assert_eq!(decoded.metadata.event_type, "ShipmentCreatedEvent");
    assert_eq!(decoded.metadata.schema_version, 1);
    assert_eq!(decoded.metadata.correlation_id.as_deref(), Some("flow-7"));
    assert_eq!(decoded.metadata.form, WireForm::Binary);
}

async fn topic_with_partitions(name: &str, partitions: i32) {
    let admin = TopicAdmin::new(&config("admin"))
        .await
        .expect("admin client");
    admin
        .ensure_topics(&[TopicSpec::new(name).partitions(partitions)])
        .await
        .expect("topic created");
}

#[tokio::test]
async fn events_with_the_same_key_land_in_one_partition_in_publish_order() {
    topic_with_partitions(StepRecorded::TOPIC, 3).await;
    let producer = producer("orders-api").await;
    let events: Vec<StepRecorded> = (0..300)
        .map(|i| StepRecorded {
            order: i % 10,
            step: i / 10,
        })
        .collect();
    let results = producer.publish_all(&events).await;
    let mut partition_of_order: HashMap<u32, i32> = HashMap::new();
    let mut last_offset: HashMap<u32, i64> = HashMap::new();
    for (event, result) in events.iter().zip(results) {
        let delivery = result.expect("acknowledged");
        let partition = *partition_of_order
            .entry(event.order)
            .or_insert(delivery.partition);
        assert_eq!(
            delivery.partition, partition,
            "order {} changed partition",
            event.order
        );
        let previous = last_offset.insert(event.order, delivery.offset);
        assert!(
            previous.is_none_or(|p| p < delivery.offset),
            "order {} went backwards",
            event.order
        );
    }
    let partitions: std::collections::HashSet<i32> = partition_of_order.values().copied().collect();
    assert!(
        partitions.len() > 1,
        "ten keys spread over the three partitions"
    );
}

#[tokio::test]
async fn publish_all_acknowledges_every_event_of_a_batch_with_distinct_offsets() {
    let topic_events: Vec<StepRecorded> = (0..2_000)
        .map(|i| StepRecorded {
            order: 1_000 + i % 50,
            step: i,
        })
        .collect();
    topic_with_partitions(StepRecorded::TOPIC, 3).await;
    let producer = producer("orders-api").await;
    let results = producer.publish_all(&topic_events).await;
    assert_eq!(results.len(), topic_events.len());
    let mut seen = std::collections::HashSet::new();
    for result in results {
        let delivery = result.expect("acknowledged");
        assert!(
            seen.insert((delivery.partition, delivery.offset)),
            "offsets are distinct"
        );
        assert!(seen.len() <= topic_events.len());
    }
    assert_eq!(seen.len(), 2_000);
}

#[tokio::test]
async fn every_compression_codec_publishes_records_that_read_back_unchanged() {
    let topic = CompressionSampled::TOPIC;
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut settings = config("compression-test");
        settings.producer.compression = codec;
        let producer = EventProducer::new(&settings).await.expect("producer");
        let event = CompressionSampled {
            codec: format!("{codec:?}"),
            text: "compressible ".repeat(200),
        };
        let delivery = producer.publish(&event).await.expect("acknowledged");
        let record = read_record(topic, delivery.partition, delivery.offset);
        let decoded = wire::decode::<CompressionSampled, _>(&record).expect("decodes");
        assert_eq!(decoded.event, event, "{codec:?}");
    }
}

#[tokio::test]
async fn ensure_topics_creates_the_partitions_asked_for_and_is_idempotent() {
    let name = unique("tests.topics.created");
    let admin = TopicAdmin::new(&config("admin"))
        .await
        .expect("admin client");
    let spec = TopicSpec::new(&name).partitions(3).replication_factor(1);
    admin
        .ensure_topics(std::slice::from_ref(&spec))
        .await
        .expect("created");
    admin
        .ensure_topics(&[spec.partitions(5)])
        .await
        .expect("second call succeeds and changes nothing");

    // Count partitions with a plain client.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&name), Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 3);

    let invalid = admin
        .ensure_topics(&[TopicSpec::new(&name).replication_factor(0)])
        .await
        .unwrap_err();
    assert!(matches!(invalid, Error::Config { .. }), "{invalid:?}");
}

fn closed_port() -> u16 {
    // Bind and drop: nothing listens there afterwards.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_publish_to_an_unreachable_broker_fails_after_the_delivery_timeout_naming_the_address_and_hands_the_record_back(
) {
    let address = format!("127.0.0.1:{}", closed_port());
    // Without the connection check, so that the publish is what meets the dead address.
    let mut settings = KafkaConfig::new(&address)
        .with_client_id("shipping-api")
        .with_connect_timeout(None);
    settings.producer.delivery_timeout = Duration::from_secs(2);
    let producer = EventProducer::new(&settings)
        .await
        .expect("without the check, creating a producer does not connect");
    let started = Instant::now();
    let error = producer
        .publish(&shipment())
        .await
        .expect_err("nothing is listening");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_900),
        "failed only after the timeout"
    );
    assert!(waited < Duration::from_secs(60), "but not much later");
    match &error.error {
        Error::BrokersUnreachable {
            client,
            bootstrap,
            cause: UnreachableCause::ConnectionRefused { broker },
            ..
        } => {
            assert_eq!(*client, "producer");
            assert_eq!(bootstrap, &address);
            assert_eq!(broker, &address);
        }
        other => panic!("expected BrokersUnreachable with connection refused, got {other:?}"),
    }
    let message = pegasus_events::error::Report::new(&error).to_string();
    assert!(
        message.contains(&format!(
            "could not connect to a Kafka broker at `{address}`"
        )) && message.contains("connection refused")
            && message.contains(ShipmentCreated::TOPIC),
        "the message names the topic, the address and the cause: {message}"
    );
    let shown = format!("{error} {error:?}");
    assert!(
        !shown.contains("user@example.com"),
        "no sensitive value in the error: {shown}"
    );

    let record = error.into_record().expect("the record is handed back");
    assert_eq!(record.topic, ShipmentCreated::TOPIC);
    let event_id = record.event_id().expect("with its ce_id");
    let value: ShipmentCreated =
        serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
    assert_eq!(value, shipment());

    // The handed-back record goes out unchanged once a broker is there.
    let working = producer_for_republish().await;
    let delivery = working.republish(&record).await.expect("republished");
    assert_eq!(delivery.event_id, event_id);
    let stored = read_record(&record.topic, delivery.partition, delivery.offset);
    let headers = headers_of(&stored);
    assert_eq!(find(&headers, "ce_id"), Some(event_id.to_string().as_str()));
    assert_eq!(stored.payload(), record.payload.as_deref());
}

async fn producer_for_republish() -> EventProducer {
    producer("shipping-api").await
}

#[tokio::test]
async fn creating_a_producer_with_a_bad_property_names_it_and_hides_its_value() {
    let settings = config("shipping-api").with_property("socket.timeout.ms", "not-a-number-secret");
    let error = EventProducer::new(&settings)
        .await
        .expect_err("librdkafka rejects the value");
    match &error {
        Error::Config { field, .. } => assert_eq!(field, "properties.socket.timeout.ms"),
        other => panic!("expected a config error, got {other:?}"),
    }
    assert!(!format!("{error} {error:?}").contains("not-a-number-secret"));
}

#[test]
fn secrets_never_reach_logs_or_errors_when_a_producer_is_created_and_fails() {
    let password = "s3cr3t-pa55word-value";
    let json = format!(
        r#"{{"Kafka":{{"BootstrapServers":"127.0.0.1:{}","ClientId":"identity-api",
            "SecurityProtocol":"SaslPlaintext","SaslMechanism":"Plain",
            "SaslUsername":"admin","SaslPassword":"{password}","DeliveryTimeoutMs":1500,
            "ConnectTimeoutMs":1000}}}}"#,
        closed_port()
    );
    let ((), logs) = pegasus_events_tests::capture_logs(|| {
        let mut settings = KafkaConfig::from_appsettings_json(&json).expect("valid");
        tracing::info!(config = ?settings, "loaded");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let refused = runtime
            .block_on(EventProducer::new(&settings))
            .expect_err("nothing listens: the connection check fails");
        tracing::error!(error = %refused, debug = ?refused, "producer creation failed");
        assert!(!format!("{refused} {refused:?}").contains(password));
        // Without the check, the publish meets the dead address.
        settings.connect_timeout = None;
        let producer = runtime
            .block_on(EventProducer::new(&settings))
            .expect("producer");
        let error = runtime
            .block_on(producer.publish(&shipment()))
            .expect_err("nothing listens");
        tracing::error!(error = %error, debug = ?error, "publish failed");
        assert!(!format!("{error:?}").contains(password));
    });
    assert!(
        logs.contains("creating event producer"),
        "the config was logged: {logs}"
    );
    assert!(logs.contains("publish failed"), "{logs}");
    assert!(logs.contains("producer creation failed"), "{logs}");
    assert!(
        !logs.contains(password),
        "password leaked into logs: {logs}"
    );
    assert!(
        !logs.contains("user@example.com"),
        "sensitive field leaked: {logs}"
    );
}

#[tokio::test]
async fn records_from_other_services_in_all_three_wire_forms_decode() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let topic = ShipmentCreated::TOPIC;
    let value = serde_json::to_string(&shipment()).unwrap();

    // Plain JSON, as the .NET services publish.
    let (partition, offset) = raw
        .send(
            FutureRecord::to(topic)
                .key("3fa85f64-5717-4562-b3fc-2c963f66afa6")
                .payload(&value),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .into_parts();
    let record = read_record(topic, partition, offset);
    let plain = wire::decode::<ShipmentCreated, _>(&record).expect("plain JSON decodes");
    assert_eq!(plain.event, shipment());
    assert_eq!(plain.metadata.form, WireForm::PlainJson);
    assert_eq!(plain.metadata.schema_version, 1);
    assert_eq!(
        plain.metadata.id,
        wire::plain_record_id(topic, partition, offset)
    );
    let again = wire::decode::<ShipmentCreated, _>(&record).unwrap();
    assert_eq!(
        again.metadata.id, plain.metadata.id,
        "the derived id is deterministic"
    );

    // Structured mode, as a CloudEvents SDK writes it.
    let structured = format!(
        r#"{{"specversion":"1.0","id":"0190f5d2-1111-7000-8000-000000000002","source":"shipping-dotnet","type":"ShipmentCreatedEvent","time":"2026-01-15T10:30:00.123Z","datacontenttype":"application/json","schemaversion":"1","correlationid":"c-9","data":{value}}}"#
    );
    let (partition, offset) = raw
        .send(
            FutureRecord::to(topic)
                .key("3fa85f64-5717-4562-b3fc-2c963f66afa6")
                .payload(&structured)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some("application/cloudevents+json; charset=UTF-8"),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .into_parts();
    let record = read_record(topic, partition, offset);
    let decoded = wire::decode::<ShipmentCreated, _>(&record).expect("structured decodes");
    assert_eq!(decoded.event, shipment());
    assert_eq!(decoded.metadata.form, WireForm::Structured);
    assert_eq!(decoded.metadata.source, "shipping-dotnet");
    assert_eq!(decoded.metadata.correlation_id.as_deref(), Some("c-9"));
    assert_eq!(
        decoded.metadata.time,
        "2026-01-15T10:30:00.123Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(header::ID, "ce_id");
}

trait IntoParts {
    fn into_parts(self) -> (i32, i64);
}

impl IntoParts for rdkafka::producer::future_producer::Delivery {
    fn into_parts(self) -> (i32, i64) {
        (self.partition, self.offset)
    }
}

/// serde_json cannot write a map whose keys are not strings.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.serialize.refused")]
struct Unserializable {
    by_pair: std::collections::BTreeMap<(u8, u8), u8>,
}

#[tokio::test]
async fn an_event_that_cannot_be_serialized_is_a_typed_error_not_a_panic() {
    let producer = producer("serialize-test").await;
    let event = Unserializable {
        by_pair: [((1, 2), 3)].into_iter().collect(),
    };
    let error = producer
        .publish(&event)
        .await
        .expect_err("cannot serialize");
    assert!(
        matches!(
            error.error,
            Error::Serialize {
                event_type: "Unserializable",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.record.is_none(), "no record was built");
}

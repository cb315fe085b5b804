//! The whole service against a real Kafka broker: Identity's `UserCreatedEvent` reaches
//! the user cache through the consumer and the inbox, the user then creates a shipment over
//! HTTP, and the relay publishes its `ShipmentCreatedEvent`; then the service stops on its
//! token within its drain bound. Once on SQLite, once on a new database on the PostgreSQL
//! server under test.
//!
//! And the consumer of a mixed topic: with `user_events: UserEvents::GeneralTopic`
//! (`SHIPPING_USER_EVENTS_TOPIC=identity-events`) the user cache reads Identity's three
//! user events from `identity-events` alone, dispatched on `ce_type`, and a record of a
//! type it has no handler for (`PasswordChangedEvent`) is dead-lettered with reason
//! `decode` without stopping the records after it. Also on both databases.
//!
//! The broker and the server are the ones `scripts/test` starts, named by
//! `PEGASUS_TEST_BOOTSTRAP` and `PEGASUS_TEST_POSTGRES_URL`; without them the tests fail
//! (they never skip):
//!
//! ```sh
//! export PEGASUS_TEST_BOOTSTRAP=$(scripts/kafka start)
//! export PEGASUS_TEST_POSTGRES_URL=$(scripts/postgres start)
//! cargo test -p shipping-service --test broker
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_contracts::general::OnIdentityEvents;
use event_contracts::{
    ShipmentCreatedEvent, UserCreatedEvent, UserDeactivatedEvent, UserUpdatedEvent,
};
use pegasus_events::consumer::{EventConsumer, EventContext, EventHandler, HandlerError};
use pegasus_events::dead_letter::{DeadLetterQueue, DeadLetterReason, ReplayFilter};
use pegasus_events::wire::encode_payload;
use pegasus_events::{Event, EventProducer, KafkaConfig, Secret};
use serde::{Deserialize, Serialize};
use serde_json::json;
use service_kit::shutdown::CancellationToken;
use service_kit::{JwtKeys, JwtSettings, ServiceSettings};
use shipping_service::store::UserEvents;
use shipping_service::{ShippingDb, ShippingSettings};
use test_support::{call, required, until, Answer, Database, STEP};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Passes each created shipment's id to the test.
struct Seen(mpsc::UnboundedSender<Uuid>);

impl EventHandler<ShipmentCreatedEvent> for Seen {
    async fn handle(
        &self,
        event: ShipmentCreatedEvent,
        _: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let _ = self.0.send(event.shipment_id);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_user_creates_a_shipment_whose_event_is_published_on_sqlite() {
    a_cached_user_creates_a_shipment_whose_event_is_published(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_user_creates_a_shipment_whose_event_is_published_on_postgres() {
    a_cached_user_creates_a_shipment_whose_event_is_published(Database::Postgres).await;
}

async fn a_cached_user_creates_a_shipment_whose_event_is_published(database: Database) {
    let bootstrap = required("PEGASUS_TEST_BOOTSTRAP");
    let run = Uuid::now_v7();
    // A client id of its own: its consumer group reads Identity's topics from the start.
    let kafka = KafkaConfig::new(bootstrap).with_client_id(format!("shipping-api-test-{run}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let jwt = JwtSettings {
        secret: Secret::new("broker-test-secret-broker-test-secret"),
        issuer: "identity-api".into(),
        audience: "pegasus-services".into(),
        expiry: Duration::from_secs(600),
    };
    let settings = ServiceSettings {
        kafka: kafka.clone(),
        database_url: database.fresh("shipping", dir.path()).await,
        http_address: "127.0.0.1:0".parse().expect("address"),
        jwt: jwt.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bound");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(shipping_service::run_on(
        listener,
        settings,
        shutdown.clone(),
    ));

    // Identity registers the user.
    let user_id = format!("user-{run}");
    let producer = EventProducer::new(&kafka).await.expect("producer");
    producer
        .publish(&UserCreatedEvent {
            user_id: user_id.clone(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            created_at: Utc::now(),
            version: 1,
        })
        .await
        .expect("published");

    // 403 until the user event reached the cache, then 201.
    let token = JwtKeys::new(&jwt)
        .issue(&user_id, "ada@example.com")
        .expect("token");
    let tracking = format!("T{}", run.simple());
    let deadline = tokio::time::Instant::now() + STEP;
    let created = loop {
        let Answer { status, body, .. } = call(
            address,
            "POST",
            "/api/shipments",
            Some(&token),
            Some(&json!({ "trackingNumber": tracking })),
        )
        .await;
        match status {
            201 => break body,
            403 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("{status}: {body}"),
        }
    };
    let shipment_id: Uuid = created["shipment"]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a shipment id");

    // The relay published it.
    let (seen, mut ids) = mpsc::unbounded_channel();
    let watcher = EventConsumer::builder(kafka.clone())
        .group_id(format!("shipping-broker-test-{run}"))
        .handler::<ShipmentCreatedEvent, _>(Seen(seen))
        .build()
        .expect("consumer");
    let stop_watcher = CancellationToken::new();
    let watching = tokio::spawn(watcher.run_until(stop_watcher.clone().cancelled_owned()));
    tokio::time::timeout(STEP, async {
        while let Some(id) = ids.recv().await {
            if id == shipment_id {
                return;
            }
        }
    })
    .await
    .expect("the shipment's event was published");
    stop_watcher.cancel();
    watching
        .await
        .expect("not panicked")
        .expect("watcher stopped");

    // Ready by now: database, broker, consumer and relay.
    let ready = call(address, "GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let metrics = call(address, "GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("kafka_events_published_total"),
        "{}",
        metrics.text
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(25), service)
        .await
        .expect("stopped within the drain bounds")
        .expect("not panicked")
        .expect("no error");
}

/// An Identity event type Shipping has no handler for, on Identity's general topic.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(
    topic = "identity-events",
    name = "PasswordChangedEvent",
    free_form_topic
)]
struct PasswordChangedEvent {
    #[event(key)]
    user_id: String,
    changed_at: DateTime<Utc>,
}

/// POSTs a shipment with `tracking` until the answer is `expected`, within [`STEP`]; any
/// other answer than `expected` or `waiting_on` fails the test.
async fn create_until(
    address: SocketAddr,
    token: &str,
    tracking: &str,
    expected: u16,
    waiting_on: u16,
) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let Answer { status, body, .. } = call(
            address,
            "POST",
            "/api/shipments",
            Some(token),
            Some(&json!({ "trackingNumber": tracking })),
        )
        .await;
        if status == expected {
            return;
        }
        assert!(
            status == waiting_on && tokio::time::Instant::now() < deadline,
            "expected {expected}, got {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_cache_reads_identity_events_and_dead_letters_other_types_on_sqlite() {
    the_user_cache_reads_identity_events_and_dead_letters_other_types(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_cache_reads_identity_events_and_dead_letters_other_types_on_postgres() {
    the_user_cache_reads_identity_events_and_dead_letters_other_types(Database::Postgres).await;
}

async fn the_user_cache_reads_identity_events_and_dead_letters_other_types(database: Database) {
    let bootstrap = required("PEGASUS_TEST_BOOTSTRAP");
    let run = Uuid::now_v7();
    // A client id of its own: its consumer group reads identity-events from the start.
    let kafka = KafkaConfig::new(bootstrap).with_client_id(format!("shipping-api-mixed-{run}"));
    let group = format!("{}-usercache-consumer", kafka.client_id);
    let dir = tempfile::tempdir().expect("temp dir");
    let jwt = JwtSettings {
        secret: Secret::new("broker-test-secret-broker-test-secret"),
        issuer: "identity-api".into(),
        audience: "pegasus-services".into(),
        expiry: Duration::from_secs(600),
    };
    let database_url = database.fresh("shipping", dir.path()).await;
    let settings = ShippingSettings {
        service: ServiceSettings {
            kafka: kafka.clone(),
            database_url: database_url.clone(),
            http_address: "127.0.0.1:0".parse().expect("address"),
            jwt: jwt.clone(),
        },
        general_topic: false,
        user_events: UserEvents::GeneralTopic,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bound");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(shipping_service::run_on(
        listener,
        settings,
        shutdown.clone(),
    ));

    // Identity's events on its general topic only, all keyed by the user, so one
    // partition holds them in this order: the type Shipping has no handler for sits
    // between two it must apply.
    let user_id = format!("user-{run}");
    let producer = EventProducer::new(&kafka).await.expect("producer");
    producer
        .publish(&OnIdentityEvents(UserCreatedEvent {
            user_id: user_id.clone(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            created_at: Utc::now(),
            version: 1,
        }))
        .await
        .expect("created published");
    let password_changed = PasswordChangedEvent {
        user_id: user_id.clone(),
        changed_at: Utc::now(),
    };
    let unhandled = producer
        .publish(&password_changed)
        .await
        .expect("password change published");
    producer
        .publish(&OnIdentityEvents(UserUpdatedEvent {
            user_id: user_id.clone(),
            email: "ada@example.com".into(),
            name: "Ada L.".into(),
            updated_at: Utc::now(),
            version: 2,
        }))
        .await
        .expect("updated published");

    // Created reached the cache: 403 until then, 201 after.
    let token = JwtKeys::new(&jwt)
        .issue(&user_id, "ada@example.com")
        .expect("token");
    create_until(address, &token, &format!("T{}", run.simple()), 201, 403).await;

    // Deactivated, after the unhandled record in the same partition: 403 once applied.
    producer
        .publish(&OnIdentityEvents(UserDeactivatedEvent {
            user_id: user_id.clone(),
            deactivated_at: Utc::now(),
            version: 3,
        }))
        .await
        .expect("deactivated published");
    create_until(address, &token, &format!("U{}", run.simple()), 403, 201).await;

    // The cache holds all three user events: the update (after the unhandled record) too.
    let cache = ShippingDb::open(&database_url, &kafka)
        .await
        .expect("database opened");
    let user = cache.user(&user_id).await.expect("read").expect("cached");
    assert_eq!(user.name.as_deref(), Some("Ada L."));
    assert_eq!((user.active, user.version), (false, 3));

    // The unhandled record is in the dead-letter topic, byte for byte, with reason
    // `decode`, written by the user cache's group, tried once.
    let queue = DeadLetterQueue::new(&kafka).expect("dead-letter queue");
    let ours = ReplayFilter::new()
        .original_topic("identity-events")
        .consumer_group(group.clone())
        .event_ids([unhandled.event_id]);
    let letters = until(
        STEP,
        "the unhandled record dead-lettered",
        || async { queue.read(&ours).await.expect("dead letters read") },
        |letters| !letters.is_empty(),
    )
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.reason, DeadLetterReason::Decode);
    assert_eq!(
        letter.error,
        "no handler for event type `PasswordChangedEvent` on topic `identity-events`"
    );
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.original_partition, unhandled.partition);
    assert_eq!(letter.original_offset, unhandled.offset);
    assert_eq!(letter.record.topic, "identity-events");
    assert_eq!(letter.record.key.as_deref(), Some(user_id.as_bytes()));
    assert_eq!(
        letter.record.header("ce_type"),
        Some("PasswordChangedEvent")
    );
    let mut payload = Vec::new();
    encode_payload(&password_changed, &mut payload).expect("encodes");
    assert_eq!(letter.record.payload.as_deref(), Some(payload.as_slice()));

    // None of the types it handles was dead-lettered by the group (the topic may hold
    // other unhandled types from earlier runs; those are dead-lettered too).
    let by_group = ReplayFilter::new()
        .original_topic("identity-events")
        .consumer_group(group);
    let handled_types = [
        UserCreatedEvent::NAME,
        UserUpdatedEvent::NAME,
        UserDeactivatedEvent::NAME,
    ];
    for letter in queue.read(&by_group).await.expect("dead letters read") {
        let found = letter.record.header("ce_type");
        assert!(
            !found.is_some_and(|found| handled_types.contains(&found)),
            "a handled type was dead-lettered: {letter:?}"
        );
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(25), service)
        .await
        .expect("stopped within the drain bounds")
        .expect("not panicked")
        .expect("no error");
}

//! The whole identity service against a real Kafka broker, once on SQLite and once on a new
//! database on the PostgreSQL server under test. Each run proves:
//!
//! - a user registered over HTTP can sign in, and the outbox relay publishes its
//!   `UserCreatedEvent` to `identity.user.created`: one record, keyed by the user id, with
//!   the contract's headers in order, whose key, value and headers (read raw with rdkafka)
//!   hold neither the password, nor its stored Argon2 hash, nor any `password` field;
//! - a `ShipmentCreatedEvent` published twice with the same event id (as a producer that
//!   retries does) adds one entry to the user's activity log
//!   (`GET /api/users/{id}/activity`): the entry appears once, and a later event of the same
//!   shipment (same key, so the same partition, read after the copy) appears beside it
//!   while the copy still added nothing;
//! - cancelling the service's token stops it within its drain bound.
//!
//! Each run has a client id of its own, so its consumer group
//! (`{client id}-shipmentcreated-consumer`) is new and reads the topic from its start
//! without sharing offsets with other runs; `ce_source` is still `identity-api`
//! (`KafkaConfig::source_service`).
//!
//! The broker and the server are the ones `scripts/test` starts, named by
//! `PEGASUS_TEST_BOOTSTRAP` and `PEGASUS_TEST_POSTGRES_URL`; without them the tests fail
//! (they never skip):
//!
//! ```sh
//! export PEGASUS_TEST_BOOTSTRAP=$(scripts/kafka start)
//! export PEGASUS_TEST_POSTGRES_URL=$(scripts/postgres start)
//! cargo test -p identity-service --test broker
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use event_contracts::{topics, ShipmentCreatedEvent, ShipmentStatus};
use identity_service::IdentitySettings;
use pegasus_events::wire::header;
use pegasus_events::{EventProducer, KafkaConfig, PublishMetadata, Secret};
use serde_json::json;
use service_kit::shutdown::{CancellationToken, DEFAULT_DRAIN_BOUND};
use service_kit::{JwtSettings, ServiceSettings};
use test_support::{
    call, event_ids, required, until, Answer, Database, TopicReader, CONTRACT_HEADERS, STEP,
};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

/// How long after the first record of a key the reader keeps looking for a second one.
const QUIET: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_published_without_secrets_a_shipment_sent_twice_is_logged_once_and_the_service_stops_in_time_on_sqlite(
) {
    users_published_without_secrets_shipment_sent_twice_logged_once_stops_in_time(Database::Sqlite)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_published_without_secrets_a_shipment_sent_twice_is_logged_once_and_the_service_stops_in_time_on_postgres(
) {
    users_published_without_secrets_shipment_sent_twice_logged_once_stops_in_time(
        Database::Postgres,
    )
    .await;
}

async fn users_published_without_secrets_shipment_sent_twice_logged_once_stops_in_time(
    database: Database,
) {
    let bootstrap = required("PEGASUS_TEST_BOOTSTRAP");
    let run = Uuid::now_v7();
    let mut kafka = KafkaConfig::new(&bootstrap).with_client_id(format!("identity-api-test-{run}"));
    kafka.source_service = Some("identity-api".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = database.fresh("identity", dir.path()).await;
    let settings = IdentitySettings {
        service: ServiceSettings {
            kafka: kafka.clone(),
            database_url: database_url.clone(),
            http_address: "127.0.0.1:0".parse().expect("address"),
            jwt: JwtSettings {
                secret: Secret::new("broker-test-secret-broker-test-secret"),
                issuer: "identity-api".into(),
                audience: "pegasus-services".into(),
                expiry: Duration::from_secs(600),
            },
        },
        general_topic: false,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bound");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    // Stops the service on every path out of this test, a failed assertion included.
    let _stop = shutdown.clone().drop_guard();
    let service = tokio::spawn(identity_service::run_on(
        listener,
        settings,
        shutdown.clone(),
    ));

    // Registered and signed in over HTTP.
    let users = TopicReader::at_end(&bootstrap, topics::USER_CREATED).await;
    let email = format!("ada-{}@example.com", run.simple());
    let Answer { status, body, .. } = call(
        address,
        "POST",
        "/api/users",
        None,
        Some(&json!({ "email": email, "name": "Ada", "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let user_id = body["user"]["id"].as_str().expect("a user id").to_owned();
    let Answer { status, body, .. } = call(
        address,
        "POST",
        "/api/auth/token",
        None,
        Some(&json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["userId"], user_id.as_str());
    let token = body["accessToken"].as_str().expect("a token").to_owned();

    // The relay published the user once, with nothing secret anywhere in the record.
    let records = users.records_with_key(&user_id, QUIET).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record.header_names(), CONTRACT_HEADERS);
    assert_eq!(record.header(header::TYPE), Some("UserCreatedEvent"));
    assert_eq!(record.header(header::SOURCE), Some("identity-api"));
    assert_eq!(record.header(header::SUBJECT), Some(user_id.as_str()));
    assert_eq!(
        record.fields(),
        BTreeSet::from(["userId", "email", "name", "createdAt", "version"].map(String::from))
    );
    let value = record.json();
    assert_eq!(value["userId"], user_id.as_str());
    assert_eq!(value["email"], email.as_str());
    assert_eq!(value["version"], 1);
    let hash = stored_hash(database, &database_url, &user_id).await;
    let digest = hash.rsplit('$').next().expect("a PHC string");
    let text = record.all_text();
    assert!(!text.contains(PASSWORD), "the password is in the record");
    assert!(!text.contains(digest), "the hash is in the record");
    assert!(!text.contains("argon2"), "a hash is in the record");
    assert!(!text.to_ascii_lowercase().contains("password"), "{text}");

    // Shipping's event for this user, sent twice with one event id, then a later one.
    let mut shipping = KafkaConfig::new(&bootstrap).with_client_id(format!("shipping-test-{run}"));
    shipping.source_service = Some("shipping-api".into());
    let producer = EventProducer::new(&shipping).await.expect("producer");
    let shipment = ShipmentCreatedEvent {
        shipment_id: Uuid::now_v7(),
        tracking_number: format!("T{}", run.simple()),
        status: ShipmentStatus::Created,
        created_at: Utc::now(),
        created_by_user_id: user_id.clone(),
        created_by_email: email.clone(),
        destination: None,
    };
    let sent_twice = Uuid::now_v7();
    let mut copies = Vec::new();
    for _ in 0..2 {
        let delivery = producer
            .publish_with(&shipment, &PublishMetadata::new().event_id(sent_twice))
            .await
            .expect("published");
        assert_eq!(delivery.event_id, sent_twice);
        copies.push((delivery.partition, delivery.offset));
    }
    // Two records on the topic, one after the other in one partition.
    assert_eq!(copies[0].0, copies[1].0);
    assert!(copies[0].1 < copies[1].1, "{copies:?}");
    let activity = |token: String, user_id: String| async move {
        let path = format!("/api/users/{user_id}/activity");
        let Answer { status, body, .. } = call(address, "GET", &path, Some(&token), None).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().expect("items").clone()
    };
    let items = until(
        STEP,
        "the shipment in the activity log",
        || activity(token.clone(), user_id.clone()),
        |items| !items.is_empty(),
    )
    .await;
    assert_eq!(event_ids(&items), [sent_twice], "{items:?}");
    assert_eq!(items[0]["shipmentId"], shipment.shipment_id.to_string());
    assert_eq!(
        items[0]["trackingNumber"],
        shipment.tracking_number.as_str()
    );
    assert_eq!(items[0]["kind"], "ShipmentCreatedEvent");

    // Same key, same partition: once the later event is logged, the copy was read too.
    let later = producer
        .publish(&ShipmentCreatedEvent {
            tracking_number: format!("L{}", run.simple()),
            ..shipment.clone()
        })
        .await
        .expect("published")
        .event_id;
    let items = until(
        STEP,
        "the later shipment event in the activity log",
        || activity(token.clone(), user_id.clone()),
        |items| event_ids(items).contains(&later),
    )
    .await;
    let mut expected = vec![sent_twice, later];
    expected.sort();
    let mut logged = event_ids(&items);
    logged.sort();
    assert_eq!(logged, expected, "{items:?}");

    // Stopped on its token within the drain bound (the workers drain side by side).
    let bound = DEFAULT_DRAIN_BOUND + Duration::from_secs(5);
    shutdown.cancel();
    tokio::time::timeout(bound, service)
        .await
        .expect("stopped within the drain bound")
        .expect("not panicked")
        .expect("no error");
}

/// The password hash the service stored for `user_id`, read from its database.
async fn stored_hash(database: Database, url: &str, user_id: &str) -> String {
    const HASH: &str = "SELECT password_hash FROM users WHERE id = $1";
    match database {
        Database::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("database");
            let hash = sqlx::query_scalar(HASH)
                .bind(user_id)
                .fetch_one(&pool)
                .await;
            pool.close().await;
            hash
        }
        Database::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("database");
            let hash = sqlx::query_scalar(HASH)
                .bind(user_id)
                .fetch_one(&pool)
                .await;
            pool.close().await;
            hash
        }
    }
    .expect("a stored hash")
}

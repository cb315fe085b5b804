//! Identity and Shipping together against a real Kafka broker, each with a database of its
//! own, driven over HTTP with tokens Identity issues: the design's "Create Shipment" flow
//! end to end. Once with a SQLite database each, once with a PostgreSQL database each on
//! the server under test. Each run proves:
//!
//! - **user events reach Shipping's cache**: a user registered in Identity is refused by
//!   Shipping (403) until its `UserCreatedEvent` arrives, then creates a shipment (201);
//! - **the shipment reaches Identity's activity log exactly once**: one entry, with the
//!   shipment's id, tracking number and the `ce_id` of its record, still one a moment later;
//! - **the record matches the wire contract, header by header** (`docs/wire-format.md`,
//!   sections 1, 2 and 5), read raw with rdkafka from `shipping.shipment.created`: one
//!   record; key = the shipment id; headers exactly `ce_specversion` `1.0`, `ce_id` (a
//!   lowercase v7 UUID, the one Identity logged), `ce_source` `shipping-api`, `ce_type`
//!   `ShipmentCreatedEvent`, `ce_time` (`YYYY-MM-DDTHH:MM:SS.mmmZ`, during the request),
//!   `content-type` `application/json`, `ce_schemaversion` `1`, `ce_partitionkey` and
//!   `ce_subject` = the shipment id, `ce_correlationid` = the trace id the request came
//!   with, `traceparent` continuing that trace, in that order and nothing else; the value is
//!   the event as serde writes it, camelCase, with the contract's six fields (no
//!   `destination` when none was given), the user's email appears in the record only as
//!   `createdByEmail`, and the password nowhere (`test_support::assert_contract_record`);
//! - **a deactivated user is refused**: after deactivating themself in Identity, the user,
//!   whose token is still valid, gets 403 from Shipping once the `UserDeactivatedEvent`
//!   arrived;
//! - both services stop on their tokens within their drain bounds.
//!
//! The two services run in this process (`run_on`, port 0), each with its own client id so
//! that its consumer group is new; `ce_source` is still the design's `identity-api` and
//! `shipping-api` (`KafkaConfig::source_service`). Every wait is bounded ([`STEP`] per
//! step) and both services are stopped on every path out of a test.
//!
//! `services-e2e`'s `flow` test proves the same with each service a separate process on
//! PostgreSQL, and checks the user's own records on the contract too.
//!
//! The broker and the server are the ones `scripts/test` starts, named by
//! `PEGASUS_TEST_BOOTSTRAP` and `PEGASUS_TEST_POSTGRES_URL`; without them the tests fail
//! (they never skip):
//!
//! ```sh
//! export PEGASUS_TEST_BOOTSTRAP=$(scripts/kafka start)
//! export PEGASUS_TEST_POSTGRES_URL=$(scripts/postgres start)
//! cargo test -p identity-service --test with_shipping
//! ```

use std::time::Duration;

use chrono::Utc;
use event_contracts::{topics, ShipmentCreatedEvent, ShipmentStatus};
use identity_service::IdentitySettings;
use pegasus_events::{Event, KafkaConfig, Secret};
use serde_json::json;
use service_kit::shutdown::{CancellationToken, DEFAULT_DRAIN_BOUND};
use service_kit::{JwtSettings, ServiceSettings};
use test_support::{
    assert_contract_record, call, call_with, event_ids, required, until, Answer, Database,
    Expected, TopicReader, SHIPMENT_CREATED_FIELDS, STEP,
};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

/// How long the activity log is watched for a second entry, and the topic for a second
/// record, after the first showed.
const QUIET: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_flows_from_a_cached_user_to_the_activity_log_once_on_the_wire_contract_and_a_deactivated_user_is_refused_on_sqlite(
) {
    create_shipment_flow(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_flows_from_a_cached_user_to_the_activity_log_once_on_the_wire_contract_and_a_deactivated_user_is_refused_on_postgres(
) {
    create_shipment_flow(Database::Postgres).await;
}

/// A service's Kafka settings: the design's `ce_source`, a client id (and so consumer
/// groups) of this run's own.
fn kafka(bootstrap: &str, service: &str, run: Uuid) -> KafkaConfig {
    let mut kafka = KafkaConfig::new(bootstrap).with_client_id(format!("{service}-e2e-{run}"));
    kafka.source_service = Some(service.to_owned());
    kafka
}

async fn create_shipment_flow(database: Database) {
    let bootstrap = required("PEGASUS_TEST_BOOTSTRAP");
    let run = Uuid::now_v7();
    let dir = tempfile::tempdir().expect("temp dir");
    // One key for both: Identity issues the tokens Shipping checks.
    let jwt = JwtSettings {
        secret: Secret::new("e2e-test-secret-e2e-test-secret-e2e"),
        issuer: "identity-api".into(),
        audience: "pegasus-services".into(),
        expiry: Duration::from_secs(600),
    };
    let localhost = "127.0.0.1:0".parse().expect("address");

    let identity_listener = tokio::net::TcpListener::bind(localhost)
        .await
        .expect("bound");
    let identity_address = identity_listener.local_addr().expect("address");
    let stop_identity = CancellationToken::new();
    // Each service stops on every path out of this test, a failed assertion included.
    let _stop_identity = stop_identity.clone().drop_guard();
    let identity = tokio::spawn(identity_service::run_on(
        identity_listener,
        IdentitySettings {
            service: ServiceSettings {
                kafka: kafka(&bootstrap, "identity-api", run),
                database_url: database.fresh("identity", dir.path()).await,
                http_address: localhost,
                jwt: jwt.clone(),
            },
            general_topic: false,
        },
        stop_identity.clone(),
    ));

    let shipping_listener = tokio::net::TcpListener::bind(localhost)
        .await
        .expect("bound");
    let shipping_address = shipping_listener.local_addr().expect("address");
    let stop_shipping = CancellationToken::new();
    let _stop_shipping = stop_shipping.clone().drop_guard();
    let shipping = tokio::spawn(shipping_service::run_on(
        shipping_listener,
        ServiceSettings {
            kafka: kafka(&bootstrap, "shipping-api", run),
            database_url: database.fresh("shipping", dir.path()).await,
            http_address: localhost,
            jwt,
        },
        stop_shipping.clone(),
    ));

    // Registered in Identity, signed in.
    let email = format!("grace-{}@example.com", run.simple());
    let Answer { status, body, .. } = call(
        identity_address,
        "POST",
        "/api/users",
        None,
        Some(&json!({ "email": email, "name": "Grace", "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let user_id = body["user"]["id"].as_str().expect("a user id").to_owned();
    let Answer { status, body, .. } = call(
        identity_address,
        "POST",
        "/api/auth/token",
        None,
        Some(&json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["accessToken"].as_str().expect("a token").to_owned();

    // Shipping refuses the user until its cache has them, then creates the shipment. The
    // request carries a trace of its own, which the record must continue.
    let shipments = TopicReader::at_end(&bootstrap, topics::SHIPMENT_CREATED).await;
    let trace_id = Uuid::new_v4().simple().to_string();
    let traceparent = format!(
        "00-{trace_id}-{}-01",
        &Uuid::new_v4().simple().to_string()[..16]
    );
    let authorization = format!("Bearer {token}");
    let tracking = format!("T{}", run.simple());
    let deadline = tokio::time::Instant::now() + STEP;
    let (created, sent_from, sent_until) = loop {
        let sent_from = Utc::now();
        let Answer { status, body, .. } = call_with(
            shipping_address,
            "POST",
            "/api/shipments",
            &[
                ("Authorization", authorization.as_str()),
                ("traceparent", traceparent.as_str()),
            ],
            Some(&json!({ "trackingNumber": tracking })),
        )
        .await;
        match status {
            201 => break (body, sent_from, Utc::now()),
            403 if tokio::time::Instant::now() < deadline => {
                assert_eq!(body["error"], "forbidden", "{body}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("{status}: {body}"),
        }
    };
    assert_eq!(
        created["createdBy"]["userId"],
        user_id.as_str(),
        "{created}"
    );
    assert_eq!(created["eventPublished"], topics::SHIPMENT_CREATED);
    let shipment_id: Uuid = created["shipment"]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a shipment id");

    // Identity logs it once.
    let activity = || async {
        let path = format!("/api/users/{user_id}/activity");
        let Answer { status, body, .. } =
            call(identity_address, "GET", &path, Some(&token), None).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().expect("items").clone()
    };
    let items = until(
        STEP,
        "the shipment in the activity log",
        activity,
        |items| !items.is_empty(),
    )
    .await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["shipmentId"], shipment_id.to_string());
    assert_eq!(items[0]["trackingNumber"], tracking.as_str());
    assert_eq!(items[0]["kind"], ShipmentCreatedEvent::NAME);
    tokio::time::sleep(QUIET).await;
    assert_eq!(activity().await, items, "a second entry appeared");
    let logged_id = event_ids(&items)[0];

    // The record, header by header.
    let records = shipments
        .records_with_key(&shipment_id.to_string(), QUIET)
        .await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = assert_contract_record::<ShipmentCreatedEvent>(
        &records[0],
        &Expected {
            source: "shipping-api",
            key: &shipment_id.to_string(),
            trace_id: &trace_id,
            sent: sent_from,
            answered: sent_until,
            fields: &SHIPMENT_CREATED_FIELDS,
            only_as: &[(email.as_str(), "createdByEmail")],
            nowhere: &[PASSWORD],
        },
    );
    assert_eq!(record.id, logged_id, "Identity logged the record's ce_id");
    let event = record.event;
    assert_eq!(event.shipment_id, shipment_id);
    assert_eq!(event.tracking_number, tracking);
    assert_eq!(event.status, ShipmentStatus::Created);
    assert_eq!(event.created_by_user_id, user_id);
    assert_eq!(event.created_by_email, email);
    assert_eq!(event.destination, None);

    // Deactivated in Identity: refused by Shipping once the event arrived, the token still
    // being valid.
    let Answer { status, body, .. } = call(
        identity_address,
        "POST",
        &format!("/api/users/{user_id}/deactivate"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["active"], false, "{body}");
    let deadline = tokio::time::Instant::now() + STEP;
    for attempt in 0.. {
        let Answer { status, body, .. } = call(
            shipping_address,
            "POST",
            "/api/shipments",
            Some(&token),
            Some(&json!({ "trackingNumber": format!("D{attempt}{}", run.simple()) })),
        )
        .await;
        match status {
            403 => {
                assert_eq!(body["error"], "forbidden", "{body}");
                break;
            }
            // Not arrived yet.
            201 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("{status}: {body}"),
        }
    }

    // Both stop on their tokens within their drain bounds.
    let bound = DEFAULT_DRAIN_BOUND + Duration::from_secs(5);
    stop_identity.cancel();
    stop_shipping.cancel();
    let (identity, shipping) =
        tokio::time::timeout(bound, async { tokio::join!(identity, shipping) })
            .await
            .expect("both stopped within their drain bounds");
    identity.expect("not panicked").expect("no error");
    shipping.expect("not panicked").expect("no error");
}

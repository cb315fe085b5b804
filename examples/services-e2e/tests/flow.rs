//! The design's flows between the two services, each service a child process on its own
//! fresh PostgreSQL database, against the real broker, driven over HTTP with the token
//! Identity issued at sign-in; every request that writes carries a W3C trace of the
//! test's own. The test proves:
//!
//! - **user events reach Shipping's cache**: a user registered in Identity is refused by
//!   Shipping (403 with a JSON `forbidden` error) until its `UserCreatedEvent` arrived,
//!   then creates a shipment (201, created by that user, `eventPublished`
//!   `shipping.shipment.created`);
//! - **the shipment reaches Identity's activity log exactly once**: one entry, with the
//!   shipment's id, its tracking number, kind `ShipmentCreatedEvent` and the `ce_id` of
//!   its record, still the same one entry after [`QUIET`];
//! - **the shipment's record matches the wire contract, header by header**
//!   (`docs/wire-format.md`, sections 1, 2 and 5; `test_support::assert_contract_record`),
//!   read raw with rdkafka from `shipping.shipment.created`: one record, keyed by the
//!   shipment id; headers exactly `ce_specversion` `1.0`, `ce_id` (a lowercase v7 UUID),
//!   `ce_source` `shipping-api`, `ce_type` `ShipmentCreatedEvent`, `ce_time`
//!   (`YYYY-MM-DDTHH:MM:SS.mmmZ`, during the request), `content-type`
//!   `application/json`, `ce_schemaversion` `1`, `ce_partitionkey` and `ce_subject` the
//!   shipment id, `ce_correlationid` the trace id the POST was sent with, `traceparent`
//!   continuing that trace, in that order and nothing else; the value the event as serde
//!   writes it with the contract's six fields, the user's email only as
//!   `createdByEmail`, no password anywhere;
//! - **the user's own events match the contract too**: after `PUT /api/users/{id}` (a new
//!   name) and `POST /api/users/{id}/deactivate`, one record each on
//!   `identity.user.updated` and `identity.user.deactivated`, with the same headers in the
//!   same order, `ce_source` `identity-api`, key, `ce_partitionkey` and `ce_subject` the
//!   user id, `ce_correlationid` and `traceparent` continuing each request's trace,
//!   `ce_time` during it; the values (`userId`, `email`, `name`, `updatedAt`, `version` 2;
//!   `userId`, `deactivatedAt`, `version` 3) as serde writes them, the email only as
//!   `email` in the first and nowhere in the second, and neither the password nor the word
//!   `password` anywhere in either record;
//! - **a deactivated user is refused**: the user, whose token is still valid, gets 403
//!   (JSON `forbidden`) from Shipping once the `UserDeactivatedEvent` arrived.
//!
//! Every wait is bounded; the children are killed on every path out of the test, and their
//! logs' tails printed when it fails.
//!
//! ```sh
//! export PEGASUS_TEST_BOOTSTRAP=$(scripts/kafka start)
//! export PEGASUS_TEST_POSTGRES_URL=$(scripts/postgres start)
//! cargo test -p services-e2e --test flow
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use event_contracts::{
    topics, ShipmentCreatedEvent, ShipmentStatus, UserDeactivatedEvent, UserUpdatedEvent,
};
use pegasus_events::Event;
use serde_json::{json, Value};
use services_e2e::{register, shipment_id, until_ready, Service, Stage, User, CATCH_UP, PASSWORD};
use test_support::{
    assert_contract_record, call, call_with, event_ids, until, Answer, Expected, RawRecord,
    TopicReader, SHIPMENT_CREATED_FIELDS, STEP,
};
use uuid::Uuid;

/// How long the activity log is watched for a second entry, and a topic for a second
/// record, after the first showed.
const QUIET: Duration = Duration::from_secs(3);

/// A trace of the test's own for one request: its trace id, and the `traceparent` header
/// that starts it.
struct Trace {
    id: String,
    traceparent: String,
}

impl Trace {
    fn new() -> Trace {
        let id = Uuid::new_v4().simple().to_string();
        let span = Uuid::new_v4().simple().to_string();
        let traceparent = format!("00-{id}-{}-01", &span[..16]);
        Trace { id, traceparent }
    }
}

/// An answer, with when its request was sent and when the answer came: the `ce_time` of
/// the event the request made lies between.
struct Sent {
    answer: Answer,
    sent: DateTime<Utc>,
    answered: DateTime<Utc>,
}

/// `method path` as `user` (its token), carrying `trace`, with a JSON `body`.
async fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    user: &User,
    trace: &Trace,
    body: Option<&Value>,
) -> Sent {
    let authorization = format!("Bearer {}", user.token);
    let headers = [
        ("Authorization", authorization.as_str()),
        ("traceparent", trace.traceparent.as_str()),
    ];
    let sent = Utc::now();
    let answer = call_with(address, method, path, &headers, body).await;
    Sent {
        answer,
        sent,
        answered: Utc::now(),
    }
}

/// The one record keyed `key` that `reader`'s topic received (none more within [`QUIET`]).
async fn only_record(reader: &TopicReader, key: &str) -> RawRecord {
    let mut records = reader.records_with_key(key, QUIET).await;
    assert_eq!(records.len(), 1, "one record keyed {key}: {records:?}");
    records.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_reach_shipping_its_shipment_reaches_the_activity_log_once_every_record_matches_the_wire_contract_and_a_deactivated_user_is_refused(
) {
    // Declared first: dropped last, it prints the children's logs when the test fails.
    let stage = Stage::new(
        env!("CARGO_BIN_EXE_identity"),
        env!("CARGO_BIN_EXE_shipping"),
    );
    let identity_instance = stage.instance(Service::Identity, "flow").await;
    let shipping_instance = stage.instance(Service::Shipping, "flow").await;
    let identity = stage.start(&identity_instance, 0).await;
    let shipping = stage.start(&shipping_instance, 0).await;
    // Ready: each created its topics, its relay and consumer run.
    until_ready(&identity, STEP).await;
    until_ready(&shipping, STEP).await;
    let shipments = TopicReader::at_end(stage.bootstrap(), topics::SHIPMENT_CREATED).await;
    let updates = TopicReader::at_end(stage.bootstrap(), topics::USER_UPDATED).await;
    let deactivations = TopicReader::at_end(stage.bootstrap(), topics::USER_DEACTIVATED).await;

    // Registered in Identity, signed in; refused by Shipping until its cache has the user,
    // then the shipment is created.
    let user = register(identity.address(), stage.run(), "flow").await;
    let tracking = format!("F{}", stage.run().simple());
    let trace = Trace::new();
    let created = until(
        STEP,
        "Shipping knows the user",
        || async {
            let created = send(
                shipping.address(),
                "POST",
                "/api/shipments",
                &user,
                &trace,
                Some(&json!({ "trackingNumber": tracking })),
            )
            .await;
            let Answer { status, body, .. } = &created.answer;
            match status {
                201 => {}
                403 => assert_eq!(body["error"], "forbidden", "{body}"),
                _ => panic!("{status}: {body}"),
            }
            created
        },
        |created| created.answer.status == 201,
    )
    .await;
    let body = &created.answer.body;
    assert_eq!(body["createdBy"]["userId"], user.id.as_str(), "{body}");
    assert_eq!(body["eventPublished"], topics::SHIPMENT_CREATED, "{body}");
    assert_eq!(
        body["shipment"]["trackingNumber"],
        tracking.as_str(),
        "{body}"
    );
    let shipment = shipment_id(body);

    // Identity logs it once, and still once a moment later.
    let activity = || async {
        let path = format!("/api/users/{}/activity", user.id);
        let answer = call(identity.address(), "GET", &path, Some(&user.token), None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["items"].as_array().expect("items").clone()
    };
    let items = until(
        CATCH_UP,
        "the shipment in the activity log",
        activity,
        |items| !items.is_empty(),
    )
    .await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["shipmentId"], shipment.to_string());
    assert_eq!(items[0]["trackingNumber"], tracking.as_str());
    assert_eq!(items[0]["kind"], ShipmentCreatedEvent::NAME);
    // Not a synchronisation: the time a second entry, if any, has to show.
    tokio::time::sleep(QUIET).await;
    assert_eq!(activity().await, items, "a second entry appeared");
    let logged_id = event_ids(&items)[0];

    // The shipment's record, header by header.
    let record = only_record(&shipments, &shipment.to_string()).await;
    let checked = assert_contract_record::<ShipmentCreatedEvent>(
        &record,
        &Expected {
            source: "shipping-api",
            key: &shipment.to_string(),
            trace_id: &trace.id,
            sent: created.sent,
            answered: created.answered,
            fields: &SHIPMENT_CREATED_FIELDS,
            only_as: &[(user.email.as_str(), "createdByEmail")],
            nowhere: &[PASSWORD, "password"],
        },
    );
    assert_eq!(checked.id, logged_id, "Identity logged the record's ce_id");
    let event = checked.event;
    assert_eq!(event.shipment_id, shipment);
    assert_eq!(event.tracking_number, tracking);
    assert_eq!(event.status, ShipmentStatus::Created);
    assert_eq!(event.created_by_user_id, user.id);
    assert_eq!(event.created_by_email, user.email);
    assert_eq!(event.destination, None);
    assert!(
        created.sent.trunc_subsecs(3) <= event.created_at && event.created_at <= created.answered,
        "createdAt {} during the request",
        event.created_at
    );

    // Renamed in Identity: its UserUpdatedEvent on the contract.
    let user_path = format!("/api/users/{}", user.id);
    let name = "Flow Renamed";
    let trace = Trace::new();
    let updated = send(
        identity.address(),
        "PUT",
        &user_path,
        &user,
        &trace,
        Some(&json!({ "name": name })),
    )
    .await;
    let body = &updated.answer.body;
    assert_eq!(updated.answer.status, 200, "{body}");
    assert_eq!(body["eventPublished"], topics::USER_UPDATED, "{body}");
    assert_eq!(body["user"]["name"], name, "{body}");
    assert_eq!(body["user"]["version"], 2, "{body}");
    let record = only_record(&updates, &user.id).await;
    let event = assert_contract_record::<UserUpdatedEvent>(
        &record,
        &Expected {
            source: "identity-api",
            key: &user.id,
            trace_id: &trace.id,
            sent: updated.sent,
            answered: updated.answered,
            fields: &["userId", "email", "name", "updatedAt", "version"],
            only_as: &[(user.email.as_str(), "email")],
            nowhere: &[PASSWORD, "password"],
        },
    )
    .event;
    assert_eq!(
        (event.user_id.as_str(), event.name.as_str(), event.version),
        (user.id.as_str(), name, 2)
    );
    assert_eq!(event.email, user.email);
    assert!(
        updated.sent.trunc_subsecs(3) <= event.updated_at && event.updated_at <= updated.answered,
        "updatedAt {} during the request",
        event.updated_at
    );

    // Deactivated in Identity: its UserDeactivatedEvent on the contract.
    let trace = Trace::new();
    let deactivated = send(
        identity.address(),
        "POST",
        &format!("{user_path}/deactivate"),
        &user,
        &trace,
        None,
    )
    .await;
    let body = &deactivated.answer.body;
    assert_eq!(deactivated.answer.status, 200, "{body}");
    assert_eq!(body["eventPublished"], topics::USER_DEACTIVATED, "{body}");
    assert_eq!(body["user"]["active"], false, "{body}");
    assert_eq!(body["user"]["version"], 3, "{body}");
    let record = only_record(&deactivations, &user.id).await;
    let event = assert_contract_record::<UserDeactivatedEvent>(
        &record,
        &Expected {
            source: "identity-api",
            key: &user.id,
            trace_id: &trace.id,
            sent: deactivated.sent,
            answered: deactivated.answered,
            fields: &["userId", "deactivatedAt", "version"],
            only_as: &[],
            nowhere: &[PASSWORD, "password", user.email.as_str()],
        },
    )
    .event;
    assert_eq!(
        (event.user_id.as_str(), event.version),
        (user.id.as_str(), 3)
    );
    assert!(
        deactivated.sent.trunc_subsecs(3) <= event.deactivated_at
            && event.deactivated_at <= deactivated.answered,
        "deactivatedAt {} during the request",
        event.deactivated_at
    );

    // Refused by Shipping once the event arrived, the token still being valid (until
    // then Shipping may still create the user's shipments).
    let refused = until(
        STEP,
        "Shipping refuses the deactivated user",
        || async {
            let tracking = format!("D{}", Uuid::now_v7().simple());
            let answer = call(
                shipping.address(),
                "POST",
                "/api/shipments",
                Some(&user.token),
                Some(&json!({ "trackingNumber": tracking })),
            )
            .await;
            assert!(
                matches!(answer.status, 201 | 403),
                "{}: {}",
                answer.status,
                answer.body
            );
            answer
        },
        |answer| answer.status == 403,
    )
    .await;
    assert_eq!(refused.body["error"], "forbidden", "{}", refused.body);
}

//! The shipping service's HTTP API and user cache, driven through the router
//! (`tower::ServiceExt::oneshot`): no network, no broker. The outbox table is read directly
//! to check what would be published.
//!
//! Every test runs twice: `<test>::on_sqlite` against a temporary SQLite database, and
//! `<test>::on_postgres` against a database of its own on the PostgreSQL server of
//! `PEGASUS_TEST_POSTGRES_URL` (`scripts/test` starts one; without it those fail, they do
//! not skip).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use chrono::Utc;
use event_contracts::general::{OnIdentityEvents, OnShippingEvents};
use event_contracts::{
    ShipmentCreatedEvent, ShipmentStatusChangedEvent, UserCreatedEvent, UserDeactivatedEvent,
    UserUpdatedEvent,
};
use pegasus_events::consumer::{EventContext, EventHandler};
use pegasus_events::idempotency::{Inbox, PostgresIdempotencyStore, SqliteIdempotencyStore};
use pegasus_events::wire::decode_payload;
use pegasus_events::{Event, EventMetadata, KafkaConfig, Secret, WireForm};
use serde_json::{json, Value};
use service_kit::auth::Claims;
use service_kit::{JwtKeys, JwtSettings};
use shipping_service::store::{CachedUser, UserCache};
use shipping_service::{AppState, ShippingDb};
use test_support::Database;
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "test-secret-test-secret-test-secret";

/// An outbox row as the tests read it: (topic, key, payload, headers).
type OutboxRow = (String, String, Vec<u8>, String);
/// An outbox row as stored: the key may be absent.
type StoredRow = (String, Option<Vec<u8>>, Vec<u8>, String);

struct Harness {
    app: Router,
    db: ShippingDb,
    keys: JwtKeys,
    _dir: tempfile::TempDir,
}

async fn harness(database: Database) -> Harness {
    harness_with(database, false).await
}

/// A harness whose database copies every shipment event to `shipping-events` when
/// `general_topic` is on.
async fn harness_with(database: Database, general_topic: bool) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = database.fresh("shipping", dir.path()).await;
    // Opening the outbox needs no broker; nothing here publishes.
    let kafka = KafkaConfig::new("127.0.0.1:9").with_client_id("shipping-api");
    let db = ShippingDb::open(&url, &kafka)
        .await
        .expect("database opened")
        .with_general_topic(general_topic);
    let keys = JwtKeys::new(&JwtSettings {
        secret: Secret::new(SECRET),
        issuer: "identity-api".into(),
        audience: "pegasus-services".into(),
        expiry: Duration::from_secs(600),
    });
    let app = shipping_service::router(AppState {
        db: db.clone(),
        jwt: keys.clone(),
    });
    Harness {
        app,
        db,
        keys,
        _dir: dir,
    }
}

impl Harness {
    fn token(&self, user_id: &str) -> String {
        self.keys
            .issue(user_id, &format!("{user_id}@example.com"))
            .expect("token")
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).expect("request")).await
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, body)
    }

    async fn create(&self, user_id: &str, tracking: &str) -> (StatusCode, Value) {
        let token = self.token(user_id);
        self.call(
            "POST",
            "/api/shipments",
            Some(&token),
            Some(json!({ "trackingNumber": tracking })),
        )
        .await
    }

    /// Delivers `event` to the user cache through the inbox, as the consumer would.
    async fn deliver<E: Event>(&self, event: E, event_id: Uuid)
    where
        Inbox<SqliteIdempotencyStore, UserCache>: EventHandler<E>,
        Inbox<PostgresIdempotencyStore, UserCache>: EventHandler<E>,
    {
        let context = EventContext {
            metadata: EventMetadata {
                id: event_id,
                source: "identity-api".into(),
                event_type: E::NAME.into(),
                time: Utc::now(),
                schema_version: E::VERSION,
                partition_key: None,
                subject: None,
                correlation_id: None,
                causation_id: None,
                traceparent: None,
                tracestate: None,
                form: WireForm::Binary,
            },
            topic: E::TOPIC,
            partition: 0,
            offset: 0,
            key: None,
            attempt: 1,
            group_id: "shipping-api-usercache-consumer",
        };
        let handled = match (self.db.sqlite(), self.db.postgres()) {
            (Some((_, marks)), _) => {
                Inbox::new(marks.clone(), UserCache)
                    .handle(event, &context)
                    .await
            }
            (_, Some((_, marks))) => {
                Inbox::new(marks.clone(), UserCache)
                    .handle(event, &context)
                    .await
            }
            (None, None) => unreachable!("a database of one kind or the other"),
        };
        handled.expect("handled");
    }

    async fn register(&self, user_id: &str) {
        self.deliver(user_created(user_id, 1), Uuid::now_v7()).await;
    }

    async fn user(&self, user_id: &str) -> Option<CachedUser> {
        self.db.user(user_id).await.expect("read")
    }

    /// The outbox rows: (topic, key, payload).
    async fn outbox(&self) -> Vec<(String, String, Vec<u8>)> {
        const ROWS: &str = "SELECT topic, message_key, payload FROM pegasus_outbox ORDER BY id";
        let rows: Vec<(String, Option<Vec<u8>>, Vec<u8>)> =
            match (self.db.sqlite(), self.db.postgres()) {
                (Some((outbox, _)), _) => sqlx::query_as(ROWS).fetch_all(outbox.pool()).await,
                (_, Some((outbox, _))) => sqlx::query_as(ROWS).fetch_all(outbox.pool()).await,
                (None, None) => unreachable!("a database of one kind or the other"),
            }
            .expect("outbox read");
        rows.into_iter()
            .map(|(topic, key, payload)| {
                let key = String::from_utf8(key.unwrap_or_default()).expect("UTF-8 key");
                (topic, key, payload)
            })
            .collect()
    }

    /// The outbox rows with their headers: (topic, key, payload, headers as stored, a
    /// JSON list of name-value pairs).
    async fn outbox_with_headers(&self) -> Vec<OutboxRow> {
        const ROWS: &str =
            "SELECT topic, message_key, payload, headers FROM pegasus_outbox ORDER BY id";
        let rows: Vec<StoredRow> = match (self.db.sqlite(), self.db.postgres()) {
            (Some((outbox, _)), _) => sqlx::query_as(ROWS).fetch_all(outbox.pool()).await,
            (_, Some((outbox, _))) => sqlx::query_as(ROWS).fetch_all(outbox.pool()).await,
            (None, None) => unreachable!("a database of one kind or the other"),
        }
        .expect("outbox read");
        rows.into_iter()
            .map(|(topic, key, payload, headers)| {
                let key = String::from_utf8(key.unwrap_or_default()).expect("UTF-8 key");
                (topic, key, payload, headers)
            })
            .collect()
    }

    async fn shipment_count(&self) -> i64 {
        const COUNT: &str = "SELECT COUNT(*) FROM shipments";
        match (self.db.sqlite(), self.db.postgres()) {
            (Some((outbox, _)), _) => sqlx::query_scalar(COUNT).fetch_one(outbox.pool()).await,
            (_, Some((outbox, _))) => sqlx::query_scalar(COUNT).fetch_one(outbox.pool()).await,
            (None, None) => unreachable!("a database of one kind or the other"),
        }
        .expect("count")
    }
}

fn user_created(user_id: &str, version: i64) -> UserCreatedEvent {
    UserCreatedEvent {
        user_id: user_id.into(),
        email: format!("{user_id}@example.com"),
        name: format!("{user_id} v{version}"),
        created_at: Utc::now(),
        version,
    }
}

fn user_updated(user_id: &str, version: i64) -> UserUpdatedEvent {
    UserUpdatedEvent {
        user_id: user_id.into(),
        email: format!("{user_id}+v{version}@example.com"),
        name: format!("{user_id} v{version}"),
        updated_at: Utc::now(),
        version,
    }
}

fn user_deactivated(user_id: &str, version: i64) -> UserDeactivatedEvent {
    UserDeactivatedEvent {
        user_id: user_id.into(),
        deactivated_at: Utc::now(),
        version,
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn creating_a_shipment_answers_201_and_enqueues_its_event_with_it(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    let (status, body) = h.create("ada", "TRACK123").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["eventPublished"], "shipping.shipment.created");
    assert_eq!(body["createdBy"]["userId"], "ada");
    assert_eq!(body["createdBy"]["email"], "ada@example.com");
    let shipment = &body["shipment"];
    assert_eq!(shipment["trackingNumber"], "TRACK123");
    assert_eq!(shipment["status"], "Created");
    assert_eq!(shipment["version"], 1);
    let id = shipment["id"].as_str().expect("an id").to_owned();

    // The event is in the outbox, committed with the shipment.
    let rows = h.outbox().await;
    assert_eq!(rows.len(), 1);
    let (topic, key, payload) = &rows[0];
    assert_eq!(topic, "shipping.shipment.created");
    assert_eq!(key, &id);
    let event: ShipmentCreatedEvent = decode_payload(payload).expect("the contract's shape");
    assert_eq!(event.shipment_id.to_string(), id);
    assert_eq!(event.tracking_number, "TRACK123");
    assert_eq!(event.created_by_user_id, "ada");
    assert_eq!(event.created_by_email, "ada@example.com");

    // And the shipment can be read back.
    let token = h.token("ada");
    let (status, read) = h
        .call("GET", &format!("/api/shipments/{id}"), Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(&read, shipment);
}

async fn a_refused_write_leaves_neither_shipment_nor_event(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    assert_eq!(h.create("ada", "TRACK123").await.0, StatusCode::CREATED);
    // Same tracking number: the insert fails, the transaction rolls back, no event.
    let (status, body) = h.create("ada", "TRACK123").await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    // Unknown user: refused before anything is written.
    let (status, body) = h.create("nobody", "TRACK999").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(h.shipment_count().await, 1);
    assert_eq!(h.outbox().await.len(), 1);
}

async fn a_bad_tracking_number_is_a_400_naming_the_field(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    let token = h.token("ada");
    for body in [
        json!({ "trackingNumber": "" }),
        json!({ "trackingNumber": "TRACK 123" }),
        json!({ "trackingNumber": "A".repeat(65) }),
        json!({ "trackingNumber": 123 }),
        json!({ "trackingNumber": null }),
        json!({}),
    ] {
        let (status, answer) = h
            .call("POST", "/api/shipments", Some(&token), Some(body.clone()))
            .await;
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        );
        assert_eq!(answer["field"], "trackingNumber", "{body}");
    }
    let (status, answer) = h
        .call(
            "POST",
            "/api/shipments",
            Some(&token),
            Some(json!({ "trackingNumber": "T1", "destination": " " })),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    );
    assert_eq!(answer["field"], "destination");

    // Not JSON, and too large.
    let request = |body: Body| {
        Request::post("/api/shipments")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("request")
    };
    let (status, answer) = h.send(request(Body::from("{\"trackingNumber\":"))).await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "bad_request");
    let huge = json!({ "trackingNumber": "T".repeat(100_000) }).to_string();
    let (status, answer) = h.send(request(Body::from(huge))).await;
    assert_error(
        status,
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(h.shipment_count().await, 0);
    assert!(h.outbox().await.is_empty());
}

async fn a_missing_forged_or_expired_token_is_a_401_json_error(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    let body = Some(json!({ "trackingNumber": "TRACK123" }));

    let (status, answer) = h.call("POST", "/api/shipments", None, body.clone()).await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");

    let forger = JwtKeys::new(&JwtSettings {
        secret: Secret::new("another-secret-another-secret-another"),
        issuer: "identity-api".into(),
        audience: "pegasus-services".into(),
        expiry: Duration::from_secs(600),
    });
    let forged = forger.issue("ada", "ada@example.com").expect("token");
    let (status, answer) = h
        .call("POST", "/api/shipments", Some(&forged), body.clone())
        .await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let expired = h
        .keys
        .issue_claims(&Claims {
            sub: "ada".into(),
            email: "ada@example.com".into(),
            iss: "identity-api".into(),
            aud: "pegasus-services".into(),
            iat: now - 7200,
            exp: now - 3600,
        })
        .expect("token");
    let (status, answer) = h
        .call("POST", "/api/shipments", Some(&expired), body.clone())
        .await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(answer["message"]
        .as_str()
        .is_some_and(|m| m.contains("expired")));

    let (status, answer) = h.call("GET", "/api/shipments", Some("x.y.z"), None).await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(h.shipment_count().await, 0);
}

async fn unknown_and_deactivated_users_are_refused_with_403(database: Database) {
    let h = harness(database).await;
    let (status, body) = h.create("stranger", "TRACK1").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    h.register("ada").await;
    assert_eq!(h.create("ada", "TRACK2").await.0, StatusCode::CREATED);
    h.deliver(user_deactivated("ada", 2), Uuid::now_v7()).await;
    let (status, body) = h.create("ada", "TRACK3").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("deactivated")));
    assert_eq!(h.outbox().await.len(), 1);
}

async fn status_changes_follow_the_domain_and_illegal_ones_are_409(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    let token = h.token("ada");
    let (_, created) = h.create("ada", "TRACK123").await;
    let id = created["shipment"]["id"].as_str().expect("id").to_owned();
    let path = format!("/api/shipments/{id}/status");
    let set = |status: &str| json!({ "status": status });

    // Created -> Delivered skips InTransit.
    let (status, body) = h
        .call("PUT", &path, Some(&token), Some(set("Delivered")))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = h.call("PUT", &path, Some(&token), Some(set("Lost"))).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    assert_eq!(body["field"], "status");

    let (status, body) = h
        .call("PUT", &path, Some(&token), Some(set("InTransit")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["eventPublished"], "shipping.shipment.status-changed");
    assert_eq!(body["previousStatus"], "Created");
    assert_eq!(body["shipment"]["status"], "InTransit");
    assert_eq!(body["shipment"]["version"], 2);
    let (status, body) = h
        .call("PUT", &path, Some(&token), Some(set("Delivered")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Delivered is final: no status change, no detail change.
    for next in ["Cancelled", "InTransit", "Created", "Delivered"] {
        let (status, body) = h.call("PUT", &path, Some(&token), Some(set(next))).await;
        assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    }
    let (status, body) = h
        .call(
            "PUT",
            &format!("/api/shipments/{id}"),
            Some(&token),
            Some(json!({ "destination": "Oslo" })),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    // One created and two status events, in order, all keyed by the shipment.
    let rows = h.outbox().await;
    let topics: Vec<&str> = rows.iter().map(|(topic, _, _)| topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "shipping.shipment.created",
            "shipping.shipment.status-changed",
            "shipping.shipment.status-changed"
        ]
    );
    assert!(rows.iter().all(|(_, key, _)| key == &id));
    let last: ShipmentStatusChangedEvent = decode_payload(&rows[2].2).expect("decodes");
    assert_eq!(last.old_status.as_str(), "InTransit");
    assert_eq!(last.new_status.as_str(), "Delivered");
    assert_eq!(last.version, 3);
}

async fn concurrent_status_changes_are_serialised(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    let token = h.token("ada");
    let (_, created) = h.create("ada", "TRACK1").await;
    let id = created["shipment"]["id"].as_str().expect("id").to_owned();
    let path = format!("/api/shipments/{id}/status");
    // Eight clients move the same shipment to InTransit at once: one wins, the others see
    // it in transit already.
    let calls = (0..8).map(|_| {
        h.call(
            "PUT",
            &path,
            Some(&token),
            Some(json!({ "status": "InTransit" })),
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    let won = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    let refused = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CONFLICT)
        .count();
    assert_eq!((won, refused), (1, 7), "{answers:?}");
    assert_eq!(h.outbox().await.len(), 2);
}

async fn cancelling_is_allowed_before_delivery_only(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    let token = h.token("ada");
    let (_, created) = h.create("ada", "TRACK1").await;
    let id = created["shipment"]["id"].as_str().expect("id").to_owned();
    let path = format!("/api/shipments/{id}/status");
    let (status, body) = h
        .call(
            "PUT",
            &path,
            Some(&token),
            Some(json!({ "status": "Cancelled" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["previousStatus"], "Created");
    let (status, body) = h
        .call(
            "PUT",
            &path,
            Some(&token),
            Some(json!({ "status": "InTransit" })),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
}

async fn updating_details_publishes_an_updated_event(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    let token = h.token("ada");
    let (_, created) = h.create("ada", "TRACK1").await;
    let id = created["shipment"]["id"].as_str().expect("id").to_owned();
    let path = format!("/api/shipments/{id}");
    let (status, body) = h
        .call(
            "PUT",
            &path,
            Some(&token),
            Some(json!({ "trackingNumber": "TRACK2", "destination": "Oslo" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["eventPublished"], "shipping.shipment.updated");
    assert_eq!(body["shipment"]["trackingNumber"], "TRACK2");
    assert_eq!(body["shipment"]["destination"], "Oslo");
    assert_eq!(body["shipment"]["version"], 2);
    let (status, body) = h.call("PUT", &path, Some(&token), Some(json!({}))).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let rows = h.outbox().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].0, "shipping.shipment.updated");
}

async fn an_unknown_path_is_a_json_404_and_a_wrong_method_a_json_405_naming_the_allowed(
    database: Database,
) {
    let h = harness(database).await;
    h.register("ada").await;
    let token = h.token("ada");
    let (status, body) = h.call("GET", "/api/parcels", Some(&token), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let response = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .method("DELETE")
                .uri("/api/shipments")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let allow = response
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&bytes).expect("a JSON body");
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["GET", "HEAD", "POST"], "Allow: {allow}");
}

async fn reading_unknown_ids_and_paging(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    let token = h.token("ada");
    let (status, body) = h
        .call(
            "GET",
            &format!("/api/shipments/{}", Uuid::now_v7()),
            Some(&token),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h
        .call("GET", "/api/shipments/not-a-uuid", Some(&token), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    assert_eq!(body["field"], "id");

    for n in 0..5 {
        assert_eq!(
            h.create("ada", &format!("T{n}")).await.0,
            StatusCode::CREATED
        );
    }
    let (status, page) = h
        .call(
            "GET",
            "/api/shipments?page=2&pageSize=2",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 5);
    assert_eq!(page["page"], 2);
    assert_eq!(page["pageSize"], 2);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let (_, all) = h.call("GET", "/api/shipments", Some(&token), None).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(all["items"][0]["trackingNumber"], "T4", "newest first");

    for (query, field) in [
        ("pageSize=0", "pageSize"),
        ("pageSize=101", "pageSize"),
        ("page=abc", "page"),
        ("page=0", "page"),
    ] {
        let (status, body) = h
            .call(
                "GET",
                &format!("/api/shipments?{query}"),
                Some(&token),
                None,
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
        assert_eq!(body["field"], field, "{query}");
    }
}

async fn the_user_cache_applies_each_event_once_and_never_goes_back(database: Database) {
    let h = harness(database).await;
    let created_id = Uuid::now_v7();
    h.deliver(user_created("ada", 1), created_id).await;
    h.deliver(user_updated("ada", 3), Uuid::now_v7()).await;
    // Older than what is cached: ignored.
    h.deliver(user_updated("ada", 2), Uuid::now_v7()).await;
    let ada = h.user("ada").await.expect("cached");
    assert_eq!(ada.version, 3);
    assert_eq!(ada.email.as_deref(), Some("ada+v3@example.com"));
    assert!(ada.active);

    // A redelivery of an event already applied (same ce_id) changes nothing, even if its
    // content would.
    h.deliver(user_updated("ada", 9), created_id).await;
    assert_eq!(h.user("ada").await.expect("cached").version, 3);

    // Deactivated stays deactivated, whatever comes later.
    h.deliver(user_deactivated("ada", 4), Uuid::now_v7()).await;
    h.deliver(user_updated("ada", 5), Uuid::now_v7()).await;
    let ada = h.user("ada").await.expect("cached");
    assert!(!ada.active);
    assert_eq!(ada.version, 5);
    let (status, _) = h.create("ada", "TRACK1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn a_deactivation_that_arrives_first_is_not_undone_by_the_creation(database: Database) {
    // Identity's topics are separate, so their events can arrive in any order.
    let h = harness(database).await;
    h.deliver(user_deactivated("bob", 2), Uuid::now_v7()).await;
    h.deliver(user_created("bob", 1), Uuid::now_v7()).await;
    let bob = h.user("bob").await.expect("cached");
    assert!(!bob.active);
    assert_eq!(bob.version, 2);
    let (status, _) = h.create("bob", "TRACK1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn an_update_that_arrives_before_the_creation_wins(database: Database) {
    let h = harness(database).await;
    h.deliver(user_updated("cy", 2), Uuid::now_v7()).await;
    h.deliver(user_created("cy", 1), Uuid::now_v7()).await;
    let cy = h.user("cy").await.expect("cached");
    assert_eq!(cy.version, 2);
    assert_eq!(cy.email.as_deref(), Some("cy+v2@example.com"));
    assert!(cy.active);
    assert_eq!(h.create("cy", "TRACK1").await.0, StatusCode::CREATED);
}

async fn with_the_general_topic_each_event_is_enqueued_twice_in_one_transaction(
    database: Database,
) {
    let h = harness_with(database, true).await;
    h.register("ada").await;
    let token = h.token("ada");
    let (status, created) = h.create("ada", "TRACK1").await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["shipment"]["id"].as_str().expect("id").to_owned();
    let (status, body) = h
        .call(
            "PUT",
            &format!("/api/shipments/{id}"),
            Some(&token),
            Some(json!({ "destination": "Oslo" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .call(
            "PUT",
            &format!("/api/shipments/{id}/status"),
            Some(&token),
            Some(json!({ "status": "InTransit" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let rows = h.outbox_with_headers().await;
    let topics: Vec<&str> = rows.iter().map(|(topic, ..)| topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "shipping.shipment.created",
            "shipping-events",
            "shipping.shipment.updated",
            "shipping-events",
            "shipping.shipment.status-changed",
            "shipping-events"
        ]
    );
    // Same key, same JSON, same ce_type; the copy has its own id and names the original
    // as its cause.
    assert!(rows.iter().all(|(_, key, ..)| key == &id));
    let header = |headers: &str, name: &str| -> Option<String> {
        let pairs: Vec<(String, String)> = serde_json::from_str(headers).expect("headers");
        pairs
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    };
    let types = [
        "ShipmentCreatedEvent",
        "ShipmentUpdatedEvent",
        "ShipmentStatusChangedEvent",
    ];
    for (pair, expected_type) in rows.chunks(2).zip(types) {
        let (original, copy) = (&pair[0], &pair[1]);
        assert_eq!(original.2, copy.2, "{expected_type}: the same payload");
        assert_eq!(
            header(&original.3, "ce_type").as_deref(),
            Some(expected_type)
        );
        assert_eq!(header(&copy.3, "ce_type").as_deref(), Some(expected_type));
        assert_eq!(
            header(&copy.3, "ce_schemaversion"),
            header(&original.3, "ce_schemaversion")
        );
        let original_id = header(&original.3, "ce_id").expect("an id");
        assert_ne!(header(&copy.3, "ce_id"), Some(original_id.clone()));
        assert_eq!(header(&copy.3, "ce_causationid"), Some(original_id));
    }
    let copy: OnShippingEvents<ShipmentStatusChangedEvent> =
        decode_payload(&rows[5].2).expect("the copy decodes");
    assert_eq!(copy.0.new_status.as_str(), "InTransit");

    // A refused change writes neither copy.
    let (status, body) = h.create("ada", "TRACK1").await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(h.outbox_with_headers().await.len(), 6);
}

async fn without_the_general_topic_nothing_goes_to_shipping_events(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    assert_eq!(h.create("ada", "TRACK1").await.0, StatusCode::CREATED);
    let rows = h.outbox().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "shipping.shipment.created");
}

async fn user_events_copied_to_identity_events_keep_the_cache_like_the_originals(
    database: Database,
) {
    let h = harness(database).await;
    h.deliver(OnIdentityEvents(user_created("ada", 1)), Uuid::now_v7())
        .await;
    assert_eq!(h.create("ada", "TRACK1").await.0, StatusCode::CREATED);
    h.deliver(OnIdentityEvents(user_updated("ada", 2)), Uuid::now_v7())
        .await;
    let ada = h.user("ada").await.expect("cached");
    assert_eq!(ada.version, 2);
    assert_eq!(ada.email.as_deref(), Some("ada+v2@example.com"));
    assert!(ada.active);
    // An older copy changes nothing; the deactivation is final.
    h.deliver(OnIdentityEvents(user_updated("ada", 1)), Uuid::now_v7())
        .await;
    assert_eq!(h.user("ada").await.expect("cached").version, 2);
    h.deliver(OnIdentityEvents(user_deactivated("ada", 3)), Uuid::now_v7())
        .await;
    let ada = h.user("ada").await.expect("cached");
    assert_eq!((ada.active, ada.version), (false, 3));
    let (status, body) = h.create("ada", "TRACK2").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
}

async fn a_database_out_of_reach_is_a_503_json_error_not_a_500(database: Database) {
    let h = harness(database).await;
    h.register("ada").await;
    match (h.db.sqlite(), h.db.postgres()) {
        (Some((outbox, _)), _) => outbox.pool().close().await,
        (_, Some((outbox, _))) => outbox.pool().close().await,
        (None, None) => unreachable!("a database of one kind or the other"),
    }
    let (status, body) = h.create("ada", "TRACK503").await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, body) = h
        .call(
            "GET",
            &format!("/api/shipments/{}", Uuid::now_v7()),
            Some(&h.token("ada")),
            None,
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
}

/// Each test, once on SQLite and once on PostgreSQL, as `<test>::on_sqlite` and
/// `<test>::on_postgres`. Multi-threaded, for the test that races requests.
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$test(super::Database::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                super::$test(super::Database::Postgres).await;
            }
        }
    )*};
}

on_both_databases!(
    creating_a_shipment_answers_201_and_enqueues_its_event_with_it,
    a_refused_write_leaves_neither_shipment_nor_event,
    a_bad_tracking_number_is_a_400_naming_the_field,
    a_missing_forged_or_expired_token_is_a_401_json_error,
    unknown_and_deactivated_users_are_refused_with_403,
    status_changes_follow_the_domain_and_illegal_ones_are_409,
    concurrent_status_changes_are_serialised,
    cancelling_is_allowed_before_delivery_only,
    updating_details_publishes_an_updated_event,
    reading_unknown_ids_and_paging,
    an_unknown_path_is_a_json_404_and_a_wrong_method_a_json_405_naming_the_allowed,
    the_user_cache_applies_each_event_once_and_never_goes_back,
    a_deactivation_that_arrives_first_is_not_undone_by_the_creation,
    an_update_that_arrives_before_the_creation_wins,
    with_the_general_topic_each_event_is_enqueued_twice_in_one_transaction,
    without_the_general_topic_nothing_goes_to_shipping_events,
    user_events_copied_to_identity_events_keep_the_cache_like_the_originals,
    a_database_out_of_reach_is_a_503_json_error_not_a_500,
);

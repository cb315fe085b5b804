//! The identity service's HTTP API and activity log, driven through the router
//! (`tower::ServiceExt::oneshot`): no network, no broker. The outbox table is read directly
//! to check what would be published.
//!
//! Every test runs twice: `<test>::on_sqlite` against a temporary SQLite database, and
//! `<test>::on_postgres` against a database of its own on the PostgreSQL server of
//! `PEGASUS_TEST_POSTGRES_URL` (`scripts/test` starts one; without it those fail, they do
//! not skip).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use chrono::Utc;
use event_contracts::{
    ShipmentCreatedEvent, ShipmentStatus, UserCreatedEvent, UserDeactivatedEvent, UserUpdatedEvent,
};
use identity_service::notify::{Notifier, NotifyError, ShipmentConfirmation};
use identity_service::store::{ActivityLog, Logged};
use identity_service::{AppState, IdentityDb};
use pegasus_events::consumer::{EventContext, EventHandler};
use pegasus_events::idempotency::Inbox;
use pegasus_events::wire::decode_payload;
use pegasus_events::{Event, EventMetadata, KafkaConfig, Secret, WireForm};
use serde_json::{json, Value};
use service_kit::auth::Claims;
use service_kit::{JwtKeys, JwtSettings};
use test_support::Database;
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "test-secret-test-secret-test-secret";
const PASSWORD: &str = "correct horse battery staple";

/// A notifier that remembers what it was asked to send.
#[derive(Debug, Default)]
struct Recorded(Mutex<Vec<ShipmentConfirmation>>);

impl Notifier for Recorded {
    async fn shipment_created(
        &self,
        confirmation: &ShipmentConfirmation,
    ) -> Result<(), NotifyError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(confirmation.clone());
        Ok(())
    }
}

impl Recorded {
    fn sent(&self) -> Vec<ShipmentConfirmation> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An outbox row: (topic, key, payload, headers).
type OutboxRow = (String, String, Vec<u8>, String);

/// An outbox row as stored: the key may be absent.
type StoredRow = (String, Option<Vec<u8>>, Vec<u8>, String);

struct Harness {
    app: Router,
    db: IdentityDb,
    keys: JwtKeys,
    notifier: Arc<Recorded>,
    _dir: tempfile::TempDir,
}

async fn harness(database: Database) -> Harness {
    harness_with(database, false).await
}

async fn harness_with(database: Database, general_topic: bool) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = database.fresh("identity", dir.path()).await;
    // Opening the outbox needs no broker; nothing here publishes.
    let kafka = KafkaConfig::new("127.0.0.1:9").with_client_id("identity-api");
    let db = IdentityDb::open(&url, &kafka, general_topic)
        .await
        .expect("database opened");
    let keys = JwtKeys::new(&JwtSettings {
        secret: Secret::new(SECRET),
        issuer: "identity-api".into(),
        audience: "pegasus-services".into(),
        expiry: Duration::from_secs(600),
    });
    let app = identity_service::router(AppState {
        db: db.clone(),
        jwt: keys.clone(),
    });
    Harness {
        app,
        db,
        keys,
        notifier: Arc::default(),
        _dir: dir,
    }
}

impl Harness {
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
        let response = self
            .app
            .clone()
            .oneshot(request.body(body).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, body)
    }

    /// Registers `name` as `{name}@example.com` with [`PASSWORD`]; returns the answer.
    async fn register(&self, name: &str) -> (StatusCode, Value) {
        self.call(
            "POST",
            "/api/users",
            None,
            Some(json!({
                "email": format!("{name}@example.com"),
                "name": name,
                "password": PASSWORD,
            })),
        )
        .await
    }

    /// Registers `name` and signs in; returns (user id, token).
    async fn signed_in(&self, name: &str) -> (String, String) {
        let (status, body) = self.register(name).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["user"]["id"].as_str().expect("an id").to_owned();
        let (status, body) = self.sign_in(&format!("{name}@example.com"), PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["userId"], id.as_str());
        let token = body["accessToken"].as_str().expect("a token").to_owned();
        (id, token)
    }

    async fn sign_in(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.call(
            "POST",
            "/api/auth/token",
            None,
            Some(json!({ "email": email, "password": password })),
        )
        .await
    }

    async fn outbox(&self) -> Vec<OutboxRow> {
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

    async fn user_count(&self) -> i64 {
        const COUNT: &str = "SELECT COUNT(*) FROM users";
        match (self.db.sqlite(), self.db.postgres()) {
            (Some((outbox, _)), _) => sqlx::query_scalar(COUNT).fetch_one(outbox.pool()).await,
            (_, Some((outbox, _))) => sqlx::query_scalar(COUNT).fetch_one(outbox.pool()).await,
            (None, None) => unreachable!("a database of one kind or the other"),
        }
        .expect("count")
    }

    async fn stored_hash(&self, user_id: &str) -> String {
        const HASH: &str = "SELECT password_hash FROM users WHERE id = $1";
        match (self.db.sqlite(), self.db.postgres()) {
            (Some((outbox, _)), _) => {
                sqlx::query_scalar(HASH)
                    .bind(user_id)
                    .fetch_one(outbox.pool())
                    .await
            }
            (_, Some((outbox, _))) => {
                sqlx::query_scalar(HASH)
                    .bind(user_id)
                    .fetch_one(outbox.pool())
                    .await
            }
            (None, None) => unreachable!("a database of one kind or the other"),
        }
        .expect("hash")
    }

    /// Delivers `event` to the activity log through the inbox, as the consumer would.
    async fn deliver(&self, event: ShipmentCreatedEvent, event_id: Uuid) {
        let context = EventContext {
            metadata: EventMetadata {
                id: event_id,
                source: "shipping-api".into(),
                event_type: ShipmentCreatedEvent::NAME.into(),
                time: Utc::now(),
                schema_version: ShipmentCreatedEvent::VERSION,
                partition_key: None,
                subject: None,
                correlation_id: None,
                causation_id: None,
                traceparent: None,
                tracestate: None,
                form: WireForm::Binary,
            },
            topic: ShipmentCreatedEvent::TOPIC,
            partition: 0,
            offset: 0,
            key: None,
            attempt: 1,
            group_id: "identity-api-shipmentcreated-consumer",
        };
        let activity = ActivityLog::new(Arc::clone(&self.notifier));
        let handled = match (self.db.sqlite(), self.db.postgres()) {
            (Some((_, marks)), _) => {
                Logged(Inbox::new(marks.clone(), activity))
                    .handle(event, &context)
                    .await
            }
            (_, Some((_, marks))) => {
                Logged(Inbox::new(marks.clone(), activity))
                    .handle(event, &context)
                    .await
            }
            (None, None) => unreachable!("a database of one kind or the other"),
        };
        handled.expect("handled");
    }
}

fn shipment(user_id: &str, tracking: &str) -> ShipmentCreatedEvent {
    ShipmentCreatedEvent {
        shipment_id: Uuid::now_v7(),
        tracking_number: tracking.into(),
        status: ShipmentStatus::Created,
        created_at: Utc::now(),
        created_by_user_id: user_id.into(),
        created_by_email: "whoever@example.com".into(),
        destination: None,
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

/// Neither the password nor anything of its hash is in `text`.
fn assert_no_secret(text: &str, hash: &str) {
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    assert!(!text.contains("argon2"), "a hash leaked: {text}");
    let digest = hash.rsplit('$').next().expect("a PHC string");
    assert!(!text.contains(digest), "the hash leaked: {text}");
    assert!(!text.to_ascii_lowercase().contains("password"), "{text}");
}

async fn registering_answers_201_and_enqueues_user_created_with_it_and_no_secret(
    database: Database,
) {
    let h = harness(database).await;
    let (status, body) = h
        .call(
            "POST",
            "/api/users",
            None,
            Some(json!({ "email": " Ada@Example.com ", "name": " Ada ", "password": PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["eventPublished"], "identity.user.created");
    let user = &body["user"];
    let id = user["id"].as_str().expect("an id").to_owned();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["active"], true);
    assert_eq!(user["version"], 1);
    let mut keys: Vec<&str> = user
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "active",
            "createdAt",
            "email",
            "id",
            "name",
            "updatedAt",
            "version"
        ]
    );

    // Only the hash is stored: Argon2id, salted, not the password.
    let hash = h.stored_hash(&id).await;
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert_no_secret(&body.to_string(), &hash);

    // The event is in the outbox, committed with the user.
    let rows = h.outbox().await;
    assert_eq!(rows.len(), 1);
    let (topic, key, payload, headers) = &rows[0];
    assert_eq!(topic, "identity.user.created");
    assert_eq!(key, &id);
    let event: UserCreatedEvent = decode_payload(payload).expect("the contract's shape");
    assert_eq!(event.user_id, id);
    assert_eq!(event.email, "ada@example.com");
    assert_eq!(event.name, "Ada");
    assert_eq!(event.version, 1);
    let json: Value = serde_json::from_slice(payload).expect("JSON");
    let text = json.to_string();
    assert_no_secret(&text, &hash);
    assert_no_secret(headers, &hash);
    // The email only where the contract has it: the payload's `email`, no header.
    assert_eq!(text.matches("ada@example.com").count(), 1, "{text}");
    assert_eq!(json["email"], "ada@example.com");
    assert!(!headers.contains("ada@example.com"), "{headers}");

    // And the user reads itself back.
    let (status, token) = h.sign_in("ada@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let token = token["accessToken"].as_str().expect("token").to_owned();
    let (status, read) = h
        .call("GET", &format!("/api/users/{id}"), Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(&read, user);
}

async fn a_duplicate_email_is_a_409_and_leaves_neither_user_nor_event(database: Database) {
    let h = harness(database).await;
    assert_eq!(h.register("ada").await.0, StatusCode::CREATED);
    // Emails are compared without regard to case.
    let (status, body) = h
        .call(
            "POST",
            "/api/users",
            None,
            Some(json!({ "email": "ADA@example.com", "name": "Other", "password": PASSWORD })),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(!body.to_string().contains("ADA@example.com"));
    assert_eq!(h.user_count().await, 1);
    assert_eq!(h.outbox().await.len(), 1);
}

async fn a_bad_registration_is_a_400_naming_the_field(database: Database) {
    let h = harness(database).await;
    let long_password = "p".repeat(1025);
    let cases = [
        (
            json!({ "email": "ada", "name": "Ada", "password": PASSWORD }),
            "email",
        ),
        (
            json!({ "email": "ada@", "name": "Ada", "password": PASSWORD }),
            "email",
        ),
        (
            json!({ "email": "", "name": "Ada", "password": PASSWORD }),
            "email",
        ),
        (json!({ "name": "Ada", "password": PASSWORD }), "email"),
        (
            json!({ "email": 7, "name": "Ada", "password": PASSWORD }),
            "email",
        ),
        (
            json!({ "email": "ada@example.com", "name": " ", "password": PASSWORD }),
            "name",
        ),
        (
            json!({ "email": "ada@example.com", "name": "x".repeat(101), "password": PASSWORD }),
            "name",
        ),
        (
            json!({ "email": "ada@example.com", "password": PASSWORD }),
            "name",
        ),
        (
            json!({ "email": "ada@example.com", "name": "Ada", "password": "elevenchars" }),
            "password",
        ),
        (
            json!({ "email": "ada@example.com", "name": "Ada", "password": long_password }),
            "password",
        ),
        (
            json!({ "email": "ada@example.com", "name": "Ada" }),
            "password",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = h.call("POST", "/api/users", None, Some(body.clone())).await;
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        );
        assert_eq!(answer["field"], field, "{body}");
        // The message never quotes the password.
        assert!(!answer.to_string().contains(PASSWORD), "{answer}");
        assert!(!answer.to_string().contains("elevenchars"), "{answer}");
    }
    assert_eq!(h.user_count().await, 0);
    assert!(h.outbox().await.is_empty());
}

async fn signing_in_answers_one_401_for_wrong_password_unknown_email_and_deactivated(
    database: Database,
) {
    let h = harness(database).await;
    let (ada, ada_token) = h.signed_in("ada").await;
    // The token is accepted by the API.
    let (status, _) = h
        .call("GET", &format!("/api/users/{ada}"), Some(&ada_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let (bob, bob_token) = h.signed_in("bob").await;
    let (status, body) = h
        .call(
            "POST",
            &format!("/api/users/{bob}/deactivate"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let wrong_password = h
        .sign_in("ada@example.com", "not the password at all")
        .await;
    let unknown_email = h.sign_in("nobody@example.com", PASSWORD).await;
    let deactivated = h.sign_in("bob@example.com", PASSWORD).await;
    for (status, body) in [&wrong_password, &unknown_email, &deactivated] {
        assert_error(*status, body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(wrong_password.1, unknown_email.1);
    assert_eq!(wrong_password.1, deactivated.1);
    assert_eq!(
        wrong_password.1["message"],
        "the email or password is wrong"
    );

    // An email in another case signs in too; an empty field is a 400.
    assert_eq!(
        h.sign_in("ADA@example.com", PASSWORD).await.0,
        StatusCode::OK
    );
    let (status, body) = h.sign_in("ada@example.com", "").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    assert_eq!(body["field"], "password");
}

async fn a_missing_forged_or_expired_token_is_a_401_json_error(database: Database) {
    let h = harness(database).await;
    let (ada, _) = h.signed_in("ada").await;
    let path = format!("/api/users/{ada}");

    let (status, answer) = h.call("GET", &path, None, None).await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");

    let forger = JwtKeys::new(&JwtSettings {
        secret: Secret::new("another-secret-another-secret-another"),
        issuer: "identity-api".into(),
        audience: "pegasus-services".into(),
        expiry: Duration::from_secs(600),
    });
    let forged = forger.issue(&ada, "ada@example.com").expect("token");
    let (status, answer) = h.call("GET", &path, Some(&forged), None).await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let expired = h
        .keys
        .issue_claims(&Claims {
            sub: ada.clone(),
            email: "ada@example.com".into(),
            iss: "identity-api".into(),
            aud: "pegasus-services".into(),
            iat: now - 7200,
            exp: now - 3600,
        })
        .expect("token");
    let (status, answer) = h
        .call(
            "PUT",
            &path,
            Some(&expired),
            Some(json!({ "name": "Mallory" })),
        )
        .await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(answer["message"]
        .as_str()
        .is_some_and(|m| m.contains("expired")));

    let (status, answer) = h
        .call("GET", &format!("{path}/activity"), Some("x.y.z"), None)
        .await;
    assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");
    // Nothing changed: only the registration's event.
    assert_eq!(h.outbox().await.len(), 1);
}

async fn a_user_may_not_read_or_change_someone_else(database: Database) {
    let h = harness(database).await;
    let (ada, _) = h.signed_in("ada").await;
    let (_, bob_token) = h.signed_in("bob").await;
    let (status, body) = h
        .call(
            "PUT",
            &format!("/api/users/{ada}"),
            Some(&bob_token),
            Some(json!({ "name": "Not Ada" })),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    for (method, path) in [
        ("GET", format!("/api/users/{ada}")),
        ("GET", format!("/api/users/{ada}/activity")),
        ("POST", format!("/api/users/{ada}/deactivate")),
    ] {
        let (status, body) = h.call(method, &path, Some(&bob_token), None).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    // Two registrations, nothing else.
    assert_eq!(h.outbox().await.len(), 2);
}

async fn updating_raises_the_version_and_enqueues_user_updated(database: Database) {
    let h = harness(database).await;
    let (ada, token) = h.signed_in("ada").await;
    let path = format!("/api/users/{ada}");
    let (status, body) = h
        .call(
            "PUT",
            &path,
            Some(&token),
            Some(json!({ "name": "Ada Lovelace", "email": "Lovelace@Example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["eventPublished"], "identity.user.updated");
    assert_eq!(body["user"]["name"], "Ada Lovelace");
    assert_eq!(body["user"]["email"], "lovelace@example.com");
    assert_eq!(body["user"]["version"], 2);

    let (status, body) = h
        .call(
            "PUT",
            &path,
            Some(&token),
            Some(json!({ "name": "Ada L." })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["version"], 3);
    assert_eq!(body["user"]["email"], "lovelace@example.com");

    // Nothing to change, a bad field, another user's email.
    let (status, body) = h.call("PUT", &path, Some(&token), Some(json!({}))).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = h
        .call("PUT", &path, Some(&token), Some(json!({ "email": "nope" })))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    assert_eq!(body["field"], "email");
    assert_eq!(h.register("bob").await.0, StatusCode::CREATED);
    let (status, body) = h
        .call(
            "PUT",
            &path,
            Some(&token),
            Some(json!({ "email": "bob@example.com" })),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    let rows = h.outbox().await;
    let topics: Vec<&str> = rows.iter().map(|(topic, ..)| topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "identity.user.created",
            "identity.user.updated",
            "identity.user.updated",
            "identity.user.created"
        ]
    );
    let first: UserUpdatedEvent = decode_payload(&rows[1].2).expect("decodes");
    assert_eq!(first.user_id, ada);
    assert_eq!(first.email, "lovelace@example.com");
    assert_eq!(first.version, 2);
    let second: UserUpdatedEvent = decode_payload(&rows[2].2).expect("decodes");
    assert_eq!(second.name, "Ada L.");
    assert_eq!(second.version, 3);
    assert!(rows[..3].iter().all(|(_, key, ..)| key == &ada));

    // The new email signs in; the old one no longer does.
    assert_eq!(
        h.sign_in("lovelace@example.com", PASSWORD).await.0,
        StatusCode::OK
    );
    assert_eq!(
        h.sign_in("ada@example.com", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn deactivating_twice_is_a_409_and_publishes_once(database: Database) {
    let h = harness(database).await;
    let (ada, token) = h.signed_in("ada").await;
    let path = format!("/api/users/{ada}/deactivate");
    let (status, body) = h.call("POST", &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["eventPublished"], "identity.user.deactivated");
    assert_eq!(body["user"]["active"], false);
    assert_eq!(body["user"]["version"], 2);

    let (status, body) = h.call("POST", &path, Some(&token), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    // A deactivated user's token, still unexpired, changes nothing either.
    let (status, body) = h
        .call(
            "PUT",
            &format!("/api/users/{ada}"),
            Some(&token),
            Some(json!({ "name": "Back" })),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    let rows = h.outbox().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].0, "identity.user.deactivated");
    let event: UserDeactivatedEvent = decode_payload(&rows[1].2).expect("decodes");
    assert_eq!(event.user_id, ada);
    assert_eq!(event.version, 2);
}

async fn each_shipment_event_is_logged_once_and_confirmed_once(database: Database) {
    let h = harness(database).await;
    let (ada, token) = h.signed_in("ada").await;
    let first = shipment(&ada, "TRACK123");
    let first_id = Uuid::now_v7();
    h.deliver(first.clone(), first_id).await;
    // Redelivered (same ce_id), even with other content: nothing more.
    h.deliver(shipment(&ada, "TRACK999"), first_id).await;
    h.deliver(first.clone(), first_id).await;
    h.deliver(shipment(&ada, "TRACK456"), Uuid::now_v7()).await;

    let (status, body) = h
        .call(
            "GET",
            &format!("/api/users/{ada}/activity"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["userId"], ada.as_str());
    let items = body["items"].as_array().expect("items");
    let tracking: Vec<&str> = items
        .iter()
        .filter_map(|item| item["trackingNumber"].as_str())
        .collect();
    assert_eq!(tracking, ["TRACK123", "TRACK456"]);
    assert_eq!(items[0]["eventId"], first_id.to_string());
    assert_eq!(items[0]["shipmentId"], first.shipment_id.to_string());
    assert_eq!(items[0]["kind"], "ShipmentCreatedEvent");

    // One confirmation per entry, to the address Identity holds (not the event's).
    let sent = h.notifier.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].tracking_number, "TRACK123");
    assert_eq!(sent[0].email, "ada@example.com");
    assert_eq!(sent[0].user_id, ada);
    assert!(!format!("{:?}", sent[0]).contains("ada@example.com"));
}

async fn a_shipment_of_an_unknown_user_is_kept_without_a_confirmation(database: Database) {
    let h = harness(database).await;
    let stranger = Uuid::now_v7().to_string();
    h.deliver(shipment(&stranger, "TRACK1"), Uuid::now_v7())
        .await;
    assert!(h.notifier.sent().is_empty());
    let activity = h.db.activity(&stranger).await.expect("read");
    assert_eq!(activity.len(), 1);
    assert_eq!(activity[0].tracking_number, "TRACK1");

    // A deactivated user's shipment is kept too, and not confirmed.
    let (ada, token) = h.signed_in("ada").await;
    let (status, _) = h
        .call(
            "POST",
            &format!("/api/users/{ada}/deactivate"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.deliver(shipment(&ada, "TRACK2"), Uuid::now_v7()).await;
    assert!(h.notifier.sent().is_empty());
    assert_eq!(h.db.activity(&ada).await.expect("read").len(), 1);
}

async fn with_the_general_topic_each_event_is_enqueued_twice_in_one_transaction(
    database: Database,
) {
    let h = harness_with(database, true).await;
    let (ada, token) = h.signed_in("ada").await;
    let (status, _) = h
        .call(
            "PUT",
            &format!("/api/users/{ada}"),
            Some(&token),
            Some(json!({ "name": "Ada L." })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rows = h.outbox().await;
    let topics: Vec<&str> = rows.iter().map(|(topic, ..)| topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "identity.user.created",
            "identity-events",
            "identity.user.updated",
            "identity-events"
        ]
    );
    // Same key, same JSON, same ce_type; the copy names the original as its cause.
    assert!(rows.iter().all(|(_, key, ..)| key == &ada));
    assert_eq!(rows[0].2, rows[1].2);
    assert_eq!(rows[2].2, rows[3].2);
    let header = |headers: &str, name: &str| -> Option<String> {
        let pairs: Vec<(String, String)> = serde_json::from_str(headers).expect("headers");
        pairs
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    };
    assert_eq!(
        header(&rows[1].3, "ce_type").as_deref(),
        Some("UserCreatedEvent")
    );
    assert_eq!(
        header(&rows[3].3, "ce_type").as_deref(),
        Some("UserUpdatedEvent")
    );
    let original = header(&rows[0].3, "ce_id").expect("an id");
    assert_ne!(header(&rows[1].3, "ce_id"), Some(original.clone()));
    assert_eq!(header(&rows[1].3, "ce_causationid"), Some(original));

    // A refused change writes neither copy.
    let (status, _) = h.register("ada").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(h.outbox().await.len(), 4);
}

async fn a_database_out_of_reach_is_a_503_json_error_not_a_500(database: Database) {
    let h = harness(database).await;
    match (h.db.sqlite(), h.db.postgres()) {
        (Some((outbox, _)), _) => outbox.pool().close().await,
        (_, Some((outbox, _))) => outbox.pool().close().await,
        (None, None) => unreachable!("a database of one kind or the other"),
    }
    let (status, body) = h.register("ada").await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, body) = h.sign_in("ada@example.com", PASSWORD).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
}

/// Each test, once on SQLite and once on PostgreSQL, as `<test>::on_sqlite` and
/// `<test>::on_postgres`.
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
    registering_answers_201_and_enqueues_user_created_with_it_and_no_secret,
    a_duplicate_email_is_a_409_and_leaves_neither_user_nor_event,
    a_bad_registration_is_a_400_naming_the_field,
    signing_in_answers_one_401_for_wrong_password_unknown_email_and_deactivated,
    a_missing_forged_or_expired_token_is_a_401_json_error,
    a_user_may_not_read_or_change_someone_else,
    updating_raises_the_version_and_enqueues_user_updated,
    deactivating_twice_is_a_409_and_publishes_once,
    each_shipment_event_is_logged_once_and_confirmed_once,
    a_shipment_of_an_unknown_user_is_kept_without_a_confirmation,
    with_the_general_topic_each_event_is_enqueued_twice_in_one_transaction,
    a_database_out_of_reach_is_a_503_json_error_not_a_500,
);

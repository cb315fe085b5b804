//! The whole service against a real Kafka broker: Identity's `UserCreatedEvent` reaches
//! the user cache through the consumer and the inbox, the user then creates a shipment over
//! HTTP, and the relay publishes its `ShipmentCreatedEvent`; then the service stops on its
//! token within its drain bound. Once on SQLite, once on a new database on the PostgreSQL
//! server under test.
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

use chrono::Utc;
use event_contracts::{ShipmentCreatedEvent, UserCreatedEvent};
use pegasus_events::consumer::{EventConsumer, EventContext, EventHandler, HandlerError};
use pegasus_events::{EventProducer, KafkaConfig, Secret};
use service_kit::shutdown::CancellationToken;
use service_kit::{JwtKeys, JwtSettings, ServiceSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use uuid::Uuid;

/// How long each step may take, group joins included.
const STEP: Duration = Duration::from_secs(60);

/// A minimal HTTP/1.1 call (no client crate in this workspace): status and body.
async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connected");
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: shipping\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("answer read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A new, empty PostgreSQL database on the server at `server_url`; its URL.
async fn fresh_postgres_database(server_url: &str) -> String {
    let name = format!("shipping_test_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(server_url)
        .await
        .expect("PostgreSQL server reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("database created");
    admin.close().await;
    let server = server_url.split('?').next().unwrap_or(server_url);
    let (server, _) = server.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{name}")
}

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

/// `name`'s value; the test fails without it.
fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!("{name} is not set: run the tests with `scripts/test` (see this file's doc)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_user_creates_a_shipment_whose_event_is_published_on_sqlite() {
    a_cached_user_creates_a_shipment_whose_event_is_published(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_user_creates_a_shipment_whose_event_is_published_on_postgres() {
    a_cached_user_creates_a_shipment_whose_event_is_published(true).await;
}

async fn a_cached_user_creates_a_shipment_whose_event_is_published(on_postgres: bool) {
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
        database_url: if on_postgres {
            fresh_postgres_database(&required("PEGASUS_TEST_POSTGRES_URL")).await
        } else {
            format!("sqlite://{}", dir.path().join("shipping.db").display())
        },
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
        let (status, body) = http(
            address,
            "POST",
            "/api/shipments",
            Some(&token),
            Some(&format!(r#"{{"trackingNumber":"{tracking}"}}"#)),
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
    let created: serde_json::Value = serde_json::from_str(&created).expect("JSON");
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
    let (status, body) = http(address, "GET", "/health/ready", None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(address, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("kafka_events_published_total"), "{body}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(25), service)
        .await
        .expect("stopped within the drain bounds")
        .expect("not panicked")
        .expect("no error");
}

//! Each way of pointing a client at something that is not a reachable Kafka broker ends in
//! an error within the connect timeout, naming the address and the cause in words:
//! nothing listening, a host name that does not resolve, no configuration at all, a
//! server that is not Kafka, credentials the broker refuses. The producer, the topic
//! admin, the consumer and the outbox relay all check. (A broker that goes away after
//! start is `broker_outage.rs`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pegasus_events::consumer::{ConsumerStatus, EventConsumer, EventContext, EventHandler};
use pegasus_events::outbox::{RelaySettings, SqliteOutbox};
use pegasus_events::{
    Error, Event, EventProducer, HandlerError, KafkaConfig, SecurityProtocol, TopicAdmin,
    UnreachableCause,
};
use pegasus_events_tests::bootstrap;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The connect timeout of these tests.
const BOUND: Duration = Duration::from_secs(2);
/// What an error may take beyond the bound: creating and dropping librdkafka clients,
/// and the diagnosing TCP connection (at most 1 s).
const MARGIN: Duration = Duration::from_secs(4);

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.reachability.checked")]
struct Checked {
    n: u32,
}

/// An address where nothing listens: bound, then let go.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

fn config_for(address: &str) -> KafkaConfig {
    KafkaConfig::new(address)
        .with_client_id("reachability-test")
        .with_connect_timeout(Some(BOUND))
}

/// The error of creating a producer for `config`, and how long it took.
async fn producer_error(config: &KafkaConfig) -> (Error, Duration) {
    let started = Instant::now();
    let error = EventProducer::new(config)
        .await
        .expect_err("no Kafka broker is there");
    (error, started.elapsed())
}

/// The cause of a [`Error::BrokersUnreachable`], after checking it names `client` and
/// `address`, in its fields and in its one-line message.
fn cause_of(error: &Error, client: &str, address: &str) -> UnreachableCause {
    let message = error.to_string();
    eprintln!("{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    match error {
        Error::BrokersUnreachable {
            client: named,
            bootstrap,
            cause,
            ..
        } => {
            assert_eq!(*named, client, "{message}");
            assert_eq!(bootstrap, address, "{message}");
            assert!(
                message.contains(&format!(
                    "the {client} could not connect to a Kafka broker at `{address}`"
                )),
                "{message}"
            );
            assert!(message.contains(&cause.to_string()), "{message}");
            cause.clone()
        }
        other => panic!("expected BrokersUnreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_producer_for_an_address_where_nothing_listens_fails_within_the_bound_with_connection_refused(
) {
    let address = closed_address();
    let (error, took) = producer_error(&config_for(&address)).await;
    assert_eq!(
        cause_of(&error, "producer", &address),
        UnreachableCause::ConnectionRefused {
            broker: address.clone()
        }
    );
    assert!(error.to_string().contains("connection refused"), "{error}");
    assert!(took < BOUND + MARGIN, "took {took:?}");
}

#[tokio::test]
async fn a_host_name_that_does_not_resolve_fails_within_the_bound_naming_the_host() {
    let address = "no-such-broker.invalid:9092";
    let (error, took) = producer_error(&config_for(address)).await;
    assert_eq!(
        cause_of(&error, "producer", address),
        UnreachableCause::NameNotResolved {
            broker: address.to_owned()
        }
    );
    assert!(error.to_string().contains("cannot be resolved"), "{error}");
    assert!(took < BOUND + MARGIN, "took {took:?}");
}

#[tokio::test]
async fn without_any_configuration_the_error_names_the_default_address_and_what_to_set() {
    assert!(
        std::net::TcpStream::connect("localhost:9092").is_err(),
        "something listens on localhost:9092; this test needs the default address free"
    );
    let mut config = KafkaConfig::from_env_vars(Vec::new()).expect("the defaults are valid");
    assert_eq!(config.bootstrap_servers, "localhost:9092");
    config.connect_timeout = Some(BOUND);
    let (error, took) = producer_error(&config).await;
    cause_of(&error, "producer", "localhost:9092");
    let message = error.to_string();
    assert!(
        message.contains(
            "(the default address: set KAFKA_BOOTSTRAP_SERVERS or Kafka.BootstrapServers)"
        ),
        "{message}"
    );
    assert!(took < BOUND + MARGIN, "took {took:?}");
}

/// A server that answers every connection the way an HTTP server answers bytes it cannot
/// parse, and counts the connections.
async fn http_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = [0u8; 512];
                let _ = socket.read(&mut request).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
                          Content-Length: 11\r\nConnection: close\r\n\r\nBad Request",
                    )
                    .await;
            });
        }
    });
    (address, connections)
}

#[tokio::test]
async fn an_http_server_is_named_not_kafka_at_once_without_waiting_out_the_bound() {
    let (address, connections) = http_server().await;
    let mut config = config_for(&address);
    // A long bound: the answer must not wait for it.
    config.connect_timeout = Some(Duration::from_secs(30));
    let (error, took) = producer_error(&config).await;
    assert_eq!(
        cause_of(&error, "producer", &address),
        UnreachableCause::NotKafka {
            broker: address.clone()
        }
    );
    assert!(error.to_string().contains("not a Kafka broker"), "{error}");
    assert!(connections.load(Ordering::SeqCst) >= 1, "it was asked");
    assert!(
        took < Duration::from_secs(15),
        "an answer that is not Kafka fails at once, not after the 30 s bound: {took:?}"
    );
}

#[tokio::test]
async fn a_server_that_accepts_but_never_answers_is_named_after_the_bound() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let (error, took) = producer_error(&config_for(&address)).await;
    assert_eq!(
        cause_of(&error, "producer", &address),
        UnreachableCause::NoAnswer {
            broker: address.clone()
        }
    );
    assert!(took >= BOUND, "it waited for an answer: {took:?}");
    assert!(took < BOUND + MARGIN, "took {took:?}");
    held.abort();
}

/// Python's own HTTP server (`python3 -m http.server`) on a free port; killed on drop.
struct PythonHttpServer(std::process::Child, String);

impl PythonHttpServer {
    fn start() -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs (a prerequisite of the tests)");
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40155 (http://127.0.0.1:40155/) ..."
        let port = first
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .unwrap_or_else(|| panic!("no port in {first:?}"))
            .to_owned();
        PythonHttpServer(child, format!("127.0.0.1:{port}"))
    }
}

impl Drop for PythonHttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_http_server_that_waits_for_a_request_line_is_named_as_giving_no_kafka_answer() {
    // Python's server reads a line, and Kafka's first request has no line break in it:
    // it waits, so librdkafka reports nothing, and the check's own TCP connection tells
    // that something listens.
    let server = PythonHttpServer::start();
    let (error, took) = producer_error(&config_for(&server.1)).await;
    assert_eq!(
        cause_of(&error, "producer", &server.1),
        UnreachableCause::NoAnswer {
            broker: server.1.clone()
        }
    );
    assert!(took < BOUND + MARGIN, "took {took:?}");
}

#[tokio::test]
async fn credentials_the_broker_refuses_are_named_authentication_failed_at_once() {
    // The test broker has a plaintext listener without SASL: it refuses the handshake.
    let address = bootstrap();
    let mut config = config_for(&address);
    config.connect_timeout = Some(Duration::from_secs(30));
    config.security_protocol = SecurityProtocol::SaslPlaintext;
    config.sasl_mechanism = Some(pegasus_events::SaslMechanism::Plain);
    config.sasl_username = Some("svc".to_owned());
    config.sasl_password = Some(pegasus_events::Secret::new("refused-password-value"));
    let (error, took) = producer_error(&config).await;
    let message = format!("{error} {error:?}");
    match cause_of(&error, "producer", &address) {
        UnreachableCause::AuthenticationFailed { broker, .. } => assert_eq!(broker, address),
        other => panic!("expected AuthenticationFailed, got {other:?}"),
    }
    assert!(message.contains("authentication with"), "{message}");
    assert!(!message.contains("refused-password-value"), "{message}");
    assert!(
        took < Duration::from_secs(15),
        "at once, not after 30 s: {took:?}"
    );
}

#[tokio::test]
async fn a_topic_admin_for_an_address_where_nothing_listens_fails_the_same_way() {
    let address = closed_address();
    let started = Instant::now();
    let error = TopicAdmin::new(&config_for(&address))
        .await
        .err()
        .expect("no broker");
    assert!(matches!(
        cause_of(&error, "topic admin", &address),
        UnreachableCause::ConnectionRefused { .. }
    ));
    assert!(started.elapsed() < BOUND + MARGIN);
}

struct Counting(Arc<AtomicUsize>);

impl EventHandler<Checked> for Counting {
    async fn handle(&self, _: Checked, _: &EventContext<'_>) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn a_consumer_whose_brokers_are_unreachable_at_start_returns_the_error_from_run_after_the_bound(
) {
    let address = closed_address();
    let consumer = EventConsumer::builder(config_for(&address))
        .handler::<Checked, _>(Counting(Arc::new(AtomicUsize::new(0))))
        .build()
        .expect("building does not connect");
    let health = consumer.health();
    assert_eq!(health.status(), ConsumerStatus::Starting);
    assert!(!health.is_ready());
    let started = Instant::now();
    let error = tokio::time::timeout(
        BOUND + MARGIN,
        consumer.run_until(std::future::pending::<()>()),
    )
    .await
    .expect("run returns within the bound instead of retrying for ever")
    .expect_err("no broker");
    assert!(matches!(
        cause_of(&error, "consumer", &address),
        UnreachableCause::ConnectionRefused { .. }
    ));
    assert!(started.elapsed() >= BOUND, "it waited the bound out");
    assert_eq!(health.status(), ConsumerStatus::Stopped);
}

#[tokio::test]
async fn an_outbox_relay_whose_brokers_are_unreachable_at_start_returns_the_error_from_run() {
    let address = closed_address();
    let config = config_for(&address);
    let directory = std::env::temp_dir().join(pegasus_events_tests::unique("reachability"));
    std::fs::create_dir_all(&directory).unwrap();
    let url = format!("sqlite://{}", directory.join("outbox.db").display());
    let outbox = SqliteOutbox::connect(&url, &config).await.unwrap();
    let relay = outbox
        .relay(&config, RelaySettings::default())
        .expect("creating the relay does not connect");
    let error = tokio::time::timeout(
        BOUND + MARGIN,
        relay.run_until(std::future::pending::<()>()),
    )
    .await
    .expect("the relay returns within the bound")
    .expect_err("no broker");
    assert!(matches!(
        cause_of(&error, "outbox relay", &address),
        UnreachableCause::ConnectionRefused { .. }
    ));
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_reachable_broker_passes_the_check_and_the_consumer_reports_ready() {
    let config = config_for(&bootstrap());
    EventProducer::new(&config)
        .await
        .expect("the test broker answers");
    let consumer = EventConsumer::builder(config)
        .group_id(pegasus_events_tests::unique("reachability-ready"))
        .handler::<Checked, _>(Counting(Arc::new(AtomicUsize::new(0))))
        .build()
        .unwrap();
    let health = consumer.health();
    let watched = health.clone();
    let became_ready = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&became_ready);
    tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_until(async move {
            while !watched.is_ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .await
    .expect("ready, then stopped, within a minute")
    .expect("runs");
    assert_eq!(became_ready.load(Ordering::SeqCst), 1);
    assert_eq!(health.status(), ConsumerStatus::Stopped);
}

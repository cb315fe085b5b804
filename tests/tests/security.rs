//! The library on a secured broker: every listener and SASL mechanism, mutual TLS, the
//! design's ACLs enforced, and refusals that come back fast as typed errors that name what
//! was refused and never carry a secret.
//!
//! The broker is the one `scripts/kafka start --security` runs (scripts/test starts it
//! once for the run); `PEGASUS_TEST_SECURE` holds the path of the `security.json` it
//! writes: its listeners, the certificate authority, the users' passwords (fresh each
//! start) and the client certificates. ACLs are applied with `scripts/kafka acl`. The
//! authorizer denies what no ACL allows; `admin` is the super user.
//!
//! Every test ends by checking that no password and no private key reached any log line
//! of this test binary (a global subscriber at TRACE collects every thread's lines,
//! librdkafka's included), nor the errors it saw.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pegasus_events::acl::{AclOperation, AclResource, ServiceAcls};
use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::{
    Error, Event, EventProducer, KafkaConfig, PemSource, SaslMechanism, SecurityProtocol,
    TopicAdmin, TopicSpec, UnreachableCause,
};
use pegasus_events_tests::{unique, LogBuffer};
use serde::{Deserialize, Serialize};

/// How long a refusal may take to come back; the bounds it must beat are 30 s (the
/// connect timeout the tests set) and 30 s (the delivery timeout).
const FAST: Duration = Duration::from_secs(10);
/// The deadline of a test's consumer.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The secured cluster

#[derive(Deserialize)]
struct Cluster {
    listeners: Listeners,
    ca: PathBuf,
    untrusted_ca: PathBuf,
    users: HashMap<String, String>,
    client_certificates: HashMap<String, ClientCertificate>,
    #[serde(skip)]
    name: String,
}

#[derive(Deserialize)]
struct Listeners {
    sasl_plaintext: String,
    sasl_ssl: String,
    ssl: String,
}

#[derive(Deserialize)]
struct ClientCertificate {
    certificate: PathBuf,
    key: PathBuf,
}

const SECURE_ENV: &str = "PEGASUS_TEST_SECURE";

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let path = match std::env::var(SECURE_ENV) {
            Ok(path) if !path.trim().is_empty() => PathBuf::from(path),
            _ => panic!(
                "{SECURE_ENV} is not set: run the tests with `scripts/test`, or start a secured \
                 broker with `scripts/kafka start --security --name secure` and export the path \
                 it prints"
            ),
        };
        let text = std::fs::read_to_string(&path).expect("security.json is readable");
        let mut cluster: Cluster = serde_json::from_str(&text).expect("security.json parses");
        // target/kafka/<name>/security.json
        cluster.name = path
            .parent()
            .and_then(Path::file_name)
            .and_then(|name| name.to_str())
            .expect("security.json sits in the cluster's directory")
            .to_owned();
        install_log_capture();
        cluster
    })
}

impl Cluster {
    fn password(&self, user: &str) -> &str {
        &self.users[user]
    }

    /// Every secret a log line or error must never show: each password, each private key.
    fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self.users.values().cloned().collect();
        for certificate in self.client_certificates.values() {
            let key = std::fs::read_to_string(&certificate.key).expect("key readable");
            // The base64 body lines of the key, each long enough to be unmistakable.
            secrets.extend(
                key.lines()
                    .filter(|line| !line.starts_with("-----") && line.len() >= 40)
                    .map(str::to_owned),
            );
        }
        secrets
    }
}

#[derive(Clone, Copy, Debug)]
enum Listener {
    SaslPlaintext,
    SaslSsl,
}

/// A configuration for `user` over a SASL listener with `mechanism`.
fn sasl(listener: Listener, mechanism: SaslMechanism, user: &str) -> KafkaConfig {
    let cluster = cluster();
    let (address, protocol) = match listener {
        Listener::SaslPlaintext => (
            &cluster.listeners.sasl_plaintext,
            SecurityProtocol::SaslPlaintext,
        ),
        Listener::SaslSsl => (&cluster.listeners.sasl_ssl, SecurityProtocol::SaslSsl),
    };
    let mut config = KafkaConfig::new(address.clone()).with_client_id(unique(user));
    config.security_protocol = protocol;
    config.sasl_mechanism = Some(mechanism);
    config.sasl_username = Some(user.to_owned());
    config.sasl_password = Some(pegasus_events::Secret::new(cluster.password(user)));
    if matches!(listener, Listener::SaslSsl) {
        config.tls.ca = Some(PemSource::File(cluster.ca.clone()));
    }
    quick(config)
}

/// A configuration for the SSL listener, known by the client certificate named `who`.
fn mtls(who: &str) -> KafkaConfig {
    let cluster = cluster();
    let certificate = &cluster.client_certificates[who];
    let mut config = KafkaConfig::new(cluster.listeners.ssl.clone()).with_client_id(unique("mtls"));
    config.security_protocol = SecurityProtocol::Ssl;
    config.tls.ca = Some(PemSource::File(cluster.ca.clone()));
    config.tls.certificate = Some(PemSource::File(certificate.certificate.clone()));
    config.tls.key = Some(PemSource::File(certificate.key.clone()));
    quick(config)
}

/// The super user, over SASL_PLAINTEXT with SCRAM-SHA-512.
fn admin() -> KafkaConfig {
    sasl(Listener::SaslPlaintext, SaslMechanism::ScramSha512, "admin")
}

/// Generous bounds the refusals must beat by far: 30 s to connect, 30 s to deliver.
fn quick(mut config: KafkaConfig) -> KafkaConfig {
    config.connect_timeout = Some(Duration::from_secs(30));
    config.producer.delivery_timeout = Duration::from_secs(30);
    config
}

/// Applies `rules` (one per line, `scripts/kafka acl`'s form) to the secured cluster.
fn apply_acls(rules: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka");
    let mut child = std::process::Command::new(script)
        .args(["acl", "--name", &cluster().name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("scripts/kafka runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules written");
    let output = child.wait_with_output().expect("scripts/kafka acl ends");
    assert!(
        output.status.success(),
        "scripts/kafka acl failed on\n{rules}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn create_topics(topics: &[&str]) {
    let admin = TopicAdmin::new(&admin()).await.expect("the admin connects");
    let specs: Vec<TopicSpec> = topics.iter().map(|t| TopicSpec::new(*t)).collect();
    admin.ensure_topics(&specs).await.expect("topics created");
}

// ---------------------------------------------------------------------------------------
// Logs: every line of every thread, to prove no secret reaches one

static LOGS: OnceLock<LogBuffer> = OnceLock::new();

fn install_log_capture() {
    let buffer = LOGS.get_or_init(LogBuffer::default);
    let _ = tracing::subscriber::set_global_default(buffer.subscriber(tracing::Level::TRACE));
}

/// Checks that neither the logs so far nor `shown` (errors, `Debug` output) hold a secret
/// of the cluster or one of `more`.
fn assert_no_secret(shown: &str, more: &[&str]) {
    let logs = LOGS.get().map(LogBuffer::text).unwrap_or_default();
    let secrets = cluster().secrets();
    for secret in secrets
        .iter()
        .map(String::as_str)
        .chain(more.iter().copied())
    {
        assert!(!logs.contains(secret), "a secret reached the logs");
        assert!(
            !shown.contains(secret),
            "a secret reached an error: {shown}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Events and a consumer that waits for one run's events

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(topic = "secured.roundtrip.sent", name = "SecuredRoundTripEvent")]
struct RoundTrip {
    #[event(key)]
    run: String,
    over: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(
    topic = "shipping.secured-shipment.created",
    name = "SecuredShipmentCreatedEvent"
)]
struct ShipmentCreated {
    #[event(key)]
    run: String,
    /// When true, the handler fails it (for the dead-letter path).
    poison: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(
    topic = "identity.secured-user.registered",
    name = "SecuredUserRegisteredEvent"
)]
struct UserRegistered {
    #[event(key)]
    run: String,
}

/// Counts the events of one run; fails those of the run marked `poison` when told to.
struct RunHandler {
    run: String,
    seen: Arc<AtomicUsize>,
    fail_poison: bool,
}

impl<E: Event + HasRun> EventHandler<E> for RunHandler {
    async fn handle(&self, event: E, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if event.run() != self.run {
            return Ok(());
        }
        if self.fail_poison && event.poison() {
            return Err(HandlerError::permanent("poison shipment"));
        }
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn run_handler(run: &str, seen: &Arc<AtomicUsize>, fail_poison: bool) -> RunHandler {
    RunHandler {
        run: run.to_owned(),
        seen: Arc::clone(seen),
        fail_poison,
    }
}

/// Runs a consumer until it handled `expected` events of `run`, within [`DEADLINE`].
async fn consume_run<E>(config: KafkaConfig, group: &str, run: &str, expected: usize)
where
    E: Event + HasRun,
{
    let seen = Arc::new(AtomicUsize::new(0));
    let consumer = EventConsumer::builder(config)
        .group_id(group)
        .settings(settings(&unique("secured-dlq")))
        .handler::<E, _>(run_handler(run, &seen, false))
        .build()
        .expect("consumer builds");
    let done = Arc::clone(&seen);
    let stop = async move {
        while done.load(Ordering::SeqCst) < expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, consumer.run_until(stop))
        .await
        .expect("the consumer handled the run's events before the deadline")
        .expect("the consumer ran");
    assert_eq!(seen.load(Ordering::SeqCst), expected);
}

trait HasRun {
    fn run(&self) -> &str;
    fn poison(&self) -> bool {
        false
    }
}

impl HasRun for RoundTrip {
    fn run(&self) -> &str {
        &self.run
    }
}

impl HasRun for ShipmentCreated {
    fn run(&self) -> &str {
        &self.run
    }
    fn poison(&self) -> bool {
        self.poison
    }
}

fn settings(dead_letter_topic: &str) -> ConsumerSettings {
    ConsumerSettings {
        shutdown_timeout: Duration::from_secs(10),
        commit_interval: Duration::from_millis(200),
        dead_letter_topic: dead_letter_topic.to_owned(),
        ..ConsumerSettings::default()
    }
}

// ---------------------------------------------------------------------------------------
// Every listener and mechanism

async fn round_trip(config: KafkaConfig) {
    create_topics(&[RoundTrip::TOPIC]).await;
    let run = unique("run");
    let over = format!("{:?}", config.security_protocol);
    let producer = EventProducer::new(&config)
        .await
        .expect("producer connects");
    let event = RoundTrip {
        run: run.clone(),
        over,
    };
    producer.publish(&event).await.expect("published");
    consume_run::<RoundTrip>(config.clone(), &unique("roundtrip"), &run, 1).await;
    assert_no_secret(&format!("{config:?}"), &[]);
}

#[tokio::test]
async fn sasl_plaintext_with_plain_publishes_and_consumes() {
    round_trip(sasl(Listener::SaslPlaintext, SaslMechanism::Plain, "admin")).await;
}

#[tokio::test]
async fn sasl_plaintext_with_scram_sha_256_publishes_and_consumes() {
    round_trip(sasl(
        Listener::SaslPlaintext,
        SaslMechanism::ScramSha256,
        "admin",
    ))
    .await;
}

#[tokio::test]
async fn sasl_plaintext_with_scram_sha_512_publishes_and_consumes() {
    round_trip(sasl(
        Listener::SaslPlaintext,
        SaslMechanism::ScramSha512,
        "admin",
    ))
    .await;
}

#[tokio::test]
async fn sasl_ssl_with_plain_publishes_and_consumes() {
    round_trip(sasl(Listener::SaslSsl, SaslMechanism::Plain, "admin")).await;
}

#[tokio::test]
async fn sasl_ssl_with_scram_sha_256_publishes_and_consumes() {
    round_trip(sasl(Listener::SaslSsl, SaslMechanism::ScramSha256, "admin")).await;
}

#[tokio::test]
async fn sasl_ssl_with_scram_sha_512_publishes_and_consumes() {
    round_trip(sasl(Listener::SaslSsl, SaslMechanism::ScramSha512, "admin")).await;
}

#[tokio::test]
async fn ssl_with_a_client_certificate_publishes_and_consumes() {
    round_trip(mtls("admin")).await;
}

// ---------------------------------------------------------------------------------------
// Configuration in the design's shapes

#[tokio::test]
async fn appsettings_in_the_designs_shape_with_a_ca_file_connects_over_sasl_ssl() {
    let cluster = cluster();
    let json = serde_json::json!({
        "Kafka": {
            "BootstrapServers": cluster.listeners.sasl_ssl,
            "ClientId": unique("appsettings"),
            "SecurityProtocol": "SaslSsl",
            "SaslMechanism": "ScramSha512",
            "SaslUsername": "admin",
            "SaslPassword": cluster.password("admin"),
            "SslCaLocation": cluster.ca,
        }
    });
    let config = KafkaConfig::from_appsettings_json(&json.to_string()).expect("valid");
    assert!(config.tls.verify_hostname, "verification is on by default");
    round_trip(config).await;
}

#[tokio::test]
async fn environment_with_a_password_file_and_pem_values_connects_over_sasl_ssl() {
    let cluster = cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("kafka-password");
    // Mounted secrets often end in a line break; it is not part of the password.
    std::fs::write(&password_file, format!("{}\n", cluster.password("admin"))).unwrap();
    let ca_pem = std::fs::read_to_string(&cluster.ca).unwrap();
    let config = KafkaConfig::from_env_vars([
        (
            "KAFKA_BOOTSTRAP_SERVERS".to_owned(),
            cluster.listeners.sasl_ssl.clone(),
        ),
        ("KAFKA_CLIENT_ID".to_owned(), unique("env")),
        ("KAFKA_SECURITY_PROTOCOL".to_owned(), "sasl_ssl".to_owned()),
        (
            "KAFKA_SASL_MECHANISM".to_owned(),
            "SCRAM-SHA-256".to_owned(),
        ),
        ("KAFKA_SASL_USERNAME".to_owned(), "admin".to_owned()),
        (
            "KAFKA_SASL_PASSWORD_FILE".to_owned(),
            password_file.display().to_string(),
        ),
        ("KAFKA_SSL_CA_PEM".to_owned(), ca_pem),
    ])
    .expect("valid");
    assert_eq!(config.sasl_password, None, "read when a client is created");
    round_trip(quick(config)).await;
}

#[tokio::test]
async fn environment_with_pem_client_certificate_and_key_connects_over_mutual_tls() {
    let cluster = cluster();
    let certificate = &cluster.client_certificates["admin"];
    let config = KafkaConfig::from_env_vars([
        (
            "KAFKA_BOOTSTRAP_SERVERS".to_owned(),
            cluster.listeners.ssl.clone(),
        ),
        ("KAFKA_CLIENT_ID".to_owned(), unique("env-mtls")),
        ("KAFKA_SECURITY_PROTOCOL".to_owned(), "ssl".to_owned()),
        (
            "KAFKA_SSL_CA_LOCATION".to_owned(),
            cluster.ca.display().to_string(),
        ),
        (
            "KAFKA_SSL_CERTIFICATE_PEM".to_owned(),
            std::fs::read_to_string(&certificate.certificate).unwrap(),
        ),
        (
            "KAFKA_SSL_KEY_PEM".to_owned(),
            std::fs::read_to_string(&certificate.key).unwrap(),
        ),
    ])
    .expect("valid");
    let shown = format!("{config:?}");
    round_trip(quick(config)).await;
    assert_no_secret(&shown, &[]);
}

// ---------------------------------------------------------------------------------------
// Refused at the door: authentication and TLS

/// The producer's error for `config`, and how long it took.
async fn producer_refused(config: &KafkaConfig) -> (Error, Duration) {
    let started = Instant::now();
    let Err(error) = EventProducer::new(config).await else {
        panic!("the broker refuses this client");
    };
    (error, started.elapsed())
}

fn authentication_failure(error: &Error) -> (String, String) {
    match error {
        Error::BrokersUnreachable {
            cause:
                UnreachableCause::AuthenticationFailed {
                    broker, identity, ..
                },
            ..
        } => (broker.clone(), identity.to_string()),
        other => panic!("expected an authentication failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_password_fails_at_once_naming_the_user_and_mechanism_for_each_mechanism() {
    let wrong = "wrong-password-Zq81xv";
    for (listener, mechanism) in [
        (Listener::SaslPlaintext, SaslMechanism::Plain),
        (Listener::SaslPlaintext, SaslMechanism::ScramSha256),
        (Listener::SaslPlaintext, SaslMechanism::ScramSha512),
        (Listener::SaslSsl, SaslMechanism::ScramSha512),
    ] {
        let mut config = sasl(listener, mechanism, "shipping-api");
        config.sasl_password = Some(pegasus_events::Secret::new(wrong));
        // librdkafka's own debug lines about the handshake go through the same scrubbing.
        config
            .properties
            .insert("debug".to_owned(), "security,broker".to_owned());
        let (error, took) = producer_refused(&config).await;
        let (broker, identity) = authentication_failure(&error);
        assert_eq!(broker, config.bootstrap_servers, "{error}");
        assert_eq!(
            identity,
            format!("SASL {} as `shipping-api`", mechanism.as_rdkafka())
        );
        assert!(took < FAST, "{mechanism:?} took {took:?}");
        assert_no_secret(&format!("{error} {error:?}"), &[wrong]);
    }
    // The check above read real lines: librdkafka's, from its own threads.
    let logs = LOGS.get().map(LogBuffer::text).unwrap_or_default();
    assert!(
        logs.contains("librdkafka") && logs.contains("shipping-api"),
        "the capture saw librdkafka's lines about the handshake"
    );
}

#[tokio::test]
async fn an_unknown_user_fails_at_once_as_an_authentication_failure() {
    let mut config = sasl(Listener::SaslPlaintext, SaslMechanism::ScramSha256, "admin");
    config.sasl_username = Some("nobody-we-know".to_owned());
    let (error, took) = producer_refused(&config).await;
    let (_, identity) = authentication_failure(&error);
    assert_eq!(identity, "SASL SCRAM-SHA-256 as `nobody-we-know`");
    assert!(took < FAST, "took {took:?}");
    assert_no_secret(&format!("{error} {error:?}"), &[]);
}

#[tokio::test]
async fn a_broker_certificate_from_an_untrusted_authority_fails_at_once_as_a_tls_failure() {
    let mut config = sasl(Listener::SaslSsl, SaslMechanism::ScramSha512, "admin");
    config.tls.ca = Some(PemSource::File(cluster().untrusted_ca.clone()));
    let (error, took) = producer_refused(&config).await;
    match &error {
        Error::BrokersUnreachable {
            cause: UnreachableCause::TlsHandshakeFailed { broker, detail },
            ..
        } => {
            assert_eq!(broker, &config.bootstrap_servers);
            assert!(detail.contains("certificate verify failed"), "{detail}");
        }
        other => panic!("expected a TLS handshake failure, got {other:?}"),
    }
    assert!(took < FAST, "took {took:?}");
    assert_no_secret(&format!("{error} {error:?}"), &[]);
}

#[tokio::test]
async fn a_client_certificate_from_an_untrusted_authority_is_refused_at_once() {
    let config = mtls("untrusted-shipping-api");
    let (error, took) = producer_refused(&config).await;
    match &error {
        Error::BrokersUnreachable {
            cause: UnreachableCause::TlsHandshakeFailed { broker, .. },
            ..
        } => assert_eq!(broker, &config.bootstrap_servers),
        other => panic!("expected a TLS handshake failure, got {other:?}"),
    }
    assert!(took < FAST, "took {took:?}");
    assert_no_secret(&format!("{error} {error:?}"), &[]);
}

#[tokio::test]
async fn without_the_connection_check_a_publish_the_broker_refuses_to_authenticate_fails_at_once() {
    for refused in ["password", "certificate"] {
        let mut config = sasl(
            Listener::SaslSsl,
            SaslMechanism::ScramSha256,
            "shipping-api",
        );
        match refused {
            "password" => {
                config.sasl_password = Some(pegasus_events::Secret::new("not-the-password-4471"));
            }
            _ => config.tls.ca = Some(PemSource::File(cluster().untrusted_ca.clone())),
        }
        config.connect_timeout = None;
        let producer = EventProducer::new(&config)
            .await
            .expect("without the check, creating the producer does not connect");
        let started = Instant::now();
        let failed = producer
            .publish(&RoundTrip {
                run: unique("run"),
                over: refused.to_owned(),
            })
            .await
            .expect_err("the broker refuses the producer");
        let took = started.elapsed();
        assert!(
            took < FAST,
            "{refused}: took {took:?}, not the 30 s delivery timeout"
        );
        match (&failed.error, refused) {
            (
                Error::BrokersUnreachable {
                    cause: UnreachableCause::AuthenticationFailed { .. },
                    ..
                },
                "password",
            )
            | (
                Error::BrokersUnreachable {
                    cause: UnreachableCause::TlsHandshakeFailed { .. },
                    ..
                },
                "certificate",
            ) => {}
            (other, _) => panic!("{refused}: expected the refusal as the cause, got {other:?}"),
        }
        assert!(failed.record.is_some(), "the record is handed back");
        assert_no_secret(&format!("{failed} {failed:?}"), &["not-the-password-4471"]);
    }
}

// ---------------------------------------------------------------------------------------
// The design's ACLs

/// The design's rules: only `shipping-api` writes `shipping.*`; only `identity-api` reads
/// them, in groups `identity-api-*`.
fn design_acls() {
    apply_acls(
        "allow User:shipping-api WRITE TOPIC PREFIXED shipping.\n\
         allow User:identity-api READ TOPIC PREFIXED shipping.\n\
         allow User:identity-api READ GROUP PREFIXED identity-api-\n",
    );
}

fn assert_refused(error: &Error, operation: AclOperation, resource: AclResource, principal: &str) {
    match error {
        Error::NotAuthorized {
            principal: p,
            operation: o,
            resource: r,
            ..
        } => {
            assert_eq!(
                (p.as_str(), *o, r),
                (principal, operation, &resource),
                "{error}"
            );
        }
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn shipping_api_publishes_to_shipping_topics_and_is_refused_on_identity_topics_at_once() {
    create_topics(&[ShipmentCreated::TOPIC, UserRegistered::TOPIC]).await;
    design_acls();
    let config = sasl(
        Listener::SaslSsl,
        SaslMechanism::ScramSha256,
        "shipping-api",
    );
    let producer = EventProducer::new(&config).await.expect("connects");
    let run = unique("run");
    producer
        .publish(&ShipmentCreated {
            run: run.clone(),
            poison: false,
        })
        .await
        .expect("shipping-api may write shipping.*");

    let started = Instant::now();
    let refused = producer
        .publish(&UserRegistered { run })
        .await
        .expect_err("shipping-api may not write identity.*");
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert_refused(
        &refused.error,
        AclOperation::Write,
        AclResource::Topic(UserRegistered::TOPIC.to_owned()),
        "User:shipping-api",
    );
    assert!(refused.record.is_some(), "the record is handed back");
    assert_no_secret(&format!("{refused} {refused:?}"), &[]);
}

#[tokio::test]
async fn identity_api_consumes_shipping_topics_in_an_identity_api_group_and_is_refused_in_another()
{
    create_topics(&[ShipmentCreated::TOPIC]).await;
    design_acls();
    let run = unique("run");
    let producer = EventProducer::new(&sasl(
        Listener::SaslPlaintext,
        SaslMechanism::ScramSha512,
        "shipping-api",
    ))
    .await
    .expect("connects");
    producer
        .publish(&ShipmentCreated {
            run: run.clone(),
            poison: false,
        })
        .await
        .expect("published");
    let identity = sasl(
        Listener::SaslPlaintext,
        SaslMechanism::ScramSha512,
        "identity-api",
    );
    // The dead-letter topic is not exercised here; the group and the topic are.
    consume_run::<ShipmentCreated>(identity.clone(), &unique("identity-api-shipments"), &run, 1)
        .await;

    let other_group = unique("billing-shipments");
    let error = refused_consumer::<ShipmentCreated>(identity, &other_group).await;
    assert_refused(
        &error,
        AclOperation::Read,
        AclResource::Group(other_group),
        "User:identity-api",
    );
}

/// Runs a consumer the broker refuses and returns its error, which must come within
/// [`FAST`] after it starts.
async fn refused_consumer<E: Event + HasRun>(config: KafkaConfig, group: &str) -> Error {
    let consumer = EventConsumer::builder(config)
        .group_id(group)
        .settings(settings(&unique("secured-dlq")))
        .handler::<E, _>(run_handler("", &Arc::default(), false))
        .build()
        .expect("consumer builds");
    let started = Instant::now();
    let ended = tokio::time::timeout(DEADLINE, consumer.run_until(std::future::pending()))
        .await
        .expect("the refused consumer ends on its own");
    let took = started.elapsed();
    let error = ended.expect_err("the broker refused it");
    assert!(took < FAST, "took {took:?}: {error}");
    assert_no_secret(&format!("{error} {error:?}"), &[]);
    error
}

#[tokio::test]
async fn the_outsider_can_neither_publish_nor_consume_nor_create_topics() {
    create_topics(&[ShipmentCreated::TOPIC]).await;
    design_acls();
    let outsider = sasl(
        Listener::SaslPlaintext,
        SaslMechanism::ScramSha256,
        "outsider",
    );
    let producer = EventProducer::new(&outsider)
        .await
        .expect("authenticated, it connects");
    let started = Instant::now();
    let refused = producer
        .publish(&ShipmentCreated {
            run: unique("run"),
            poison: false,
        })
        .await
        .expect_err("the outsider may not write");
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert_refused(
        &refused.error,
        AclOperation::Write,
        AclResource::Topic(ShipmentCreated::TOPIC.to_owned()),
        "User:outsider",
    );

    let group = unique("identity-api-outsider");
    let error = refused_consumer::<ShipmentCreated>(outsider.clone(), &group).await;
    match &error {
        // Which one the broker checks first is its business; both are refusals.
        Error::NotAuthorized {
            principal,
            operation: AclOperation::Read,
            resource: AclResource::Group(_) | AclResource::Topic(_),
            ..
        } => assert_eq!(principal, "User:outsider"),
        other => panic!("expected NotAuthorized, got {other:?}"),
    }

    let topic = unique("outsider-topic");
    let created = TopicAdmin::new(&outsider)
        .await
        .expect("connects")
        .ensure_topics(&[TopicSpec::new(&topic)])
        .await
        .expect_err("the outsider may not create topics");
    assert_refused(
        &created,
        AclOperation::Create,
        AclResource::Topic(topic),
        "User:outsider",
    );

    // Over mutual TLS the principal is the certificate's subject, and it is refused too.
    let producer = EventProducer::new(&mtls("outsider"))
        .await
        .expect("connects");
    let refused = producer
        .publish(&ShipmentCreated {
            run: unique("run"),
            poison: false,
        })
        .await
        .expect_err("the outsider's certificate may not write");
    assert!(
        matches!(refused.error, Error::NotAuthorized { .. }),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_service_runs_its_consumer_and_dead_letters_within_the_acls_service_acls_lists() {
    let dead_letter_topic = unique("identity-secured-dlq");
    create_topics(&[ShipmentCreated::TOPIC, &dead_letter_topic]).await;
    let run = unique("run");
    let group = unique("identity-api-least");
    let identity = sasl(
        Listener::SaslSsl,
        SaslMechanism::ScramSha512,
        "identity-api",
    );
    let consumer = EventConsumer::builder(identity.clone())
        .group_id(&group)
        .settings(ConsumerSettings {
            retry: pegasus_events::RetryPolicy::no_retry(),
            ..settings(&dead_letter_topic)
        })
        .handler::<ShipmentCreated, _>(run_handler(&run, &Arc::default(), true))
        .build()
        .expect("builds");
    let acls = ServiceAcls::new("identity-api").consumer(&consumer);
    let listed = acls.to_string();
    assert_eq!(
        listed,
        format!(
            "allow User:identity-api READ TOPIC LITERAL {}\n\
             allow User:identity-api READ GROUP LITERAL {group}\n\
             allow User:identity-api WRITE TOPIC LITERAL {dead_letter_topic}\n",
            ShipmentCreated::TOPIC
        )
    );
    apply_acls(&listed);
    let producer = EventProducer::new(&admin()).await.expect("connects");
    producer
        .publish(&ShipmentCreated {
            run: run.clone(),
            poison: true,
        })
        .await
        .expect("published");

    let watch = pegasus_events_tests::DeadLetterWatch::start_with(&admin(), &dead_letter_topic);
    let arrived = watch.arrived();
    tokio::time::timeout(
        DEADLINE,
        consumer.run_until(async move {
            while !arrived() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }),
    )
    .await
    .expect("dead-lettered before the deadline")
    .expect("the consumer ran within its ACLs");
    let letters = watch.letters();
    assert_eq!(letters.len(), 1, "one dead letter");
    assert_eq!(letters[0].record.topic, ShipmentCreated::TOPIC);
    assert_eq!(letters[0].consumer_group, group);

    // The service reads its own dead letters within the rules `reads_dead_letters` adds.
    let readers = ServiceAcls::new("identity-api").reads_dead_letters(&dead_letter_topic);
    assert_eq!(
        readers.to_string(),
        format!(
            "allow User:identity-api READ TOPIC LITERAL {dead_letter_topic}\n\
             allow User:identity-api READ GROUP PREFIXED pegasus-dlq-reader-\n"
        )
    );
    apply_acls(&readers.to_string());
    let read = pegasus_events::DeadLetterQueue::new(&identity)
        .expect("reader")
        .topic(&dead_letter_topic)
        .read(&pegasus_events::ReplayFilter::new())
        .await
        .expect("identity-api reads its dead letters");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].record.topic, ShipmentCreated::TOPIC);
}

#[tokio::test]
async fn a_consumer_refused_its_dead_letter_topic_stops_naming_it() {
    let dead_letter_topic = unique("identity-secured-dlq-refused");
    create_topics(&[ShipmentCreated::TOPIC, &dead_letter_topic]).await;
    let run = unique("run");
    let group = unique("identity-api-nodlq");
    // Read rights, but no WRITE on the dead-letter topic.
    apply_acls(&format!(
        "allow User:identity-api READ TOPIC LITERAL {}\n\
         allow User:identity-api READ GROUP LITERAL {group}\n",
        ShipmentCreated::TOPIC
    ));
    let producer = EventProducer::new(&admin()).await.expect("connects");
    producer
        .publish(&ShipmentCreated {
            run: run.clone(),
            poison: true,
        })
        .await
        .expect("published");
    let consumer = EventConsumer::builder(sasl(
        Listener::SaslPlaintext,
        SaslMechanism::ScramSha256,
        "identity-api",
    ))
    .group_id(&group)
    .settings(ConsumerSettings {
        retry: pegasus_events::RetryPolicy::no_retry(),
        ..settings(&dead_letter_topic)
    })
    .handler::<ShipmentCreated, _>(run_handler(&run, &Arc::default(), true))
    .build()
    .expect("builds");
    let error = tokio::time::timeout(DEADLINE, consumer.run_until(std::future::pending()))
        .await
        .expect("the consumer stops on its own")
        .expect_err("refused its dead-letter topic");
    assert_refused(
        &error,
        AclOperation::Write,
        AclResource::Topic(dead_letter_topic),
        "User:identity-api",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_relay_publishes_within_its_acls_and_dead_letters_a_topic_it_may_not_write() {
    use pegasus_events::outbox::{RelaySettings, SqliteOutbox};
    let dead_letter_topic = unique("shipping-secured-outbox-dlq");
    create_topics(&[
        ShipmentCreated::TOPIC,
        UserRegistered::TOPIC,
        &dead_letter_topic,
    ])
    .await;
    let shipping = sasl(
        Listener::SaslSsl,
        SaslMechanism::ScramSha256,
        "shipping-api",
    );
    let settings = RelaySettings {
        dead_letter_topic: dead_letter_topic.clone(),
        poll_interval: Duration::from_millis(50),
        ..RelaySettings::default()
    };
    let acls = ServiceAcls::new("shipping-api")
        .publishes::<ShipmentCreated>()
        .relay(&settings);
    assert_eq!(
        acls.to_string(),
        format!(
            "allow User:shipping-api WRITE TOPIC LITERAL {dead_letter_topic}\n\
             allow User:shipping-api WRITE TOPIC LITERAL {}\n",
            ShipmentCreated::TOPIC
        )
    );
    apply_acls(&acls.to_string());

    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("secured-outbox"));
    let outbox = SqliteOutbox::connect(&format!("sqlite://{}.db", path.display()), &shipping)
        .await
        .expect("outbox");
    let run = unique("run");
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue(
            &mut tx,
            &ShipmentCreated {
                run: run.clone(),
                poison: false,
            },
        )
        .await
        .unwrap();
    // Not shipping-api's to write: the relay dead-letters it rather than hold every other
    // row up, naming the refusal.
    outbox
        .enqueue(&mut tx, &UserRegistered { run: run.clone() })
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = outbox.relay(&shipping, settings).expect("relay");
    let watch = pegasus_events_tests::DeadLetterWatch::start_with(&admin(), &dead_letter_topic);
    let arrived = watch.arrived();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run_until(async move {
        let _ = stopped.await;
    }));
    consume_run::<ShipmentCreated>(admin(), &unique("secured-outbox-reader"), &run, 1).await;
    tokio::time::timeout(DEADLINE, async {
        while !arrived() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the refused row was dead-lettered");
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the relay stopped")
        .unwrap()
        .expect("the relay ran within its ACLs");
    let letters = watch.letters();
    assert_eq!(letters.len(), 1, "one dead letter");
    assert_eq!(letters[0].record.topic, UserRegistered::TOPIC);
    assert_eq!(letters[0].reason.as_str(), "publish");
    assert!(
        letters[0]
            .error
            .contains("not authorized to write to topic")
            && letters[0].error.contains("User:shipping-api"),
        "{}",
        letters[0].error
    );
}

// ---------------------------------------------------------------------------------------
// Host name verification

/// Forwards every connection to 127.0.0.2:<port> to `target`: the broker reached by an
/// address its certificate does not name.
async fn forward_from_another_address(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("127.0.0.2 is a loopback address");
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn host_name_verification_refuses_a_broker_reached_by_an_address_its_certificate_does_not_name(
) {
    create_topics(&[RoundTrip::TOPIC]).await;
    let mut config = sasl(Listener::SaslSsl, SaslMechanism::ScramSha512, "admin");
    config.bootstrap_servers = forward_from_another_address(config.bootstrap_servers).await;
    let (error, took) = producer_refused(&config).await;
    match &error {
        Error::BrokersUnreachable {
            cause: UnreachableCause::TlsHandshakeFailed { broker, .. },
            ..
        } => assert_eq!(broker, &config.bootstrap_servers),
        other => panic!("expected a TLS handshake failure, got {other:?}"),
    }
    assert!(took < FAST, "took {took:?}");

    // Turned off in so many words, the same address is accepted, with a warning.
    config.tls.verify_hostname = false;
    let producer = EventProducer::new(&config)
        .await
        .expect("accepted without host name verification");
    producer
        .publish(&RoundTrip {
            run: unique("run"),
            over: "unverified".to_owned(),
        })
        .await
        .expect("published");
    let logs = LOGS.get().map(LogBuffer::text).unwrap_or_default();
    assert!(
        logs.contains("TLS host name verification is off"),
        "the warning was logged"
    );
}

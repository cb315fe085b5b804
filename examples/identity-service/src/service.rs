//! The whole service: the HTTP server, the outbox relay and the activity-log consumer
//! around one database, started together and stopped together.
//!
//! Start-up fails (with an error naming what) only for what the service cannot do
//! without: its settings, its database, its HTTP port, its metrics recorder. The broker
//! may be down: the service first creates its topics (trying again every
//! [`WORKER_RESTART_DELAY`]), then starts the relay and the consumer, which start again
//! after a failure, and `/health/ready` says 503 until they run. On shutdown the
//! server stops accepting and answers the requests in flight, then the relay and the
//! consumer get [`DEFAULT_DRAIN_BOUND`] each to finish what they hold (the relay waits for
//! its batch in flight to be acknowledged and marked; the consumer commits what it
//! handled). That wiring is [`service_kit::workers`]'; this module says which topics,
//! which relay and which consumer.
//!
//! [`DEFAULT_DRAIN_BOUND`]: service_kit::shutdown::DEFAULT_DRAIN_BOUND

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use event_contracts::{
    topics, ShipmentCreatedEvent, UserCreatedEvent, UserDeactivatedEvent, UserUpdatedEvent,
};
use pegasus_events::acl::ServiceAcls;
use pegasus_events::consumer::EventConsumer;
use pegasus_events::error::Report;
use pegasus_events::outbox::RelaySettings;
use pegasus_events::{KafkaConfig, TopicSpec};
use service_kit::shutdown::CancellationToken;
use service_kit::workers::{TopicCreation, WorkerSpec, Workers};
use service_kit::{JwtKeys, Readiness, ServiceDefaults, ServiceSettings};
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::general_topic::{general_topic_setting, GENERAL_TOPIC_ENV};
use crate::notify::{LogNotifier, Notifier};
use crate::store::{IdentityDb, StoreError};
use event_contracts::general::OnIdentityEvents;

/// The identity service's defaults: client id `identity-api` (so its consumer group is
/// the design's `identity-api-shipmentcreated-consumer`), `sqlite://identity.db`, and port
/// 5101, beside Shipping's 5100.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    client_id: "identity-api",
    database_url: "sqlite://identity.db",
    connection_string_name: "IdentityDb",
    http_port: 5101,
};

pub use service_kit::workers::WORKER_RESTART_DELAY;

/// Partitions of the topics the service creates, the design's three.
const PARTITIONS: i32 = 3;

/// The identity service's settings: the shared ones and its own.
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    /// Kafka, database, HTTP and JWT ([`ServiceSettings`]).
    pub service: ServiceSettings,
    /// Whether every user event is also enqueued for `identity-events`
    /// (`Identity:GeneralTopic`, `IDENTITY_GENERAL_TOPIC`; see [`crate::general_topic`]).
    pub general_topic: bool,
}

impl IdentitySettings {
    /// Reads `path` if it exists, then the process environment, and checks every value.
    ///
    /// # Errors
    ///
    /// As [`ServiceSettings::load`], and [`service_kit::Error::InvalidSetting`] when the
    /// general topic setting names another topic.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, service_kit::Error> {
        let path = path.as_ref();
        let service = ServiceSettings::load(path, &DEFAULTS)?;
        // ServiceSettings::load read and checked the file already; only its value is
        // needed here.
        let file = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let general_topic = general_topic_setting(file.as_ref(), &|name| std::env::var(name).ok())?;
        Ok(IdentitySettings {
            service,
            general_topic,
        })
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Settings, metrics or the HTTP server.
    #[error(transparent)]
    Kit(#[from] service_kit::Error),
    /// The database, or pegasus-events refusing the relay's or consumer's settings.
    #[error("identity database")]
    Store(#[from] StoreError),
}

/// The service as a process, what its binary runs: logs to stdout (`LOG_FORMAT`),
/// settings from `appsettings.json` in the working directory (if there is one) and the
/// environment, then the service until SIGTERM or Ctrl-C. A bad setting or a failed start
/// is printed to stderr and ends it with a failure code.
///
/// With `--print-acls` it prints the ACLs it needs instead ([`required_acls`]) and exits.
pub async fn run_process() -> std::process::ExitCode {
    // No log lines with the listing: it is piped into `scripts/kafka acl`.
    if !service_kit::acls::requested() {
        service_kit::logging::init(service_kit::logging::LogFormat::from_env());
    }
    let settings = match IdentitySettings::load("appsettings.json") {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {}", Report::new(&error));
            return std::process::ExitCode::FAILURE;
        }
    };
    if service_kit::acls::requested() {
        let bootstrap = &settings.service.kafka.bootstrap_servers;
        return service_kit::acls::print("identity-service", bootstrap, required_acls(&settings))
            .await;
    }
    match run(settings, service_kit::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", Report::new(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Binds `settings.service.http_address` and runs the service until `shutdown` is
/// cancelled, confirming shipments to the log ([`LogNotifier`]).
///
/// # Errors
///
/// See [`run_on`]; and when the address cannot be bound.
pub async fn run(
    settings: IdentitySettings,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let address = settings.service.http_address;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| service_kit::Error::Http {
            address: address.to_string(),
            source,
        })?;
    run_on(listener, settings, shutdown).await
}

/// Runs the service on `listener` (its address is the caller's: port 0 for tests and the
/// in-process demo) until `shutdown` is cancelled, then drains within the bound.
///
/// # Errors
///
/// See [`run_with`].
pub async fn run_on(
    listener: TcpListener,
    settings: IdentitySettings,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    run_with(listener, settings, LogNotifier, shutdown).await
}

/// [`run_on`] with the confirmations sent through `notifier`.
///
/// # Errors
///
/// When the metrics recorder cannot be installed, the database cannot be opened, or
/// pegasus-events refuses the Kafka settings; nothing has been started then.
pub async fn run_with<N: Notifier>(
    listener: TcpListener,
    settings: IdentitySettings,
    notifier: N,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let topic_creation = TopicCreation::Ensure(topic_specs(settings.general_topic));
    run_service(listener, settings, notifier, topic_creation, shutdown).await
}

/// [`run_with`] for a host that created every topic the service uses before starting it
/// (the demo, on its embedded broker): the service asks the broker to create none. The
/// embedded broker (librdkafka's mock cluster) answers no CreateTopics request, so asking
/// would hold the relay and the consumer back until the admin request timed out (the
/// delivery timeout, 30 s by default).
///
/// # Errors
///
/// As [`run_with`].
pub async fn run_with_created_topics<N: Notifier>(
    listener: TcpListener,
    settings: IdentitySettings,
    notifier: N,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    run_service(listener, settings, notifier, TopicCreation::Skip, shutdown).await
}

async fn run_service<N: Notifier>(
    listener: TcpListener,
    settings: IdentitySettings,
    notifier: N,
    topic_creation: TopicCreation,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    // Before any producer, consumer or relay exists: what they register earlier is lost.
    let metrics = service_kit::metrics::install_prometheus()?;
    let IdentitySettings {
        service: settings,
        general_topic,
    } = settings;
    let db = IdentityDb::open(&settings.database_url, &settings.kafka, general_topic).await?;
    let kafka = settings.kafka.clone();
    // The design's convention, `{ClientId}-shipmentcreated-consumer`.
    let group_id = format!("{}-shipmentcreated-consumer", kafka.client_id);
    let notifier = Arc::new(notifier);
    // Checked here, so a bad setting stops the start instead of a worker's every restart.
    db.relay(&kafka, relay_settings())?;
    db.shipment_consumer(kafka.clone(), group_id.clone(), Arc::clone(&notifier))?;
    if general_topic {
        tracing::info!(
            setting = GENERAL_TOPIC_ENV,
            "every user event is also published to {}",
            topics::IDENTITY_EVENTS
        );
    }

    let readiness = Readiness::new();
    let pinged = db.clone();
    readiness.add_check("database", move || {
        let db = pinged.clone();
        async move {
            db.ping()
                .await
                .map_err(|_| "the database does not answer".to_owned())
        }
    });
    let relay_db = db.clone();
    let consumer_db = db.clone();
    let workers = Workers::start(
        WorkerSpec {
            kafka,
            topics: topic_creation,
            relay: move |kafka: &KafkaConfig| relay_db.relay(kafka, relay_settings()),
            consumer: move |kafka: &KafkaConfig| {
                consumer_db.shipment_consumer(
                    kafka.clone(),
                    group_id.clone(),
                    Arc::clone(&notifier),
                )
            },
            consumer_name: "shipment consumer",
            on_consumer_start: |consumer: &EventConsumer| {
                tracing::info!(
                    group = %consumer.group_id(),
                    "Started consuming from topic: {}",
                    topics::SHIPMENT_CREATED
                );
            },
        },
        &readiness,
        &shutdown,
    );

    let app = api::router(AppState {
        db,
        jwt: JwtKeys::new(&settings.jwt),
    })
    .merge(readiness.routes())
    .merge(service_kit::metrics::routes(metrics));
    match listener.local_addr() {
        Ok(address) => tracing::info!(%address, "identity service listening"),
        Err(_) => tracing::info!("identity service listening"),
    }
    let served = service_kit::shutdown::serve(listener, app, shutdown).await;
    tracing::info!("HTTP server stopped; draining the outbox relay and the consumer");
    workers.drain().await;
    tracing::info!("identity service stopped");
    Ok(served?)
}

/// The ACLs the service needs on a cluster that denies what no ACL allows, for its SASL
/// user (or its client id): `WRITE` on the topics its outbox relay publishes to and on the
/// relay's dead-letter topic, `CREATE` on the topics it creates at start, and for its
/// shipment consumer `READ` on `shipping.shipment.created` and its group (the design's
/// `identity-api-*`) and `WRITE` on its dead-letter topic. The consumer is built as the
/// service builds it (on an in-memory database), so the list follows its handlers.
///
/// # Errors
///
/// When pegasus-events refuses the consumer's or the relay's settings.
pub async fn required_acls(settings: &IdentitySettings) -> Result<ServiceAcls, StartError> {
    let kafka = &settings.service.kafka;
    let db = IdentityDb::open("sqlite::memory:", kafka, settings.general_topic).await?;
    let group_id = format!("{}-shipmentcreated-consumer", kafka.client_id);
    let consumer = db.shipment_consumer(kafka.clone(), group_id, Arc::new(LogNotifier))?;
    let mut acls = ServiceAcls::new(&service_kit::acls::principal(kafka))
        .publishes::<UserCreatedEvent>()
        .publishes::<UserUpdatedEvent>()
        .publishes::<UserDeactivatedEvent>()
        .relay(&relay_settings())
        .consumer(&consumer);
    if settings.general_topic {
        acls = acls.publishes::<OnIdentityEvents<UserCreatedEvent>>();
    }
    for spec in topic_specs(settings.general_topic) {
        acls = acls.creates_topic(&spec.name);
    }
    Ok(acls)
}

fn relay_settings() -> RelaySettings {
    RelaySettings {
        // The SQLite relay is woken by this process's commits; polling only catches
        // what another process enqueued.
        poll_interval: Duration::from_millis(250),
        ..RelaySettings::default()
    }
}

/// The topics the service writes and the one it reads, [`PARTITIONS`] each: its three
/// user topics, `identity-events` with `general_topic`, and `shipping.shipment.created`.
fn topic_specs(general_topic: bool) -> Vec<TopicSpec> {
    let mut specs = vec![
        TopicSpec::for_event::<UserCreatedEvent>().partitions(PARTITIONS),
        TopicSpec::for_event::<UserUpdatedEvent>().partitions(PARTITIONS),
        TopicSpec::for_event::<UserDeactivatedEvent>().partitions(PARTITIONS),
        TopicSpec::for_event::<ShipmentCreatedEvent>().partitions(PARTITIONS),
    ];
    if general_topic {
        specs.push(
            TopicSpec::for_event::<OnIdentityEvents<UserCreatedEvent>>().partitions(PARTITIONS),
        );
    }
    specs
}

//! The whole service: the HTTP server, the outbox relay and the user-cache consumer
//! around one database, started together and stopped together.
//!
//! Start-up fails (with an error naming what) only for what the service cannot do
//! without: its database, its HTTP port, its metrics recorder. The broker may be down:
//! the service first creates its topics (trying again every [`WORKER_RESTART_DELAY`]),
//! then starts the relay and the consumer, which start again after a failure, and
//! `/health/ready` says 503 until they run. On shutdown the server stops accepting and
//! answers the requests in flight, then the relay and the consumer get
//! [`DEFAULT_DRAIN_BOUND`] each to finish what they hold (the relay waits for its batch in
//! flight to be acknowledged and marked; the consumer commits what it handled). That
//! wiring is [`service_kit::workers`]'; this module says which topics, which relay and
//! which consumer.
//!
//! [`DEFAULT_DRAIN_BOUND`]: service_kit::shutdown::DEFAULT_DRAIN_BOUND
//!
//! Two settings of its own ([`ShippingSettings`]), both off by default and each naming
//! the one topic it concerns (event types are bound to their topics at compile time):
//!
//! | appsettings.json | environment | value | effect |
//! |------------------|-------------|-------|--------|
//! | `Shipping:GeneralTopic` | `SHIPPING_GENERAL_TOPIC` | `shipping-events` | every shipment event is also enqueued for `shipping-events`, in the same transaction |
//! | `Shipping:UserEventsTopic` | `SHIPPING_USER_EVENTS_TOPIC` | `identity-events` | the user cache reads Identity's general topic instead of its three user topics ([`UserEvents::GeneralTopic`]) |

use std::path::Path;
use std::time::Duration;

use event_contracts::general::{OnIdentityEvents, OnShippingEvents};
use event_contracts::{
    topics, ShipmentCreatedEvent, ShipmentStatusChangedEvent, ShipmentUpdatedEvent,
    UserCreatedEvent, UserDeactivatedEvent, UserUpdatedEvent,
};
use pegasus_events::acl::ServiceAcls;
use pegasus_events::consumer::EventConsumer;
use pegasus_events::error::Report;
use pegasus_events::outbox::RelaySettings;
use pegasus_events::{KafkaConfig, TopicSpec};
use service_kit::shutdown::CancellationToken;
use service_kit::workers::{TopicCreation, WorkerSpec, Workers};
use service_kit::{JwtKeys, Readiness, ServiceDefaults, ServiceSettings, TopicSwitch};
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::store::{ShippingDb, StoreError, UserEvents};

/// The shipping service's defaults: client id `shipping-api`, `sqlite://shipping.db`, and
/// port 5100, the design's.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    client_id: "shipping-api",
    database_url: "sqlite://shipping.db",
    connection_string_name: "ShippingDb",
    http_port: 5100,
};

pub use service_kit::workers::WORKER_RESTART_DELAY;

/// Partitions of the topics the service creates, the design's three.
const PARTITIONS: i32 = 3;

/// The setting that copies every shipment event to `shipping-events`:
/// `Shipping:GeneralTopic`, `SHIPPING_GENERAL_TOPIC`.
pub const GENERAL_TOPIC: TopicSwitch = TopicSwitch {
    section: "Shipping",
    key: "GeneralTopic",
    env: "SHIPPING_GENERAL_TOPIC",
    topic: topics::SHIPPING_EVENTS,
};

/// The setting that makes the user cache read `identity-events` instead of Identity's
/// three user topics: `Shipping:UserEventsTopic`, `SHIPPING_USER_EVENTS_TOPIC`.
pub const USER_EVENTS_TOPIC: TopicSwitch = TopicSwitch {
    section: "Shipping",
    key: "UserEventsTopic",
    env: "SHIPPING_USER_EVENTS_TOPIC",
    topic: topics::IDENTITY_EVENTS,
};

/// The shipping service's settings: the shared ones and its own. A plain
/// [`ServiceSettings`] converts with both of its own off, so callers that have only those
/// run the service as before.
#[derive(Clone, Debug)]
pub struct ShippingSettings {
    /// Kafka, database, HTTP and JWT ([`ServiceSettings`]).
    pub service: ServiceSettings,
    /// Whether every shipment event is also enqueued for `shipping-events`
    /// ([`GENERAL_TOPIC`]).
    pub general_topic: bool,
    /// Where the user cache reads Identity's user events ([`USER_EVENTS_TOPIC`]).
    pub user_events: UserEvents,
}

impl From<ServiceSettings> for ShippingSettings {
    fn from(service: ServiceSettings) -> Self {
        ShippingSettings {
            service,
            general_topic: false,
            user_events: UserEvents::SpecificTopics,
        }
    }
}

impl ShippingSettings {
    /// Reads `path` if it exists, then the process environment, and checks every value.
    ///
    /// # Errors
    ///
    /// As [`ServiceSettings::load`], and [`service_kit::Error::InvalidSetting`] when
    /// [`GENERAL_TOPIC`] or [`USER_EVENTS_TOPIC`] names another topic.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, service_kit::Error> {
        let path = path.as_ref();
        let service = ServiceSettings::load(path, &DEFAULTS)?;
        // ServiceSettings::load read and checked the file already; only its value is
        // needed here.
        let file = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        Self::from_parts(service, file.as_ref(), &|name| std::env::var(name).ok())
    }

    /// The settings from `service`, the parsed appsettings.json (if any) and an
    /// environment lookup.
    ///
    /// # Errors
    ///
    /// As [`ShippingSettings::load`] for the service's own settings.
    pub fn from_parts(
        service: ServiceSettings,
        file: Option<&serde_json::Value>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, service_kit::Error> {
        Ok(ShippingSettings {
            service,
            general_topic: GENERAL_TOPIC.read(file, env)?,
            user_events: if USER_EVENTS_TOPIC.read(file, env)? {
                UserEvents::GeneralTopic
            } else {
                UserEvents::SpecificTopics
            },
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
    #[error("shipping database")]
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
    let settings = match ShippingSettings::load("appsettings.json") {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {}", Report::new(&error));
            return std::process::ExitCode::FAILURE;
        }
    };
    if service_kit::acls::requested() {
        let bootstrap = &settings.service.kafka.bootstrap_servers;
        return service_kit::acls::print("shipping-service", bootstrap, required_acls(&settings))
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

/// Binds `settings.http_address` and runs the service until `shutdown` is cancelled.
///
/// # Errors
///
/// See [`run_on`]; and when the address cannot be bound.
pub async fn run(
    settings: impl Into<ShippingSettings>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let settings = settings.into();
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
/// When the metrics recorder cannot be installed, the database cannot be opened, or
/// pegasus-events refuses the Kafka settings; nothing has been started then.
pub async fn run_on(
    listener: TcpListener,
    settings: impl Into<ShippingSettings>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let settings = settings.into();
    let topic_creation = TopicCreation::Ensure(topic_specs(&settings));
    run_service(listener, settings, topic_creation, shutdown).await
}

/// [`run_on`] for a host that created every topic the service uses before starting it
/// (the demo, on its embedded broker): the service asks the broker to create none. The
/// embedded broker (librdkafka's mock cluster) answers no CreateTopics request, so asking
/// would hold the relay and the consumer back until the admin request timed out (the
/// delivery timeout, 30 s by default).
///
/// # Errors
///
/// As [`run_on`].
pub async fn run_on_created_topics(
    listener: TcpListener,
    settings: impl Into<ShippingSettings>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    run_service(listener, settings.into(), TopicCreation::Skip, shutdown).await
}

async fn run_service(
    listener: TcpListener,
    settings: ShippingSettings,
    topic_creation: TopicCreation,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    // Before any producer, consumer or relay exists: what they register earlier is lost.
    let metrics = service_kit::metrics::install_prometheus()?;
    let ShippingSettings {
        service: settings,
        general_topic,
        user_events,
    } = settings;
    tracing::info!(
        database = %service_kit::config::redact_password(&settings.database_url),
        bootstrap_servers = %settings.kafka.bootstrap_servers,
        client_id = %settings.kafka.client_id,
        "starting shipping service"
    );
    let db = ShippingDb::open(&settings.database_url, &settings.kafka)
        .await?
        .with_general_topic(general_topic);
    let kafka = settings.kafka.clone();
    let group_id = format!("{}-usercache-consumer", kafka.client_id);
    // Checked here, so a bad setting stops the start instead of a worker's every restart.
    db.relay(&kafka, relay_settings())?;
    db.user_cache_consumer(kafka.clone(), group_id.clone(), user_events)?;
    if general_topic {
        tracing::info!(
            setting = GENERAL_TOPIC.env,
            "every shipment event is also published to {}",
            topics::SHIPPING_EVENTS
        );
    }
    if user_events == UserEvents::GeneralTopic {
        tracing::info!(
            setting = USER_EVENTS_TOPIC.env,
            "the user cache reads {}; records of other event types there are dead-lettered",
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
                consumer_db.user_cache_consumer(kafka.clone(), group_id.clone(), user_events)
            },
            consumer_name: "user cache consumer",
            on_consumer_start: |consumer: &EventConsumer| {
                tracing::info!(group = %consumer.group_id(), "consuming Identity's user events");
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
        Ok(address) => tracing::info!(%address, "shipping service listening"),
        Err(_) => tracing::info!("shipping service listening"),
    }
    let served = service_kit::shutdown::serve(listener, app, shutdown).await;
    tracing::info!("HTTP server stopped; draining the outbox relay and the consumer");
    workers.drain().await;
    tracing::info!("shipping service stopped");
    Ok(served?)
}

/// The ACLs the service needs on a cluster that denies what no ACL allows, for its SASL
/// user (or its client id): `WRITE` on the topics its outbox relay publishes to and on the
/// relay's dead-letter topic, `CREATE` on the topics it creates at start, and for its user
/// cache consumer `READ` on Identity's topics and its group and `WRITE` on its dead-letter
/// topic. The consumer is built as the service builds it (on an in-memory database: its
/// shape does not depend on which database), so the list follows its registered handlers.
///
/// # Errors
///
/// When pegasus-events refuses the consumer's or the relay's settings.
pub async fn required_acls(settings: &ShippingSettings) -> Result<ServiceAcls, StartError> {
    let kafka = &settings.service.kafka;
    let db = ShippingDb::open("sqlite::memory:", kafka).await?;
    let group_id = format!("{}-usercache-consumer", kafka.client_id);
    let consumer = db.user_cache_consumer(kafka.clone(), group_id, settings.user_events)?;
    let mut acls = ServiceAcls::new(&service_kit::acls::principal(kafka))
        .publishes::<ShipmentCreatedEvent>()
        .publishes::<ShipmentUpdatedEvent>()
        .publishes::<ShipmentStatusChangedEvent>()
        .relay(&relay_settings())
        .consumer(&consumer);
    if settings.general_topic {
        acls = acls.publishes::<OnShippingEvents<ShipmentCreatedEvent>>();
    }
    for spec in topic_specs(settings) {
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

/// The topics the service writes and the ones it reads, [`PARTITIONS`] each: its three
/// shipment topics, `shipping-events` with `general_topic`, and Identity's topics it reads
/// (the three user topics, or `identity-events`).
fn topic_specs(settings: &ShippingSettings) -> Vec<TopicSpec> {
    let mut specs = vec![
        TopicSpec::for_event::<ShipmentCreatedEvent>().partitions(PARTITIONS),
        TopicSpec::for_event::<ShipmentUpdatedEvent>().partitions(PARTITIONS),
        TopicSpec::for_event::<ShipmentStatusChangedEvent>().partitions(PARTITIONS),
    ];
    if settings.general_topic {
        specs.push(
            TopicSpec::for_event::<OnShippingEvents<ShipmentCreatedEvent>>().partitions(PARTITIONS),
        );
    }
    match settings.user_events {
        UserEvents::SpecificTopics => specs.extend([
            TopicSpec::for_event::<UserCreatedEvent>().partitions(PARTITIONS),
            TopicSpec::for_event::<UserUpdatedEvent>().partitions(PARTITIONS),
            TopicSpec::for_event::<UserDeactivatedEvent>().partitions(PARTITIONS),
        ]),
        UserEvents::GeneralTopic => specs.push(
            TopicSpec::for_event::<OnIdentityEvents<UserCreatedEvent>>().partitions(PARTITIONS),
        ),
    }
    specs
}

#[cfg(test)]
mod tests {
    use pegasus_events::Secret;
    use serde_json::json;
    use service_kit::JwtSettings;

    use super::*;

    fn service() -> ServiceSettings {
        ServiceSettings {
            kafka: KafkaConfig::new("127.0.0.1:9"),
            database_url: DEFAULTS.database_url.to_owned(),
            http_address: "127.0.0.1:0".parse().expect("address"),
            jwt: JwtSettings {
                secret: Secret::new("0123456789abcdef0123456789abcdef"),
                issuer: "identity-api".into(),
                audience: "pegasus-services".into(),
                expiry: Duration::from_secs(60),
            },
        }
    }

    #[test]
    fn both_settings_are_off_by_default_and_on_only_for_their_topic() {
        let none = |_: &str| None;
        let plain = ShippingSettings::from(service());
        assert!(!plain.general_topic);
        assert_eq!(plain.user_events, UserEvents::SpecificTopics);
        let read = ShippingSettings::from_parts(service(), None, &none).expect("defaults");
        assert!(!read.general_topic);
        assert_eq!(read.user_events, UserEvents::SpecificTopics);

        let file = json!({ "Shipping": {
            "GeneralTopic": "shipping-events",
            "UserEventsTopic": "identity-events",
        } });
        let read = ShippingSettings::from_parts(service(), Some(&file), &none).expect("on");
        assert!(read.general_topic);
        assert_eq!(read.user_events, UserEvents::GeneralTopic);

        let env = |name: &str| match name {
            "SHIPPING_GENERAL_TOPIC" => Some("shipping-events".to_owned()),
            "SHIPPING_USER_EVENTS_TOPIC" => Some("identity-events".to_owned()),
            _ => None,
        };
        let read = ShippingSettings::from_parts(service(), None, &env).expect("on");
        assert!(read.general_topic);
        assert_eq!(read.user_events, UserEvents::GeneralTopic);

        // Each names its own topic; the other's is refused, naming the setting.
        let swapped = |name: &str| match name {
            "SHIPPING_USER_EVENTS_TOPIC" => Some("shipping-events".to_owned()),
            _ => None,
        };
        match ShippingSettings::from_parts(service(), None, &swapped) {
            Err(service_kit::Error::InvalidSetting { setting, reason }) => {
                assert_eq!(setting, "SHIPPING_USER_EVENTS_TOPIC");
                assert!(reason.contains("identity-events"), "{reason}");
            }
            result => panic!("{result:?}"),
        }
        let file = json!({ "Shipping": { "GeneralTopic": "identity-events" } });
        match ShippingSettings::from_parts(service(), Some(&file), &none) {
            Err(service_kit::Error::InvalidSetting { setting, .. }) => {
                assert_eq!(setting, "Shipping:GeneralTopic");
            }
            result => panic!("{result:?}"),
        }
    }
}

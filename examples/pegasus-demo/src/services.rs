//! The broker and the two services of the demo: the broker (embedded unless
//! `KAFKA_BOOTSTRAP_SERVERS` names one) has every topic the services use before either
//! starts; each service has its own database, its own Kafka client id and its own port; both
//! check tokens with one JWT secret; and they stop on the demo's token, before the broker.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use embedded_broker::EmbeddedBroker;
use event_contracts::topics;
use identity_service::general_topic::general_topic_setting;
use identity_service::notify::LogNotifier;
use identity_service::IdentitySettings;
use pegasus_events::error::Report;
use pegasus_events::KafkaConfig;
use service_kit::config::MIN_JWT_SECRET_BYTES;
use service_kit::shutdown::CancellationToken;
use service_kit::{ServiceDefaults, ServiceSettings};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cli::Options;

/// Partitions of each topic on the embedded broker, the design's three (the demo carries a
/// handful of events, far below the mock's 5 MiB per partition).
const PARTITIONS: i32 = 3;

/// Every topic the services write or read, the dead-letter topic and Identity's general
/// topic (written only when `IDENTITY_GENERAL_TOPIC` asks for it) included.
const TOPICS: [&str; 8] = [
    topics::USER_CREATED,
    topics::USER_UPDATED,
    topics::USER_DEACTIVATED,
    topics::IDENTITY_EVENTS,
    topics::SHIPMENT_CREATED,
    topics::SHIPMENT_UPDATED,
    topics::SHIPMENT_STATUS_CHANGED,
    topics::DEAD_LETTERS,
];

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// A `KAFKA_*` variable was refused (boxed: it is large and rare).
    #[error("Kafka settings")]
    Kafka(#[source] Box<pegasus_events::Error>),
    /// The embedded broker did not start or refused a topic.
    #[error("embedded broker: {0}")]
    Broker(String),
    /// A setting was refused (`JWT_SECRET`, a database URL, ...).
    #[error("{service} settings")]
    Settings {
        /// Which service's.
        service: &'static str,
        /// The refusal, naming the setting (boxed: it is large and rare).
        #[source]
        source: Box<service_kit::Error>,
    },
    /// The data directory could not be made.
    #[error("data directory {path}")]
    DataDir {
        /// The directory.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A port could not be bound.
    #[error("{service} cannot listen on {address} (choose another with {flag})")]
    Listen {
        /// Which service.
        service: &'static str,
        /// The address.
        address: SocketAddr,
        /// The option that changes it.
        flag: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Where the events travel: a broker inside this process, or one named by
/// `KAFKA_BOOTSTRAP_SERVERS`.
pub(crate) struct Broker {
    /// The Kafka settings both services start from (their client ids are set per service).
    pub(crate) kafka: KafkaConfig,
    /// The broker inside this process, if the demo started one; dropped last.
    pub(crate) embedded: Option<EmbeddedBroker>,
}

impl Broker {
    /// The broker named by `KAFKA_BOOTSTRAP_SERVERS` (the services create their topics
    /// there themselves), else an embedded one with every topic created.
    pub(crate) fn start() -> Result<Self, StartError> {
        let mut kafka = KafkaConfig::from_env().map_err(|e| StartError::Kafka(Box::new(e)))?;
        // Both spellings `KafkaConfig::from_env` reads.
        let named = ["KAFKA_BOOTSTRAP_SERVERS", "Kafka__BootstrapServers"]
            .iter()
            .any(|name| std::env::var_os(name).is_some());
        if named {
            return Ok(Broker {
                kafka,
                embedded: None,
            });
        }
        let broker = EmbeddedBroker::start().map_err(|e| StartError::Broker(e.to_string()))?;
        // The mock has no CreateTopics: the services cannot create them, so they exist
        // before either service's clients look for them.
        for topic in TOPICS {
            broker
                .create_topic(topic, PARTITIONS)
                .map_err(|e| StartError::Broker(format!("creating topic {topic}: {e}")))?;
        }
        kafka.bootstrap_servers = broker.bootstrap_servers();
        Ok(Broker {
            kafka,
            embedded: Some(broker),
        })
    }
}

/// The JWT secret both services share: `JWT_SECRET` if set (the services check it), else a
/// new random one, 64 hex digits from two v4 UUIDs (the operating system's random source,
/// 244 random bits). It is never printed: the demo prints tokens Identity signed with it.
pub(crate) fn jwt_secret() -> String {
    match std::env::var("JWT_SECRET") {
        Ok(secret) => secret,
        Err(_) => {
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            debug_assert!(secret.len() >= MIN_JWT_SECRET_BYTES);
            secret
        }
    }
}

/// The settings of one service: `defaults` for its client id, `database_url` and `port`
/// instead of `DATABASE_URL` and `HTTP_PORT` (the two services would otherwise read the
/// same ones), the shared `secret`, and the rest of the environment (`JWT_ISSUER`,
/// `HTTP_HOST`, ...) as the service's own binary reads it.
fn service_settings(
    service: &'static str,
    kafka: &KafkaConfig,
    defaults: &ServiceDefaults,
    database_url: &str,
    port: u16,
    secret: &str,
) -> Result<ServiceSettings, StartError> {
    let env = |name: &str| match name {
        "DATABASE_URL" => Some(database_url.to_owned()),
        "HTTP_PORT" => Some(port.to_string()),
        "JWT_SECRET" => Some(secret.to_owned()),
        _ => std::env::var(name).ok(),
    };
    let kafka = kafka.clone().with_client_id(defaults.client_id);
    ServiceSettings::from_parts(kafka, None, &env, defaults).map_err(|source| {
        StartError::Settings {
            service,
            source: Box::new(source),
        }
    })
}

/// `<NAME>_DATABASE_URL` if set, else SQLite in `data_dir`.
fn database_url(variable: &str, data_dir: &Path, file: &str) -> String {
    std::env::var(variable)
        .unwrap_or_else(|_| format!("sqlite://{}", data_dir.join(file).display()))
}

/// The two services, running.
pub(crate) struct Running {
    /// Where Identity listens.
    pub(crate) identity: SocketAddr,
    /// Where Shipping listens.
    pub(crate) shipping: SocketAddr,
    /// Identity's task: its result once it stopped.
    identity_task: JoinHandle<Result<(), identity_service::StartError>>,
    /// Shipping's task.
    shipping_task: JoinHandle<Result<(), shipping_service::StartError>>,
    /// Cancelled by either service when it stops, whatever the reason.
    ended: CancellationToken,
}

/// Binds both ports and starts both services on `broker`, each stopping when `shutdown` is
/// cancelled. Nothing is started unless both ports could be bound.
pub(crate) async fn start(
    options: &Options,
    broker: &Broker,
    data_dir: &Path,
    shutdown: &CancellationToken,
) -> Result<Running, StartError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let secret = jwt_secret();
    let shipping = service_settings(
        "Shipping",
        &broker.kafka,
        &shipping_service::DEFAULTS,
        &database_url("SHIPPING_DATABASE_URL", data_dir, "shipping.db"),
        options.shipping_port,
        &secret,
    )?;
    let identity = IdentitySettings {
        service: service_settings(
            "Identity",
            &broker.kafka,
            &identity_service::DEFAULTS,
            &database_url("IDENTITY_DATABASE_URL", data_dir, "identity.db"),
            options.identity_port,
            &secret,
        )?,
        general_topic: general_topic_setting(None, &|name| std::env::var(name).ok()).map_err(
            |source| StartError::Settings {
                service: "Identity",
                source: Box::new(source),
            },
        )?,
    };
    let shipping_listener = bind("Shipping", shipping.http_address, "--shipping-port").await?;
    let identity_listener =
        bind("Identity", identity.service.http_address, "--identity-port").await?;
    let shipping_address = local_address(&shipping_listener, shipping.http_address);
    let identity_address = local_address(&identity_listener, identity.service.http_address);

    // On the embedded broker the topics exist already and the services must not ask for
    // them (the mock answers no CreateTopics; see `run_on_created_topics`).
    let topics_created = broker.embedded.is_some();
    let ended = CancellationToken::new();
    // Child tokens: a service that stops by itself (Identity cancels its token then) does
    // not stop the other through it; the demo notices through `ended` and stops both.
    let identity_ended = ended.clone();
    let identity_token = shutdown.child_token();
    let identity_task = tokio::spawn(async move {
        let (listener, token, notifier) = (identity_listener, identity_token, LogNotifier);
        let result = if topics_created {
            identity_service::run_with_created_topics(listener, identity, notifier, token).await
        } else {
            identity_service::run_with(listener, identity, notifier, token).await
        };
        identity_ended.cancel();
        result
    });
    let shipping_ended = ended.clone();
    let shipping_token = shutdown.child_token();
    let shipping_task = tokio::spawn(async move {
        let (listener, token) = (shipping_listener, shipping_token);
        let result = if topics_created {
            shipping_service::run_on_created_topics(listener, shipping, token).await
        } else {
            shipping_service::run_on(listener, shipping, token).await
        };
        shipping_ended.cancel();
        result
    });
    Ok(Running {
        identity: identity_address,
        shipping: shipping_address,
        identity_task,
        shipping_task,
        ended,
    })
}

async fn bind(
    service: &'static str,
    address: SocketAddr,
    flag: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen {
            service,
            address,
            flag,
            source,
        })
}

/// The bound address (the port the system chose for port 0), shown as 127.0.0.1 when the
/// service listens on every interface, so the printed URLs work as they are.
fn local_address(listener: &TcpListener, asked: SocketAddr) -> SocketAddr {
    let mut address = listener.local_addr().unwrap_or(asked);
    if address.ip().is_unspecified() {
        address.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    address
}

impl Running {
    /// Resolves when either service stopped by itself (an error, or its server ended).
    pub(crate) async fn a_service_stopped(&self) {
        self.ended.cancelled().await;
    }

    /// Waits for both services to stop (the caller cancelled their token: each drains its
    /// relay and consumer within its own bound); `true` when both stopped without error.
    pub(crate) async fn stopped(self) -> bool {
        let (identity, shipping) = tokio::join!(self.identity_task, self.shipping_task);
        let identity = report(
            "Identity",
            identity.map(|ended| ended.map_err(|e| Report::new(&e).to_string())),
        );
        let shipping = report(
            "Shipping",
            shipping.map(|ended| ended.map_err(|e| Report::new(&e).to_string())),
        );
        identity && shipping
    }
}

/// Prints how a service ended unless cleanly; `true` for a clean end.
fn report(service: &str, ended: Result<Result<(), String>, tokio::task::JoinError>) -> bool {
    match ended {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            eprintln!("error: {service} service: {error}");
            false
        }
        Err(error) => {
            eprintln!("error: {service} service ended abnormally: {error}");
            false
        }
    }
}

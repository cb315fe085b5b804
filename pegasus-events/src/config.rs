//! Typed configuration: one set of defaults, a validation that names the bad field, and a
//! pass-through for any other librdkafka property.
//!
//! # Guarantees
//!
//! - [`KafkaConfig::default`] is the one place defaults live; every loader starts from it.
//! - [`KafkaConfig::validate`] rejects a bad value with [`Error::Config`] naming the field
//!   as the user wrote it (`Kafka.SaslPassword`, `KAFKA_SASL_PASSWORD`, `producer.acks`).
//! - Secrets ([`Secret`] values and pass-through properties whose name says password,
//!   secret, token or key material) are shown as `***` by `Debug`, and never appear in an
//!   error message: not ours, and not librdkafka's, which we rewrite.
//!
//! # Sources
//!
//! - [`KafkaConfig::from_appsettings`]: the `Kafka` section of an `appsettings.json` shaped
//!   like the .NET services' (`BootstrapServers`, `ClientId`, `SecurityProtocol`,
//!   `SaslMechanism`, `SaslUsername`, `SaslPassword`, plus any librdkafka property by its
//!   dotted name, e.g. `"linger.ms": "5"`).
//! - [`KafkaConfig::from_env`]: `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_CLIENT_ID`,
//!   `KAFKA_SOURCE_SERVICE`, `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_MECHANISM`,
//!   `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, `KAFKA_ACKS`, `KAFKA_ENABLE_IDEMPOTENCE`,
//!   `KAFKA_COMPRESSION`, `KAFKA_DELIVERY_TIMEOUT_MS`, `KAFKA_LINGER_MS`,
//!   `KAFKA_WRITE_BASE_EVENT_FIELDS` (appsettings `WriteBaseEventFields`), and
//!   `KAFKA_PROPERTY_<NAME>` for any librdkafka property (`KAFKA_PROPERTY_SOCKET_TIMEOUT_MS`
//!   sets `socket.timeout.ms`). The .NET spelling `Kafka__BootstrapServers` works too.
//! - [`KafkaConfig::load`]: an appsettings file if it exists, then the environment on top.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::error::{Error, Result};

/// Connection and producer settings for one service.
#[derive(Clone)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// The client id sent to the broker; by the design's convention the service name,
    /// e.g. `shipping-api`.
    pub client_id: String,
    /// The `ce_source` written on published events; defaults to [`KafkaConfig::client_id`].
    pub source_service: Option<String>,
    /// How the client talks to the broker.
    pub security_protocol: SecurityProtocol,
    /// The SASL mechanism, required with the SASL protocols.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user name.
    pub sasl_username: Option<String>,
    /// The SASL password; shown as `***` by `Debug`.
    pub sasl_password: Option<Secret>,
    /// Producer settings.
    pub producer: ProducerSettings,
    /// Any other librdkafka property, by its dotted name. A property that a typed field
    /// above controls is rejected by [`KafkaConfig::validate`], so there is one way to set
    /// each thing.
    pub properties: BTreeMap<String, String>,
}

/// Settings of the typed producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerSettings {
    /// How many replicas must acknowledge a record; [`Acks::All`] by default.
    pub acks: Acks,
    /// librdkafka's idempotent producer (no duplicates or reordering from retries); on by
    /// default, and it requires [`Acks::All`].
    pub idempotence: bool,
    /// Compression of record batches; none by default.
    pub compression: Compression,
    /// How long a publish may take, retries included, before it fails with the event
    /// handed back (librdkafka's `message.timeout.ms`); 30 s by default.
    pub delivery_timeout: Duration,
    /// How long to wait for more records to fill a batch (`linger.ms`); 5 ms by default.
    pub linger: Duration,
    /// Also write the design's `BaseEvent` fields (`eventId`, `occurredAt`, `eventType`,
    /// `sourceService`, camelCase as System.Text.Json's web defaults name them) at the start
    /// of each JSON payload, for .NET consumers that read them from the payload; off by
    /// default (the CloudEvents headers carry them). An event that does not serialize as a
    /// JSON object, or has a field of one of those names, then fails to publish with
    /// [`Error::Serialize`]. Used by the producer and the outbox.
    pub base_event_fields: bool,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            acks: Acks::All,
            idempotence: true,
            compression: Compression::None,
            delivery_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
            base_event_fields: false,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "localhost:9092".to_owned(),
            client_id: "pegasus-events".to_owned(),
            source_service: None,
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            producer: ProducerSettings::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// A secret value (a password). `Debug` and `Display` print `***`; read it with
/// [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call it only where the value is handed to the Kafka client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

macro_rules! config_enum {
    (
        $(#[$meta:meta])* $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $rdkafka:literal, [$($alias:literal),*] ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),*
        }

        impl $name {
            /// The value librdkafka expects.
            pub fn as_rdkafka(self) -> &'static str {
                match self { $( $name::$variant => $rdkafka ),* }
            }

            /// Parses the .NET spelling (`SaslPlaintext`), librdkafka's (`sasl_plaintext`)
            /// or an alias, ignoring case, hyphens and underscores.
            pub fn parse(value: &str) -> Option<Self> {
                let wanted = normalize(value);
                $(
                    if wanted == normalize(stringify!($variant))
                        || wanted == normalize($rdkafka)
                        $( || wanted == normalize($alias) )*
                    {
                        return Some($name::$variant);
                    }
                )*
                None
            }

            fn expected() -> &'static str {
                concat!("one of", $( " `", stringify!($variant), "`" ),*)
            }
        }
    };
}

fn normalize(value: &str) -> String {
    value
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

config_enum! {
    /// The protocol between client and broker.
    SecurityProtocol {
        /// No TLS, no authentication.
        Plaintext => "plaintext", [],
        /// TLS (needs the `ssl` feature).
        Ssl => "ssl", [],
        /// SASL authentication without TLS.
        SaslPlaintext => "sasl_plaintext", [],
        /// SASL authentication over TLS (needs the `ssl` feature).
        SaslSsl => "sasl_ssl", [],
    }
}

config_enum! {
    /// The SASL mechanism.
    SaslMechanism {
        /// User name and password in clear (use it with TLS outside a trusted network).
        Plain => "PLAIN", [],
        /// SCRAM with SHA-256 (needs the `ssl` feature: librdkafka uses OpenSSL for it).
        ScramSha256 => "SCRAM-SHA-256", [],
        /// SCRAM with SHA-512 (needs the `ssl` feature).
        ScramSha512 => "SCRAM-SHA-512", [],
    }
}

config_enum! {
    /// Compression of record batches.
    Compression {
        /// No compression.
        None => "none", [],
        /// gzip.
        Gzip => "gzip", [],
        /// Snappy.
        Snappy => "snappy", [],
        /// LZ4.
        Lz4 => "lz4", [],
        /// Zstandard.
        Zstd => "zstd", [],
    }
}

config_enum! {
    /// How many replicas must acknowledge a record before a publish succeeds.
    Acks {
        /// Fire and forget (not compatible with idempotence).
        None => "0", ["zero"],
        /// The partition leader only.
        Leader => "1", ["one"],
        /// Every in-sync replica (`min.insync.replicas` of them at least).
        All => "all", ["-1"],
    }
}

impl SecurityProtocol {
    fn is_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn is_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// Where a setting came from, so an error names it as the user wrote it.
#[derive(Clone, Copy)]
enum Source {
    AppSettings,
    Env,
}

/// The typed settings, with their appsettings and environment names.
const SETTINGS: &[(&str, &str)] = &[
    ("BootstrapServers", "KAFKA_BOOTSTRAP_SERVERS"),
    ("ClientId", "KAFKA_CLIENT_ID"),
    ("SourceService", "KAFKA_SOURCE_SERVICE"),
    ("SecurityProtocol", "KAFKA_SECURITY_PROTOCOL"),
    ("SaslMechanism", "KAFKA_SASL_MECHANISM"),
    ("SaslUsername", "KAFKA_SASL_USERNAME"),
    ("SaslPassword", "KAFKA_SASL_PASSWORD"),
    ("Acks", "KAFKA_ACKS"),
    ("EnableIdempotence", "KAFKA_ENABLE_IDEMPOTENCE"),
    ("CompressionType", "KAFKA_COMPRESSION"),
    ("DeliveryTimeoutMs", "KAFKA_DELIVERY_TIMEOUT_MS"),
    ("LingerMs", "KAFKA_LINGER_MS"),
    ("WriteBaseEventFields", "KAFKA_WRITE_BASE_EVENT_FIELDS"),
];

/// librdkafka properties that typed fields own.
const TYPED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "compression.type",
    "compression.codec",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "linger.ms",
    "queue.buffering.max.ms",
];

impl KafkaConfig {
    /// The defaults with the given bootstrap servers.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            ..KafkaConfig::default()
        }
    }

    /// Sets the client id (and so the default `ce_source`).
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Sets any librdkafka property not covered by a typed field.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The `ce_source` of published events.
    pub fn source(&self) -> &str {
        self.source_service.as_deref().unwrap_or(&self.client_id)
    }

    /// Reads the defaults, then the `Kafka` section of `path` if the file exists, then the
    /// environment on top, and validates the result.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut config = if path.exists() {
            KafkaConfig::from_appsettings_unvalidated(path)?
        } else {
            KafkaConfig::default()
        };
        config.apply_env(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    /// The defaults overridden by the process environment, validated.
    pub fn from_env() -> Result<Self> {
        KafkaConfig::from_env_vars(std::env::vars())
    }

    /// The defaults overridden by the given variables (as `from_env` reads them), validated.
    pub fn from_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut config = KafkaConfig::default();
        config.apply_env(vars)?;
        config.validate()?;
        Ok(config)
    }

    /// The defaults overridden by the `Kafka` section of an appsettings.json file, validated.
    pub fn from_appsettings(path: impl AsRef<Path>) -> Result<Self> {
        let config = KafkaConfig::from_appsettings_unvalidated(path.as_ref())?;
        config.validate()?;
        Ok(config)
    }

    /// Like [`KafkaConfig::from_appsettings`], from the file's text.
    pub fn from_appsettings_json(json: &str) -> Result<Self> {
        let config = KafkaConfig::parse_appsettings(json, Path::new("appsettings.json"))?;
        config.validate()?;
        Ok(config)
    }

    fn from_appsettings_unvalidated(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
            path: path.to_owned(),
            source,
        })?;
        KafkaConfig::parse_appsettings(&text, path)
    }

    fn parse_appsettings(text: &str, path: &Path) -> Result<Self> {
        let root: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::ConfigSyntax {
                path: path.to_owned(),
                line: e.line(),
                column: e.column(),
            })?;
        let mut config = KafkaConfig::default();
        let Some(section) = root.get("Kafka") else {
            return Err(config_error("Kafka", "appsettings has no `Kafka` section"));
        };
        let serde_json::Value::Object(section) = section else {
            return Err(config_error("Kafka", "must be a JSON object"));
        };
        for (key, value) in section {
            let field = format!("Kafka.{key}");
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => continue,
                _ => return Err(config_error(&field, "must be a string, number or boolean")),
            };
            config.set(key, text, Source::AppSettings)?;
        }
        Ok(config)
    }

    fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<()> {
        for (name, value) in vars {
            if let Some(key) = name.strip_prefix("Kafka__") {
                self.set(key, value, Source::AppSettings)?;
            } else if let Some(property) = name.strip_prefix("KAFKA_PROPERTY_") {
                let property = property.to_ascii_lowercase().replace('_', ".");
                self.properties.insert(property, value);
            } else if let Some((key, _)) = SETTINGS.iter().find(|(_, env)| *env == name) {
                self.set(key, value, Source::Env)?;
            }
        }
        Ok(())
    }

    /// Sets one setting by its appsettings key; dotted keys are librdkafka properties.
    fn set(&mut self, key: &str, value: String, source: Source) -> Result<()> {
        let field = match source {
            Source::AppSettings => format!("Kafka.{key}"),
            Source::Env => SETTINGS
                .iter()
                .find(|(k, _)| *k == key)
                .map_or_else(|| key.to_owned(), |(_, env)| (*env).to_owned()),
        };
        let parse_ms = |value: &str| {
            value
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| config_error(&field, "must be a whole number of milliseconds"))
        };
        match key {
            "BootstrapServers" => self.bootstrap_servers = value,
            "ClientId" => self.client_id = value,
            "SourceService" => self.source_service = Some(value),
            "SecurityProtocol" => {
                self.security_protocol = SecurityProtocol::parse(&value)
                    .ok_or_else(|| config_error(&field, SecurityProtocol::expected()))?;
            }
            "SaslMechanism" => {
                self.sasl_mechanism = Some(
                    SaslMechanism::parse(&value)
                        .ok_or_else(|| config_error(&field, SaslMechanism::expected()))?,
                );
            }
            "SaslUsername" => self.sasl_username = Some(value),
            "SaslPassword" => self.sasl_password = Some(Secret(value)),
            "Acks" => {
                self.producer.acks =
                    Acks::parse(&value).ok_or_else(|| config_error(&field, Acks::expected()))?;
            }
            "EnableIdempotence" => self.producer.idempotence = parse_bool(&field, &value)?,
            "WriteBaseEventFields" => {
                self.producer.base_event_fields = parse_bool(&field, &value)?;
            }
            "CompressionType" => {
                self.producer.compression = Compression::parse(&value)
                    .ok_or_else(|| config_error(&field, Compression::expected()))?;
            }
            "DeliveryTimeoutMs" => self.producer.delivery_timeout = parse_ms(&value)?,
            "LingerMs" => self.producer.linger = parse_ms(&value)?,
            property if property.contains('.') => {
                self.properties.insert(property.to_owned(), value);
            }
            _ => {
                return Err(config_error(
                    &field,
                    "unknown setting; the known ones are BootstrapServers, ClientId, \
                     SourceService, SecurityProtocol, SaslMechanism, SaslUsername, SaslPassword, \
                     Acks, EnableIdempotence, CompressionType, DeliveryTimeoutMs, LingerMs, \
                     WriteBaseEventFields, \
                     or any librdkafka property by its dotted name",
                ))
            }
        }
        Ok(())
    }

    /// Checks every field; the first problem found is returned with the field's name.
    pub fn validate(&self) -> Result<()> {
        validate_bootstrap(&self.bootstrap_servers)?;
        if self.client_id.is_empty()
            || !self
                .client_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(config_error(
                "client_id",
                "must be non-empty ASCII letters, digits, `.`, `_` or `-`",
            ));
        }
        if self.source_service.as_deref() == Some("") {
            return Err(config_error("source_service", "must not be empty"));
        }
        if self.security_protocol.is_tls() && !cfg!(feature = "ssl") {
            return Err(config_error(
                "security_protocol",
                "TLS needs pegasus-events' `ssl` feature",
            ));
        }
        if self.security_protocol.is_sasl() {
            let mechanism = self.sasl_mechanism.ok_or_else(|| {
                config_error(
                    "sasl_mechanism",
                    "is required with a SASL security protocol",
                )
            })?;
            if matches!(
                mechanism,
                SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512
            ) && !cfg!(feature = "ssl")
            {
                return Err(config_error(
                    "sasl_mechanism",
                    "SCRAM needs pegasus-events' `ssl` feature (librdkafka uses OpenSSL for it)",
                ));
            }
            if self.sasl_username.as_deref().unwrap_or("").is_empty() {
                return Err(config_error(
                    "sasl_username",
                    "is required with a SASL security protocol",
                ));
            }
            if self.sasl_password.as_ref().is_none_or(|p| p.0.is_empty()) {
                return Err(config_error(
                    "sasl_password",
                    "is required with a SASL security protocol",
                ));
            }
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
        {
            let field = if self.sasl_mechanism.is_some() {
                "sasl_mechanism"
            } else if self.sasl_username.is_some() {
                "sasl_username"
            } else {
                "sasl_password"
            };
            return Err(config_error(
                field,
                "is set but security_protocol is not SaslPlaintext or SaslSsl",
            ));
        }
        let producer = &self.producer;
        if producer.idempotence && producer.acks != Acks::All {
            return Err(config_error(
                "producer.acks",
                "must be `All` while producer.idempotence is on",
            ));
        }
        if producer.delivery_timeout.is_zero()
            || producer.delivery_timeout > Duration::from_millis(i32::MAX as u64)
        {
            return Err(config_error(
                "producer.delivery_timeout",
                "must be between 1 ms and 24 days",
            ));
        }
        if producer.linger > Duration::from_secs(900) {
            return Err(config_error("producer.linger", "must be at most 900 s"));
        }
        for name in self.properties.keys() {
            validate_property_name("properties", name)?;
        }
        Ok(())
    }

    /// The librdkafka configuration shared by every client: connection and security.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security_protocol.as_rdkafka());
        if let Some(mechanism) = self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism.as_rdkafka());
        }
        if let Some(username) = &self.sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose());
        }
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }

    /// The librdkafka configuration of the typed producer.
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        let producer = &self.producer;
        config
            .set("acks", producer.acks.as_rdkafka())
            .set("enable.idempotence", producer.idempotence.to_string())
            .set("compression.type", producer.compression.as_rdkafka())
            .set(
                "message.timeout.ms",
                producer.delivery_timeout.as_millis().to_string(),
            )
            .set("linger.ms", producer.linger.as_millis().to_string());
        config
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) { "***" } else { v };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("client_id", &self.client_id)
            .field("source_service", &self.source_service)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("producer", &self.producer)
            .field("properties", &properties)
            .finish()
    }
}

/// Whether a librdkafka property holds a secret, judged by its name.
pub fn is_secret_property(name: &str) -> bool {
    const MARKERS: &[&str] = &[
        "password",
        "secret",
        "token",
        "jaas",
        "ssl.key",
        "oauthbearer.config",
        // `sasl.oauthbearer.assertion.private.key.pem`, `.file`, `.passphrase`.
        "private.key",
        "passphrase",
    ];
    MARKERS.iter().any(|m| name.contains(m))
}

/// Checks a librdkafka property name given under `field` (e.g. `properties`): lowercase
/// and dotted, and not one of the connection and producer settings that have a typed
/// field (setting both would leave it unclear which wins).
pub(crate) fn validate_property_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_' || c.is_ascii_digit())
    {
        return Err(config_error(
            &format!("{field}.{name}"),
            "is not a librdkafka property name (lowercase, dotted)",
        ));
    }
    if TYPED_PROPERTIES.contains(&name) {
        return Err(config_error(
            &format!("{field}.{name}"),
            "is controlled by a typed setting; set that instead",
        ));
    }
    Ok(())
}

/// Checks a topic name as Kafka does: 1 to 249 characters of ASCII letters, digits, `.`,
/// `_` and `-`, and neither `.` nor `..`.
pub(crate) fn validate_topic_name(field: &str, topic: &str) -> Result<()> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(config_error(
            field,
            "is not a Kafka topic name (1 to 249 ASCII letters, digits, `.`, `_` or `-`)",
        ))
    }
}

fn validate_bootstrap(servers: &str) -> Result<()> {
    const FIELD: &str = "bootstrap_servers";
    if servers.trim().is_empty() {
        return Err(config_error(FIELD, "must list at least one `host:port`"));
    }
    for server in servers.split(',') {
        let server = server.trim();
        let address = server.split_once("://").map_or(server, |(_, rest)| rest);
        let Some((host, port)) = address.rsplit_once(':') else {
            return Err(config_error(
                FIELD,
                &format!("`{server}` is not `host:port`"),
            ));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(config_error(
                FIELD,
                &format!("`{server}` is not `host:port` with a port from 1 to 65535"),
            ));
        }
    }
    Ok(())
}

fn parse_bool(field: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(config_error(field, "must be `true` or `false`")),
    }
}

fn config_error(field: &str, reason: &str) -> Error {
    Error::Config {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Turns librdkafka's configuration error into ours without the offending value, which may
/// be a secret.
pub(crate) fn client_error(client: &'static str, error: KafkaError) -> Error {
    match error {
        // librdkafka's description quotes the value ("Invalid value \"...\" for
        // configuration property ..."), which may be a secret: cut it out.
        KafkaError::ClientConfig(_, description, key, value) => Error::Config {
            field: format!("properties.{key}"),
            reason: if value.is_empty() {
                description
            } else {
                description.replace(&value, "<redacted>")
            },
        },
        source => Error::Client { client, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn field_of(result: Result<KafkaConfig>) -> String {
        match result {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_safe() {
        let config = KafkaConfig::default();
        config.validate().unwrap();
        assert_eq!(config.producer.acks, Acks::All);
        assert!(config.producer.idempotence);
        assert_eq!(config.source(), "pegasus-events");
    }

    #[test]
    fn appsettings_kafka_section_shaped_like_the_seed_is_read() {
        let json = r#"{
            "Logging": { "LogLevel": { "Default": "Information" } },
            "Kafka": {
                "BootstrapServers": "localhost:29092",
                "ClientId": "shipping-api",
                "SecurityProtocol": "SaslPlaintext",
                "SaslMechanism": "Plain",
                "SaslUsername": "admin",
                "SaslPassword": "admin-secret",
                "socket.keepalive.enable": true,
                "LingerMs": 20
            }
        }"#;
        let config = KafkaConfig::from_appsettings_json(json).unwrap();
        assert_eq!(config.bootstrap_servers, "localhost:29092");
        assert_eq!(config.client_id, "shipping-api");
        assert_eq!(config.source(), "shipping-api");
        assert_eq!(config.security_protocol, SecurityProtocol::SaslPlaintext);
        assert_eq!(config.sasl_mechanism, Some(SaslMechanism::Plain));
        assert_eq!(config.sasl_username.as_deref(), Some("admin"));
        assert_eq!(
            config.sasl_password.as_ref().unwrap().expose(),
            "admin-secret"
        );
        assert_eq!(config.properties["socket.keepalive.enable"], "true");
        assert_eq!(config.producer.linger, Duration::from_millis(20));
    }

    #[test]
    fn environment_variables_override_defaults_and_pass_properties_through() {
        let config = KafkaConfig::from_env_vars(env(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092,127.0.0.1:9093"),
            ("KAFKA_CLIENT_ID", "identity-api"),
            ("KAFKA_COMPRESSION", "zstd"),
            ("KAFKA_PROPERTY_SOCKET_TIMEOUT_MS", "5000"),
            ("Kafka__SourceService", "identity"),
            ("UNRELATED", "x"),
        ]))
        .unwrap();
        assert_eq!(config.bootstrap_servers, "127.0.0.1:9092,127.0.0.1:9093");
        assert_eq!(config.client_id, "identity-api");
        assert_eq!(config.producer.compression, Compression::Zstd);
        assert_eq!(config.properties["socket.timeout.ms"], "5000");
        assert_eq!(config.source(), "identity");
    }

    #[test]
    fn bad_values_are_rejected_naming_the_field_as_written() {
        let bad_protocol = KafkaConfig::from_env_vars(env(&[("KAFKA_SECURITY_PROTOCOL", "smoke")]));
        assert_eq!(field_of(bad_protocol), "KAFKA_SECURITY_PROTOCOL");

        let bad_json = KafkaConfig::from_appsettings_json(r#"{"Kafka":{"Acks":"most"}}"#);
        assert_eq!(field_of(bad_json), "Kafka.Acks");

        let typo = KafkaConfig::from_appsettings_json(r#"{"Kafka":{"BootstrapServer":"a:1"}}"#);
        assert_eq!(field_of(typo), "Kafka.BootstrapServer");

        let no_port = KafkaConfig::from_env_vars(env(&[("KAFKA_BOOTSTRAP_SERVERS", "localhost")]));
        assert_eq!(field_of(no_port), "bootstrap_servers");

        let no_password = KafkaConfig::from_env_vars(env(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "svc"),
        ]));
        assert_eq!(field_of(no_password), "sasl_password");

        let mut weak = KafkaConfig::default();
        weak.producer.acks = Acks::Leader;
        assert_eq!(
            field_of(weak.validate().map(|()| weak.clone())),
            "producer.acks"
        );

        let shadowing = KafkaConfig::default().with_property("bootstrap.servers", "x:1");
        assert_eq!(
            field_of(shadowing.validate().map(|()| shadowing.clone())),
            "properties.bootstrap.servers"
        );

        let missing = KafkaConfig::from_appsettings_json(r#"{"Logging":{}}"#);
        assert_eq!(field_of(missing), "Kafka");
    }

    #[test]
    fn malformed_appsettings_is_a_syntax_error_with_position() {
        let err = KafkaConfig::from_appsettings_json("{\"Kafka\": {").unwrap_err();
        assert!(
            matches!(err, Error::ConfigSyntax { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn oauth_assertion_keys_and_passphrases_count_as_secrets() {
        for name in [
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.assertion.private.key.file",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
        ] {
            assert!(is_secret_property(name), "{name}");
        }
        assert!(!is_secret_property("socket.timeout.ms"));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = KafkaConfig::from_appsettings_json(
            r#"{"Kafka":{"SecurityProtocol":"SaslPlaintext","SaslMechanism":"Plain",
                "SaslUsername":"admin","SaslPassword":"hunter2-admin-secret",
                "ssl.key.password":"keypass-secret-value","socket.timeout.ms":"1000"}}"#,
        )
        .unwrap();
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter2-admin-secret"), "{shown}");
        assert!(!shown.contains("keypass-secret-value"), "{shown}");
        assert!(shown.contains("***"));
        assert!(shown.contains("socket.timeout.ms"));
        assert!(shown.contains("1000"));
    }

    #[test]
    fn librdkafka_config_errors_never_carry_the_value() {
        // librdkafka writes an enum-valued property's rejected value into its error text
        // (an integer property's text leaves it out), so a secret put into one by mistake
        // is in the error librdkafka returns. The conversion must leave it out. These
        // properties exist in every build (SSL and SASL ones do not without OpenSSL or
        // Cyrus SASL, and their error then names no value at all).
        let secret = "hunter2-sasl-secret";
        for property in [
            "broker.address.family",
            "isolation.level",
            "auto.offset.reset",
        ] {
            let Err(raw) = ClientConfig::new()
                .set(property, secret)
                .create::<rdkafka::producer::BaseProducer>()
            else {
                panic!("librdkafka accepted {property}={secret}");
            };
            match &raw {
                KafkaError::ClientConfig(_, description, key, _) => {
                    assert_eq!(key, property);
                    assert!(
                        description.contains(secret),
                        "librdkafka's own text carries the value: {description}"
                    );
                }
                other => panic!("expected a client configuration error, got {other:?}"),
            }
            let error = client_error("producer", raw);
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains(&format!("properties.{property}")), "{shown}");
        }

        // The whole way: a producer created from a configuration with such a value.
        let config = KafkaConfig::default().with_property("broker.address.family", secret);
        let error =
            crate::producer::EventProducer::new(&config).expect_err("librdkafka rejects the value");
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(
            shown.contains("properties.broker.address.family"),
            "{shown}"
        );
    }
}

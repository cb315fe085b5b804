//! The typed settings: the producer's, the enums of the connection settings, and the
//! names each setting has in appsettings (`Kafka.<Name>`) and in the environment
//! (`KAFKA_<NAME>`), with the one function that sets a setting by name for both loaders.

use std::path::PathBuf;
use std::time::Duration;

use super::secrets::Secret;
use super::tls::PemSource;
use super::validate::config_error;
use super::KafkaConfig;
use crate::error::Result;

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
    /// The outbox relay's producer waits at most 1 ms, so a quiet outbox's events are not
    /// held back.
    pub linger: Duration,
    /// Also write the design's `BaseEvent` fields (`eventId`, `occurredAt`, `eventType`,
    /// `sourceService`, camelCase as System.Text.Json's web defaults name them) at the start
    /// of each JSON payload, for .NET consumers that read them from the payload; off by
    /// default (the CloudEvents headers carry them). An event that does not serialize as a
    /// JSON object, or has a field of one of those names, then fails to publish with
    /// [`Error::Serialize`](crate::Error::Serialize). Used by the producer and the outbox.
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

            pub(super) fn expected() -> &'static str {
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
    pub(crate) fn is_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub(crate) fn is_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// Where a setting came from, so an error names it as the user wrote it.
#[derive(Clone, Copy)]
pub(super) enum Source {
    AppSettings,
    Env,
}

/// The typed settings, with their appsettings and environment names.
pub(super) const SETTINGS: &[(&str, &str)] = &[
    ("BootstrapServers", "KAFKA_BOOTSTRAP_SERVERS"),
    ("ClientId", "KAFKA_CLIENT_ID"),
    ("SourceService", "KAFKA_SOURCE_SERVICE"),
    ("SecurityProtocol", "KAFKA_SECURITY_PROTOCOL"),
    ("SaslMechanism", "KAFKA_SASL_MECHANISM"),
    ("SaslUsername", "KAFKA_SASL_USERNAME"),
    ("SaslPassword", "KAFKA_SASL_PASSWORD"),
    ("SaslPasswordFile", "KAFKA_SASL_PASSWORD_FILE"),
    ("SslCaLocation", "KAFKA_SSL_CA_LOCATION"),
    ("SslCaPem", "KAFKA_SSL_CA_PEM"),
    ("SslCertificateLocation", "KAFKA_SSL_CERTIFICATE_LOCATION"),
    ("SslCertificatePem", "KAFKA_SSL_CERTIFICATE_PEM"),
    ("SslKeyLocation", "KAFKA_SSL_KEY_LOCATION"),
    ("SslKeyPem", "KAFKA_SSL_KEY_PEM"),
    ("SslKeyPassword", "KAFKA_SSL_KEY_PASSWORD"),
    (
        "SslEndpointIdentificationAlgorithm",
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
    ),
    ("Acks", "KAFKA_ACKS"),
    ("EnableIdempotence", "KAFKA_ENABLE_IDEMPOTENCE"),
    ("CompressionType", "KAFKA_COMPRESSION"),
    ("ConnectTimeoutMs", "KAFKA_CONNECT_TIMEOUT_MS"),
    ("StatisticsIntervalMs", "KAFKA_STATISTICS_INTERVAL_MS"),
    ("DeliveryTimeoutMs", "KAFKA_DELIVERY_TIMEOUT_MS"),
    ("LingerMs", "KAFKA_LINGER_MS"),
    ("WriteBaseEventFields", "KAFKA_WRITE_BASE_EVENT_FIELDS"),
];

impl KafkaConfig {
    /// Sets one setting by its appsettings key; dotted keys are librdkafka properties.
    pub(super) fn set(&mut self, key: &str, value: String, source: Source) -> Result<()> {
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
            "SaslPassword" => self.sasl_password = Some(Secret::new(value)),
            "SaslPasswordFile" => self.sasl_password_file = Some(PathBuf::from(value)),
            "SslCaLocation" => self.tls.ca = Some(PemSource::File(PathBuf::from(value))),
            "SslCaPem" => self.tls.ca = Some(PemSource::Pem(Secret::new(value))),
            "SslCertificateLocation" => {
                self.tls.certificate = Some(PemSource::File(PathBuf::from(value)));
            }
            "SslCertificatePem" => {
                self.tls.certificate = Some(PemSource::Pem(Secret::new(value)));
            }
            "SslKeyLocation" => self.tls.key = Some(PemSource::File(PathBuf::from(value))),
            "SslKeyPem" => self.tls.key = Some(PemSource::Pem(Secret::new(value))),
            "SslKeyPassword" => self.tls.key_password = Some(Secret::new(value)),
            "SslEndpointIdentificationAlgorithm" => {
                self.tls.verify_hostname = match value.trim().to_ascii_lowercase().as_str() {
                    "https" => true,
                    // An empty value is refused, not read as "off": turning a check
                    // off must be said in so many words.
                    "none" => false,
                    _ => return Err(config_error(&field, "must be `Https` or `None`")),
                };
            }
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
            "ConnectTimeoutMs" => self.connect_timeout = Some(parse_ms(&value)?),
            "StatisticsIntervalMs" => self.statistics_interval = parse_ms(&value)?,
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
                     SaslPasswordFile, SslCaLocation, SslCaPem, SslCertificateLocation, \
                     SslCertificatePem, SslKeyLocation, SslKeyPem, SslKeyPassword, \
                     SslEndpointIdentificationAlgorithm, \
                     Acks, EnableIdempotence, CompressionType, ConnectTimeoutMs, StatisticsIntervalMs, \
                     DeliveryTimeoutMs, LingerMs, \
                     WriteBaseEventFields, \
                     or any librdkafka property by its dotted name",
                ))
            }
        }
        Ok(())
    }
}

fn parse_bool(field: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(config_error(field, "must be `true` or `false`")),
    }
}

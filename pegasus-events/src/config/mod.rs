//! Typed configuration: one set of defaults, a validation that names the bad field, and a
//! pass-through for any other librdkafka property.
//!
//! # Guarantees
//!
//! - [`KafkaConfig::default`] is the one place defaults live; every loader starts from it.
//! - [`KafkaConfig::validate`] rejects a bad value with [`Error::Config`](crate::Error::Config) naming the field
//!   as the user wrote it (`Kafka.SaslPassword`, `KAFKA_SASL_PASSWORD`, `producer.acks`).
//! - Secrets ([`Secret`] values and pass-through properties whose name says password,
//!   secret, token or key material) are shown as `***` by `Debug`, and never appear in an
//!   error message: not ours, and not librdkafka's, which we rewrite.
//!
//! # Sources
//!
//! - [`KafkaConfig::from_appsettings`]: the `Kafka` section of an `appsettings.json` shaped
//!   like the .NET services' (`BootstrapServers`, `ClientId`, `SecurityProtocol`,
//!   `SaslMechanism`, `SaslUsername`, `SaslPassword`, `SaslPasswordFile`, the TLS settings
//!   by the names of Confluent's .NET client (`SslCaLocation`, `SslCaPem`,
//!   `SslCertificateLocation`, `SslCertificatePem`, `SslKeyLocation`, `SslKeyPem`,
//!   `SslKeyPassword`, `SslEndpointIdentificationAlgorithm`), plus any librdkafka property
//!   by its dotted name, e.g. `"linger.ms": "5"`).
//! - [`KafkaConfig::from_env`]: `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_CLIENT_ID`,
//!   `KAFKA_SOURCE_SERVICE`, `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_MECHANISM`,
//!   `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, `KAFKA_SASL_PASSWORD_FILE`,
//!   `KAFKA_SSL_CA_LOCATION`, `KAFKA_SSL_CA_PEM`, `KAFKA_SSL_CERTIFICATE_LOCATION`,
//!   `KAFKA_SSL_CERTIFICATE_PEM`, `KAFKA_SSL_KEY_LOCATION`, `KAFKA_SSL_KEY_PEM`,
//!   `KAFKA_SSL_KEY_PASSWORD`, `KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM`, `KAFKA_ACKS`,
//!   `KAFKA_ENABLE_IDEMPOTENCE`,
//!   `KAFKA_COMPRESSION`, `KAFKA_DELIVERY_TIMEOUT_MS`, `KAFKA_LINGER_MS`,
//!   `KAFKA_WRITE_BASE_EVENT_FIELDS` (appsettings `WriteBaseEventFields`), and
//!   `KAFKA_PROPERTY_<NAME>` for any librdkafka property (`KAFKA_PROPERTY_SOCKET_TIMEOUT_MS`
//!   sets `socket.timeout.ms`). The .NET spelling `Kafka__BootstrapServers` works too.
//! - [`KafkaConfig::load`]: an appsettings file if it exists, then the environment on top.
//!
//! # Layout
//!
//! | file | what it holds |
//! |------|---------------|
//! | `mod.rs` | [`KafkaConfig`] and its defaults |
//! | `settings.rs` | the typed settings: [`ProducerSettings`], the enums, each setting's appsettings and environment names |
//! | `environment.rs` | reading `KAFKA_*` and `Kafka__*` variables |
//! | `appsettings.rs` | reading an `appsettings.json` |
//! | `secrets.rs` | [`Secret`], which properties are secret, redaction in `Debug` and errors |
//! | `tls.rs` | [`TlsSettings`], [`PemSource`], the SASL password file |
//! | `validate.rs` | [`KafkaConfig::validate`] and the checks shared with other settings |
//! | `librdkafka.rs` | the librdkafka configuration built from it |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

mod appsettings;
mod environment;
mod librdkafka;
mod secrets;
mod settings;
mod tls;
mod validate;

pub(crate) use appsettings::parse_json;
pub(crate) use secrets::{client_error, shown_properties};
pub use secrets::{is_secret_property, Secret};
pub use settings::{Acks, Compression, ProducerSettings, SaslMechanism, SecurityProtocol};
pub use tls::{PemSource, TlsSettings};
pub(crate) use validate::{config_error, validate_property_name, validate_topic_name};

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
    /// A file holding the SASL password (`SaslPasswordFile`, `KAFKA_SASL_PASSWORD_FILE`),
    /// for secrets mounted as files; read each time a client is created, so a restarted
    /// client picks up a rotated secret. At most one of this and
    /// [`KafkaConfig::sasl_password`] may be set.
    pub sasl_password_file: Option<PathBuf>,
    /// TLS settings: certificate authorities, the client certificate and key, host name
    /// verification. Used with the TLS protocols only.
    pub tls: TlsSettings,
    /// How long creating a producer or a topic admin, or starting a consumer or an outbox
    /// relay, waits for a broker at [`KafkaConfig::bootstrap_servers`] to answer before it
    /// fails with [`Error::BrokersUnreachable`](crate::Error::BrokersUnreachable), which
    /// names the address and the cause; 5 s by default (`ConnectTimeoutMs`,
    /// `KAFKA_CONNECT_TIMEOUT_MS`). `None` skips the check: the client connects lazily, and
    /// an unreachable broker shows up only when a publish times out.
    pub connect_timeout: Option<Duration>,
    /// How often a consumer's librdkafka client reports its statistics, from which the
    /// consumer lag gauges are set ([`crate::metrics`]); 5 s by default
    /// (`StatisticsIntervalMs`, `KAFKA_STATISTICS_INTERVAL_MS`, librdkafka's
    /// `statistics.interval.ms`). Zero turns statistics off (and the lag gauges with them);
    /// at most 24 hours. Without the `metrics` feature statistics stay off whatever it says.
    pub statistics_interval: Duration,
    /// Producer settings.
    pub producer: ProducerSettings,
    /// Any other librdkafka property, by its dotted name. A property that a typed field
    /// above controls is rejected by [`KafkaConfig::validate`], so there is one way to set
    /// each thing.
    pub properties: BTreeMap<String, String>,
}

/// The bootstrap address used when none is configured.
pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "localhost:9092";
/// The client id used when none is configured; it also prefixes the default group ids.
pub const DEFAULT_CLIENT_ID: &str = "pegasus-events";
/// How long a client waits for a broker to answer when it is created, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a consumer reports librdkafka's statistics (the lag gauges), by default.
pub const DEFAULT_STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: DEFAULT_BOOTSTRAP_SERVERS.to_owned(),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            source_service: None,
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            tls: TlsSettings::default(),
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            statistics_interval: DEFAULT_STATISTICS_INTERVAL,
            producer: ProducerSettings::default(),
            properties: BTreeMap::new(),
        }
    }
}

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

    /// Sets how long creating a client waits for a broker to answer; `None` skips the check.
    pub fn with_connect_timeout(mut self, connect_timeout: Option<Duration>) -> Self {
        self.connect_timeout = connect_timeout;
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
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;
    use rdkafka::error::KafkaError;

    use super::*;
    use crate::error::{Error, Result};

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
    fn a_connect_timeout_of_zero_or_beyond_an_hour_is_refused_and_none_skips_the_check() {
        for bad in [Duration::ZERO, Duration::from_secs(3601), Duration::MAX] {
            let config = KafkaConfig::default().with_connect_timeout(Some(bad));
            assert_eq!(
                field_of(config.validate().map(|()| config.clone())),
                "connect_timeout",
                "{bad:?}"
            );
        }
        KafkaConfig::default()
            .with_connect_timeout(None)
            .validate()
            .unwrap();
        let from_env =
            KafkaConfig::from_env_vars(env(&[("KAFKA_CONNECT_TIMEOUT_MS", "1500")])).unwrap();
        assert_eq!(from_env.connect_timeout, Some(Duration::from_millis(1500)));
        let from_file =
            KafkaConfig::from_appsettings_json(r#"{"Kafka":{"ConnectTimeoutMs":250}}"#).unwrap();
        assert_eq!(from_file.connect_timeout, Some(Duration::from_millis(250)));
        let zero = KafkaConfig::from_env_vars(env(&[("KAFKA_CONNECT_TIMEOUT_MS", "0")]));
        assert_eq!(field_of(zero), "connect_timeout");
        let not_a_number = KafkaConfig::from_env_vars(env(&[("KAFKA_CONNECT_TIMEOUT_MS", "5s")]));
        assert_eq!(field_of(not_a_number), "KAFKA_CONNECT_TIMEOUT_MS");
        assert_eq!(
            KafkaConfig::default().connect_timeout,
            Some(DEFAULT_CONNECT_TIMEOUT)
        );
    }

    #[test]
    fn a_statistics_interval_beyond_a_day_is_refused_zero_turns_it_off_and_both_sources_set_it() {
        assert_eq!(
            KafkaConfig::default().statistics_interval,
            DEFAULT_STATISTICS_INTERVAL
        );
        let mut config = KafkaConfig {
            statistics_interval: Duration::from_secs(86_401),
            ..KafkaConfig::default()
        };
        assert_eq!(
            field_of(config.validate().map(|()| config.clone())),
            "statistics_interval"
        );
        config.statistics_interval = Duration::ZERO;
        config.validate().unwrap();
        let from_env =
            KafkaConfig::from_env_vars(env(&[("KAFKA_STATISTICS_INTERVAL_MS", "250")])).unwrap();
        assert_eq!(from_env.statistics_interval, Duration::from_millis(250));
        let from_file =
            KafkaConfig::from_appsettings_json(r#"{"Kafka":{"StatisticsIntervalMs":0}}"#).unwrap();
        assert_eq!(from_file.statistics_interval, Duration::ZERO);
        let as_property = KafkaConfig::default().with_property("statistics.interval.ms", "100");
        assert_eq!(
            field_of(as_property.validate().map(|()| as_property.clone())),
            "properties.statistics.interval.ms"
        );
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
                "sasl.oauthbearer.client.secret":"keypass-secret-value","socket.timeout.ms":"1000"}}"#,
        )
        .unwrap();
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter2-admin-secret"), "{shown}");
        assert!(!shown.contains("keypass-secret-value"), "{shown}");
        assert!(shown.contains("***"));
        assert!(shown.contains("socket.timeout.ms"));
        assert!(shown.contains("1000"));
    }

    /// A file under the system's temporary directory holding `text`, removed on drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("pegasus-config-{}", uuid::Uuid::new_v4()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    // Only the `ssl` tests below read PEM text.
    #[cfg(feature = "ssl")]
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    // TLS needs the `ssl` feature; without it validation refuses the protocol first.
    #[cfg(feature = "ssl")]
    #[test]
    fn tls_settings_are_read_by_the_dotnet_names_and_their_environment_twins() {
        let ca = TempFile::new(PEM);
        let json = serde_json::json!({"Kafka": {
            "SecurityProtocol": "Ssl",
            "SslCaLocation": ca.0,
            "SslCertificatePem": PEM,
            "SslKeyPem": "-----BEGIN PRIVATE KEY-----\nkey-material-secret\n-----END PRIVATE KEY-----\n",
            "SslKeyPassword": "key-password-secret",
            "SslEndpointIdentificationAlgorithm": "None",
        }});
        let config = KafkaConfig::from_appsettings_json(&json.to_string()).unwrap();
        assert_eq!(config.tls.ca, Some(PemSource::File(ca.0.clone())));
        assert!(matches!(config.tls.certificate, Some(PemSource::Pem(_))));
        assert!(!config.tls.verify_hostname);
        let shown = format!("{config:?}");
        assert!(!shown.contains("key-material-secret"), "{shown}");
        assert!(!shown.contains("key-password-secret"), "{shown}");
        let secrets = config.secret_values(std::iter::empty());
        assert!(secrets.iter().any(|s| s.contains("key-material-secret")));
        assert!(secrets.iter().any(|s| s == "key-password-secret"));

        let from_env = KafkaConfig::from_env_vars(env(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "svc"),
            ("KAFKA_SASL_PASSWORD", "pw"),
            ("KAFKA_SSL_CA_PEM", PEM),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https"),
        ]))
        .unwrap();
        assert!(matches!(from_env.tls.ca, Some(PemSource::Pem(_))));
        assert!(from_env.tls.verify_hostname, "on by default and when asked");
        let client = from_env.client_config().unwrap();
        assert_eq!(
            client.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert_eq!(client.get("ssl.ca.pem"), Some(PEM));
    }

    // TLS needs the `ssl` feature; without it validation refuses the protocol first.
    #[cfg(feature = "ssl")]
    #[test]
    fn tls_mistakes_are_refused_naming_the_field() {
        let tls = |tls: TlsSettings| KafkaConfig {
            security_protocol: SecurityProtocol::Ssl,
            tls,
            ..KafkaConfig::default()
        };
        let missing = tls(TlsSettings {
            ca: Some(PemSource::File("/nonexistent/ca.pem".into())),
            ..TlsSettings::default()
        });
        let error = missing.validate().unwrap_err();
        assert!(
            matches!(&error, Error::Config { field, reason } if field == "tls.ca" && reason.contains("/nonexistent/ca.pem")),
            "{error}"
        );

        let not_pem = tls(TlsSettings {
            ca: Some(PemSource::Pem(Secret::new("/etc/ssl/ca.pem"))),
            ..TlsSettings::default()
        });
        assert_eq!(
            field_of(not_pem.validate().map(|()| not_pem.clone())),
            "tls.ca"
        );

        let lone_certificate = tls(TlsSettings {
            certificate: Some(PemSource::Pem(Secret::new(PEM))),
            ..TlsSettings::default()
        });
        assert_eq!(
            field_of(
                lone_certificate
                    .validate()
                    .map(|()| lone_certificate.clone())
            ),
            "tls.key"
        );

        // TLS settings on a plaintext connection would be silently ignored: refused.
        let plaintext = KafkaConfig {
            tls: TlsSettings {
                verify_hostname: false,
                ..TlsSettings::default()
            },
            ..KafkaConfig::default()
        };
        assert_eq!(
            field_of(plaintext.validate().map(|()| plaintext.clone())),
            "tls.verify_hostname"
        );

        let bad_algorithm = KafkaConfig::from_env_vars(env(&[(
            "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
            "sometimes",
        )]));
        assert_eq!(
            field_of(bad_algorithm),
            "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"
        );
        // Empty is not "off": turning verification off is said in so many words.
        let empty =
            KafkaConfig::from_env_vars(env(&[("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "")]));
        assert_eq!(
            field_of(empty),
            "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"
        );

        let as_property = KafkaConfig::default().with_property("ssl.ca.location", "/ca.pem");
        assert_eq!(
            field_of(as_property.validate().map(|()| as_property.clone())),
            "properties.ssl.ca.location"
        );
    }

    #[test]
    fn a_sasl_password_file_is_read_without_its_line_break_each_time_a_client_is_made() {
        let file = TempFile::new("first-secret\n");
        let config = KafkaConfig::from_env_vars(env(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "svc"),
            ("KAFKA_SASL_PASSWORD_FILE", file.0.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(config.sasl_password, None);
        let client = config.client_config().unwrap();
        assert_eq!(client.get("sasl.password"), Some("first-secret"));
        // A rotated secret: the next client reads the new one.
        std::fs::write(&file.0, "second-secret").unwrap();
        assert_eq!(
            config.client_config().unwrap().get("sasl.password"),
            Some("second-secret")
        );
        assert!(!format!("{config:?}").contains("second-secret"));
        assert!(config
            .secret_values(std::iter::empty())
            .contains(&"second-secret".to_owned()));

        let mut both = config.clone();
        both.sasl_password = Some(Secret::new("also"));
        assert_eq!(
            field_of(both.validate().map(|()| both.clone())),
            "sasl_password_file"
        );

        std::fs::write(&file.0, "\n").unwrap();
        assert_eq!(
            field_of(config.validate().map(|()| config.clone())),
            "sasl_password_file"
        );
        let gone = KafkaConfig {
            sasl_password_file: Some("/nonexistent/kafka-password".into()),
            ..config.clone()
        };
        let error = gone.validate().unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/kafka-password"),
            "{error}"
        );
    }

    #[test]
    fn the_principal_and_authentication_are_named_from_the_configuration() {
        let mut config = KafkaConfig::default();
        assert_eq!(config.principal(), "User:ANONYMOUS");
        config.security_protocol = SecurityProtocol::SaslSsl;
        config.sasl_mechanism = Some(SaslMechanism::ScramSha256);
        config.sasl_username = Some("shipping-api".to_owned());
        assert_eq!(config.principal(), "User:shipping-api");
        assert_eq!(
            config.authentication(),
            "SASL SCRAM-SHA-256 as `shipping-api`"
        );
        config.security_protocol = SecurityProtocol::Ssl;
        config.tls.certificate = Some(PemSource::File("/certs/shipping.pem".into()));
        assert_eq!(
            config.principal(),
            "<the subject of the client certificate /certs/shipping.pem>"
        );
        assert_eq!(config.authentication(), "a TLS client certificate");
    }

    #[tokio::test]
    async fn librdkafka_config_errors_never_carry_the_value() {
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
        let error = crate::producer::EventProducer::new(&config)
            .await
            .expect_err("librdkafka rejects the value");
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(
            shown.contains("properties.broker.address.family"),
            "{shown}"
        );
    }
}

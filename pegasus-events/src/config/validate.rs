//! [`KafkaConfig::validate`], and the checks other settings share (property names, topic
//! names): a bad value is [`Error::Config`] naming the field as the user wrote it.

use std::time::Duration;

use super::settings::Acks;
use super::settings::SaslMechanism;
use super::KafkaConfig;
use crate::error::{Error, Result};

/// The longest a client may wait for a broker when it is created.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3600);

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
    "statistics.interval.ms",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

impl KafkaConfig {
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
            match (&self.sasl_password, &self.sasl_password_file) {
                (Some(_), Some(_)) => {
                    return Err(config_error(
                        "sasl_password_file",
                        "cannot be set together with sasl_password; set one of them",
                    ));
                }
                (Some(password), None) if !password.expose().is_empty() => {}
                // Read now for the check; clients read it again when they are created.
                (None, Some(_)) => {
                    self.sasl_password_now()?;
                }
                _ => {
                    return Err(config_error(
                        "sasl_password",
                        "is required with a SASL security protocol (or sasl_password_file)",
                    ));
                }
            }
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
            || self.sasl_password_file.is_some()
        {
            let field = if self.sasl_mechanism.is_some() {
                "sasl_mechanism"
            } else if self.sasl_username.is_some() {
                "sasl_username"
            } else if self.sasl_password.is_some() {
                "sasl_password"
            } else {
                "sasl_password_file"
            };
            return Err(config_error(
                field,
                "is set but security_protocol is not SaslPlaintext or SaslSsl",
            ));
        }
        if self.security_protocol.is_tls() {
            self.tls.validate()?;
        } else if self.tls.is_set() {
            return Err(config_error(
                self.tls.first_set(),
                "is set but security_protocol is not Ssl or SaslSsl",
            ));
        }
        if let Some(timeout) = self.connect_timeout {
            if timeout.is_zero() || timeout > MAX_CONNECT_TIMEOUT {
                return Err(config_error(
                    "connect_timeout",
                    "must be between 1 ms and 1 hour (`None` in code skips the check)",
                ));
            }
        }
        // librdkafka's own bound for statistics.interval.ms.
        if self.statistics_interval > Duration::from_secs(86_400) {
            return Err(config_error(
                "statistics_interval",
                "must be at most 24 hours (zero turns statistics off)",
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

pub(crate) fn config_error(field: &str, reason: &str) -> Error {
    Error::Config {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

//! Secrets: [`Secret`] values, which librdkafka properties hold one, and keeping them out
//! of `Debug` output and of errors (ours, and librdkafka's, which quote values).

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::error::KafkaError;

use super::KafkaConfig;
use crate::error::Error;

impl KafkaConfig {
    /// The secret values of this configuration and of `more` properties (a consumer's own):
    /// the SASL password and every property named like a secret, to scrub from text that
    /// could quote them (librdkafka's lines, panic messages).
    pub(crate) fn secret_values<'p>(
        &'p self,
        more: impl Iterator<Item = (&'p String, &'p String)>,
    ) -> Vec<String> {
        // A password file that cannot be read now has nothing to scrub: no client read it.
        let password = self.sasl_password_now().ok().flatten();
        password
            .iter()
            .map(|p| p.expose().to_owned())
            .chain(self.tls.secret_values().map(str::to_owned))
            .chain(
                self.properties
                    .iter()
                    .chain(more)
                    .filter(|(name, _)| is_secret_property(name))
                    .map(|(_, value)| value.clone()),
            )
            .filter(|s| !s.is_empty())
            .collect()
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

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = shown_properties(&self.properties).collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("client_id", &self.client_id)
            .field("source_service", &self.source_service)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("sasl_password_file", &self.sasl_password_file)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("statistics_interval", &self.statistics_interval)
            .field("producer", &self.producer)
            .field("properties", &properties)
            .finish()
    }
}

/// Each property as `Debug` may show it: the value of a secret one is `***`.
pub(crate) fn shown_properties<'a, K, V>(
    properties: impl IntoIterator<Item = (&'a K, &'a V)>,
) -> impl Iterator<Item = (&'a str, &'a str)>
where
    K: AsRef<str> + ?Sized + 'a,
    V: AsRef<str> + ?Sized + 'a,
{
    properties.into_iter().map(|(name, value)| {
        let name = name.as_ref();
        let shown = if is_secret_property(name) {
            "***"
        } else {
            value.as_ref()
        };
        (name, shown)
    })
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

//! The librdkafka configuration a [`KafkaConfig`] stands for: the connection and security
//! settings every client gets, and the typed producer's.

use rdkafka::config::ClientConfig;

use super::KafkaConfig;
use crate::error::Result;

impl KafkaConfig {
    /// The librdkafka configuration shared by every client: connection and security. Fails
    /// only when the SASL password file cannot be read.
    pub(crate) fn client_config(&self) -> Result<ClientConfig> {
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
        if let Some(password) = self.sasl_password_now()? {
            config.set("sasl.password", password.expose());
        }
        if self.security_protocol.is_tls() {
            self.tls.apply(&mut config);
        }
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        Ok(config)
    }

    /// The librdkafka configuration of the typed producer.
    pub(crate) fn producer_config(&self) -> Result<ClientConfig> {
        let mut config = self.client_config()?;
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
        Ok(config)
    }
}

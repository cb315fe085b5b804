//! Reading the configuration from the environment: `KAFKA_<NAME>` for each typed setting,
//! `KAFKA_PROPERTY_<NAME>` for any librdkafka property, and the .NET spelling
//! `Kafka__<Name>`.

use super::settings::{Source, SETTINGS};
use super::KafkaConfig;
use crate::error::Result;

impl KafkaConfig {
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

    pub(super) fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<()> {
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
}

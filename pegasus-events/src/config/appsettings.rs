//! Reading the configuration from the `Kafka` section of an `appsettings.json` shaped like
//! the .NET services', and [`KafkaConfig::load`]: that file, then the environment on top.

use std::path::Path;

use super::settings::Source;
use super::validate::config_error;
use super::KafkaConfig;
use crate::error::{Error, Result};

impl KafkaConfig {
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
        let root = parse_json(text, path)?;
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
}

/// `text`, the content of the settings file `path`, as JSON; a syntax error is
/// [`Error::ConfigSyntax`] with its position. Shared by every section's reader.
pub(crate) fn parse_json(text: &str, path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::ConfigSyntax {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
    })
}

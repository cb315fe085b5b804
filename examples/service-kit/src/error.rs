//! The crate's one error type: a service's start-up failures (settings, metrics, binding).

/// Why a service could not start, or a token could not be issued.
///
/// Messages name the setting as the user wrote it (`Jwt:Secret`, `JWT_SECRET`) and why it
/// was refused, never its value: a secret or a database password must not reach a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting has a value that cannot be used.
    #[error("invalid setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting, as written in appsettings.json (`Http:Port`) or the environment
        /// (`HTTP_PORT`).
        setting: String,
        /// Why it was refused, without its value.
        reason: String,
    },
    /// A setting that has no default is not set anywhere.
    #[error("missing setting {setting}: {hint}")]
    MissingSetting {
        /// The setting, with the environment variable that sets it.
        setting: &'static str,
        /// How to set it.
        hint: &'static str,
    },
    /// appsettings.json exists but cannot be read or is not JSON.
    #[error("cannot read {path}: {reason}")]
    SettingsFile {
        /// The file.
        path: String,
        /// Why (an I/O error, or the line and column of a syntax error).
        reason: String,
    },
    /// The `Kafka` section or the `KAFKA_*` variables were refused by pegasus-events.
    #[error("Kafka settings")]
    Kafka(#[source] pegasus_events::Error),
    /// A token could not be signed (the key was refused by the JWT library).
    #[error("cannot issue a token: {0}")]
    Token(String),
    /// The Prometheus recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    /// The HTTP listener could not be bound, or the server failed.
    #[error("HTTP server on {address}")]
    Http {
        /// The address it tried.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidSetting {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

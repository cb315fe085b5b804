//! A service's settings: every value is checked before the service starts, and a bad one
//! stops the start with an [`Error`] naming the setting as the user wrote it, never its
//! value.
//!
//! Sources, later ones winning: the service's defaults, then an optional
//! `appsettings.json` in the shape the .NET services read, then the environment:
//!
//! | appsettings.json | environment | default |
//! |------------------|-------------|---------|
//! | `Kafka` section | `KAFKA_*` (pegasus-events' own loader, [`KafkaConfig::load`]) | pegasus-events' defaults, `ClientId` = the service's name |
//! | `Database:Url`, else `ConnectionStrings:<name>` | `DATABASE_URL` | the service's, e.g. `sqlite://shipping.db` |
//! | `Http:Host` | `HTTP_HOST` | `127.0.0.1` |
//! | `Http:Port` | `HTTP_PORT` | the service's, e.g. 5100 |
//! | `Jwt:Secret` | `JWT_SECRET` | none: required, at least 32 bytes |
//! | `Jwt:Issuer` | `JWT_ISSUER` | `identity-api` |
//! | `Jwt:Audience` | `JWT_AUDIENCE` | `pegasus-services` |
//! | `Jwt:ExpiryMinutes` | `JWT_EXPIRY_MINUTES` | 60 |
//!
//! The .NET spelling of a variable (`Jwt__Secret`, `Http__Port`) is read too, after the
//! upper-case one.
//!
//! A service's own settings that switch something on by naming one topic (Identity's
//! `IDENTITY_GENERAL_TOPIC`, Shipping's `SHIPPING_GENERAL_TOPIC` and
//! `SHIPPING_USER_EVENTS_TOPIC`) are read by [`TopicSwitch`], with the same sources.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use pegasus_events::{KafkaConfig, Secret};
use serde_json::Value;

use crate::Error;

/// The shortest HS256 secret accepted: 256 bits, the hash's size (RFC 7518, 3.2).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// The longest token lifetime accepted, in minutes: one week.
pub const MAX_JWT_EXPIRY_MINUTES: u64 = 7 * 24 * 60;

/// What a service uses where the user set nothing.
#[derive(Clone, Debug)]
pub struct ServiceDefaults {
    /// The Kafka client id when the `Kafka` section names none (`shipping-api`).
    pub client_id: &'static str,
    /// The database URL (`sqlite://shipping.db`).
    pub database_url: &'static str,
    /// The name under `ConnectionStrings` read when `Database:Url` is not set
    /// (`ShippingDb`).
    pub connection_string_name: &'static str,
    /// The HTTP port (5100 for Shipping, as in the design).
    pub http_port: u16,
}

/// The JWT settings shared by the service that issues tokens and those that check them.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// The HS256 key; `Debug` shows `***`.
    pub secret: Secret,
    /// The `iss` claim written and required.
    pub issuer: String,
    /// The `aud` claim written and required.
    pub audience: String,
    /// How long an issued token is valid.
    pub expiry: Duration,
}

/// Everything a service reads at start-up. Its `Debug` hides the JWT secret and the
/// database URL's password.
#[derive(Clone)]
pub struct ServiceSettings {
    /// The Kafka client settings (`Kafka` section and `KAFKA_*`).
    pub kafka: KafkaConfig,
    /// The service's own database, `sqlite:...` or `postgres://...`. May hold a password:
    /// never log it whole.
    pub database_url: String,
    /// Where the HTTP server listens.
    pub http_address: SocketAddr,
    /// Token issuing and checking.
    pub jwt: JwtSettings,
}

impl std::fmt::Debug for ServiceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSettings")
            .field("kafka", &self.kafka)
            .field("database_url", &redact_password(&self.database_url))
            .field("http_address", &self.http_address)
            .field("jwt", &self.jwt)
            .finish()
    }
}

/// `url` with the password of its user info, if any, replaced by `***`
/// (`postgres://app:***@db/shipping`).
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl ServiceSettings {
    /// Reads `path` if it exists, then the process environment, and checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::SettingsFile`] when the file exists but cannot be read as JSON,
    /// [`Error::Kafka`] when pegasus-events refuses the `Kafka` section or a `KAFKA_*`
    /// variable (a file without a `Kafka` section is refused there), and
    /// [`Error::InvalidSetting`] / [`Error::MissingSetting`] for the settings above.
    pub fn load(path: impl AsRef<Path>, defaults: &ServiceDefaults) -> Result<Self, Error> {
        let path = path.as_ref();
        let file = if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::SettingsFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let json: Value = serde_json::from_str(&text).map_err(|e| Error::SettingsFile {
                path: path.display().to_string(),
                // Line and column only: serde's message could quote a value.
                reason: format!("not valid JSON at line {}, column {}", e.line(), e.column()),
            })?;
            Some(json)
        } else {
            None
        };
        let kafka = KafkaConfig::load(path).map_err(Error::Kafka)?;
        Self::from_parts(
            kafka,
            file.as_ref(),
            &|name| std::env::var(name).ok(),
            defaults,
        )
    }

    /// Builds the settings from a Kafka configuration loaded already, the parsed
    /// appsettings.json (if any) and an environment lookup; [`ServiceSettings::load`] with
    /// the sources given, for tests and for callers with their own sources.
    ///
    /// # Errors
    ///
    /// As [`ServiceSettings::load`], except for reading the file.
    pub fn from_parts(
        mut kafka: KafkaConfig,
        file: Option<&Value>,
        env: &dyn Fn(&str) -> Option<String>,
        defaults: &ServiceDefaults,
    ) -> Result<Self, Error> {
        let sources = Sources { file, env };
        if kafka.client_id == KafkaConfig::default().client_id {
            kafka.client_id = defaults.client_id.to_owned();
        }

        let database_url = match sources.get(&["Database", "Url"], "DATABASE_URL") {
            Some(found) => found,
            None => {
                match sources.file_value(&["ConnectionStrings", defaults.connection_string_name]) {
                    Some(value) => Found {
                        value,
                        name: format!("ConnectionStrings:{}", defaults.connection_string_name),
                    },
                    None => Found::default_value(defaults.database_url, "DATABASE_URL"),
                }
            }
        };
        let database_url = check_database_url(database_url)?;

        let host = match sources.get(&["Http", "Host"], "HTTP_HOST") {
            Some(found) => found.value.trim().parse::<IpAddr>().map_err(|_| {
                Error::invalid(
                    found.name,
                    "must be an IP address such as 127.0.0.1 or 0.0.0.0",
                )
            })?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let port =
            match sources.get(&["Http", "Port"], "HTTP_PORT") {
                Some(found) => found.value.trim().parse::<u16>().map_err(|_| {
                    Error::invalid(found.name, "must be a port number from 0 to 65535")
                })?,
                None => defaults.http_port,
            };

        let secret =
            sources
                .get(&["Jwt", "Secret"], "JWT_SECRET")
                .ok_or(Error::MissingSetting {
                    setting: "Jwt:Secret (JWT_SECRET)",
                    hint: "set a random string of at least 32 bytes, the same for every service",
                })?;
        if secret.value.len() < MIN_JWT_SECRET_BYTES {
            return Err(Error::invalid(
                secret.name,
                format!("must be at least {MIN_JWT_SECRET_BYTES} bytes long"),
            ));
        }
        let issuer = non_empty(
            sources
                .get(&["Jwt", "Issuer"], "JWT_ISSUER")
                .unwrap_or_else(|| Found::default_value("identity-api", "JWT_ISSUER")),
        )?;
        let audience = non_empty(
            sources
                .get(&["Jwt", "Audience"], "JWT_AUDIENCE")
                .unwrap_or_else(|| Found::default_value("pegasus-services", "JWT_AUDIENCE")),
        )?;
        let expiry = match sources.get(&["Jwt", "ExpiryMinutes"], "JWT_EXPIRY_MINUTES") {
            Some(found) => match found.value.trim().parse::<u64>() {
                Ok(minutes @ 1..=MAX_JWT_EXPIRY_MINUTES) => Duration::from_secs(minutes * 60),
                _ => {
                    return Err(Error::invalid(
                        found.name,
                        format!(
                            "must be a whole number of minutes from 1 to {MAX_JWT_EXPIRY_MINUTES}"
                        ),
                    ))
                }
            },
            None => Duration::from_secs(60 * 60),
        };

        Ok(ServiceSettings {
            kafka,
            database_url,
            http_address: SocketAddr::new(host, port),
            jwt: JwtSettings {
                secret: Secret::new(secret.value),
                issuer,
                audience,
                expiry,
            },
        })
    }
}

/// A setting that switches something on by naming the one topic it concerns, such as
/// Identity's `IDENTITY_GENERAL_TOPIC=identity-events`: off when unset or empty, on when
/// it names [`TopicSwitch::topic`], refused otherwise. The topic cannot be chosen because
/// pegasus-events binds each event type to its topic at compile time; naming it keeps the
/// setting readable and a typo loud.
///
/// Read from the environment (`env`, then the .NET spelling `Section__Key`), else from
/// appsettings.json at `Section:Key`. Not under `Kafka`: pegasus-events reads that section
/// and refuses keys it does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSwitch {
    /// The appsettings.json section, e.g. `Identity`.
    pub section: &'static str,
    /// The key in that section, e.g. `GeneralTopic`.
    pub key: &'static str,
    /// The environment variable, e.g. `IDENTITY_GENERAL_TOPIC`.
    pub env: &'static str,
    /// The one topic the setting may name, e.g. `identity-events`.
    pub topic: &'static str,
}

impl TopicSwitch {
    /// Whether the switch is on, from the parsed appsettings.json (if any) and an
    /// environment lookup (`|name| std::env::var(name).ok()` in a service).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSetting`] naming the setting as found (`IDENTITY_GENERAL_TOPIC`,
    /// `Identity:GeneralTopic`) when it names another topic or, in the file, is not a
    /// string.
    pub fn read(
        &self,
        file: Option<&Value>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<bool, Error> {
        let dotnet = format!("{}__{}", self.section, self.key);
        let from_env = [self.env, dotnet.as_str()]
            .into_iter()
            .find_map(|name| env(name).map(|value| (value, name.to_owned())));
        let (value, setting) = match from_env {
            Some(found) => found,
            None => {
                let setting = format!("{}:{}", self.section, self.key);
                match file
                    .and_then(|json| json.get(self.section))
                    .and_then(|section| section.get(self.key))
                {
                    None | Some(Value::Null) => return Ok(false),
                    Some(Value::String(value)) => (value.clone(), setting),
                    Some(_) => return Err(self.refused(setting)),
                }
            }
        };
        match value.trim() {
            "" => Ok(false),
            named if named == self.topic => Ok(true),
            _ => Err(self.refused(setting)),
        }
    }

    fn refused(&self, setting: String) -> Error {
        Error::invalid(
            setting,
            format!(
                "must be {} or empty (event types are bound to their topics at compile time)",
                self.topic
            ),
        )
    }
}

/// A value and the name of the setting it came from, for error messages.
struct Found {
    value: String,
    name: String,
}

impl Found {
    fn default_value(value: &str, name: &str) -> Self {
        Found {
            value: value.to_owned(),
            name: name.to_owned(),
        }
    }
}

struct Sources<'a> {
    file: Option<&'a Value>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    /// The environment's value (`NAME`, then the .NET `Section__Key`), else the file's.
    fn get(&self, path: &[&str], env_name: &str) -> Option<Found> {
        let dotnet = path.join("__");
        for name in [env_name, dotnet.as_str()] {
            if let Some(value) = (self.env)(name) {
                return Some(Found {
                    value,
                    name: name.to_owned(),
                });
            }
        }
        self.file_value(path).map(|value| Found {
            value,
            name: path.join(":"),
        })
    }

    /// A string or number at `path` in the file; numbers as written, so a port may be
    /// `5100` or `"5100"`.
    fn file_value(&self, path: &[&str]) -> Option<String> {
        let mut at = self.file?;
        for key in path {
            at = at.get(key)?;
        }
        match at {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            // Present but not a scalar: report it as a value no check accepts.
            Value::Array(_) | Value::Object(_) => Some(String::new()),
            Value::Null => None,
        }
    }
}

fn non_empty(found: Found) -> Result<String, Error> {
    let value = found.value.trim();
    if value.is_empty() {
        return Err(Error::invalid(found.name, "must not be empty"));
    }
    Ok(value.to_owned())
}

fn check_database_url(found: Found) -> Result<String, Error> {
    let value = found.value.trim();
    let known = ["sqlite:", "postgres://", "postgresql://"];
    if !known.iter().any(|scheme| value.starts_with(scheme)) {
        // Not the value: a PostgreSQL URL carries its password.
        return Err(Error::invalid(
            found.name,
            "must start with sqlite:, postgres:// or postgresql://",
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn defaults() -> ServiceDefaults {
        ServiceDefaults {
            client_id: "shipping-api",
            database_url: "sqlite://shipping.db",
            connection_string_name: "ShippingDb",
            http_port: 5100,
        }
    }

    fn settings(file: Option<Value>, env: &[(&str, &str)]) -> Result<ServiceSettings, Error> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ServiceSettings::from_parts(
            KafkaConfig::default(),
            file.as_ref(),
            &|name| env.get(name).cloned(),
            &defaults(),
        )
    }

    fn invalid_setting(result: Result<ServiceSettings, Error>) -> (String, String) {
        match result {
            Err(Error::InvalidSetting { setting, reason }) => (setting, reason),
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_when_only_the_secret_is_set() {
        let settings = settings(None, &[("JWT_SECRET", SECRET)]).expect("valid");
        assert_eq!(settings.kafka.client_id, "shipping-api");
        assert_eq!(settings.database_url, "sqlite://shipping.db");
        assert_eq!(
            settings.http_address,
            "127.0.0.1:5100".parse().expect("address")
        );
        assert_eq!(settings.jwt.issuer, "identity-api");
        assert_eq!(settings.jwt.expiry, Duration::from_secs(3600));
        assert_eq!(format!("{:?}", settings.jwt.secret), "***");
        assert!(!format!("{settings:?}").contains(SECRET));
    }

    #[test]
    fn the_file_is_read_and_the_environment_wins() {
        let file = serde_json::json!({
            "ConnectionStrings": { "ShippingDb": "postgres://db/shipping" },
            "Http": { "Port": 6000, "Host": "0.0.0.0" },
            "Jwt": { "Secret": SECRET, "Issuer": "file-issuer", "ExpiryMinutes": "15" }
        });
        let from_file = settings(Some(file.clone()), &[]).expect("valid");
        assert_eq!(from_file.database_url, "postgres://db/shipping");
        assert_eq!(
            from_file.http_address,
            "0.0.0.0:6000".parse().expect("address")
        );
        assert_eq!(from_file.jwt.issuer, "file-issuer");
        assert_eq!(from_file.jwt.expiry, Duration::from_secs(15 * 60));

        let overridden = settings(
            Some(file),
            &[
                ("DATABASE_URL", "sqlite:///tmp/x.db"),
                ("Http__Port", "7000"),
                ("JWT_ISSUER", "env-issuer"),
            ],
        )
        .expect("valid");
        assert_eq!(overridden.database_url, "sqlite:///tmp/x.db");
        assert_eq!(overridden.http_address.port(), 7000);
        assert_eq!(overridden.jwt.issuer, "env-issuer");
    }

    #[test]
    fn a_bad_port_names_the_setting() {
        let (setting, _) = invalid_setting(settings(
            None,
            &[("JWT_SECRET", SECRET), ("HTTP_PORT", "80a")],
        ));
        assert_eq!(setting, "HTTP_PORT");
        let file = serde_json::json!({ "Http": { "Port": 70000 } });
        let (setting, _) = invalid_setting(settings(Some(file), &[("JWT_SECRET", SECRET)]));
        assert_eq!(setting, "Http:Port");
    }

    #[test]
    fn a_missing_empty_or_short_secret_is_refused_without_its_value() {
        assert!(matches!(
            settings(None, &[]),
            Err(Error::MissingSetting { setting, .. }) if setting.contains("Jwt:Secret")
        ));
        let (setting, _) = invalid_setting(settings(None, &[("JWT_SECRET", "")]));
        assert_eq!(setting, "JWT_SECRET");
        let short = "too-short-secret-0123456789";
        let error = settings(None, &[("JWT_SECRET", short)]).expect_err("refused");
        let message = error.to_string();
        assert!(message.contains("JWT_SECRET"), "{message}");
        assert!(!message.contains(short), "{message}");
    }

    #[test]
    fn a_database_url_of_another_kind_is_refused_without_its_value() {
        let url = "mysql://admin:hunter2@db/shipping";
        let error =
            settings(None, &[("JWT_SECRET", SECRET), ("DATABASE_URL", url)]).expect_err("refused");
        let message = error.to_string();
        assert!(message.contains("DATABASE_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn bad_jwt_settings_name_the_setting() {
        let (setting, _) = invalid_setting(settings(
            None,
            &[("JWT_SECRET", SECRET), ("JWT_EXPIRY_MINUTES", "0")],
        ));
        assert_eq!(setting, "JWT_EXPIRY_MINUTES");
        let file = serde_json::json!({ "Jwt": { "Secret": SECRET, "Audience": " " } });
        let (setting, _) = invalid_setting(settings(Some(file), &[]));
        assert_eq!(setting, "Jwt:Audience");
        let (setting, _) = invalid_setting(settings(
            None,
            &[("JWT_SECRET", SECRET), ("HTTP_HOST", "local")],
        ));
        assert_eq!(setting, "HTTP_HOST");
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        assert_eq!(
            redact_password("postgres://app:hunter2@db:5432/shipping?sslmode=require"),
            "postgres://app:***@db:5432/shipping?sslmode=require"
        );
        assert_eq!(
            redact_password("postgres://app@db/shipping"),
            "postgres://app@db/shipping"
        );
        assert_eq!(
            redact_password("sqlite://shipping.db"),
            "sqlite://shipping.db"
        );
        let settings = settings(
            None,
            &[
                ("JWT_SECRET", SECRET),
                ("DATABASE_URL", "postgres://app:hunter2@db/s"),
            ],
        )
        .expect("valid");
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(SECRET),
            "{shown}"
        );
    }

    #[test]
    fn a_topic_switch_is_off_unless_it_names_its_topic_and_refuses_other_names() {
        let switch = TopicSwitch {
            section: "Identity",
            key: "GeneralTopic",
            env: "IDENTITY_GENERAL_TOPIC",
            topic: "identity-events",
        };
        let none = |_: &str| None;
        assert!(!switch.read(None, &none).expect("off when unset"));
        let file = serde_json::json!({ "Identity": { "GeneralTopic": "identity-events" } });
        assert!(switch.read(Some(&file), &none).expect("on from the file"));
        let padded =
            |name: &str| (name == "IDENTITY_GENERAL_TOPIC").then(|| " identity-events ".to_owned());
        assert!(switch.read(None, &padded).expect("on from the environment"));
        let dotnet =
            |name: &str| (name == "Identity__GeneralTopic").then(|| "identity-events".to_owned());
        assert!(switch
            .read(None, &dotnet)
            .expect("on from the .NET spelling"));
        let empty = |_: &str| Some(String::new());
        assert!(!switch
            .read(Some(&file), &empty)
            .expect("the environment wins"));
        let other = |_: &str| Some("user-events".to_owned());
        match switch.read(None, &other) {
            Err(Error::InvalidSetting { setting, reason }) => {
                assert_eq!(setting, "IDENTITY_GENERAL_TOPIC");
                assert!(reason.contains("identity-events"), "{reason}");
            }
            result => panic!("{result:?}"),
        }
        for value in [
            serde_json::json!(1),
            serde_json::json!(true),
            serde_json::json!([]),
        ] {
            let file = serde_json::json!({ "Identity": { "GeneralTopic": value } });
            match switch.read(Some(&file), &none) {
                Err(Error::InvalidSetting { setting, .. }) => {
                    assert_eq!(setting, "Identity:GeneralTopic");
                }
                result => panic!("{value}: {result:?}"),
            }
        }
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("service-kit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("appsettings.json");
        std::fs::write(&path, "{ \"Jwt\": ").expect("written");
        let error = ServiceSettings::load(&path, &defaults()).expect_err("refused");
        assert!(matches!(error, Error::SettingsFile { .. }), "{error:?}");
        assert!(error.to_string().contains("appsettings.json"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! TLS settings: the certificate authorities to trust, the client certificate and key for
//! mutual TLS, and host name verification; and a SASL password read from a file.
//!
//! Each certificate or key is given either as a path (`SslCaLocation`) or as PEM text
//! (`SslCaPem`), the names Confluent's .NET client uses, so a service's `appsettings.json`
//! reads the same in Rust and .NET. Host name verification is on unless turned off in so
//! many words (`SslEndpointIdentificationAlgorithm: None`), and every client created with it
//! off logs a warning.

use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::config::ClientConfig;

use super::secrets::Secret;
use super::validate::config_error;
use super::KafkaConfig;
use crate::error::Result;

/// Where a PEM certificate or key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file holding PEM text (`SslCaLocation`, `SslCertificateLocation`,
    /// `SslKeyLocation`).
    File(PathBuf),
    /// The PEM text itself (`SslCaPem`, `SslCertificatePem`, `SslKeyPem`), for values
    /// handed over in an environment variable. Shown as `***` by `Debug`, since a key is a
    /// secret and the others are long.
    Pem(Secret),
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => f.debug_tuple("File").field(path).finish(),
            PemSource::Pem(_) => f.write_str("Pem(***)"),
        }
    }
}

/// TLS settings, used with [`SecurityProtocol::Ssl`](super::SecurityProtocol::Ssl) and
/// [`SecurityProtocol::SaslSsl`](super::SecurityProtocol::SaslSsl) (the `ssl` feature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate authorities that sign the brokers' certificates; the system's
    /// trusted authorities when `None` (what a managed Kafka's public certificates need).
    pub ca: Option<PemSource>,
    /// The client certificate presented to a broker that asks for one (mutual TLS); the
    /// broker then knows the client by the certificate's subject.
    pub certificate: Option<PemSource>,
    /// The client certificate's private key.
    pub key: Option<PemSource>,
    /// The password of an encrypted private key.
    pub key_password: Option<Secret>,
    /// Whether the broker's certificate must name the host connected to (its subject
    /// alternative names): on by default. Turning it off lets any certificate signed by a
    /// trusted authority stand in for any broker; each client created so logs a warning.
    pub verify_hostname: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            ca: None,
            certificate: None,
            key: None,
            key_password: None,
            verify_hostname: true,
        }
    }
}

impl TlsSettings {
    /// Whether anything differs from the defaults (which a plaintext connection must keep).
    pub(super) fn is_set(&self) -> bool {
        *self != TlsSettings::default()
    }

    /// The first setting that is given, by its field name, for errors.
    pub(super) fn first_set(&self) -> &'static str {
        if self.ca.is_some() {
            "tls.ca"
        } else if self.certificate.is_some() {
            "tls.certificate"
        } else if self.key.is_some() {
            "tls.key"
        } else if self.key_password.is_some() {
            "tls.key_password"
        } else {
            "tls.verify_hostname"
        }
    }

    /// Checks that the files named exist and can be read, and that a certificate comes
    /// with its key.
    pub(super) fn validate(&self) -> Result<()> {
        for (field, source) in [
            ("tls.ca", &self.ca),
            ("tls.certificate", &self.certificate),
            ("tls.key", &self.key),
        ] {
            match source {
                Some(PemSource::File(path)) => readable(field, path)?,
                Some(PemSource::Pem(pem)) if !pem.expose().contains("-----BEGIN ") => {
                    return Err(config_error(
                        field,
                        "is not PEM text (no `-----BEGIN` line); give a file with the \
                         ...Location setting instead",
                    ));
                }
                _ => {}
            }
        }
        match (&self.certificate, &self.key) {
            (Some(_), None) => Err(config_error(
                "tls.key",
                "is required with a client certificate (tls.certificate)",
            )),
            (None, Some(_)) => Err(config_error(
                "tls.certificate",
                "is required with a client key (tls.key)",
            )),
            _ => Ok(()),
        }
    }

    /// Sets the librdkafka properties these settings stand for.
    pub(super) fn apply(&self, config: &mut ClientConfig) {
        let pairs = [
            (&self.ca, "ssl.ca.location", "ssl.ca.pem"),
            (
                &self.certificate,
                "ssl.certificate.location",
                "ssl.certificate.pem",
            ),
            (&self.key, "ssl.key.location", "ssl.key.pem"),
        ];
        for (source, location, pem) in pairs {
            match source {
                Some(PemSource::File(path)) => {
                    config.set(location, path.to_string_lossy());
                }
                Some(PemSource::Pem(text)) => {
                    config.set(pem, text.expose());
                }
                None => {}
            }
        }
        if let Some(password) = &self.key_password {
            config.set("ssl.key.password", password.expose());
        }
        config.set(
            "ssl.endpoint.identification.algorithm",
            if self.verify_hostname {
                "https"
            } else {
                "none"
            },
        );
    }

    /// The secret values to scrub from text: the key and its password.
    pub(super) fn secret_values(&self) -> impl Iterator<Item = &str> {
        let key = match &self.key {
            Some(PemSource::Pem(pem)) => Some(pem.expose()),
            _ => None,
        };
        key.into_iter()
            .chain(self.key_password.as_ref().map(Secret::expose))
    }
}

impl KafkaConfig {
    /// The principal a broker knows this client by, as far as the configuration tells it:
    /// `User:<user name>` with SASL, the subject of the client certificate with TLS and a
    /// client certificate (the broker's mapping rules make the principal of it), else
    /// `User:ANONYMOUS`. Errors name it; it holds no secret.
    pub fn principal(&self) -> String {
        if self.security_protocol.is_sasl() {
            if let Some(user) = &self.sasl_username {
                return format!("User:{user}");
            }
        }
        if self.security_protocol.is_tls() {
            match &self.tls.certificate {
                Some(PemSource::File(path)) => {
                    return format!("<the subject of the client certificate {}>", path.display())
                }
                Some(PemSource::Pem(_)) => {
                    return "<the subject of the client certificate>".to_owned()
                }
                None => {}
            }
        }
        "User:ANONYMOUS".to_owned()
    }

    /// How this client authenticates, for messages: `SASL SCRAM-SHA-256 as `svc``, `a TLS
    /// client certificate`, `no authentication`.
    pub(crate) fn authentication(&self) -> String {
        match (self.security_protocol.is_sasl(), self.sasl_mechanism) {
            (true, Some(mechanism)) => format!(
                "SASL {} as `{}`",
                mechanism.as_rdkafka(),
                self.sasl_username.as_deref().unwrap_or("")
            ),
            _ if self.security_protocol.is_tls() && self.tls.certificate.is_some() => {
                "a TLS client certificate".to_owned()
            }
            _ => "no authentication".to_owned(),
        }
    }

    /// The SASL password: [`KafkaConfig::sasl_password`], or the content of
    /// [`KafkaConfig::sasl_password_file`] read now (without its trailing line break), so a
    /// client created after the mounted secret was rotated uses the new password.
    pub(crate) fn sasl_password_now(&self) -> Result<Option<Secret>> {
        if let Some(password) = &self.sasl_password {
            return Ok(Some(password.clone()));
        }
        let Some(path) = &self.sasl_password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            config_error(
                "sasl_password_file",
                &format!("cannot read {}: {}", path.display(), e.kind()),
            )
        })?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(config_error(
                "sasl_password_file",
                &format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(Secret::new(password)))
    }
}

fn readable(field: &str, path: &Path) -> Result<()> {
    std::fs::File::open(path).map(drop).map_err(|e| {
        config_error(
            field,
            &format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })
}

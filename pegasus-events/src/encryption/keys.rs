//! Keys: [`EncryptionKey`], the [`KeyProvider`] trait, and [`KeyRing`], the default
//! provider, read from configuration.
//!
//! # Why the provider is synchronous
//!
//! [`KeyProvider`] is asked once per encrypted field, on the publish and the consume paths.
//! Keys of a ring are few and long-lived, so a provider holds them in memory and answers at
//! once; a synchronous trait costs no boxed future per field and lets the ring's lookup be
//! a map access. A provider backed by a remote key service (a KMS) should fetch and refresh
//! its keys in the background and answer from memory here. Per-subject keys, which live in
//! a database and are created on first use, go through the asynchronous
//! [`SubjectKeyStore`](super::SubjectKeyStore) instead.
//!
//! # Rotation
//!
//! A ring has one current key, used for writing, and any number of older keys, used for
//! reading. To rotate: add the new key to every reader's ring first, then make it current
//! on the writers; records written under the old key still decode as long as the old key
//! stays in the ring. A record whose key id is not in the ring is a decode error
//! ([`Error::UnknownEncryptionKey`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;

use crate::config::config_error;
use crate::error::{Error, Result};

/// One AES-256 key and its id. Cheap to clone (shared); `Debug` shows the id only.
#[derive(Clone)]
pub struct EncryptionKey {
    id: Arc<str>,
    cipher: Arc<Aes256Gcm>,
}

impl EncryptionKey {
    /// A key named `id` (1 to 1024 bytes of UTF-8) from its 32 bytes.
    pub fn new(id: impl Into<String>, bytes: [u8; 32]) -> Result<Self> {
        let id = id.into();
        if id.is_empty() || id.len() > super::envelope::MAX_KEY_ID_LEN {
            return Err(config_error(
                "Encryption.Keys",
                "a key id is 1 to 1024 bytes long",
            ));
        }
        Ok(EncryptionKey {
            id: id.into(),
            cipher: Arc::new(Aes256Gcm::new(&bytes.into())),
        })
    }

    /// A key named `id` from the standard base64 (with padding) of its 32 bytes, as the
    /// configuration holds it; `field` names the setting in an error, which never shows
    /// the value.
    pub fn from_base64(id: impl Into<String>, base64: &str, field: &str) -> Result<Self> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(base64.trim())
            .map_err(|_| config_error(field, "not standard base64"))?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|bytes: Vec<u8>| {
            config_error(
                field,
                &format!("an AES-256 key is 32 bytes, this one is {}", bytes.len()),
            )
        })?;
        EncryptionKey::new(id, bytes)
    }

    /// The key's id, written into every value encrypted under it.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.id)
            .field("key", &"***")
            .finish()
    }
}

/// Where the keys of `#[event(encrypted)]` fields come from: one current key for writing,
/// any key by id for reading. See the module docs for why it is synchronous.
pub trait KeyProvider: Send + Sync + fmt::Debug + 'static {
    /// The key new values are encrypted under; an error when there is none (a ring made
    /// for reading only).
    fn current_key(&self) -> Result<EncryptionKey>;

    /// The key named `id`, if the provider holds it.
    fn key(&self, id: &str) -> Option<EncryptionKey>;
}

/// The default [`KeyProvider`]: a fixed set of keys by id and the id of the current one.
///
/// Loaded from the `Encryption` section of appsettings.json and from the environment like
/// [`KafkaConfig`](crate::KafkaConfig) ([`KeyRing::load`]):
///
/// ```json
/// { "Encryption": { "CurrentKeyId": "2026-02", "Keys": { "2026-01": "<base64>", "2026-02": "<base64>" } } }
/// ```
///
/// Environment: `Encryption__CurrentKeyId` and `Encryption__Keys__<id>` (the .NET
/// spelling), or `PEGASUS_ENCRYPTION_CURRENT_KEY_ID` and `PEGASUS_ENCRYPTION_KEY_<id>`.
/// Each key is the standard base64 of 32 random bytes (`openssl rand -base64 32`).
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, EncryptionKey>,
    current: Option<String>,
}

impl KeyRing {
    /// A ring with `keys`, writing under `current`, which must be one of them.
    pub fn new(current: &str, keys: impl IntoIterator<Item = EncryptionKey>) -> Result<Self> {
        let mut ring = KeyRing::default();
        for key in keys {
            ring.keys.insert(key.id().to_owned(), key);
        }
        ring.set_current(current)?;
        Ok(ring)
    }

    /// A ring for reading only: it decrypts with `keys` and refuses to encrypt.
    pub fn reading_only(keys: impl IntoIterator<Item = EncryptionKey>) -> Self {
        KeyRing {
            keys: keys.into_iter().map(|k| (k.id().to_owned(), k)).collect(),
            current: None,
        }
    }

    /// Makes `id`, a key of the ring, the current one.
    pub fn set_current(&mut self, id: &str) -> Result<()> {
        if !self.keys.contains_key(id) {
            return Err(config_error(
                "Encryption.CurrentKeyId",
                &format!("`{id}` is not one of the ring's key ids"),
            ));
        }
        self.current = Some(id.to_owned());
        Ok(())
    }

    /// Adds `key` (replacing a key with the same id).
    pub fn insert(&mut self, key: EncryptionKey) {
        self.keys.insert(key.id().to_owned(), key);
    }

    /// Reads the `Encryption` section of `path` if the file exists, then the environment
    /// on top (as [`KafkaConfig::load`](crate::KafkaConfig::load) does).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut settings = RingSettings::default();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
                path: path.to_owned(),
                source,
            })?;
            settings.read_appsettings(&text, path)?;
        }
        settings.read_env(std::env::vars());
        settings.build()
    }

    /// The ring from the `Encryption` section of an appsettings.json text.
    pub fn from_appsettings_json(json: &str) -> Result<Self> {
        let mut settings = RingSettings::default();
        settings.read_appsettings(json, Path::new("appsettings.json"))?;
        settings.build()
    }

    /// The ring from the process environment.
    pub fn from_env() -> Result<Self> {
        KeyRing::from_env_vars(std::env::vars())
    }

    /// The ring from the given variables, read as [`KeyRing::from_env`] reads them.
    pub fn from_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut settings = RingSettings::default();
        settings.read_env(vars);
        settings.build()
    }

    /// The ids of the ring's keys, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The current key's id.
    pub fn current_key_id(&self) -> Option<&str> {
        self.current.as_deref()
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyProvider for KeyRing {
    fn current_key(&self) -> Result<EncryptionKey> {
        self.current
            .as_ref()
            .and_then(|id| self.keys.get(id))
            .cloned()
            .ok_or(Error::EncryptionNotConfigured {
                event_type: "",
                missing: "the key ring has no current key to write with (it is for reading only)",
            })
    }

    fn key(&self, id: &str) -> Option<EncryptionKey> {
        self.keys.get(id).cloned()
    }
}

/// The settings as read, before the keys are decoded; each key remembers the setting it
/// came from, for errors.
#[derive(Default)]
struct RingSettings {
    current: Option<String>,
    /// id -> (setting name, base64)
    keys: BTreeMap<String, (String, String)>,
}

impl RingSettings {
    fn read_appsettings(&mut self, text: &str, path: &Path) -> Result<()> {
        let root = crate::config::parse_json(text, path)?;
        let Some(section) = root.get("Encryption") else {
            return Ok(());
        };
        let serde_json::Value::Object(section) = section else {
            return Err(config_error("Encryption", "must be a JSON object"));
        };
        for (name, value) in section {
            match (name.as_str(), value) {
                ("CurrentKeyId", serde_json::Value::String(id)) => self.current = Some(id.clone()),
                ("Keys", serde_json::Value::Object(keys)) => {
                    for (id, key) in keys {
                        let field = format!("Encryption.Keys.{id}");
                        let serde_json::Value::String(key) = key else {
                            return Err(config_error(&field, "must be a base64 string"));
                        };
                        self.keys.insert(id.clone(), (field, key.clone()));
                    }
                }
                ("CurrentKeyId" | "Keys", _) => {
                    return Err(config_error(
                        &format!("Encryption.{name}"),
                        "CurrentKeyId is a string; Keys an object of id: base64 key",
                    ))
                }
                _ => {
                    return Err(config_error(
                        &format!("Encryption.{name}"),
                        "unknown setting; expected `CurrentKeyId` or `Keys`",
                    ))
                }
            }
        }
        Ok(())
    }

    fn read_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in vars {
            if name == "Encryption__CurrentKeyId" || name == "PEGASUS_ENCRYPTION_CURRENT_KEY_ID" {
                self.current = Some(value);
            } else if let Some(id) = name
                .strip_prefix("Encryption__Keys__")
                .or_else(|| name.strip_prefix("PEGASUS_ENCRYPTION_KEY_"))
            {
                self.keys.insert(id.to_owned(), (name.clone(), value));
            }
        }
    }

    fn build(self) -> Result<KeyRing> {
        let mut ring = KeyRing::default();
        for (id, (field, base64)) in self.keys {
            ring.insert(EncryptionKey::from_base64(id, &base64, &field)?);
        }
        if let Some(current) = self.current {
            ring.set_current(&current)?;
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[test]
    fn a_ring_is_read_from_appsettings_and_the_environment_and_never_shows_a_key() {
        let json = format!(
            r#"{{"Kafka":{{}},"Encryption":{{"CurrentKeyId":"k2","Keys":{{"k1":"{K1}","k2":"{K2}"}}}}}}"#
        );
        let ring = KeyRing::from_appsettings_json(&json).unwrap();
        assert_eq!(ring.current_key().unwrap().id(), "k2");
        assert!(ring.key("k1").is_some() && ring.key("k3").is_none());
        let shown = format!("{ring:?} {:?}", ring.current_key().unwrap());
        assert!(
            !shown.contains(K1) && !shown.contains(K2) && !shown.contains("AgIC"),
            "{shown}"
        );

        let env = [
            ("Encryption__Keys__a".to_owned(), K1.to_owned()),
            ("PEGASUS_ENCRYPTION_KEY_b".to_owned(), K2.to_owned()),
            (
                "PEGASUS_ENCRYPTION_CURRENT_KEY_ID".to_owned(),
                "b".to_owned(),
            ),
        ];
        let ring = KeyRing::from_env_vars(env).unwrap();
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(ring.current_key_id(), Some("b"));
    }

    #[test]
    fn a_bad_key_or_current_id_is_a_config_error_that_names_the_setting_not_the_value() {
        let short = "AQEBAQ==";
        let cases = [
            (
                format!(r#"{{"Encryption":{{"Keys":{{"k1":"{short}"}}}}}}"#),
                "Encryption.Keys.k1",
                "32 bytes",
            ),
            (
                r#"{"Encryption":{"Keys":{"k1":"???"}}}"#.to_owned(),
                "Encryption.Keys.k1",
                "base64",
            ),
            (
                format!(r#"{{"Encryption":{{"CurrentKeyId":"k9","Keys":{{"k1":"{K1}"}}}}}}"#),
                "Encryption.CurrentKeyId",
                "k9",
            ),
            (
                r#"{"Encryption":{"Kyes":{}}}"#.to_owned(),
                "Encryption.Kyes",
                "unknown",
            ),
        ];
        for (json, field, reason) in cases {
            let error = KeyRing::from_appsettings_json(&json).unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(&error, Error::Config { field: f, .. } if f == field),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
            assert!(!message.contains(short), "{message}");
        }
    }

    #[test]
    fn a_reading_only_ring_decrypts_but_refuses_to_be_written_with() {
        let ring = KeyRing::reading_only([EncryptionKey::new("k1", [1; 32]).unwrap()]);
        assert!(ring.key("k1").is_some());
        assert!(matches!(
            ring.current_key(),
            Err(Error::EncryptionNotConfigured { .. })
        ));
    }
}

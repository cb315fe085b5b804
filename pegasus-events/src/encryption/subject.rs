//! Per-subject keys, for erasure by forgetting a key (crypto-shredding).
//!
//! A field marked `#[event(encrypted, subject = user_id)]` is encrypted under a key of its
//! own for each value of `user_id`, created the first time that subject is written.
//! [`Encryption::forget_subject`](super::Encryption::forget_subject) deletes the subject's
//! key; from then on every value encrypted under it, in every topic, backup and dead
//! letter, decodes as erased (`null`, so `None` for the `Option` field the derive
//! requires), without rewriting anything.
//!
//! # Storage
//!
//! A [`SubjectKeyStore`] keeps one row per subject: the subject, a random key id (the one
//! written into envelopes, so an envelope never repeats the subject), the id of the ring
//! key the subject key is wrapped under, and the wrapped key. Wrapping is AES-256-GCM under
//! the key ring's current key (12-byte nonce, then the 32-byte key encrypted, then the
//! tag), with the associated data `pegasus-events/subject-key/v1`, the subject and the key
//! id, each with a 2-byte big-endian length: the database alone does not reveal the keys,
//! and a row cannot be moved to another subject. The ring key a row was wrapped under must
//! stay in the ring as long as the row is to be read.
//!
//! Stores: [`MemorySubjectKeyStore`] (tests, one process), `SqliteSubjectKeyStore`
//! (feature `sqlite`) and `PostgresSubjectKeyStore` (feature `postgres`).
//!
//! # The cache and its bound
//!
//! Keys are cached in each process for at most the `cache_ttl` given to
//! [`Encryption::with_subject_keys`](super::Encryption::with_subject_keys). A subject
//! forgotten in one process is forgotten at once there; another process sharing the
//! database stops decrypting that subject's values within `cache_ttl` at most.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, OsRng, Payload};

use super::keys::{EncryptionKey, KeyProvider};
use crate::error::{Error, Result};

/// One subject's key as a [`SubjectKeyStore`] holds it: wrapped under a ring key.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSubjectKey {
    /// The subject, e.g. a user id.
    pub subject: String,
    /// The id written into envelopes; random, unrelated to the subject.
    pub key_id: String,
    /// The id of the ring key the key is wrapped under.
    pub ring_key_id: String,
    /// Nonce, wrapped key and tag.
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for StoredSubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSubjectKey")
            .field("key_id", &self.key_id)
            .field("ring_key_id", &self.ring_key_id)
            .finish_non_exhaustive()
    }
}

/// Where per-subject keys are kept; implementations must be safe to share between tasks
/// and processes (several instances may use one database).
pub trait SubjectKeyStore: Send + Sync + 'static {
    /// The key of `subject`, if it has one.
    fn find_by_subject(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<Option<StoredSubjectKey>>> + Send;

    /// The key whose id is `key_id`, if it was not forgotten.
    fn find_by_key_id(
        &self,
        key_id: &str,
    ) -> impl Future<Output = Result<Option<StoredSubjectKey>>> + Send;

    /// Stores `key` unless its subject has a key already; returns the subject's key (the
    /// one stored before, when two writers raced).
    fn insert_if_absent(
        &self,
        key: &StoredSubjectKey,
    ) -> impl Future<Output = Result<StoredSubjectKey>> + Send;

    /// Deletes the key of `subject`; `true` if there was one.
    fn forget(&self, subject: &str) -> impl Future<Output = Result<bool>> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`SubjectKeyStore`] with its type erased.
pub(crate) trait DynSubjectKeyStore: Send + Sync + 'static {
    fn find_by_subject<'a>(&'a self, s: &'a str)
        -> BoxFuture<'a, Result<Option<StoredSubjectKey>>>;
    fn find_by_key_id<'a>(&'a self, k: &'a str) -> BoxFuture<'a, Result<Option<StoredSubjectKey>>>;
    fn insert_if_absent<'a>(
        &'a self,
        key: &'a StoredSubjectKey,
    ) -> BoxFuture<'a, Result<StoredSubjectKey>>;
    fn forget<'a>(&'a self, s: &'a str) -> BoxFuture<'a, Result<bool>>;
}

impl<S: SubjectKeyStore> DynSubjectKeyStore for S {
    fn find_by_subject<'a>(
        &'a self,
        s: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredSubjectKey>>> {
        Box::pin(SubjectKeyStore::find_by_subject(self, s))
    }
    fn find_by_key_id<'a>(&'a self, k: &'a str) -> BoxFuture<'a, Result<Option<StoredSubjectKey>>> {
        Box::pin(SubjectKeyStore::find_by_key_id(self, k))
    }
    fn insert_if_absent<'a>(
        &'a self,
        key: &'a StoredSubjectKey,
    ) -> BoxFuture<'a, Result<StoredSubjectKey>> {
        Box::pin(SubjectKeyStore::insert_if_absent(self, key))
    }
    fn forget<'a>(&'a self, s: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(SubjectKeyStore::forget(self, s))
    }
}

/// Subject keys in this process's memory, lost on restart: for tests and examples.
#[derive(Clone, Default, Debug)]
pub struct MemorySubjectKeyStore {
    rows: Arc<Mutex<Vec<StoredSubjectKey>>>,
}

impl MemorySubjectKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, Vec<StoredSubjectKey>> {
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SubjectKeyStore for MemorySubjectKeyStore {
    async fn find_by_subject(&self, subject: &str) -> Result<Option<StoredSubjectKey>> {
        Ok(self.rows().iter().find(|r| r.subject == subject).cloned())
    }

    async fn find_by_key_id(&self, key_id: &str) -> Result<Option<StoredSubjectKey>> {
        Ok(self.rows().iter().find(|r| r.key_id == key_id).cloned())
    }

    async fn insert_if_absent(&self, key: &StoredSubjectKey) -> Result<StoredSubjectKey> {
        let mut rows = self.rows();
        if let Some(found) = rows.iter().find(|r| r.subject == key.subject) {
            return Ok(found.clone());
        }
        rows.push(key.clone());
        Ok(key.clone())
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        let mut rows = self.rows();
        let before = rows.len();
        rows.retain(|r| r.subject != subject);
        Ok(rows.len() != before)
    }
}

const WRAP_CONTEXT: &str = "pegasus-events/subject-key/v1";
/// At most this many keys are cached; past it, expired entries go, then all of them.
const CACHE_CAPACITY: usize = 10_000;

fn wrap_aad(subject: &str, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + WRAP_CONTEXT.len() + subject.len() + key_id.len());
    for part in [WRAP_CONTEXT, subject, key_id] {
        let len = part.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&part.as_bytes()[..len]);
    }
    out
}

fn unusable(reason: &'static str) -> Error {
    Error::SubjectKeyUnusable { reason }
}

/// A cached key: the key, its subject, and when it was read.
#[derive(Clone)]
struct Cached {
    key: EncryptionKey,
    subject: String,
    at: Instant,
}

#[derive(Default)]
struct Cache {
    by_key_id: HashMap<String, Cached>,
    by_subject: HashMap<String, Cached>,
}

impl Cache {
    fn make_room(&mut self, ttl: Duration) {
        if self.by_key_id.len() + self.by_subject.len() < CACHE_CAPACITY {
            return;
        }
        self.by_key_id.retain(|_, c| c.at.elapsed() < ttl);
        self.by_subject.retain(|_, c| c.at.elapsed() < ttl);
        if self.by_key_id.len() + self.by_subject.len() >= CACHE_CAPACITY {
            self.by_key_id.clear();
            self.by_subject.clear();
        }
    }
}

/// The subject keys of an [`Encryption`](super::Encryption): a store, a cache, and the
/// wrapping under the ring.
pub(crate) struct SubjectKeys {
    store: Box<dyn DynSubjectKeyStore>,
    ttl: Duration,
    cache: Mutex<Cache>,
}

impl SubjectKeys {
    pub(crate) fn new(store: impl SubjectKeyStore, ttl: Duration) -> Self {
        SubjectKeys {
            store: Box::new(store),
            ttl,
            cache: Mutex::new(Cache::default()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, key: &EncryptionKey, subject: &str) {
        let cached = Cached {
            key: key.clone(),
            subject: subject.to_owned(),
            at: Instant::now(),
        };
        let mut cache = self.cache();
        cache.make_room(self.ttl);
        cache.by_key_id.insert(key.id().to_owned(), cached.clone());
        cache.by_subject.insert(subject.to_owned(), cached);
    }

    /// The key to write `subject`'s values under, created on first use.
    pub(crate) async fn for_writing(
        &self,
        subject: &str,
        ring: &dyn KeyProvider,
    ) -> Result<EncryptionKey> {
        if let Some(cached) = self.cache().by_subject.get(subject) {
            if cached.at.elapsed() < self.ttl {
                return Ok(cached.key.clone());
            }
        }
        let stored = match self.store.find_by_subject(subject).await? {
            Some(stored) => stored,
            None => {
                let fresh = wrap_new(subject, ring)?;
                self.store.insert_if_absent(&fresh).await?
            }
        };
        let key = unwrap(&stored, ring)?;
        self.remember(&key, subject);
        Ok(key)
    }

    /// The subject key `key_id`, or `None` when it was forgotten.
    pub(crate) async fn for_reading(
        &self,
        key_id: &str,
        ring: &dyn KeyProvider,
    ) -> Result<Option<EncryptionKey>> {
        if let Some(cached) = self.cache().by_key_id.get(key_id) {
            if cached.at.elapsed() < self.ttl {
                return Ok(Some(cached.key.clone()));
            }
        }
        let Some(stored) = self.store.find_by_key_id(key_id).await? else {
            self.cache().by_key_id.remove(key_id);
            return Ok(None);
        };
        let key = unwrap(&stored, ring)?;
        self.remember(&key, &stored.subject);
        Ok(Some(key))
    }

    /// Deletes `subject`'s key from the store and from this process's cache.
    pub(crate) async fn forget(&self, subject: &str) -> Result<bool> {
        let forgotten = self.store.forget(subject).await?;
        let mut cache = self.cache();
        cache.by_subject.remove(subject);
        cache.by_key_id.retain(|_, c| c.subject != subject);
        Ok(forgotten)
    }
}

/// A new random key for `subject`, wrapped under the ring's current key.
fn wrap_new(subject: &str, ring: &dyn KeyProvider) -> Result<StoredSubjectKey> {
    let wrapping = ring.current_key()?;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let key_id = uuid::Uuid::new_v4().simple().to_string();
    let nonce = aes_gcm::Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = wrap_aad(subject, &key_id);
    let sealed = wrapping
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: &bytes,
                aad: &aad,
            },
        )
        .map_err(|_| unusable("wrapping a new key failed"))?;
    let mut wrapped = nonce.to_vec();
    wrapped.extend_from_slice(&sealed);
    Ok(StoredSubjectKey {
        subject: subject.to_owned(),
        key_id,
        ring_key_id: wrapping.id().to_owned(),
        wrapped,
    })
}

/// The key inside `stored`, unwrapped with the ring key it names.
fn unwrap(stored: &StoredSubjectKey, ring: &dyn KeyProvider) -> Result<EncryptionKey> {
    let wrapping = ring
        .key(&stored.ring_key_id)
        .ok_or_else(|| unusable("it is wrapped under a ring key that is not in the key ring"))?;
    if stored.wrapped.len() != super::envelope::NONCE_LEN + 32 + super::envelope::TAG_LEN {
        return Err(unusable("the wrapped key has the wrong length"));
    }
    let (nonce, sealed) = stored.wrapped.split_at(super::envelope::NONCE_LEN);
    let aad = wrap_aad(&stored.subject, &stored.key_id);
    let bytes = wrapping
        .cipher()
        .decrypt(
            aes_gcm::Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| unusable("the wrapped key does not authenticate under its ring key"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| unusable("the wrapped key has the wrong length"))?;
    EncryptionKey::new(stored.key_id.clone(), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::KeyRing;

    fn ring(current: &str) -> KeyRing {
        KeyRing::new(
            current,
            [
                EncryptionKey::new("r1", [1; 32]).unwrap(),
                EncryptionKey::new("r2", [2; 32]).unwrap(),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_subject_key_is_created_once_wrapped_and_found_by_its_id_until_forgotten() {
        let store = MemorySubjectKeyStore::new();
        let keys = SubjectKeys::new(store.clone(), Duration::from_secs(60));
        let r1 = ring("r1");
        let first = keys.for_writing("u1", &r1).await.unwrap();
        let again = keys.for_writing("u1", &r1).await.unwrap();
        assert_eq!(first.id(), again.id());
        let stored = SubjectKeyStore::find_by_subject(&store, "u1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.ring_key_id, "r1");
        assert_eq!(stored.wrapped.len(), 12 + 32 + 16);
        // Read through a cold cache, after the ring's current key changed.
        let cold = SubjectKeys::new(store.clone(), Duration::from_secs(60));
        assert!(cold
            .for_reading(first.id(), &ring("r2"))
            .await
            .unwrap()
            .is_some());
        assert!(keys.forget("u1").await.unwrap());
        assert!(keys.for_reading(first.id(), &r1).await.unwrap().is_none());
        let fresh = keys.for_writing("u1", &r1).await.unwrap();
        assert_ne!(fresh.id(), first.id(), "a forgotten subject gets a new key");
    }

    #[tokio::test]
    async fn a_row_moved_to_another_subject_or_wrapped_under_a_missing_ring_key_is_refused() {
        let ring = ring("r1");
        let mut stored = wrap_new("u1", &ring).unwrap();
        assert!(unwrap(&stored, &ring).is_ok());
        stored.subject = "u2".to_owned();
        assert!(matches!(
            unwrap(&stored, &ring),
            Err(Error::SubjectKeyUnusable { .. })
        ));
        let mut stored = wrap_new("u1", &ring).unwrap();
        stored.ring_key_id = "r9".to_owned();
        assert!(matches!(
            unwrap(&stored, &ring),
            Err(Error::SubjectKeyUnusable { .. })
        ));
    }
}

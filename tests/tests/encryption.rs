//! Field encryption against the real broker, SQLite and PostgreSQL: what goes on the wire,
//! what a consumer gets, what is dead-lettered, erasure by forgetting a subject's key, and
//! a second, independent implementation of the format (Python's `cryptography`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pegasus_events::consumer::{EventConsumer, EventContext, EventHandler, HandlerError};
use pegasus_events::dead_letter::DeadLetterReason;
use pegasus_events::encryption::{
    Encryption, EncryptionKey, KeyRing, PostgresSubjectKeyStore, SqliteSubjectKeyStore,
    SubjectKeyStore,
};
use pegasus_events::{Event, EventProducer, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    config, dead_letter_settings, dead_letters_now, fresh_postgres_database, read_record,
    run_until_done, unique,
};
use rdkafka::message::{Headers, Message, OwnedMessage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "tests.encryption.profile", name = "ProfileUpdatedEvent")]
struct ProfileUpdated {
    run: String,
    #[event(key)]
    user_id: String,
    display_name: String,
    #[event(encrypted)]
    email: String,
    #[event(encrypted, subject = user_id)]
    date_of_birth: Option<String>,
}

const KEY_1: [u8; 32] = [0x11; 32];
const KEY_2: [u8; 32] = [0x22; 32];

fn ring() -> KeyRing {
    KeyRing::new(
        "test-2",
        [
            EncryptionKey::new("test-1", KEY_1).unwrap(),
            EncryptionKey::new("test-2", KEY_2).unwrap(),
        ],
    )
    .unwrap()
}

fn profile(run: &str) -> ProfileUpdated {
    ProfileUpdated {
        run: run.to_owned(),
        user_id: unique("user"),
        display_name: "Ada".to_owned(),
        email: format!("{}@secret.example", unique("ada")),
        date_of_birth: Some("1815-12-10".to_owned()),
    }
}

async fn create_topic() {
    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::new(ProfileUpdated::TOPIC).partitions(2)])
        .await
        .expect("topic");
}

async fn sqlite_store() -> (SqliteSubjectKeyStore, SqliteSubjectKeyStore, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let url = format!("sqlite://{}/keys.db", dir.0.display());
    let first = SqliteSubjectKeyStore::connect(&url).await.unwrap();
    let second = SqliteSubjectKeyStore::connect(&url).await.unwrap();
    (first, second, dir)
}

mod tempdir {
    /// A directory removed on drop.
    pub(super) struct Dir(pub(super) std::path::PathBuf);

    impl Dir {
        pub(super) fn new() -> Self {
            let path = std::env::temp_dir().join(pegasus_events_tests::unique("pegasus-keys"));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Collects the events of one run.
#[derive(Clone, Default)]
struct Collect {
    run: String,
    seen: Arc<Mutex<Vec<ProfileUpdated>>>,
}

impl EventHandler<ProfileUpdated> for Collect {
    async fn handle(
        &self,
        event: ProfileUpdated,
        _: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if event.run == self.run {
            self.seen.lock().unwrap().push(event);
        }
        Ok(())
    }
}

impl Collect {
    fn new(run: &str) -> Self {
        Collect {
            run: run.to_owned(),
            seen: Arc::default(),
        }
    }

    fn count(&self, n: usize) -> impl Fn() -> bool + Send + 'static {
        let seen = Arc::clone(&self.seen);
        move || seen.lock().unwrap().len() >= n
    }

    fn events(&self) -> Vec<ProfileUpdated> {
        self.seen.lock().unwrap().clone()
    }
}

fn payload_of(message: &OwnedMessage) -> String {
    String::from_utf8(message.payload().unwrap().to_vec()).unwrap()
}

fn ce_id(message: &OwnedMessage) -> uuid::Uuid {
    let headers = message.headers().unwrap();
    let id = headers
        .iter()
        .find(|h| h.key == "ce_id")
        .and_then(|h| h.value)
        .unwrap();
    uuid::Uuid::try_parse_ascii(id).unwrap()
}

/// The content of the JSON string member `name` of the record's payload.
fn member(message: &OwnedMessage, name: &str) -> String {
    let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    value[name].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_event_round_trips_through_the_broker_and_its_record_holds_no_plaintext() {
    create_topic().await;
    let (store, _, _dir) = sqlite_store().await;
    let encryption = Encryption::new(ring()).with_subject_keys(store, Duration::from_secs(30));
    let producer = EventProducer::new(&config("encryption-publisher"))
        .await
        .unwrap()
        .with_encryption(encryption.clone());
    let run = unique("run");
    let event = profile(&run);
    let delivery = producer.publish(&event).await.unwrap();

    let record = read_record(ProfileUpdated::TOPIC, delivery.partition, delivery.offset);
    let payload = payload_of(&record);
    assert!(!payload.contains(&event.email), "{payload}");
    assert!(!payload.contains("1815"), "{payload}");
    assert!(payload.contains(&event.user_id) && payload.contains("\"displayName\":\"Ada\""));
    assert_eq!(ce_id(&record), delivery.event_id);
    let headers: Vec<String> = record
        .headers()
        .unwrap()
        .iter()
        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
        .collect();
    assert!(
        !headers.iter().any(|h| h.contains(&event.email)),
        "{headers:?}"
    );

    let collect = Collect::new(&run);
    let consumer = EventConsumer::builder(config("encryption-consumer"))
        .group_id(unique("encryption-group"))
        .encryption(encryption)
        .handler::<ProfileUpdated, _>(collect.clone())
        .build()
        .unwrap();
    run_until_done(consumer, collect.count(1)).await;
    assert_eq!(collect.events(), [event]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_without_keys_is_refused_and_sends_nothing() {
    let producer = EventProducer::new(&config("encryption-publisher"))
        .await
        .unwrap();
    let error = producer.publish(&profile("x")).await.unwrap_err();
    assert!(error.record.is_none(), "no record was built");
    assert!(
        matches!(
            error.error,
            pegasus_events::Error::EncryptionNotConfigured { .. }
        ),
        "{:?}",
        error.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_under_a_key_the_ring_lacks_or_tampered_with_are_dead_lettered_with_reason_decode()
{
    create_topic().await;
    let foreign = KeyRing::new(
        "retired-key",
        [EncryptionKey::new("retired-key", [9; 32]).unwrap()],
    )
    .unwrap();
    let (store, _, _dir) = sqlite_store().await;
    let writer = Encryption::new(foreign).with_subject_keys(store.clone(), Duration::from_secs(30));
    let producer = EventProducer::new(&config("encryption-publisher"))
        .await
        .unwrap()
        .with_encryption(writer);
    let run = unique("run");
    let unknown_key = profile(&run);
    let unknown_key_delivery = producer.publish(&unknown_key).await.unwrap();

    // A record the consumer's ring can read, with one character of the email's
    // ciphertext changed on the way: same headers and `ce_id`, other bytes.
    let reader = Encryption::new(ring()).with_subject_keys(store, Duration::from_secs(30));
    let honest = EventProducer::new(&config("encryption-publisher"))
        .await
        .unwrap()
        .with_encryption(reader.clone());
    let tampered = profile(&run);
    let sent = honest.publish(&tampered).await.unwrap();
    let original = read_record(ProfileUpdated::TOPIC, sent.partition, sent.offset);
    let envelope = member(&original, "email");
    let mut changed = envelope.clone().into_bytes();
    changed[30] = if changed[30] == b'A' { b'B' } else { b'A' };
    let changed = String::from_utf8(changed).unwrap();
    let payload = payload_of(&original).replace(&envelope, &changed);
    let mut record = pegasus_events::EncodedRecord {
        topic: ProfileUpdated::TOPIC.to_owned(),
        key: original.key().map(<[u8]>::to_vec),
        payload: Some(payload.into_bytes()),
        headers: Vec::new(),
    };
    for header in original.headers().unwrap().iter() {
        record
            .headers
            .push((header.key.to_owned(), header.value.map(<[u8]>::to_vec)));
    }
    // The honest record is handled; only the tampered copy may be dead-lettered.
    honest.republish(&record).await.unwrap();

    let dlq = unique("tests-encryption-dlq");
    let collect = Collect::new(&run);
    let consumer = EventConsumer::builder(config("encryption-consumer"))
        .group_id(unique("encryption-group"))
        .settings(dead_letter_settings(&dlq))
        .encryption(reader)
        .handler::<ProfileUpdated, _>(collect.clone())
        .build()
        .unwrap();
    // Records of earlier runs under that key are dead-lettered too: wait for this run's.
    let wanted = [unknown_key_delivery.event_id, sent.event_id];
    let ours = Arc::new(Mutex::new(Vec::new()));
    let found = Arc::clone(&ours);
    let dlq_name = dlq.clone();
    let watch = tokio::spawn(async move {
        loop {
            let letters: Vec<_> = dead_letters_now(&dlq_name)
                .await
                .into_iter()
                .filter(|l| l.event_id().is_some_and(|id| wanted.contains(&id)))
                .collect();
            if letters.len() >= 2 {
                *found.lock().unwrap() = letters;
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let arrived = Arc::clone(&ours);
    run_until_done(consumer, move || arrived.lock().unwrap().len() >= 2).await;
    watch.abort();
    let letters = std::mem::take(&mut *ours.lock().unwrap());
    assert_eq!(
        letters.len(),
        2,
        "one letter each, the honest record handled"
    );
    for letter in &letters {
        assert_eq!(letter.reason, DeadLetterReason::Decode);
        assert_eq!(letter.attempts, 1, "a decode error is not retried");
        assert!(letter.error.contains("`email`"), "{}", letter.error);
        let payload = String::from_utf8_lossy(letter.record.payload.as_deref().unwrap());
        for secret in [&unknown_key.email, &tampered.email] {
            assert!(!payload.contains(secret.as_str()), "{payload}");
            assert!(!letter.error.contains(secret.as_str()), "{}", letter.error);
        }
    }
    let by_id = |id| letters.iter().find(|l| l.event_id() == Some(id)).unwrap();
    let unknown = by_id(unknown_key_delivery.event_id);
    assert!(
        unknown.error.contains("key `retired-key`"),
        "{}",
        unknown.error
    );
    let tampered_letter = by_id(sent.event_id);
    assert!(
        tampered_letter.error.contains("failed authentication"),
        "{}",
        tampered_letter.error
    );
    assert_eq!(
        tampered_letter.record.payload.as_deref(),
        record.payload.as_deref(),
        "the tampered record, byte for byte"
    );
}

/// Publishes an event, forgets its subject through a second store instance on the same
/// database, and checks the bound of the first instance's cache, then that a consumer
/// gets the event with the subject's field erased and dead-letters nothing.
async fn forgetting_a_subject_erases_its_field<S: SubjectKeyStore + Clone>(first: S, second: S) {
    create_topic().await;
    let ttl = Duration::from_millis(1500);
    let writer = Encryption::new(ring()).with_subject_keys(first.clone(), ttl);
    let other_process = Encryption::new(ring()).with_subject_keys(second, ttl);
    let producer = EventProducer::new(&config("encryption-publisher"))
        .await
        .unwrap()
        .with_encryption(writer.clone());
    let run = unique("run");
    let event = profile(&run);
    let delivery = producer.publish(&event).await.unwrap();
    let record = read_record(ProfileUpdated::TOPIC, delivery.partition, delivery.offset);
    let decoded = writer.decode::<ProfileUpdated, _>(&record).await.unwrap();
    assert_eq!(decoded.event, event);

    assert!(other_process.forget_subject(&event.user_id).await.unwrap());
    // The writer cached the key when it published: within the bound it may still read it.
    let cached = writer.decode::<ProfileUpdated, _>(&record).await.unwrap();
    assert_eq!(
        cached.event.date_of_birth, event.date_of_birth,
        "read from the cache"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let erased = writer.decode::<ProfileUpdated, _>(&record).await.unwrap();
    assert_eq!(
        erased.event.date_of_birth, None,
        "forgotten within the cache's bound"
    );
    assert_eq!(erased.event.email, event.email, "ring fields are untouched");

    let dlq = unique("tests-encryption-dlq");
    let collect = Collect::new(&run);
    let consumer = EventConsumer::builder(config("encryption-consumer"))
        .group_id(unique("encryption-group"))
        .settings(dead_letter_settings(&dlq))
        .encryption(Encryption::new(ring()).with_subject_keys(first, ttl))
        .handler::<ProfileUpdated, _>(collect.clone())
        .build()
        .unwrap();
    run_until_done(consumer, collect.count(1)).await;
    let expected = ProfileUpdated {
        date_of_birth: None,
        ..event
    };
    assert_eq!(collect.events(), [expected]);
    let letters = dead_letters_now(&dlq).await;
    assert!(
        !letters
            .iter()
            .any(|l| l.event_id() == Some(delivery.event_id)),
        "never a dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_subject_in_sqlite_erases_its_field_everywhere_within_the_cache_bound() {
    let (first, second, _dir) = sqlite_store().await;
    forgetting_a_subject_erases_its_field(first, second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_subject_in_postgres_erases_its_field_everywhere_within_the_cache_bound() {
    let url = fresh_postgres_database().await;
    let first = PostgresSubjectKeyStore::connect(&url).await.unwrap();
    let second = PostgresSubjectKeyStore::connect(&url).await.unwrap();
    let stored_before = first.find_by_subject("nobody").await.unwrap();
    assert!(stored_before.is_none());
    forgetting_a_subject_erases_its_field(first, second).await;
}

fn python(args: &[&str]) -> serde_json::Value {
    let python = std::env::var("PEGASUS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "PEGASUS_TEST_PYTHON is not set: run the tests with `scripts/test`, which installs \
             Python's `cryptography` package in target/cloudevents-venv"
        )
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/field_encryption.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "field_encryption.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn base64(bytes: &[u8]) -> String {
    // Standard base64 with padding, spelled out here so the test does not reuse the
    // library's encoder.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cryptography_decrypts_what_the_library_wrote_and_the_library_reads_what_python_wrote(
) {
    create_topic().await;
    let (store, _, _dir) = sqlite_store().await;
    let encryption = Encryption::new(ring()).with_subject_keys(store, Duration::from_secs(30));
    let producer = EventProducer::new(&config("encryption-publisher"))
        .await
        .unwrap()
        .with_encryption(encryption.clone());
    let event = profile(&unique("run"));
    let delivery = producer.publish(&event).await.unwrap();
    let record = read_record(ProfileUpdated::TOPIC, delivery.partition, delivery.offset);
    let id = delivery.event_id.to_string();

    // Library -> Python: the email member, with the ring's current key.
    let decrypted = python(&[
        "decrypt",
        &base64(&KEY_2),
        &id.to_uppercase(),
        ProfileUpdated::NAME,
        "email",
        &member(&record, "email"),
    ]);
    assert_eq!(decrypted["key_kind"], 1);
    assert_eq!(decrypted["key_id"], "test-2");
    assert_eq!(
        decrypted["plaintext"],
        serde_json::to_string(&event.email).unwrap()
    );

    // Python -> library: Python encrypts a new email under the older key `test-1`; the
    // record with that member in place decodes with it.
    let new_email = "grace@secret.example";
    let written = python(&[
        "encrypt",
        "test-1",
        &base64(&KEY_1),
        &id,
        ProfileUpdated::NAME,
        "email",
        &serde_json::to_string(new_email).unwrap(),
    ]);
    let value = written["value"].as_str().unwrap();
    assert_eq!(
        encryption
            .decrypt_value(delivery.event_id, ProfileUpdated::NAME, "email", value)
            .unwrap(),
        serde_json::to_vec(new_email).unwrap()
    );
    let mut payload: serde_json::Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
    payload["email"] = serde_json::Value::String(value.to_owned());
    let replaced = OwnedMessage::new(
        Some(serde_json::to_vec(&payload).unwrap()),
        record.key().map(<[u8]>::to_vec),
        record.topic().to_owned(),
        record.timestamp(),
        record.partition(),
        record.offset(),
        record.headers().cloned(),
    );
    let decoded = encryption
        .decode::<ProfileUpdated, _>(&replaced)
        .await
        .unwrap();
    assert_eq!(decoded.event.email, new_email);
    assert_eq!(decoded.event.date_of_birth, event.date_of_birth);
    // Bound to the field: Python's value under another field name does not decrypt.
    assert!(encryption
        .decrypt_value(
            delivery.event_id,
            ProfileUpdated::NAME,
            "displayName",
            value
        )
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_stores_and_relays_encrypted_fields_and_refuses_such_events_without_keys() {
    use pegasus_events::outbox::{RelaySettings, SqliteOutbox};
    create_topic().await;
    let dir = tempdir::Dir::new();
    let url = format!("sqlite://{}/outbox.db", dir.0.display());
    let kafka = config("encryption-outbox");
    let without_keys = SqliteOutbox::connect(&url, &kafka).await.unwrap();
    let run = unique("run");
    let event = profile(&run);

    let mut tx = without_keys.pool().begin().await.unwrap();
    let error = without_keys.enqueue(&mut tx, &event).await.unwrap_err();
    assert!(
        matches!(error, pegasus_events::Error::EncryptionNotConfigured { .. }),
        "{error}"
    );
    drop(tx);

    let (store, _, _keys) = sqlite_store().await;
    let encryption = Encryption::new(ring()).with_subject_keys(store, Duration::from_secs(30));
    let outbox = without_keys.with_encryption(encryption.clone());
    let mut tx = outbox.pool().begin().await.unwrap();
    let event_id = outbox.enqueue(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM pegasus_outbox")
        .fetch_all(outbox.pool())
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the event enqueued with keys was stored"
    );
    let stored = String::from_utf8(rows[0].clone()).unwrap();
    assert!(
        !stored.contains(&event.email) && !stored.contains("1815"),
        "{stored}"
    );

    let relay = outbox
        .relay(
            &kafka,
            RelaySettings {
                poll_interval: Duration::from_millis(100),
                dead_letter_topic: unique("tests-encryption-dlq"),
                ..RelaySettings::default()
            },
        )
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(relay.run_until(async move {
        let _ = stopped.await;
    }));
    let collect = Collect::new(&run);
    let consumer = EventConsumer::builder(config("encryption-consumer"))
        .group_id(unique("encryption-group"))
        .encryption(encryption)
        .handler::<ProfileUpdated, _>(collect.clone())
        .build()
        .unwrap();
    run_until_done(consumer, collect.count(1)).await;
    let _ = stop.send(());
    relaying.await.unwrap().unwrap();
    assert_eq!(collect.events(), [event]);
    assert_ne!(event_id, uuid::Uuid::nil());
}

/// A subject key store whose key lookups fail the first `failures` times, like a database
/// that is down for a while.
#[derive(Clone)]
struct Flaky {
    inner: pegasus_events::encryption::MemorySubjectKeyStore,
    failures: Arc<std::sync::atomic::AtomicU32>,
}

impl SubjectKeyStore for Flaky {
    async fn find_by_subject(
        &self,
        subject: &str,
    ) -> pegasus_events::Result<Option<pegasus_events::encryption::StoredSubjectKey>> {
        self.inner.find_by_subject(subject).await
    }

    async fn find_by_key_id(
        &self,
        key_id: &str,
    ) -> pegasus_events::Result<Option<pegasus_events::encryption::StoredSubjectKey>> {
        let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(pegasus_events::Error::SubjectKeyStore {
                store: "flaky",
                operation: "look up a key by id",
                source: "connection refused".into(),
            });
        }
        self.inner.find_by_key_id(key_id).await
    }

    async fn insert_if_absent(
        &self,
        key: &pegasus_events::encryption::StoredSubjectKey,
    ) -> pegasus_events::Result<pegasus_events::encryption::StoredSubjectKey> {
        self.inner.insert_if_absent(key).await
    }

    async fn forget(&self, subject: &str) -> pegasus_events::Result<bool> {
        self.inner.forget(subject).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_key_store_outage_holds_the_record_until_it_answers_and_never_dead_letters_it() {
    create_topic().await;
    let memory = pegasus_events::encryption::MemorySubjectKeyStore::new();
    let writer = Encryption::new(ring()).with_subject_keys(memory.clone(), Duration::from_secs(30));
    let producer = EventProducer::new(&config("encryption-publisher"))
        .await
        .unwrap()
        .with_encryption(writer);
    let run = unique("run");
    let event = profile(&run);
    let delivery = producer.publish(&event).await.unwrap();

    let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flaky = Flaky {
        inner: memory,
        failures: Arc::clone(&failures),
    };
    let dlq = unique("tests-encryption-dlq");
    let collect = Collect::new(&run);
    let consumer = EventConsumer::builder(config("encryption-consumer"))
        .group_id(unique("encryption-group"))
        .settings(dead_letter_settings(&dlq))
        .encryption(Encryption::new(ring()).with_subject_keys(flaky, Duration::from_secs(30)))
        .handler::<ProfileUpdated, _>(collect.clone())
        .build()
        .unwrap();
    // Records of earlier runs are read first (their subject keys are unknown here, so
    // they decode with the field erased); the outage starts now and covers this run's.
    failures.store(3, std::sync::atomic::Ordering::SeqCst);
    run_until_done(consumer, collect.count(1)).await;
    assert_eq!(
        collect.events(),
        [event],
        "decrypted once the store answered"
    );
    assert_eq!(failures.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(
        !dead_letters_now(&dlq)
            .await
            .iter()
            .any(|l| l.event_id() == Some(delivery.event_id)),
        "never a dead letter"
    );
}

//! The records a topic receives, read raw (key, value and headers as bytes) with rdkafka,
//! not through pegasus-events: what a reader of the broker sees, whatever the library
//! would make of it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use uuid::Uuid;

use crate::STEP;

/// How long a reader's blocking calls to the broker (metadata, watermarks, a poll) wait.
const BROKER_CALL: Duration = Duration::from_secs(10);

/// How long the reader waits before it asks the broker again.
const RETRY: Duration = Duration::from_millis(200);

/// One record as the broker holds it.
#[derive(Debug)]
pub struct RawRecord {
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub value: Option<Vec<u8>>,
    /// Every header, in order, names and values as written.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawRecord {
    /// The value as JSON; fails the test without a JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_slice(self.value.as_deref().expect("a value")).expect("a JSON value")
    }

    /// The value of the header `name` as text, if it is there; fails the test if it is
    /// there twice or is not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let (_, value) = found.next()?;
        assert!(found.next().is_none(), "{name} written twice");
        Some(std::str::from_utf8(value.as_deref()?).expect("a UTF-8 header value"))
    }

    /// The names of the value's JSON fields; fails the test unless the value is a JSON
    /// object.
    pub fn fields(&self) -> BTreeSet<String> {
        self.json()
            .as_object()
            .expect("a JSON object")
            .keys()
            .cloned()
            .collect()
    }

    /// The header names, in order.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Key, value, and every header name and value, as one lossy text: what a reader of
    /// the record could see.
    pub fn all_text(&self) -> String {
        let mut text = String::new();
        for bytes in [&self.key, &self.value].into_iter().flatten() {
            text.push_str(&String::from_utf8_lossy(bytes));
            text.push('\n');
        }
        for (name, value) in &self.headers {
            text.push_str(name);
            text.push(':');
            text.push_str(&String::from_utf8_lossy(
                value.as_deref().unwrap_or_default(),
            ));
            text.push('\n');
        }
        text
    }
}

/// Where every partition of a topic ended when the reader was made: it reads what was
/// written after that.
pub struct TopicReader {
    bootstrap: String,
    topic: &'static str,
    ends: Vec<(i32, i64)>,
}

impl TopicReader {
    /// The current end of every partition of `topic` on the broker at `bootstrap`. The
    /// topic must exist: waits up to [`STEP`] for its partitions to show in the broker's
    /// metadata and to have a leader.
    pub async fn at_end(bootstrap: &str, topic: &'static str) -> TopicReader {
        let bootstrap = bootstrap.to_owned();
        let server = bootstrap.clone();
        let ends = tokio::task::spawn_blocking(move || {
            let client = raw_consumer(&server);
            let deadline = Instant::now() + STEP;
            let partitions: Vec<i32> = loop {
                let metadata = client
                    .fetch_metadata(Some(topic), BROKER_CALL)
                    .expect("metadata");
                let found: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !found.is_empty() {
                    break found;
                }
                assert!(Instant::now() < deadline, "{topic} has no partitions");
                std::thread::sleep(RETRY);
            };
            partitions
                .into_iter()
                .map(|partition| {
                    // A topic created a moment ago shows its partitions in the metadata
                    // before they have a leader: ask again until one answers.
                    let high = loop {
                        match client.fetch_watermarks(topic, partition, BROKER_CALL) {
                            Ok((_, high)) => break high,
                            Err(error) => assert!(
                                Instant::now() < deadline,
                                "watermarks of {topic} [{partition}]: {error}"
                            ),
                        }
                        std::thread::sleep(RETRY);
                    };
                    (partition, high)
                })
                .collect()
        })
        .await
        .expect("not panicked");
        TopicReader {
            bootstrap,
            topic,
            ends,
        }
    }

    /// Every record written to the topic after [`TopicReader::at_end`] whose key is `key`,
    /// read until the first is found and then for `quiet` more (a second copy would show by
    /// then); fails after [`STEP`] without one.
    pub async fn records_with_key(&self, key: &str, quiet: Duration) -> Vec<RawRecord> {
        let bootstrap = self.bootstrap.clone();
        let topic = self.topic;
        let ends = self.ends.clone();
        let key = key.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || {
            let consumer = raw_consumer(&bootstrap);
            let mut assignment = TopicPartitionList::new();
            for (partition, end) in ends {
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(end))
                    .expect("partition added");
            }
            consumer.assign(&assignment).expect("assigned");
            let deadline = Instant::now() + STEP;
            let mut found = Vec::new();
            let mut first_at = None;
            loop {
                let now = Instant::now();
                match first_at {
                    Some(at) if now >= at + quiet => return found,
                    None => assert!(now < deadline, "no record keyed {key:?} in {topic}"),
                    Some(_) => {}
                }
                let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let message = message.expect("a record");
                if message.key() != Some(key.as_slice()) {
                    continue;
                }
                first_at.get_or_insert(now);
                found.push(RawRecord {
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers: message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        })
        .await
        .expect("not panicked")
    }
}

/// A consumer that reads only what it is assigned and commits nothing.
fn raw_consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-reader-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("raw consumer")
}

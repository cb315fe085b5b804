//! What the broker tests of this crate share: the servers under test, a minimal HTTP
//! client, fresh databases, and a reader of the raw records a topic receives (key, value
//! and headers as bytes, read with rdkafka, not through pegasus-events).

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// How long each step may take, group joins included.
pub(crate) const STEP: Duration = Duration::from_secs(60);

/// `name`'s value; the test fails without it.
pub(crate) fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!("{name} is not set: run the tests with `scripts/test` (see this file's doc)"),
    }
}

/// A database a service under test runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Database {
    /// A file in a temporary directory.
    Sqlite,
    /// A new database on the server of `PEGASUS_TEST_POSTGRES_URL`.
    Postgres,
}

impl Database {
    /// A new, empty database of this kind for `service`; its URL. A SQLite file is made
    /// in `dir`.
    pub(crate) async fn fresh(self, service: &str, dir: &std::path::Path) -> String {
        match self {
            Database::Sqlite => format!("sqlite://{}", dir.join(format!("{service}.db")).display()),
            Database::Postgres => {
                fresh_postgres_database(service, &required("PEGASUS_TEST_POSTGRES_URL")).await
            }
        }
    }
}

/// A new, empty PostgreSQL database on the server at `server_url`; its URL.
async fn fresh_postgres_database(service: &str, server_url: &str) -> String {
    let name = format!("{service}_test_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(server_url)
        .await
        .expect("PostgreSQL server reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("database created");
    admin.close().await;
    let server = server_url.split('?').next().unwrap_or(server_url);
    let (server, _) = server.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{name}")
}

/// A minimal HTTP/1.1 call (no client crate in this workspace) with `token` as its bearer
/// token: status and body, the body parsed as JSON (`Value::Null` when empty or not JSON).
pub(crate) async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    http_with_headers(address, method, path, &headers, body).await
}

/// [`http`] with any request headers; fails when the answer takes longer than [`STEP`].
pub(crate) async fn http_with_headers(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    tokio::time::timeout(STEP, exchange(address, method, path, headers, body))
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} {path} within {STEP:?}"))
}

async fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connected");
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("answer read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

/// Calls `read` until `done` holds for what it returns; fails after [`STEP`].
pub(crate) async fn until<T, F, Fut>(mut read: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The event ids of activity entries, in the log's order.
pub(crate) fn event_ids(items: &[Value]) -> Vec<Uuid> {
    items
        .iter()
        .map(|item| {
            item["eventId"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("an event id")
        })
        .collect()
}

/// One record as the broker holds it.
#[derive(Debug)]
pub(crate) struct RawRecord {
    /// The record key.
    pub(crate) key: Option<Vec<u8>>,
    /// The record value.
    pub(crate) value: Option<Vec<u8>>,
    /// Every header, in order, names and values as written.
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawRecord {
    /// The value as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(self.value.as_deref().expect("a value")).expect("a JSON value")
    }

    /// The value of the header `name` as text, if it is there once.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let (_, value) = found.next()?;
        assert!(found.next().is_none(), "{name} written twice");
        Some(std::str::from_utf8(value.as_deref()?).expect("a UTF-8 header value"))
    }

    /// The header names, in order.
    pub(crate) fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Key, value, and every header name and value, as one lossy text: what a reader of
    /// the record could see.
    pub(crate) fn all_text(&self) -> String {
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

/// Where every partition of a topic ends: what a [`TopicReader`] reads after.
pub(crate) struct TopicReader {
    bootstrap: String,
    topic: &'static str,
    ends: Vec<(i32, i64)>,
}

impl TopicReader {
    /// The current end of every partition of `topic`, which must exist (waits up to
    /// [`STEP`] for its partitions to show in the broker's metadata and to have a
    /// leader).
    pub(crate) async fn at_end(bootstrap: &str, topic: &'static str) -> TopicReader {
        let bootstrap = bootstrap.to_owned();
        let server = bootstrap.clone();
        let ends = tokio::task::spawn_blocking(move || {
            let client = raw_consumer(&server);
            let deadline = std::time::Instant::now() + STEP;
            let partitions: Vec<i32> = loop {
                let metadata = client
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
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
                assert!(
                    std::time::Instant::now() < deadline,
                    "{topic} has no partitions"
                );
                std::thread::sleep(Duration::from_millis(200));
            };
            partitions
                .into_iter()
                .map(|partition| {
                    // A topic created a moment ago shows its partitions in the metadata
                    // before they have a leader: ask again until one answers.
                    let high = loop {
                        match client.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                            Ok((_, high)) => break high,
                            Err(error) => assert!(
                                std::time::Instant::now() < deadline,
                                "watermarks of {topic} [{partition}]: {error}"
                            ),
                        }
                        std::thread::sleep(Duration::from_millis(200));
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
    pub(crate) async fn records_with_key(&self, key: &str, quiet: Duration) -> Vec<RawRecord> {
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
            let deadline = std::time::Instant::now() + STEP;
            let mut found = Vec::new();
            let mut first_at = None;
            loop {
                let now = std::time::Instant::now();
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

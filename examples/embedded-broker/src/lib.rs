//! A Kafka-protocol broker inside this process, for the examples that must run with nothing
//! installed (the quickstart, the demo) when `KAFKA_BOOTSTRAP_SERVERS` is not set:
//! librdkafka's mock cluster ([`rdkafka::mocking::MockCluster`]).
//!
//! What it guarantees: every client (producer, consumer group, outbox relay, admin) talks
//! the real Kafka protocol to it on a real loopback TCP port, so a program that works on it
//! uses no shortcut a real broker would not have. What it does not: durability (nothing is
//! written to disk) and unbounded retention (below); it is a demo broker, not a test
//! broker, and the tests run against Apache Kafka.
//!
//! It is compiled into librdkafka, which this workspace builds from source anyway, so it
//! costs no extra crate, no build time, nothing installed and nothing downloaded at run time.
//! It supports produce (idempotent, `acks=all`), fetch, consumer groups (subscribe,
//! rebalance, offset commit and fetch) and metadata. The limits below are librdkafka's,
//! fixed in its C code.
//!
//! # Limits, and how to stay inside them
//!
//! - **Retention of 5 MiB per partition** (and 100,000 record batches), not configurable.
//!   Past that the mock silently drops the oldest batches, read or not: the partition's low
//!   watermark moves up and a consumer never sees those records. A quickstart event (an
//!   order) as pegasus-events writes it is about 600 bytes (36-byte key, ~300-byte JSON
//!   value, ~270 bytes of CloudEvents headers), so 100,000 of them are ~60 MB: on 3 partitions the mock
//!   kept only 26,674 of them. Hence [`PARTITIONS`] = 12 and LZ4 compression
//!   ([`PRODUCER_COMPRESSION`]): compressed, one partition holds about 28,000 such events, so
//!   12 partitions hold about 330,000, over three times the backlog. Keys must spread over
//!   the partitions (a unique id per event, not a handful of customer ids).
//!   [`EmbeddedBroker::dropped_records`] tells whether the limit was hit.
//! - **One record batch per partition per fetch**, found by a linear scan of the partition's
//!   batches (`src/rdkafka_mock_handlers.c`, "FIXME: Multiple messageSets ?"). A consumer
//!   therefore reads as fast as the producer batched: batches of hundreds or thousands of
//!   records (what `linger.ms` = 5 and `Producer::publish_all`, or many publishes in flight,
//!   give) read at 200,000+ records/s, but one-record batches (a loop awaiting each
//!   `publish`) read at about 2,400 records/s and slow down as the backlog grows. Publish a
//!   backlog with `publish_all`, never one awaited `publish` at a time.
//! - **No CreateTopics**: create topics with [`EmbeddedBroker::create_topic`] before any
//!   client uses them. A topic a client touches first is auto-created with 4 partitions
//!   (fine for a small one such as the dead-letter topic, too small for a backlog).
//! - **Group join takes about 3.2 s**: the mock's group coordinator waits 3 s
//!   (`group.initial.rebalance.delay.ms`) before the first assignment, and rdkafka exposes no
//!   safe way to change it.
//! - **A fetch with nothing to return waits `fetch.wait.max.ms`** even when a record arrives
//!   meanwhile, so with librdkafka's 500 ms default a new event on an idle topic can take half
//!   a second to show; [`FETCH_MAX_WAIT`] is 100 ms, for
//!   `ConsumerSettings::fetch_max_wait` (it cost no throughput).
//! - The broker lives as long as this value: drop it after the clients are closed. It is not
//!   `Send` (it holds librdkafka's handle), which is fine in `#[tokio::main] async fn main`.
//!
//! # Measured
//!
//! On the project's machine (2 shared cores, debug build, librdkafka 2.12.1 via rdkafka
//! 0.39), with a probe program written for the purpose: 100,000 records shaped as above,
//! idempotent producer (`acks=all`, `linger.ms` = 5), then a new consumer group (`StreamConsumer`, subscribe,
//! auto commit off, one synchronous commit at the end).
//!
//! | partitions | producer                      | records kept | consumed at       |
//! |-----------:|-------------------------------|-------------:|------------------:|
//! |          3 | no compression                |       26,674 | (74 % lost)       |
//! |          3 | lz4                           |       84,681 | (15 % lost)       |
//! |          3 | zstd                          |      100,000 | 200,000 records/s |
//! |         12 | no compression                |      100,000 | 226,000 records/s (at the edge: 4.9 of 5 MiB) |
//! |     **12** | **lz4**                       |  **100,000** | **215,000-283,000 records/s** |
//! |         16 | lz4                           |      100,000 | 213,000 records/s |
//! |         12 | lz4, one record per batch     |      100,000 | 2,400 records/s (64 % read after 27 s) |
//!
//! Producing took 1.7-2.9 s (35,000-60,000 records/s; zstd 24,000-40,000). The consumer's
//! fetch settings do not lift the one-batch-per-fetch limit: with one-record batches,
//! `fetch.wait.max.ms` = 0 made it slower (2,000 instead of 6,700 records/s for a 20,000
//! backlog), `fetch.queue.backoff.ms` = 0 faster (10,900), `queued.min.messages` and
//! `fetch.min.bytes` did nothing useful; only bigger producer batches help. The runtime's own
//! consumer settings (`queued.min.messages` = 1,000, `fetch.queue.backoff.ms` = 5) read the
//! 12-partition LZ4 backlog at 234,000 records/s.
//!
//! For comparison, Tansu 0.6 (`tansu-broker` with in-memory storage, run in-process) read the
//! same backlog at 36,000 records/s with a 0.5 s group join and no size limit, but adds about
//! 480 crates (OpenTelemetry, AWS SDK pieces, aws-lc), took 11 min 40 s to build from clean in
//! debug here, needs Rust 1.91 (`Duration::from_mins`; the workspace declares 1.89),
//! under-reports high watermarks,
//! and produced one-record batches at only 880 records/s; so the mock, sized as above, is the
//! simpler and sturdier embedded default.

use std::fmt;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Partitions for a topic that must carry a backlog (the quickstart's): enough room for
/// 100,000 events of about 600 bytes under the mock's 5 MiB-per-partition retention. A
/// topic with little traffic (the demo's) does with fewer.
pub const PARTITIONS: i32 = 12;

/// The `compression.type` producers should use with the embedded broker (librdkafka's
/// built-in LZ4: about a third of the stored size for quickstart events, and fast).
pub const PRODUCER_COMPRESSION: &str = "lz4";

/// `ConsumerSettings::fetch_max_wait` (librdkafka's `fetch.wait.max.ms`) for the embedded
/// broker: see the module docs.
pub const FETCH_MAX_WAIT: Duration = Duration::from_millis(100);

/// How long [`EmbeddedBroker::dropped_records`] waits for each answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka-protocol broker inside this process (librdkafka's mock cluster, one broker).
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts the broker on a free loopback port.
    pub fn start() -> KafkaResult<Self> {
        Ok(EmbeddedBroker {
            cluster: MockCluster::new(1)?,
        })
    }

    /// The `bootstrap.servers` value for clients of this broker, e.g. `127.0.0.1:40123`.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (the mock has no CreateTopics API, so admin clients cannot).
    /// Fails with `TopicAlreadyExists` if a client already auto-created it.
    pub fn create_topic(&self, name: &str, partitions: i32) -> KafkaResult<()> {
        self.cluster.create_topic(name, partitions, 1)
    }

    /// Records of `topic` the broker has dropped to stay within its retention (the sum of
    /// the partitions' low watermarks); 0 unless the 5 MiB-per-partition limit was hit.
    pub fn dropped_records(&self, topic: &str) -> KafkaResult<i64> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("allow.auto.create.topics", "false")
            .create()?;
        let metadata = client.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
        let mut dropped = 0;
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for partition in t.partitions() {
                let (low, _) = client.fetch_watermarks(topic, partition.id(), QUERY_TIMEOUT)?;
                dropped += low;
            }
        }
        Ok(dropped)
    }
}

impl fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap_servers", &self.bootstrap_servers())
            .finish()
    }
}

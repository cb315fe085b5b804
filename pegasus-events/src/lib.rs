//! Typed events over Apache Kafka, on the wire as CloudEvents, compatible with the .NET
//! services of the Pegasus design.
//!
//! # Guarantees
//!
//! - **Topics are bound at compile time.** `#[derive(Event)]` ties each event struct to one
//!   topic, type name and schema version, and rejects a malformed topic, a second key field
//!   or a bad version before the code runs. No topic string appears where events are
//!   published.
//! - **Acknowledged means stored.** [`EventProducer::publish`] returns once the broker
//!   acknowledged the record; the defaults are `acks=all` with librdkafka's idempotent
//!   producer, so retries neither duplicate nor reorder. Same key, same partition, same
//!   order.
//! - **Nothing is lost on failure.** A publish that fails (after the configured delivery
//!   timeout) returns a [`PublishError`] with the exact record, `ce_id` included, to send
//!   again with [`EventProducer::republish`].
//! - **Consumers lose nothing either.** The [`consumer`] runtime commits an offset only
//!   after the record was handled, recognised as a duplicate by an [`IdempotencyStore`], or
//!   copied byte for byte to the [dead-letter topic](dead_letter) and acknowledged there;
//!   failures are retried by a [`RetryPolicy`] first, with the partition's order kept.
//! - **The wire contract is fixed** ([`wire`]): CloudEvents 1.0 binary mode headers and the
//!   plain JSON payload; reading also accepts structured mode and plain JSON from services
//!   that write no CloudEvents headers. Older schema versions are upcast in transit.
//! - **No silent failure to connect.** Creating a producer or a topic admin, and starting a
//!   consumer or an outbox relay, waits at most
//!   [`KafkaConfig::connect_timeout`] for a broker to answer, then fails with
//!   [`Error::BrokersUnreachable`] naming the address and the cause in words. Outages
//!   while running are logged when they start, summarised, and logged when they end
//!   ([`connection`]).
//! - **Secrets stay secret.** Passwords and `#[event(sensitive)]` fields never reach a log
//!   line, an error message or a header written by this crate.
//! - **Encrypted fields stay encrypted.** `#[event(encrypted)]` fields leave the process
//!   only as AES-256-GCM envelopes bound to their event and field ([`encryption`]); without
//!   keys, such an event is refused, never sent in clear.
//!
//! # A first event
//!
//! ```no_run
//! use pegasus_events::{Event, EventProducer, KafkaConfig};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[serde(rename_all = "camelCase")]
//! #[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
//! struct ShipmentCreated {
//!     #[event(key)]
//!     shipment_id: uuid::Uuid,
//!     tracking_number: String,
//!     #[event(sensitive)]
//!     created_by_email: String,
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = EventProducer::new(&KafkaConfig::from_env()?).await?;
//! let delivery = producer
//!     .publish(&ShipmentCreated {
//!         shipment_id: uuid::Uuid::now_v7(),
//!         tracking_number: "TRACK123".into(),
//!         created_by_email: "user@example.com".into(),
//!     })
//!     .await?;
//! println!("partition {} offset {}", delivery.partition, delivery.offset);
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! | module | what it holds |
//! |--------|---------------|
//! | [`event`] | the [`Event`] trait, the redacted view, versioning |
//! | [`wire`] | header names, encoding and decoding of the three wire forms |
//! | [`producer`] | [`EventProducer`], [`Delivery`], [`PublishError`] |
//! | [`consumer`] | [`EventConsumer`], [`EventHandler`], consumer groups, at-least-once commits, [`RetryPolicy`] |
//! | [`dead_letter`] | the dead-letter topic's headers, [`DeadLetterQueue`]: reading and replaying dead letters |
//! | [`encryption`] | `#[event(encrypted)]` fields: [`Encryption`], [`KeyRing`], per-subject keys and erasure by forgetting them |
//! | `outbox` | the transactional outbox and its relay (features `sqlite`, `postgres`) |
//! | [`idempotency`] | [`IdempotencyStore`] and its memory, SQLite and PostgreSQL implementations |
//! | [`config`] | [`KafkaConfig`]: defaults, validation, environment and appsettings.json |
//! | [`connection`] | reaching the brokers: the check at creation, [`UnreachableCause`], outage logs, librdkafka's log lines |
//! | [`metrics`] | the metrics' names, labels and histogram buckets, emitted through the `metrics` facade |
//! | [`admin`] | [`TopicAdmin`]: creating topics up front |
//! | [`acl`] | the ACLs a service needs ([`acl::ServiceAcls`]), and how a refusal is named |
//! | [`telemetry`] | spans by the OpenTelemetry messaging conventions, W3C Trace Context on the wire |
//! | [`error`] | the crate's one error type, [`Error`], and [`error::Report`] to print it with its causes |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---------|---------|--------------|
//! | `derive` | yes | `#[derive(Event)]`, re-exported as `pegasus_events::Event` |
//! | `sqlite` | no | SQLite through sqlx: `SqliteIdempotencyStore`, the inbox, `SqliteOutbox` and its relay |
//! | `postgres` | no | PostgreSQL through sqlx: `PostgresIdempotencyStore`, the inbox, `PostgresOutbox` and its relay |
//! | `metrics` | yes | counters, gauges and histograms through the [`metrics`](https://docs.rs/metrics) facade ([`metrics`]) |
//! | `ssl` | no | TLS (`SecurityProtocol::Ssl`, `SaslSsl`) and SASL/SCRAM, through OpenSSL |
//! | `opentelemetry` | no | W3C Trace Context on the wire from and to the current OpenTelemetry context, through the `opentelemetry` API crate only ([`telemetry`]) |

// Lets the derive's generated code, which names `::pegasus_events`, work inside this crate.
extern crate self as pegasus_events;

pub mod acl;
pub mod admin;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod dead_letter;
pub mod encryption;
pub mod error;
pub mod event;
pub mod idempotency;
mod limits;
pub mod metrics;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod migrations;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod outbox;
pub mod producer;
#[cfg(test)]
mod property_tests;
pub mod telemetry;
pub mod wire;

pub use admin::{TopicAdmin, TopicSpec};
pub use config::{
    Acks, Compression, KafkaConfig, PemSource, ProducerSettings, SaslMechanism, Secret,
    SecurityProtocol, TlsSettings,
};
pub use connection::UnreachableCause;
pub use consumer::{EventConsumer, EventContext, EventHandler, HandlerError, RetryPolicy};
pub use dead_letter::{DeadLetter, DeadLetterQueue, DeadLetterReason, ReplayFilter};
pub use encryption::{Encryption, EncryptionKey, KeyProvider, KeyRing};
pub use error::{Error, Result};
pub use event::{Event, Redacted};
pub use idempotency::{IdempotencyStore, MemoryIdempotencyStore};
pub use producer::{Delivery, EncodedRecord, EventProducer, PublishError};
pub use wire::{Decoded, EventMetadata, PublishMetadata, WireForm};

#[cfg(feature = "derive")]
pub use pegasus_events_derive::Event;

#[doc(hidden)]
pub use event::__private;

// The README's Rust blocks, compiled (and run, unless `no_run`) as doc tests, so every
// snippet a user copies compiles. Its snippets use the `sqlite` feature, which the
// workspace's `cargo test --doc` (scripts/test) and `--all-features` turn on.
#[cfg(all(doctest, feature = "sqlite"))]
#[doc = include_str!("../../README.md")]
mod readme_doc_tests {}

//! pegasus-events (work in progress)
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as pegasus_events;

pub mod admin;
pub mod config;
pub mod error;
pub mod event;
pub mod producer;
pub mod wire;

pub use admin::{TopicAdmin, TopicSpec};
pub use config::{Acks, Compression, KafkaConfig, ProducerSettings, SaslMechanism, Secret, SecurityProtocol};
pub use error::{Error, Result};
pub use event::{Event, Redacted};
pub use producer::{Delivery, EncodedRecord, EventProducer, PublishError};
pub use wire::{Decoded, EventMetadata, PublishMetadata, WireForm};

#[cfg(feature = "derive")]
pub use pegasus_events_derive::Event;

#[doc(hidden)]
pub use event::__private;

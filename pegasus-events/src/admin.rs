//! Creating topics up front, idempotently.
//!
//! # Guarantees
//!
//! - [`TopicAdmin::ensure_topics`] returns `Ok` when every topic exists afterwards, whether
//!   this call created it or it was there already; the partition count and replication of an
//!   existing topic are left as they are (the design's
//!   `kafka-topics --create --partitions 3`, run again, changes nothing).
//! - A topic the principal may not create fails the call with [`Error::NotAuthorized`]
//!   naming the topic and the principal; a topic the broker refuses for another reason
//!   fails it with [`Error::TopicCreation`] naming the topic.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use crate::acl::{AclOperation, AclResource};
use crate::config::{client_error, KafkaConfig};
use crate::connection::{check_brokers, ClientWatch, Watching};
use crate::error::{Error, Result};
use crate::event::Event;

/// A topic to create: its name, partitions, replication and topic-level configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic name.
    pub name: String,
    /// Number of partitions (3 in the design).
    pub partitions: i32,
    /// Replication factor (1 on a single broker, 3 in production).
    pub replication_factor: i32,
    /// Topic configuration, e.g. `("min.insync.replicas", "2")`.
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    /// A topic with 3 partitions and replication factor 1, the design's development setup.
    pub fn new(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            partitions: 3,
            replication_factor: 1,
            config: Vec::new(),
        }
    }

    /// The topic an event type is bound to.
    pub fn for_event<E: Event>() -> Self {
        TopicSpec::new(E::TOPIC)
    }

    /// Sets the partition count.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, replication_factor: i32) -> Self {
        self.replication_factor = replication_factor;
        self
    }

    /// Adds a topic-level configuration entry.
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((name.into(), value.into()));
        self
    }
}

/// Administrative operations on topics.
pub struct TopicAdmin {
    client: AdminClient<ClientWatch>,
    watch: ClientWatch,
    timeout: Duration,
}

impl TopicAdmin {
    /// Creates an admin client from the connection part of `config`, once a broker at its
    /// bootstrap address answered (at most [`KafkaConfig::connect_timeout`]; otherwise
    /// [`Error::BrokersUnreachable`] names the address and the cause). Requests time out
    /// after the producer's delivery timeout.
    pub async fn new(config: &KafkaConfig) -> Result<Self> {
        config.validate()?;
        check_brokers(config, "topic admin").await?;
        let watch = ClientWatch::new(config, "topic admin", Watching::Client);
        let client = config
            .client_config()?
            .create_with_context(watch.clone())
            .map_err(|e| client_error("admin", e))?;
        Ok(TopicAdmin {
            client,
            watch,
            timeout: config.producer.delivery_timeout,
        })
    }

    /// Creates every topic in `topics` that does not exist yet.
    pub async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<()> {
        for spec in topics {
            if spec.partitions < 1 {
                return Err(Error::Config {
                    field: format!("topic `{}` partitions", spec.name),
                    reason: "must be at least 1".to_owned(),
                });
            }
            if spec.replication_factor < 1 {
                return Err(Error::Config {
                    field: format!("topic `{}` replication_factor", spec.name),
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|spec| {
                let mut topic = NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                );
                for (name, value) in &spec.config {
                    topic = topic.set(name, value);
                }
                topic
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = tokio::time::timeout(
            self.timeout,
            self.client.create_topics(new_topics.iter(), &options),
        )
        .await
        .map_err(|_| {
            self.watch
                .unreachable_error(self.timeout)
                .unwrap_or(Error::Admin {
                    operation: "create_topics",
                    source: rdkafka::error::KafkaError::AdminOp(
                        RDKafkaErrorCode::OperationTimedOut,
                    ),
                })
        })?
        .map_err(|source| {
            self.watch
                .unreachable_error(self.timeout)
                .unwrap_or(Error::Admin {
                    operation: "create_topics",
                    source,
                })
        })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((
                    topic,
                    RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed,
                )) => {
                    return Err(self
                        .watch
                        .not_authorized(AclOperation::Create, AclResource::Topic(topic)))
                }
                Err((topic, code)) => {
                    return Err(Error::TopicCreation {
                        topic,
                        reason: code.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

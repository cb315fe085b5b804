//! Kafka ACLs: what a service needs, and the words in which a refusal is reported.
//!
//! # Guarantees
//!
//! - [`ServiceAcls`] lists the least a service needs to run its producers, consumers,
//!   dead-letter writing and outbox relay on a cluster whose authorizer denies what no ACL
//!   allows (`allow.everyone.if.no.acl.found=false`): literal topic and group names, no
//!   wildcard, nothing on the cluster resource. Each rule says which part of the service
//!   needs it.
//! - The rules print one per line in the form `allow <principal> <OPERATION> <RESOURCE>
//!   <PATTERN> <name>` ([`AclRule`]'s `Display`), and as `kafka-acls.sh` commands
//!   ([`AclRule::kafka_acls_command`]).
//! - A refusal by the broker is [`Error::NotAuthorized`](crate::Error::NotAuthorized),
//!   naming the principal, the operation and the resource with these same types.
//!
//! # What each part of a service needs
//!
//! | part | operation | resource |
//! |------|-----------|----------|
//! | [`EventProducer`](crate::EventProducer) publishing `E` | `WRITE` | topic `E::TOPIC` |
//! | outbox relay publishing `E` | `WRITE` | topic `E::TOPIC` |
//! | outbox relay | `WRITE` | its dead-letter topic |
//! | [`EventConsumer`] | `READ` | each handled topic |
//! | [`EventConsumer`] | `READ` | its group |
//! | [`EventConsumer`] | `WRITE` | its dead-letter topic |
//! | [`DeadLetterQueue`](crate::DeadLetterQueue) reading | `READ` | the dead-letter topic, and groups prefixed `pegasus-dlq-reader-` |
//! | [`DeadLetterQueue`](crate::DeadLetterQueue) replaying | `WRITE` | each original topic |
//! | [`TopicAdmin::ensure_topics`](crate::TopicAdmin::ensure_topics) | `CREATE` | each topic |
//!
//! `WRITE` and `READ` imply `DESCRIBE` in Kafka's authorizer. The idempotent producer (on
//! by default) needs no `IDEMPOTENT_WRITE` on the cluster since Kafka 2.8 (KIP-679): `WRITE`
//! on a topic is enough. The library uses no transactional ids.

use std::collections::BTreeSet;
use std::fmt;

use crate::consumer::EventConsumer;
use crate::event::Event;

/// Whether a rule allows or denies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AclPermission {
    /// The operation is allowed.
    Allow,
    /// The operation is denied, whatever allows it.
    Deny,
}

/// An operation on a resource, by Kafka's names (`AclOperation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AclOperation {
    /// Reading records of a topic; joining a group.
    Read,
    /// Writing records to a topic or with a transactional id.
    Write,
    /// Creating a topic.
    Create,
    /// Reading a resource's metadata.
    Describe,
    /// The idempotent producer's id, on the cluster (not needed since Kafka 2.8).
    IdempotentWrite,
    /// Any other operation, by the name the broker gave.
    Other(&'static str),
}

impl AclOperation {
    /// Kafka's name, as `kafka-acls.sh` and the Admin API spell it.
    pub fn as_kafka(self) -> &'static str {
        match self {
            AclOperation::Read => "READ",
            AclOperation::Write => "WRITE",
            AclOperation::Create => "CREATE",
            AclOperation::Describe => "DESCRIBE",
            AclOperation::IdempotentWrite => "IDEMPOTENT_WRITE",
            AclOperation::Other(name) => name,
        }
    }

    /// The operation in words, for messages: "write to", "read from".
    fn verb(self) -> &'static str {
        match self {
            AclOperation::Read => "read",
            AclOperation::Write => "write to",
            AclOperation::Create => "create",
            AclOperation::Describe => "describe",
            AclOperation::IdempotentWrite => "use the idempotent producer on",
            AclOperation::Other(_) => "use",
        }
    }
}

/// A resource ACLs protect.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AclResource {
    /// A topic.
    Topic(String),
    /// A consumer group.
    Group(String),
    /// The cluster itself.
    Cluster,
    /// A transactional id.
    TransactionalId(String),
}

impl AclResource {
    /// Kafka's resource type name: `TOPIC`, `GROUP`, `CLUSTER`, `TRANSACTIONAL_ID`.
    pub fn kind(&self) -> &'static str {
        match self {
            AclResource::Topic(_) => "TOPIC",
            AclResource::Group(_) => "GROUP",
            AclResource::Cluster => "CLUSTER",
            AclResource::TransactionalId(_) => "TRANSACTIONAL_ID",
        }
    }

    /// The resource's name; `kafka-cluster` for the cluster, as Kafka names it.
    pub fn name(&self) -> &str {
        match self {
            AclResource::Topic(name)
            | AclResource::Group(name)
            | AclResource::TransactionalId(name) => name,
            AclResource::Cluster => "kafka-cluster",
        }
    }
}

impl fmt::Display for AclResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclResource::Topic(name) => write!(f, "topic `{name}`"),
            AclResource::Group(name) => write!(f, "consumer group `{name}`"),
            AclResource::Cluster => f.write_str("the cluster"),
            AclResource::TransactionalId(name) => write!(f, "transactional id `{name}`"),
        }
    }
}

/// How a rule's resource name matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PatternType {
    /// The name exactly.
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

impl PatternType {
    /// Kafka's name: `LITERAL` or `PREFIXED`.
    pub fn as_kafka(self) -> &'static str {
        match self {
            PatternType::Literal => "LITERAL",
            PatternType::Prefixed => "PREFIXED",
        }
    }
}

/// One ACL binding: `principal` may (or may not) perform `operation` on `resource`, from
/// any host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclRule {
    /// Allow or deny.
    pub permission: AclPermission,
    /// The principal, e.g. `User:shipping-api`.
    pub principal: String,
    /// The operation.
    pub operation: AclOperation,
    /// The resource.
    pub resource: AclResource,
    /// How the resource name matches.
    pub pattern: PatternType,
}

impl AclRule {
    /// A rule allowing `operation` on exactly `resource`.
    pub fn allow(principal: &str, operation: AclOperation, resource: AclResource) -> Self {
        AclRule {
            permission: AclPermission::Allow,
            principal: principal_name(principal),
            operation,
            resource,
            pattern: PatternType::Literal,
        }
    }

    /// The same rule matching every resource name that starts with its name.
    pub fn prefixed(mut self) -> Self {
        self.pattern = PatternType::Prefixed;
        self
    }

    /// The `kafka-acls.sh` command that adds this rule on the cluster at `bootstrap`.
    pub fn kafka_acls_command(&self, bootstrap: &str) -> String {
        let permission = match self.permission {
            AclPermission::Allow => "--allow-principal",
            AclPermission::Deny => "--deny-principal",
        };
        let resource = match &self.resource {
            AclResource::Topic(name) => format!("--topic {name}"),
            AclResource::Group(name) => format!("--group {name}"),
            AclResource::Cluster => "--cluster".to_owned(),
            AclResource::TransactionalId(name) => format!("--transactional-id {name}"),
        };
        format!(
            "kafka-acls.sh --bootstrap-server {bootstrap} --add {permission} {} \
             --operation {} {resource} --resource-pattern-type {}",
            self.principal,
            self.operation.as_kafka(),
            self.pattern.as_kafka().to_ascii_lowercase(),
        )
    }
}

impl fmt::Display for AclRule {
    /// `allow User:shipping-api WRITE TOPIC LITERAL shipping.shipment.created`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let permission = match self.permission {
            AclPermission::Allow => "allow",
            AclPermission::Deny => "deny",
        };
        write!(
            f,
            "{permission} {} {} {} {} {}",
            self.principal,
            self.operation.as_kafka(),
            self.resource.kind(),
            self.pattern.as_kafka(),
            self.resource.name()
        )
    }
}

/// `User:` in front of a bare name, as Kafka's principals are written.
fn principal_name(principal: &str) -> String {
    if principal.contains(':') {
        principal.to_owned()
    } else {
        format!("User:{principal}")
    }
}

/// The ACLs one service needs, gathered from what it publishes and the consumers it runs.
///
/// ```
/// use pegasus_events::acl::ServiceAcls;
/// use pegasus_events::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Event)]
/// #[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
/// struct ShipmentCreated {
///     #[event(key)]
///     shipment_id: String,
/// }
///
/// let acls = ServiceAcls::new("shipping-api").publishes::<ShipmentCreated>();
/// assert_eq!(
///     acls.to_string(),
///     "allow User:shipping-api WRITE TOPIC LITERAL shipping.shipment.created\n"
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAcls {
    principal: String,
    rules: BTreeSet<AclRule>,
}

impl ServiceAcls {
    /// No rules yet, for `principal` (`shipping-api` or `User:shipping-api`).
    pub fn new(principal: &str) -> Self {
        ServiceAcls {
            principal: principal_name(principal),
            rules: BTreeSet::new(),
        }
    }

    /// The service publishes `E` (with an [`EventProducer`](crate::EventProducer) or through
    /// an outbox relay): `WRITE` on its topic.
    pub fn publishes<E: Event>(self) -> Self {
        self.topic_write(E::TOPIC)
    }

    /// The service writes to `topic` by name (a dead-letter replay's original topics).
    pub fn topic_write(mut self, topic: &str) -> Self {
        let rule = AclRule::allow(
            &self.principal,
            AclOperation::Write,
            AclResource::Topic(topic.to_owned()),
        );
        self.rules.insert(rule);
        self
    }

    /// The service runs `consumer`: `READ` on each topic it handles, `READ` on its group,
    /// `WRITE` on its dead-letter topic.
    pub fn consumer(mut self, consumer: &EventConsumer) -> Self {
        for topic in consumer.topics() {
            let rule = AclRule::allow(
                &self.principal,
                AclOperation::Read,
                AclResource::Topic(topic.to_owned()),
            );
            self.rules.insert(rule);
        }
        let group = AclRule::allow(
            &self.principal,
            AclOperation::Read,
            AclResource::Group(consumer.group_id().to_owned()),
        );
        self.rules.insert(group);
        self.topic_write(consumer.dead_letter_topic())
    }

    /// The service reads (and replays) the dead letters of `dead_letter_topic` with a
    /// [`DeadLetterQueue`](crate::DeadLetterQueue): `READ` on the topic and on the reader's
    /// groups, which are named `pegasus-dlq-reader-<uuid>` (a prefixed rule). Add
    /// [`ServiceAcls::topic_write`] for each topic it replays to.
    pub fn reads_dead_letters(mut self, dead_letter_topic: &str) -> Self {
        let topic = AclRule::allow(
            &self.principal,
            AclOperation::Read,
            AclResource::Topic(dead_letter_topic.to_owned()),
        );
        let groups = AclRule::allow(
            &self.principal,
            AclOperation::Read,
            AclResource::Group(crate::dead_letter::READER_GROUP_PREFIX.to_owned()),
        )
        .prefixed();
        self.rules.insert(topic);
        self.rules.insert(groups);
        self
    }

    /// The service runs an outbox relay with `settings`: `WRITE` on its dead-letter topic.
    /// Add [`ServiceAcls::publishes`] for each event type it enqueues.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn relay(self, settings: &crate::outbox::RelaySettings) -> Self {
        self.topic_write(&settings.dead_letter_topic)
    }

    /// The service creates `topic` with [`TopicAdmin`](crate::TopicAdmin): `CREATE` on it.
    pub fn creates_topic(mut self, topic: &str) -> Self {
        let rule = AclRule::allow(
            &self.principal,
            AclOperation::Create,
            AclResource::Topic(topic.to_owned()),
        );
        self.rules.insert(rule);
        self
    }

    /// The principal, e.g. `User:shipping-api`.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The rules, sorted, each once.
    pub fn rules(&self) -> impl Iterator<Item = &AclRule> {
        self.rules.iter()
    }
}

impl fmt::Display for ServiceAcls {
    /// One rule per line, in [`AclRule`]'s form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for rule in &self.rules {
            writeln!(f, "{rule}")?;
        }
        Ok(())
    }
}

/// The message of [`Error::NotAuthorized`](crate::Error::NotAuthorized).
pub(crate) fn describe_denial(
    client: &str,
    principal: &str,
    operation: AclOperation,
    resource: &AclResource,
) -> String {
    format!(
        "the {client} is not authorized to {} {resource}: the broker refused principal {principal} \
         (add an ACL allowing {} on {} `{}` for it)",
        operation.verb(),
        operation.as_kafka(),
        resource.kind(),
        resource.name(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_print_in_the_line_form_and_as_kafka_acls_commands() {
        let rule = AclRule::allow(
            "identity-api",
            AclOperation::Read,
            AclResource::Group("identity-api-".to_owned()),
        )
        .prefixed();
        assert_eq!(
            rule.to_string(),
            "allow User:identity-api READ GROUP PREFIXED identity-api-"
        );
        assert_eq!(
            rule.kafka_acls_command("broker:9093"),
            "kafka-acls.sh --bootstrap-server broker:9093 --add --allow-principal \
             User:identity-api --operation READ --group identity-api- \
             --resource-pattern-type prefixed"
        );
        let cluster = AclRule::allow(
            "User:x",
            AclOperation::IdempotentWrite,
            AclResource::Cluster,
        );
        assert_eq!(
            cluster.to_string(),
            "allow User:x IDEMPOTENT_WRITE CLUSTER LITERAL kafka-cluster"
        );
    }

    #[test]
    fn a_refusal_names_the_principal_the_operation_and_the_resource() {
        let message = describe_denial(
            "producer",
            "User:shipping-api",
            AclOperation::Write,
            &AclResource::Topic("identity.user.created".to_owned()),
        );
        assert_eq!(
            message,
            "the producer is not authorized to write to topic `identity.user.created`: the \
             broker refused principal User:shipping-api (add an ACL allowing WRITE on TOPIC \
             `identity.user.created` for it)"
        );
    }
}

//! The crate's one error type.
//!
//! Every variant names what failed with named fields. No variant ever carries an event's
//! field values, a payload or a secret: messages are safe to log and to write into a
//! dead-letter header.

use std::path::PathBuf;

use rdkafka::error::KafkaError;

/// Everything that can go wrong in pegasus-events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid; `field` names it as the user wrote it
    /// (e.g. `Kafka.BootstrapServers` or `KAFKA_BOOTSTRAP_SERVERS`).
    #[error("invalid configuration `{}`: {}", Shown(field), Shown(reason))]
    Config {
        /// The setting that is wrong.
        field: String,
        /// Why it is wrong.
        reason: String,
    },

    /// A configuration file could not be read.
    #[error("cannot read configuration file {}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A configuration file is not valid JSON.
    #[error("configuration file {} is not valid JSON: line {line}, column {column}", path.display())]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// Line of the syntax error.
        line: usize,
        /// Column of the syntax error.
        column: usize,
    },

    /// librdkafka refused to create a client from the configuration.
    #[error("cannot create the Kafka {client} client")]
    Client {
        /// Which client: `producer`, `consumer` or `admin`.
        client: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },

    /// No broker at the bootstrap address answered: when a client was created or started
    /// (within [`KafkaConfig::connect_timeout`](crate::KafkaConfig::connect_timeout)), or
    /// while a publish waited for its acknowledgement. The message names the client, the
    /// address and the cause in words.
    #[error("{}", crate::connection::describe_unreachable(client, bootstrap, *waited, cause))]
    BrokersUnreachable {
        /// Which client: `producer`, `consumer`, `topic admin`, `outbox relay`, `dead-letter reader`.
        client: &'static str,
        /// The bootstrap servers as configured.
        bootstrap: String,
        /// How long it waited.
        waited: std::time::Duration,
        /// Why no broker answered.
        cause: crate::connection::UnreachableCause,
    },

    /// The broker refused an operation: no ACL allows it for the client's principal.
    /// Fails at once (a publish does not wait out its delivery timeout), and ends a
    /// consumer's `run`: waiting does not grant an ACL.
    #[error("{}", crate::acl::describe_denial(client, principal, *operation, resource))]
    NotAuthorized {
        /// The client that was refused, e.g. `producer`, `consumer`.
        client: &'static str,
        /// The principal as far as the configuration tells it: `User:<SASL user name>`, the
        /// client certificate's subject, or `User:ANONYMOUS`.
        principal: String,
        /// The operation refused.
        operation: crate::acl::AclOperation,
        /// The resource it was refused on.
        resource: crate::acl::AclResource,
    },

    /// An event could not be serialized to JSON.
    #[error("cannot serialize event `{event_type}` to JSON: {}", Shown(detail))]
    Serialize {
        /// The event type name.
        event_type: &'static str,
        /// What serde reported (serialization errors carry no field values).
        detail: String,
    },

    /// A `traceparent` or `tracestate` given in [`PublishMetadata`](crate::PublishMetadata)
    /// is not valid W3C Trace Context: refused before anything was published or stored in
    /// the outbox, so no record carries a context other implementations cannot read. The
    /// message names the header and the reason, never the value.
    #[error("`{header}` in the publish metadata is not valid W3C Trace Context: {}", reason.describe())]
    InvalidTraceContext {
        /// The header: `traceparent` or `tracestate`.
        header: &'static str,
        /// Why it was refused.
        reason: crate::telemetry::InvalidTraceContext,
    },

    /// The broker did not acknowledge a record.
    #[error("{}", describe_delivery(topic, source))]
    Delivery {
        /// The topic.
        topic: String,
        /// librdkafka's error (a timeout is `MessageProduction(MessageTimedOut)`).
        #[source]
        source: KafkaError,
    },

    /// Waiting for outstanding records to be acknowledged timed out or failed.
    #[error("flushing the producer failed")]
    Flush {
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },

    /// Creating a topic failed (an already existing topic is not an error).
    #[error("cannot create topic `{}`: {}", Shown(topic), Shown(reason))]
    TopicCreation {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },

    /// An admin request failed as a whole.
    #[error("admin request `{operation}` failed")]
    Admin {
        /// The request, e.g. `create_topics`.
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },

    /// A required CloudEvents header is missing from a record.
    #[error("record has no `{header}` header")]
    MissingHeader {
        /// The header name.
        header: &'static str,
    },

    /// A header is present but its value cannot be used.
    #[error("header `{header}` is malformed: {}", Shown(reason))]
    MalformedHeader {
        /// The header name.
        header: &'static str,
        /// What is wrong with it (never the value of a sensitive field).
        reason: String,
    },

    /// The record declares a CloudEvents version this library does not read.
    #[error(
        "unsupported CloudEvents specversion `{}` (expected `1.0`)",
        Shown(found)
    )]
    UnsupportedSpecVersion {
        /// The version found.
        found: String,
    },

    /// The record's `ce_type` is not the event type that was expected.
    #[error("event type mismatch: expected `{expected}`, found `{}`", Shown(found))]
    EventTypeMismatch {
        /// The type the handler decodes.
        expected: &'static str,
        /// The type the record declares.
        found: String,
    },

    /// The record's schema version is newer than the code knows.
    #[error(
        "`{event_type}` schema version {found} is newer than the newest known version {newest}"
    )]
    UnknownSchemaVersion {
        /// The event type name.
        event_type: &'static str,
        /// The version found.
        found: u32,
        /// The newest version the code knows.
        newest: u32,
    },

    /// The record's schema version is older than any version the upcast chain declares.
    #[error(
        "`{event_type}` schema version {found} is older than the oldest declared version {oldest}"
    )]
    UnsupportedSchemaVersion {
        /// The event type name.
        event_type: &'static str,
        /// The version found.
        found: u32,
        /// The oldest version the upcast chain declares.
        oldest: u32,
    },

    /// The payload is not JSON of the event's shape.
    #[error(
        "payload of `{event_type}` cannot be decoded: {} (line {line}, column {column})",
        Shown(detail)
    )]
    MalformedPayload {
        /// The event type name.
        event_type: &'static str,
        /// What is wrong, with any value from the payload removed.
        detail: String,
        /// Line of the problem in the payload.
        line: usize,
        /// Column of the problem in the payload.
        column: usize,
    },

    /// A record on a topic with several event types carries a type no handler takes.
    #[error(
        "no handler for event type `{}` on topic `{}`",
        Shown(found),
        Shown(topic)
    )]
    UnhandledEventType {
        /// The topic.
        topic: String,
        /// The record's `ce_type`.
        found: String,
    },

    /// A consumer operation failed.
    #[error("consumer operation `{operation}` failed")]
    Consumer {
        /// The operation, e.g. `subscribe`.
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },

    /// A thread the library needs could not be started (the system refused it).
    #[error("cannot start {what}")]
    Spawn {
        /// What was being started, e.g. `the consumer's poll thread`.
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// A task of the library stopped unexpectedly: it panicked (for example in an
    /// [`IdempotencyStore`](crate::IdempotencyStore) implementation) or was cancelled. The
    /// consumer stops gracefully around it and returns this; the record it held stays
    /// uncommitted and is delivered again.
    #[error("{} stopped unexpectedly: {}", Shown(task), Shown(reason))]
    TaskFailed {
        /// The task, e.g. `the worker of partition 3 of topic \`orders\``.
        task: String,
        /// Why: the panic's message (redacted of configuration secrets), or `cancelled`.
        reason: String,
    },

    /// The record has no payload at all.
    #[error("record has no payload")]
    EmptyPayload,

    /// The outbox table could not be read or written.
    #[error("outbox in `{store}` failed to {operation}")]
    Outbox {
        /// The database, e.g. `postgres`.
        store: &'static str,
        /// What it was doing, e.g. `store events`.
        operation: &'static str,
        /// The database's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The database holds the library's tables at a newer schema version than this
    /// version of the library knows; it refuses to write rows in a layout it does not know.
    #[error(
        "the `{component}` tables in `{store}` are at schema version {found}, newer than \
         version {known}, the newest this version of pegasus-events knows; upgrade pegasus-events"
    )]
    SchemaTooNew {
        /// The database, e.g. `postgres`.
        store: &'static str,
        /// The library's component whose tables they are: `outbox` or `idempotency`.
        component: &'static str,
        /// The version recorded in `pegasus_schema_history`.
        found: i64,
        /// The newest version this library knows.
        known: i64,
    },

    /// `pegasus_schema_history` records a version of the library's tables that no version
    /// of the library writes (a negative one): the history was edited by hand or by
    /// another tool, and migrating on top of it could damage the tables.
    #[error(
        "`pegasus_schema_history` in `{store}` records version {found} for `{component}`, \
         which pegasus-events never writes; repair the history table"
    )]
    SchemaHistoryCorrupt {
        /// The database, e.g. `postgres`.
        store: &'static str,
        /// The library's component: `outbox` or `idempotency`.
        component: &'static str,
        /// The version found.
        found: i64,
    },

    /// An idempotency store could not be read or written.
    #[error("idempotency store `{store}` failed to {operation}")]
    IdempotencyStore {
        /// The store, e.g. `postgres`.
        store: &'static str,
        /// What it was doing, e.g. `mark an event processed`.
        operation: &'static str,
        /// The database's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    // Field encryption (`crate::encryption`). None of these carries a plaintext, a key or
    // an envelope's bytes.
    /// An event type with `#[event(encrypted)]` fields was published, enqueued or decoded
    /// without the keys it needs; on publish nothing was sent, on consume it is a decode
    /// error.
    #[error("{}", describe_not_configured(event_type, missing))]
    EncryptionNotConfigured {
        /// The event type name (empty when no event was involved).
        event_type: &'static str,
        /// What is missing, e.g. `encryption keys (EventProducer::with_encryption)`.
        missing: &'static str,
    },

    /// An encrypted field could not be encrypted; nothing was published.
    #[error("cannot encrypt field `{field}` of event `{event_type}`: {reason}")]
    Encryption {
        /// The event type name.
        event_type: &'static str,
        /// The field's JSON name.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },

    /// An encrypted field's value is not a well-formed envelope (or is not encrypted at
    /// all); a decode error.
    #[error("encrypted field `{field}` of event `{event_type}` is malformed: {reason}")]
    MalformedEncryptedField {
        /// The event type name.
        event_type: &'static str,
        /// The field's JSON name.
        field: &'static str,
        /// What is wrong, in fixed words.
        reason: &'static str,
    },

    /// An encrypted field names a key the key ring does not hold; a decode error.
    #[error(
        "encrypted field `{field}` of event `{event_type}` is encrypted under key `{}`, which \
         the key ring does not hold",
        Shown(key_id)
    )]
    UnknownEncryptionKey {
        /// The event type name.
        event_type: &'static str,
        /// The field's JSON name.
        field: &'static str,
        /// The key id the value names (key ids are not secret).
        key_id: String,
    },

    /// An encrypted field failed authentication: tampered, under another key of the same
    /// id, or copied from another event or field; a decode error.
    #[error(
        "encrypted field `{field}` of event `{event_type}` failed authentication (tampered, \
         or written for another event or field)"
    )]
    DecryptionFailed {
        /// The event type name.
        event_type: &'static str,
        /// The field's JSON name.
        field: &'static str,
    },

    /// A stored subject key cannot be unwrapped (its ring key is gone, or the row was
    /// altered); the record is held and retried, not dead-lettered.
    #[error("a stored subject key cannot be used: {reason}")]
    SubjectKeyUnusable {
        /// Why, in fixed words.
        reason: &'static str,
    },

    /// A subject key store could not be read or written.
    #[error("subject key store `{store}` failed to {operation}")]
    SubjectKeyStore {
        /// The store, e.g. `postgres`.
        store: &'static str,
        /// What it was doing, e.g. `look up a key`.
        operation: &'static str,
        /// The database's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Text that came from outside (a record's header, a panic, a setting's name) as it goes
/// into a message: on one line (control characters escaped, so a value cannot forge a log
/// line) and at most [`SHOWN_CHARS`] characters.
struct Shown<'a>(&'a str);

/// The most characters of an outside value a message shows.
const SHOWN_CHARS: usize = 300;

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for (shown, c) in self.0.chars().enumerate() {
            if shown == SHOWN_CHARS {
                return f.write_str("...");
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The message of [`Error::EncryptionNotConfigured`].
fn describe_not_configured(event_type: &str, missing: &str) -> String {
    if event_type.is_empty() {
        format!("field encryption is not configured: {missing}")
    } else {
        format!("event `{event_type}` has encrypted fields, but {missing}")
    }
}

/// The message of [`Error::Delivery`]: a timeout says what usually causes it while the
/// brokers answer (an outage is [`Error::BrokersUnreachable`]).
fn describe_delivery(topic: &str, source: &KafkaError) -> String {
    if source.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::MessageTimedOut) {
        format!(
            "publishing to topic `{topic}` timed out: no acknowledgement within the delivery \
             timeout (is the partition's leader available, and are at least \
             min.insync.replicas replicas in sync?)"
        )
    } else {
        format!("publishing to topic `{topic}` failed")
    }
}

impl Error {
    /// Whether this error means a record could not be decoded (the `decode` dead-letter
    /// reason), as opposed to a failure of the client or the broker.
    pub fn is_decode_error(&self) -> bool {
        matches!(
            self,
            Error::MissingHeader { .. }
                | Error::MalformedHeader { .. }
                | Error::UnsupportedSpecVersion { .. }
                | Error::EventTypeMismatch { .. }
                | Error::UnknownSchemaVersion { .. }
                | Error::UnsupportedSchemaVersion { .. }
                | Error::MalformedPayload { .. }
                | Error::UnhandledEventType { .. }
                | Error::EmptyPayload
                | Error::EncryptionNotConfigured { .. }
                | Error::MalformedEncryptedField { .. }
                | Error::UnknownEncryptionKey { .. }
                | Error::DecryptionFailed { .. }
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and each of its causes, written with `Display`, one per line: what a
/// program's `main` should print instead of the `Debug` form.
///
/// ```
/// use pegasus_events::{error::Report, KafkaConfig};
///
/// let error = KafkaConfig::from_appsettings_json(r#"{"Kafka":{"Acks":"most"}}"#).unwrap_err();
/// assert_eq!(
///     Report::new(&error).to_string(),
///     "invalid configuration `Kafka.Acks`: one of `None` `Leader` `All`"
/// );
/// ```
pub struct Report<'e>(&'e (dyn std::error::Error + 'static));

impl<'e> Report<'e> {
    /// The report of `error` and its causes.
    pub fn new(error: &'e (dyn std::error::Error + 'static)) -> Self {
        Report(error)
    }
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(current) = cause {
            write!(f, "\n  caused by: {current}")?;
            cause = current.source();
        }
        Ok(())
    }
}

impl std::fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_a_record_or_a_panic_cannot_break_a_message_into_lines_or_swell_it() {
        let forged = "Shipment\nERROR forged log line\r\u{1b}[31m";
        let errors = [
            Error::EventTypeMismatch {
                expected: "ShipmentCreatedEvent",
                found: forged.to_owned(),
            },
            Error::UnsupportedSpecVersion {
                found: forged.to_owned(),
            },
            Error::UnhandledEventType {
                topic: "identity-events".to_owned(),
                found: forged.to_owned(),
            },
            Error::TaskFailed {
                task: "the worker of partition 0".to_owned(),
                reason: forged.to_owned(),
            },
            Error::Config {
                field: forged.to_owned(),
                reason: "unknown setting".to_owned(),
            },
        ];
        for error in &errors {
            let message = error.to_string();
            assert!(
                !message.chars().any(char::is_control),
                "one line, no control characters: {message:?}"
            );
            assert!(
                message.contains("Shipment\\nERROR forged log line\\r\\u{1b}[31m"),
                "{message}"
            );
        }
        let long = Error::UnsupportedSpecVersion {
            found: "x".repeat(1_000_000),
        };
        let message = long.to_string();
        assert!(message.len() < SHOWN_CHARS + 100, "{} bytes", message.len());
        assert!(message.contains("x..."), "{message}");
    }
}

//! Every span attribute name this crate writes, and how spans are named, in one place.
//!
//! The names follow the OpenTelemetry semantic conventions for messaging spans, Kafka
//! flavour (semantic conventions 1.37; the messaging conventions are still marked
//! "development" and have renamed attributes between versions). When they change, this
//! module is the only one to follow them. The `otel.*` names are not attributes: they are
//! the fields `tracing-opentelemetry` reads for the span's name, kind and status.

/// `messaging.system`: always [`KAFKA`].
pub const MESSAGING_SYSTEM: &str = "messaging.system";
/// The value of `messaging.system`.
pub const KAFKA: &str = "kafka";
/// `messaging.operation.name`: `send` or `process`.
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.operation.type`: `send`, `process` (and `create` for an outbox enqueue).
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
/// `messaging.destination.name`: the topic.
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
/// `messaging.destination.partition.id`: the partition, as text.
pub const MESSAGING_DESTINATION_PARTITION_ID: &str = "messaging.destination.partition.id";
/// `messaging.kafka.offset`.
pub const MESSAGING_KAFKA_OFFSET: &str = "messaging.kafka.offset";
/// `messaging.kafka.message.key`: the record key, cut to [`MAX_ATTRIBUTE_BYTES`].
pub const MESSAGING_KAFKA_MESSAGE_KEY: &str = "messaging.kafka.message.key";
/// `messaging.consumer.group.name`.
pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
/// `messaging.message.id`: the `ce_id`.
pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
/// `messaging.client.id`: the configured client id.
pub const MESSAGING_CLIENT_ID: &str = "messaging.client.id";
/// `error.type`: a fixed word for what failed (a dead-letter reason, a Kafka error code).
pub const ERROR_TYPE: &str = "error.type";
/// How many times the handler was called for the record (ours; the conventions have no
/// attribute for attempts). Each retry is also a span event, the runtime's "handler
/// failed; the record will be retried" log line.
pub const PEGASUS_ATTEMPTS: &str = "pegasus.attempts";
/// Why a record was dead-lettered: `handler`, `decode`, `panic` (ours).
pub const PEGASUS_DEAD_LETTER_REASON: &str = "pegasus.dead_letter.reason";

/// `tracing-opentelemetry`'s field for the span name, e.g. `send shipping.shipment.created`.
pub const OTEL_NAME: &str = "otel.name";
/// `tracing-opentelemetry`'s field for the span kind: `producer` or `consumer`.
pub const OTEL_KIND: &str = "otel.kind";
/// `tracing-opentelemetry`'s field for the span status: `error` on failure.
pub const OTEL_STATUS_CODE: &str = "otel.status_code";

/// The operation of a publish.
pub const SEND: &str = "send";
/// The operation of a handler call.
pub const PROCESS: &str = "process";
/// The operation of an outbox enqueue: the record is created now and sent later by the
/// relay, so its context is that of the business transaction.
pub const CREATE: &str = "create";

/// The longest value taken from the wire (a key) into an attribute; longer ones are cut at
/// a character boundary.
pub const MAX_ATTRIBUTE_BYTES: usize = 256;

/// The `tracing` target of every span this crate creates, so an application can filter
/// them on their own (`pegasus_events::otel=off`, or `=info` to keep them).
pub const TARGET: &str = "pegasus_events::otel";

/// `value` cut to at most [`MAX_ATTRIBUTE_BYTES`], at a character boundary.
pub fn bounded(value: &str) -> &str {
    if value.len() <= MAX_ATTRIBUTE_BYTES {
        return value;
    }
    let mut end = MAX_ATTRIBUTE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_key_is_cut_at_a_character_boundary() {
        let key = "é".repeat(200);
        let cut = bounded(&key);
        assert!(cut.len() <= MAX_ATTRIBUTE_BYTES);
        assert!(key.starts_with(cut));
        assert_eq!(bounded("short"), "short");
    }
}

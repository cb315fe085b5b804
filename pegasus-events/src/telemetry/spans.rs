//! The spans themselves. Each is created through `tracing` at level INFO under the target
//! [`TARGET`]; a span nobody listens to is `Span::none()`, which costs a callsite check and
//! no allocation.

use tracing::field::Empty;
use tracing::{Level, Span};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use super::semconv::CREATE;
use super::semconv::{
    bounded, ERROR_TYPE, KAFKA, MESSAGING_CLIENT_ID, MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME, MESSAGING_DESTINATION_PARTITION_ID, MESSAGING_KAFKA_MESSAGE_KEY,
    MESSAGING_KAFKA_OFFSET, MESSAGING_MESSAGE_ID, MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE, MESSAGING_SYSTEM, OTEL_KIND, OTEL_NAME, OTEL_STATUS_CODE,
    PEGASUS_ATTEMPTS, PEGASUS_DEAD_LETTER_REASON, PROCESS, SEND, TARGET,
};

/// `send <topic>` (kind producer): one publish, from the hand-off to librdkafka to the
/// broker's acknowledgement. The message id, partition and offset are recorded as they
/// become known; a failure records `error.type` and the error status.
pub(crate) fn send(topic: &str, client_id: &str) -> Span {
    tracing::span!(
        target: TARGET,
        Level::INFO,
        "send",
        { OTEL_NAME } = %format_args!("{SEND} {topic}"),
        { OTEL_KIND } = "producer",
        { MESSAGING_SYSTEM } = KAFKA,
        { MESSAGING_OPERATION_NAME } = SEND,
        { MESSAGING_OPERATION_TYPE } = SEND,
        { MESSAGING_DESTINATION_NAME } = topic,
        { MESSAGING_CLIENT_ID } = client_id,
        { MESSAGING_KAFKA_MESSAGE_KEY } = Empty,
        { MESSAGING_MESSAGE_ID } = Empty,
        { MESSAGING_DESTINATION_PARTITION_ID } = Empty,
        { MESSAGING_KAFKA_OFFSET } = Empty,
        { ERROR_TYPE } = Empty,
        { OTEL_STATUS_CODE } = Empty,
    )
}

/// `create <topic>` (kind producer): an outbox enqueue. The record is sent later by the
/// relay; the context of this span is what the record carries, so the consumer's span
/// continues the business transaction's trace, not the relay's.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn create(topic: &str) -> Span {
    tracing::span!(
        target: TARGET,
        Level::INFO,
        "create",
        { OTEL_NAME } = %format_args!("{CREATE} {topic}"),
        { OTEL_KIND } = "producer",
        { MESSAGING_SYSTEM } = KAFKA,
        { MESSAGING_OPERATION_NAME } = CREATE,
        { MESSAGING_OPERATION_TYPE } = CREATE,
        { MESSAGING_DESTINATION_NAME } = topic,
        { MESSAGING_KAFKA_MESSAGE_KEY } = Empty,
        { MESSAGING_MESSAGE_ID } = Empty,
    )
}

/// What the process span says about the record it is made for.
pub(crate) struct Received<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<&'a str>,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) group: &'a str,
    pub(crate) client_id: &'a str,
}

/// `process <topic>` (kind consumer): a record from its first handler call to its outcome
/// (handled, duplicate or dead-lettered), retries included.
pub(crate) fn process(record: &Received<'_>) -> Span {
    tracing::span!(
        target: TARGET,
        Level::INFO,
        "process",
        { OTEL_NAME } = %format_args!("{PROCESS} {}", record.topic),
        { OTEL_KIND } = "consumer",
        { MESSAGING_SYSTEM } = KAFKA,
        { MESSAGING_OPERATION_NAME } = PROCESS,
        { MESSAGING_OPERATION_TYPE } = PROCESS,
        { MESSAGING_DESTINATION_NAME } = record.topic,
        { MESSAGING_DESTINATION_PARTITION_ID } = record.partition,
        { MESSAGING_KAFKA_OFFSET } = record.offset,
        { MESSAGING_KAFKA_MESSAGE_KEY } = record.key.map(bounded),
        { MESSAGING_MESSAGE_ID } = record.message_id.map(bounded),
        { MESSAGING_CONSUMER_GROUP_NAME } = record.group,
        { MESSAGING_CLIENT_ID } = record.client_id,
        { PEGASUS_ATTEMPTS } = Empty,
        { PEGASUS_DEAD_LETTER_REASON } = Empty,
        { ERROR_TYPE } = Empty,
        { OTEL_STATUS_CODE } = Empty,
    )
}

/// `send <dead-letter topic>` (kind producer): the copy of a failed record to the
/// dead-letter topic, a child of the record's process span.
pub(crate) fn dead_letter(topic: &str, reason: &'static str, client_id: &str) -> Span {
    tracing::span!(
        target: TARGET,
        Level::INFO,
        "send",
        { OTEL_NAME } = %format_args!("{SEND} {topic}"),
        { OTEL_KIND } = "producer",
        { MESSAGING_SYSTEM } = KAFKA,
        { MESSAGING_OPERATION_NAME } = SEND,
        { MESSAGING_OPERATION_TYPE } = SEND,
        { MESSAGING_DESTINATION_NAME } = topic,
        { MESSAGING_CLIENT_ID } = client_id,
        { PEGASUS_DEAD_LETTER_REASON } = reason,
        { MESSAGING_DESTINATION_PARTITION_ID } = Empty,
        { MESSAGING_KAFKA_OFFSET } = Empty,
    )
}

/// Whether a process span would be listened to; when not, no span is made (the record's
/// trace headers are still checked, to count malformed ones).
pub(crate) fn process_enabled() -> bool {
    tracing::span_enabled!(target: TARGET, Level::INFO)
}

/// Records a failure on `span`: `error.type` (a fixed word) and the error status.
pub(crate) fn failed(span: &Span, error_type: &str) {
    span.record(ERROR_TYPE, error_type);
    span.record(OTEL_STATUS_CODE, "error");
}

/// Records where the broker stored a record.
pub(crate) fn stored(span: &Span, partition: i32, offset: i64) {
    span.record(MESSAGING_DESTINATION_PARTITION_ID, partition);
    span.record(MESSAGING_KAFKA_OFFSET, offset);
}

/// Records the message id (`ce_id`) and the record key of an outgoing record.
pub(crate) fn outgoing(span: &Span, id: &str, key: &str) {
    span.record(MESSAGING_MESSAGE_ID, id);
    span.record(MESSAGING_KAFKA_MESSAGE_KEY, bounded(key));
}

/// Records a process span's outcome: how many handler calls it took and, when it was
/// dead-lettered, why.
pub(crate) fn processed(span: &Span, attempts: u32, dead_letter_reason: Option<&'static str>) {
    span.record(PEGASUS_ATTEMPTS, attempts);
    if let Some(reason) = dead_letter_reason {
        span.record(PEGASUS_DEAD_LETTER_REASON, reason);
        failed(span, reason);
    }
}

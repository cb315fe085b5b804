//! Header names of the wire contract. Other services and tools read these: they are part of
//! the public contract and never change.

/// CloudEvents spec version, always `1.0`.
pub const SPEC_VERSION: &str = "ce_specversion";
/// Event id (the design's `EventId`).
pub const ID: &str = "ce_id";
/// Publishing service (the design's `SourceService`).
pub const SOURCE: &str = "ce_source";
/// Event type name (the design's `EventType`).
pub const TYPE: &str = "ce_type";
/// When the event occurred (the design's `OccurredAt`).
pub const TIME: &str = "ce_time";
/// Media type of the value.
pub const CONTENT_TYPE: &str = "content-type";
/// Schema version of the payload.
pub const SCHEMA_VERSION: &str = "ce_schemaversion";
/// Partition key (CloudEvents partitioning extension).
pub const PARTITION_KEY: &str = "ce_partitionkey";
/// Entity id the event is about.
pub const SUBJECT: &str = "ce_subject";
/// Correlation id of the business flow.
pub const CORRELATION_ID: &str = "ce_correlationid";
/// `ce_id` of the event that caused this one.
pub const CAUSATION_ID: &str = "ce_causationid";
/// W3C Trace Context parent.
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context vendor state.
pub const TRACESTATE: &str = "tracestate";

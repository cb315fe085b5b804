//! What a handler implements, what it receives, and how it reports failure.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::event::Event;
use crate::wire::EventMetadata;

/// Handles the events of one type.
///
/// The runtime calls it once per record, in offset order within a partition, and commits
/// the record's offset only after it returned `Ok` (and every earlier record of the
/// partition did). An `Err` is retried by the handler's [`RetryPolicy`](super::RetryPolicy) and
/// then dead-lettered; a panic is dead-lettered at once. Either way the offset is committed
/// only after the dead-letter topic acknowledged the record.
///
/// ```
/// use pegasus_events::consumer::{EventContext, EventHandler, HandlerError};
/// # use pegasus_events::Event;
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, Event)]
/// # #[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
/// # struct ShipmentCreated { #[event(key)] shipment_id: String, tracking_number: String }
///
/// struct ShipmentCreatedConsumer;
///
/// impl EventHandler<ShipmentCreated> for ShipmentCreatedConsumer {
///     async fn handle(&self, event: ShipmentCreated, context: &EventContext<'_>) -> Result<(), HandlerError> {
///         tracing::info!(tracking = %event.tracking_number, offset = context.offset, "processing shipment created");
///         Ok(())
///     }
/// }
/// ```
pub trait EventHandler<E: Event>: Send + Sync + 'static {
    /// Handles one event. `context` carries its metadata and coordinates.
    fn handle(
        &self,
        event: E,
        context: &EventContext<'_>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<E: Event, H: EventHandler<E>> EventHandler<E> for Arc<H> {
    fn handle(
        &self,
        event: E,
        context: &EventContext<'_>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (**self).handle(event, context)
    }
}

/// The metadata and coordinates of the record being handled, borrowed from the record.
#[derive(Clone, Debug)]
pub struct EventContext<'a> {
    /// The CloudEvents metadata (id, source, type, time, schema version, correlation and
    /// causation ids, ...).
    pub metadata: EventMetadata<'a>,
    /// The topic the record was read from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record key, when it is UTF-8.
    pub key: Option<&'a str>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The consumer group handling it.
    pub group_id: &'a str,
}

impl EventContext<'_> {
    /// The event id (`ce_id`).
    pub fn event_id(&self) -> uuid::Uuid {
        self.metadata.id
    }

    /// The correlation id, if the publisher set one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.metadata.correlation_id.as_deref()
    }
}

/// Whether retrying could help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// It may succeed later (a database was down, a timeout): retry.
    Transient,
    /// It will never succeed (a business rule rejects the event): do not retry.
    Permanent,
    /// Something the handler depends on is down (its database, a service it calls), not
    /// the handler's own logic: the record waits, retried with backoff for as long as the
    /// outage lasts, without spending an attempt and never dead-lettered, so the records
    /// behind it keep their order. [`Inbox`](crate::idempotency::Inbox) reports its
    /// database's outages this way.
    Unavailable,
}

/// A handler's failure: the cause and whether retrying could help.
///
/// Any `std::error::Error` converts into a transient failure with `?`.
pub struct HandlerError {
    kind: FailureKind,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError {
            kind: FailureKind::Transient,
            source: source.into(),
        }
    }

    /// Something the handler depends on is unavailable ([`FailureKind::Unavailable`]): the
    /// record waits for it without spending an attempt. Use it only for outages; an error
    /// that the event itself causes must stay transient or permanent, or the record would
    /// wait forever.
    pub fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError {
            kind: FailureKind::Unavailable,
            source: source.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError {
            kind: FailureKind::Permanent,
            source: source.into(),
        }
    }

    /// Whether retrying could help.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The cause.
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        self.source
    }

    pub(crate) fn message(&self) -> String {
        self.source.to_string()
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
            FailureKind::Unavailable => "unavailable",
        };
        write!(f, "{kind} handler failure: {}", self.source)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::transient(error)
    }
}

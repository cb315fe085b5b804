//! From a record to the right handler: decoding, and dispatch on `ce_type` for topics that
//! carry several event types (the design's `identity-events`).
//!
//! A topic with one event type is handled by a worker that is generic over the concrete
//! handler, so the handler's future lives inside the worker's own future: no allocation
//! per record. A topic with several event types boxes each handler call, the price of
//! choosing the handler at run time.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};

use super::handler::{EventContext, EventHandler, HandlerError};
use crate::error::Error;
use crate::event::Event;
use crate::wire::{self, Decoded};

/// A record as the worker holds it: borrowed from its partition queue, or (rarely) owned,
/// when librdkafka returned it on the consumer's main queue before the partition was split.
#[derive(Clone, Copy)]
pub(crate) enum Record<'a> {
    Borrowed(&'a BorrowedMessage<'a>),
    Owned(&'a OwnedMessage),
}

impl<'a> Record<'a> {
    pub(crate) fn topic(&self) -> &'a str {
        match self {
            Record::Borrowed(m) => m.topic(),
            Record::Owned(m) => m.topic(),
        }
    }

    pub(crate) fn partition(&self) -> i32 {
        match self {
            Record::Borrowed(m) => m.partition(),
            Record::Owned(m) => m.partition(),
        }
    }

    pub(crate) fn offset(&self) -> i64 {
        match self {
            Record::Borrowed(m) => m.offset(),
            Record::Owned(m) => m.offset(),
        }
    }

    fn key(&self) -> Option<&'a str> {
        let key = match self {
            Record::Borrowed(m) => m.key(),
            Record::Owned(m) => m.key(),
        };
        key.and_then(|k| std::str::from_utf8(k).ok())
    }

    fn decode<E: Event>(&self) -> Result<Decoded<'a, E>, Error> {
        match self {
            Record::Borrowed(m) => wire::decode::<E, _>(*m),
            Record::Owned(m) => wire::decode::<E, _>(*m),
        }
    }

    fn event_type(&self) -> Result<Option<std::borrow::Cow<'a, str>>, Error> {
        match self {
            Record::Borrowed(m) => wire::event_type(*m),
            Record::Owned(m) => wire::event_type(*m),
        }
    }
}

/// What became of one attempt at a record.
pub(crate) enum Outcome {
    /// The handler succeeded.
    Handled,
    /// The handler returned an error.
    Failed(HandlerError),
    /// The record cannot be decoded into any registered event type.
    Undecodable(Error),
}

/// Handles records of one topic; implemented by one typed handler or by a mixed-topic
/// dispatcher.
pub(crate) trait RecordHandler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        record: Record<'a>,
        attempt: u32,
        group_id: &'a str,
    ) -> impl Future<Output = Outcome> + Send + 'a;
}

/// A handler for one event type.
pub(crate) struct Typed<E, H> {
    handler: H,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event, H: EventHandler<E>> Typed<E, H> {
    pub(crate) fn new(handler: H) -> Self {
        Typed {
            handler,
            _event: PhantomData,
        }
    }
}

impl<E: Event, H: EventHandler<E>> RecordHandler for Typed<E, H> {
    async fn handle<'a>(&'a self, record: Record<'a>, attempt: u32, group_id: &'a str) -> Outcome {
        let decoded = match record.decode::<E>() {
            Ok(decoded) => decoded,
            Err(error) => return Outcome::Undecodable(error),
        };
        let context = EventContext {
            metadata: decoded.metadata,
            topic: record.topic(),
            partition: record.partition(),
            offset: record.offset(),
            key: record.key(),
            attempt,
            group_id,
        };
        match self.handler.handle(decoded.event, &context).await {
            Ok(()) => Outcome::Handled,
            Err(error) => Outcome::Failed(error),
        }
    }
}

type BoxedOutcome<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// [`RecordHandler`] with its type erased, for the mixed-topic table.
pub(crate) trait DynRecordHandler: Send + Sync + 'static {
    fn handle_boxed<'a>(
        &'a self,
        record: Record<'a>,
        attempt: u32,
        group_id: &'a str,
    ) -> BoxedOutcome<'a>;
}

impl<R: RecordHandler> DynRecordHandler for R {
    fn handle_boxed<'a>(
        &'a self,
        record: Record<'a>,
        attempt: u32,
        group_id: &'a str,
    ) -> BoxedOutcome<'a> {
        Box::pin(self.handle(record, attempt, group_id))
    }
}

/// The handlers of a topic that carries several event types, chosen by `ce_type`.
pub(crate) struct Mixed {
    pub(crate) by_type: HashMap<&'static str, Arc<dyn DynRecordHandler>>,
}

impl RecordHandler for Mixed {
    async fn handle<'a>(&'a self, record: Record<'a>, attempt: u32, group_id: &'a str) -> Outcome {
        let found = match record.event_type() {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Outcome::Undecodable(Error::MissingHeader {
                    header: wire::header::TYPE,
                })
            }
            Err(error) => return Outcome::Undecodable(error),
        };
        match self.by_type.get(found.as_ref()) {
            Some(handler) => handler.handle_boxed(record, attempt, group_id).await,
            None => Outcome::Undecodable(Error::UnhandledEventType {
                topic: record.topic().to_owned(),
                found: found.into_owned(),
            }),
        }
    }
}

//! From a record to the right handler: decoding, and dispatch on `ce_type` for topics that
//! carry several event types (the design's `identity-events`).

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};

use super::handler::{EventContext, EventHandler, HandlerError};
use crate::error::Error;
use crate::event::Event;
use crate::wire;

/// What became of one attempt at a record.
pub(crate) enum Outcome {
    /// The handler succeeded.
    Handled,
    /// The handler returned an error.
    Failed(HandlerError),
    /// The record cannot be decoded into any registered event type.
    Undecodable(Error),
}

pub(crate) type OutcomeFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One registered handler, with its event type erased.
pub(crate) trait Dispatch: Send + Sync {
    fn event_type(&self) -> &'static str;
    fn dispatch<'a>(
        &'a self,
        message: &'a OwnedMessage,
        attempt: u32,
        group_id: &'a Arc<str>,
        topic: &'a Arc<str>,
    ) -> OutcomeFuture<'a>;
}

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

impl<E: Event, H: EventHandler<E>> Dispatch for Typed<E, H> {
    fn event_type(&self) -> &'static str {
        E::NAME
    }

    fn dispatch<'a>(
        &'a self,
        message: &'a OwnedMessage,
        attempt: u32,
        group_id: &'a Arc<str>,
        topic: &'a Arc<str>,
    ) -> OutcomeFuture<'a> {
        Box::pin(async move {
            let decoded = match wire::decode::<E, _>(message) {
                Ok(decoded) => decoded,
                Err(error) => return Outcome::Undecodable(error),
            };
            let context = EventContext {
                metadata: decoded.metadata.into_owned(),
                topic: Arc::clone(topic),
                partition: message.partition(),
                offset: message.offset(),
                key: message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .map(str::to_owned),
                attempt,
                group_id: Arc::clone(group_id),
            };
            match self.handler.handle(decoded.event, &context).await {
                Ok(()) => Outcome::Handled,
                Err(error) => Outcome::Failed(error),
            }
        })
    }
}

/// The handlers of one topic.
pub(crate) enum TopicRoute {
    /// One event type: records must carry its `ce_type` (or be plain JSON).
    Single(Box<dyn Dispatch>),
    /// Several event types on one topic: dispatch on `ce_type`.
    ByType(HashMap<&'static str, Box<dyn Dispatch>>),
}

impl TopicRoute {
    pub(crate) fn add(self, handler: Box<dyn Dispatch>) -> Result<Self, Error> {
        let mut by_type = match self {
            TopicRoute::Single(existing) => {
                let mut map = HashMap::new();
                map.insert(existing.event_type(), existing);
                map
            }
            TopicRoute::ByType(map) => map,
        };
        let name = handler.event_type();
        if by_type.insert(name, handler).is_some() {
            return Err(Error::Config {
                field: format!("handler for `{name}`"),
                reason: "registered twice in one consumer".to_owned(),
            });
        }
        Ok(TopicRoute::ByType(by_type))
    }

    pub(crate) fn dispatch<'a>(
        &'a self,
        message: &'a OwnedMessage,
        attempt: u32,
        group_id: &'a Arc<str>,
        topic: &'a Arc<str>,
    ) -> OutcomeFuture<'a> {
        match self {
            TopicRoute::Single(handler) => handler.dispatch(message, attempt, group_id, topic),
            TopicRoute::ByType(handlers) => {
                let found = match wire::event_type(message) {
                    Ok(Some(found)) => found,
                    Ok(None) => {
                        return Box::pin(std::future::ready(Outcome::Undecodable(
                            Error::MissingHeader {
                                header: wire::header::TYPE,
                            },
                        )))
                    }
                    Err(error) => return Box::pin(std::future::ready(Outcome::Undecodable(error))),
                };
                match handlers.get(found.as_ref()) {
                    Some(handler) => handler.dispatch(message, attempt, group_id, topic),
                    None => Box::pin(std::future::ready(Outcome::Undecodable(
                        Error::UnhandledEventType {
                            topic: topic.to_string(),
                            found: found.into_owned(),
                        },
                    ))),
                }
            }
        }
    }
}

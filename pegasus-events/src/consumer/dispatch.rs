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
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::message::{Message, OwnedMessage};
use uuid::Uuid;

use super::handler::{EventContext, EventHandler, FailureKind};
use super::native_queue::NativeMessage;
use super::retry::RetryPolicy;
use crate::error::Error;
use crate::event::Event;
use crate::idempotency::DynIdempotencyStore;
use crate::wire::{self, Decoded, FoundHeaders};

/// A record's message as the worker holds it: taken from its partition queue, or
/// (rarely) owned, when librdkafka returned it on the consumer's main queue before the
/// partition was split.
#[derive(Clone, Copy)]
pub(crate) enum Held<'a> {
    Native(&'a NativeMessage<'a>),
    Owned(&'a OwnedMessage),
}

impl<'a> Held<'a> {
    /// The contract's headers of the message, found in one pass over its headers (names
    /// compared as bytes, so one that is not UTF-8 never panics; the last of a repeated
    /// name counts). The worker reads them once per record, for its `process` span and for
    /// decoding: each pass costs a string length and a comparison per header.
    pub(crate) fn contract_headers(self) -> FoundHeaders<'a> {
        match self {
            Held::Native(m) => FoundHeaders::read(m),
            Held::Owned(m) => FoundHeaders::read(m),
        }
    }
}

/// A record as a handler sees it: its message and the contract headers read off it.
#[derive(Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) message: Held<'a>,
    pub(crate) headers: &'a FoundHeaders<'a>,
}

impl<'a> Record<'a> {
    pub(crate) fn topic(&self) -> &'a str {
        match self.message {
            Held::Native(m) => m.topic(),
            Held::Owned(m) => m.topic(),
        }
    }

    pub(crate) fn partition(&self) -> i32 {
        match self.message {
            Held::Native(m) => m.partition(),
            Held::Owned(m) => m.partition(),
        }
    }

    pub(crate) fn offset(&self) -> i64 {
        match self.message {
            Held::Native(m) => m.offset(),
            Held::Owned(m) => m.offset(),
        }
    }

    pub(crate) fn key(&self) -> Option<&'a str> {
        let key = match self.message {
            Held::Native(m) => m.key(),
            Held::Owned(m) => m.key(),
        };
        key.and_then(|k| std::str::from_utf8(k).ok())
    }

    fn decode<E: Event>(&self) -> Result<Decoded<'a, E>, Error> {
        match self.message {
            Held::Native(m) => wire::decode_found::<E, _>(m, self.headers),
            Held::Owned(m) => wire::decode_found::<E, _>(m, self.headers),
        }
    }

    /// [`Record::decode`], decrypting encrypted fields with `encryption`.
    async fn decode_encrypted<E: Event>(
        &self,
        encryption: Option<&crate::encryption::Encryption>,
    ) -> Result<Decoded<'a, E>, Error> {
        match self.message {
            Held::Native(m) => crate::encryption::decode_found(encryption, m, self.headers).await,
            Held::Owned(m) => crate::encryption::decode_found(encryption, m, self.headers).await,
        }
    }

    fn event_type(&self) -> Result<Option<std::borrow::Cow<'a, str>>, Error> {
        match self.message {
            Held::Native(m) => wire::event_type_found(m, self.headers),
            Held::Owned(m) => wire::event_type_found(m, self.headers),
        }
    }
}

/// What the handlers of one consumer share, for every record.
pub(crate) struct Env<'a> {
    pub(crate) group_id: &'a str,
    pub(crate) idempotency: Option<&'a dyn DynIdempotencyStore>,
    /// The keys of encrypted fields, when the consumer was given them.
    pub(crate) encryption: Option<&'a crate::encryption::Encryption>,
    /// The consumer's attempt timeout, for handlers without their own.
    pub(crate) handler_timeout: Option<Duration>,
    /// The partition's metric handles.
    pub(crate) metrics: &'a crate::metrics::PartitionMetrics,
}

/// What became of one attempt at a record.
pub(crate) enum Outcome {
    /// The handler succeeded; with an idempotency store, `mark` is the event id to mark
    /// processed before the offset is stored.
    Handled { mark: Option<Uuid> },
    /// The idempotency store says this group handled the event already.
    Duplicate,
    /// The handler returned an error; `error` is its text with sensitive values redacted.
    Failed {
        error: String,
        kind: FailureKind,
        /// The handler's own policy; `None` for the consumer's default.
        retry: Option<RetryPolicy>,
    },
    /// The handler panicked; `message` is redacted like `Failed::error`.
    Panicked { message: String },
    /// The record cannot be decoded into any registered event type.
    Undecodable(Error),
    /// The idempotency store could not be asked; the attempt did not happen.
    StoreUnavailable(Error),
}

/// Handles records of one topic; implemented by one typed handler or by a mixed-topic
/// dispatcher.
pub(crate) trait RecordHandler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        record: Record<'a>,
        attempt: u32,
        env: &'a Env<'a>,
    ) -> impl Future<Output = Outcome> + Send + 'a;
}

/// A handler for one event type, with its retry policy when it has its own.
pub(crate) struct Typed<E, H> {
    handler: H,
    retry: Option<RetryPolicy>,
    /// The handler's own attempt timeout; `None` for the consumer's.
    timeout: Option<Option<Duration>>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event, H: EventHandler<E>> Typed<E, H> {
    pub(crate) fn new(
        handler: H,
        retry: Option<RetryPolicy>,
        timeout: Option<Option<Duration>>,
    ) -> Self {
        Typed {
            handler,
            retry,
            timeout,
            _event: PhantomData,
        }
    }
}

/// `text` without the values of the record's sensitive fields (encrypted ones included).
/// The event was moved into the handler, so it is decoded again: this runs only on
/// failures.
async fn redact_sensitive<E: Event>(record: Record<'_>, env: &Env<'_>, text: &str) -> String {
    let mut values = Vec::new();
    let decoded = if E::HAS_ENCRYPTED_FIELDS {
        record.decode_encrypted::<E>(env.encryption).await
    } else {
        record.decode::<E>()
    };
    if let Ok(decoded) = decoded {
        decoded
            .event
            .visit_sensitive(&mut |value| values.push(value.to_owned()));
    }
    crate::dead_letter::redact(text, values.iter().map(String::as_str))
}

impl<E: Event, H: EventHandler<E>> RecordHandler for Typed<E, H> {
    async fn handle<'a>(&'a self, record: Record<'a>, attempt: u32, env: &'a Env<'a>) -> Outcome {
        // A constant per event type: without encrypted fields, the first arm only.
        let decoded = if E::HAS_ENCRYPTED_FIELDS {
            record.decode_encrypted::<E>(env.encryption).await
        } else {
            record.decode::<E>()
        };
        let decoded = match decoded {
            Ok(decoded) => decoded,
            // A subject key store that cannot be asked: the record waits, as for an
            // idempotency store.
            Err(error @ (Error::SubjectKeyStore { .. } | Error::SubjectKeyUnusable { .. })) => {
                return Outcome::StoreUnavailable(error)
            }
            Err(error) => return Outcome::Undecodable(error),
        };
        let event_id = decoded.metadata.id;
        // Asked before the first attempt only: a retry follows a failure of this worker's
        // own handler, and while it holds the partition no one else handles the record.
        if let Some(store) = env.idempotency.filter(|_| attempt == 1) {
            let answer = crate::idempotency::is_processed(store, env.group_id, event_id).await;
            env.metrics.idempotency.lookup(&answer);
            match answer {
                Ok(true) => return Outcome::Duplicate,
                Ok(false) => {}
                Err(error) => return Outcome::StoreUnavailable(error),
            }
        }
        let context = EventContext {
            metadata: decoded.metadata,
            topic: record.topic(),
            partition: record.partition(),
            offset: record.offset(),
            key: record.key(),
            attempt,
            group_id: env.group_id,
        };
        let started = std::time::Instant::now();
        let call = AssertUnwindSafe(self.handler.handle(decoded.event, &context)).catch_unwind();
        let result = match self.timeout.unwrap_or(env.handler_timeout) {
            // On timeout the handler's future is dropped here, before any new attempt.
            Some(limit) => match first_poll_then_timeout(call, limit).await {
                Ok(result) => result,
                Err(_) => {
                    env.metrics.handler_took(started);
                    return Outcome::Failed {
                        error: format!(
                            "the handler did not finish within its timeout of {limit:?}"
                        ),
                        kind: FailureKind::Transient,
                        retry: self.retry,
                    };
                }
            },
            None => call.await,
        };
        env.metrics.handler_took(started);
        match result {
            Ok(Ok(())) => Outcome::Handled {
                mark: env.idempotency.map(|_| event_id),
            },
            Ok(Err(error)) => Outcome::Failed {
                error: redact_sensitive::<E>(record, env, &error.message()).await,
                kind: error.kind(),
                retry: self.retry,
            },
            Err(panic) => Outcome::Panicked {
                message: redact_sensitive::<E>(record, env, &panic_message("the handler", &*panic))
                    .await,
            },
        }
    }
}

/// Runs `call` for at most `limit`, counted from its first wait: the timer is armed only
/// if the first poll leaves the call pending. Most handlers of a busy partition finish in
/// that poll, and arming a timer for each (reading the clock, a runtime handle, a
/// timer-wheel entry) was a measurable share of a record's cost. A timeout can only end a
/// call at one of its waits anyway, so what runs before the first wait was never bounded.
async fn first_poll_then_timeout<F: Future>(
    call: F,
    limit: Duration,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut call = std::pin::pin!(call);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => tokio::time::timeout(limit, call).await,
    }
}

/// The text of a panic in `during`, as the dead-letter header and the log show it.
pub(crate) fn panic_message(during: &str, panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    format!("panicked in {during}: {text}")
}

type BoxedOutcome<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// [`RecordHandler`] with its type erased, for the mixed-topic table.
pub(crate) trait DynRecordHandler: Send + Sync + 'static {
    fn handle_boxed<'a>(
        &'a self,
        record: Record<'a>,
        attempt: u32,
        env: &'a Env<'a>,
    ) -> BoxedOutcome<'a>;
}

impl<R: RecordHandler> DynRecordHandler for R {
    fn handle_boxed<'a>(
        &'a self,
        record: Record<'a>,
        attempt: u32,
        env: &'a Env<'a>,
    ) -> BoxedOutcome<'a> {
        Box::pin(self.handle(record, attempt, env))
    }
}

/// The handlers of a topic that carries several event types, chosen by `ce_type`.
pub(crate) struct Mixed {
    pub(crate) by_type: HashMap<&'static str, Arc<dyn DynRecordHandler>>,
}

impl RecordHandler for Mixed {
    async fn handle<'a>(&'a self, record: Record<'a>, attempt: u32, env: &'a Env<'a>) -> Outcome {
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
            Some(handler) => handler.handle_boxed(record, attempt, env).await,
            None => Outcome::Undecodable(Error::UnhandledEventType {
                topic: record.topic().to_owned(),
                found: found.into_owned(),
            }),
        }
    }
}

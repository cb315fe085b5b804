//! Idempotent consumers: remember which events a consumer group has handled, and skip a
//! second delivery of the same event.
//!
//! # Guarantees
//!
//! With a store registered through
//! [`ConsumerBuilder::idempotency`](crate::consumer::ConsumerBuilder::idempotency):
//!
//! - **A duplicate is acknowledged, not handled.** Before calling the handler, the runtime
//!   asks the store whether the record's event id (`ce_id`, or the derived id of a plain
//!   JSON record) was handled by this consumer group; if so, the record's offset is stored
//!   for commit and the handler is not called. A replayed dead letter keeps its `ce_id`, so
//!   it is recognised too.
//! - **Marked only after success.** The event is marked processed after its handler
//!   returned `Ok`, and the offset is stored only after the mark was written. A crash
//!   between the handler and the mark leads to a redelivery that calls the handler again:
//!   at least once, never lost. For effects that must not be applied twice even then,
//!   wrap the handler in an [`Inbox`] (features `sqlite`, `postgres`): its writes and the
//!   mark share one database transaction.
//! - **Store failures never lose or skip an event.** If the store cannot be read or
//!   written, the record is held, the call is retried with backoff, and the partition
//!   waits, as for a failed dead-letter write.
//!
//! Keys are `(consumer group, event id)`: two groups handle the same event independently.
//!
//! Three stores ship: [`MemoryIdempotencyStore`] (bounded, with expiry; forgets on restart),
//! `SqliteIdempotencyStore` (feature `sqlite`) and `PostgresIdempotencyStore` (feature
//! `postgres`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::Result;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod inbox;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use inbox::{Inbox, InboxHandler};
#[cfg(feature = "postgres")]
pub use postgres::PostgresIdempotencyStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteIdempotencyStore;

/// Remembers which events each consumer group has handled.
///
/// Implementations must be safe to call from several partitions' workers at once, and
/// `mark_processed` must be idempotent itself (marking twice is not an error).
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Whether `group` has handled the event `event_id`.
    fn is_processed(
        &self,
        group: &str,
        event_id: Uuid,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Records that `group` has handled the event `event_id`.
    fn mark_processed(
        &self,
        group: &str,
        event_id: Uuid,
    ) -> impl Future<Output = Result<()>> + Send;

    /// [`IdempotencyStore::is_processed`]'s answer, when the store has it at hand without
    /// waiting (an in-memory store does). The runtime asks this first and calls
    /// `is_processed` only on `None`, which saves it boxing that call's future (the runtime
    /// holds stores with their type erased). The default is `None`; a store that answers
    /// here must answer exactly as `is_processed` would.
    fn is_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<bool>> {
        let _ = (group, event_id);
        None
    }

    /// [`IdempotencyStore::mark_processed`], done without waiting when the store can: `Some`
    /// with its result, or `None` (the default) to have the runtime call `mark_processed`.
    fn mark_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<()>> {
        let _ = (group, event_id);
        None
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`IdempotencyStore`] with its type erased, as the runtime holds it.
pub(crate) trait DynIdempotencyStore: Send + Sync + 'static {
    fn is_processed<'a>(&'a self, group: &'a str, event_id: Uuid) -> BoxFuture<'a, Result<bool>>;
    fn mark_processed<'a>(&'a self, group: &'a str, event_id: Uuid) -> BoxFuture<'a, Result<()>>;
    fn is_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<bool>>;
    fn mark_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<()>>;
}

impl<S: IdempotencyStore> DynIdempotencyStore for S {
    fn is_processed<'a>(&'a self, group: &'a str, event_id: Uuid) -> BoxFuture<'a, Result<bool>> {
        Box::pin(IdempotencyStore::is_processed(self, group, event_id))
    }

    fn mark_processed<'a>(&'a self, group: &'a str, event_id: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(IdempotencyStore::mark_processed(self, group, event_id))
    }

    fn is_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<bool>> {
        IdempotencyStore::is_processed_now(self, group, event_id)
    }

    fn mark_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<()>> {
        IdempotencyStore::mark_processed_now(self, group, event_id)
    }
}

/// Asks `store` whether `group` handled `event_id`: at once when it can answer without
/// waiting, else through its (boxed) future.
pub(crate) async fn is_processed(
    store: &dyn DynIdempotencyStore,
    group: &str,
    event_id: Uuid,
) -> Result<bool> {
    match store.is_processed_now(group, event_id) {
        Some(answer) => answer,
        None => store.is_processed(group, event_id).await,
    }
}

/// Marks `event_id` handled by `group` in `store`: at once when it can, else through its
/// (boxed) future.
pub(crate) async fn mark_processed(
    store: &dyn DynIdempotencyStore,
    group: &str,
    event_id: Uuid,
) -> Result<()> {
    match store.mark_processed_now(group, event_id) {
        Some(done) => done,
        None => store.mark_processed(group, event_id).await,
    }
}

impl<S: IdempotencyStore> IdempotencyStore for std::sync::Arc<S> {
    fn is_processed(
        &self,
        group: &str,
        event_id: Uuid,
    ) -> impl Future<Output = Result<bool>> + Send {
        (**self).is_processed(group, event_id)
    }

    fn mark_processed(
        &self,
        group: &str,
        event_id: Uuid,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).mark_processed(group, event_id)
    }

    fn is_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<bool>> {
        (**self).is_processed_now(group, event_id)
    }

    fn mark_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<()>> {
        (**self).mark_processed_now(group, event_id)
    }
}

/// An in-memory store: at most `capacity` entries, each forgotten after `ttl`; the oldest
/// mark goes first when it is full. Lost on restart, so it catches the redeliveries of a
/// rebalance or a retry within one process, not those after a crash.
pub struct MemoryIdempotencyStore {
    capacity: usize,
    ttl: Duration,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// The marks of each group. Keyed by group first so that a lookup borrows the group's
    /// name instead of building an owned key for every record.
    groups: HashMap<Arc<str>, HashMap<Uuid, Instant>>,
    /// Marks in the order they were made, for eviction and expiry.
    order: VecDeque<(Arc<str>, Uuid, Instant)>,
    /// How many marks `groups` holds.
    len: usize,
}

impl std::fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryIdempotencyStore")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryIdempotencyStore {
    /// A store holding at most `capacity` marks (at least 1), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        MemoryIdempotencyStore {
            capacity: capacity.max(1),
            ttl,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// How many marks it holds now.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether it holds no mark.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryIdempotencyStore {
    /// 100,000 marks for 24 hours.
    fn default() -> Self {
        MemoryIdempotencyStore::new(100_000, Duration::from_secs(24 * 60 * 60))
    }
}

impl Entries {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((_, _, at)) = self.order.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            self.forget_oldest();
        }
    }

    /// Drops the oldest entry of `order`, and its mark unless the key was marked again
    /// later (then `groups` holds the newer time, and that mark stays).
    fn forget_oldest(&mut self) {
        let Some((group, event_id, at)) = self.order.pop_front() else {
            return;
        };
        let Some(marks) = self.groups.get_mut(&group) else {
            return;
        };
        if marks.get(&event_id) == Some(&at) {
            marks.remove(&event_id);
            self.len -= 1;
            if marks.is_empty() {
                self.groups.remove(&group);
            }
        }
    }

    fn contains(&self, group: &str, event_id: Uuid) -> bool {
        self.groups
            .get(group)
            .is_some_and(|marks| marks.contains_key(&event_id))
    }

    fn mark(&mut self, group: &str, event_id: Uuid, now: Instant) {
        // The group's name is copied once, when its first mark is made.
        let group = match self.groups.get_key_value(group) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(group),
        };
        let marks = self.groups.entry(Arc::clone(&group)).or_default();
        if marks.insert(event_id, now).is_none() {
            self.len += 1;
        }
        self.order.push_back((group, event_id, now));
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool> {
        self.answer_is_processed(group, event_id)
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<()> {
        self.record_processed(group, event_id)
    }

    fn is_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<bool>> {
        Some(self.answer_is_processed(group, event_id))
    }

    fn mark_processed_now(&self, group: &str, event_id: Uuid) -> Option<Result<()>> {
        Some(self.record_processed(group, event_id))
    }
}

impl MemoryIdempotencyStore {
    fn answer_is_processed(&self, group: &str, event_id: Uuid) -> Result<bool> {
        let mut entries = self.lock();
        entries.expire(Instant::now(), self.ttl);
        Ok(entries.contains(group, event_id))
    }

    fn record_processed(&self, group: &str, event_id: Uuid) -> Result<()> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.expire(now, self.ttl);
        entries.mark(group, event_id, now);
        // The order queue may also hold stale entries of keys marked again; bound it too.
        while entries.len > self.capacity || entries.order.len() > 2 * self.capacity {
            if entries.order.is_empty() {
                break;
            }
            entries.forget_oldest();
        }
        Ok(())
    }
}

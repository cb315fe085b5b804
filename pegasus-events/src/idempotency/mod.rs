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
use std::sync::Mutex;
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
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`IdempotencyStore`] with its type erased, as the runtime holds it.
pub(crate) trait DynIdempotencyStore: Send + Sync + 'static {
    fn is_processed<'a>(&'a self, group: &'a str, event_id: Uuid) -> BoxFuture<'a, Result<bool>>;
    fn mark_processed<'a>(&'a self, group: &'a str, event_id: Uuid) -> BoxFuture<'a, Result<()>>;
}

impl<S: IdempotencyStore> DynIdempotencyStore for S {
    fn is_processed<'a>(&'a self, group: &'a str, event_id: Uuid) -> BoxFuture<'a, Result<bool>> {
        Box::pin(IdempotencyStore::is_processed(self, group, event_id))
    }

    fn mark_processed<'a>(&'a self, group: &'a str, event_id: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(IdempotencyStore::mark_processed(self, group, event_id))
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
    marked: HashMap<(String, Uuid), Instant>,
    /// Marks in the order they were made, for eviction and expiry.
    order: VecDeque<((String, Uuid), Instant)>,
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
        self.lock().marked.len()
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
        while let Some((key, at)) = self.order.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            // A key marked again later has a newer time in `marked`; keep that one.
            if self.marked.get(key) == Some(at) {
                self.marked.remove(key);
            }
            self.order.pop_front();
        }
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool> {
        let mut entries = self.lock();
        entries.expire(Instant::now(), self.ttl);
        Ok(entries.marked.contains_key(&(group.to_owned(), event_id)))
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<()> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.expire(now, self.ttl);
        let key = (group.to_owned(), event_id);
        entries.marked.insert(key.clone(), now);
        entries.order.push_back((key, now));
        // The order queue may also hold stale marks of keys marked again; bound it too.
        while entries.marked.len() > self.capacity || entries.order.len() > 2 * self.capacity {
            let Some((oldest, at)) = entries.order.pop_front() else {
                break;
            };
            if entries.marked.get(&oldest) == Some(&at) {
                entries.marked.remove(&oldest);
            }
        }
        Ok(())
    }
}

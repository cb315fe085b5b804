//! The inbox: a handler's database writes and the idempotency mark in one transaction.

use std::future::Future;

use crate::consumer::{EventContext, EventHandler, HandlerError};
use crate::event::Event;

/// Handles an event inside a database transaction that also holds its idempotency mark.
///
/// Wrapped in an [`Inbox`], it is called with an open transaction in which the event was
/// just marked processed for the consumer group. The transaction commits after `handle`
/// returned `Ok`, before the record's offset is stored; on `Err` (or a panic) it rolls back,
/// mark included, and the record is retried or dead-lettered like any failure. So the
/// handler's writes happen exactly once in that database, however often the record is
/// delivered.
pub trait InboxHandler<E: Event, DB: sqlx::Database>: Send + Sync + 'static {
    /// Handles one event; `transaction` is committed if this returns `Ok`.
    fn handle(
        &self,
        event: E,
        context: &EventContext<'_>,
        transaction: &mut sqlx::Transaction<'static, DB>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// An [`EventHandler`] that runs an [`InboxHandler`] in a transaction of `store`'s
/// database, with the idempotency mark written in the same transaction.
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn run(config: pegasus_events::KafkaConfig) -> Result<(), Box<dyn std::error::Error>> {
/// use pegasus_events::consumer::{EventConsumer, EventContext, HandlerError};
/// use pegasus_events::idempotency::{Inbox, InboxHandler, SqliteIdempotencyStore};
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, pegasus_events::Event)]
/// # #[event(topic = "shipping.shipment.created")]
/// # struct ShipmentCreated { #[event(key)] shipment_id: String }
///
/// struct RecordShipment;
///
/// impl InboxHandler<ShipmentCreated, sqlx::Sqlite> for RecordShipment {
///     async fn handle(
///         &self,
///         event: ShipmentCreated,
///         _: &EventContext<'_>,
///         transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
///     ) -> Result<(), HandlerError> {
///         sqlx::query("INSERT INTO shipments (id) VALUES (?)")
///             .bind(&event.shipment_id)
///             .execute(&mut **transaction)
///             .await?;
///         Ok(())
///     }
/// }
///
/// let store = SqliteIdempotencyStore::connect("sqlite://identity.db").await?;
/// EventConsumer::builder(config)
///     // No `.idempotency(store)` beside the inbox: the inbox's own mark recognises a
///     // duplicate (it rolls back without calling the handler), and the consumer-level
///     // store would write a second mark for every event.
///     .handler::<ShipmentCreated, _>(Inbox::new(store, RecordShipment))
///     .build()?
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Inbox<S, H> {
    store: S,
    handler: H,
    /// `kafka_idempotency_*{check="inbox"}`, registered at the first event.
    metrics: crate::metrics::InboxMetrics,
}

impl<S, H> Inbox<S, H> {
    /// `handler`'s writes and the marks of `store`, in one transaction per event.
    pub fn new(store: S, handler: H) -> Self {
        Inbox {
            store,
            handler,
            metrics: crate::metrics::InboxMetrics::default(),
        }
    }
}

/// Whether `error` means the database could not be reached or dropped the connection,
/// as opposed to refusing a statement: an outage to wait out, not the event's fault.
pub(crate) fn is_outage(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // SQLSTATE class 08 (connection exception), 57P01-57P03 (the server is shutting
        // down or starting), 53300 (too many connections); SQLite's busy and locked codes
        // (5, 6) when its busy timeout ran out under another writer.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "5" | "6")
        }),
        _ => false,
    }
}

/// A handler's failure as the runtime should treat it: a database outage anywhere in its
/// chain of causes waits ([`HandlerError::unavailable`]); anything else is as it was.
fn classify(error: HandlerError) -> HandlerError {
    use crate::consumer::FailureKind;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.source_error());
    while let Some(current) = cause {
        if current.downcast_ref::<sqlx::Error>().is_some_and(is_outage) {
            return match error.kind() {
                FailureKind::Transient => HandlerError::unavailable(error.into_source()),
                _ => error,
            };
        }
        cause = current.source();
    }
    error
}

/// Begins a transaction, marks the event, runs the handler, commits; a duplicate (the
/// mark was there) rolls back without calling the handler. The database being down at
/// any step is an outage ([`HandlerError::unavailable`]): the record waits for it without
/// spending attempts, and is never dead-lettered for it.
macro_rules! inbox_for {
    ($store:ty, $db:ty) => {
        impl<E: Event, H: InboxHandler<E, $db>> EventHandler<E> for Inbox<$store, H> {
            async fn handle(
                &self,
                event: E,
                context: &EventContext<'_>,
            ) -> Result<(), HandlerError> {
                let metrics = |count: &dyn Fn(&crate::metrics::IdempotencyMetrics)| {
                    self.metrics.with(context.group_id, count)
                };
                let mut transaction = self.store.pool().begin().await.map_err(|e| {
                    metrics(&|m| m.store_error());
                    classify(HandlerError::transient(e))
                })?;
                let marked = self
                    .store
                    .mark_processed_in(&mut transaction, context.group_id, context.event_id())
                    .await;
                // A hit is a mark that was there already: `fresh` is false.
                metrics(&|m| m.lookup(&marked.as_ref().map(|fresh| !fresh)));
                let fresh = marked.map_err(|e| classify(HandlerError::transient(e)))?;
                if !fresh {
                    // Handled before, in a transaction that committed.
                    return Ok(());
                }
                self.handler
                    .handle(event, context, &mut transaction)
                    .await
                    .map_err(classify)?;
                transaction.commit().await.map_err(|e| {
                    metrics(&|m| m.store_error());
                    classify(HandlerError::transient(e))
                })?;
                Ok(())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
inbox_for!(super::SqliteIdempotencyStore, sqlx::Sqlite);
#[cfg(feature = "postgres")]
inbox_for!(super::PostgresIdempotencyStore, sqlx::Postgres);

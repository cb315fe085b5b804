//! The outbox in PostgreSQL: enqueue in the caller's transaction, NOTIFY on commit (from
//! the table's statement trigger), one active relay through a session advisory lock.
//!
//! The lock fences the relay's work: the relay reads rows to publish and marks them on the
//! session that holds the lock, and a session keeps its advisory lock until it ends. So no
//! statement of the relay reads or marks a row once its lock is gone (its session ended:
//! terminated, timed out, cut off), even before the relay noticed; another relay may hold
//! the lock by then.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::Row;
use tokio::sync::Mutex;

use super::{
    encode, BoxFuture, EncodedEvent, Fenced, Lease, OutboxRelay, OutboxRow, OutboxStorage,
    RelaySettings,
};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::wire::PublishMetadata;

/// The channel the outbox table's trigger notifies and the relay listens on.
const CHANNEL: &str = "pegasus_outbox";
/// The advisory lock key of the active relay.
const RELAY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('pegasus_outbox_relay'))";

fn failed(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Outbox {
        store: "postgres",
        operation,
        source: Box::new(source),
    }
}

/// The outbox table `pegasus_outbox` in PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresOutbox {
    pool: PgPool,
    source: Arc<str>,
    /// [`crate::ProducerSettings::base_event_fields`] of the configuration.
    base_event_fields: bool,
    /// The keys of `#[event(encrypted)]` fields; `None` refuses to store such events.
    encryption: Option<crate::encryption::Encryption>,
}

impl PostgresOutbox {
    /// Connects to `url` and creates or migrates the outbox table. `config` gives the
    /// `ce_source` of the events (its client id, or `source_service`).
    pub async fn connect(url: &str, config: &KafkaConfig) -> Result<Self> {
        let pool = crate::idempotency::postgres::open_pool(url)
            .await
            .map_err(failed("connect"))?;
        Self::with_pool(pool, config).await
    }

    /// Uses the service's own pool and brings the outbox table to the newest schema
    /// ([`crate::migrations::POSTGRES_OUTBOX`]).
    pub async fn with_pool(pool: PgPool, config: &KafkaConfig) -> Result<Self> {
        crate::migrations::apply_postgres(&pool, crate::migrations::POSTGRES_OUTBOX)
            .await
            .map_err(|failure| {
                failure.into_error("postgres", "outbox", failed("migrate its schema"))
            })?;
        Ok(PostgresOutbox {
            pool,
            source: config.source().into(),
            base_event_fields: config.producer.base_event_fields,
            encryption: None,
        })
    }

    /// This outbox, encrypting the `#[event(encrypted)]` fields of the events it stores
    /// with `encryption` ([`crate::encryption`]): the row holds the encrypted payload, and
    /// the relay publishes it unchanged. Without it, enqueueing such an event fails with
    /// [`Error::EncryptionNotConfigured`] and stores nothing.
    pub fn with_encryption(mut self, encryption: crate::encryption::Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores `event` in the outbox inside `transaction`; it is published once the
    /// transaction commits, and never if it rolls back. Returns the event id.
    pub async fn enqueue<E: Event>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        event: &E,
    ) -> Result<uuid::Uuid> {
        self.enqueue_inner(transaction, event, None).await
    }

    /// [`PostgresOutbox::enqueue`] with explicit metadata (correlation id, a fixed event
    /// id, ...).
    pub async fn enqueue_with<E: Event>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        event: &E,
        metadata: &PublishMetadata,
    ) -> Result<uuid::Uuid> {
        self.enqueue_inner(transaction, event, Some(metadata)).await
    }

    /// Stores every event of `events` in the outbox inside `transaction`, in order, with
    /// one statement: the way to enqueue several events of one business transaction.
    /// Every event is encoded before anything is written, so an event that cannot be
    /// serialized fails the call with [`Error::Serialize`] and stores none of them.
    /// Returns the event ids, in order.
    pub async fn enqueue_all<'e, E: Event + 'e>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<uuid::Uuid>> {
        let events = events.into_iter();
        let mut encoded = Vec::with_capacity(events.size_hint().0);
        for event in events {
            encoded.push(
                encode(
                    &self.source,
                    self.base_event_fields,
                    event,
                    None,
                    self.encryption.as_ref(),
                )
                .await?,
            );
        }
        store(transaction, &encoded).await?;
        Ok(encoded.iter().map(|e| e.event_id).collect())
    }

    async fn enqueue_inner<E: Event>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        event: &E,
        metadata: Option<&PublishMetadata>,
    ) -> Result<uuid::Uuid> {
        let encoded = encode(
            &self.source,
            self.base_event_fields,
            event,
            metadata,
            self.encryption.as_ref(),
        )
        .await?;
        store(transaction, std::slice::from_ref(&encoded)).await?;
        Ok(encoded.event_id)
    }

    /// A relay publishing this outbox through the cluster of `config`.
    pub fn relay(&self, config: &KafkaConfig, settings: RelaySettings) -> Result<OutboxRelay> {
        let storage = PostgresStorage {
            pool: self.pool.clone(),
            lease: Mutex::new(None),
            listener: Mutex::new(None),
        };
        OutboxRelay::new(Arc::new(storage), config, settings)
    }
}

/// Inserts `events` in order with one statement. The table's statement trigger sends
/// NOTIFY pegasus_outbox, delivered when (and only if) the transaction commits.
async fn store(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: &[EncodedEvent],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // The rows' ids follow the arrays' order (WITH ORDINALITY), which is the order the
    // relay publishes them in.
    sqlx::query(
        "INSERT INTO pegasus_outbox (event_id, topic, message_key, payload, headers)
         SELECT event_id, topic, message_key, payload, headers
         FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::bytea[], $5::text[])
             WITH ORDINALITY AS e(event_id, topic, message_key, payload, headers, n)
         ORDER BY n",
    )
    .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.topic).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.key.as_bytes()).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.payload.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.headers.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **transaction)
    .await
    .map_err(failed("store events"))?;
    Ok(())
}

struct PostgresStorage {
    pool: PgPool,
    /// The connection that holds the advisory lock while this relay is the active one.
    lease: Mutex<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>>,
    listener: Mutex<Option<PgListener>>,
}

/// The outcome of a failed statement on the lock's session: `Fenced::Lost` when the
/// session ended (the lock went with it; the failure was the session's end), the error
/// otherwise.
async fn session_failed<T>(
    lease: &mut Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    operation: &'static str,
    error: sqlx::Error,
) -> Result<Fenced<T>> {
    if let Some(connection) = lease.as_mut() {
        if sqlx::query("SELECT 1")
            .execute(&mut **connection)
            .await
            .is_ok()
        {
            return Err(failed(operation)(error));
        }
    }
    tracing::warn!(%error, "the outbox relay's lock session ended");
    *lease = None;
    Ok(Fenced::Lost)
}

impl OutboxStorage for PostgresStorage {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn backlog(&self) -> BoxFuture<'_, Result<(i64, f64)>> {
        Box::pin(async move {
            // Served by the partial index on the unpublished rows; on the pool, not the
            // lease's session, so a standby reports the backlog too.
            let (rows, oldest): (i64, f64) = sqlx::query_as(
                "SELECT count(*), coalesce(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
                   FROM pegasus_outbox WHERE published_at IS NULL",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(failed("measure the backlog"))?;
            Ok((rows, oldest))
        })
    }

    fn hold_lease(&self) -> BoxFuture<'_, Result<Lease>> {
        Box::pin(async move {
            let mut lease = self.lease.lock().await;
            if let Some(connection) = lease.as_mut() {
                // Still ours as long as the connection lives; check it does.
                if sqlx::query("SELECT 1")
                    .execute(&mut **connection)
                    .await
                    .is_ok()
                {
                    return Ok(Lease::Kept);
                }
                *lease = None;
            }
            let mut connection = self.pool.acquire().await.map_err(failed("connect"))?;
            let acquired: bool = sqlx::query_scalar(RELAY_LOCK)
                .fetch_one(&mut *connection)
                .await
                .map_err(failed("take the relay lease"))?;
            if !acquired {
                return Ok(Lease::Elsewhere);
            }
            // Keep the lock's session out of the pool for as long as this relay runs, and
            // close it when the relay goes: back in the pool, the session would keep the
            // lock and no other relay could ever take over.
            connection.close_on_drop();
            *lease = Some(connection);
            tracing::info!("outbox relay is active");
            Ok(Lease::Taken)
        })
    }

    fn release_lease(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Closing the session (close_on_drop) releases its advisory lock.
            if self.lease.lock().await.take().is_some() {
                tracing::info!("outbox relay gave up its lease");
            }
        })
    }

    fn unpublished<'a>(
        &'a self,
        limit: i64,
        in_flight: Option<(i64, i64)>,
        skip: &'a [i64],
    ) -> BoxFuture<'a, Result<Fenced<Vec<OutboxRow>>>> {
        Box::pin(async move {
            const OPERATION: &str = "read unpublished events";
            // An empty range (first > last) when nothing is in flight.
            let (first, last) = in_flight.unwrap_or((0, -1));
            // On the lock's session: no lock, no rows.
            let mut lease = self.lease.lock().await;
            let Some(connection) = lease.as_mut() else {
                return Ok(Fenced::Lost);
            };
            let read = sqlx::query(
                "SELECT id, topic, message_key, payload, headers FROM pegasus_outbox
                 WHERE published_at IS NULL AND (id < $2 OR id > $3) AND NOT (id = ANY($4))
                 ORDER BY id LIMIT $1",
            )
            .bind(limit)
            .bind(first)
            .bind(last)
            .bind(skip)
            .fetch_all(&mut **connection)
            .await;
            let rows = match read {
                Ok(rows) => rows,
                Err(error) => return session_failed(&mut lease, OPERATION, error).await,
            };
            rows.into_iter()
                .map(|row| {
                    Ok(OutboxRow {
                        id: row.try_get("id")?,
                        topic: row.try_get("topic")?,
                        key: row.try_get("message_key")?,
                        payload: row.try_get("payload")?,
                        headers: row.try_get("headers")?,
                    })
                })
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map(Fenced::Held)
                .map_err(failed(OPERATION))
        })
    }

    fn mark_published<'a>(
        &'a self,
        ids: &'a [i64],
        delete: bool,
    ) -> BoxFuture<'a, Result<Fenced<()>>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Fenced::Held(()));
            }
            let statement = if delete {
                "DELETE FROM pegasus_outbox WHERE id = ANY($1)"
            } else {
                "UPDATE pegasus_outbox SET published_at = now() WHERE id = ANY($1)"
            };
            // On the lock's session: no lock, no mark.
            let mut lease = self.lease.lock().await;
            let Some(connection) = lease.as_mut() else {
                return Ok(Fenced::Lost);
            };
            match sqlx::query(statement)
                .bind(ids)
                .execute(&mut **connection)
                .await
            {
                Ok(_) => Ok(Fenced::Held(())),
                Err(error) => session_failed(&mut lease, "mark events published", error).await,
            }
        })
    }

    fn purge_published(&self, age: Duration) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            if crate::limits::utc_ago(age).is_none() {
                // Older than 1970: no row is, and PostgreSQL's interval would overflow.
                return Ok(0);
            }
            let done = sqlx::query(
                "DELETE FROM pegasus_outbox
                 WHERE published_at < now() - make_interval(secs => $1)",
            )
            .bind(age.as_secs_f64())
            .execute(&self.pool)
            .await
            .map_err(failed("purge published events"))?;
            Ok(done.rows_affected())
        })
    }

    fn wait_for_rows(&self, at_most: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut listener = self.listener.lock().await;
            if listener.is_none() {
                match PgListener::connect_with(&self.pool).await {
                    Ok(mut new) => match new.listen(CHANNEL).await {
                        Ok(()) => {
                            *listener = Some(new);
                            // Rows committed after the relay's last read and before this
                            // LISTEN took effect sent their notification to nobody: read
                            // once more now rather than wait for the poll.
                            return;
                        }
                        Err(error) => tracing::warn!(%error, "cannot LISTEN; polling"),
                    },
                    Err(error) => tracing::warn!(%error, "cannot LISTEN; polling"),
                }
            }
            match listener.as_mut() {
                Some(active) => {
                    if let Ok(Err(error)) = tokio::time::timeout(at_most, active.recv()).await {
                        tracing::warn!(%error, "outbox notifications interrupted");
                        *listener = None;
                    }
                }
                None => tokio::time::sleep(at_most).await,
            }
        })
    }
}

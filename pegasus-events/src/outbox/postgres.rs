//! The outbox in PostgreSQL: enqueue in the caller's transaction, NOTIFY on commit, one
//! active relay through a session advisory lock.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::Row;
use tokio::sync::Mutex;

use super::{encode, BoxFuture, OutboxRelay, OutboxRow, OutboxStorage, RelaySettings};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::wire::PublishMetadata;

/// The channel `enqueue` notifies and the relay listens on.
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
}

impl PostgresOutbox {
    /// Connects to `url` and creates the outbox table if needed. `config` gives the
    /// `ce_source` of the events (its client id, or `source_service`).
    pub async fn connect(url: &str, config: &KafkaConfig) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(failed("connect"))?;
        Self::with_pool(pool, config).await
    }

    /// Uses the service's own pool and creates the outbox table if needed.
    pub async fn with_pool(pool: PgPool, config: &KafkaConfig) -> Result<Self> {
        let mut tx = pool.begin().await.map_err(failed("create its table"))?;
        // CREATE ... IF NOT EXISTS is not atomic in PostgreSQL: serialise instances.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pegasus_outbox'))")
            .execute(&mut *tx)
            .await
            .map_err(failed("create its table"))?;
        for statement in [
            "CREATE TABLE IF NOT EXISTS pegasus_outbox (
                id BIGSERIAL PRIMARY KEY,
                event_id UUID NOT NULL,
                topic TEXT NOT NULL,
                message_key BYTEA,
                payload BYTEA NOT NULL,
                headers TEXT NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                published_at TIMESTAMPTZ
            )",
            "CREATE INDEX IF NOT EXISTS pegasus_outbox_unpublished
                ON pegasus_outbox (id) WHERE published_at IS NULL",
        ] {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(failed("create its table"))?;
        }
        tx.commit().await.map_err(failed("create its table"))?;
        Ok(PostgresOutbox {
            pool,
            source: config.source().into(),
        })
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

    async fn enqueue_inner<E: Event>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        event: &E,
        metadata: Option<&PublishMetadata>,
    ) -> Result<uuid::Uuid> {
        let encoded = encode(&self.source, event, metadata)?;
        sqlx::query(
            "INSERT INTO pegasus_outbox (event_id, topic, message_key, payload, headers)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(encoded.event_id)
        .bind(encoded.topic)
        .bind(encoded.key.as_bytes())
        .bind(&encoded.payload)
        .bind(&encoded.headers)
        .execute(&mut **transaction)
        .await
        .map_err(failed("store an event"))?;
        // Delivered when (and only if) the transaction commits.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut **transaction)
            .await
            .map_err(failed("notify the relay"))?;
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

struct PostgresStorage {
    pool: PgPool,
    /// The connection that holds the advisory lock while this relay is the active one.
    lease: Mutex<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>>,
    listener: Mutex<Option<PgListener>>,
}

impl OutboxStorage for PostgresStorage {
    fn hold_lease(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let mut lease = self.lease.lock().await;
            if let Some(connection) = lease.as_mut() {
                // Still ours as long as the connection lives; check it does.
                if sqlx::query("SELECT 1")
                    .execute(&mut **connection)
                    .await
                    .is_ok()
                {
                    return Ok(true);
                }
                *lease = None;
            }
            let mut connection = self.pool.acquire().await.map_err(failed("connect"))?;
            let acquired: bool = sqlx::query_scalar(RELAY_LOCK)
                .fetch_one(&mut *connection)
                .await
                .map_err(failed("take the relay lease"))?;
            if acquired {
                // Keep the lock's session out of the pool for as long as this relay runs,
                // and close it when the relay goes: back in the pool, the session would
                // keep the lock and no other relay could ever take over.
                connection.close_on_drop();
                *lease = Some(connection);
                tracing::info!("outbox relay is active");
            }
            Ok(acquired)
        })
    }

    fn unpublished(&self, limit: i64) -> BoxFuture<'_, Result<Vec<OutboxRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, event_id, topic, message_key, payload, headers FROM pegasus_outbox
                 WHERE published_at IS NULL ORDER BY id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(failed("read unpublished events"))?;
            rows.into_iter()
                .map(|row| {
                    Ok(OutboxRow {
                        id: row.try_get("id")?,
                        event_id: row.try_get("event_id")?,
                        topic: row.try_get("topic")?,
                        key: row.try_get("message_key")?,
                        payload: row.try_get("payload")?,
                        headers: row.try_get("headers")?,
                    })
                })
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map_err(failed("read unpublished events"))
        })
    }

    fn mark_published<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            sqlx::query("UPDATE pegasus_outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(ids)
                .execute(&self.pool)
                .await
                .map_err(failed("mark events published"))?;
            Ok(())
        })
    }

    fn purge_published(&self, age: Duration) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
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
                        Ok(()) => *listener = Some(new),
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

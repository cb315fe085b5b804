//! The outbox in SQLite, the embedded default database: enqueue in the caller's
//! transaction; the relay polls.

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use super::{encode, BoxFuture, OutboxRelay, OutboxRow, OutboxStorage, RelaySettings};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::wire::PublishMetadata;

fn failed(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Outbox {
        store: "sqlite",
        operation,
        source: Box::new(source),
    }
}

/// The outbox table `pegasus_outbox` in SQLite.
#[derive(Clone, Debug)]
pub struct SqliteOutbox {
    pool: SqlitePool,
    source: Arc<str>,
}

impl SqliteOutbox {
    /// Opens (creating if needed) the database at `url` (e.g. `sqlite://service.db`) and
    /// the outbox table. `config` gives the `ce_source` of the events.
    pub async fn connect(url: &str, config: &KafkaConfig) -> Result<Self> {
        let pool = crate::idempotency::sqlite::open_pool(url)
            .await
            .map_err(|(operation, source)| failed(operation)(source))?;
        Self::with_pool(pool, config).await
    }

    /// Uses the service's own pool and creates the outbox table if needed.
    pub async fn with_pool(pool: SqlitePool, config: &KafkaConfig) -> Result<Self> {
        for statement in [
            "CREATE TABLE IF NOT EXISTS pegasus_outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL,
                topic TEXT NOT NULL,
                message_key BLOB,
                payload BLOB NOT NULL,
                headers TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                published_at TEXT
            )",
            "CREATE INDEX IF NOT EXISTS pegasus_outbox_unpublished
                ON pegasus_outbox (id) WHERE published_at IS NULL",
        ] {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(failed("create its table"))?;
        }
        Ok(SqliteOutbox {
            pool,
            source: config.source().into(),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Stores `event` in the outbox inside `transaction`; it is published once the
    /// transaction commits, and never if it rolls back. Returns the event id.
    pub async fn enqueue<E: Event>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        event: &E,
    ) -> Result<uuid::Uuid> {
        self.enqueue_inner(transaction, event, None).await
    }

    /// [`SqliteOutbox::enqueue`] with explicit metadata.
    pub async fn enqueue_with<E: Event>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        event: &E,
        metadata: &PublishMetadata,
    ) -> Result<uuid::Uuid> {
        self.enqueue_inner(transaction, event, Some(metadata)).await
    }

    async fn enqueue_inner<E: Event>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        event: &E,
        metadata: Option<&PublishMetadata>,
    ) -> Result<uuid::Uuid> {
        let encoded = encode(&self.source, event, metadata)?;
        sqlx::query(
            "INSERT INTO pegasus_outbox (event_id, topic, message_key, payload, headers)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(encoded.event_id.to_string())
        .bind(encoded.topic)
        .bind(encoded.key.as_bytes())
        .bind(&encoded.payload)
        .bind(&encoded.headers)
        .execute(&mut **transaction)
        .await
        .map_err(failed("store an event"))?;
        Ok(encoded.event_id)
    }

    /// A relay publishing this outbox through the cluster of `config`. Run one per
    /// database file.
    pub fn relay(&self, config: &KafkaConfig, settings: RelaySettings) -> Result<OutboxRelay> {
        OutboxRelay::new(
            Arc::new(SqliteStorage {
                pool: self.pool.clone(),
            }),
            config,
            settings,
        )
    }
}

struct SqliteStorage {
    pool: SqlitePool,
}

impl OutboxStorage for SqliteStorage {
    fn hold_lease(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async { Ok(true) })
    }

    fn unpublished(&self, limit: i64) -> BoxFuture<'_, Result<Vec<OutboxRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, event_id, topic, message_key, payload, headers FROM pegasus_outbox
                 WHERE published_at IS NULL ORDER BY id LIMIT ?",
            )
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(failed("read unpublished events"))?;
            rows.into_iter()
                .map(|row| {
                    let event_id: String = row.try_get("event_id")?;
                    Ok(OutboxRow {
                        id: row.try_get("id")?,
                        event_id: uuid::Uuid::try_parse(&event_id).unwrap_or_default(),
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
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(failed("mark events published"))?;
            for id in ids {
                sqlx::query(
                    "UPDATE pegasus_outbox
                     SET published_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(failed("mark events published"))?;
            }
            tx.commit().await.map_err(failed("mark events published"))?;
            Ok(())
        })
    }

    fn purge_published(&self, age: Duration) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(age).unwrap_or(chrono::TimeDelta::MAX);
            let done = sqlx::query("DELETE FROM pegasus_outbox WHERE published_at < ?")
                .bind(cutoff.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .execute(&self.pool)
                .await
                .map_err(failed("purge published events"))?;
            Ok(done.rows_affected())
        })
    }

    fn wait_for_rows(&self, at_most: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(at_most))
    }
}

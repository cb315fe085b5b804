//! The idempotency store in PostgreSQL.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use super::IdempotencyStore;
use crate::error::{Error, Result};

/// Marks in a PostgreSQL table `pegasus_processed_events`, created and migrated by
/// [`PostgresIdempotencyStore::connect`]. A mark is committed before
/// `mark_processed` returns; several consumer instances may share the table.
#[derive(Clone, Debug)]
pub struct PostgresIdempotencyStore {
    pool: PgPool,
}

fn failed(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::IdempotencyStore {
        store: "postgres",
        operation,
        source: Box::new(source),
    }
}

/// Connects a pool to the PostgreSQL database at `url` the way this crate's stores use
/// it. Shared with the outbox.
pub(crate) async fn open_pool(url: &str) -> std::result::Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

impl PostgresIdempotencyStore {
    /// Connects to `url` (e.g. `postgres://user@host/db`) and creates or migrates the table.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = open_pool(url).await.map_err(failed("connect"))?;
        Self::with_pool(pool).await
    }

    /// Uses an existing pool (the service's own database) and brings the table to the
    /// newest schema ([`crate::migrations::POSTGRES_IDEMPOTENCY`]).
    pub async fn with_pool(pool: PgPool) -> Result<Self> {
        crate::migrations::apply_postgres(&pool, crate::migrations::POSTGRES_IDEMPOTENCY)
            .await
            .map_err(|failure| {
                failure.into_error("postgres", "idempotency", failed("migrate its schema"))
            })?;
        Ok(PostgresIdempotencyStore { pool })
    }

    /// Forgets marks older than `age`; returns how many.
    pub async fn purge_older_than(&self, age: Duration) -> Result<u64> {
        if crate::limits::utc_ago(age).is_none() {
            // Older than 1970: no mark is, and PostgreSQL's interval would overflow.
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM pegasus_processed_events
             WHERE processed_at < now() - make_interval(secs => $1)",
        )
        .bind(age.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(failed("purge old marks"))?;
        Ok(done.rows_affected())
    }
}

impl PostgresIdempotencyStore {
    /// The pool, for the handler's own writes in the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Marks the event processed inside the caller's transaction, so the mark commits or
    /// rolls back with the handler's own writes: exactly-once effects in this database.
    /// Returns `false` when the mark was there already (a duplicate). A concurrent
    /// transaction marking the same event waits on the row lock, then sees it marked.
    pub async fn mark_processed_in(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        group: &str,
        event_id: Uuid,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO pegasus_processed_events (consumer_group, event_id)
             VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(event_id)
        .execute(&mut **transaction)
        .await
        .map_err(failed("mark an event processed"))?;
        Ok(done.rows_affected() == 1)
    }
}

impl IdempotencyStore for PostgresIdempotencyStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM pegasus_processed_events WHERE consumer_group = $1 AND event_id = $2",
        )
        .bind(group)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed("look up an event"))?;
        Ok(found.is_some())
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<()> {
        sqlx::query(
            "INSERT INTO pegasus_processed_events (consumer_group, event_id)
             VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(event_id)
        .execute(&self.pool)
        .await
        .map_err(failed("mark an event processed"))?;
        Ok(())
    }
}

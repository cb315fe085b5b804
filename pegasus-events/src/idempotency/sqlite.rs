//! The idempotency store in SQLite, the embedded default database.

use std::time::Duration;

use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use uuid::Uuid;

use super::IdempotencyStore;
use crate::error::{Error, Result};

/// Marks in a SQLite table `pegasus_processed_events`, created and migrated by
/// [`SqliteIdempotencyStore::connect`]. A mark is committed before `mark_processed` returns, so it survives a
/// crash of the process.
#[derive(Clone, Debug)]
pub struct SqliteIdempotencyStore {
    pool: SqlitePool,
}

fn failed(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::IdempotencyStore {
        store: "sqlite",
        operation,
        source: Box::new(source),
    }
}

/// Opens (creating if needed) the SQLite database at `url` the way this crate's stores use
/// it; an error says which step failed. Shared with the outbox.
pub(crate) async fn open_pool(
    url: &str,
) -> std::result::Result<SqlitePool, (&'static str, sqlx::Error)> {
    let options: SqliteConnectOptions = url.parse().map_err(|e| ("parse the database url", e))?;
    let options = options
        .create_if_missing(true)
        // Several workers write at once; WAL lets readers go on while one writes.
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        // In WAL mode, NORMAL keeps every commit through a crash of the process (what
        // at-least-once needs); only a power loss can take back the last commits.
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| ("open the database", e))
}

impl SqliteIdempotencyStore {
    /// Opens (creating if needed) the database at `url` (e.g. `sqlite://marks.db` or
    /// `sqlite::memory:`) and its table.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = open_pool(url)
            .await
            .map_err(|(operation, source)| failed(operation)(source))?;
        Self::with_pool(pool).await
    }

    /// Uses an existing pool (the service's own database) and brings the table to the
    /// newest schema ([`crate::migrations::SQLITE_IDEMPOTENCY`]).
    pub async fn with_pool(pool: SqlitePool) -> Result<Self> {
        crate::migrations::apply_sqlite(&pool, crate::migrations::SQLITE_IDEMPOTENCY)
            .await
            .map_err(|failure| {
                failure.into_error("sqlite", "idempotency", failed("migrate its schema"))
            })?;
        Ok(SqliteIdempotencyStore { pool })
    }

    /// Forgets marks older than `age`; returns how many.
    pub async fn purge_older_than(&self, age: Duration) -> Result<u64> {
        let Some(cutoff) = crate::limits::utc_ago(age) else {
            return Ok(0);
        };
        let done = sqlx::query("DELETE FROM pegasus_processed_events WHERE processed_at < ?")
            .bind(cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .execute(&self.pool)
            .await
            .map_err(failed("purge old marks"))?;
        Ok(done.rows_affected())
    }
}

impl SqliteIdempotencyStore {
    /// The pool, for the handler's own writes in the same database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Marks the event processed inside the caller's transaction, so the mark commits or
    /// rolls back with the handler's own writes: exactly-once effects in this database.
    /// Returns `false` when the mark was there already (a duplicate: the caller should
    /// apply nothing and roll back or commit an empty transaction).
    pub async fn mark_processed_in(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        group: &str,
        event_id: Uuid,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO pegasus_processed_events (consumer_group, event_id, processed_at)
             VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(event_id.to_string())
        .bind(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .execute(&mut **transaction)
        .await
        .map_err(failed("mark an event processed"))?;
        Ok(done.rows_affected() == 1)
    }
}

impl IdempotencyStore for SqliteIdempotencyStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM pegasus_processed_events WHERE consumer_group = ? AND event_id = ?",
        )
        .bind(group)
        .bind(event_id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(failed("look up an event"))?;
        Ok(found.is_some())
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<()> {
        sqlx::query(
            "INSERT INTO pegasus_processed_events (consumer_group, event_id, processed_at)
             VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(event_id.to_string())
        .bind(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .execute(&self.pool)
        .await
        .map_err(failed("mark an event processed"))?;
        Ok(())
    }
}

//! Per-subject keys in PostgreSQL: the table `pegasus_subject_keys`.

use sqlx::postgres::PgPool;

use super::subject::{StoredSubjectKey, SubjectKeyStore};
use crate::error::{Error, Result};

/// Subject keys in the PostgreSQL table `pegasus_subject_keys` (subject, key id, ring key
/// id, wrapped key), created and migrated by [`PostgresSubjectKeyStore::connect`]
/// ([`crate::migrations::POSTGRES_SUBJECT_KEYS`]). Several processes may share it.
#[derive(Clone, Debug)]
pub struct PostgresSubjectKeyStore {
    pool: PgPool,
}

fn failed(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::SubjectKeyStore {
        store: "postgres",
        operation,
        source: Box::new(source),
    }
}

type Row = (String, String, String, Vec<u8>);

fn stored((subject, key_id, ring_key_id, wrapped): Row) -> StoredSubjectKey {
    StoredSubjectKey {
        subject,
        key_id,
        ring_key_id,
        wrapped,
    }
}

impl PostgresSubjectKeyStore {
    /// Connects to the database at `url` and creates or migrates the table.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = crate::idempotency::postgres::open_pool(url)
            .await
            .map_err(failed("connect"))?;
        Self::with_pool(pool).await
    }

    /// Uses an existing pool (the service's own database) and brings the table to the
    /// newest schema.
    pub async fn with_pool(pool: PgPool) -> Result<Self> {
        crate::migrations::apply_postgres(&pool, crate::migrations::POSTGRES_SUBJECT_KEYS)
            .await
            .map_err(|failure| {
                failure.into_error("postgres", "subject_keys", failed("migrate its schema"))
            })?;
        Ok(PostgresSubjectKeyStore { pool })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const COLUMNS: &str = "SELECT subject, key_id, ring_key_id, wrapped FROM pegasus_subject_keys";

impl SubjectKeyStore for PostgresSubjectKeyStore {
    async fn find_by_subject(&self, subject: &str) -> Result<Option<StoredSubjectKey>> {
        let row: Option<Row> = sqlx::query_as(&format!("{COLUMNS} WHERE subject = $1"))
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed("look up a subject's key"))?;
        Ok(row.map(stored))
    }

    async fn find_by_key_id(&self, key_id: &str) -> Result<Option<StoredSubjectKey>> {
        let row: Option<Row> = sqlx::query_as(&format!("{COLUMNS} WHERE key_id = $1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed("look up a key by id"))?;
        Ok(row.map(stored))
    }

    async fn insert_if_absent(&self, key: &StoredSubjectKey) -> Result<StoredSubjectKey> {
        sqlx::query(
            "INSERT INTO pegasus_subject_keys (subject, key_id, ring_key_id, wrapped)
             VALUES ($1, $2, $3, $4) ON CONFLICT (subject) DO NOTHING",
        )
        .bind(&key.subject)
        .bind(&key.key_id)
        .bind(&key.ring_key_id)
        .bind(&key.wrapped)
        .execute(&self.pool)
        .await
        .map_err(failed("store a new key"))?;
        self.find_by_subject(&key.subject)
            .await?
            .ok_or_else(|| Error::SubjectKeyUnusable {
                reason: "the subject's key was forgotten while it was being created",
            })
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM pegasus_subject_keys WHERE subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await
            .map_err(failed("forget a subject"))?;
        Ok(done.rows_affected() > 0)
    }
}

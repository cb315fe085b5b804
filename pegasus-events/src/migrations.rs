//! Versioned schema migrations of the library's own tables (the outbox, the
//! idempotency marks and the per-subject encryption keys), applied by the stores themselves when they connect.
//!
//! # Guarantees
//!
//! - **Each migration is applied once, in version order, atomically.** The missing
//!   migrations of a component and their rows in `pegasus_schema_history` are written in
//!   one transaction: a crash leaves the schema at the last version that fully committed.
//! - **Instances starting together do not race.** PostgreSQL serialises them with a
//!   transaction-scoped advisory lock; SQLite with `BEGIN IMMEDIATE`. The second instance
//!   finds the work done.
//! - **A database newer than the library is refused**, with
//!   [`Error::SchemaTooNew`](crate::Error::SchemaTooNew) naming both versions, instead of
//!   writing rows an older layout does not expect.
//! - **Existing tables are adopted.** Version 1 of each component is written with
//!   `IF NOT EXISTS`, so tables created before migrations were versioned are kept.
//!
//! The history table is `pegasus_schema_history (component, version, description,
//! applied_at)`, apart from the service's own migration tool (sqlx's `_sqlx_migrations`,
//! Flyway, ...), so neither sees the other's versions. Teams whose database schema is
//! applied by such a tool can take the SQL from the `POSTGRES_*`/`SQLITE_*` lists here.

/// One schema change of one component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The component whose tables it changes: `outbox` or `idempotency`.
    pub component: &'static str,
    /// Its version; a component's migrations are numbered 1, 2, ... with no gaps.
    pub version: i64,
    /// What it does, stored in the history.
    pub description: &'static str,
    /// Its statements, run in order inside one transaction.
    pub statements: &'static [&'static str],
}

/// The outbox's migrations on PostgreSQL.
pub const POSTGRES_OUTBOX: &[Migration] = &[
    Migration {
        component: "outbox",
        version: 1,
        description: "the outbox table and its index of unpublished rows",
        statements: &[
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
        ],
    },
    Migration {
        component: "outbox",
        version: 2,
        description: "NOTIFY pegasus_outbox from a statement trigger, not one call per event",
        statements: &[
            // One notification per INSERT statement, sent by the server on commit: the
            // enqueueing transaction pays no extra round trip, and PostgreSQL folds the
            // identical notifications of one transaction into one.
            "CREATE OR REPLACE FUNCTION pegasus_outbox_notify() RETURNS trigger
                LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_notify('pegasus_outbox', '');
                    RETURN NULL;
                END
                $$",
            "DROP TRIGGER IF EXISTS pegasus_outbox_notify ON pegasus_outbox",
            "CREATE TRIGGER pegasus_outbox_notify AFTER INSERT ON pegasus_outbox
                FOR EACH STATEMENT EXECUTE FUNCTION pegasus_outbox_notify()",
        ],
    },
];

/// The outbox's migrations on SQLite.
pub const SQLITE_OUTBOX: &[Migration] = &[
    Migration {
        component: "outbox",
        version: 1,
        description: "the outbox table and its index of unpublished rows",
        statements: &[
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
        ],
    },
    Migration {
        component: "outbox",
        version: 2,
        description: "the relay lease: one active relay per database file",
        statements: &["CREATE TABLE IF NOT EXISTS pegasus_outbox_relay_lease (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                holder TEXT NOT NULL,
                expires_at_ms INTEGER NOT NULL
            )"],
    },
];

/// The idempotency marks' migrations on PostgreSQL.
pub const POSTGRES_IDEMPOTENCY: &[Migration] = &[Migration {
    component: "idempotency",
    version: 1,
    description: "the table of processed events per consumer group",
    statements: &["CREATE TABLE IF NOT EXISTS pegasus_processed_events (
            consumer_group TEXT NOT NULL,
            event_id UUID NOT NULL,
            processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, event_id)
        )"],
}];

/// The idempotency marks' migrations on SQLite.
pub const SQLITE_IDEMPOTENCY: &[Migration] = &[Migration {
    component: "idempotency",
    version: 1,
    description: "the table of processed events per consumer group",
    statements: &["CREATE TABLE IF NOT EXISTS pegasus_processed_events (
            consumer_group TEXT NOT NULL,
            event_id TEXT NOT NULL,
            processed_at TEXT NOT NULL,
            PRIMARY KEY (consumer_group, event_id)
        )"],
}];

/// The per-subject encryption keys' migrations on PostgreSQL (`crate::encryption::subject`).
pub const POSTGRES_SUBJECT_KEYS: &[Migration] = &[Migration {
    component: "subject_keys",
    version: 1,
    description: "the table of per-subject encryption keys, wrapped under a ring key",
    statements: &["CREATE TABLE IF NOT EXISTS pegasus_subject_keys (
            subject TEXT PRIMARY KEY,
            key_id TEXT NOT NULL UNIQUE,
            ring_key_id TEXT NOT NULL,
            wrapped BYTEA NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"],
}];

/// The per-subject encryption keys' migrations on SQLite (`crate::encryption::subject`).
pub const SQLITE_SUBJECT_KEYS: &[Migration] = &[Migration {
    component: "subject_keys",
    version: 1,
    description: "the table of per-subject encryption keys, wrapped under a ring key",
    statements: &["CREATE TABLE IF NOT EXISTS pegasus_subject_keys (
            subject TEXT PRIMARY KEY,
            key_id TEXT NOT NULL UNIQUE,
            ring_key_id TEXT NOT NULL,
            wrapped BLOB NOT NULL,
            created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
        )"],
}];

/// Why applying migrations failed.
#[derive(Debug)]
pub(crate) enum MigrationFailure {
    /// The database refused a statement.
    Database(sqlx::Error),
    /// The database is at a version this library does not know.
    TooNew { found: i64, known: i64 },
    /// The history holds a version this library never writes (below zero).
    Corrupt { found: i64 },
}

impl From<sqlx::Error> for MigrationFailure {
    fn from(error: sqlx::Error) -> Self {
        MigrationFailure::Database(error)
    }
}

impl MigrationFailure {
    /// The crate error for `store`/`component`; `database` wraps a refused statement.
    pub(crate) fn into_error(
        self,
        store: &'static str,
        component: &'static str,
        database: impl FnOnce(sqlx::Error) -> crate::Error,
    ) -> crate::Error {
        match self {
            MigrationFailure::Database(source) => database(source),
            MigrationFailure::TooNew { found, known } => crate::Error::SchemaTooNew {
                store,
                component,
                found,
                known,
            },
            MigrationFailure::Corrupt { found } => crate::Error::SchemaHistoryCorrupt {
                store,
                component,
                found,
            },
        }
    }
}

/// The newest version of `migrations`, and a check that they are numbered 1, 2, ...
fn known_version(migrations: &[Migration]) -> i64 {
    for (position, migration) in migrations.iter().enumerate() {
        debug_assert_eq!(migration.version, position as i64 + 1, "{migration:?}");
        debug_assert_eq!(migration.component, migrations[0].component);
    }
    migrations.len() as i64
}

/// The statements that differ between the databases.
struct Dialect {
    /// How the migrating transaction begins, when not with a plain `BEGIN`.
    begin: Option<&'static str>,
    /// Serialises instances applying migrations at once, inside the transaction.
    lock: Option<&'static str>,
    history_table: &'static str,
    newest_version: &'static str,
    record_version: &'static str,
    store: &'static str,
}

/// Applies the migrations of `migrations` newer than the history records, inside `tx`,
/// and commits.
async fn apply<DB>(
    pool: &sqlx::Pool<DB>,
    dialect: &Dialect,
    migrations: &[Migration],
) -> Result<Vec<i64>, MigrationFailure>
where
    DB: sqlx::Database,
    for<'p> &'p sqlx::Pool<DB>: sqlx::Executor<'p, Database = DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    // Owned: SQLite encodes a `&str` only for the lifetime of the query's arguments.
    String: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let known = known_version(migrations);
    // Usually there is nothing to do: find that with a plain read, without the lock (on
    // SQLite the write lock, which would hold up every other writer of the file).
    let current: Result<i64, _> = sqlx::query_scalar(dialect.newest_version)
        .bind(migrations[0].component.to_owned())
        .fetch_one(pool)
        .await;
    match current {
        Ok(found) if found > known => return Err(MigrationFailure::TooNew { found, known }),
        Ok(found) if found == known => return Ok(Vec::new()),
        // Behind, or no history table yet: migrate under the lock, reading again there.
        _ => {}
    }
    let mut tx = match dialect.begin {
        Some(begin) => pool.begin_with(begin).await?,
        None => pool.begin().await?,
    };
    if let Some(lock) = dialect.lock {
        sqlx::query(lock).execute(&mut *tx).await?;
    }
    sqlx::query(dialect.history_table).execute(&mut *tx).await?;
    let found: i64 = sqlx::query_scalar(dialect.newest_version)
        .bind(migrations[0].component.to_owned())
        .fetch_one(&mut *tx)
        .await?;
    if found > known {
        return Err(MigrationFailure::TooNew { found, known });
    }
    let mut applied = Vec::new();
    // A version below 0 was not written by this library: refuse rather than guess.
    let applied_count = usize::try_from(found).map_err(|_| MigrationFailure::Corrupt { found })?;
    for migration in &migrations[applied_count..] {
        for statement in migration.statements {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        sqlx::query(dialect.record_version)
            .bind(migration.component.to_owned())
            .bind(migration.version)
            .bind(migration.description.to_owned())
            .execute(&mut *tx)
            .await?;
        applied.push(migration.version);
    }
    tx.commit().await?;
    if !applied.is_empty() {
        tracing::info!(
            store = dialect.store,
            component = migrations[0].component,
            versions = ?applied,
            "schema migrated"
        );
    }
    Ok(applied)
}

/// Brings `component`'s tables in the PostgreSQL database of `pool` to the newest of
/// `migrations`; returns the versions applied now.
#[cfg(feature = "postgres")]
pub(crate) async fn apply_postgres(
    pool: &sqlx::PgPool,
    migrations: &[Migration],
) -> Result<Vec<i64>, MigrationFailure> {
    const POSTGRES: Dialect = Dialect {
        begin: None,
        // CREATE ... IF NOT EXISTS is not atomic in PostgreSQL, and two instances must not
        // both apply a migration: one at a time per database.
        lock: Some("SELECT pg_advisory_xact_lock(hashtext('pegasus_schema_history'))"),
        history_table: "CREATE TABLE IF NOT EXISTS pegasus_schema_history (
            component TEXT NOT NULL,
            version BIGINT NOT NULL,
            description TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (component, version)
        )",
        newest_version: "SELECT COALESCE(max(version), 0) FROM pegasus_schema_history
            WHERE component = $1",
        record_version: "INSERT INTO pegasus_schema_history (component, version, description)
            VALUES ($1, $2, $3)",
        store: "postgres",
    };
    apply(pool, &POSTGRES, migrations).await
}

/// Brings `component`'s tables in the SQLite database of `pool` to the newest of
/// `migrations`; returns the versions applied now.
#[cfg(feature = "sqlite")]
pub(crate) async fn apply_sqlite(
    pool: &sqlx::SqlitePool,
    migrations: &[Migration],
) -> Result<Vec<i64>, MigrationFailure> {
    const SQLITE: Dialect = Dialect {
        // BEGIN IMMEDIATE takes the write lock up front: a second instance waits (busy
        // timeout), then reads the history this one wrote.
        begin: Some("BEGIN IMMEDIATE"),
        lock: None,
        history_table: "CREATE TABLE IF NOT EXISTS pegasus_schema_history (
            component TEXT NOT NULL,
            version INTEGER NOT NULL,
            description TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            PRIMARY KEY (component, version)
        )",
        newest_version: "SELECT COALESCE(max(version), 0) FROM pegasus_schema_history
            WHERE component = ?",
        record_version: "INSERT INTO pegasus_schema_history (component, version, description)
            VALUES (?, ?, ?)",
        store: "sqlite",
    };
    apply(pool, &SQLITE, migrations).await
}

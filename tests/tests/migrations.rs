//! The library's own schema migrations, on a real PostgreSQL server and on SQLite: applied
//! once each and in order, recorded in `pegasus_schema_history`, safe when instances start
//! together, adopting tables created before migrations were versioned, and refusing a
//! database newer than the library.

use std::time::Duration;

use pegasus_events::idempotency::{PostgresIdempotencyStore, SqliteIdempotencyStore};
use pegasus_events::migrations::{
    POSTGRES_IDEMPOTENCY, POSTGRES_OUTBOX, SQLITE_IDEMPOTENCY, SQLITE_OUTBOX,
};
use pegasus_events::outbox::{PostgresOutbox, SqliteOutbox};
use pegasus_events::{Error, Event};
use pegasus_events_tests::{config, fresh_postgres_database, unique};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.migrations.noted")]
struct Noted {
    #[event(key)]
    id: u32,
}

/// `(component, version)` of every row of the history, in order.
type History = Vec<(String, i64)>;

const HISTORY: &str =
    "SELECT component, version FROM pegasus_schema_history ORDER BY component, version";

fn expected(lists: &[&[pegasus_events::migrations::Migration]]) -> History {
    let mut rows: History = lists
        .iter()
        .flat_map(|list| list.iter())
        .map(|m| (m.component.to_owned(), m.version))
        .collect();
    rows.sort();
    rows
}

fn sqlite_url() -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("migrations"));
    format!("sqlite://{}.db", path.display())
}

#[tokio::test]
async fn postgres_instances_starting_together_apply_each_migration_exactly_once() {
    let url = fresh_postgres_database().await;
    let kafka = config("migrations");
    // Eight service instances start at once: four outboxes and four idempotency stores.
    let starts: Vec<_> = (0..8)
        .map(|n| {
            let (url, kafka) = (url.clone(), kafka.clone());
            tokio::spawn(async move {
                if n % 2 == 0 {
                    PostgresOutbox::connect(&url, &kafka).await.map(drop)
                } else {
                    PostgresIdempotencyStore::connect(&url).await.map(drop)
                }
            })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("every instance starts");
    }
    let outbox = PostgresOutbox::connect(&url, &kafka).await.unwrap();
    let history: History = sqlx::query_as(HISTORY)
        .fetch_all(outbox.pool())
        .await
        .unwrap();
    assert_eq!(history, expected(&[POSTGRES_OUTBOX, POSTGRES_IDEMPOTENCY]));
}

#[tokio::test]
async fn sqlite_instances_starting_together_apply_each_migration_exactly_once() {
    let url = sqlite_url();
    let kafka = config("migrations");
    // Create the file first: two pools creating one file at once is not what is tested.
    drop(SqliteIdempotencyStore::connect(&url).await.unwrap());
    let starts: Vec<_> = (0..4)
        .map(|n| {
            let (url, kafka) = (url.clone(), kafka.clone());
            tokio::spawn(async move {
                if n % 2 == 0 {
                    SqliteOutbox::connect(&url, &kafka).await.map(drop)
                } else {
                    SqliteIdempotencyStore::connect(&url).await.map(drop)
                }
            })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("every instance starts");
    }
    let outbox = SqliteOutbox::connect(&url, &kafka).await.unwrap();
    let history: History = sqlx::query_as(HISTORY)
        .fetch_all(outbox.pool())
        .await
        .unwrap();
    assert_eq!(history, expected(&[SQLITE_OUTBOX, SQLITE_IDEMPOTENCY]));
}

#[tokio::test]
async fn a_postgres_outbox_created_before_versioned_migrations_is_adopted_and_upgraded_with_its_rows_kept(
) {
    let url = fresh_postgres_database().await;
    let kafka = config("migrations");
    // The table as the unversioned code created it, with one event still unpublished.
    {
        use sqlx::Connection;
        let mut old = sqlx::PgConnection::connect(&url).await.unwrap();
        for statement in POSTGRES_OUTBOX[0].statements {
            sqlx::query(statement).execute(&mut old).await.unwrap();
        }
        sqlx::query(
            "INSERT INTO pegasus_outbox (event_id, topic, message_key, payload, headers)
             VALUES (gen_random_uuid(), 'tests.migrations.noted', 'k', '{}', '[]')",
        )
        .execute(&mut old)
        .await
        .unwrap();
    }
    let outbox = PostgresOutbox::connect(&url, &kafka).await.unwrap();
    let history: History = sqlx::query_as(HISTORY)
        .fetch_all(outbox.pool())
        .await
        .unwrap();
    assert_eq!(history, expected(&[POSTGRES_OUTBOX]));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox")
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1, "the unpublished event survived the upgrade");

    // Version 2's trigger notifies the relay's channel when an enqueue commits, and not
    // before.
    let mut listener = sqlx::postgres::PgListener::connect_with(outbox.pool())
        .await
        .unwrap();
    listener.listen("pegasus_outbox").await.unwrap();
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox.enqueue(&mut tx, &Noted { id: 1 }).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(early.is_err(), "no notification before the commit");
    tx.commit().await.unwrap();
    let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s of the commit")
        .unwrap();
    assert_eq!(notification.channel(), "pegasus_outbox");
}

#[tokio::test]
async fn a_database_newer_than_the_library_is_refused_with_a_typed_error_naming_both_versions() {
    let kafka = config("migrations");
    let url = fresh_postgres_database().await;
    let outbox = PostgresOutbox::connect(&url, &kafka).await.unwrap();
    sqlx::query(
        "INSERT INTO pegasus_schema_history (component, version, description)
         VALUES ('outbox', 99, 'from a newer pegasus-events')",
    )
    .execute(outbox.pool())
    .await
    .unwrap();
    let error = PostgresOutbox::connect(&url, &kafka).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::SchemaTooNew {
                store: "postgres",
                component: "outbox",
                found: 99,
                known,
            } if known == POSTGRES_OUTBOX.len() as i64
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("version 99"), "{error}");
    // The idempotency marks are a component of their own, still at a known version.
    PostgresIdempotencyStore::connect(&url).await.unwrap();

    let url = sqlite_url();
    let store = SqliteIdempotencyStore::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO pegasus_schema_history (component, version, description)
         VALUES ('idempotency', 7, 'from a newer pegasus-events')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let error = SqliteIdempotencyStore::connect(&url).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::SchemaTooNew {
                store: "sqlite",
                component: "idempotency",
                found: 7,
                known: 1,
            }
        ),
        "{error:?}"
    );
}

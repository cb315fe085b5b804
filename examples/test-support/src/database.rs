//! New, empty databases for the services under test.

use std::path::Path;

use uuid::Uuid;

use crate::required;

/// A database a service under test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Database {
    /// A file in a temporary directory.
    Sqlite,
    /// A new database on the PostgreSQL server of `PEGASUS_TEST_POSTGRES_URL`.
    Postgres,
}

impl Database {
    /// A new, empty database of this kind for `service` (`identity`, `shipping`); its URL.
    /// A SQLite file is made in `dir` (`{dir}/{service}.db`), so one `dir` holds one
    /// database per service.
    pub async fn fresh(self, service: &str, dir: &Path) -> String {
        match self {
            Database::Sqlite => format!("sqlite://{}", dir.join(format!("{service}.db")).display()),
            Database::Postgres => {
                let server = required("PEGASUS_TEST_POSTGRES_URL");
                fresh_postgres_database(&server, &format!("{service}_test")).await
            }
        }
    }
}

/// A new, empty database named `{prefix}_{a new UUID}` on the PostgreSQL server at
/// `server_url` (a URL with a database to connect to and create databases from); its URL.
/// `prefix` is lowercase letters, digits and underscores, as an unquoted name must be.
pub async fn fresh_postgres_database(server_url: &str, prefix: &str) -> String {
    let name = format!("{prefix}_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(server_url)
        .await
        .expect("PostgreSQL server reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("database created");
    admin.close().await;
    // The new database's URL: the server's, with `name` in place of its database and
    // without its query (options meant for the admin connection).
    let server = server_url.split('?').next().unwrap_or(server_url);
    let (server, _) = server.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{name}")
}

//! The identity service's database: its users (with their password hashes), their
//! activity logs, the outbox and the inbox marks, all in one database so that each change
//! and its event (or each consumed event and its mark) commit in one transaction.
//!
//! - **A user change and its event are atomic**: the row is written and its
//!   `UserCreatedEvent`, `UserUpdatedEvent` or `UserDeactivatedEvent` enqueued in the
//!   outbox (and its copy for `identity-events`, when that is on) in the same transaction;
//!   a rollback leaves neither, a commit both. No event carries the password or its hash.
//! - **Writes to one user are serialised**: SQLite write transactions begin `IMMEDIATE`,
//!   and PostgreSQL reads the user `FOR UPDATE`, so two changes of one user get versions
//!   `n + 1` and `n + 2`, never both `n + 1`.
//! - **One activity entry per event**: [`ActivityLog`] runs inside the inbox, in the
//!   transaction that marks the event processed for the consumer group; the entry's
//!   primary key is the event id as well, so even another consumer group replaying the
//!   topic into the same database adds nothing twice.
//!
//! **A shipment of a user Identity does not know is kept**, not dead-lettered: the
//! shipment exists in Shipping whatever Identity knows, and a dead letter would only come
//! back the same on replay, since nothing an operator can do makes the user known (user
//! ids are Identity's own, and a user is never deleted). Such a shipment can only come
//! from a token Identity did not issue from this database (one restored from a backup,
//! another deployment sharing the JWT secret); it is recorded under the id it names, with
//! a warning in the log, and no confirmation is sent (there is no address to send it to).
//! The same holds for a deactivated user, who gets the entry and no confirmation.
//!
//! SQLite (the default) and PostgreSQL share every statement; the `backend!` macro writes
//! the code once for each, because pegasus-events' outbox and inbox are typed per database.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use event_contracts::{
    ShipmentCreatedEvent, UserCreatedEvent, UserDeactivatedEvent, UserUpdatedEvent,
};
use pegasus_events::consumer::{EventConsumer, EventContext, EventHandler, HandlerError};
use pegasus_events::idempotency::{
    Inbox, InboxHandler, PostgresIdempotencyStore, SqliteIdempotencyStore,
};
use pegasus_events::outbox::{OutboxRelay, PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events::{Event, KafkaConfig, PublishMetadata};
use service_kit::logging::Traced;
use uuid::Uuid;

use crate::domain::{self, Activity, User};
use crate::notify::{Notifier, ShipmentConfirmation};
use event_contracts::general::{IdentityEvent, OnIdentityEvents};

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No user has that id.
    #[error("no user has this id")]
    NotFound,
    /// Another user has that email.
    #[error("another user has this email")]
    DuplicateEmail,
    /// The user is deactivated; nothing about it can change any more.
    #[error("the user is deactivated")]
    Deactivated,
    /// A stored row could not be read back (edited by hand?).
    #[error("a stored user is unreadable: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database")]
    Database(#[from] sqlx::Error),
    /// pegasus-events refused to open the outbox or inbox, to enqueue, or to build or run
    /// the relay or the consumer.
    #[error("pegasus-events")]
    Events(#[from] pegasus_events::Error),
}

/// A user about to be registered; its id and password hash are made already.
#[derive(Clone)]
pub struct NewUser {
    /// The new user's id.
    pub id: String,
    /// The email, checked and lower-cased.
    pub email: String,
    /// The name, checked.
    pub name: String,
    /// The Argon2id PHC string.
    pub password_hash: String,
    /// When the user registers.
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A change of a user's profile; `None` leaves a field as it is.
#[derive(Clone, Default)]
pub struct UserChanges {
    /// The new email, checked and lower-cased already.
    pub email: Option<String>,
    /// The new name, checked already.
    pub name: Option<String>,
}

impl std::fmt::Debug for UserChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserChanges")
            .field("email", &self.email.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .finish()
    }
}

/// What signing in is checked against.
#[derive(Clone)]
pub struct Credentials {
    /// The user's id.
    pub user_id: String,
    /// The user's email, for the token.
    pub email: String,
    /// The Argon2id PHC string.
    pub password_hash: String,
    /// False once deactivated.
    pub active: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Timestamps as stored: RFC 3339 UTC with microseconds, so text order is time order.
fn stored_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn read_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt("a timestamp".to_owned()))
}

/// A `users` row as selected by [`USER_COLUMNS`].
type UserRow = (String, String, String, i64, i64, String, String);

const USER_COLUMNS: &str = "id, email, name, active, version, created_at, updated_at";

fn user_from_row(row: UserRow) -> Result<User, StoreError> {
    let (id, email, name, active, version, created_at, updated_at) = row;
    Ok(User {
        id,
        email,
        name,
        active: active != 0,
        version,
        created_at: read_time(&created_at)?,
        updated_at: read_time(&updated_at)?,
    })
}

/// A `user_activity` row as selected by [`ACTIVITY_COLUMNS`].
type ActivityRow = (String, String, String, String, String, String);

const ACTIVITY_COLUMNS: &str =
    "event_id, kind, shipment_id, tracking_number, occurred_at, recorded_at";

fn activity_from_row(row: ActivityRow) -> Result<Activity, StoreError> {
    let (event_id, kind, shipment_id, tracking_number, occurred_at, recorded_at) = row;
    let id = |text: &str| {
        Uuid::parse_str(text).map_err(|_| StoreError::Corrupt("an activity id".to_owned()))
    };
    Ok(Activity {
        event_id: id(&event_id)?,
        kind,
        shipment_id: id(&shipment_id)?,
        tracking_number,
        occurred_at: read_time(&occurred_at)?,
        recorded_at: read_time(&recorded_at)?,
    })
}

/// The service's own tables, created at start-up if missing. Valid SQL in SQLite and
/// PostgreSQL alike.
const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        active BIGINT NOT NULL,
        version BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)",
    // No foreign key to users: an activity of a user Identity does not know is kept (see
    // the module documentation).
    "CREATE TABLE IF NOT EXISTS user_activity (
        event_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        shipment_id TEXT NOT NULL,
        tracking_number TEXT NOT NULL,
        occurred_at TEXT NOT NULL,
        recorded_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS user_activity_by_user
        ON user_activity (user_id, occurred_at, event_id)",
];

/// The inbox handler that keeps the users' activity logs from Shipping's
/// `ShipmentCreatedEvent`, and sends each known, active user a confirmation through `N`.
#[derive(Debug)]
pub struct ActivityLog<N> {
    notifier: Arc<N>,
}

impl<N> ActivityLog<N> {
    /// An activity log that confirms through `notifier`.
    pub fn new(notifier: Arc<N>) -> Self {
        ActivityLog { notifier }
    }
}

impl<N> Clone for ActivityLog<N> {
    fn clone(&self) -> Self {
        ActivityLog {
            notifier: Arc::clone(&self.notifier),
        }
    }
}

/// The consumer's handler around the inbox: writes the design's log lines for each
/// record (received, then processed), whether or not the inbox finds it a duplicate.
#[derive(Clone, Debug)]
pub struct Logged<H>(pub H);

impl<E: Event, H: EventHandler<E>> EventHandler<E> for Logged<H> {
    async fn handle(&self, event: E, context: &EventContext<'_>) -> Result<(), HandlerError> {
        tracing::info!(
            event_id = %context.event_id(),
            partition = context.partition,
            attempt = context.attempt,
            correlation_id = context.correlation_id().unwrap_or_default(),
            "Received message from {} at offset {}",
            context.topic,
            context.offset
        );
        let handled = self.0.handle(event, context).await;
        match &handled {
            Ok(()) => tracing::info!(
                event_id = %context.event_id(),
                offset = context.offset,
                "Successfully processed message"
            ),
            // The runtime logs the failure with its cause and retries or dead-letters.
            Err(_) => tracing::warn!(
                event_id = %context.event_id(),
                offset = context.offset,
                "Failed to process message"
            ),
        }
        handled
    }
}

/// Writes the methods and inbox handler of one database kind.
macro_rules! backend {
    (
        $(#[$doc:meta])*
        $name:ident, $db:ty, $outbox:ty, $marks:ty,
        begin_write = $begin:literal, lock_row = $lock:literal
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            outbox: $outbox,
            marks: $marks,
            general_topic: bool,
        }

        impl $name {
            /// Creates the service's tables if missing (the outbox and inbox tables are
            /// pegasus-events', created by their `with_pool`).
            async fn create_tables(&self) -> Result<(), StoreError> {
                for statement in SCHEMA {
                    sqlx::query(statement).execute(self.outbox.pool()).await?;
                }
                Ok(())
            }

            async fn begin_write(&self) -> Result<sqlx::Transaction<'static, $db>, sqlx::Error> {
                self.outbox.pool().begin_with($begin).await
            }

            /// Enqueues `event`, and its copy for `identity-events` when that is on, in
            /// `tx`. The copy has its own id and names the first as its cause.
            async fn enqueue<E: IdentityEvent + Clone>(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                event: &E,
                metadata: &PublishMetadata,
            ) -> Result<(), StoreError> {
                let id = self.outbox.enqueue_with(tx, event, metadata).await?;
                if self.general_topic {
                    let mut copy = metadata.clone();
                    copy.causation_id = Some(id.to_string());
                    self.outbox
                        .enqueue_with(tx, &OnIdentityEvents(event.clone()), &copy)
                        .await?;
                }
                Ok(())
            }

            async fn locked_user(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &str,
            ) -> Result<User, StoreError> {
                let row: Option<UserRow> = sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE id = $1{}",
                    $lock
                ))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                row.map(user_from_row).ok_or(StoreError::NotFound)?
            }

            async fn register(
                &self,
                user: &NewUser,
                metadata: &PublishMetadata,
            ) -> Result<User, StoreError> {
                let mut tx = self.begin_write().await?;
                let created = stored_time(user.created_at);
                sqlx::query(
                    "INSERT INTO users (id, email, name, password_hash, active, version,
                        created_at, updated_at)
                     VALUES ($1, $2, $3, $4, 1, 1, $5, $5)",
                )
                .bind(&user.id)
                .bind(&user.email)
                .bind(&user.name)
                .bind(&user.password_hash)
                .bind(&created)
                .execute(&mut *tx)
                .await
                .map_err(unique_email)?;
                let event = UserCreatedEvent {
                    user_id: user.id.clone(),
                    email: user.email.clone(),
                    name: user.name.clone(),
                    created_at: user.created_at,
                    version: 1,
                };
                // Same transaction: the event exists if and only if the user does.
                self.enqueue(&mut tx, &event, metadata).await?;
                tx.commit().await?;
                Ok(User {
                    id: user.id.clone(),
                    email: user.email.clone(),
                    name: user.name.clone(),
                    active: true,
                    version: 1,
                    created_at: user.created_at,
                    updated_at: user.created_at,
                })
            }

            async fn update_user(
                &self,
                id: &str,
                changes: &UserChanges,
                metadata: &PublishMetadata,
            ) -> Result<User, StoreError> {
                let mut tx = self.begin_write().await?;
                let mut user = Self::locked_user(&mut tx, id).await?;
                if !user.active {
                    return Err(StoreError::Deactivated);
                }
                if let Some(email) = &changes.email {
                    user.email.clone_from(email);
                }
                if let Some(name) = &changes.name {
                    user.name.clone_from(name);
                }
                user.updated_at = domain::now();
                user.version += 1;
                sqlx::query(
                    "UPDATE users SET email = $1, name = $2, updated_at = $3, version = $4
                     WHERE id = $5",
                )
                .bind(&user.email)
                .bind(&user.name)
                .bind(stored_time(user.updated_at))
                .bind(user.version)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(unique_email)?;
                let event = UserUpdatedEvent {
                    user_id: user.id.clone(),
                    email: user.email.clone(),
                    name: user.name.clone(),
                    updated_at: user.updated_at,
                    version: user.version,
                };
                self.enqueue(&mut tx, &event, metadata).await?;
                tx.commit().await?;
                Ok(user)
            }

            async fn deactivate_user(
                &self,
                id: &str,
                metadata: &PublishMetadata,
            ) -> Result<User, StoreError> {
                let mut tx = self.begin_write().await?;
                let mut user = Self::locked_user(&mut tx, id).await?;
                if !user.active {
                    return Err(StoreError::Deactivated);
                }
                user.active = false;
                user.updated_at = domain::now();
                user.version += 1;
                sqlx::query(
                    "UPDATE users SET active = 0, updated_at = $1, version = $2 WHERE id = $3",
                )
                .bind(stored_time(user.updated_at))
                .bind(user.version)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                let event = UserDeactivatedEvent {
                    user_id: user.id.clone(),
                    deactivated_at: user.updated_at,
                    version: user.version,
                };
                self.enqueue(&mut tx, &event, metadata).await?;
                tx.commit().await?;
                Ok(user)
            }

            async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
                let row: Option<UserRow> = sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(self.outbox.pool())
                .await?;
                row.map(user_from_row).transpose()
            }

            async fn credentials(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
                let row: Option<(String, String, String, i64)> = sqlx::query_as(
                    "SELECT id, email, password_hash, active FROM users WHERE email = $1",
                )
                .bind(email)
                .fetch_optional(self.outbox.pool())
                .await?;
                Ok(row.map(|(user_id, email, password_hash, active)| Credentials {
                    user_id,
                    email,
                    password_hash,
                    active: active != 0,
                }))
            }

            async fn activity(&self, user_id: &str) -> Result<Vec<Activity>, StoreError> {
                let rows: Vec<ActivityRow> = sqlx::query_as(&format!(
                    "SELECT {ACTIVITY_COLUMNS} FROM user_activity WHERE user_id = $1
                     ORDER BY occurred_at, event_id"
                ))
                .bind(user_id)
                .fetch_all(self.outbox.pool())
                .await?;
                rows.into_iter().map(activity_from_row).collect()
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(self.outbox.pool()).await?;
                Ok(())
            }

            fn relay(
                &self,
                kafka: &KafkaConfig,
                settings: RelaySettings,
            ) -> Result<OutboxRelay, StoreError> {
                Ok(self.outbox.relay(kafka, settings)?)
            }

            fn shipment_consumer<N: Notifier>(
                &self,
                kafka: KafkaConfig,
                group_id: String,
                notifier: Arc<N>,
            ) -> Result<EventConsumer, StoreError> {
                // The design's log lines, each with the shipment request's trace id.
                let handler =
                    Traced(Logged(Inbox::new(self.marks.clone(), ActivityLog::new(notifier))));
                Ok(EventConsumer::builder(kafka)
                    .group_id(group_id)
                    .handler::<ShipmentCreatedEvent, _>(handler)
                    .build()?)
            }
        }

        impl<N: Notifier> InboxHandler<ShipmentCreatedEvent, $db> for ActivityLog<N> {
            async fn handle(
                &self,
                event: ShipmentCreatedEvent,
                context: &EventContext<'_>,
                tx: &mut sqlx::Transaction<'static, $db>,
            ) -> Result<(), HandlerError> {
                tracing::info!(
                    shipment_id = %event.shipment_id,
                    user_id = %event.created_by_user_id,
                    "Processing shipment created: {}",
                    event.tracking_number
                );
                // The user as Identity holds it: the confirmation goes to this address,
                // not to the event's copy of it.
                let user: Option<(String, String, i64)> =
                    sqlx::query_as("SELECT email, name, active FROM users WHERE id = $1")
                        .bind(&event.created_by_user_id)
                        .fetch_optional(&mut **tx)
                        .await?;
                sqlx::query(
                    "INSERT INTO user_activity (event_id, user_id, kind, shipment_id,
                        tracking_number, occurred_at, recorded_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(context.event_id().to_string())
                .bind(&event.created_by_user_id)
                .bind(ShipmentCreatedEvent::NAME)
                .bind(event.shipment_id.to_string())
                .bind(&event.tracking_number)
                .bind(stored_time(event.created_at))
                .bind(stored_time(domain::now()))
                .execute(&mut **tx)
                .await?;
                match user {
                    Some((email, name, 1..)) => {
                        let confirmation = ShipmentConfirmation {
                            user_id: event.created_by_user_id,
                            email,
                            name,
                            shipment_id: event.shipment_id,
                            tracking_number: event.tracking_number,
                        };
                        self.notifier
                            .shipment_created(&confirmation)
                            .await
                            .map_err(HandlerError::transient)?;
                    }
                    Some(_) => tracing::info!(
                        user_id = %event.created_by_user_id,
                        "the user is deactivated; activity recorded, no confirmation sent"
                    ),
                    None => tracing::warn!(
                        user_id = %event.created_by_user_id,
                        "a shipment of a user unknown to Identity; activity recorded, no \
                         confirmation sent"
                    ),
                }
                Ok(())
            }
        }
    };
}

backend!(
    /// The SQLite database (the default, `sqlite://identity.db`).
    SqliteIdentity, sqlx::Sqlite, SqliteOutbox, SqliteIdempotencyStore,
    begin_write = "BEGIN IMMEDIATE", lock_row = ""
);

backend!(
    /// The PostgreSQL database (`DATABASE_URL=postgres://...`).
    PostgresIdentity, sqlx::Postgres, PostgresOutbox, PostgresIdempotencyStore,
    begin_write = "BEGIN", lock_row = " FOR UPDATE"
);

/// A unique violation on insert or update can only be the email (the id is a new v7
/// UUID).
fn unique_email(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::DuplicateEmail,
        _ => StoreError::Database(error),
    }
}

/// The identity database, SQLite or PostgreSQL by its URL; cheap to clone (pools inside).
#[derive(Clone, Debug)]
pub enum IdentityDb {
    /// `sqlite:...`
    Sqlite(SqliteIdentity),
    /// `postgres://...` or `postgresql://...`
    Postgres(PostgresIdentity),
}

/// Calls the same method on whichever database this is.
macro_rules! on_backend {
    ($self:ident . $method:ident ( $($arg:expr),* ) .await) => {
        match $self {
            IdentityDb::Sqlite(db) => db.$method($($arg),*).await,
            IdentityDb::Postgres(db) => db.$method($($arg),*).await,
        }
    };
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            IdentityDb::Sqlite(db) => db.$method($($arg),*),
            IdentityDb::Postgres(db) => db.$method($($arg),*),
        }
    };
}

impl IdentityDb {
    /// Opens the database at `url` (SQLite files are created if missing) and brings the
    /// outbox, the inbox marks and the service's tables to their current schema. With
    /// `general_topic`, every user event is also enqueued for `identity-events`.
    ///
    /// # Errors
    ///
    /// When the database cannot be opened or a table cannot be created.
    pub async fn open(
        url: &str,
        kafka: &KafkaConfig,
        general_topic: bool,
    ) -> Result<Self, StoreError> {
        let db = if url.starts_with("sqlite:") {
            let outbox = SqliteOutbox::connect(url, kafka).await?;
            let marks = SqliteIdempotencyStore::with_pool(outbox.pool().clone()).await?;
            IdentityDb::Sqlite(SqliteIdentity {
                outbox,
                marks,
                general_topic,
            })
        } else {
            let outbox = PostgresOutbox::connect(url, kafka).await?;
            let marks = PostgresIdempotencyStore::with_pool(outbox.pool().clone()).await?;
            IdentityDb::Postgres(PostgresIdentity {
                outbox,
                marks,
                general_topic,
            })
        };
        db.create_tables().await?;
        Ok(db)
    }

    async fn create_tables(&self) -> Result<(), StoreError> {
        on_backend!(self.create_tables().await)
    }

    /// Saves a new user and its `UserCreatedEvent` in one transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::DuplicateEmail`], or a database failure.
    pub async fn register(
        &self,
        user: &NewUser,
        metadata: &PublishMetadata,
    ) -> Result<User, StoreError> {
        on_backend!(self.register(user, metadata).await)
    }

    /// Changes a user's profile, raises its version and enqueues its `UserUpdatedEvent`,
    /// in one transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Deactivated`],
    /// [`StoreError::DuplicateEmail`], or a database failure.
    pub async fn update_user(
        &self,
        id: &str,
        changes: &UserChanges,
        metadata: &PublishMetadata,
    ) -> Result<User, StoreError> {
        on_backend!(self.update_user(id, changes, metadata).await)
    }

    /// Deactivates a user for good, raises its version and enqueues its
    /// `UserDeactivatedEvent`, in one transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Deactivated`] when it is already, or a
    /// database failure.
    pub async fn deactivate_user(
        &self,
        id: &str,
        metadata: &PublishMetadata,
    ) -> Result<User, StoreError> {
        on_backend!(self.deactivate_user(id, metadata).await)
    }

    /// The user with this id.
    ///
    /// # Errors
    ///
    /// A database failure, or an unreadable row.
    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        on_backend!(self.user(id).await)
    }

    /// What signing in with `email` (lower-cased) is checked against.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn credentials(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        on_backend!(self.credentials(email).await)
    }

    /// The activity log of `user_id`, oldest first.
    ///
    /// # Errors
    ///
    /// A database failure, or an unreadable row.
    pub async fn activity(&self, user_id: &str) -> Result<Vec<Activity>, StoreError> {
        on_backend!(self.activity(user_id).await)
    }

    /// Whether the database answers.
    ///
    /// # Errors
    ///
    /// The database failure.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self.ping().await)
    }

    /// The outbox relay that publishes the enqueued events.
    ///
    /// # Errors
    ///
    /// When pegasus-events refuses `kafka` or `settings`.
    pub fn relay(
        &self,
        kafka: &KafkaConfig,
        settings: RelaySettings,
    ) -> Result<OutboxRelay, StoreError> {
        on_backend!(self.relay(kafka, settings))
    }

    /// The consumer of `shipping.shipment.created` that keeps the activity logs through
    /// the inbox and confirms through `notifier`, as group `group_id`.
    ///
    /// # Errors
    ///
    /// When pegasus-events refuses the configuration.
    pub fn shipment_consumer<N: Notifier>(
        &self,
        kafka: KafkaConfig,
        group_id: String,
        notifier: Arc<N>,
    ) -> Result<EventConsumer, StoreError> {
        on_backend!(self.shipment_consumer(kafka, group_id, notifier))
    }

    /// The PostgreSQL parts (outbox, inbox marks), for tests that drive the inbox
    /// directly.
    pub fn postgres(&self) -> Option<(&PostgresOutbox, &PostgresIdempotencyStore)> {
        match self {
            IdentityDb::Sqlite(_) => None,
            IdentityDb::Postgres(db) => Some((&db.outbox, &db.marks)),
        }
    }

    /// The SQLite parts (outbox, inbox marks), for tests that drive the inbox directly.
    pub fn sqlite(&self) -> Option<(&SqliteOutbox, &SqliteIdempotencyStore)> {
        match self {
            IdentityDb::Sqlite(db) => Some((&db.outbox, &db.marks)),
            IdentityDb::Postgres(_) => None,
        }
    }
}

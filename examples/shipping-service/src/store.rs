//! The shipping service's database: its shipments, its copy of Identity's users, the
//! outbox and the inbox marks, all in one database so that each change and its event (or
//! each consumed event and its mark) commit in one transaction.
//!
//! - **A shipment change and its event are atomic**: the row is written and its event
//!   enqueued in the outbox (and its copy for `shipping-events`, when that is on, see
//!   [`ShippingDb::with_general_topic`]) in the same transaction; a rollback leaves none,
//!   a commit all, and the relay publishes them afterwards.
//! - **Writes to one shipment are serialised**: SQLite write transactions begin
//!   `IMMEDIATE` (the write lock is taken first, so a transaction never fails to upgrade
//!   its read lock), and PostgreSQL reads the shipment `FOR UPDATE`; the status rule is
//!   checked against the row as locked.
//! - **The user cache never goes back in time**: an event older than the cached user
//!   (lower `version`) changes nothing, and a deactivated user stays deactivated whatever
//!   arrives later (see [`UserCache`]), whether the user events come from Identity's three
//!   user topics or from its general topic `identity-events` ([`UserEvents`]).
//!
//! SQLite (the default) and PostgreSQL share every statement (`$1` parameters, `ON
//! CONFLICT`, `CASE`, timestamps stored as RFC 3339 text); the `backend!` macro writes the
//! code once for each, because pegasus-events' outbox and inbox are typed per database.

use chrono::{DateTime, SecondsFormat, Utc};
use event_contracts::general::{IdentityEvent, OnIdentityEvents, OnShippingEvents, ShippingEvent};
use event_contracts::{
    ShipmentCreatedEvent, ShipmentStatus, ShipmentStatusChangedEvent, ShipmentUpdatedEvent,
    UserCreatedEvent, UserDeactivatedEvent, UserUpdatedEvent,
};
use pegasus_events::consumer::{EventConsumer, EventContext, HandlerError};
use pegasus_events::idempotency::{
    Inbox, InboxHandler, PostgresIdempotencyStore, SqliteIdempotencyStore,
};
use pegasus_events::outbox::{OutboxRelay, PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events::{KafkaConfig, PublishMetadata};
use service_kit::logging::Traced;
use uuid::Uuid;

use crate::domain::{self, Shipment};

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The acting user is not in the user cache (Identity's event has not arrived, or the
    /// user does not exist).
    #[error("the user is not known to the shipping service")]
    UnknownUser,
    /// The acting user was deactivated.
    #[error("the user is deactivated")]
    UserDeactivated,
    /// No shipment has that id.
    #[error("no shipment has this id")]
    NotFound,
    /// Another shipment has that tracking number.
    #[error("another shipment has this tracking number")]
    DuplicateTrackingNumber,
    /// The status change is not one the domain allows.
    #[error("a shipment cannot go from {from} to {to}")]
    IllegalTransition {
        /// The shipment's status.
        from: ShipmentStatus,
        /// The status asked for.
        to: ShipmentStatus,
    },
    /// The shipment is delivered or cancelled; its details are final.
    #[error("the shipment is {0}; its details can no longer change")]
    Final(ShipmentStatus),
    /// A stored row could not be read back (edited by hand?).
    #[error("a stored shipment is unreadable: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database")]
    Database(#[from] sqlx::Error),
    /// pegasus-events refused to open the outbox or inbox, to enqueue, or to build or
    /// run the relay or the consumer.
    #[error(transparent)]
    Events(#[from] pegasus_events::Error),
}

/// A change of a shipment's details; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct ShipmentChanges {
    /// The new tracking number, checked already.
    pub tracking_number: Option<String>,
    /// The new destination, checked already.
    pub destination: Option<String>,
}

/// A user as cached from Identity's events.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedUser {
    /// The user's id.
    pub user_id: String,
    /// The email, once a created or updated event was seen.
    pub email: Option<String>,
    /// The name, likewise.
    pub name: Option<String>,
    /// False once deactivated, for good.
    pub active: bool,
    /// The highest user version applied.
    pub version: i64,
}

impl std::fmt::Debug for CachedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedUser")
            .field("user_id", &self.user_id)
            .field("email", &self.email.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .field("active", &self.active)
            .field("version", &self.version)
            .finish()
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

/// A `shipments` row as selected by [`SHIPMENT_COLUMNS`].
type ShipmentRow = (
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    i64,
);

const SHIPMENT_COLUMNS: &str =
    "id, tracking_number, destination, status, created_at, updated_at, created_by_user_id, version";

fn shipment_from_row(row: ShipmentRow) -> Result<Shipment, StoreError> {
    let (id, tracking_number, destination, status, created_at, updated_at, created_by, version) =
        row;
    Ok(Shipment {
        id: Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt("an id".to_owned()))?,
        tracking_number,
        destination,
        status: ShipmentStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt("a status".to_owned()))?,
        created_at: read_time(&created_at)?,
        updated_at: read_time(&updated_at)?,
        created_by_user_id: created_by,
        version,
    })
}

/// The service's own tables, created at start-up if missing. Valid SQL in SQLite and
/// PostgreSQL alike.
const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS shipments (
        id TEXT PRIMARY KEY,
        tracking_number TEXT NOT NULL UNIQUE,
        destination TEXT,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        created_by_user_id TEXT NOT NULL,
        version BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS shipments_by_creation ON shipments (created_at, id)",
    // email and name stay NULL for a user whose deactivation arrived before any profile.
    "CREATE TABLE IF NOT EXISTS users (
        user_id TEXT PRIMARY KEY,
        email TEXT,
        name TEXT,
        active BIGINT NOT NULL,
        version BIGINT NOT NULL,
        updated_at TEXT NOT NULL)",
];

/// Created or updated: the profile is written when the event is newer than the cache.
/// `active` is left alone on an existing row, so a deactivated user stays deactivated.
const UPSERT_PROFILE: &str = "INSERT INTO users (user_id, email, name, active, version, updated_at)
     VALUES ($1, $2, $3, 1, $4, $5)
     ON CONFLICT (user_id) DO UPDATE SET
        email = excluded.email, name = excluded.name,
        version = excluded.version, updated_at = excluded.updated_at
     WHERE users.version < excluded.version";

/// Deactivated: whatever the order of arrival, the user ends inactive with the highest
/// version seen.
const DEACTIVATE: &str = "INSERT INTO users (user_id, email, name, active, version, updated_at)
     VALUES ($1, NULL, NULL, 0, $2, $3)
     ON CONFLICT (user_id) DO UPDATE SET
        active = 0,
        version = CASE WHEN excluded.version > users.version
                       THEN excluded.version ELSE users.version END,
        updated_at = CASE WHEN excluded.version > users.version
                          THEN excluded.updated_at ELSE users.updated_at END";

/// Logs what a user event did to the cache (never the email).
fn applied(what: &str, user_id: &str, version: i64, rows: u64) {
    if rows == 0 {
        tracing::info!(
            user_id,
            version,
            "user {what} event older than the cached user: ignored"
        );
    } else {
        tracing::info!(user_id, version, "user {what}: cache updated");
    }
}

/// The inbox handler that keeps the user cache: each of Identity's user events is applied
/// in the transaction that marks it processed, so it is applied once, however often it is
/// delivered. A copy from `identity-events` ([`OnIdentityEvents`]) is applied as the event
/// it wraps.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserCache;

/// Where the user-cache consumer reads Identity's user events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UserEvents {
    /// `identity.user.created`, `identity.user.updated` and `identity.user.deactivated`,
    /// one event type per topic (the default).
    #[default]
    SpecificTopics,
    /// Identity's general topic `identity-events` alone (Identity must publish there,
    /// `IDENTITY_GENERAL_TOPIC`): one inbox handler per user event type on it, and the
    /// consumer runtime hands each record to the handler of its `ce_type`. A record of
    /// another type (say a `PasswordChangedEvent`) has no handler: the runtime
    /// dead-letters it to `dlq-events` with reason `decode` at once and goes on with the
    /// next record, so such types accumulate in the dead-letter topic.
    ///
    /// Switching an existing group over reads `identity-events` from the start (the group
    /// has no offsets there yet); the copies have their own event ids, so the inbox does
    /// not recognise them, but the cache ignores whatever is not newer than what it holds.
    GeneralTopic,
}

/// Writes the methods and inbox handlers of one database kind.
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

            /// Enqueues `event`, and its copy for `shipping-events` when that is on, in
            /// `tx`. The copy has its own id and names the first as its cause.
            async fn enqueue<E: ShippingEvent + Clone>(
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
                        .enqueue_with(tx, &OnShippingEvents(event.clone()), &copy)
                        .await?;
                }
                Ok(())
            }

            async fn check_user(
                tx: &mut sqlx::Transaction<'static, $db>,
                user_id: &str,
            ) -> Result<(), StoreError> {
                let active: Option<i64> =
                    sqlx::query_scalar("SELECT active FROM users WHERE user_id = $1")
                        .bind(user_id)
                        .fetch_optional(&mut **tx)
                        .await?;
                match active {
                    None => Err(StoreError::UnknownUser),
                    Some(0) => Err(StoreError::UserDeactivated),
                    Some(_) => Ok(()),
                }
            }

            async fn locked_shipment(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: Uuid,
            ) -> Result<Shipment, StoreError> {
                let row: Option<ShipmentRow> = sqlx::query_as(&format!(
                    "SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE id = $1{}",
                    $lock
                ))
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
                row.map(shipment_from_row).ok_or(StoreError::NotFound)?
            }

            async fn create_shipment(
                &self,
                event: &ShipmentCreatedEvent,
                metadata: &PublishMetadata,
            ) -> Result<Shipment, StoreError> {
                let mut tx = self.begin_write().await?;
                Self::check_user(&mut tx, &event.created_by_user_id).await?;
                let created = stored_time(event.created_at);
                sqlx::query(
                    "INSERT INTO shipments (id, tracking_number, destination, status,
                        created_at, updated_at, created_by_user_id, version)
                     VALUES ($1, $2, $3, $4, $5, $5, $6, 1)",
                )
                .bind(event.shipment_id.to_string())
                .bind(&event.tracking_number)
                .bind(&event.destination)
                .bind(event.status.as_str())
                .bind(&created)
                .bind(&event.created_by_user_id)
                .execute(&mut *tx)
                .await
                .map_err(unique_tracking_number)?;
                // Same transaction: the event exists if and only if the shipment does.
                self.enqueue(&mut tx, event, metadata).await?;
                tx.commit().await?;
                Ok(Shipment {
                    id: event.shipment_id,
                    tracking_number: event.tracking_number.clone(),
                    destination: event.destination.clone(),
                    status: event.status,
                    created_at: event.created_at,
                    updated_at: event.created_at,
                    created_by_user_id: event.created_by_user_id.clone(),
                    version: 1,
                })
            }

            async fn update_shipment(
                &self,
                id: Uuid,
                changes: &ShipmentChanges,
                user_id: &str,
                metadata: &PublishMetadata,
            ) -> Result<Shipment, StoreError> {
                let mut tx = self.begin_write().await?;
                Self::check_user(&mut tx, user_id).await?;
                let mut shipment = Self::locked_shipment(&mut tx, id).await?;
                if domain::is_final(shipment.status) {
                    return Err(StoreError::Final(shipment.status));
                }
                if let Some(tracking_number) = &changes.tracking_number {
                    shipment.tracking_number.clone_from(tracking_number);
                }
                if let Some(destination) = &changes.destination {
                    shipment.destination = Some(destination.clone());
                }
                shipment.updated_at = domain::now();
                shipment.version += 1;
                sqlx::query(
                    "UPDATE shipments SET tracking_number = $1, destination = $2,
                        updated_at = $3, version = $4
                     WHERE id = $5",
                )
                .bind(&shipment.tracking_number)
                .bind(&shipment.destination)
                .bind(stored_time(shipment.updated_at))
                .bind(shipment.version)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(unique_tracking_number)?;
                let event = ShipmentUpdatedEvent {
                    shipment_id: id,
                    tracking_number: shipment.tracking_number.clone(),
                    destination: shipment.destination.clone(),
                    updated_at: shipment.updated_at,
                    updated_by_user_id: user_id.to_owned(),
                    version: shipment.version,
                };
                self.enqueue(&mut tx, &event, metadata).await?;
                tx.commit().await?;
                Ok(shipment)
            }

            async fn change_status(
                &self,
                id: Uuid,
                to: ShipmentStatus,
                user_id: &str,
                metadata: &PublishMetadata,
            ) -> Result<(Shipment, ShipmentStatus), StoreError> {
                let mut tx = self.begin_write().await?;
                Self::check_user(&mut tx, user_id).await?;
                let mut shipment = Self::locked_shipment(&mut tx, id).await?;
                let from = shipment.status;
                if !domain::can_change_status(from, to) {
                    return Err(StoreError::IllegalTransition { from, to });
                }
                shipment.status = to;
                shipment.updated_at = domain::now();
                shipment.version += 1;
                sqlx::query(
                    "UPDATE shipments SET status = $1, updated_at = $2, version = $3
                     WHERE id = $4",
                )
                .bind(to.as_str())
                .bind(stored_time(shipment.updated_at))
                .bind(shipment.version)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
                let event = ShipmentStatusChangedEvent {
                    shipment_id: id,
                    tracking_number: shipment.tracking_number.clone(),
                    old_status: from,
                    new_status: to,
                    changed_at: shipment.updated_at,
                    changed_by_user_id: user_id.to_owned(),
                    version: shipment.version,
                };
                self.enqueue(&mut tx, &event, metadata).await?;
                tx.commit().await?;
                Ok((shipment, from))
            }

            async fn shipment(&self, id: Uuid) -> Result<Option<Shipment>, StoreError> {
                let row: Option<ShipmentRow> = sqlx::query_as(&format!(
                    "SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE id = $1"
                ))
                .bind(id.to_string())
                .fetch_optional(self.outbox.pool())
                .await?;
                row.map(shipment_from_row).transpose()
            }

            async fn shipments(
                &self,
                offset: i64,
                limit: i64,
            ) -> Result<(Vec<Shipment>, i64), StoreError> {
                let rows: Vec<ShipmentRow> = sqlx::query_as(&format!(
                    "SELECT {SHIPMENT_COLUMNS} FROM shipments
                     ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
                ))
                .bind(limit)
                .bind(offset)
                .fetch_all(self.outbox.pool())
                .await?;
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shipments")
                    .fetch_one(self.outbox.pool())
                    .await?;
                let shipments = rows
                    .into_iter()
                    .map(shipment_from_row)
                    .collect::<Result<_, _>>()?;
                Ok((shipments, total))
            }

            async fn user(&self, user_id: &str) -> Result<Option<CachedUser>, StoreError> {
                let row: Option<(String, Option<String>, Option<String>, i64, i64)> =
                    sqlx::query_as(
                        "SELECT user_id, email, name, active, version FROM users
                         WHERE user_id = $1",
                    )
                    .bind(user_id)
                    .fetch_optional(self.outbox.pool())
                    .await?;
                Ok(row.map(|(user_id, email, name, active, version)| CachedUser {
                    user_id,
                    email,
                    name,
                    active: active != 0,
                    version,
                }))
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

            fn user_cache_consumer(
                &self,
                kafka: KafkaConfig,
                group_id: String,
                from: UserEvents,
            ) -> Result<EventConsumer, StoreError> {
                let consumer = EventConsumer::builder(kafka).group_id(group_id);
                // In an `event` span with the publishing request's trace id, so the cache's
                // log lines carry it.
                let inbox = || Traced(Inbox::new(self.marks.clone(), UserCache));
                let consumer = match from {
                    UserEvents::SpecificTopics => consumer
                        .handler::<UserCreatedEvent, _>(inbox())
                        .handler::<UserUpdatedEvent, _>(inbox())
                        .handler::<UserDeactivatedEvent, _>(inbox()),
                    // Three types on one topic: the runtime dispatches on `ce_type`.
                    UserEvents::GeneralTopic => consumer
                        .handler::<OnIdentityEvents<UserCreatedEvent>, _>(inbox())
                        .handler::<OnIdentityEvents<UserUpdatedEvent>, _>(inbox())
                        .handler::<OnIdentityEvents<UserDeactivatedEvent>, _>(inbox()),
                };
                Ok(consumer.build()?)
            }
        }

        /// A copy from `identity-events` is the event it wraps: the same handler applies it.
        impl<E> InboxHandler<OnIdentityEvents<E>, $db> for UserCache
        where
            E: IdentityEvent,
            UserCache: InboxHandler<E, $db>,
        {
            async fn handle(
                &self,
                event: OnIdentityEvents<E>,
                context: &EventContext<'_>,
                tx: &mut sqlx::Transaction<'static, $db>,
            ) -> Result<(), HandlerError> {
                InboxHandler::<E, $db>::handle(self, event.0, context, tx).await
            }
        }

        impl InboxHandler<UserCreatedEvent, $db> for UserCache {
            async fn handle(
                &self,
                event: UserCreatedEvent,
                _: &EventContext<'_>,
                tx: &mut sqlx::Transaction<'static, $db>,
            ) -> Result<(), HandlerError> {
                let done = sqlx::query(UPSERT_PROFILE)
                    .bind(&event.user_id)
                    .bind(&event.email)
                    .bind(&event.name)
                    .bind(event.version)
                    .bind(stored_time(event.created_at))
                    .execute(&mut **tx)
                    .await?;
                applied("created", &event.user_id, event.version, done.rows_affected());
                Ok(())
            }
        }

        impl InboxHandler<UserUpdatedEvent, $db> for UserCache {
            async fn handle(
                &self,
                event: UserUpdatedEvent,
                _: &EventContext<'_>,
                tx: &mut sqlx::Transaction<'static, $db>,
            ) -> Result<(), HandlerError> {
                let done = sqlx::query(UPSERT_PROFILE)
                    .bind(&event.user_id)
                    .bind(&event.email)
                    .bind(&event.name)
                    .bind(event.version)
                    .bind(stored_time(event.updated_at))
                    .execute(&mut **tx)
                    .await?;
                applied("updated", &event.user_id, event.version, done.rows_affected());
                Ok(())
            }
        }

        impl InboxHandler<UserDeactivatedEvent, $db> for UserCache {
            async fn handle(
                &self,
                event: UserDeactivatedEvent,
                _: &EventContext<'_>,
                tx: &mut sqlx::Transaction<'static, $db>,
            ) -> Result<(), HandlerError> {
                let done = sqlx::query(DEACTIVATE)
                    .bind(&event.user_id)
                    .bind(event.version)
                    .bind(stored_time(event.deactivated_at))
                    .execute(&mut **tx)
                    .await?;
                applied("deactivated", &event.user_id, event.version, done.rows_affected());
                Ok(())
            }
        }
    };
}

backend!(
    /// The SQLite database (the default, `sqlite://shipping.db`).
    SqliteShipping, sqlx::Sqlite, SqliteOutbox, SqliteIdempotencyStore,
    begin_write = "BEGIN IMMEDIATE", lock_row = ""
);

backend!(
    /// The PostgreSQL database (`DATABASE_URL=postgres://...`).
    PostgresShipping, sqlx::Postgres, PostgresOutbox, PostgresIdempotencyStore,
    begin_write = "BEGIN", lock_row = " FOR UPDATE"
);

/// A unique violation on insert or update can only be the tracking number (the id is a
/// new v7 UUID).
fn unique_tracking_number(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::DuplicateTrackingNumber
        }
        _ => StoreError::Database(error),
    }
}

/// The shipping database, SQLite or PostgreSQL by its URL; cheap to clone (pools inside).
#[derive(Clone, Debug)]
pub enum ShippingDb {
    /// `sqlite:...`
    Sqlite(SqliteShipping),
    /// `postgres://...` or `postgresql://...`
    Postgres(PostgresShipping),
}

/// Calls the same method on whichever database this is.
macro_rules! on_backend {
    ($self:ident . $method:ident ( $($arg:expr),* ) .await) => {
        match $self {
            ShippingDb::Sqlite(db) => db.$method($($arg),*).await,
            ShippingDb::Postgres(db) => db.$method($($arg),*).await,
        }
    };
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            ShippingDb::Sqlite(db) => db.$method($($arg),*),
            ShippingDb::Postgres(db) => db.$method($($arg),*),
        }
    };
}

impl ShippingDb {
    /// Opens the database at `url` (SQLite files are created if missing) and brings the
    /// outbox, the inbox marks and the service's tables to their current schema.
    ///
    /// # Errors
    ///
    /// When the database cannot be opened or a table cannot be created.
    pub async fn open(url: &str, kafka: &KafkaConfig) -> Result<Self, StoreError> {
        let db = if url.starts_with("sqlite:") {
            let outbox = SqliteOutbox::connect(url, kafka).await?;
            let marks = SqliteIdempotencyStore::with_pool(outbox.pool().clone()).await?;
            ShippingDb::Sqlite(SqliteShipping {
                outbox,
                marks,
                general_topic: false,
            })
        } else {
            let outbox = PostgresOutbox::connect(url, kafka).await?;
            let marks = PostgresIdempotencyStore::with_pool(outbox.pool().clone()).await?;
            ShippingDb::Postgres(PostgresShipping {
                outbox,
                marks,
                general_topic: false,
            })
        };
        db.create_tables().await?;
        Ok(db)
    }

    async fn create_tables(&self) -> Result<(), StoreError> {
        on_backend!(self.create_tables().await)
    }

    /// This database with the copy for `shipping-events` on or off (off after
    /// [`ShippingDb::open`]): when on, every shipment event is also enqueued as
    /// [`OnShippingEvents`], in the same transaction, with the same key and payload, its own
    /// event id, and the original's id as its causation id.
    #[must_use]
    pub fn with_general_topic(self, on: bool) -> Self {
        match self {
            ShippingDb::Sqlite(db) => ShippingDb::Sqlite(SqliteShipping {
                general_topic: on,
                ..db
            }),
            ShippingDb::Postgres(db) => ShippingDb::Postgres(PostgresShipping {
                general_topic: on,
                ..db
            }),
        }
    }

    /// Saves a new shipment and its `ShipmentCreatedEvent` in one transaction, if its
    /// creator is a known, active user.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownUser`], [`StoreError::UserDeactivated`],
    /// [`StoreError::DuplicateTrackingNumber`], or a database failure.
    pub async fn create_shipment(
        &self,
        event: &ShipmentCreatedEvent,
        metadata: &PublishMetadata,
    ) -> Result<Shipment, StoreError> {
        on_backend!(self.create_shipment(event, metadata).await)
    }

    /// Changes a shipment's details and enqueues its `ShipmentUpdatedEvent`, in one
    /// transaction.
    ///
    /// # Errors
    ///
    /// As [`ShippingDb::create_shipment`], plus [`StoreError::NotFound`] and
    /// [`StoreError::Final`].
    pub async fn update_shipment(
        &self,
        id: Uuid,
        changes: &ShipmentChanges,
        user_id: &str,
        metadata: &PublishMetadata,
    ) -> Result<Shipment, StoreError> {
        on_backend!(self.update_shipment(id, changes, user_id, metadata).await)
    }

    /// Moves a shipment to `to` and enqueues its `ShipmentStatusChangedEvent`, in one
    /// transaction, if the domain allows the change; returns the shipment and the status
    /// it had.
    ///
    /// # Errors
    ///
    /// As [`ShippingDb::update_shipment`], with [`StoreError::IllegalTransition`] instead
    /// of [`StoreError::Final`].
    pub async fn change_status(
        &self,
        id: Uuid,
        to: ShipmentStatus,
        user_id: &str,
        metadata: &PublishMetadata,
    ) -> Result<(Shipment, ShipmentStatus), StoreError> {
        on_backend!(self.change_status(id, to, user_id, metadata).await)
    }

    /// The shipment with this id.
    ///
    /// # Errors
    ///
    /// A database failure, or an unreadable row.
    pub async fn shipment(&self, id: Uuid) -> Result<Option<Shipment>, StoreError> {
        on_backend!(self.shipment(id).await)
    }

    /// `limit` shipments from `offset`, newest first, and how many there are in all.
    ///
    /// # Errors
    ///
    /// A database failure, or an unreadable row.
    pub async fn shipments(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Shipment>, i64), StoreError> {
        on_backend!(self.shipments(offset, limit).await)
    }

    /// The cached user with this id.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn user(&self, user_id: &str) -> Result<Option<CachedUser>, StoreError> {
        on_backend!(self.user(user_id).await)
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

    /// The consumer of Identity's user events, from its three user topics or its general
    /// topic as `from` says, that keeps the user cache through the inbox, as group
    /// `group_id`.
    ///
    /// # Errors
    ///
    /// When pegasus-events refuses the configuration.
    pub fn user_cache_consumer(
        &self,
        kafka: KafkaConfig,
        group_id: String,
        from: UserEvents,
    ) -> Result<EventConsumer, StoreError> {
        on_backend!(self.user_cache_consumer(kafka, group_id, from))
    }

    /// The PostgreSQL parts (outbox, inbox marks), for tests that drive the inbox
    /// directly.
    pub fn postgres(&self) -> Option<(&PostgresOutbox, &PostgresIdempotencyStore)> {
        match self {
            ShippingDb::Sqlite(_) => None,
            ShippingDb::Postgres(db) => Some((&db.outbox, &db.marks)),
        }
    }

    /// The SQLite parts (outbox, inbox marks), for tests that drive the inbox directly.
    pub fn sqlite(&self) -> Option<(&SqliteOutbox, &SqliteIdempotencyStore)> {
        match self {
            ShippingDb::Sqlite(db) => Some((&db.outbox, &db.marks)),
            ShippingDb::Postgres(_) => None,
        }
    }
}

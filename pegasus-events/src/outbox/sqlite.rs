//! The outbox in SQLite, the embedded default database: enqueue in the caller's
//! transaction; the relay is woken by the commit of an enqueue made through the same
//! [`SqliteOutbox`] (or a clone of it) in this process, and polls for the others; one active
//! relay per file through a lease row with an expiry.
//!
//! The lease fences the relay's work: reading rows to publish and marking them are single
//! statements that run only while the lease row names this relay. Taking the lease over
//! rewrites that name, so once another relay's takeover committed, no later statement of
//! this one reads a row or marks one, even if this one has not noticed. (Rows read just
//! before may still be sent; their mark is refused, and the new holder sends them again.)

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use sqlx::Row;
use tokio::sync::{Mutex, Notify};

use super::{
    encode, BoxFuture, EncodedEvent, Fenced, Lease, OutboxRelay, OutboxRow, OutboxStorage,
    RelaySettings,
};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::wire::PublishMetadata;

/// Rows per INSERT statement of [`SqliteOutbox::enqueue_all`]: 5 parameters each, well
/// under SQLite's limit of 32,766 parameters per statement.
const ROWS_PER_INSERT: usize = 200;

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
    /// [`crate::ProducerSettings::base_event_fields`] of the configuration.
    base_event_fields: bool,
    /// The keys of `#[event(encrypted)]` fields; `None` refuses to store such events.
    encryption: Option<crate::encryption::Encryption>,
    /// Woken by the commit of a transaction that enqueued through this outbox (or a clone);
    /// its relays wait on it. A permit is kept when no relay waits, so a commit that
    /// lands while the relay is busy is not missed.
    wake: Arc<Notify>,
}

impl SqliteOutbox {
    /// Opens (creating if needed) the database at `url` (e.g. `sqlite://service.db`) and
    /// creates or migrates the outbox table. `config` gives the `ce_source` of the events.
    pub async fn connect(url: &str, config: &KafkaConfig) -> Result<Self> {
        let pool = crate::idempotency::sqlite::open_pool(url)
            .await
            .map_err(|(operation, source)| failed(operation)(source))?;
        Self::with_pool(pool, config).await
    }

    /// Uses the service's own pool and brings the outbox table to the newest schema
    /// ([`crate::migrations::SQLITE_OUTBOX`]).
    pub async fn with_pool(pool: SqlitePool, config: &KafkaConfig) -> Result<Self> {
        crate::migrations::apply_sqlite(&pool, crate::migrations::SQLITE_OUTBOX)
            .await
            .map_err(|failure| {
                failure.into_error("sqlite", "outbox", failed("migrate its schema"))
            })?;
        Ok(SqliteOutbox {
            pool,
            source: config.source().into(),
            base_event_fields: config.producer.base_event_fields,
            encryption: None,
            wake: Arc::new(Notify::new()),
        })
    }

    /// This outbox, encrypting the `#[event(encrypted)]` fields of the events it stores
    /// with `encryption` ([`crate::encryption`]): the row holds the encrypted payload, and
    /// the relay publishes it unchanged. Without it, enqueueing such an event fails with
    /// [`Error::EncryptionNotConfigured`] and stores nothing.
    pub fn with_encryption(mut self, encryption: crate::encryption::Encryption) -> Self {
        self.encryption = Some(encryption);
        self
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

    /// Stores every event of `events` in the outbox inside `transaction`, in order, with
    /// one statement per 200 events. Every event is encoded before anything
    /// is written, so an event that cannot be serialized fails the call with
    /// [`Error::Serialize`] and stores none of them. Returns the event ids, in order.
    pub async fn enqueue_all<'e, E: Event + 'e>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<uuid::Uuid>> {
        let events = events.into_iter();
        let mut encoded = Vec::with_capacity(events.size_hint().0);
        for event in events {
            encoded.push(
                encode(
                    &self.source,
                    self.base_event_fields,
                    event,
                    None,
                    self.encryption.as_ref(),
                )
                .await?,
            );
        }
        store(transaction, &encoded, &self.wake).await?;
        Ok(encoded.iter().map(|e| e.event_id).collect())
    }

    async fn enqueue_inner<E: Event>(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        event: &E,
        metadata: Option<&PublishMetadata>,
    ) -> Result<uuid::Uuid> {
        let encoded = encode(
            &self.source,
            self.base_event_fields,
            event,
            metadata,
            self.encryption.as_ref(),
        )
        .await?;
        store(transaction, std::slice::from_ref(&encoded), &self.wake).await?;
        Ok(encoded.event_id)
    }

    /// A relay publishing this outbox through the cluster of `config`. Several may run
    /// against one database file: the one holding the lease publishes, the others stand by.
    ///
    /// The relay is woken as soon as a transaction that enqueued through this outbox (or a
    /// clone of it) commits, so those events are published without waiting for
    /// [`RelaySettings::poll_interval`]; events enqueued by another process, or through
    /// another `SqliteOutbox` value, are found by polling.
    pub fn relay(&self, config: &KafkaConfig, settings: RelaySettings) -> Result<OutboxRelay> {
        let storage = SqliteStorage {
            wake: Arc::clone(&self.wake),
            pool: self.pool.clone(),
            holder: uuid::Uuid::new_v4().to_string(),
            lease_ttl: settings.lease_ttl,
            renewed: Mutex::new(None),
        };
        OutboxRelay::new(Arc::new(storage), config, settings)
    }
}

/// Inserts `events` in order, one statement per [`ROWS_PER_INSERT`] of them, and arms the
/// connection's commit hook to wake the relays of this outbox when the transaction commits.
async fn store(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    events: &[EncodedEvent],
    wake: &Arc<Notify>,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO pegasus_outbox (event_id, topic, message_key, payload, headers) VALUES ",
        );
        for n in 0..chunk.len() {
            sql.push_str(if n == 0 {
                "(?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?)"
            });
        }
        let query = chunk.iter().fold(sqlx::query(&sql), |query, e| {
            query
                .bind(e.event_id.to_string())
                .bind(e.topic)
                .bind(e.key.as_bytes())
                .bind(e.payload.as_slice())
                .bind(e.headers.as_str())
        });
        query
            .execute(&mut **transaction)
            .await
            .map_err(failed("store events"))?;
    }
    // SQLite calls the hook when this transaction commits (and not if it rolls back), on
    // the connection's worker thread, just before the commit is written: the relay waits
    // for the rows to show (SqliteStorage::wait_for_rows) before reading them. The hook
    // stays on the connection after this transaction; it wakes once per arming, so later
    // commits of the connection that enqueued nothing wake no relay (but for one, after a
    // rollback of a transaction that had enqueued: a spurious wake, one empty read).
    // Setting it replaces the previous one, so an enqueue through another outbox value on
    // this connection wakes that value's relays instead.
    let wake = Arc::clone(wake);
    let mut armed = true;
    transaction
        .lock_handle()
        .await
        .map_err(failed("arm the relay's wake-up"))?
        .set_commit_hook(move || {
            if std::mem::take(&mut armed) {
                wake.notify_one();
            }
            // Let the commit go on.
            true
        });
    Ok(())
}

/// `ids` as a JSON array, for `json_each`.
fn json_list(ids: &[i64]) -> String {
    let mut list = String::with_capacity(ids.len() * 8 + 2);
    list.push('[');
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            list.push(',');
        }
        list.push_str(&id.to_string());
    }
    list.push(']');
    list
}

/// How long a relay woken by a commit waits for the commit's rows to become visible: the
/// commit hook runs just before the commit is written, which takes well under a
/// millisecond without a busy writer. Polled at 1, 2, 4, ... ms.
const WAKE_SETTLE: Duration = Duration::from_millis(50);

struct SqliteStorage {
    pool: SqlitePool,
    /// The outbox's wake-up: notified by the commit of an enqueue in this process.
    wake: Arc<Notify>,
    /// This relay's name in the lease row.
    holder: String,
    lease_ttl: Duration,
    /// When this relay last took or renewed the lease.
    renewed: Mutex<Option<std::time::Instant>>,
}

/// Milliseconds since the Unix epoch: the lease's clock, shared by every process on the
/// machine that holds the database file.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SqliteStorage {
    /// The highest row id the outbox ever held, published or not (0 for none): ids are
    /// never reused, so it grows exactly when a commit adds rows.
    async fn newest_row(&self) -> std::result::Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'pegasus_outbox'), 0)",
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Whether the lease row names this relay. Called when a fenced statement changed
    /// nothing, to tell "no rows" from "lease lost"; a loss is remembered, so the next
    /// [`OutboxStorage::hold_lease`] asks the database.
    async fn still_holds(&self, operation: &'static str) -> Result<bool> {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pegasus_outbox_relay_lease WHERE id = 1 AND holder = ?)",
        )
        .bind(&self.holder)
        .fetch_one(&self.pool)
        .await
        .map_err(failed(operation))?;
        if !held {
            *self.renewed.lock().await = None;
        }
        Ok(held)
    }
}

impl OutboxStorage for SqliteStorage {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn backlog(&self) -> BoxFuture<'_, Result<(i64, f64)>> {
        Box::pin(async move {
            // created_at is UTC text with milliseconds; julianday reads it. A reader in
            // WAL mode: it never waits for the enqueuing writers.
            let (rows, oldest): (i64, f64) = sqlx::query_as(
                "SELECT count(*),
                        coalesce((julianday('now') - julianday(min(created_at))) * 86400.0, 0.0)
                   FROM pegasus_outbox WHERE published_at IS NULL",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(failed("measure the backlog"))?;
            Ok((rows, oldest))
        })
    }

    fn hold_lease(&self) -> BoxFuture<'_, Result<Lease>> {
        Box::pin(async move {
            let mut renewed = self.renewed.lock().await;
            // Renewing is a write: do it only once a third of the lease has passed. Nothing
            // depends on this cache being right: every read and mark checks the holder.
            if renewed.is_some_and(|at| at.elapsed() < self.lease_ttl / 3) {
                return Ok(Lease::Kept);
            }
            let now = now_ms();
            let ttl = i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX);
            let expires_at = now.saturating_add(ttl);
            if renewed.is_some() {
                // The row still naming this relay means no other took it since, even if it
                // expired meanwhile: taking it over rewrites the holder.
                let renewal = sqlx::query(
                    "UPDATE pegasus_outbox_relay_lease SET expires_at_ms = ?1
                     WHERE id = 1 AND holder = ?2",
                )
                .bind(expires_at)
                .bind(&self.holder)
                .execute(&self.pool)
                .await
                .map_err(failed("renew the relay lease"))?;
                if renewal.rows_affected() == 1 {
                    *renewed = Some(std::time::Instant::now());
                    return Ok(Lease::Kept);
                }
                *renewed = None;
            }
            let taken = sqlx::query(
                "INSERT INTO pegasus_outbox_relay_lease (id, holder, expires_at_ms)
                 VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE
                 SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
                 WHERE pegasus_outbox_relay_lease.holder = excluded.holder
                    OR pegasus_outbox_relay_lease.expires_at_ms < ?3",
            )
            .bind(&self.holder)
            .bind(expires_at)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(failed("take the relay lease"))?
            .rows_affected()
                == 1;
            if taken {
                tracing::info!("outbox relay is active");
                *renewed = Some(std::time::Instant::now());
                Ok(Lease::Taken)
            } else {
                *renewed = None;
                Ok(Lease::Elsewhere)
            }
        })
    }

    fn release_lease(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.renewed.lock().await.take().is_none() {
                return;
            }
            let released = sqlx::query("DELETE FROM pegasus_outbox_relay_lease WHERE holder = ?")
                .bind(&self.holder)
                .execute(&self.pool)
                .await;
            match released {
                Ok(_) => tracing::info!("outbox relay gave up its lease"),
                // It expires on its own.
                Err(error) => tracing::warn!(%error, "giving up the outbox relay lease failed"),
            }
        })
    }

    fn unpublished<'a>(
        &'a self,
        limit: i64,
        in_flight: Option<(i64, i64)>,
        skip: &'a [i64],
    ) -> BoxFuture<'a, Result<Fenced<Vec<OutboxRow>>>> {
        Box::pin(async move {
            const OPERATION: &str = "read unpublished events";
            // An empty range (first > last) when nothing is in flight.
            let (first, last) = in_flight.unwrap_or((0, -1));
            let rows = sqlx::query(
                "SELECT id, topic, message_key, payload, headers FROM pegasus_outbox
                 WHERE published_at IS NULL AND (id < ? OR id > ?)
                   AND id NOT IN (SELECT value FROM json_each(?))
                   AND EXISTS (SELECT 1 FROM pegasus_outbox_relay_lease
                               WHERE id = 1 AND holder = ?)
                 ORDER BY id LIMIT ?",
            )
            .bind(first)
            .bind(last)
            .bind(json_list(skip))
            .bind(&self.holder)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(failed(OPERATION))?;
            if rows.is_empty() && !self.still_holds(OPERATION).await? {
                return Ok(Fenced::Lost);
            }
            rows.into_iter()
                .map(|row| {
                    Ok(OutboxRow {
                        id: row.try_get("id")?,
                        topic: row.try_get("topic")?,
                        key: row.try_get("message_key")?,
                        payload: row.try_get("payload")?,
                        headers: row.try_get("headers")?,
                    })
                })
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map(Fenced::Held)
                .map_err(failed(OPERATION))
        })
    }

    fn mark_published<'a>(
        &'a self,
        ids: &'a [i64],
        delete: bool,
    ) -> BoxFuture<'a, Result<Fenced<()>>> {
        Box::pin(async move {
            const OPERATION: &str = "mark events published";
            if ids.is_empty() {
                return Ok(Fenced::Held(()));
            }
            // One statement for the whole batch: the ids go in as one JSON array. It marks
            // nothing unless this relay holds the lease at that moment.
            let statement = if delete {
                "DELETE FROM pegasus_outbox WHERE id IN (SELECT value FROM json_each(?1))
                   AND EXISTS (SELECT 1 FROM pegasus_outbox_relay_lease
                               WHERE id = 1 AND holder = ?2)"
            } else {
                "UPDATE pegasus_outbox
                 SET published_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id IN (SELECT value FROM json_each(?1))
                   AND EXISTS (SELECT 1 FROM pegasus_outbox_relay_lease
                               WHERE id = 1 AND holder = ?2)"
            };
            let marked = sqlx::query(statement)
                .bind(json_list(ids))
                .bind(&self.holder)
                .execute(&self.pool)
                .await
                .map_err(failed(OPERATION))?;
            // None marked: the lease is gone, or (rarely) the rows are, e.g. deleted by hand.
            if marked.rows_affected() == 0 && !self.still_holds(OPERATION).await? {
                return Ok(Fenced::Lost);
            }
            Ok(Fenced::Held(()))
        })
    }

    fn purge_published(&self, age: Duration) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let Some(cutoff) = crate::limits::utc_ago(age) else {
                return Ok(0);
            };
            let done = sqlx::query("DELETE FROM pegasus_outbox WHERE published_at < ?")
                .bind(cutoff.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .execute(&self.pool)
                .await
                .map_err(failed("purge published events"))?;
            Ok(done.rows_affected())
        })
    }

    fn wait_for_rows(&self, at_most: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let before = self.newest_row().await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(at_most) => return,
            }
            // The commit hook runs just before the commit is written, so its rows may not
            // be visible yet. Wait until they are: ids only grow (AUTOINCREMENT), so a
            // newest id above the one seen before the wait means a commit landed. This
            // only reads: waiting for the write lock instead would stall the relay behind
            // any long write transaction, which WAL readers otherwise never wait for. If
            // they do not show within WAKE_SETTLE (the commit failed, or enqueued through
            // another value on this connection), the round reads anyway.
            let Ok(before) = before else { return };
            let mut pause = Duration::from_millis(1);
            let mut waited = Duration::ZERO;
            loop {
                match self.newest_row().await {
                    Ok(now) if now > before => return,
                    Ok(_) if waited < WAKE_SETTLE => {}
                    _ => return,
                }
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = pause.saturating_mul(2);
            }
        })
    }
}

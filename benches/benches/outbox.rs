//! The outbox relay against publishing directly, on the same broker, in the same run.
//!
//! Throughput: `EventProducer::publish_all` of N events, against the same N events
//! committed to the outbox (transactions of 100, with `enqueue_all` or an `enqueue` per
//! event) while the relay runs, timed from the first commit until the relay marked the
//! last one published (so after the broker's acknowledgement), on PostgreSQL and on
//! SQLite; with the default retention (rows marked) and with a retention of zero (rows
//! deleted). The commits alone, without a relay, give the ceiling the database sets on
//! the machine. Ratios are against the direct rate of the same round. "Drain alone" starts
//! the relay only after every event is committed and times it alone (retention zero): what
//! the relay publishes per second with no committer competing with it, which tells a
//! relay bound by its own pipeline from one held up by the database's writers.
//!
//! Logical decoding (the Debezium approach, the alternative to polling on PostgreSQL): what
//! the PostgreSQL server spends per event to hand committed outbox rows to a reader through
//! a replication slot (`pgoutput`, read with `pg_logical_slot_get_binary_changes`), and to
//! delete them afterwards in one statement, next to what the polling relay's reads and
//! deletes cost it in "drain alone". Needs `wal_level = logical` (`scripts/postgres` sets
//! it); on a server without it the bench says so and skips this figure. The slot is a
//! temporary one, dropped by the server when the bench's session ends, so an interrupted
//! run leaves nothing that holds back the write-ahead log.
//!
//! Knobs for experiments: `PEGASUS_BENCH_ONLY` (variants whose label contains one of its
//! `|`-separated texts), `PEGASUS_BENCH_ROUNDS` (throughput rounds), `PEGASUS_BENCH_BATCH`
//! (the relay's batch size).
//!
//! Latency: one event committed every 5 ms, 1,000 of them, on PostgreSQL (the relay woken by
//! LISTEN/NOTIFY) and on SQLite (woken by the enqueue's commit in this process), with a
//! poll interval of 100 ms (a relay that only polled would show about 50 ms). Each event's
//! latency runs from the moment its transaction's `commit()` returned to the moment the
//! relay received the broker's acknowledgement of its record (its delivery report, logged
//! at trace level as "outbox row acknowledged"), both on this process's monotonic clock.
//! The delivery report, rather than a consumer, because it is the acknowledgement itself:
//! a consumer sees the record only after the broker made it readable and answered a fetch,
//! which adds the consumer's own fetch cycle. Median and p99 are reported.
//!
//! Run with `scripts/bench` (starts a broker and PostgreSQL), or `cargo bench -p
//! pegasus-events-benches --bench outbox` with `PEGASUS_BENCH_BOOTSTRAP` and
//! `PEGASUS_BENCH_POSTGRES_URL` (or the `PEGASUS_TEST_` ones) set. Without `--bench` (as
//! `cargo test --all-targets` runs it) it does a short smoke run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pegasus_events::outbox::{OutboxRelay, PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events::{Event, EventProducer, KafkaConfig, TopicAdmin, TopicSpec};
use pegasus_events_benches::{bootstrap, env_var, machine_cpu_time, median, spread, MachineCpu};
use serde::{Deserialize, Serialize};

/// The event relayed; shaped like the design's ShipmentCreatedEvent.
#[derive(Clone, Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "bench.outbox.shipment", name = "ShipmentCreatedEvent")]
struct Shipment {
    #[event(key)]
    shipment_id: uuid::Uuid,
    tracking_number: String,
    status: String,
    created_by_user_id: String,
}

fn shipment(i: u64) -> Shipment {
    Shipment {
        shipment_id: uuid::Uuid::from_u64_pair(11, i % 1_000),
        tracking_number: format!("TRACK{i:07}"),
        status: "Created".to_owned(),
        created_by_user_id: "auth0|123".to_owned(),
    }
}

/// The relay's settings: a poll interval of 100 ms, and the default batch size unless
/// `PEGASUS_BENCH_BATCH=<rows>` sets another (to compare batch sizes).
fn settings() -> RelaySettings {
    let defaults = RelaySettings::default();
    RelaySettings {
        poll_interval: Duration::from_millis(100),
        batch_size: std::env::var("PEGASUS_BENCH_BATCH")
            .ok()
            .and_then(|rows| rows.parse().ok())
            .filter(|rows| *rows > 0)
            .unwrap_or(defaults.batch_size),
        ..defaults
    }
}

/// A fresh database on the server of `url`, so rows of earlier runs do not count.
async fn fresh_database(url: &str) -> String {
    use sqlx::Connection;
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(url).await.expect("postgres");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    format!("{base}/{name}")
}

/// Runs `relay` in the background; the returned sender stops it.
fn spawn_relay(
    relay: OutboxRelay,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        relay
            .run_until(async move {
                let _ = stopped.await;
            })
            .await
            .expect("relay ran");
    });
    (stop, handle)
}

async fn direct(config: &KafkaConfig, count: u64) -> Measured {
    let producer = EventProducer::new(config).await.expect("producer");
    // Connected and holding the topic's metadata before the clock starts, as the relay's
    // producer is once it runs.
    producer.publish(&shipment(0)).await.expect("warm-up");
    let events: Vec<Shipment> = (0..count).map(shipment).collect();
    let started = Instant::now();
    let cpu = machine_cpu_time();
    for result in producer.publish_all(&events).await {
        result.expect("published");
    }
    Measured::since(started, cpu, count)
}

/// One timed round: its rate and what the whole machine spent meanwhile.
#[derive(Clone, Copy)]
struct Measured {
    /// Events per second.
    rate: f64,
    /// Busy share of the machine's CPU (all cores, all processes).
    busy: f64,
    /// The machine's busy CPU time per event, in microseconds.
    cpu_per_event: f64,
    /// Of it, microseconds per event of this process, the PostgreSQL server, the broker,
    /// and the rest ([`MachineCpu::split_since`]).
    split: [f64; 4],
}

impl Measured {
    fn since(started: Instant, cpu: Option<MachineCpu>, count: u64) -> Self {
        let rate = count as f64 / started.elapsed().as_secs_f64();
        let ((busy, seconds), split) = match (cpu, machine_cpu_time()) {
            (Some(before), Some(now)) => (now.since(before), now.split_since(before)),
            _ => ((f64::NAN, f64::NAN), [f64::NAN; 4]),
        };
        let per_event = |seconds: f64| seconds * 1e6 / count as f64;
        Measured {
            rate,
            busy,
            cpu_per_event: per_event(seconds),
            split: split.map(per_event),
        }
    }
}

/// The outbox under test, on one of the two databases.
enum Outbox {
    Postgres(PostgresOutbox),
    Sqlite(SqliteOutbox, std::path::PathBuf),
}

impl Outbox {
    async fn postgres(config: &KafkaConfig, url: &str) -> Self {
        let outbox = PostgresOutbox::connect(&fresh_database(url).await, config)
            .await
            .expect("outbox");
        Outbox::Postgres(outbox)
    }

    async fn sqlite(config: &KafkaConfig) -> Self {
        let path = std::env::temp_dir().join(format!("pegasus-bench-{}.db", uuid::Uuid::new_v4()));
        let outbox = SqliteOutbox::connect(&format!("sqlite://{}", path.display()), config)
            .await
            .expect("outbox");
        Outbox::Sqlite(outbox, path)
    }

    fn relay(&self, config: &KafkaConfig, settings: RelaySettings) -> OutboxRelay {
        match self {
            Outbox::Postgres(outbox) => outbox.relay(config, settings),
            Outbox::Sqlite(outbox, _) => outbox.relay(config, settings),
        }
        .expect("relay")
    }

    /// Commits `events` in one transaction, with one `enqueue_all` or an `enqueue` each.
    async fn commit(&self, events: &[Shipment], all_at_once: bool) {
        match self {
            Outbox::Postgres(outbox) => {
                let mut tx = outbox.pool().begin().await.expect("begin");
                if all_at_once {
                    outbox.enqueue_all(&mut tx, events).await.expect("enqueue");
                } else {
                    for event in events {
                        outbox.enqueue(&mut tx, event).await.expect("enqueue");
                    }
                }
                tx.commit().await.expect("commit");
            }
            Outbox::Sqlite(outbox, _) => {
                let mut tx = outbox.pool().begin().await.expect("begin");
                if all_at_once {
                    outbox.enqueue_all(&mut tx, events).await.expect("enqueue");
                } else {
                    for event in events {
                        outbox.enqueue(&mut tx, event).await.expect("enqueue");
                    }
                }
                tx.commit().await.expect("commit");
            }
        }
    }

    /// Commits one event in its own transaction with `enqueue`; returns its event id once
    /// `commit()` returned.
    async fn commit_one(&self, event: &Shipment) -> uuid::Uuid {
        match self {
            Outbox::Postgres(outbox) => {
                let mut tx = outbox.pool().begin().await.expect("begin");
                let id = outbox.enqueue(&mut tx, event).await.expect("enqueue");
                tx.commit().await.expect("commit");
                id
            }
            Outbox::Sqlite(outbox, _) => {
                let mut tx = outbox.pool().begin().await.expect("begin");
                let id = outbox.enqueue(&mut tx, event).await.expect("enqueue");
                tx.commit().await.expect("commit");
                id
            }
        }
    }

    /// Whether any event is still unpublished; cheap (the first entry of the partial
    /// index), so polling it does not take much CPU from the relay being measured.
    async fn any_unpublished(&self) -> bool {
        const LEFT: &str =
            "SELECT EXISTS (SELECT 1 FROM pegasus_outbox WHERE published_at IS NULL)";
        match self {
            Outbox::Postgres(outbox) => sqlx::query_scalar(LEFT).fetch_one(outbox.pool()).await,
            Outbox::Sqlite(outbox, _) => sqlx::query_scalar(LEFT).fetch_one(outbox.pool()).await,
        }
        .expect("count")
    }

    async fn remove(self) {
        match self {
            Outbox::Postgres(_) => {}
            Outbox::Sqlite(outbox, path) => {
                outbox.pool().close().await;
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
        }
    }
}

/// One way of going through the outbox.
struct Variant {
    label: &'static str,
    on_postgres: bool,
    /// `enqueue_all` per transaction, or an `enqueue` per event.
    all_at_once: bool,
    /// With the relay running; without it, only the commits are timed: the ceiling the
    /// database sets on this machine, whatever the relay does.
    relay: bool,
    /// A retention of zero: rows are deleted once acknowledged instead of marked.
    delete: bool,
    /// The relay starts only once every event is committed, and is timed alone: what it
    /// drains per second with no committer competing for the database.
    drain: bool,
}

/// Events per second from the first commit (transactions of 100 events) until the relay
/// marked the last event published, i.e. after the broker acknowledged it; without a
/// relay, until the last commit.
async fn through(config: &KafkaConfig, variant: &Variant, url: &str, count: u64) -> Measured {
    let outbox = if variant.on_postgres {
        Outbox::postgres(config, url).await
    } else {
        Outbox::sqlite(config).await
    };
    let settings = RelaySettings {
        retention: if variant.delete {
            Duration::ZERO
        } else {
            RelaySettings::default().retention
        },
        ..settings()
    };
    let mut relay = (variant.relay && !variant.drain)
        .then(|| spawn_relay(outbox.relay(config, settings.clone())));
    let events: Vec<Shipment> = (0..count).map(shipment).collect();
    let mut started = Instant::now();
    let mut cpu = machine_cpu_time();
    for transaction in events.chunks(100) {
        outbox.commit(transaction, variant.all_at_once).await;
    }
    if variant.drain {
        started = Instant::now();
        cpu = machine_cpu_time();
        relay = Some(spawn_relay(outbox.relay(config, settings)));
    }
    if let Some((stop, relay)) = relay {
        while outbox.any_unpublished().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let measured = Measured::since(started, cpu, count);
        let _ = stop.send(());
        relay.await.expect("relay stopped");
        outbox.remove().await;
        return measured;
    }
    let measured = Measured::since(started, cpu, count);
    outbox.remove().await;
    measured
}

/// The PostgreSQL server's CPU per event, in microseconds, to decode `count` committed
/// outbox inserts from a replication slot, and to delete those rows afterwards with one
/// statement (what a relay fed by logical decoding would still do to keep the table small);
/// `None` when the server's `wal_level` is not `logical`.
async fn logical_decoding(config: &KafkaConfig, url: &str, count: u64) -> Option<(f64, f64)> {
    use sqlx::Connection;
    let outbox = Outbox::postgres(config, url).await;
    let Outbox::Postgres(postgres) = &outbox else {
        unreachable!("Outbox::postgres")
    };
    let database = postgres.pool().connect_options();
    let mut reader = sqlx::PgConnection::connect_with(&database)
        .await
        .expect("reader");
    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&mut reader)
        .await
        .expect("wal_level");
    if wal_level != "logical" {
        println!("  logical decoding: skipped, the server's wal_level is {wal_level}, not logical");
        return None;
    }
    sqlx::query(
        "CREATE PUBLICATION pegasus_bench FOR TABLE pegasus_outbox WITH (publish = 'insert')",
    )
    .execute(&mut reader)
    .await
    .expect("publication");
    // Temporary: the server drops it when this session ends, whatever happens to the bench.
    // Slots are the cluster's, not the database's: a unique name for each.
    let slot = format!("pegasus_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)")
        .bind(&slot)
        .execute(&mut reader)
        .await
        .expect("slot");
    let events: Vec<Shipment> = (0..count).map(shipment).collect();
    for transaction in events.chunks(100) {
        outbox.commit(transaction, true).await;
    }
    // Decoding reads only what is flushed, and the test servers commit without waiting for
    // the flush (synchronous_commit off): wait for the WAL writer before the clock starts.
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut reader)
        .await
        .expect("insert position");
    let flushed_by = Instant::now() + Duration::from_secs(10);
    while !sqlx::query_scalar::<_, bool>("SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn")
        .bind(&written)
        .fetch_one(&mut reader)
        .await
        .expect("flush position")
    {
        assert!(
            Instant::now() < flushed_by,
            "the WAL was not flushed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let cpu = machine_cpu_time();
    let (mut inserts, mut bytes) = (0, 0);
    while inserts < count {
        let changes: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, 2000,
                 'proto_version', '1', 'publication_names', 'pegasus_bench', 'binary', 'true')",
        )
        .bind(&slot)
        .fetch_all(&mut reader)
        .await
        .expect("changes");
        assert!(
            !changes.is_empty(),
            "the slot ended after {inserts} of {count} inserts"
        );
        for change in changes.iter().filter(|c| c.first() == Some(&b'I')) {
            // What a relay would take from each insert: its eight columns' values.
            let columns = inserted_columns(change).expect("a pgoutput insert");
            assert_eq!(columns.len(), 8, "pegasus_outbox has eight columns");
            bytes += columns.iter().map(|c| c.len()).sum::<usize>();
            inserts += 1;
        }
    }
    assert!(bytes > 0);
    let decoded = Measured::since(started, cpu, count);
    let cpu = machine_cpu_time();
    let deleted = sqlx::query("DELETE FROM pegasus_outbox")
        .execute(&mut reader)
        .await
        .expect("delete")
        .rows_affected();
    assert_eq!(deleted, count);
    let cleaned = Measured::since(Instant::now(), cpu, count);
    reader.close().await.expect("close");
    outbox.remove().await;
    Some((decoded.split[1], cleaned.split[1]))
}

/// The column values of a `pgoutput` Insert message (protocol version 1): `I`, the
/// relation's oid, `N`, the column count, then per column a kind byte (`n` null, `t` text,
/// `b` binary; these two followed by a length and the bytes). `None` if it is malformed.
fn inserted_columns(message: &[u8]) -> Option<Vec<&[u8]>> {
    let rest = message.strip_prefix(b"I")?.get(4..)?.strip_prefix(b"N")?;
    let (count, mut rest) = rest.split_at_checked(2)?;
    let count = u16::from_be_bytes([count[0], count[1]]);
    let mut columns = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (kind, tail) = rest.split_first()?;
        rest = tail;
        match kind {
            b'n' | b'u' => columns.push(&[][..]),
            b't' | b'b' => {
                let (length, tail) = rest.split_at_checked(4)?;
                let length = u32::from_be_bytes(length.try_into().ok()?) as usize;
                let (value, tail) = tail.split_at_checked(length)?;
                columns.push(value);
                rest = tail;
            }
            _ => return None,
        }
    }
    Some(columns)
}

/// When the relay received the broker's acknowledgement of each event, by event id: fed by
/// a tracing layer that listens to the relay's "outbox row acknowledged" trace events, only
/// while [`Acknowledgements::listening`] is set (so the throughput rounds do not pay for it).
#[derive(Clone, Default)]
struct Acknowledgements {
    listening: Arc<AtomicBool>,
    at: Arc<Mutex<HashMap<uuid::Uuid, Instant>>>,
}

impl Acknowledgements {
    /// Installs the layer as the global subscriber.
    fn install(&self) {
        use tracing_subscriber::layer::SubscriberExt;
        let listening = Arc::clone(&self.listening);
        let filter = tracing_subscriber::filter::filter_fn(move |metadata| {
            listening.load(Ordering::Relaxed)
                && metadata.target().starts_with("pegasus_events::outbox")
                && *metadata.level() == tracing::Level::TRACE
        });
        let layer = AckLayer {
            at: Arc::clone(&self.at),
        };
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(layer, filter));
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
    }
}

struct AckLayer {
    at: Arc<Mutex<HashMap<uuid::Uuid, Instant>>>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AckLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        // Taken first: the moment the relay logged the acknowledgement.
        let now = Instant::now();
        struct EventId(Option<uuid::Uuid>);
        impl tracing::field::Visit for EventId {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "event_id" {
                    self.0 = value.parse().ok();
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut id = EventId(None);
        event.record(&mut id);
        if let Some(id) = id.0 {
            self.at
                .lock()
                .expect("not poisoned")
                .entry(id)
                .or_insert(now);
        }
    }
}

/// The p-th quantile of `values` (nearest rank).
fn quantile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Median and p99 of commit-to-acknowledgement latency in ms, at one event per 5 ms: from
/// the moment `commit()` returned to the moment the relay had the broker's acknowledgement.
async fn latency(
    config: &KafkaConfig,
    outbox: Outbox,
    acks: &Acknowledgements,
    count: u64,
) -> (f64, f64) {
    acks.at.lock().expect("not poisoned").clear();
    acks.listening.store(true, Ordering::Relaxed);
    let (stop, relay) = spawn_relay(outbox.relay(config, settings()));
    // Let the relay take its lease and start listening before the clock matters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut committed = HashMap::with_capacity(count as usize);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..count {
        tick.tick().await;
        let id = outbox.commit_one(&shipment(i)).await;
        committed.insert(id, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.at.lock().expect("not poisoned").len() < committed.len() {
        assert!(
            Instant::now() < deadline,
            "every event acknowledged within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acks.listening.store(false, Ordering::Relaxed);
    let _ = stop.send(());
    relay.await.expect("relay stopped");
    outbox.remove().await;
    let at = acks.at.lock().expect("not poisoned");
    let millis: Vec<f64> = committed
        .iter()
        .map(|(id, committed)| {
            let acked = at[id];
            // Signed: an acknowledgement logged before commit() returned to this task
            // (the commit hook wakes the relay as the commit is written) counts as negative.
            if acked >= *committed {
                acked.duration_since(*committed).as_secs_f64() * 1000.0
            } else {
                -(committed.duration_since(acked).as_secs_f64() * 1000.0)
            }
        })
        .collect();
    (quantile(millis.clone(), 0.5), quantile(millis, 0.99))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (count, mut rounds, latency_count, latency_rounds) = if full {
        (20_000, 5, 1_000, 3)
    } else {
        (500, 1, 50, 1)
    };
    // PEGASUS_BENCH_ROUNDS=<n>: more (or fewer) throughput rounds than the default.
    if let Some(n) = std::env::var("PEGASUS_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        rounds = n;
    }
    let bootstrap = bootstrap("outbox");
    let postgres = env_var(
        "outbox",
        &["PEGASUS_BENCH_POSTGRES_URL", "PEGASUS_TEST_POSTGRES_URL"],
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = KafkaConfig::new(&bootstrap).with_client_id("bench-outbox");
        TopicAdmin::new(&config).await
            .expect("admin")
            .ensure_topics(&[TopicSpec::for_event::<Shipment>().partitions(3)])
            .await
            .expect("topic");
        let variant = |label, on_postgres, all_at_once, relay, delete| Variant {
            label,
            on_postgres,
            all_at_once,
            relay,
            delete,
            drain: false,
        };
        let drain = |label, on_postgres| Variant {
            drain: true,
            ..variant(label, on_postgres, true, true, true)
        };
        let variants = [
            variant("PostgreSQL, enqueue_all", true, true, true, false),
            variant("PostgreSQL, enqueue each", true, false, true, false),
            variant("PostgreSQL, enqueue_all, retention 0", true, true, true, true),
            variant("SQLite, enqueue_all", false, true, true, false),
            variant("SQLite, enqueue each", false, false, true, false),
            variant("SQLite, enqueue_all, retention 0", false, true, true, true),
            variant("PostgreSQL, commits only (no relay)", true, true, false, false),
            variant("SQLite, commits only (no relay)", false, true, false, false),
            drain("PostgreSQL, drain alone, retention 0", true),
            drain("SQLite, drain alone, retention 0", false),
        ];
        // PEGASUS_BENCH_ONLY=<text>[|<text>...]: only the variants whose label contains one
        // of the texts (and the latency runs only if one is "latency"), for profiling one
        // of them next to its ceiling, e.g. "SQLite, enqueue_all, retention 0|SQLite, commits".
        let only: Option<Vec<String>> = std::env::var("PEGASUS_BENCH_ONLY")
            .ok()
            .map(|only| only.split('|').map(str::to_owned).collect());
        let chosen = |label: &str| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|text| label.contains(text.as_str())))
        };
        let variants: Vec<Variant> = variants.into_iter().filter(|v| chosen(v.label)).collect();
        let latency_rounds = if chosen("latency") { latency_rounds } else { 0 };
        let mut rates = vec![Vec::new(); variants.len()];
        let mut ratios = vec![Vec::new(); variants.len()];
        let mut machine = vec![Vec::new(); variants.len()];
        let mut direct_rates = Vec::new();
        let mut direct_machine = Vec::new();
        let mut decoding = Vec::new();
        for _ in 0..rounds {
            let d = direct(&config, count).await;
            direct_rates.push(d.rate);
            direct_machine.push(d);
            for (n, variant) in variants.iter().enumerate() {
                let measured = through(&config, variant, &postgres, count).await;
                rates[n].push(measured.rate);
                ratios[n].push(measured.rate / d.rate);
                machine[n].push(measured);
            }
            if chosen("logical decoding") {
                decoding.extend(logical_decoding(&config, &postgres, count).await);
            }
        }
        let acks = Acknowledgements::default();
        acks.install();
        let mut postgres_latency = Vec::new();
        let mut sqlite_latency = Vec::new();
        for _ in 0..latency_rounds {
            let outbox = Outbox::postgres(&config, &postgres).await;
            postgres_latency.push(latency(&config, outbox, &acks, latency_count).await);
            let outbox = Outbox::sqlite(&config).await;
            sqlite_latency.push(latency(&config, outbox, &acks, latency_count).await);
        }
        println!(
            "outbox bench ({} mode): {count} events x {rounds} rounds, transactions of 100 events, broker {bootstrap}",
            if full { "full" } else { "smoke" }
        );
        println!(
            "  direct publish_all                                      : {:>9.0} events/s (median)",
            median(direct_rates)
        );
        for ((variant, rates), ratios) in variants.iter().zip(&rates).zip(&ratios) {
            println!(
                "  through the outbox, {:<36}: {:>9.0} events/s (median), ratio {:.3} ({})",
                variant.label,
                median(rates.clone()),
                median(ratios.clone()),
                spread(ratios.clone())
            );
        }
        // What the whole machine (this process, the broker, the database server) spent:
        // a rate with the machine near saturated is bound by CPU per event, not by waiting.
        println!("  machine CPU (all cores, all processes), median of rounds:");
        let rows = std::iter::once(("direct publish_all", &direct_machine))
            .chain(variants.iter().map(|v| v.label).zip(&machine));
        let split_of = |measured: &[Measured]| -> [f64; 4] {
            std::array::from_fn(|n| median(measured.iter().map(|m| m.split[n]).collect()))
        };
        for (label, measured) in rows {
            let [this, database, broker, rest] = split_of(measured);
            println!(
                "    {label:<52}: busy {:>5.1} %, {:>6.1} us of CPU per event (this process {this:.1}, PostgreSQL {database:.1}, broker {broker:.1}, rest {rest:.1})",
                100.0 * median(measured.iter().map(|m| m.busy).collect()),
                median(measured.iter().map(|m| m.cpu_per_event).collect())
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        // Each relay variant against the commits alone of its database in the same round.
        for (n, variant) in variants.iter().enumerate().filter(|(_, v)| v.relay && !v.drain) {
            let Some(ceiling) = variants
                .iter()
                .position(|v| !v.relay && v.on_postgres == variant.on_postgres)
            else {
                continue;
            };
            let of_ceiling: Vec<f64> = rates[n]
                .iter()
                .zip(&rates[ceiling])
                .map(|(relay, alone)| relay / alone)
                .collect();
            println!(
                "  relay / commits alone, {:<33}: {:.3} ({})",
                variant.label,
                median(of_ceiling.clone()),
                spread(of_ceiling)
            );
            // What the relay itself adds per event, by process: the relay variant's CPU
            // less the commits alone's, next to what publishing directly costs. On a busy
            // machine this, not waiting, is what the relay's rate is bound by: the rate
            // could be at most cores / (its CPU per event), reported as a ratio too.
            let with_relay = split_of(&machine[n]);
            let alone = split_of(&machine[ceiling]);
            let [this, database, broker, rest] =
                std::array::from_fn::<f64, 4, _>(|k| with_relay[k] - alone[k]);
            let cpu_bound =
                cores * 1e6 / median(machine[n].iter().map(|m| m.cpu_per_event).collect());
            println!(
                "    the relay's own CPU per event: this process {this:+.1}, PostgreSQL {database:+.1}, broker {broker:+.1}, rest {rest:+.1} us; \
                 relay / commits alone if CPU were all that limited it: {:.3}",
                cpu_bound / median(rates[ceiling].clone())
            );
        }
        // The best a relay could do here: committing and publishing share the machine's
        // cores, so even a relay that cost nothing beyond publishing (no reading, no
        // marking) and kept every core busy could not exceed cores / (CPU per committed
        // event + CPU per published event), both measured in this run.
        let publish_cpu = median(direct_machine.iter().map(|m| m.cpu_per_event).collect());
        for (n, variant) in variants.iter().enumerate().filter(|(_, v)| !v.relay) {
            let commit_cpu = median(machine[n].iter().map(|m| m.cpu_per_event).collect());
            let best = cores * 1e6 / (commit_cpu + publish_cpu);
            println!(
                "  relay / commits alone at best on {cores} cores, {:<24}: {:.3} (commit {commit_cpu:.1} + publish {publish_cpu:.1} us of CPU per event)",
                variant.label.split(',').next().unwrap_or(variant.label),
                best / median(rates[n].clone()),
            );
        }
        if !decoding.is_empty() {
            let polling = variants
                .iter()
                .position(|v| v.drain && v.on_postgres)
                .map_or("not measured in this run".to_owned(), |n| {
                    format!("{:.1} us", median(machine[n].iter().map(|m| m.split[1]).collect()))
                });
            println!(
                "  PostgreSQL server CPU per event handing committed rows to a relay: logical decoding (pgoutput, replication slot) {:.1} us, then {:.1} us to delete the rows in one statement; the polling relay's reads and deletes (drain alone, retention 0): {polling}",
                median(decoding.iter().map(|d| d.0).collect()),
                median(decoding.iter().map(|d| d.1).collect()),
            );
        }
        for (name, runs) in [
            ("PostgreSQL, LISTEN/NOTIFY", postgres_latency),
            ("SQLite, woken in-process", sqlite_latency),
        ] {
            if runs.is_empty() {
                continue;
            }
            let each: Vec<String> = runs
                .iter()
                .map(|(p50, p99)| format!("{p50:.2}/{p99:.2}"))
                .collect();
            println!(
                "  commit-to-acknowledgement latency, {name}, 1 event / 5 ms: median {:.2} ms, p99 {:.2} ms (median of {} runs of {latency_count} events; each run's median/p99: {})",
                median(runs.iter().map(|r| r.0).collect()),
                median(runs.iter().map(|r| r.1).collect()),
                runs.len(),
                each.join(", ")
            );
        }
    });
}

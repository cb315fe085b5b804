//! Fault tests of the outbox relay, on PostgreSQL and on SQLite: killed between the
//! broker's acknowledgement and the mark, and the broker stopped under load. Each bounds
//! its runtime and stops what it started.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pegasus_events::outbox::{OutboxRelay, PostgresOutbox, RelaySettings, SqliteOutbox};
use pegasus_events::{Event, KafkaConfig, TopicAdmin, TopicSpec};
use pegasus_events_tests::{
    bootstrap, config, fresh_postgres_database, header, headers_of, kafka_script,
    read_until_settled, unique, FaultScenario, OwnBroker, BOOTSTRAP_ENV,
};
use rdkafka::message::{Message, OwnedMessage};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Connection, SqliteConnection};

const DEADLINE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.outbox.relayed")]
struct Relayed {
    run: String,
    #[event(key)]
    account: u32,
    n: u32,
}

/// Kills the child with SIGKILL when dropped, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_process(database: Database, url: &str) -> Reaped {
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_outbox_relay"))
            .args([database.name(), url, &unique("tests-dlq")])
            .env(BOOTSTRAP_ENV, bootstrap())
            .spawn()
            .expect("the relay process starts"),
    )
}

/// Every record of `run` on `bootstrap_servers`, read from the beginning, once `want` of
/// them are distinct events (by `ce_id`) and `settle` passed without another, so late
/// duplicates are among them; off the runtime's threads.
async fn records_of(
    bootstrap_servers: String,
    run: &str,
    want: usize,
    settle: Duration,
) -> Vec<OwnedMessage> {
    let run = run.to_owned();
    tokio::task::spawn_blocking(move || {
        let ours = |payload: &[u8]| {
            serde_json::from_slice::<Relayed>(payload).is_ok_and(|event| event.run == run)
        };
        read_until_settled(
            &bootstrap_servers,
            Relayed::TOPIC,
            ours,
            want,
            settle,
            DEADLINE,
        )
    })
    .await
    .unwrap()
}

/// Checks that every event arrived, and that copies of an event are the same record.
/// Returns (distinct events, duplicate records).
fn distinct_and_duplicates(records: &[OwnedMessage]) -> (usize, usize) {
    let mut by_id: HashMap<String, &OwnedMessage> = HashMap::new();
    let mut duplicates = 0;
    for record in records {
        let id = header(&headers_of(record), "ce_id").unwrap().to_owned();
        match by_id.get(&id) {
            Some(first) => {
                duplicates += 1;
                assert_eq!(
                    first.payload(),
                    record.payload(),
                    "a duplicate is the same event"
                );
                assert_eq!(first.key(), record.key());
                assert_eq!(headers_of(first), headers_of(record));
            }
            None => {
                by_id.insert(id, record);
            }
        }
    }
    (by_id.len(), duplicates)
}

/// Checks that each key's events arrived in the order they were committed: the first copy
/// of each event, in the order the topic holds them, has increasing `n` per account.
fn assert_each_keys_order(records: &[OwnedMessage]) {
    let mut seen = std::collections::HashSet::new();
    let mut last_of: HashMap<u32, u32> = HashMap::new();
    for record in records {
        if !seen.insert(header(&headers_of(record), "ce_id").unwrap().to_owned()) {
            continue; // a later copy of an event already in place
        }
        let event: Relayed = serde_json::from_slice(record.payload().unwrap()).unwrap();
        if let Some(last) = last_of.insert(event.account, event.n) {
            assert!(
                last < event.n,
                "account {}: event {} arrived after event {last}",
                event.account,
                event.n
            );
        }
    }
}

/// Adds a row to the fault table: `sent` events committed, `acknowledged` of them marked
/// published (the relay marks a row only once the broker acknowledged its record),
/// `distinct` of them on the topic, `duplicates` records that repeat an event (same
/// `ce_id`). Nothing consumes the events and the outbox applies no effects: those columns
/// stay empty.
fn record_scenario(name: &str, sent: u32, acknowledged: i64, distinct: usize, duplicates: usize) {
    FaultScenario {
        name,
        sent: sent as usize,
        acknowledged: Some(usize::try_from(acknowledged).unwrap()),
        handled: None,
        lost: (sent as usize).saturating_sub(distinct),
        duplicate_deliveries: duplicates,
        duplicate_effects: None,
    }
    .record();
}

async fn create_topic(config: &KafkaConfig) {
    TopicAdmin::new(config)
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Relayed>().partitions(3)])
        .await
        .unwrap();
}

/// An event of `run`.
fn relayed(run: &str, n: u32) -> Relayed {
    Relayed {
        run: run.to_owned(),
        account: n % 20,
        n,
    }
}

/// The two databases an outbox lives in.
#[derive(Clone, Copy, Debug)]
enum Database {
    Postgres,
    Sqlite,
}

impl Database {
    /// Its name on the relay process's command line.
    fn name(self) -> &'static str {
        match self {
            Database::Postgres => "postgres",
            Database::Sqlite => "sqlite",
        }
    }

    /// The URL of a new, empty database: the relay's first batch must be this test's rows.
    async fn fresh(self) -> String {
        match self {
            Database::Postgres => fresh_postgres_database().await,
            Database::Sqlite => {
                let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("relay"));
                format!("sqlite://{}.db", path.display())
            }
        }
    }
}

/// The outbox of either database, with what the tests do to it.
enum Outbox {
    Postgres(PostgresOutbox),
    Sqlite(SqliteOutbox),
}

/// `$body` with `$outbox` bound to the outbox, whichever database it is in.
macro_rules! on_either {
    ($self:expr, $outbox:ident => $body:expr) => {
        match $self {
            Outbox::Postgres($outbox) => $body,
            Outbox::Sqlite($outbox) => $body,
        }
    };
}

impl Outbox {
    async fn connect(database: Database, url: &str, kafka: &KafkaConfig) -> Outbox {
        match database {
            Database::Postgres => {
                Outbox::Postgres(PostgresOutbox::connect(url, kafka).await.unwrap())
            }
            Database::Sqlite => Outbox::Sqlite(SqliteOutbox::connect(url, kafka).await.unwrap()),
        }
    }

    /// Enqueues `events` in one transaction and commits it.
    async fn commit(&self, events: impl IntoIterator<Item = Relayed>) {
        on_either!(self, outbox => {
            let mut tx = outbox.pool().begin().await.unwrap();
            for event in events {
                outbox.enqueue(&mut tx, &event).await.unwrap();
            }
            tx.commit().await.unwrap();
        });
    }

    /// How many rows are not marked published.
    async fn unpublished(&self) -> i64 {
        const UNPUBLISHED: &str = "SELECT count(*) FROM pegasus_outbox WHERE published_at IS NULL";
        on_either!(self, outbox => sqlx::query_scalar(UNPUBLISHED)
            .fetch_one(outbox.pool())
            .await
            .unwrap())
    }

    /// How many rows are marked published: the events whose record the broker acknowledged.
    async fn published(&self) -> i64 {
        const PUBLISHED: &str =
            "SELECT count(*) FROM pegasus_outbox WHERE published_at IS NOT NULL";
        on_either!(self, outbox => sqlx::query_scalar(PUBLISHED)
            .fetch_one(outbox.pool())
            .await
            .unwrap())
    }

    /// Returns once every row is marked published; fails after [`DEADLINE`].
    async fn wait_until_published(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = self.unpublished().await;
            if left == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{left} rows still unpublished");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn relay(&self, kafka: &KafkaConfig, settings: RelaySettings) -> OutboxRelay {
        on_either!(self, outbox => outbox.relay(kafka, settings).unwrap())
    }

    /// Commits `events` and starts a relay process that publishes them but whose mark
    /// (an UPDATE) waits on a lock: the relay is then exactly between the broker's
    /// acknowledgement and the mark. Returns the relay and the lock.
    async fn relay_waiting_on_the_mark(
        &self,
        url: &str,
        events: &[Relayed],
    ) -> (Reaped, MarkBlocker) {
        match self {
            Outbox::Postgres(outbox) => {
                for chunk in events.chunks(100) {
                    self.commit(chunk.iter().cloned()).await;
                }
                // A SHARE lock lets the relay read and publish, but not update.
                let mut blocker = outbox.pool().begin().await.unwrap();
                sqlx::query("LOCK TABLE pegasus_outbox IN SHARE MODE")
                    .execute(&mut *blocker)
                    .await
                    .unwrap();
                let relay = relay_process(Database::Postgres, url);
                (relay, MarkBlocker::Postgres(blocker))
            }
            Outbox::Sqlite(outbox) => {
                // The lock is the database's one write lock, on a connection of its own: in
                // WAL mode the relay still reads, and its writes wait (its busy_timeout,
                // 10 s, so the kill must land within that). Its first write takes the
                // relay lease, so the relay starts before the lock is taken.
                let relay = relay_process(Database::Sqlite, url);
                let leased = || async {
                    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pegasus_outbox_relay_lease")
                        .fetch_one(outbox.pool())
                        .await
                        .unwrap()
                        > 0
                };
                let deadline = Instant::now() + DEADLINE;
                while !leased().await {
                    assert!(Instant::now() < deadline, "the relay took no lease");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let options = url
                    .parse::<SqliteConnectOptions>()
                    .unwrap()
                    .journal_mode(SqliteJournalMode::Wal);
                let mut blocker = SqliteConnection::connect_with(&options).await.unwrap();
                let mut tx = blocker.begin_with("BEGIN IMMEDIATE").await.unwrap();
                for event in events {
                    outbox.enqueue(&mut tx, event).await.unwrap();
                }
                tx.commit().await.unwrap();
                // At once the lock again: between the commit and this statement the relay
                // cannot read the rows, publish them, have them acknowledged and mark them.
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut blocker)
                    .await
                    .unwrap();
                (relay, MarkBlocker::Sqlite(blocker))
            }
        }
    }
}

/// The lock of [`Outbox::relay_waiting_on_the_mark`], held until [`MarkBlocker::release`]
/// (or the end of the test).
enum MarkBlocker {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(SqliteConnection),
}

impl MarkBlocker {
    /// Releases the lock, once the relay that waited on it was killed.
    async fn release(self) {
        match self {
            MarkBlocker::Postgres(mut blocker) => {
                // PostgreSQL notices a vanished client only when it next talks to it: the
                // killed relay's UPDATE would still run once the lock is released. End that
                // session (and wait until it is gone), as a crash before the statement
                // reached the server would have.
                let ended: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND state = 'active' AND query LIKE 'UPDATE pegasus_outbox%'",
                )
                .fetch_all(&mut *blocker)
                .await
                .unwrap();
                assert_eq!(ended, [true], "the killed relay's mark waited on the lock");
                blocker.rollback().await.unwrap();
            }
            // SQLite runs in the relay's process: the kill ended its transaction.
            MarkBlocker::Sqlite(mut blocker) => {
                sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
            }
        }
    }
}

/// A relay process is killed (SIGKILL) after the broker acknowledged its first batch and
/// before it marked it; a restarted relay must publish every event, and what went out
/// before the kill once more, with the same `ce_id`s.
async fn relay_killed_between_the_acknowledgement_and_the_mark(database: Database) {
    // Three batches: the kill lands after the first (and maybe the second) went out, with
    // at least one batch still unsent.
    let batch = RelaySettings::default().batch_size as usize;
    let total = u32::try_from(3 * batch).expect("three batches fit a u32");
    let kafka = config("orders-api");
    create_topic(&kafka).await;
    let url = database.fresh().await;
    let outbox = Outbox::connect(database, &url, &kafka).await;
    let run = unique("run");
    let events: Vec<Relayed> = (0..total).map(|n| relayed(&run, n)).collect();
    let (relay, blocker) = outbox.relay_waiting_on_the_mark(&url, &events).await;
    // The relay's first batch goes out and is acknowledged, then its mark waits (a
    // relay that overlaps batches may have sent its next one too).
    records_of(bootstrap(), &run, batch, Duration::from_millis(500)).await;
    drop(relay); // SIGKILL while it waits on the mark
    let unmarked = outbox.unpublished().await;
    assert_eq!(
        unmarked,
        i64::from(total),
        "the kill landed before the mark"
    );
    // What the broker holds of the run now is what the relay published before the kill.
    let before_the_kill = records_of(bootstrap(), &run, batch, Duration::from_secs(1)).await;
    let (published, republished) = distinct_and_duplicates(&before_the_kill);
    assert_eq!(
        republished, 0,
        "no event went out twice before the kill: its mark was still waiting"
    );
    assert!(
        (batch..total as usize).contains(&published),
        "a batch published, then the mark waited ({published} events published)"
    );
    blocker.release().await;

    // The restarted relay publishes the unmarked rows again, then marks them. (On SQLite
    // it first waits for the killed relay's lease to expire: `lease_ttl`, 15 s.)
    let restarted = relay_process(database, &url);
    let restarted_at = Instant::now();
    outbox.wait_until_published().await;
    let caught_up = restarted_at.elapsed();
    drop(restarted);
    let all = records_of(bootstrap(), &run, total as usize, Duration::from_secs(2)).await;
    let (distinct, duplicates) = distinct_and_duplicates(&all);
    eprintln!(
        "{database:?} relay crash: {distinct} events, {duplicates} republished duplicates; \
         {published} published and {unmarked} rows unmarked at the kill; all published \
         {caught_up:.1?} after the restart"
    );
    assert_eq!(distinct, total as usize, "every event published");
    assert_eq!(
        duplicates, published,
        "what was published but unmarked went out again, with the same ce_ids"
    );
    assert_each_keys_order(&all);
    record_scenario(
        &format!(
            "outbox relay process ({database:?}) killed with SIGKILL between the broker's acknowledgement and the mark, restarted"
        ),
        total,
        outbox.published().await,
        distinct,
        duplicates,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_the_acknowledgement_and_the_mark_republishes_with_the_same_ids() {
    relay_killed_between_the_acknowledgement_and_the_mark(Database::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_killed_between_the_acknowledgement_and_the_mark_republishes_with_the_same_ids(
) {
    relay_killed_between_the_acknowledgement_and_the_mark(Database::Sqlite).await;
}

/// The broker of an in-process relay is killed (SIGKILL) for 12 s while events keep being
/// committed; once it is back, every event must be published.
async fn relay_catches_up_after_the_broker_was_down_under_load(database: Database) {
    const EVENTS: u32 = 3_000;
    let broker = OwnBroker::start("relay-broker");
    let (name, address) = (broker.name().to_owned(), broker.bootstrap().to_owned());
    let mut kafka = KafkaConfig::new(&address).with_client_id("orders-api");
    kafka.producer.delivery_timeout = Duration::from_secs(10);
    create_topic(&kafka).await;
    let outbox = Outbox::connect(database, &database.fresh().await, &kafka).await;
    let relay = outbox.relay(
        &kafka,
        RelaySettings {
            poll_interval: Duration::from_millis(50),
            error_backoff: Duration::from_millis(100),
            dead_letter_topic: unique("tests-dlq"),
            ..RelaySettings::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(relay.run_until(async move {
        let _ = stopped.await;
    }));

    let run = unique("run");
    let mut fault = None;
    for n in 0..EVENTS {
        if n == EVENTS / 3 {
            // The broker goes away (SIGKILL) for 12 s, longer than the producers' delivery
            // timeout (10 s; the relay's own producer waits without one), while events keep
            // being committed.
            let name = name.clone();
            fault = Some(tokio::task::spawn_blocking(move || {
                kafka_script(&["kill-node", "1", "--name", &name, "--signal", "KILL"]);
                std::thread::sleep(Duration::from_secs(12));
                kafka_script(&["start-node", "1", "--name", &name]);
            }));
        }
        outbox.commit([relayed(&run, n)]).await;
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    fault.unwrap().await.unwrap();
    outbox.wait_until_published().await;
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, relaying)
        .await
        .expect("the relay stopped")
        .unwrap()
        .unwrap();
    let all = records_of(address, &run, EVENTS as usize, Duration::from_secs(1)).await;
    let (distinct, duplicates) = distinct_and_duplicates(&all);
    eprintln!(
        "{database:?} relay across a broker outage: {distinct} events, {duplicates} duplicates"
    );
    assert_eq!(distinct, EVENTS as usize, "nothing lost");
    assert_each_keys_order(&all);
    record_scenario(
        &format!(
            "broker killed (SIGKILL) for 12 s while events are committed to the outbox ({database:?}) and relayed"
        ),
        EVENTS,
        outbox.published().await,
        distinct,
        duplicates,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_catches_up_after_the_broker_was_down_under_load_losing_nothing_and_keeping_each_keys_order(
) {
    relay_catches_up_after_the_broker_was_down_under_load(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_relay_catches_up_after_the_broker_was_down_under_load_losing_nothing_and_keeping_each_keys_order(
) {
    relay_catches_up_after_the_broker_was_down_under_load(Database::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_asked_to_stop_during_a_broker_outage_stops_within_its_delivery_timeout_and_loses_nothing(
) {
    let broker = OwnBroker::start("relay-broker");
    let (name, address) = (broker.name().to_owned(), broker.bootstrap().to_owned());
    let mut kafka = KafkaConfig::new(&address).with_client_id("orders-api");
    kafka.producer.delivery_timeout = Duration::from_secs(3);
    create_topic(&kafka).await;
    let database = Database::Sqlite;
    let outbox = Outbox::connect(database, &database.fresh().await, &kafka).await;
    let settings = RelaySettings {
        poll_interval: Duration::from_millis(50),
        dead_letter_topic: unique("tests-dlq"),
        ..RelaySettings::default()
    };
    let run = unique("run");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(
        outbox
            .relay(&kafka, settings.clone())
            .run_until(async move {
                let _ = stopped.await;
            }),
    );
    outbox.commit((0..100).map(|n| relayed(&run, n))).await;
    outbox.wait_until_published().await;

    // The broker goes away; the relay sends the next events and waits for acknowledgements
    // that cannot come. Asked to stop, it gives them the delivery timeout (3 s), not more.
    kafka_script(&["kill-node", "1", "--name", &name, "--signal", "KILL"]);
    outbox.commit((100..300).map(|n| relayed(&run, n))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), relaying)
        .await
        .expect("the relay stopped")
        .unwrap()
        .expect("a stop during an outage is not an error");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(3 + 5),
        "stopped {took:.1?} after being asked, within the 3 s delivery timeout and a margin"
    );
    assert_eq!(
        outbox.unpublished().await,
        200,
        "nothing marked without an ack"
    );

    // The broker returns; the next relay publishes what is left, in order.
    kafka_script(&["start-node", "1", "--name", &name]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(outbox.relay(&kafka, settings).run_until(async move {
        let _ = stopped.await;
    }));
    outbox.wait_until_published().await;
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, relaying)
        .await
        .expect("the relay stopped")
        .unwrap()
        .unwrap();
    let all = records_of(address, &run, 300, Duration::from_secs(1)).await;
    let (distinct, duplicates) = distinct_and_duplicates(&all);
    eprintln!("stopped {took:.1?} after being asked; {distinct} events, {duplicates} duplicates");
    assert_eq!(distinct, 300, "nothing lost");
    assert_each_keys_order(&all);
}

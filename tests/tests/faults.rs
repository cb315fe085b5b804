//! Fault tests: processes killed, brokers stopped, leaders lost. Each proves that no
//! acknowledged event is lost, bounds its own runtime and stops what it started.
//!
//! Each scenario appends its counts to `target/fault-scenarios.tsv` (read by
//! `scripts/test`, which prints them, and the source of the README's table).

use std::collections::HashSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pegasus_events::{EventProducer, TopicAdmin, TopicSpec};
use pegasus_events_tests::{bootstrap, config, unique, LedgerEntry, BOOTSTRAP_ENV};

/// The counts of one scenario, as the README's table shows them.
struct Scenario<'a> {
    name: &'a str,
    sent: usize,
    acknowledged: usize,
    handled: usize,
    lost: usize,
    duplicate_deliveries: usize,
    duplicate_effects: usize,
}

impl Scenario<'_> {
    fn record(&self) {
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.name,
            self.sent,
            self.acknowledged,
            self.handled,
            self.lost,
            self.duplicate_deliveries,
            self.duplicate_effects
        );
        eprint!("fault scenario: {line}");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/fault-scenarios.tsv");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write;
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// Kills the child with SIGKILL when dropped, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------

fn killable_consumer(group: &str, database: &str, run: &str, deliveries: &str) -> Reaped {
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_killable_consumer"))
            .args([group, database, run, deliveries])
            .env(BOOTSTRAP_ENV, bootstrap())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("the consumer process starts"),
    )
}

async fn effects_count(pool: &sqlx::SqlitePool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await
        .unwrap_or(0) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_at_random_points_and_restarted_handles_every_event_and_applies_none_twice(
) {
    const EVENTS: usize = 50_000;
    const KILLS: usize = 5;
    let deadline = Instant::now() + Duration::from_secs(300);
    TopicAdmin::new(&config("admin"))
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<LedgerEntry>().partitions(3)])
        .await
        .unwrap();
    let run = unique("run");
    let producer = EventProducer::new(&config("ledger-publisher")).unwrap();
    let entries: Vec<LedgerEntry> = (0..EVENTS as u32)
        .map(|n| LedgerEntry {
            run: run.clone(),
            account: n % 200,
            n,
        })
        .collect();
    let acknowledged = producer
        .publish_all(&entries)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(
        acknowledged, EVENTS,
        "every event acknowledged before the test"
    );

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("ledger"));
    std::fs::create_dir_all(&dir).unwrap();
    let database = dir.join("ledger.db").display().to_string();
    let deliveries = dir.join("deliveries.log").display().to_string();
    let group = unique("ledger");
    let reader = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            format!("sqlite://{database}")
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true),
        )
        .await
        .unwrap();

    let mut kills = 0;
    while kills < KILLS {
        let before = effects_count(&reader).await;
        let child = killable_consumer(&group, &database, &run, &deliveries);
        // Let it apply a random number of entries (it may be mid-batch, mid-transaction or
        // mid-commit when the signal lands), then kill it without warning.
        let target = before + fastrand_between(500, 4_000);
        while effects_count(&reader).await < target.min(EVENTS - 1) {
            assert!(
                Instant::now() < deadline,
                "the consumer made no progress in time"
            );
            tokio::time::sleep(Duration::from_millis(fastrand_between(1, 30) as u64)).await;
        }
        drop(child); // SIGKILL, then reaped
        kills += 1;
    }

    let mut last = killable_consumer(&group, &database, &run, &deliveries);
    while effects_count(&reader).await < EVENTS {
        assert!(
            Instant::now() < deadline,
            "not every entry was applied in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A graceful stop at the end (SIGTERM), so the last offsets are committed.
    let _ = Command::new("kill")
        .args(["-TERM", &last.0.id().to_string()])
        .status();
    let _ = last.0.wait();

    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT n) FROM effects")
        .fetch_one(&reader)
        .await
        .unwrap();
    let applied = effects_count(&reader).await;
    // Every delivery of this run's records to the runtime, across all the processes.
    let delivery_log = std::fs::read_to_string(&deliveries).unwrap();
    let ids: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM effects")
        .fetch_all(&reader)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let delivered = delivery_log.lines().filter(|id| ids.contains(*id)).count();
    Scenario {
        name: "consumer process killed with SIGKILL 5 times while handling, restarted",
        sent: EVENTS,
        acknowledged,
        handled: distinct as usize,
        lost: EVENTS - distinct as usize,
        duplicate_deliveries: delivered.saturating_sub(distinct as usize),
        duplicate_effects: applied - distinct as usize,
    }
    .record();
    assert_eq!(distinct as usize, EVENTS, "every entry applied");
    assert_eq!(applied, EVENTS, "no entry applied twice");
    assert!(delivered >= EVENTS);
}

fn fastrand_between(low: usize, high: usize) -> usize {
    // Seeded from the clock: different kill points on every run.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    low + nanos % (high - low)
}

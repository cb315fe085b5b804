//! Shared parts of the benchmarks: the event under test, the raw-rdkafka encoding of the
//! same record, and an allocator that counts heap allocations per thread.
//!
//! Allocation counts do not move with the machine's load, so they are the figure to hold
//! steady from change to change; times are only ever reported as a ratio against raw
//! rdkafka measured in the same run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use pegasus_events::Event;
use rdkafka::message::{Header, OwnedHeaders};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The design's ShipmentCreatedEvent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "bench.shipment.created", name = "ShipmentCreatedEvent")]
pub struct ShipmentCreated {
    /// The shipment id, also the partition key.
    #[event(key)]
    pub shipment_id: Uuid,
    /// Tracking number.
    pub tracking_number: String,
    /// Status.
    pub status: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by_user_id: String,
    /// Their email.
    #[event(sensitive)]
    pub created_by_email: String,
}

/// A sample event; `i` varies the key.
pub fn sample(i: u64) -> ShipmentCreated {
    ShipmentCreated {
        shipment_id: Uuid::from_u64_pair(0x3fa8_5f64_5717_4562, i),
        tracking_number: format!("TRACK{i:06}"),
        status: "Created".to_owned(),
        created_at: DateTime::from_timestamp(1_768_473_000, 0).unwrap_or_default(),
        created_by_user_id: "auth0|123".to_owned(),
        created_by_email: "user@example.com".to_owned(),
    }
}

/// The record key, value and headers of `event` built the way a careful user of raw
/// rdkafka would write them by hand: the value serialized by `serde_json` into a buffer
/// sized for the event (`to_vec` starts at 128 bytes and grows once for this one), and the
/// key, the event id and the time formatted into stack buffers (librdkafka copies key and
/// header values on enqueue, so nothing formatted for them needs the heap). This is the baseline
/// the typed producer is compared against, allocation for allocation: the same bytes on
/// the wire, with no convenience (`to_string`, `to_rfc3339`) a careful producer would skip.
pub fn raw_encode(event: &ShipmentCreated, source: &str) -> RawRecord {
    let payload = to_json(event);
    let mut key = [0u8; 36];
    event.shipment_id.as_hyphenated().encode_lower(&mut key);
    let mut id = [0u8; 36];
    Uuid::now_v7().as_hyphenated().encode_lower(&mut id);
    let time = rfc3339_millis(&Utc::now());
    let headers = OwnedHeaders::new_with_capacity(10)
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some(&id[..]),
        })
        .insert(Header {
            key: "ce_source",
            value: Some(source),
        })
        .insert(Header {
            key: "ce_type",
            value: Some(ShipmentCreated::NAME),
        })
        .insert(Header {
            key: "ce_time",
            value: Some(&time[..]),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: "ce_schemaversion",
            value: Some("1"),
        })
        .insert(Header {
            key: "ce_partitionkey",
            value: Some(&key[..]),
        });
    RawRecord {
        key,
        payload,
        headers: Some(headers),
    }
}

/// The same record with no header at all: what a producer that writes no CloudEvents
/// attributes sends (same key, same value), the floor the headers' cost is measured from.
pub fn raw_encode_without_headers(event: &ShipmentCreated) -> RawRecord {
    let payload = to_json(event);
    let mut key = [0u8; 36];
    event.shipment_id.as_hyphenated().encode_lower(&mut key);
    RawRecord {
        key,
        payload,
        headers: None,
    }
}

/// `event` as JSON, in one allocation of 256 bytes (the sample events take about 200).
fn to_json(event: &ShipmentCreated) -> Vec<u8> {
    let mut payload = Vec::with_capacity(256);
    let _ = serde_json::to_writer(&mut payload, event);
    payload
}

/// A record encoded by hand (see [`raw_encode`]).
pub struct RawRecord {
    /// The shipment id as hyphenated lowercase text, on the stack.
    pub key: [u8; 36],
    /// The event as JSON.
    pub payload: Vec<u8>,
    /// The CloudEvents headers, if any.
    pub headers: Option<OwnedHeaders>,
}

/// `time` as RFC 3339 UTC with milliseconds, formatted into a stack buffer the way a
/// hand-written producer that cares about allocations would (`to_rfc3339_opts` allocates a
/// `String`).
fn rfc3339_millis(time: &DateTime<Utc>) -> [u8; 24] {
    let mut out = [0u8; 24];
    let mut cursor = &mut out[..];
    let _ = write!(
        cursor,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.timestamp_subsec_millis().min(999),
    );
    out
}

/// Counts heap allocations made by the current thread.
pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Allocations of every thread, for work spread over several threads.
static ALL_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the only addition is
// a thread-local counter that never allocates itself (a const-initialised `Cell`).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn count() {
    ALL_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    // `try_with`: during thread teardown the counter may be gone; then it is not counted.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

/// Heap allocations (including reallocations) made by every thread so far.
pub fn all_allocations() -> u64 {
    ALL_ALLOCATIONS.load(Ordering::Relaxed)
}

/// Heap allocations (including reallocations) made by this thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

/// CPU time (user and system) this process has used so far, over all its threads, so
/// librdkafka's own threads count as well as the caller's.
///
/// Load on the machine from other processes hardly moves it, unlike wall-clock time, which
/// is why the publish bench reports CPU per event; it is still only compared as a ratio
/// within one run (caches, frequency and the broker's pace shift it from run to run).
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is given and reads
    // nothing else; RUSAGE_SELF is always a valid `who`.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// The whole machine's CPU time so far, busy and in all (every core, every process: the
/// broker and the database server count too), from the first line of `/proc/stat`; `None`
/// where there is no `/proc/stat`.
///
/// Compared over an interval, busy / all says how close the machine was to saturated, and
/// busy time per event what the whole pipeline (client, broker, database) spends on one;
/// on a saturated machine the second bounds the rate.
pub fn machine_cpu_time() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let all: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some(MachineCpu {
        busy: all - idle,
        all,
        processes: process_cpu_ticks(),
    })
}

/// CPU ticks (user and system, every thread) of the processes that matter to a bench: this
/// one, the database server's (`postgres`) and the broker's (a JVM, `java`), from
/// `/proc/<pid>/stat`. A process that ended since an earlier reading drops out of the
/// later one, so readings are taken while the processes measured run.
fn process_cpu_ticks() -> ProcessTicks {
    let mut ticks = ProcessTicks::default();
    let this = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so the fields
        // are counted from the last ')'; utime and stime are the 14th and 15th fields.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let used = |n: usize| {
            fields
                .get(n)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let spent = used(11) + used(12);
        if pid == this {
            ticks.this += spent;
        } else if comm == "postgres" {
            ticks.database += spent;
        } else if comm == "java" {
            ticks.broker += spent;
        }
    }
    ticks
}

/// The clock ticks per second that `/proc` counts CPU time in.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    hz.max(1) as f64
}

/// CPU ticks by process (see [`process_cpu_ticks`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessTicks {
    /// This process: the client under test (and, in the outbox bench, the committers).
    pub this: u64,
    /// The PostgreSQL server, every backend.
    pub database: u64,
    /// The Kafka broker's JVM.
    pub broker: u64,
}

/// Clock ticks of the whole machine's CPU (see [`machine_cpu_time`]).
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    /// Ticks spent running anything.
    pub busy: u64,
    /// Ticks in all, idle included, summed over every core.
    pub all: u64,
    /// Ticks of this process, the database server and the broker, read at the same moment.
    pub processes: ProcessTicks,
}

impl MachineCpu {
    /// Busy share of the machine and busy CPU seconds since `earlier`.
    pub fn since(self, earlier: MachineCpu) -> (f64, f64) {
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let all = self.all.saturating_sub(earlier.all).max(1) as f64;
        (busy / all, busy / clock_ticks_per_second())
    }

    /// CPU seconds since `earlier` of this process, the database server, the broker, and
    /// everything else (the machine's busy time less those three: the kernel's network
    /// work outside any process, other processes).
    pub fn split_since(self, earlier: MachineCpu) -> [f64; 4] {
        let hz = clock_ticks_per_second();
        let (now, then) = (self.processes, earlier.processes);
        let this = now.this.saturating_sub(then.this);
        let database = now.database.saturating_sub(then.database);
        let broker = now.broker.saturating_sub(then.broker);
        let busy = self.busy.saturating_sub(earlier.busy);
        let rest = busy.saturating_sub(this + database + broker);
        [this, database, broker, rest].map(|ticks| ticks as f64 / hz)
    }
}

/// The median of `values` (the upper one of an even count); the figure every bench reports
/// over its paired rounds.
///
/// # Panics
///
/// When `values` is empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `min / median / max` of paired ratios, for a report line: how far one round's ratio
/// may fall from another's on this machine.
pub fn spread(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "min {:.3} / median {:.3} / max {:.3}",
        values[0],
        values[values.len() / 2],
        values[values.len() - 1]
    )
}

/// The first of the environment variables `names` that is set and not empty; without one,
/// `bench` says which to set and the process exits.
pub fn env_var(bench: &str, names: &[&str]) -> String {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| {
            eprintln!(
                "{bench} bench: set {}, or run scripts/bench",
                names.join(" or ")
            );
            std::process::exit(1);
        })
}

/// The address of the broker under test: `PEGASUS_BENCH_BOOTSTRAP`, or the tests' own.
pub fn bootstrap(bench: &str) -> String {
    env_var(
        bench,
        &["PEGASUS_BENCH_BOOTSTRAP", "PEGASUS_TEST_BOOTSTRAP"],
    )
}

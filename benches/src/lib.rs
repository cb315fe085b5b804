//! Shared parts of the benchmarks: the event under test, the raw-rdkafka encoding of the
//! same record, and an allocator that counts heap allocations per thread.
//!
//! Allocation counts do not move with the machine's load, so they are the figure to hold
//! steady from change to change; times are only ever reported as a ratio against raw
//! rdkafka measured in the same run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
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
/// rdkafka would: `serde_json::to_vec`, `to_string` for the key, and the same CloudEvents
/// headers formatted with the standard library. This is the baseline the typed producer is
/// compared against: the same bytes on the wire.
pub fn raw_encode(event: &ShipmentCreated, source: &str) -> (String, Vec<u8>, OwnedHeaders) {
    let payload = serde_json::to_vec(event).unwrap_or_default();
    let key = event.shipment_id.to_string();
    let id = Uuid::now_v7().to_string();
    let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let headers = OwnedHeaders::new_with_capacity(10)
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some(&id),
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
            value: Some(&time),
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
            value: Some(&key),
        });
    (key, payload, headers)
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

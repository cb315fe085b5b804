//! What the tests of the example services (`shipping-service`, `identity-service`,
//! `services-e2e`) share, written once:
//!
//! - **an HTTP/1.1 client** over a `TcpStream` ([`call`], [`call_with`], [`exchange`]), one
//!   request a connection, and [`KeepAlive`], one connection for many requests (the load
//!   bench's). No client crate: the services are on loopback, without TLS or redirects.
//!   Every exchange is bounded by [`STEP`];
//! - **bounded polls**: [`until`] fails after the bound it is given, naming what it waited
//!   for;
//! - **the servers under test**: [`required`] reads `PEGASUS_TEST_BOOTSTRAP` or
//!   `PEGASUS_TEST_POSTGRES_URL` and fails the test without it (no test skips for want of a
//!   server); [`Database::fresh`] and [`fresh_postgres_database`] give a service a new,
//!   empty database;
//! - **the records a topic receives**, read raw with rdkafka from the end the topic had
//!   when the reader was made ([`TopicReader`], [`RawRecord`]);
//! - **the wire contract** (`docs/wire-format.md`, sections 1, 2 and 5) checked on such a
//!   record header by header, its value field by field ([`assert_contract_record`]).
//!
//! Everything here fails the test (panics) on what it cannot do, except [`exchange`] and
//! [`KeepAlive::call`], which return a transport failure as an `Err` for the tests that
//! expect some (a service killed in the middle of a request).

mod contract;
mod database;
mod http;
mod topic;

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

pub use contract::{
    assert_contract_record, Checked, Expected, CONTRACT_HEADERS, SHIPMENT_CREATED_FIELDS,
};
pub use database::{fresh_postgres_database, Database};
pub use http::{call, call_with, exchange, Answer, KeepAlive};
pub use topic::{RawRecord, TopicReader};

/// How long one step may take: an HTTP exchange, a child's start, a group join, the first
/// record of a [`TopicReader`].
pub const STEP: Duration = Duration::from_secs(60);

/// How long [`until`] waits between two reads.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// `name`'s value; the test fails without it, it never skips.
pub fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: run the tests with `scripts/test`, or start a broker and a \
             PostgreSQL server (`scripts/kafka start`, `scripts/postgres start`) and export \
             PEGASUS_TEST_BOOTSTRAP and PEGASUS_TEST_POSTGRES_URL"
        ),
    }
}

/// Calls `read` every 200 ms until `done` holds for what it returns, and returns that;
/// fails after `bound`, naming `what` it waited for.
pub async fn until<T, F, Fut>(
    bound: Duration,
    what: &str,
    mut read: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {bound:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The `eventId` of each item of an activity log (Identity's
/// `GET /api/users/{id}/activity`), in the log's order.
pub fn event_ids(items: &[Value]) -> Vec<Uuid> {
    items
        .iter()
        .map(|item| {
            item["eventId"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("an event id in {item}"))
        })
        .collect()
}

//! SIGKILL of either service in the middle of a flow of 1,000 shipments loses nothing and
//! applies nothing twice. Identity and Shipping run as child processes, each on its own
//! fresh PostgreSQL database, against the real broker, driven over HTTP with a token
//! Identity issued. The test proves:
//!
//! - **every acknowledged shipment is stored once**: [`CLIENTS`] concurrent clients get a
//!   `201` for each of [`SHIPMENTS`] shipments (a POST whose answer was lost when Shipping
//!   died is sent again with a new tracking number); Shipping's database, listed page by
//!   page after the restarts, holds every acknowledged shipment, no id twice, and at most
//!   one more per lost answer (a request that committed before the kill);
//! - **each stored shipment reaches Identity's activity log exactly once**: once the log
//!   holds as many entries as Shipping holds shipments and stayed so for [`QUIET`], its
//!   shipment ids are exactly Shipping's (none lost, none extra), no shipment and no event
//!   id appears twice;
//! - **the kills were real and in the middle of the flow**: Shipping is SIGKILLed after
//!   [`KILL_SHIPPING_AT`] acknowledgements, while the clients create; Identity after
//!   [`KILL_IDENTITY_AT`], as soon as it logged some of the flow's shipments, and before it
//!   logged all of them (its new consumer group first reads the topic's older events, so
//!   the clients may have finished by then); each died of signal 9 and was started again
//!   on the same database with the same client id (so the same consumer group).
//!
//! The counts are printed (`--nocapture`). Every wait is bounded; the children are
//! killed on every path out of the test, and their logs' tails printed when it fails.
//!
//! ```sh
//! export PEGASUS_TEST_BOOTSTRAP=$(scripts/kafka start)
//! export PEGASUS_TEST_POSTGRES_URL=$(scripts/postgres start)
//! cargo test -p services-e2e --test sigkill -- --nocapture
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use services_e2e::{
    activity, first_shipment, messages_after, register, settled_activity, shipment_id,
    stored_shipments, until_ready, Service, ServiceProcess, Stage, CATCH_UP,
};
use test_support::{exchange, until, STEP};
use uuid::Uuid;

/// Shipments acknowledged with `201` in the whole flow.
const SHIPMENTS: usize = 1_000;
/// Clients creating them at once.
const CLIENTS: usize = 4;
/// Acknowledgements after which Shipping is killed.
const KILL_SHIPPING_AT: usize = 300;
/// Acknowledgements after which Identity is killed.
const KILL_IDENTITY_AT: usize = 650;
/// How long the creation of all shipments may take, restarts included.
const FLOW_BOUND: Duration = Duration::from_secs(240);
/// How long the log is watched for a late duplicate once complete.
const QUIET: Duration = Duration::from_secs(3);

/// What the clients share.
struct Flow {
    shipping: SocketAddr,
    token: String,
    run: Uuid,
    /// The next shipment to create.
    next: AtomicUsize,
    /// The ids answered with `201`.
    acknowledged: Mutex<Vec<Uuid>>,
    /// POSTs that got no whole answer (Shipping dead or dying).
    lost: AtomicUsize,
}

impl Flow {
    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().expect("not poisoned").len()
    }
}

/// Creates shipments until [`SHIPMENTS`] are taken; each one's POST is sent again, with a
/// new tracking number, until it gets a `201`. Any other status fails the test.
async fn client(flow: Arc<Flow>) {
    let authorization = format!("Bearer {}", flow.token);
    let headers = [
        ("Authorization", authorization.as_str()),
        ("Content-Type", "application/json"),
    ];
    let deadline = tokio::time::Instant::now() + FLOW_BOUND;
    loop {
        let number = flow.next.fetch_add(1, Ordering::SeqCst);
        if number >= SHIPMENTS {
            return;
        }
        for attempt in 0.. {
            let tracking = format!("K{}-{number}-{attempt}", flow.run.simple());
            let body = json!({ "trackingNumber": tracking }).to_string();
            match exchange(
                flow.shipping,
                "POST",
                "/api/shipments",
                &headers,
                body.as_bytes(),
            )
            .await
            {
                Ok(answer) if answer.status == 201 => {
                    let id = shipment_id(&answer.body);
                    flow.acknowledged.lock().expect("not poisoned").push(id);
                    break;
                }
                Ok(answer) => panic!("{tracking}: {} {}", answer.status, answer.body),
                Err(_) => {
                    flow.lost.fetch_add(1, Ordering::SeqCst);
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "shipment {number} not created within {FLOW_BOUND:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Waits until the clients acknowledged `count` shipments, within [`FLOW_BOUND`].
async fn until_acknowledged(flow: &Flow, count: usize) -> usize {
    let deadline = tokio::time::Instant::now() + FLOW_BOUND;
    loop {
        let acknowledged = flow.acknowledged();
        if acknowledged >= count {
            return acknowledged;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} shipments not acknowledged within {FLOW_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the restarted processes of one service logged about the events they received:
/// how many deliveries, of how many distinct events.
fn deliveries(processes: &[&ServiceProcess]) -> (usize, usize) {
    let mut delivered = 0;
    let mut events = HashSet::new();
    for process in processes {
        for line in process.log_lines() {
            let message = line["fields"]["message"].as_str().unwrap_or_default();
            if message.starts_with("Received message from") {
                delivered += 1;
                events.insert(line["fields"]["event_id"].as_str().map(str::to_owned));
            }
        }
    }
    (delivered, events.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_shipping_then_identity_amid_1000_shipments_loses_no_shipment_and_logs_each_exactly_once(
) {
    let started = Instant::now();
    // Declared first: dropped last, it prints the children's logs when the test fails.
    let stage = Stage::new(
        env!("CARGO_BIN_EXE_identity"),
        env!("CARGO_BIN_EXE_shipping"),
    );
    let identity_instance = stage.instance(Service::Identity, "sigkill").await;
    let shipping_instance = stage.instance(Service::Shipping, "sigkill").await;
    let identity = stage.start(&identity_instance, 0).await;
    let shipping = stage.start(&shipping_instance, 0).await;
    until_ready(&identity, STEP).await;
    until_ready(&shipping, STEP).await;
    let identity_address = identity.address();
    let shipping_address = shipping.address();

    // One user, known to Shipping once its first shipment is accepted.
    let user = register(identity_address, stage.run(), "sigkill").await;
    let first = first_shipment(
        shipping_address,
        &user,
        &format!("K{}-first", stage.run().simple()),
    )
    .await;
    let flow = Arc::new(Flow {
        shipping: shipping_address,
        token: user.token.clone(),
        run: stage.run(),
        // The first one is created.
        next: AtomicUsize::new(1),
        acknowledged: Mutex::new(vec![first]),
        lost: AtomicUsize::new(0),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(Arc::clone(&flow))))
        .collect();

    // Shipping killed amid the flow, and started again on its database and client id, on
    // the port the clients use.
    let shipping_killed_at = until_acknowledged(&flow, KILL_SHIPPING_AT).await;
    shipping.sigkill();
    let shipping = stage
        .start(&shipping_instance, shipping_address.port())
        .await;
    assert_eq!(shipping.address(), shipping_address);

    // Identity killed amid its consumption of this flow: it has logged some of the
    // shipments, not all. (Its new group reads the topic's older events first.)
    until_acknowledged(&flow, KILL_IDENTITY_AT).await;
    let logged_at_identity_kill = until(
        CATCH_UP,
        "Identity logging the flow",
        || activity(identity_address, &user),
        |entries| !entries.is_empty(),
    )
    .await
    .len();
    let acknowledged_at_identity_kill = flow.acknowledged();
    identity.sigkill();
    let identity = stage
        .start(&identity_instance, identity_address.port())
        .await;
    assert_eq!(identity.address(), identity_address);
    assert!(
        logged_at_identity_kill < SHIPMENTS,
        "Identity had logged all {logged_at_identity_kill} when killed"
    );

    for client in clients {
        tokio::time::timeout(FLOW_BOUND, client)
            .await
            .expect("the clients finished within their bound")
            .expect("a client failed");
    }
    let flow_took = started.elapsed();
    assert!(
        shipping_killed_at < SHIPMENTS,
        "Shipping killed after the flow: {shipping_killed_at}"
    );

    // Every acknowledged shipment is in Shipping's database, once; at most one more per
    // lost answer.
    let acknowledged = flow.acknowledged.lock().expect("not poisoned").clone();
    let lost = flow.lost.load(Ordering::SeqCst);
    let acknowledged_set: HashSet<Uuid> = acknowledged.iter().copied().collect();
    assert_eq!(acknowledged.len(), SHIPMENTS);
    assert_eq!(acknowledged_set.len(), SHIPMENTS, "an id answered twice");
    let (stored, total) = stored_shipments(shipping_address, &user.token).await;
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    assert_eq!(stored.len(), total, "the pages hold the total");
    assert_eq!(stored_set.len(), stored.len(), "a shipment listed twice");
    let missing: Vec<&Uuid> = acknowledged_set.difference(&stored_set).collect();
    assert!(missing.is_empty(), "acknowledged, not stored: {missing:?}");
    let unacknowledged = stored.len() - acknowledged.len();
    assert!(
        unacknowledged <= lost,
        "{unacknowledged} stored without a 201, only {lost} answers lost"
    );

    // Identity logs each stored shipment exactly once.
    let entries = settled_activity(identity_address, &user, stored.len(), CATCH_UP, QUIET).await;
    let logged_shipments: HashSet<Uuid> = entries.iter().map(|entry| entry.shipment_id).collect();
    let logged_events: HashSet<Uuid> = entries.iter().map(|entry| entry.event_id).collect();
    assert_eq!(entries.len(), stored.len(), "entries = stored shipments");
    assert_eq!(
        logged_events.len(),
        entries.len(),
        "an event id logged twice"
    );
    assert_eq!(
        logged_shipments.len(),
        entries.len(),
        "a shipment logged twice"
    );
    assert!(
        logged_shipments == stored_set,
        "logged but not stored: {:?}; stored but not logged: {:?}",
        logged_shipments.difference(&stored_set).collect::<Vec<_>>(),
        stored_set.difference(&logged_shipments).collect::<Vec<_>>()
    );

    // What the restarted Identity received: redeliveries the inbox absorbed show here.
    let (delivered, distinct) = deliveries(&[&identity]);
    let processed = messages_after(&identity.log_lines(), "Processing shipment created: ").len();
    eprintln!(
        "sigkill: {SHIPMENTS} shipments acknowledged with 201 by {CLIENTS} clients in \
         {flow_took:.1?}; Shipping SIGKILLed after {shipping_killed_at} acknowledged, Identity \
         killed with {logged_at_identity_kill} of them logged, when \
         {acknowledged_at_identity_kill} were acknowledged; \
         {lost} POSTs got no answer; Shipping stores {} shipments ({unacknowledged} without \
         a 201); Identity's log holds {} entries, {} distinct events, {} distinct shipments; \
         the restarted Identity received {delivered} deliveries of {distinct} events and \
         processed {processed}; total {:.1?}",
        stored.len(),
        entries.len(),
        logged_events.len(),
        logged_shipments.len(),
        started.elapsed()
    );
    drop(shipping);
}

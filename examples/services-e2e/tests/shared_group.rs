//! Two Identity processes share one consumer group and log each shipment exactly once.
//! Both run on the same PostgreSQL database with the same client id, so the same group
//! (`{client id}-shipmentcreated-consumer`); Shipping runs beside them as a third process.
//! The test proves:
//!
//! - **both instances consume**: each is ready (`/health/ready`: database, broker,
//!   consumer and relay up) and was assigned partitions of the group (its log says so once
//!   the second joined), and each logged `Processing shipment created: ...` for some of the
//!   shipments, but neither for all: they split the topic's partitions, as members of one
//!   group do (two groups would each process every shipment);
//! - **together they miss none**: the tracking numbers the two logs processed cover all
//!   [`SHIPMENTS`];
//! - **each shipment is logged exactly once** in the shared activity log: as many entries
//!   as shipments, for exactly the created shipment ids, no event id or shipment twice,
//!   still so after [`QUIET`];
//! - **under its request's trace id**: each `Processing shipment created: ...` line of
//!   either Identity carries the trace id Shipping's `shipment created` line for that
//!   tracking number carried (the request's, through the event's `traceparent`).
//!
//! The topic `shipping.shipment.created` is first given the three partitions the services
//! declare if it has fewer (a broker may hold it from a client's auto-creation, with one,
//! and one partition cannot be split): the count before and after is printed.
//!
//! The counts are printed (`--nocapture`). Every wait is bounded; the children are
//! killed on every path out of the test, and their logs' tails printed when it fails.
//!
//! ```sh
//! export PEGASUS_TEST_BOOTSTRAP=$(scripts/kafka start)
//! export PEGASUS_TEST_POSTGRES_URL=$(scripts/postgres start)
//! cargo test -p services-e2e --test shared_group -- --nocapture
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use event_contracts::topics;
use serde_json::{json, Value};
use services_e2e::{
    first_shipment, messages_after, register, settled_activity, shipment_id, until_ready, Service,
    ServiceProcess, Stage, CATCH_UP,
};
use test_support::{call, until, STEP};
use uuid::Uuid;

/// The partitions of `shipping.shipment.created`, as the services declare it.
const PARTITIONS: i32 = 3;
/// Shipments created.
const SHIPMENTS: usize = 90;
/// How long the log is watched for a late duplicate once complete.
const QUIET: Duration = Duration::from_secs(3);
/// The Identity processes' log filter: pegasus-events' consumer logs its partition
/// assignments at DEBUG.
const LOG_FILTER: &str = "info,pegasus_events::consumer=debug";

/// The partitions `lines` say were assigned to the process.
fn assigned(lines: &[Value]) -> BTreeSet<i64> {
    lines
        .iter()
        .filter(|line| line["fields"]["message"] == "partition assigned")
        .filter_map(|line| line["fields"]["partition"].as_i64())
        .collect()
}

/// The tracking numbers `process` logged as processed, and the partitions it received
/// from.
fn processed(process: &ServiceProcess) -> (HashSet<String>, BTreeSet<i64>) {
    let lines = process.log_lines();
    let tracking = messages_after(&lines, "Processing shipment created: ")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let partitions = lines
        .iter()
        .filter(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("Received message from"))
        })
        .filter_map(|line| line["fields"]["partition"].as_i64())
        .collect();
    (tracking, partitions)
}

/// The trace id of each line of `lines` whose message starts with `prefix`, by what follows
/// the prefix (or by the line's `tracking` field when `prefix` is the whole message).
fn trace_ids(lines: &[Value], prefix: &str) -> Vec<(String, Option<String>)> {
    lines
        .iter()
        .filter_map(|line| {
            let message = line["fields"]["message"].as_str()?;
            let rest = message.strip_prefix(prefix)?;
            let subject = if rest.is_empty() {
                line["fields"]["tracking"].as_str()?
            } else {
                rest
            };
            let trace_id = line["span"]["trace_id"].as_str().map(str::to_owned);
            Some((subject.to_owned(), trace_id))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_identity_processes_in_one_consumer_group_split_the_partitions_and_log_each_shipment_exactly_once_under_its_requests_trace_id(
) {
    let started = Instant::now();
    // Declared first: dropped last, it prints the children's logs when the test fails.
    let stage = Stage::new(
        env!("CARGO_BIN_EXE_identity"),
        env!("CARGO_BIN_EXE_shipping"),
    );
    let (partitions_before, partitions) = stage
        .ensure_partitions(topics::SHIPMENT_CREATED, PARTITIONS)
        .await;
    let identity_instance = stage.instance(Service::Identity, "shared").await;
    let shipping_instance = stage.instance(Service::Shipping, "shared").await;
    let shipping = stage.start(&shipping_instance, 0).await;
    let first = stage.start_logging(&identity_instance, 0, LOG_FILTER).await;
    until_ready(&first, STEP).await;
    let second = stage.start_logging(&identity_instance, 0, LOG_FILTER).await;
    until_ready(&second, STEP).await;
    until_ready(&shipping, STEP).await;
    // The second member has partitions once the group's rebalance completed; the first
    // is given its share in the same rebalance.
    until(
        STEP,
        "the second Identity assigned partitions",
        || async { assigned(&second.log_lines()) },
        |partitions| !partitions.is_empty(),
    )
    .await;

    // A user registered through the first, shipments created in Shipping.
    let user = register(first.address(), stage.run(), "shared").await;
    let tracking = |number: usize| format!("G{}-{number}", stage.run().simple());
    let mut created = HashSet::new();
    created.insert(first_shipment(shipping.address(), &user, &tracking(0)).await);
    for number in 1..SHIPMENTS {
        let answer = call(
            shipping.address(),
            "POST",
            "/api/shipments",
            Some(&user.token),
            Some(&json!({ "trackingNumber": tracking(number) })),
        )
        .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        created.insert(shipment_id(&answer.body));
    }
    assert_eq!(created.len(), SHIPMENTS);

    // Logged once each in the shared log, read through either instance.
    let entries = settled_activity(second.address(), &user, SHIPMENTS, CATCH_UP, QUIET).await;
    let logged_shipments: HashSet<Uuid> = entries.iter().map(|entry| entry.shipment_id).collect();
    let logged_events: HashSet<Uuid> = entries.iter().map(|entry| entry.event_id).collect();
    assert_eq!(entries.len(), SHIPMENTS, "entries = shipments created");
    assert_eq!(logged_events.len(), SHIPMENTS, "an event id logged twice");
    assert_eq!(
        logged_shipments, created,
        "the created shipments, each once"
    );

    // Both consumed a part, neither all; together all.
    let (by_first, first_partitions) = processed(&first);
    let (by_second, second_partitions) = processed(&second);
    let all: HashSet<String> = (0..SHIPMENTS).map(tracking).collect();
    let by_first: HashSet<String> = by_first.intersection(&all).cloned().collect();
    let by_second: HashSet<String> = by_second.intersection(&all).cloned().collect();
    assert!(
        !by_first.is_empty() && !by_second.is_empty(),
        "each instance processed some: {} and {}",
        by_first.len(),
        by_second.len()
    );
    assert!(
        by_first.len() < SHIPMENTS && by_second.len() < SHIPMENTS,
        "neither processed all (two groups would): {} and {}",
        by_first.len(),
        by_second.len()
    );
    let union: HashSet<String> = by_first.union(&by_second).cloned().collect();
    assert_eq!(union, all, "together they processed every shipment");

    // Each shipment's consumer lines carry the trace id of the request that created it,
    // as Shipping logged it: one trace id finds the flow in both services.
    let requested: HashMap<String, Option<String>> =
        trace_ids(&shipping.log_lines(), "shipment created")
            .into_iter()
            .collect();
    let mut consumed = trace_ids(&first.log_lines(), "Processing shipment created: ");
    consumed.extend(trace_ids(
        &second.log_lines(),
        "Processing shipment created: ",
    ));
    let consumed: Vec<_> = consumed
        .into_iter()
        .filter(|(tracking, _)| all.contains(tracking))
        .collect();
    assert!(consumed.len() >= SHIPMENTS, "every shipment's line read");
    for (tracking, trace_id) in &consumed {
        let request_trace = requested.get(tracking).cloned().flatten();
        assert!(
            trace_id.as_ref().is_some_and(|id| id.len() == 32),
            "{tracking}: the consumer's line has a trace id: {trace_id:?}"
        );
        assert_eq!(
            trace_id, &request_trace,
            "{tracking}: the consumer's trace id is the creating request's"
        );
    }
    let first_assigned = assigned(&first.log_lines());
    let second_assigned = assigned(&second.log_lines());
    assert!(!first_assigned.is_empty() && !second_assigned.is_empty());

    eprintln!(
        "shared_group: {} partitions (had {partitions_before}); {SHIPMENTS} shipments \
         created; the first Identity processed {} \
         (received from partitions {first_partitions:?}, assigned {first_assigned:?} over its \
         life), the second {} (partitions {second_partitions:?}, assigned \
         {second_assigned:?}), {} by both; the shared log holds {} entries, {} distinct \
         events, {} distinct shipments; total {:.1?}",
        partitions,
        by_first.len(),
        by_second.len(),
        by_first.intersection(&by_second).count(),
        entries.len(),
        logged_events.len(),
        logged_shipments.len(),
        started.elapsed()
    );
}

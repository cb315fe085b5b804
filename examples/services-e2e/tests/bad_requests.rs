//! A flood of bad requests does not disturb the event flow. Identity and Shipping run as
//! child processes, each on its own fresh PostgreSQL database; while one valid client
//! creates [`SHIPMENTS`] shipments, [`FLOODERS`] clients send bad requests to both
//! services without pause. The test proves:
//!
//! - **every bad request gets its 4xx with a JSON error, never a 5xx**: a missing,
//!   malformed, forged (another secret), expired or foreign-audience token is a 401; a
//!   malformed body, a missing or mistyped field, an invalid value, a bad path id or query
//!   a 400; another user's activity log a 403; a path no route serves a 404; a body over
//!   the limit a 413; a body not declared JSON a 415; each answer is exactly the expected
//!   status, `Content-Type: application/json`, and a body with a string `error`;
//! - **the flow is undisturbed**: the flood lasts from the first shipment until Identity
//!   logged the last; every valid POST gets its `201`, Shipping holds exactly
//!   the [`SHIPMENTS`] shipments, and Identity's activity log holds each exactly once (as
//!   many entries, the same shipment ids, no event id twice, still so after [`QUIET`]).
//!
//! The counts (bad requests per service and status) are printed (`--nocapture`). Every
//! wait is bounded; the children are killed on every path out of the test, and their
//! logs' tails printed when it fails.
//!
//! ```sh
//! export PEGASUS_TEST_BOOTSTRAP=$(scripts/kafka start)
//! export PEGASUS_TEST_POSTGRES_URL=$(scripts/postgres start)
//! cargo test -p services-e2e --test bad_requests -- --nocapture
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use services_e2e::{
    activity, first_shipment, register, settled_activity, shipment_id, stored_shipments,
    until_ready, Service, Stage, CATCH_UP,
};
use test_support::{call, exchange, until, STEP};
use uuid::Uuid;

/// Shipments the valid client creates.
const SHIPMENTS: usize = 200;
/// Clients sending bad requests at once.
const FLOODERS: usize = 3;
/// How long the log is watched for a late duplicate once complete.
const QUIET: Duration = Duration::from_secs(3);

/// One kind of bad request and the status it must get.
struct Bad {
    /// What it is, for the report.
    name: &'static str,
    service: Service,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expected: u16,
}

impl Bad {
    fn new(
        name: &'static str,
        service: Service,
        method: &'static str,
        path: impl Into<String>,
        expected: u16,
    ) -> Bad {
        Bad {
            name,
            service,
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            expected,
        }
    }

    fn token(mut self, token: &str) -> Bad {
        self.headers
            .push(("Authorization", format!("Bearer {token}")));
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Bad {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn json(self, body: &str) -> Bad {
        self.body("application/json", body)
    }

    fn body(mut self, content_type: &str, body: &str) -> Bad {
        self.headers.push(("Content-Type", content_type.to_owned()));
        self.body = body.as_bytes().to_vec();
        self
    }
}

/// Sends the bad requests in turn, from `first` on, until `stop`; the count of answers
/// per (service, status). Fails on an answer that is not the expected 4xx JSON error.
async fn flood(
    bad: Arc<Vec<Bad>>,
    first: usize,
    identity: SocketAddr,
    shipping: SocketAddr,
    stop: Arc<AtomicBool>,
) -> BTreeMap<(&'static str, u16), usize> {
    let mut counts = BTreeMap::new();
    let mut at = first;
    while !stop.load(Ordering::SeqCst) {
        let request = &bad[at % bad.len()];
        at += 1;
        let address = match request.service {
            Service::Identity => identity,
            Service::Shipping => shipping,
        };
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let answer = exchange(
            address,
            request.method,
            &request.path,
            &headers,
            &request.body,
        )
        .await
        .unwrap_or_else(|failure| panic!("{}: {failure}", request.name));
        assert_eq!(
            answer.status, request.expected,
            "{}: {}",
            request.name, answer.body
        );
        assert_eq!(
            answer.content_type.as_deref(),
            Some("application/json"),
            "{}",
            request.name
        );
        assert!(
            answer.body["error"].is_string(),
            "{}: {}",
            request.name,
            answer.body
        );
        *counts
            .entry((request.service.name(), answer.status))
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_requests_gets_4xx_json_errors_and_every_shipment_reaches_the_activity_log_once(
) {
    let started = Instant::now();
    // Declared first: dropped last, it prints the children's logs when the test fails.
    let stage = Stage::new(
        env!("CARGO_BIN_EXE_identity"),
        env!("CARGO_BIN_EXE_shipping"),
    );
    let identity_instance = stage.instance(Service::Identity, "flood").await;
    let shipping_instance = stage.instance(Service::Shipping, "flood").await;
    let identity = stage.start(&identity_instance, 0).await;
    let shipping = stage.start(&shipping_instance, 0).await;
    until_ready(&identity, STEP).await;
    until_ready(&shipping, STEP).await;

    let user = register(identity.address(), stage.run(), "flood").await;
    let other = register(identity.address(), stage.run(), "other").await;
    let tracking = |number: usize| format!("F{}-{number}", stage.run().simple());
    let mut created = HashSet::new();
    created.insert(first_shipment(shipping.address(), &user, &tracking(0)).await);

    // Tokens that must be refused: signed with another secret, expired an hour ago (far
    // beyond the 5 s of leeway), for another audience.
    let forged = stage
        .forged_jwt_keys()
        .issue(&user.id, &user.email)
        .expect("signed");
    let expired = stage
        .jwt_keys()
        .issue_claims(&stage.claims(&user.id, &user.email, 7_200, 3_600))
        .expect("signed");
    let foreign = stage
        .jwt_keys_for_audience("another-audience")
        .issue(&user.id, &user.email)
        .expect("signed");
    let oversized = format!(r#"{{"trackingNumber":"{}"}}"#, "X".repeat(70 * 1024));
    let valid = r#"{"trackingNumber":"NEVER-STORED"}"#;
    let shipments = "/api/shipments";
    let own_log = format!("/api/users/{}/activity", user.id);
    let other_log = format!("/api/users/{}/activity", other.id);
    use Service::{Identity, Shipping};
    let bad = Arc::new(vec![
        Bad::new("no token", Shipping, "POST", shipments, 401).json(valid),
        Bad::new("not a bearer token", Shipping, "POST", shipments, 401)
            .header("Authorization", "Basic dXNlcjpwYXNz")
            .json(valid),
        Bad::new("malformed token", Shipping, "POST", shipments, 401)
            .token("not.a.jwt")
            .json(valid),
        Bad::new("forged token", Shipping, "POST", shipments, 401)
            .token(&forged)
            .json(valid),
        Bad::new("expired token", Shipping, "POST", shipments, 401)
            .token(&expired)
            .json(valid),
        Bad::new("foreign audience", Shipping, "POST", shipments, 401)
            .token(&foreign)
            .json(valid),
        Bad::new("malformed JSON", Shipping, "POST", shipments, 400)
            .token(&user.token)
            .json(r#"{"trackingNumber":"#),
        Bad::new("missing field", Shipping, "POST", shipments, 400)
            .token(&user.token)
            .json("{}"),
        Bad::new("mistyped field", Shipping, "POST", shipments, 400)
            .token(&user.token)
            .json(r#"{"trackingNumber":42}"#),
        Bad::new("invalid tracking number", Shipping, "POST", shipments, 400)
            .token(&user.token)
            .json(r#"{"trackingNumber":"no spaces allowed"}"#),
        Bad::new("oversized body", Shipping, "POST", shipments, 413)
            .token(&user.token)
            .json(&oversized),
        Bad::new("not JSON", Shipping, "POST", shipments, 415)
            .token(&user.token)
            .body("text/plain", valid),
        Bad::new("bad shipment id", Shipping, "GET", "/api/shipments/x1", 400).token(&user.token),
        Bad::new(
            "bad page size",
            Shipping,
            "GET",
            "/api/shipments?pageSize=0",
            400,
        )
        .token(&user.token),
        Bad::new("unknown route", Shipping, "GET", "/api/parcels", 404).token(&user.token),
        Bad::new("expired token", Identity, "GET", own_log.clone(), 401).token(&expired),
        Bad::new("forged token", Identity, "GET", own_log.clone(), 401).token(&forged),
        Bad::new("no token", Identity, "GET", own_log, 401),
        Bad::new("another user's log", Identity, "GET", other_log, 403).token(&user.token),
        Bad::new("malformed JSON", Identity, "POST", "/api/users", 400).json("{\"email\":"),
        Bad::new("invalid email", Identity, "POST", "/api/users", 400)
            .json(r#"{"email":"no-at-sign","name":"x","password":"long enough password"}"#),
        Bad::new("oversized body", Identity, "POST", "/api/users", 413).json(&oversized),
        Bad::new("unknown route", Identity, "POST", "/api/nowhere", 404).json("{}"),
    ]);
    // The flood, from the first shipment to the last.
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|index| {
            tokio::spawn(flood(
                Arc::clone(&bad),
                index * 7,
                identity.address(),
                shipping.address(),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let flow_started = Instant::now();
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
    let flow_took = flow_started.elapsed();
    // The flood goes on until Identity consumed them all.
    until(
        CATCH_UP,
        "every shipment logged under the flood",
        || activity(identity.address(), &user),
        |entries| entries.len() >= SHIPMENTS,
    )
    .await;
    let consumed_took = flow_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut counts: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for flooder in flooders {
        let answered = tokio::time::timeout(STEP, flooder)
            .await
            .expect("the flood stopped")
            .expect("every bad request got its 4xx JSON error");
        for (key, count) in answered {
            *counts.entry(key).or_insert(0) += count;
        }
    }
    let bad_total: usize = counts.values().sum();
    assert!(
        bad_total >= bad.len(),
        "only {bad_total} bad requests sent, fewer than the {} kinds",
        bad.len()
    );

    // The flow: every shipment stored once and logged once.
    assert_eq!(created.len(), SHIPMENTS);
    let (stored, total) = stored_shipments(shipping.address(), &user.token).await;
    let stored: HashSet<Uuid> = stored.into_iter().collect();
    assert_eq!(
        total, SHIPMENTS,
        "Shipping holds exactly the valid shipments"
    );
    assert_eq!(stored, created);
    let entries = settled_activity(identity.address(), &user, SHIPMENTS, CATCH_UP, QUIET).await;
    let logged_shipments: HashSet<Uuid> = entries.iter().map(|entry| entry.shipment_id).collect();
    let logged_events: HashSet<Uuid> = entries.iter().map(|entry| entry.event_id).collect();
    assert_eq!(entries.len(), SHIPMENTS, "entries = shipments created");
    assert_eq!(logged_events.len(), SHIPMENTS, "an event id logged twice");
    assert_eq!(
        logged_shipments, created,
        "the created shipments, each once"
    );

    eprintln!(
        "bad_requests: {SHIPMENTS} shipments created in {flow_took:.1?} and logged by \
         Identity within {consumed_took:.1?} while {FLOODERS} clients sent {bad_total} bad requests of {} kinds, answered (service, status): \
         {counts:?}, no 5xx; Shipping stores {total}; Identity's log holds {} entries, {} \
         distinct events, {} distinct shipments; total {:.1?}",
        bad.len(),
        entries.len(),
        logged_events.len(),
        logged_shipments.len(),
        started.elapsed()
    );
}

//! `--scenario`: the design's "Create Shipment" flow end to end, over HTTP only, against
//! the two services the demo started. It succeeds only when every step was observed: each
//! step prints one numbered line with what it saw, and the first step that fails or runs
//! out of time prints what it expected and what it saw instead, and ends the scenario.
//!
//! Every wait is bounded by [`STEP_BOUND`]: the embedded broker's first group join alone
//! takes about 3 s, a real broker's a few more; 30 s is far beyond both.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use event_contracts::topics;
use serde_json::{json, Value};

use crate::http::{self, Response};

/// How long one step may wait for the events to travel.
pub(crate) const STEP_BOUND: Duration = Duration::from_secs(30);

/// How long between two tries of a step that waits.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// The design's tracking number; a fresh one is used if an earlier run on the same
/// databases took it.
const TRACKING_NUMBER: &str = "TRACK123";

/// The scenario user's password (a new user each run: its email is unique).
const PASSWORD: &str = "correct horse battery staple";

/// A step that was not observed.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What the step expected.
    expected: String,
    /// What it saw instead.
    seen: String,
}

impl Failure {
    fn new(expected: impl Into<String>, seen: impl std::fmt::Display) -> Self {
        Failure {
            expected: expected.into(),
            seen: seen.to_string(),
        }
    }
}

impl From<http::HttpError> for Failure {
    fn from(error: http::HttpError) -> Self {
        Failure::new("an HTTP answer", error)
    }
}

/// Numbers and prints the steps.
struct Steps {
    done: u32,
}

impl Steps {
    /// Prints step `title` with what `observed` returned, or its failure.
    fn record<T>(&mut self, title: &str, observed: Result<(T, String), Failure>) -> Result<T, ()> {
        self.done += 1;
        match observed {
            Ok((value, seen)) => {
                println!("{:>2}. {title}: {seen}", self.done);
                Ok(value)
            }
            Err(failure) => {
                println!("{:>2}. {title}: FAILED", self.done);
                println!("    expected: {}", failure.expected);
                println!("    seen:     {}", failure.seen);
                Err(())
            }
        }
    }
}

/// Where the services listen.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Services {
    /// Identity's address.
    pub(crate) identity: SocketAddr,
    /// Shipping's address.
    pub(crate) shipping: SocketAddr,
}

/// Runs every step; `true` when each was observed (each printed its line), `false` at the
/// first that was not (it printed what it expected and saw).
pub(crate) async fn run(services: Services) -> bool {
    let started = Instant::now();
    let mut steps = Steps { done: 0 };
    let outcome = all_steps(services, &mut steps).await;
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            println!(
                "scenario passed: all {} steps observed in {seconds:.1} s",
                steps.done
            );
            true
        }
        Err(()) => {
            println!(
                "scenario FAILED at step {} after {seconds:.1} s",
                steps.done
            );
            false
        }
    }
}

async fn all_steps(s: Services, steps: &mut Steps) -> Result<(), ()> {
    let email = format!("ada-{}@example.com", uuid::Uuid::new_v4().simple());
    let user_id = steps.record(
        "Register a user with Identity (POST /api/users)",
        register(s, &email).await,
    )?;
    let token = steps.record(
        "Log in (POST /api/auth/token)",
        log_in(s, &email, &user_id).await,
    )?;
    let created = steps.record(
        "Wait until Shipping knows the user from identity.user.created",
        first_shipment(s, &token).await,
    )?;
    let (shipment_id, tracking) = steps.record(
        "Create the shipment (POST /api/shipments)",
        describe_created(&created, &email),
    )?;
    steps.record(
        "Wait until Identity consumed shipping.shipment.created",
        activity_shows(s, &token, &user_id, &shipment_id).await,
    )?;
    steps.record(
        "Read the activity log (GET /api/users/{id}/activity)",
        read_activity(s, &token, &user_id, &shipment_id, &tracking).await,
    )?;
    for (from, to) in [("Created", "InTransit"), ("InTransit", "Delivered")] {
        steps.record(
            &format!("Move the shipment {from} -> {to} (PUT /api/shipments/{{id}}/status)"),
            change_status(s, &token, &shipment_id, from, to).await,
        )?;
    }
    steps.record(
        "An illegal transition Delivered -> InTransit is refused",
        illegal_transition(s, &token, &shipment_id).await,
    )?;
    steps.record(
        "Deactivate the user (POST /api/users/{id}/deactivate)",
        deactivate(s, &token, &user_id).await,
    )?;
    steps.record(
        "Wait until Shipping refuses the user after identity.user.deactivated",
        refused(s, &token, &shipment_id).await,
    )?;
    steps.record(
        "Both services serve their metrics (GET /metrics)",
        metrics(s).await,
    )?;
    Ok(())
}

type Observed<T> = Result<(T, String), Failure>;

async fn register(s: Services, email: &str) -> Observed<String> {
    let body = json!({"email": email, "name": "Ada Lovelace", "password": PASSWORD});
    let answer = http::call(s.identity, "POST", "/api/users", None, Some(&body)).await?;
    let user_id = answer.text_at("/user/id");
    match (answer.status, user_id, answer.text_at("/eventPublished")) {
        (201, Some(id), Some(topic)) if topic == topics::USER_CREATED => {
            let seen = format!("201, user {id} ({email}), event {topic} saved with it");
            Ok((id, seen))
        }
        _ => Err(Failure::new(
            format!(
                "201 with the user's id and eventPublished {}",
                topics::USER_CREATED
            ),
            answer,
        )),
    }
}

async fn log_in(s: Services, email: &str, user_id: &str) -> Observed<String> {
    let body = json!({"email": email, "password": PASSWORD});
    let answer = http::call(s.identity, "POST", "/api/auth/token", None, Some(&body)).await?;
    match (answer.status, answer.text_at("/accessToken")) {
        (200, Some(token)) if answer.text_at("/userId").as_deref() == Some(user_id) => {
            let seen = format!(
                "200, a {}-character bearer token for user {user_id}",
                token.len()
            );
            Ok((token, seen))
        }
        _ => Err(Failure::new(
            format!("200 with an accessToken for user {user_id}"),
            answer,
        )),
    }
}

/// Creates the shipment, trying again while Shipping answers 403 (it has not consumed the
/// user's `identity.user.created` yet); the 201's answer.
async fn first_shipment(s: Services, token: &str) -> Observed<Response> {
    let started = Instant::now();
    let mut tracking = TRACKING_NUMBER.to_owned();
    let mut refusals = 0;
    loop {
        let body = json!({"trackingNumber": tracking});
        let answer = http::call(
            s.shipping,
            "POST",
            "/api/shipments",
            Some(token),
            Some(&body),
        )
        .await?;
        match answer.status {
            201 => {
                let seen = format!(
                    "{refusals} x 403 (user not in Shipping's cache yet), then 201 after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok((answer, seen));
            }
            403 if started.elapsed() < STEP_BOUND => {
                refusals += 1;
                tokio::time::sleep(RETRY_EVERY).await;
            }
            // Databases kept from an earlier run (--data-dir) hold TRACK123 already.
            409 if tracking == TRACKING_NUMBER => {
                tracking = format!(
                    "{TRACKING_NUMBER}-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                );
            }
            _ => {
                return Err(Failure::new(
                    format!(
                        "403 while the user is unknown, then 201 within {} s",
                        STEP_BOUND.as_secs()
                    ),
                    format!("after {refusals} x 403: {answer}"),
                ))
            }
        }
    }
}

fn describe_created(answer: &Response, email: &str) -> Observed<(String, String)> {
    let found = (
        answer.text_at("/shipment/id"),
        answer.text_at("/shipment/trackingNumber"),
        answer.text_at("/shipment/status"),
        answer.text_at("/createdBy/email"),
        answer.text_at("/eventPublished"),
    );
    match found {
        (Some(id), Some(tracking), Some(status), Some(by), Some(topic))
            if status == "Created" && by == email && topic == topics::SHIPMENT_CREATED =>
        {
            let seen = format!(
                "201, shipment {id} ({tracking}), status {status}, createdBy {by}, event {topic}"
            );
            Ok(((id, tracking), seen))
        }
        _ => Err(Failure::new(
            format!(
                "a shipment with status Created, createdBy {email}, eventPublished {}",
                topics::SHIPMENT_CREATED
            ),
            answer,
        )),
    }
}

/// The activity-log entries of `shipment_id` in an answer.
fn entries_of(answer: &Response, shipment_id: &str) -> Vec<Value> {
    answer
        .json()
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter(|item| item.get("shipmentId").and_then(Value::as_str) == Some(shipment_id))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn activity_path(user_id: &str) -> String {
    format!("/api/users/{user_id}/activity")
}

async fn activity_shows(
    s: Services,
    token: &str,
    user_id: &str,
    shipment_id: &str,
) -> Observed<()> {
    let started = Instant::now();
    let mut polls = 0;
    loop {
        let answer = http::call(
            s.identity,
            "GET",
            &activity_path(user_id),
            Some(token),
            None,
        )
        .await?;
        polls += 1;
        if answer.status == 200 && !entries_of(&answer, shipment_id).is_empty() {
            let seen = format!(
                "the activity log holds the shipment after {:.1} s ({polls} reads)",
                started.elapsed().as_secs_f64()
            );
            return Ok(((), seen));
        }
        if answer.status != 200 || started.elapsed() >= STEP_BOUND {
            return Err(Failure::new(
                format!(
                    "200 with an entry for shipment {shipment_id} within {} s",
                    STEP_BOUND.as_secs()
                ),
                answer,
            ));
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

async fn read_activity(
    s: Services,
    token: &str,
    user_id: &str,
    shipment_id: &str,
    tracking: &str,
) -> Observed<()> {
    let answer = http::call(
        s.identity,
        "GET",
        &activity_path(user_id),
        Some(token),
        None,
    )
    .await?;
    let entries = entries_of(&answer, shipment_id);
    let entry = match entries.as_slice() {
        [entry] if answer.status == 200 => entry,
        _ => {
            return Err(Failure::new(
                format!("200 with exactly one entry for shipment {shipment_id}"),
                answer,
            ))
        }
    };
    let field = |name: &str| entry.get(name).and_then(Value::as_str).unwrap_or("?");
    if field("kind") != "ShipmentCreatedEvent" || field("trackingNumber") != tracking {
        return Err(Failure::new(
            format!("a ShipmentCreatedEvent entry for {tracking}"),
            answer,
        ));
    }
    let seen = format!(
        "200, exactly one entry: {} {} (event {}, recorded {})",
        field("kind"),
        field("trackingNumber"),
        field("eventId"),
        field("recordedAt")
    );
    Ok(((), seen))
}

fn status_path(shipment_id: &str) -> String {
    format!("/api/shipments/{shipment_id}/status")
}

async fn change_status(
    s: Services,
    token: &str,
    shipment_id: &str,
    from: &str,
    to: &str,
) -> Observed<()> {
    let body = json!({"status": to});
    let answer = http::call(
        s.shipping,
        "PUT",
        &status_path(shipment_id),
        Some(token),
        Some(&body),
    )
    .await?;
    let found = (
        answer.text_at("/previousStatus"),
        answer.text_at("/shipment/status"),
        answer.text_at("/eventPublished"),
    );
    match found {
        (Some(previous), Some(now), Some(topic))
            if answer.status == 200
                && previous == from
                && now == to
                && topic == topics::SHIPMENT_STATUS_CHANGED =>
        {
            Ok(((), format!("200, {previous} -> {now}, event {topic}")))
        }
        _ => Err(Failure::new(
            format!(
                "200, previousStatus {from}, status {to}, eventPublished {}",
                topics::SHIPMENT_STATUS_CHANGED
            ),
            answer,
        )),
    }
}

/// `PUT .../status` to InTransit on the delivered shipment: 409 while its user is active,
/// 403 once Shipping knows the user is deactivated (the user is checked first). It changes
/// nothing either way, so it can be tried again and again.
async fn back_to_in_transit(s: Services, token: &str, shipment_id: &str) -> Observed<Response> {
    let body = json!({"status": "InTransit"});
    let answer = http::call(
        s.shipping,
        "PUT",
        &status_path(shipment_id),
        Some(token),
        Some(&body),
    )
    .await?;
    Ok((answer, String::new()))
}

async fn illegal_transition(s: Services, token: &str, shipment_id: &str) -> Observed<()> {
    let (answer, _) = back_to_in_transit(s, token, shipment_id).await?;
    let message = answer.text_at("/message").unwrap_or_default();
    if answer.status == 409 && answer.text_at("/error").as_deref() == Some("conflict") {
        Ok(((), format!("409 \"{message}\"")))
    } else {
        Err(Failure::new("409 with a JSON conflict error", answer))
    }
}

async fn deactivate(s: Services, token: &str, user_id: &str) -> Observed<()> {
    let path = format!("/api/users/{user_id}/deactivate");
    let answer = http::call(s.identity, "POST", &path, Some(token), None).await?;
    let active = answer
        .json()
        .pointer("/user/active")
        .and_then(Value::as_bool);
    let topic = answer.text_at("/eventPublished");
    match (answer.status, active, topic) {
        (200, Some(false), Some(topic)) if topic == topics::USER_DEACTIVATED => Ok((
            (),
            format!("200, user {user_id} inactive, event {topic} saved with it"),
        )),
        _ => Err(Failure::new(
            format!(
                "200 with the user inactive and eventPublished {}",
                topics::USER_DEACTIVATED
            ),
            answer,
        )),
    }
}

async fn refused(s: Services, token: &str, shipment_id: &str) -> Observed<()> {
    let started = Instant::now();
    let mut conflicts = 0;
    loop {
        let (answer, _) = back_to_in_transit(s, token, shipment_id).await?;
        match answer.status {
            403 => {
                let message = answer.text_at("/message").unwrap_or_default();
                let seen = format!(
                    "{conflicts} x 409 (user still active in Shipping's cache), then 403 \"{message}\" after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(((), seen));
            }
            409 if started.elapsed() < STEP_BOUND => {
                conflicts += 1;
                tokio::time::sleep(RETRY_EVERY).await;
            }
            _ => {
                return Err(Failure::new(
                    format!("403 within {} s", STEP_BOUND.as_secs()),
                    format!("after {conflicts} x 409: {answer}"),
                ))
            }
        }
    }
}

/// Both `/metrics` answer with pegasus-events' series; the two services share the
/// process's one Prometheus recorder, so each shows the same registry.
async fn metrics(s: Services) -> Observed<()> {
    const SERIES: &str = "kafka_events_published_total";
    let mut seen = Vec::new();
    for (name, address) in [("Identity", s.identity), ("Shipping", s.shipping)] {
        let answer = http::call(address, "GET", "/metrics", None, None).await?;
        if answer.status != 200 || !answer.body.contains(SERIES) {
            return Err(Failure::new(format!("{name}: 200 with {SERIES}"), answer));
        }
        let lines = answer
            .body
            .lines()
            .filter(|line| line.starts_with(SERIES))
            .count();
        seen.push(format!("{name} 200 ({lines} {SERIES} series)"));
    }
    Ok(((), seen.join(", ")))
}

//! The Identity and Shipping services under load: shipments created per second over HTTP
//! (each saved with its `ShipmentCreatedEvent` through the outbox, in one transaction), the
//! rate at which they reach Identity's activity log, and the time from Shipping's `201` to
//! the shipment's entry in that log. Two setups, one after the other in the same run:
//!
//! - **embedded defaults**: the demo as a child process (this crate's `demo` binary, which
//!   is `pegasus_demo::run_process`, what `cargo run -p pegasus-demo` runs): both services
//!   and the embedded broker (librdkafka's mock cluster) in one process, each service on
//!   SQLite, logs at the demo's default `info`.
//! - **Kafka + PostgreSQL**: each service as its own process (this crate's `identity` and
//!   `shipping` binaries, started by the e2e tests' harness; logs at `info`, JSON, to a
//!   file), against the Apache Kafka broker of `PEGASUS_BENCH_BOOTSTRAP`, each service on a
//!   new database of the PostgreSQL server of `PEGASUS_BENCH_POSTGRES_URL`.
//!
//! Every setup goes through the same steps, with users registered through Identity's API
//! and tokens it issued:
//!
//! 1. **Warm-up.** Each user's first shipment is created as soon as Shipping knows the user
//!    (it answers 403 until it consumed the `UserCreatedEvent`), the latency user creates
//!    [`Plan::warm_up`] more, and the bench waits until Identity logged them all. Identity's
//!    consumer group is new, so it first reads whatever the topic held before; shipments
//!    spread over every partition make sure it is past that before anything is timed.
//! 2. **Throughput.** [`Plan::clients`] clients, each with its own user and its own
//!    keep-alive connection, create [`Plan::shipments`] shipments in all, each client
//!    sending its next request as soon as its last was answered (a closed loop). Every
//!    answer must be a `201`. "created/s" is the shipments over the time from the first
//!    request to the last `201`, on this process's monotonic clock. Only then are the
//!    activity logs read (so that reading them does not compete with the requests), every
//!    250 ms until they hold every shipment exactly once; "logged/s" is the shipments over
//!    the time from the first request (wall clock) to the latest of their entries'
//!    `recordedAt`, and "last entry after last 201" how far the event flow trailed the
//!    requests.
//! 3. **Latency.** One user, one shipment every [`Plan::interval`] ([`Plan::paced`] in
//!    all), at a fixed offered rate: each `POST` starts on its tick whatever the earlier
//!    ones are doing (an open loop), on a new connection. A shipment's latency runs from
//!    the moment this process had its `201` (`SystemTime::now()` once the answer was read)
//!    to its entry's `recordedAt`: Identity's wall clock, the same machine's, in
//!    microseconds, taken by its inbox handler when it writes the entry (the entry becomes
//!    readable when that transaction commits, a little later). So no polling enters the
//!    figure: the log is read once the last shipment was sent, until it holds them all, and
//!    each entry is found by its shipment id. Median, p99 and max over every shipment sent;
//!    the count measured must equal the count sent. The time each `POST` took to its `201`
//!    is reported beside it.
//!
//! Beside the rates, the machine's CPU over the throughput step, from `/proc/stat` (busy
//! share of all cores) and `/proc/<pid>/stat` (the services' processes and this one): two
//! cores shared by the client, the services, the broker and PostgreSQL are what bound these
//! figures when the machine is busy throughout.
//!
//! `PEGASUS_BENCH_CLIENTS=<n>` sets the throughput step's clients (an experiment's knob).
//!
//! Run with `scripts/bench` (starts a broker and PostgreSQL), or `cargo bench -p
//! services-e2e --bench load` with `PEGASUS_BENCH_BOOTSTRAP` and
//! `PEGASUS_BENCH_POSTGRES_URL` (or the `PEGASUS_TEST_` ones) set; without them it fails,
//! naming them. Without `--bench` (as `cargo test --all-targets` runs it) it does a smoke
//! run of the same steps with a few shipments; no timing is checked, only that every
//! shipment was answered `201` and logged once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::json;
use services_e2e::{
    activity, first_shipment, register, shipment_id, until_ready, until_ready_at, DemoProcess,
    Entry, Service, Stage, User, CATCH_UP,
};
use test_support::{call, until, Answer, KeepAlive, STEP};
use tokio::task::JoinSet;
use uuid::Uuid;

/// How often the activity logs are read while waiting for them to fill.
const LOG_POLL: Duration = Duration::from_millis(250);

/// How much load each step puts on the services.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Concurrent clients of the throughput step, one user and one connection each.
    clients: usize,
    /// Shipments the throughput step creates, over all clients.
    shipments: usize,
    /// Shipments the latency user creates during the warm-up, beyond its first.
    warm_up: usize,
    /// Shipments the latency step creates.
    paced: usize,
    /// Between two shipments of the latency step.
    interval: Duration,
}

/// `cargo bench`: figures worth reporting.
const FULL: Plan = Plan {
    clients: 16,
    shipments: 4_000,
    warm_up: 30,
    paced: 500,
    interval: Duration::from_millis(10),
};

/// `cargo test`: every step once, quickly.
const SMOKE: Plan = Plan {
    clients: 4,
    shipments: 20,
    warm_up: 2,
    paced: 20,
    interval: Duration::from_millis(10),
};

/// The first of the variables `names` that is set and not empty; the process fails
/// naming them otherwise (the convention of `benches/`: a bench never skips a setup).
fn env_var(names: &[&str]) -> String {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| {
            eprintln!(
                "load bench: set {} (the Kafka + PostgreSQL setup needs it), or run scripts/bench",
                names.join(" or ")
            );
            std::process::exit(1);
        })
}

/// Where the two services of one setup listen.
#[derive(Clone, Copy, Debug)]
struct Services {
    identity: SocketAddr,
    shipping: SocketAddr,
}

/// What one setup measured.
struct Figures {
    setup: &'static str,
    throughput: Throughput,
    latency: Latency,
}

struct Throughput {
    /// Shipments over first request to last `201`.
    created_per_second: f64,
    /// Shipments over first request to the latest `recordedAt`.
    logged_per_second: f64,
    /// The latest `recordedAt` less the last `201`'s wall-clock time.
    trailing: Duration,
    cpu: CpuShare,
}

struct Latency {
    /// `recordedAt` less the `201`'s arrival, one per shipment, in microseconds (signed:
    /// two clocks' readings, though of one machine's clock).
    to_log: Vec<i64>,
    /// Request start to `201`, one per shipment, in microseconds.
    to_created: Vec<i64>,
    sent: usize,
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mut plan = if full { FULL } else { SMOKE };
    // A knob for experiments: does the rate move with the clients (a bound of the services'
    // own concurrency) or not (the CPU, a lock)?
    if let Some(clients) = std::env::var("PEGASUS_BENCH_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
    {
        plan.clients = clients;
    }
    // Read first: a missing variable fails the run before the first setup starts.
    let bootstrap = env_var(&["PEGASUS_BENCH_BOOTSTRAP", "PEGASUS_TEST_BOOTSTRAP"]);
    let postgres = env_var(&["PEGASUS_BENCH_POSTGRES_URL", "PEGASUS_TEST_POSTGRES_URL"]);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // The figures are absolute, so whatever else keeps the machine busy moves them: say
    // how busy it was before anything of the bench ran.
    let quiet = cpu_ticks(&[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_ticks(&[]).since(&quiet, 1);
    println!(
        "machine before the bench: {:.0} % busy (other processes)",
        before.busy * 100.0
    );
    println!(
        "load bench ({} mode, {cores} cores): throughput {} clients (one user and one keep-alive \
         connection each, closed loop) x {} shipments in all; latency one user, one shipment \
         every {} ms (offered {:.0}/s, open loop, a connection each) x {}; warm-up {} + one per \
         user; Kafka + PostgreSQL: broker {bootstrap}",
        if full { "full" } else { "smoke" },
        plan.clients,
        plan.shipments,
        plan.interval.as_millis(),
        1.0 / plan.interval.as_secs_f64(),
        plan.paced,
        plan.warm_up,
    );

    let embedded = {
        let demo = DemoProcess::start(env!("CARGO_BIN_EXE_demo")).await;
        let services = Services {
            identity: demo.identity(),
            shipping: demo.shipping(),
        };
        until_ready_at(services.identity, "Identity ready", STEP).await;
        until_ready_at(services.shipping, "Shipping ready", STEP).await;
        measure(
            "embedded defaults",
            plan,
            services,
            &[demo.id()],
            Uuid::now_v7(),
        )
        .await
    };
    print_figures(&embedded);

    let kafka = {
        let stage = Stage::with_servers(
            env!("CARGO_BIN_EXE_identity"),
            env!("CARGO_BIN_EXE_shipping"),
            bootstrap,
            postgres,
        );
        let identity = stage.instance(Service::Identity, "load").await;
        let shipping = stage.instance(Service::Shipping, "load").await;
        let identity = stage.start(&identity, 0).await;
        let shipping = stage.start(&shipping, 0).await;
        until_ready(&identity, STEP).await;
        until_ready(&shipping, STEP).await;
        let services = Services {
            identity: identity.address(),
            shipping: shipping.address(),
        };
        measure(
            "Kafka + PostgreSQL",
            plan,
            services,
            &[identity.id(), shipping.id()],
            stage.run(),
        )
        .await
    };
    print_figures(&kafka);

    print_table(plan, &[embedded, kafka]);
}

/// The three steps on one setup's `services`, whose processes are `pids`.
async fn measure(
    setup: &'static str,
    plan: Plan,
    services: Services,
    pids: &[u32],
    run: Uuid,
) -> Figures {
    let (loaders, latency_user) = warm_up(plan, services, run).await;
    let throughput = throughput(plan, services, &loaders, pids, run).await;
    let latency = latency(plan, services, &latency_user, run).await;
    Figures {
        setup,
        throughput,
        latency,
    }
}

/// Registers the users, creates the warm-up shipments and waits until Identity logged
/// them: the throughput step's users, and the latency step's.
async fn warm_up(plan: Plan, services: Services, run: Uuid) -> (Vec<User>, User) {
    let mut users = Vec::new();
    // One at a time: registering hashes a password, and these are not what is measured.
    for n in 0..=plan.clients {
        let name = if n == plan.clients {
            "latency".to_owned()
        } else {
            format!("load-{n}")
        };
        users.push(register(services.identity, run, &name).await);
    }
    let mut first = JoinSet::new();
    for (n, user) in users.iter().cloned().enumerate() {
        first.spawn(async move {
            let tracking = format!("W{}-{n}", run.simple());
            first_shipment(services.shipping, &user, &tracking).await
        });
    }
    while let Some(created) = first.join_next().await {
        created.expect("first shipment");
    }
    let latency_user = users.pop().expect("the latency user");
    let mut connection = KeepAlive::new(services.shipping);
    for n in 0..plan.warm_up {
        let tracking = format!("W{}-x{n}", run.simple());
        let answer = post_shipment(&mut connection, &latency_user, &tracking)
            .await
            .unwrap_or_else(|failure| panic!("warm-up shipment: {failure}"));
        assert_eq!(answer.status, 201, "warm-up shipment: {}", answer.body);
    }
    for (user, count) in users
        .iter()
        .map(|user| (user, 1))
        .chain([(&latency_user, 1 + plan.warm_up)])
    {
        until(
            CATCH_UP,
            "the warm-up shipments in the activity log",
            || activity(services.identity, user),
            |entries| entries.len() >= count,
        )
        .await;
    }
    (users, latency_user)
}

/// The throughput step: `plan.clients` closed-loop clients create `plan.shipments`, then
/// the activity logs are read until they hold each exactly once.
async fn throughput(
    plan: Plan,
    services: Services,
    users: &[User],
    pids: &[u32],
    run: Uuid,
) -> Throughput {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    let cpu_before = cpu_ticks(pids);
    let started_wall = SystemTime::now();
    let started = Instant::now();
    for user in users.iter().cloned() {
        let next = Arc::clone(&next);
        clients.spawn(async move {
            let mut connection = KeepAlive::new(services.shipping);
            let mut created = Vec::new();
            loop {
                let number = next.fetch_add(1, Ordering::Relaxed);
                if number >= plan.shipments {
                    return (user, created);
                }
                let tracking = format!("L{}-{number}", run.simple());
                let answer = post_shipment(&mut connection, &user, &tracking)
                    .await
                    .unwrap_or_else(|failure| panic!("shipment {number}: {failure}"));
                assert_eq!(
                    answer.status, 201,
                    "shipment {number}: {} {}",
                    answer.status, answer.body
                );
                created.push(shipment_id(&answer.body));
            }
        });
    }
    let mut created: Vec<(User, Vec<Uuid>)> = Vec::new();
    while let Some(client) = clients.join_next().await {
        created.push(client.expect("a client"));
    }
    let elapsed = started.elapsed();
    let last_created = SystemTime::now();
    let cpu_after = cpu_ticks(pids);
    let sent: usize = created.iter().map(|(_, ids)| ids.len()).sum();
    assert_eq!(sent, plan.shipments, "every shipment answered 201");

    // One user's log at a time: the figure comes from the entries' own `recordedAt`, so
    // reading less often only delays the end of the wait, and costs Identity less while it
    // is still consuming.
    let mut latest: Option<DateTime<Utc>> = None;
    for (user, ids) in &created {
        let wanted: HashSet<Uuid> = ids.iter().copied().collect();
        let entries = logged(services.identity, user, &wanted).await;
        latest = entries
            .values()
            .map(|entry| entry.recorded_at)
            .chain(latest)
            .max();
    }
    let latest = latest.expect("entries");
    let started_at = DateTime::<Utc>::from(started_wall);
    let to_log = (latest - started_at).to_std().unwrap_or_default();
    let trailing = (latest - DateTime::<Utc>::from(last_created))
        .to_std()
        .unwrap_or_default();
    Throughput {
        created_per_second: plan.shipments as f64 / elapsed.as_secs_f64(),
        logged_per_second: plan.shipments as f64 / to_log.as_secs_f64(),
        trailing,
        cpu: cpu_after.since(&cpu_before, plan.shipments),
    }
}

/// Reads `user`'s activity log every [`LOG_POLL`] until it holds an entry for each
/// shipment of `wanted` (within [`CATCH_UP`]); those entries by shipment id. Fails when a
/// shipment has two entries.
async fn logged(identity: SocketAddr, user: &User, wanted: &HashSet<Uuid>) -> HashMap<Uuid, Entry> {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let entries = activity(identity, user).await;
        let mut found = HashMap::new();
        for entry in entries
            .into_iter()
            .filter(|entry| wanted.contains(&entry.shipment_id))
        {
            let twice = found.insert(entry.shipment_id, entry);
            assert!(
                twice.is_none(),
                "shipment {} logged twice",
                entry.shipment_id
            );
        }
        if found.len() == wanted.len() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} shipments in {}'s activity log after {CATCH_UP:?}",
            found.len(),
            wanted.len(),
            user.email
        );
        tokio::time::sleep(LOG_POLL).await;
    }
}

/// The latency step: one shipment per `plan.interval`, each timed from its `201` to its
/// entry's `recordedAt`.
async fn latency(plan: Plan, services: Services, user: &User, run: Uuid) -> Latency {
    let mut ticks = tokio::time::interval(plan.interval);
    let mut requests = JoinSet::new();
    for number in 0..plan.paced {
        ticks.tick().await;
        let token = user.token.clone();
        requests.spawn(async move {
            let tracking = format!("P{}-{number}", run.simple());
            let sent = Instant::now();
            let answer = call(
                services.shipping,
                "POST",
                "/api/shipments",
                Some(&token),
                Some(&json!({ "trackingNumber": tracking })),
            )
            .await;
            let answered = SystemTime::now();
            let took = sent.elapsed();
            assert_eq!(
                answer.status, 201,
                "paced shipment {number}: {}",
                answer.body
            );
            (shipment_id(&answer.body), answered, took)
        });
    }
    let mut created = Vec::new();
    while let Some(request) = requests.join_next().await {
        created.push(request.expect("a paced shipment"));
    }
    let wanted: HashSet<Uuid> = created.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(wanted.len(), plan.paced, "one shipment id per 201");
    let entries = logged(services.identity, user, &wanted).await;
    let mut to_log = Vec::new();
    let mut to_created = Vec::new();
    for (id, answered, took) in created {
        let entry = entries.get(&id).expect("every shipment logged");
        let micros = (entry.recorded_at - DateTime::<Utc>::from(answered)).num_microseconds();
        to_log.push(micros.expect("within range"));
        to_created.push(i64::try_from(took.as_micros()).unwrap_or(i64::MAX));
    }
    assert_eq!(
        to_log.len(),
        plan.paced,
        "a latency for every shipment sent"
    );
    Latency {
        to_log,
        to_created,
        sent: plan.paced,
    }
}

/// Median, p99 and max of `micros`, in milliseconds: the value at rank ⌈q·n⌉ of the
/// sorted values (the upper one of an even count for the median).
fn quantiles(micros: &[i64]) -> (f64, f64, f64) {
    let mut sorted = micros.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64 / 1_000.0
    };
    (sorted[sorted.len() / 2] as f64 / 1_000.0, at(0.99), at(1.0))
}

fn print_figures(figures: &Figures) {
    let t = &figures.throughput;
    let (median, p99, max) = quantiles(&figures.latency.to_log);
    let (post_median, post_p99, _) = quantiles(&figures.latency.to_created);
    println!(
        "{}: created {:.0}/s over HTTP, logged {:.0}/s, last entry {:.0} ms after the last 201; \
         201 to activity log median {median:.2} ms, p99 {p99:.2} ms, max {max:.2} ms \
         ({} of {} shipments); POST to 201 median {post_median:.2} ms, p99 {post_p99:.2} ms; \
         {}",
        figures.setup,
        t.created_per_second,
        t.logged_per_second,
        t.trailing.as_secs_f64() * 1_000.0,
        figures.latency.to_log.len(),
        figures.latency.sent,
        t.cpu,
    );
}

fn print_table(plan: Plan, all: &[Figures]) {
    println!();
    println!(
        "| setup | created/s over HTTP ({} clients) | logged/s | last entry after last 201 | \
         201 to activity log (one every {} ms): median | p99 | max | measured / sent | POST to \
         201: median / p99 | CPU during the requests |",
        plan.clients,
        plan.interval.as_millis()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for figures in all {
        let t = &figures.throughput;
        let (median, p99, max) = quantiles(&figures.latency.to_log);
        let (post_median, post_p99, _) = quantiles(&figures.latency.to_created);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} ms | {median:.2} ms | {p99:.2} ms | {max:.2} ms | {} / {} \
             | {post_median:.2} / {post_p99:.2} ms | {} |",
            figures.setup,
            t.created_per_second,
            t.logged_per_second,
            t.trailing.as_secs_f64() * 1_000.0,
            figures.latency.to_log.len(),
            figures.latency.sent,
            t.cpu,
        );
    }
}

/// CPU clock ticks: the whole machine's (busy and in all, every core) and the given
/// processes' and this one's (user and system, every thread), read at one moment.
struct Ticks {
    busy: u64,
    /// Idle with a disk write or read outstanding: SQLite's and PostgreSQL's syncs.
    iowait: u64,
    all: u64,
    services: u64,
    client: u64,
}

/// The machine's busy share and the CPU per shipment of the services and of this client
/// over an interval.
struct CpuShare {
    busy: f64,
    iowait: f64,
    services_micros: f64,
    client_micros: f64,
    rest_micros: f64,
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine {:.0} % busy, {:.0} % in I/O wait; CPU per shipment: services {:.0} µs, \
             client {:.0} µs, the rest (broker, PostgreSQL, kernel, anything else) {:.0} µs",
            self.busy * 100.0,
            self.iowait * 100.0,
            self.services_micros,
            self.client_micros,
            self.rest_micros
        )
    }
}

/// Reads [`Ticks`] for the services' processes `pids` from `/proc` (zero where it cannot be
/// read: the figures are then missing, not wrong).
fn cpu_ticks(pids: &[u32]) -> Ticks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .unwrap_or_default()
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ticks {
        busy: all - idle,
        iowait: fields.get(4).copied().unwrap_or(0),
        all,
        services: pids.iter().map(|pid| process_ticks(*pid)).sum(),
        client: process_ticks(std::process::id()),
    }
}

/// User and system ticks of process `pid`, all its threads, from `/proc/<pid>/stat`.
fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // "pid (comm) state ...": comm may hold spaces, so fields count from the last ')';
    // utime and stime are the 14th and 15th fields of the line.
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

impl Ticks {
    fn since(&self, earlier: &Ticks, shipments: usize) -> CpuShare {
        // Linux counts `/proc` CPU times in USER_HZ, 100 per second on every architecture
        // it runs on today.
        const TICK_MICROS: f64 = 10_000.0;
        let busy = self.busy.saturating_sub(earlier.busy);
        let all = self.all.saturating_sub(earlier.all).max(1);
        let services = self.services.saturating_sub(earlier.services);
        let client = self.client.saturating_sub(earlier.client);
        let rest = busy.saturating_sub(services + client);
        let per_shipment = |ticks: u64| ticks as f64 * TICK_MICROS / shipments.max(1) as f64;
        CpuShare {
            busy: busy as f64 / all as f64,
            iowait: self.iowait.saturating_sub(earlier.iowait) as f64 / all as f64,
            services_micros: per_shipment(services),
            client_micros: per_shipment(client),
            rest_micros: per_shipment(rest),
        }
    }
}

/// `user` creates a shipment with `tracking` over `connection`.
async fn post_shipment(
    connection: &mut KeepAlive,
    user: &User,
    tracking: &str,
) -> Result<Answer, String> {
    connection
        .call(
            "POST",
            "/api/shipments",
            Some(&user.token),
            Some(&json!({ "trackingNumber": tracking })),
        )
        .await
}

//! The demo: the Identity and Shipping services and a Kafka-protocol broker in one process,
//! with nothing to install.
//!
//! ```sh
//! cargo run -p pegasus-demo                  # Shipping on 5100, Identity on 5101; curl lines
//! cargo run -p pegasus-demo -- --scenario    # the Create Shipment flow, step by step; exit 0
//! ```
//!
//! What it guarantees:
//!
//! - **Before a service starts**, the broker has every topic the services read and write
//!   (3 partitions) and `dlq-events`: the embedded broker (librdkafka's mock cluster, see the
//!   `embedded-broker` crate) cannot create topics when a client asks. With
//!   `KAFKA_BOOTSTRAP_SERVERS` set no broker is started and the services use that one,
//!   creating their topics themselves as they do on their own.
//! - **Each service has its own database** (SQLite in a temporary directory removed at
//!   exit, or in `--data-dir`; `SHIPPING_DATABASE_URL` and `IDENTITY_DATABASE_URL` choose
//!   others, PostgreSQL included) and **both check tokens with one secret** (`JWT_SECRET`,
//!   else a random one for this run, never printed). The token printed at the start is a
//!   real one: the demo registers its user through Identity's HTTP API and signs in.
//! - **`--scenario` exits 0 only when every step of the flow was observed** over HTTP
//!   (the `scenario` module), each wait bounded.
//! - **SIGTERM or Ctrl-C stops everything gracefully**: both services stop accepting,
//!   answer what is in flight and drain their relays and consumers within their bounds;
//!   the embedded broker is dropped last, once no client uses it.
//!
//! The start banner and the step lines go to stdout; the services' logs (`RUST_LOG`, `info`
//! by default, `warn` with `--scenario`) and errors go to stderr, so `2>/dev/null` leaves
//! the banner and the steps alone. Each service on its own, against a real
//! Kafka and PostgreSQL, is its own binary (`cargo run -p shipping-service`).
//!
//! The process is [`run_process`], a library function so that other crates can run the
//! demo as it runs here: the load bench of `examples/services-e2e` builds it into a binary
//! of its own and starts that as a child.

mod cli;
mod http;
mod scenario;
mod services;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pegasus_events::error::Report;
use serde_json::json;
use tracing_subscriber::EnvFilter;

use crate::cli::{Options, Parsed};
use crate::scenario::Services;
use crate::services::{Broker, Running};

/// How long the start waits for both services to be ready (database, broker, consumer,
/// relay) before printing the banner anyway with a warning.
const READY_BOUND: Duration = Duration::from_secs(30);

/// The demo user the banner's token belongs to.
const DEMO_EMAIL: &str = "demo@example.com";
/// Its password, printed in the banner so a reader can sign in again.
const DEMO_PASSWORD: &str = "demo-password";

/// How long the whole shutdown may take: each service drains its relay and consumer within
/// 10 s, both at once, after its server answered what was in flight.
const STOP_BOUND: Duration = Duration::from_secs(30);

/// The demo as a process, what its binary runs: the options from the command line and the
/// environment, then the broker and both services until SIGTERM or Ctrl-C (or the end of
/// `--scenario`). A bad option prints the usage and ends it with code 2; a failed start or
/// a failed scenario ends it with a failure code.
pub async fn run_process() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1), &|name| std::env::var(name).ok()) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    init_logs(options.scenario);
    match run(&options).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {}", Report::new(&*error));
            ExitCode::FAILURE
        }
    }
}

/// The services' logs to stderr, so stdout carries only the banner and the steps.
fn init_logs(scenario: bool) {
    let default = if scenario { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .compact()
        .init();
}

/// Starts the broker and the services, runs the scenario or serves until a signal, stops
/// everything; `Ok(true)` when all went as it should.
async fn run(options: &Options) -> Result<bool, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let shutdown = service_kit::shutdown::on_signal();
    let broker = Broker::start()?;
    match &broker.embedded {
        Some(_) => println!(
            "embedded Kafka-protocol broker at {} (no KAFKA_BOOTSTRAP_SERVERS)",
            broker.kafka.bootstrap_servers
        ),
        None => println!("using the broker at {}", broker.kafka.bootstrap_servers),
    }
    // The temporary directory is dropped (removed) after the services stopped.
    let (data_dir, temporary) = match &options.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temporary = tempfile::Builder::new().prefix("pegasus-demo-").tempdir()?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };
    let running = services::start(options, &broker, &data_dir, &shutdown).await?;
    let addresses = Services {
        identity: running.identity,
        shipping: running.shipping,
    };
    println!(
        "Identity on http://{}, Shipping on http://{}, databases in {}",
        addresses.identity,
        addresses.shipping,
        data_dir.display()
    );

    let work = async {
        if options.scenario {
            wait_ready(addresses).await;
            scenario::run(addresses).await
        } else {
            match banner(addresses, started).await {
                Ok(()) => {
                    shutdown.cancelled().await;
                    println!("stopping");
                    true
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    false
                }
            }
        }
    };
    let succeeded = tokio::select! {
        succeeded = work => succeeded,
        () = shutdown.cancelled() => {
            println!("stopping (signal received)");
            !options.scenario
        }
        () = running.a_service_stopped() => {
            eprintln!("error: a service stopped by itself; stopping the other");
            false
        }
    };
    shutdown.cancel();
    let stopped = stop(running).await;
    // Only now: no client of the broker is left.
    drop(broker);
    drop(temporary);
    Ok(succeeded && stopped)
}

/// Cancels nothing itself: waits for both services to stop (the caller cancelled their
/// token), at most [`STOP_BOUND`].
async fn stop(running: Running) -> bool {
    let started = Instant::now();
    match tokio::time::timeout(STOP_BOUND, running.stopped()).await {
        Ok(clean) => {
            println!("stopped in {:.1} s", started.elapsed().as_secs_f64());
            clean
        }
        Err(_) => {
            eprintln!(
                "error: the services did not stop within {} s",
                STOP_BOUND.as_secs()
            );
            false
        }
    }
}

/// Waits until both `/health/ready` answer 200, at most [`READY_BOUND`]; says so on stderr
/// when they did not (the scenario's own bounded waits then tell what is missing).
async fn wait_ready(services: Services) -> bool {
    let deadline = Instant::now() + READY_BOUND;
    for (name, address) in [
        ("Identity", services.identity),
        ("Shipping", services.shipping),
    ] {
        loop {
            let answer = http::call(address, "GET", "/health/ready", None, None).await;
            match answer {
                Ok(answer) if answer.status == 200 => break,
                answer if Instant::now() >= deadline => {
                    let seen = match answer {
                        Ok(answer) => answer.to_string(),
                        Err(error) => error.to_string(),
                    };
                    eprintln!(
                        "warning: {name} is not ready after {} s: {seen}",
                        READY_BOUND.as_secs()
                    );
                    return false;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    true
}

/// Registers the demo user through Identity (or finds it, in databases kept from an
/// earlier run), signs in, waits for both services to be ready, and prints how to call
/// them with that user's token.
async fn banner(services: Services, started: Instant) -> Result<(), String> {
    let (user_id, token) = demo_user(services.identity).await?;
    let ready = wait_ready(services).await;
    let shipping = base_url(services.shipping);
    let identity = base_url(services.identity);
    println!(
        "\nReady in {:.1} s{}. Demo user {DEMO_EMAIL} (password {DEMO_PASSWORD}), id {user_id}.",
        started.elapsed().as_secs_f64(),
        if ready {
            ""
        } else {
            " (not all checks pass yet: see /health/ready)"
        }
    );
    println!("\nexport TOKEN={token}");
    println!(
        "# create a shipment (Shipping answers 403 for a second or two at first: until it has consumed the user's identity.user.created)"
    );
    println!(
        "curl -s -X POST {shipping}/api/shipments -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"trackingNumber\":\"TRACK123\"}}'"
    );
    println!("# the user's activity log, once Identity has consumed shipping.shipment.created");
    println!("curl -s {identity}/api/users/{user_id}/activity -H \"Authorization: Bearer $TOKEN\"");
    println!("# move the shipment on: SHIPMENT_ID is the shipment's \"id\" in the first answer");
    println!(
        "curl -s -X PUT {shipping}/api/shipments/$SHIPMENT_ID/status -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"status\":\"InTransit\"}}'"
    );
    println!("# both services' metrics, one registry, each series labelled with its service");
    println!("curl -s {shipping}/metrics | grep kafka_events_published_total");
    println!("\nCtrl-C stops everything.");
    Ok(())
}

fn base_url(address: SocketAddr) -> String {
    format!("http://{address}")
}

/// The demo user's id and a token for it: registered now, or (409, databases kept from
/// an earlier run) signed in with its password.
async fn demo_user(identity: SocketAddr) -> Result<(String, String), String> {
    let body = json!({"email": DEMO_EMAIL, "name": "Demo User", "password": DEMO_PASSWORD});
    let registered = http::call(identity, "POST", "/api/users", None, Some(&body))
        .await
        .map_err(|e| e.to_string())?;
    if registered.status != 201 && registered.status != 409 {
        return Err(format!("registering the demo user: {registered}"));
    }
    let body = json!({"email": DEMO_EMAIL, "password": DEMO_PASSWORD});
    let signed_in = http::call(identity, "POST", "/api/auth/token", None, Some(&body))
        .await
        .map_err(|e| e.to_string())?;
    match (
        signed_in.status,
        signed_in.text_at("/userId"),
        signed_in.text_at("/accessToken"),
    ) {
        (200, Some(user_id), Some(token)) => Ok((user_id, token)),
        _ => Err(format!("signing in as the demo user: {signed_in}")),
    }
}

//! Observability of pegasus-events: one binary, two roles, each serving its metrics for
//! Prometheus and exporting its spans through OpenTelemetry.
//!
//! ```text
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run -p observability -- consume --metrics-port 9465
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run -p observability -- publish --count 20 --metrics-port 9464
//! curl -s 127.0.0.1:9464/metrics | grep kafka_events_published_total
//! ```
//!
//! `publish` publishes `--count` orders, each inside an `order.checkout` span, then keeps
//! serving `/metrics` until Ctrl-C (so Prometheus can scrape the counts). `consume` handles
//! them, taking `--handler-delay-ms` per order (to show a lag), in the consumer group
//! `--group` (default the library's, `observability-consume-orderplaced-consumer`), until
//! Ctrl-C. Finished spans are printed to stdout; with `OTEL_EXPORTER_OTLP_ENDPOINT` set (a
//! collector's OTLP/HTTP address, e.g. `http://127.0.0.1:4318`) they are exported there
//! too. The library (feature `opentelemetry`) writes the W3C `traceparent` header from the
//! `send` span, so the consumer's `process` span joins the publisher's trace: one trace
//! across both processes.
//!
//! `tests/tests/prometheus.rs` runs this binary in both roles against the test broker and
//! has a real Prometheus scrape them.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use observability::{install_prometheus, install_tracing};
use pegasus_events::consumer::{EventConsumer, EventContext, EventHandler, HandlerError};
use pegasus_events::error::Report;
use pegasus_events::{Event, EventProducer, KafkaConfig, TopicAdmin, TopicSpec};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

/// The order the example publishes and consumes.
#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "observability.order.placed", name = "OrderPlacedEvent")]
struct OrderPlaced {
    #[event(key)]
    order_id: uuid::Uuid,
    quantity: u32,
}

struct Options {
    role: String,
    count: u32,
    metrics_port: u16,
    handler_delay: Duration,
    /// The consumer group of `consume`; `None` for the library's default.
    group: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let role = args
        .next()
        .filter(|r| r == "publish" || r == "consume")
        .ok_or("usage: observability publish|consume [--count N] [--metrics-port P] [--handler-delay-ms MS] [--group NAME]")?;
    let mut options = Options {
        role,
        count: 10,
        metrics_port: 9464,
        handler_delay: Duration::ZERO,
        group: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--count" => {
                options.count = u32::try_from(number(&value)?).map_err(|e| e.to_string())?
            }
            "--metrics-port" => {
                options.metrics_port = u16::try_from(number(&value)?).map_err(|e| e.to_string())?
            }
            "--handler-delay-ms" => options.handler_delay = Duration::from_millis(number(&value)?),
            "--group" => options.group = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    // Loopback only: /metrics is for a local Prometheus (or a sidecar), not the world.
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, options.metrics_port));
    if let Err(error) = install_prometheus(address) {
        eprintln!("error: cannot serve /metrics at {address}: {error}");
        return ExitCode::FAILURE;
    }
    let service = format!("observability-{}", options.role);
    let provider = match install_tracing(&service) {
        Ok(provider) => provider,
        Err(error) => {
            eprintln!("error: cannot install tracing: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("serving metrics at http://{address}/metrics");
    let result = run(&options, &service).await;
    let _ = provider.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", Report::new(&*error));
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options, service: &str) -> Result<(), Box<dyn std::error::Error>> {
    let config = KafkaConfig::from_env()?.with_client_id(service);
    TopicAdmin::new(&config)
        .await?
        .ensure_topics(&[TopicSpec::for_event::<OrderPlaced>().partitions(1)])
        .await?;
    match options.role.as_str() {
        "publish" => {
            let producer = EventProducer::new(&config).await?;
            for quantity in 1..=options.count {
                let order = OrderPlaced {
                    order_id: uuid::Uuid::now_v7(),
                    quantity,
                };
                // The span around the business step; the library's own `send` span nests
                // in it, and its context travels with the record.
                let span = tracing::info_span!("order.checkout", order.quantity = quantity);
                let delivery = producer.publish(&order).instrument(span).await?;
                tracing::info!(
                    partition = delivery.partition,
                    offset = delivery.offset,
                    "order published"
                );
            }
            eprintln!(
                "published {} orders; serving /metrics until Ctrl-C",
                options.count
            );
            pegasus_events::consumer::shutdown_signal().await;
        }
        _ => {
            let mut consumer = EventConsumer::builder(config).handler::<OrderPlaced, _>(Fulfil {
                delay: options.handler_delay,
            });
            if let Some(group) = &options.group {
                consumer = consumer.group_id(group);
            }
            consumer.build()?.run().await?;
        }
    }
    Ok(())
}

struct Fulfil {
    delay: Duration,
}

impl EventHandler<OrderPlaced> for Fulfil {
    async fn handle(
        &self,
        order: OrderPlaced,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(self.delay).await;
        tracing::info!(
            quantity = order.quantity,
            offset = context.offset,
            "order fulfilled"
        );
        Ok(())
    }
}

//! Quickstart: define an event, publish a few, consume them with a handler, with nothing to
//! install.
//!
//! ```sh
//! cargo run -p quickstart              # 5 events on a Kafka-protocol broker inside the process
//! cargo run -p quickstart -- 100000    # a backlog of 100,000 events, read by a consumer group
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run -p quickstart   # a real broker instead
//! ```
//!
//! Without `KAFKA_BOOTSTRAP_SERVERS` it starts librdkafka's mock cluster in this process
//! (see the `embedded-broker` example crate for what it can carry and why the quickstart
//! sets it up the way it does). Either way the events travel as real Kafka records with
//! CloudEvents headers, through a real consumer group with at-least-once commits. The program exits with an error unless
//! every event published was handled.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_broker as embedded;
use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError,
};
use pegasus_events::error::Report;
use pegasus_events::{
    Compression, Event, EventProducer, KafkaConfig, PublishMetadata, TopicAdmin, TopicSpec,
};
use serde::{Deserialize, Serialize};

/// An order was placed.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "quickstart.order.placed", name = "OrderPlacedEvent")]
struct OrderPlaced {
    /// The key: one order, one partition, in order.
    #[event(key)]
    order_id: uuid::Uuid,
    /// What was ordered.
    item: String,
    quantity: u32,
    /// Shown as `<redacted>` in logs.
    #[event(sensitive)]
    customer_email: String,
    /// Which run published it, so a broker that kept older runs' events is no trouble.
    run: uuid::Uuid,
}

/// Prints the first few events and counts all of this run's.
struct OrderPlacedHandler {
    run: uuid::Uuid,
    handled: Arc<AtomicU64>,
}

impl EventHandler<OrderPlaced> for OrderPlacedHandler {
    async fn handle(
        &self,
        event: OrderPlaced,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if event.run != self.run {
            return Ok(());
        }
        let n = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 5 {
            println!(
                "handled {:?} (ce_id {}, partition {}, offset {}, correlation {:?})",
                event.redacted(),
                context.event_id(),
                context.partition,
                context.offset,
                context.correlation_id()
            );
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", Report::new(&*e));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let count: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("the argument is the number of events, not `{arg}`"))?,
        None => 5,
    };

    // A real broker if one is named, else one inside this process.
    let external = std::env::var("KAFKA_BOOTSTRAP_SERVERS").is_ok();
    let mut config = KafkaConfig::from_env()?.with_client_id("quickstart");
    let _embedded = if external {
        println!("using the broker at {}", config.bootstrap_servers);
        TopicAdmin::new(&config)
            .await?
            .ensure_topics(&[TopicSpec::for_event::<OrderPlaced>().partitions(3)])
            .await?;
        None
    } else {
        let broker = embedded::EmbeddedBroker::start()?;
        broker.create_topic(OrderPlaced::TOPIC, embedded::PARTITIONS)?;
        config.bootstrap_servers = broker.bootstrap_servers();
        if embedded::PRODUCER_COMPRESSION == "lz4" {
            config.producer.compression = Compression::Lz4;
        }
        println!(
            "no KAFKA_BOOTSTRAP_SERVERS: started an embedded broker at {}",
            config.bootstrap_servers
        );
        Some(broker)
    };

    // Publish: acknowledged by the broker before `publish_all` returns.
    let run = uuid::Uuid::now_v7();
    let producer = EventProducer::new(&config).await?;
    let started = Instant::now();
    let mut published = 0;
    while published < count {
        let batch: Vec<OrderPlaced> = (published..count.min(published + 50_000))
            .map(|i| OrderPlaced {
                order_id: uuid::Uuid::now_v7(),
                item: format!("item-{}", i % 100),
                quantity: 1 + (i % 5) as u32,
                customer_email: "customer@example.com".to_owned(),
                run,
            })
            .collect();
        if published == 0 {
            // The first event carries explicit metadata, to show it on the other side.
            producer
                .publish_with(
                    &batch[0],
                    &PublishMetadata::new().correlation_id("checkout-42"),
                )
                .await?;
            for result in producer.publish_all(&batch[1..]).await {
                result?;
            }
        } else {
            for result in producer.publish_all(&batch).await {
                result?;
            }
        }
        published += batch.len() as u64;
    }
    println!(
        "published {count} {} event(s) to {} in {:.2} s",
        OrderPlaced::NAME,
        OrderPlaced::TOPIC,
        started.elapsed().as_secs_f64()
    );

    // Consume: a consumer group, the handler bound to the topic by the event type.
    let handled = Arc::new(AtomicU64::new(0));
    let mut settings = ConsumerSettings::default();
    if _embedded.is_some() {
        settings.fetch_max_wait = embedded::FETCH_MAX_WAIT;
    }
    let consumer = EventConsumer::builder(config)
        .settings(settings)
        .handler::<OrderPlaced, _>(OrderPlacedHandler {
            run,
            handled: Arc::clone(&handled),
        })
        .build()?;
    println!("consuming as group {}", consumer.group_id());
    let watched = Arc::clone(&handled);
    let started = Instant::now();
    let deadline = Duration::from_secs(120);
    consumer
        .run_until(async move {
            while watched.load(Ordering::Relaxed) < count && started.elapsed() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await?;
    let handled = handled.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    println!("handled {handled} of {count} event(s) in {seconds:.2} s, group join included");
    if let Some(broker) = &_embedded {
        let dropped = broker.dropped_records(OrderPlaced::TOPIC)?;
        if dropped > 0 {
            return Err(format!("the embedded broker dropped {dropped} record(s)").into());
        }
    }
    if handled != count {
        return Err(format!("only {handled} of {count} events were handled").into());
    }
    Ok(())
}

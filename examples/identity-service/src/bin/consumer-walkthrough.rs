//! A scripted walk through the identity side of the design's flow, without HTTP or a
//! database: it publishes one `UserCreatedEvent` to `identity.user.created`, then
//! consumes `ShipmentCreatedEvent` from `shipping.shipment.created` in the group
//! `identity-api-shipmentcreated-consumer`, keeping a per-user activity log in memory,
//! until Ctrl-C. As the design's "Error Handling" and "Idempotency" sections ask: failures
//! are retried (5 attempts, exponential backoff with jitter) and then go to `dlq-events`,
//! and a redelivered event (same `ce_id`) is skipped. The event types are
//! `event-contracts`'. (The HTTP service is the package's main binary.)
//!
//! Run it beside a publisher of shipments, against any Kafka broker:
//!
//! ```sh
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! cargo run -p identity-service --bin consumer-walkthrough &    # consumes until Ctrl-C
//! cargo run -p shipping-service --bin outbox-walkthrough        # publishes a shipment
//! ```
//!
//! Configuration comes from `appsettings.json` in the working directory if there is one
//! (the `Kafka` section, as in the .NET services), then from `KAFKA_*` variables.
//!
//! `--until-shipment <shipment id>` stops it once the shipment with that id was handled,
//! and fails if that has not happened within 60 s (the record was dead-lettered, say).
//! `scripts/readme-crate` uses it to prove that an event published as the README shows is
//! handled by a consumer of the contract's type.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use event_contracts::{ShipmentCreatedEvent, UserCreatedEvent};
use pegasus_events::consumer::{
    shutdown_signal, EventConsumer, EventContext, EventHandler, HandlerError, RetryPolicy,
};
use pegasus_events::error::Report;
use pegasus_events::{
    Event, EventProducer, KafkaConfig, MemoryIdempotencyStore, TopicAdmin, TopicSpec,
};
use uuid::Uuid;

/// Updates the user activity log, as in the design's event flow.
#[derive(Default)]
struct ShipmentCreatedConsumer {
    activity: Mutex<HashMap<String, Vec<String>>>,
    /// With `--until-shipment`: the shipment to wait for, and where to say it was handled.
    until: Option<(Uuid, Arc<tokio::sync::Notify>, Arc<AtomicBool>)>,
}

impl EventHandler<ShipmentCreatedEvent> for ShipmentCreatedConsumer {
    async fn handle(
        &self,
        event: ShipmentCreatedEvent,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        tracing::info!(
            tracking = %event.tracking_number,
            offset = context.offset,
            correlation = ?context.correlation_id(),
            "processing shipment created"
        );
        let mut activity = self.activity.lock().unwrap_or_else(|e| e.into_inner());
        let log = activity
            .entry(event.created_by_user_id.clone())
            .or_default();
        log.push(format!(
            "created shipment {} at {}",
            event.tracking_number, event.created_at
        ));
        println!(
            "user {} activity: {} entr{}",
            event.created_by_user_id,
            log.len(),
            if log.len() == 1 { "y" } else { "ies" }
        );
        if let Some((shipment_id, notify, handled)) = &self.until {
            if *shipment_id == event.shipment_id {
                println!("handled shipment {shipment_id}, the one asked for");
                handled.store(true, Ordering::SeqCst);
                notify.notify_one();
            }
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
    let mut args = std::env::args().skip(1);
    let until_shipment = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--until-shipment"), Some(id)) => Some(
            Uuid::try_parse(&id).map_err(|_| format!("`{id}` is not a shipment id (a UUID)"))?,
        ),
        _ => return Err("usage: consumer-walkthrough [--until-shipment <shipment id>]".into()),
    };

    service_kit::logging::init(service_kit::logging::LogFormat::from_env());

    let mut config = KafkaConfig::load("appsettings.json")?;
    if config.client_id == KafkaConfig::default().client_id {
        config.client_id = "identity-api".to_owned();
    }

    TopicAdmin::new(&config)
        .await?
        .ensure_topics(&[
            TopicSpec::for_event::<UserCreatedEvent>().partitions(3),
            TopicSpec::for_event::<ShipmentCreatedEvent>().partitions(3),
        ])
        .await?;

    let producer = EventProducer::new(&config).await?;
    let user = UserCreatedEvent {
        user_id: "auth0|123".to_owned(),
        email: "user@example.com".to_owned(),
        name: "Ada".to_owned(),
        created_at: Utc::now(),
        version: 1,
    };
    let delivery = producer.publish(&user).await?;
    println!(
        "published {} {:?} at partition {} offset {}",
        UserCreatedEvent::NAME,
        user.redacted(),
        delivery.partition,
        delivery.offset
    );

    let notify = Arc::new(tokio::sync::Notify::new());
    let handled = Arc::new(AtomicBool::new(false));
    let handler = ShipmentCreatedConsumer {
        until: until_shipment.map(|id| (id, Arc::clone(&notify), Arc::clone(&handled))),
        ..ShipmentCreatedConsumer::default()
    };
    let consumer = EventConsumer::builder(config)
        // Remembers handled events for a day; SqliteIdempotencyStore (feature "sqlite") or
        // PostgresIdempotencyStore keep them across restarts.
        .idempotency(MemoryIdempotencyStore::default())
        .handler_with_retry::<ShipmentCreatedEvent, _>(
            handler,
            RetryPolicy::default().with_max_attempts(5),
        )
        .build()?;
    let group = consumer.group_id().to_owned();
    let Some(shipment_id) = until_shipment else {
        println!(
            "consuming {} as group {group} (Ctrl-C to stop)",
            ShipmentCreatedEvent::TOPIC
        );
        consumer.run().await?;
        return Ok(());
    };
    println!(
        "consuming {} as group {group} until shipment {shipment_id} is handled",
        ShipmentCreatedEvent::TOPIC
    );
    consumer
        .run_until(async move {
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown_signal() => {}
            }
        })
        .await?;
    if !handled.load(Ordering::SeqCst) {
        return Err(format!(
            "shipment {shipment_id} was not handled within 60 s; if it was dead-lettered, \
             `cargo run -p dead-letter-replay -- --group {group}` lists it with the reason"
        )
        .into());
    }
    Ok(())
}

//! The design's Identity service: it publishes `UserCreatedEvent` to
//! `identity.user.created`, and consumes `ShipmentCreatedEvent` from
//! `shipping.shipment.created` in the group `identity-api-shipmentcreated-consumer`,
//! keeping a per-user activity log, until Ctrl-C. As the design's "Error Handling" and
//! "Idempotency" sections ask: failures are retried (5 attempts, exponential backoff with
//! jitter) and then go to `dlq-events`, and a redelivered event (same `ce_id`) is skipped.
//!
//! Run it beside the shipping service, against any Kafka broker:
//!
//! ```sh
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! cargo run -p identity-service &      # consumes until Ctrl-C
//! cargo run -p shipping-service        # publishes a shipment and two status changes
//! ```
//!
//! Configuration comes from `appsettings.json` in the working directory if there is one
//! (the `Kafka` section, as in the .NET services), then from `KAFKA_*` variables.
//!
//! `--until-shipment <shipment id>` stops it once the shipment with that id was handled,
//! and fails if that has not happened within 60 s (the record was dead-lettered, say).
//! `scripts/readme-crate` uses it to prove that an event published as the README shows is
//! handled here.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pegasus_events::consumer::{
    shutdown_signal, EventConsumer, EventContext, EventHandler, HandlerError, RetryPolicy,
};
use pegasus_events::error::Report;
use pegasus_events::{
    Event, EventProducer, KafkaConfig, MemoryIdempotencyStore, TopicAdmin, TopicSpec,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user registered.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "identity.user.created", name = "UserCreatedEvent")]
struct UserCreated {
    #[event(key)]
    user_id: String,
    #[event(sensitive)]
    email: String,
    name: String,
}

/// The shipping service's event, the same shape as in `examples/shipping-service` and in
/// the README's first example (`scripts/readme-crate` checks that one is handled here).
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
struct ShipmentCreated {
    #[event(key)]
    shipment_id: Uuid,
    tracking_number: String,
    status: String,
    created_at: DateTime<Utc>,
    created_by_user_id: String,
    #[event(sensitive)]
    created_by_email: String,
}

/// Updates the user activity log, as in the design's event flow.
#[derive(Default)]
struct ShipmentCreatedConsumer {
    activity: Mutex<HashMap<String, Vec<String>>>,
    /// With `--until-shipment`: the shipment to wait for, and where to say it was handled.
    until: Option<(Uuid, Arc<tokio::sync::Notify>, Arc<AtomicBool>)>,
}

impl EventHandler<ShipmentCreated> for ShipmentCreatedConsumer {
    async fn handle(
        &self,
        event: ShipmentCreated,
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
        _ => return Err("usage: identity-service [--until-shipment <shipment id>]".into()),
    };

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let mut config = KafkaConfig::load("appsettings.json")?;
    if config.client_id == KafkaConfig::default().client_id {
        config.client_id = "identity-api".to_owned();
    }

    TopicAdmin::new(&config)
        .await?
        .ensure_topics(&[
            TopicSpec::for_event::<UserCreated>().partitions(3),
            TopicSpec::for_event::<ShipmentCreated>().partitions(3),
        ])
        .await?;

    let producer = EventProducer::new(&config).await?;
    let user = UserCreated {
        user_id: "auth0|123".to_owned(),
        email: "user@example.com".to_owned(),
        name: "Ada".to_owned(),
    };
    let delivery = producer.publish(&user).await?;
    println!(
        "published {} {:?} at partition {} offset {}",
        UserCreated::NAME,
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
        .handler_with_retry::<ShipmentCreated, _>(
            handler,
            RetryPolicy::default().with_max_attempts(5),
        )
        .build()?;
    let group = consumer.group_id().to_owned();
    let Some(shipment_id) = until_shipment else {
        println!(
            "consuming {} as group {group} (Ctrl-C to stop)",
            ShipmentCreated::TOPIC
        );
        consumer.run().await?;
        return Ok(());
    };
    println!(
        "consuming {} as group {group} until shipment {shipment_id} is handled",
        ShipmentCreated::TOPIC
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

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

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use pegasus_events::consumer::{
    EventConsumer, EventContext, EventHandler, HandlerError, RetryPolicy,
};
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

/// The shipping service's event, as this service reads it: only the fields it needs.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "shipping.shipment.created", name = "ShipmentCreatedEvent")]
struct ShipmentCreated {
    #[event(key)]
    shipment_id: Uuid,
    tracking_number: String,
    created_at: DateTime<Utc>,
    created_by_user_id: String,
    #[event(sensitive)]
    created_by_email: String,
}

/// Updates the user activity log, as in the design's event flow.
#[derive(Default)]
struct ShipmentCreatedConsumer {
    activity: Mutex<HashMap<String, Vec<String>>>,
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
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let mut config = KafkaConfig::load("appsettings.json")?;
    if config.client_id == KafkaConfig::default().client_id {
        config.client_id = "identity-api".to_owned();
    }

    TopicAdmin::new(&config).await?
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

    let consumer = EventConsumer::builder(config)
        // Remembers handled events for a day; SqliteIdempotencyStore (feature "sqlite") or
        // PostgresIdempotencyStore keep them across restarts.
        .idempotency(MemoryIdempotencyStore::default())
        .handler_with_retry::<ShipmentCreated, _>(
            ShipmentCreatedConsumer::default(),
            RetryPolicy::default().with_max_attempts(5),
        )
        .build()?;
    println!(
        "consuming {} as group {} (Ctrl-C to stop)",
        ShipmentCreated::TOPIC,
        consumer.group_id()
    );
    consumer.run().await?;
    Ok(())
}

//! The design's Shipping service, publishing side: it creates a shipment, publishes
//! `ShipmentCreatedEvent` to `shipping.shipment.created`, then moves it through two statuses
//! with `ShipmentStatusChangedEvent` on `shipping.shipment.status-changed`, all tied
//! together by one correlation id and keyed by the shipment id (same shipment, same
//! partition, in order).
//!
//! Run it against any Kafka broker, for example one started by the project's script:
//!
//! ```sh
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! cargo run -p shipping-service
//! ```
//!
//! Configuration comes from `appsettings.json` in the working directory if there is one
//! (the `Kafka` section, as in the .NET services), then from `KAFKA_*` variables.

use chrono::{DateTime, Utc};
use pegasus_events::{Event, EventProducer, KafkaConfig, PublishMetadata, TopicAdmin, TopicSpec};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A shipment was created.
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

/// A shipment's status changed.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(
    topic = "shipping.shipment.status-changed",
    name = "ShipmentStatusChangedEvent"
)]
struct ShipmentStatusChanged {
    #[event(key)]
    shipment_id: Uuid,
    old_status: String,
    new_status: String,
    changed_at: DateTime<Utc>,
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
        config.client_id = "shipping-api".to_owned();
    }
    tracing::info!(?config, "starting shipping service");

    // The design creates its topics with three partitions.
    TopicAdmin::new(&config)?
        .ensure_topics(&[
            TopicSpec::for_event::<ShipmentCreated>().partitions(3),
            TopicSpec::for_event::<ShipmentStatusChanged>().partitions(3),
        ])
        .await?;

    let producer = EventProducer::new(&config)?;
    let shipment_id = Uuid::now_v7();
    let correlation = Uuid::now_v7().to_string();

    let created = ShipmentCreated {
        shipment_id,
        tracking_number: "TRACK123".to_owned(),
        status: "Created".to_owned(),
        created_at: Utc::now(),
        created_by_user_id: "auth0|123".to_owned(),
        created_by_email: "user@example.com".to_owned(),
    };
    let metadata = PublishMetadata::new()
        .subject(shipment_id.to_string())
        .correlation_id(&correlation);
    let delivery = producer.publish_with(&created, &metadata).await?;
    println!(
        "published {} {:?} -> {} partition {} offset {}",
        ShipmentCreated::NAME,
        created.redacted(),
        ShipmentCreated::TOPIC,
        delivery.partition,
        delivery.offset
    );

    let mut cause = delivery.event_id;
    for (old, new) in [("Created", "PickedUp"), ("PickedUp", "InTransit")] {
        let changed = ShipmentStatusChanged {
            shipment_id,
            old_status: old.to_owned(),
            new_status: new.to_owned(),
            changed_at: Utc::now(),
        };
        let delivery = producer
            .publish_with(&changed, &metadata.clone().causation_id(cause.to_string()))
            .await?;
        cause = delivery.event_id;
        println!(
            "published {} {old} -> {new} -> partition {} offset {}",
            ShipmentStatusChanged::NAME,
            delivery.partition,
            delivery.offset
        );
    }
    Ok(())
}

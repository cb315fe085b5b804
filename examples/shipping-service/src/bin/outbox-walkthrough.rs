//! A scripted walk through the shipping side of the design's flow with the transactional
//! outbox, without HTTP: it creates a shipment and moves it through two statuses, and each
//! change is saved in its SQLite database in the same transaction as its event
//! (`ShipmentCreatedEvent` on `shipping.shipment.created`, then
//! `ShipmentStatusChangedEvent` on `shipping.shipment.status-changed`), with the event
//! types of `event-contracts`. The outbox relay publishes the stored events, in order,
//! keyed by the shipment id (same shipment, same partition, in order), tied together by
//! one correlation id; the program stops once all of them were acknowledged. (The HTTP
//! service is the package's main binary.)
//!
//! Run it against any Kafka broker, for example one started by the project's script:
//!
//! ```sh
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! cargo run -p shipping-service --bin outbox-walkthrough   # sqlite://shipping-walkthrough.db
//! SHIPPING_DATABASE_URL=sqlite:///tmp/shipping.db cargo run -p shipping-service --bin outbox-walkthrough
//! ```
//!
//! Configuration comes from `appsettings.json` in the working directory if there is one
//! (the `Kafka` section, as in the .NET services), then from `KAFKA_*` variables.

use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use event_contracts::{ShipmentCreatedEvent, ShipmentStatus, ShipmentStatusChangedEvent};
use pegasus_events::error::Report;
use pegasus_events::outbox::{RelaySettings, SqliteOutbox};
use pegasus_events::{Event, KafkaConfig, PublishMetadata, TopicAdmin, TopicSpec};
use uuid::Uuid;

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
    service_kit::logging::init(service_kit::logging::LogFormat::from_env());

    let mut config = KafkaConfig::load("appsettings.json")?;
    if config.client_id == KafkaConfig::default().client_id {
        config.client_id = "shipping-api".to_owned();
    }
    tracing::info!(?config, "starting shipping service");

    // The design creates its topics with three partitions.
    TopicAdmin::new(&config)
        .await?
        .ensure_topics(&[
            TopicSpec::for_event::<ShipmentCreatedEvent>().partitions(3),
            TopicSpec::for_event::<ShipmentStatusChangedEvent>().partitions(3),
        ])
        .await?;

    // The service's own database; the outbox table lives beside its shipments.
    let database = std::env::var("SHIPPING_DATABASE_URL")
        .unwrap_or_else(|_| "sqlite://shipping-walkthrough.db".into());
    let outbox = SqliteOutbox::connect(&database, &config).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS shipments (
            id TEXT PRIMARY KEY, tracking_number TEXT NOT NULL, status TEXT NOT NULL)",
    )
    .execute(outbox.pool())
    .await?;

    // The relay runs beside the service's work, as it would in the real service.
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = outbox.relay(
        &config,
        RelaySettings {
            poll_interval: Duration::from_millis(100),
            ..RelaySettings::default()
        },
    )?;
    let relay = tokio::spawn(relay.run_until(async move {
        let _ = relay_stopped.await;
    }));

    let shipment_id = Uuid::now_v7();
    let correlation = Uuid::now_v7().to_string();
    let metadata = PublishMetadata::new()
        .subject(shipment_id.to_string())
        .correlation_id(&correlation);

    // Create the shipment and its event in one transaction: both or neither.
    let created = ShipmentCreatedEvent {
        shipment_id,
        tracking_number: "TRACK123".to_owned(),
        status: ShipmentStatus::Created,
        created_at: Utc::now(),
        created_by_user_id: "auth0|123".to_owned(),
        created_by_email: "user@example.com".to_owned(),
        destination: None,
    };
    let mut tx = outbox.pool().begin().await?;
    sqlx::query("INSERT INTO shipments (id, tracking_number, status) VALUES (?, ?, ?)")
        .bind(shipment_id.to_string())
        .bind(&created.tracking_number)
        .bind(created.status.as_str())
        .execute(&mut *tx)
        .await?;
    let mut cause = outbox.enqueue_with(&mut tx, &created, &metadata).await?;
    tx.commit().await?;
    println!(
        "saved shipment and {} {:?} ({cause})",
        ShipmentCreatedEvent::NAME,
        created.redacted()
    );

    let transitions = [
        (ShipmentStatus::Created, ShipmentStatus::InTransit),
        (ShipmentStatus::InTransit, ShipmentStatus::Delivered),
    ];
    for (version, (old, new)) in (2..).zip(transitions) {
        let changed = ShipmentStatusChangedEvent {
            shipment_id,
            tracking_number: created.tracking_number.clone(),
            old_status: old,
            new_status: new,
            changed_at: Utc::now(),
            changed_by_user_id: created.created_by_user_id.clone(),
            version,
        };
        let mut tx = outbox.pool().begin().await?;
        sqlx::query("UPDATE shipments SET status = ? WHERE id = ?")
            .bind(new.as_str())
            .bind(shipment_id.to_string())
            .execute(&mut *tx)
            .await?;
        let metadata = metadata.clone().causation_id(cause.to_string());
        cause = outbox.enqueue_with(&mut tx, &changed, &metadata).await?;
        tx.commit().await?;
        println!(
            "saved status {old} -> {new} and {} ({cause})",
            ShipmentStatusChangedEvent::NAME
        );
    }

    // Wait until the relay has published (and marked) every stored event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pegasus_outbox WHERE published_at IS NULL")
                .fetch_one(outbox.pool())
                .await?;
        if waiting == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{waiting} events still unpublished after 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_relay.send(());
    relay.await??;
    println!("the outbox relay published all three events");
    Ok(())
}

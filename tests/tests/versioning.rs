//! Upcasting in transit: records published as older schema versions are read as the newest
//! type; a version newer than the reader knows is a typed decode error.

use pegasus_events::{wire, Error, Event, EventProducer};
use pegasus_events_tests::{config, read_record};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(
    topic = "tests.parcel.registered",
    name = "ParcelRegistered",
    version = 1
)]
struct ParcelRegisteredV1 {
    #[event(key)]
    parcel_id: String,
    weight_grams: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(
    topic = "tests.parcel.registered",
    name = "ParcelRegistered",
    version = 2,
    upcast_from = ParcelRegisteredV1
)]
struct ParcelRegisteredV2 {
    #[event(key)]
    parcel_id: String,
    weight_kg: f64,
}

impl From<ParcelRegisteredV1> for ParcelRegisteredV2 {
    fn from(v1: ParcelRegisteredV1) -> Self {
        ParcelRegisteredV2 {
            parcel_id: v1.parcel_id,
            weight_kg: f64::from(v1.weight_grams) / 1000.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(
    topic = "tests.parcel.registered",
    name = "ParcelRegistered",
    version = 3,
    upcast_from = ParcelRegisteredV2
)]
struct ParcelRegisteredV3 {
    #[event(key)]
    parcel_id: String,
    weight_kg: f64,
    fragile: bool,
}

impl From<ParcelRegisteredV2> for ParcelRegisteredV3 {
    fn from(v2: ParcelRegisteredV2) -> Self {
        ParcelRegisteredV3 {
            parcel_id: v2.parcel_id,
            weight_kg: v2.weight_kg,
            fragile: false,
        }
    }
}

#[tokio::test]
async fn records_of_every_older_version_are_upcast_to_the_newest_type_in_transit() {
    let producer = EventProducer::new(&config("parcel-api")).await.unwrap();
    let v1 = producer
        .publish(&ParcelRegisteredV1 {
            parcel_id: "p-1".into(),
            weight_grams: 2500,
        })
        .await
        .unwrap();
    let v2 = producer
        .publish(&ParcelRegisteredV2 {
            parcel_id: "p-2".into(),
            weight_kg: 1.25,
        })
        .await
        .unwrap();
    let v3 = producer
        .publish(&ParcelRegisteredV3 {
            parcel_id: "p-3".into(),
            weight_kg: 4.0,
            fragile: true,
        })
        .await
        .unwrap();

    let topic = ParcelRegisteredV3::TOPIC;
    let from_v1 = read_record(topic, v1.partition, v1.offset);
    let decoded = wire::decode::<ParcelRegisteredV3, _>(&from_v1).expect("v1 upcasts");
    assert_eq!(
        decoded.event,
        ParcelRegisteredV3 {
            parcel_id: "p-1".into(),
            weight_kg: 2.5,
            fragile: false
        }
    );
    assert_eq!(
        decoded.metadata.schema_version, 1,
        "metadata keeps the version on the wire"
    );

    let from_v2 = read_record(topic, v2.partition, v2.offset);
    let decoded = wire::decode::<ParcelRegisteredV3, _>(&from_v2).expect("v2 upcasts");
    assert_eq!(decoded.event.weight_kg, 1.25);

    let from_v3 = read_record(topic, v3.partition, v3.offset);
    let decoded = wire::decode::<ParcelRegisteredV3, _>(&from_v3).expect("v3 decodes");
    assert!(decoded.event.fragile);

    // A reader that only knows version 2 meets a version 3 record.
    let error = wire::decode::<ParcelRegisteredV2, _>(&from_v3).unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnknownSchemaVersion {
                found: 3,
                newest: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_decode_error());
}

// Three versions of one event: V1 -> V2 -> V3, the older ones in their own module and
// named by path.
use pegasus_events::Event;
use serde::{Deserialize, Serialize};

mod old {
    use pegasus_events::Event;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize, Event)]
    #[event(topic = "shipping.parcel.weighed", name = "ParcelWeighed")]
    pub struct ParcelWeighedV1 {
        #[event(key)]
        pub parcel_id: u64,
        pub grams: u32,
    }

    #[derive(Debug, Serialize, Deserialize, Event)]
    #[event(topic = "shipping.parcel.weighed", name = "ParcelWeighed", version = 2)]
    #[event(upcast_from = ParcelWeighedV1)]
    pub struct ParcelWeighedV2 {
        #[event(key)]
        pub parcel_id: u64,
        pub kilograms: f64,
    }

    impl From<ParcelWeighedV1> for ParcelWeighedV2 {
        fn from(v1: ParcelWeighedV1) -> Self {
            ParcelWeighedV2 {
                parcel_id: v1.parcel_id,
                kilograms: f64::from(v1.grams) / 1000.0,
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipping.parcel.weighed", name = "ParcelWeighed", version = 3)]
#[event(upcast_from = crate::old::ParcelWeighedV2)]
struct ParcelWeighed {
    #[event(key)]
    parcel_id: u64,
    kilograms: f64,
    scale: Option<String>,
}

impl From<old::ParcelWeighedV2> for ParcelWeighed {
    fn from(v2: old::ParcelWeighedV2) -> Self {
        ParcelWeighed {
            parcel_id: v2.parcel_id,
            kilograms: v2.kilograms,
            scale: None,
        }
    }
}

fn main() {
    assert_eq!(ParcelWeighed::OLDEST_VERSION, 1);
    let v1 = br#"{"parcel_id": 5, "grams": 1500}"#;
    let event = ParcelWeighed::decode_version(1, v1).unwrap();
    assert_eq!(event.parcel_id, 5);
    assert_eq!(event.kilograms, 1.5);
}

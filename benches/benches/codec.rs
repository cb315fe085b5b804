//! Encoding and decoding one event, without a broker: pegasus-events' wire format against

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]
//! what raw rdkafka users write by hand (`serde_json` plus the same headers).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pegasus_events::wire::{self, OutgoingHeaders};
use pegasus_events::Event;
use pegasus_events_benches::{raw_encode, sample, ShipmentCreated};
use rdkafka::message::OwnedMessage;
use rdkafka::Timestamp;

fn encode(c: &mut Criterion) {
    let event = sample(7);
    let mut group = c.benchmark_group("encode");
    group.bench_function("pegasus", |b| {
        let mut key = String::new();
        b.iter(|| {
            let event = black_box(&event);
            let mut payload = Vec::with_capacity(256);
            wire::encode_payload(event, &mut payload).expect("encodes");
            key.clear();
            let keyed = event.write_partition_key(&mut key);
            let outgoing = OutgoingHeaders::new::<ShipmentCreated>(
                "bench-api",
                keyed.then_some(key.as_str()),
                None,
            );
            let headers = outgoing.to_kafka_headers();
            black_box((payload, headers))
        });
    });
    group.bench_function("raw_serde_json", |b| {
        b.iter(|| black_box(raw_encode(black_box(&event), "bench-api")));
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let event = sample(7);
    let record = raw_encode(&event, "bench-api");
    let payload = record.payload.clone();
    let message = OwnedMessage::new(
        Some(record.payload),
        Some(record.key.to_vec()),
        ShipmentCreated::TOPIC.to_owned(),
        Timestamp::CreateTime(1_768_473_000_000),
        0,
        42,
        record.headers,
    );
    let mut group = c.benchmark_group("decode");
    group.bench_function("pegasus", |b| {
        b.iter(|| {
            let decoded = wire::decode::<ShipmentCreated, _>(black_box(&message)).expect("decodes");
            black_box(decoded.event)
        });
    });
    group.bench_function("raw_serde_json", |b| {
        b.iter(|| {
            let event: ShipmentCreated =
                serde_json::from_slice(black_box(&payload)).expect("decodes");
            black_box(event)
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode
}
criterion_main!(benches);

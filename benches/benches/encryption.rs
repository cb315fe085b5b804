//! Encoding and decoding one event with one encrypted field against the same event plain,
//! in the same run, without a broker: what `#[event(encrypted)]` costs per event.
//!
//! Besides criterion's figures, a full run (`cargo bench --bench encryption`) prints the
//! ratios encrypted / plain of a paired measurement (the two interleaved, median of 15
//! rounds). Under `cargo test` (criterion's test mode) every benchmark runs once, as a
//! smoke test that both paths still work.

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use pegasus_events::encryption::{Encryption, EncryptionKey, KeyRing};
use pegasus_events::wire::{self, OutgoingHeaders, PublishMetadata};
use pegasus_events::Event;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The design's ShipmentCreatedEvent, plain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "bench.shipment.created", name = "ShipmentCreatedEvent")]
struct Plain {
    #[event(key)]
    shipment_id: Uuid,
    tracking_number: String,
    status: String,
    created_at: DateTime<Utc>,
    created_by_user_id: String,
    #[event(sensitive)]
    created_by_email: String,
}

/// The same event with its email encrypted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(topic = "bench.shipment.created", name = "ShipmentCreatedEvent")]
struct Encrypted {
    #[event(key)]
    shipment_id: Uuid,
    tracking_number: String,
    status: String,
    created_at: DateTime<Utc>,
    created_by_user_id: String,
    #[event(encrypted)]
    created_by_email: String,
}

fn plain(i: u64) -> Plain {
    Plain {
        shipment_id: Uuid::from_u64_pair(0x3fa8_5f64_5717_4562, i),
        tracking_number: format!("TRACK{i:06}"),
        status: "Created".to_owned(),
        created_at: DateTime::from_timestamp(1_768_473_000, 0).unwrap_or_default(),
        created_by_user_id: "auth0|123".to_owned(),
        created_by_email: "user@example.com".to_owned(),
    }
}

fn encrypted(i: u64) -> Encrypted {
    let p = plain(i);
    Encrypted {
        shipment_id: p.shipment_id,
        tracking_number: p.tracking_number,
        status: p.status,
        created_at: p.created_at,
        created_by_user_id: p.created_by_user_id,
        created_by_email: p.created_by_email,
    }
}

fn encryption() -> Encryption {
    let key = EncryptionKey::new("bench-1", [7; 32]).expect("a key");
    Encryption::new(KeyRing::new("bench-1", [key]).expect("a ring"))
}

/// Runs a future that never waits (ring keys only, no subject key store) to completion.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("encoding with ring keys never waits"),
    }
}

const ID: Uuid = Uuid::from_u128(0x0190_f5d2_2222_7000_8000_0000_0000_0003);

fn encode_plain(event: &Plain) -> Vec<u8> {
    let mut payload = Vec::with_capacity(256);
    wire::encode_payload(event, &mut payload).expect("encodes");
    payload
}

fn encode_encrypted(encryption: &Encryption, event: &Encrypted) -> Vec<u8> {
    let mut payload = Vec::with_capacity(256);
    ready(encryption.encode_payload(event, ID, &mut payload)).expect("encodes");
    payload
}

/// A binary-mode record of `E` with `payload` and event id [`ID`].
fn message<E: Event>(payload: Vec<u8>) -> OwnedMessage {
    let metadata = PublishMetadata::new().event_id(ID);
    let outgoing = OutgoingHeaders::new::<E>("bench-api", None, Some(&metadata));
    let mut headers = OwnedHeaders::new();
    outgoing.for_each(|name, value| {
        headers = std::mem::take(&mut headers).insert(Header {
            key: name,
            value: Some(value),
        });
    });
    OwnedMessage::new(
        Some(payload),
        None,
        E::TOPIC.to_owned(),
        Timestamp::CreateTime(1_768_473_000_000),
        0,
        42,
        Some(headers),
    )
}

fn encode(c: &mut Criterion) {
    let encryption = encryption();
    let (p, e) = (plain(7), encrypted(7));
    let mut group = c.benchmark_group("encryption_encode");
    group.bench_function("plain", |b| {
        b.iter(|| black_box(encode_plain(black_box(&p))))
    });
    group.bench_function("one_encrypted_field", |b| {
        b.iter(|| black_box(encode_encrypted(&encryption, black_box(&e))))
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let encryption = encryption();
    let plain_record = message::<Plain>(encode_plain(&plain(7)));
    let encrypted_record = message::<Encrypted>(encode_encrypted(&encryption, &encrypted(7)));
    // Both decode to the same event.
    let decoded = ready(encryption.decode::<Encrypted, _>(&encrypted_record)).expect("decodes");
    assert_eq!(decoded.event, encrypted(7));
    let mut group = c.benchmark_group("encryption_decode");
    group.bench_function("plain", |b| {
        b.iter(|| {
            let decoded = wire::decode::<Plain, _>(black_box(&plain_record)).expect("decodes");
            black_box(decoded.event)
        })
    });
    group.bench_function("one_encrypted_field", |b| {
        b.iter(|| {
            let decoded = ready(encryption.decode::<Encrypted, _>(black_box(&encrypted_record)))
                .expect("decodes");
            black_box(decoded.event)
        })
    });
    group.finish();
}

/// The time of `n` calls of `f`.
fn timed(n: u32, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed()
}

/// Paired measurement: plain and encrypted interleaved in rounds, the median ratio.
fn ratios(_: &mut Criterion) {
    if !std::env::args().any(|a| a == "--bench") {
        return; // criterion's test mode: no timing
    }
    let encryption = encryption();
    let (p, e) = (plain(7), encrypted(7));
    let plain_record = message::<Plain>(encode_plain(&p));
    let encrypted_record = message::<Encrypted>(encode_encrypted(&encryption, &e));
    const N: u32 = 20_000;
    let mut encode_ratios = Vec::new();
    let mut decode_ratios = Vec::new();
    let mut per_event = [Duration::ZERO; 4];
    for _ in 0..15 {
        let a = timed(N, || drop(black_box(encode_plain(black_box(&p)))));
        let b = timed(N, || {
            drop(black_box(encode_encrypted(&encryption, black_box(&e))))
        });
        let c = timed(N, || {
            drop(black_box(
                wire::decode::<Plain, _>(black_box(&plain_record)).map(|d| d.event),
            ))
        });
        let d = timed(N, || {
            drop(black_box(
                ready(encryption.decode::<Encrypted, _>(black_box(&encrypted_record)))
                    .map(|d| d.event),
            ))
        });
        encode_ratios.push(b.as_secs_f64() / a.as_secs_f64());
        decode_ratios.push(d.as_secs_f64() / c.as_secs_f64());
        for (total, round) in per_event.iter_mut().zip([a, b, c, d]) {
            *total += round / N;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ns = |d: Duration| d.as_nanos() as f64 / 15.0;
    println!(
        "encryption: encode plain {:.0} ns, one encrypted field {:.0} ns, ratio {:.2}; \
         decode plain {:.0} ns, one encrypted field {:.0} ns, ratio {:.2} (median of 15 paired rounds)",
        ns(per_event[0]),
        ns(per_event[1]),
        median(&mut encode_ratios),
        ns(per_event[2]),
        ns(per_event[3]),
        median(&mut decode_ratios),
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode, ratios
}
criterion_main!(benches);

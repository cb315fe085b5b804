//! Typed publishing against raw rdkafka, on the same broker, in the same run.
//!
//! Both sides send the same bytes (key, JSON value, CloudEvents headers) with the same
//! producer settings (acks=all, idempotence, linger 5 ms, no compression) to the same
//! topic. Rounds alternate which side goes first; the median of each side is reported with
//! the ratio typed/raw. Allocations on the calling thread are counted per publish for both,
//! on a current-thread runtime so every Rust step of a publish runs on that thread.
//!
//! Run with `scripts/bench` (starts a broker), or `cargo bench -p pegasus-events-benches
//! --bench publish` with `PEGASUS_BENCH_BOOTSTRAP` (or `PEGASUS_TEST_BOOTSTRAP`) set.
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a short smoke run.

use std::time::{Duration, Instant};

use pegasus_events::{Event, EventProducer, KafkaConfig, TopicAdmin, TopicSpec};
use pegasus_events_benches::{
    allocations, bootstrap, median, raw_encode, sample, spread, CountingAllocator, ShipmentCreated,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const SOURCE: &str = "bench-api";

fn typed_config(bootstrap: &str) -> KafkaConfig {
    let config = KafkaConfig::new(bootstrap).with_client_id(SOURCE);
    config.validate().expect("valid config");
    config
}

/// The same settings the typed producer derives from [`typed_config`], written by hand.
fn raw_producer(config: &KafkaConfig) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", &config.client_id)
        .set("security.protocol", "plaintext")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "none")
        .set(
            "message.timeout.ms",
            config.producer.delivery_timeout.as_millis().to_string(),
        )
        .set("linger.ms", config.producer.linger.as_millis().to_string())
        .create()
        .expect("raw producer")
}

async fn typed_batch(producer: &EventProducer, events: &[ShipmentCreated]) {
    for result in producer.publish_all(events).await {
        result.expect("typed publish acknowledged");
    }
}

async fn raw_send(producer: &FutureProducer, event: &ShipmentCreated) -> DeliveryFuture {
    let (key, payload, headers) = raw_encode(event, SOURCE);
    let mut record = FutureRecord::to(ShipmentCreated::TOPIC)
        .key(&key)
        .payload(&payload)
        .headers(headers);
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => panic!("raw enqueue failed: {e}"),
        }
    }
}

async fn raw_batch(producer: &FutureProducer, events: &[ShipmentCreated]) {
    let mut pending = Vec::new();
    for event in events {
        pending.push(raw_send(producer, event).await);
    }
    for delivery in pending {
        delivery
            .await
            .expect("delivery callback")
            .expect("raw publish acknowledged");
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // Many short alternating rounds: the broker shares the machine, and its speed drifts
    // (JIT, GC, segment rolls) more than either client differs; pairing each typed round
    // with the raw round next to it and taking the median ratio cancels most of that drift.
    let (events_per_round, rounds, sequential) = if full {
        (20_000, 21, 2_000)
    } else {
        (300, 1, 50)
    };
    let bootstrap = bootstrap("publish");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = typed_config(&bootstrap);
        TopicAdmin::new(&config).await
            .expect("admin")
            .ensure_topics(&[TopicSpec::for_event::<ShipmentCreated>().partitions(3)])
            .await
            .expect("topic");
        let typed = EventProducer::new(&config).await.expect("typed producer");
        let raw = raw_producer(&config);
        let events: Vec<ShipmentCreated> = (0..events_per_round).map(sample).collect();

        // Warm up both (connections, metadata, producer ids) and the broker's JIT.
        for _ in 0..if full { 2 } else { 1 } {
            typed_batch(&typed, &events).await;
            raw_batch(&raw, &events).await;
        }

        let mut typed_rates = Vec::new();
        let mut raw_rates = Vec::new();
        let mut typed_allocs = 0;
        let mut raw_allocs = 0;
        for round in 0..rounds {
            for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
                let before = allocations();
                let started = Instant::now();
                if side == 0 {
                    typed_batch(&typed, &events).await;
                } else {
                    raw_batch(&raw, &events).await;
                }
                let rate = events.len() as f64 / started.elapsed().as_secs_f64();
                let allocated = allocations() - before;
                if side == 0 {
                    typed_rates.push(rate);
                    typed_allocs += allocated;
                } else {
                    raw_rates.push(rate);
                    raw_allocs += allocated;
                }
            }
        }
        let total = (events.len() * rounds) as f64;
        let pair_ratios: Vec<f64> = typed_rates
            .iter()
            .zip(&raw_rates)
            .map(|(typed, raw)| typed / raw)
            .collect();
        let ratio_spread = spread(pair_ratios.clone());
        let ratio = median(pair_ratios);
        let (typed_rate, raw_rate) = (median(typed_rates), median(raw_rates));
        let typed_per = typed_allocs as f64 / total;
        let raw_per = raw_allocs as f64 / total;

        // One publish at a time, awaiting each acknowledgement: the allocations of a single
        // `publish(&event)` call against one raw `send().await`.
        let before = allocations();
        for event in &events[..sequential] {
            typed.publish(event).await.expect("typed publish");
        }
        let typed_single = (allocations() - before) as f64 / sequential as f64;
        let before = allocations();
        for event in &events[..sequential] {
            let (key, payload, headers) = raw_encode(event, SOURCE);
            raw.send(
                FutureRecord::to(ShipmentCreated::TOPIC)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .expect("raw publish");
        }
        let raw_single = (allocations() - before) as f64 / sequential as f64;

        println!("publish bench ({} mode): {events_per_round} events x {rounds} rounds per side, broker {bootstrap}",
            if full { "full" } else { "smoke" });
        println!("  typed publish_all : {typed_rate:>10.0} events/s (median)");
        println!("  raw FutureProducer: {raw_rate:>10.0} events/s (median)");
        println!("  throughput ratio typed/raw: {ratio:.3} (median of {rounds} paired rounds)");
        println!("  paired ratios typed/raw: {ratio_spread}");
        println!(
            "  allocations per event, batch : typed {typed_per:.2}, raw {raw_per:.2}, typed beyond raw {:+.2}",
            typed_per - raw_per
        );
        println!(
            "  allocations per publish, one at a time: typed {typed_single:.2}, raw {raw_single:.2}, typed beyond raw {:+.2}",
            typed_single - raw_single
        );
    });
}

//! A real Prometheus server scrapes the exporter setup of `examples/observability`
//! (`observability::install_prometheus`) while this test publishes events and a consumer
//! lags behind them; its HTTP query API, not a parser of ours, says what it read.
//!
//! `scripts/test` starts the server (`scripts/prometheus`, Debian's package, a scrape
//! interval of a second) and exports its URL in `PEGASUS_TEST_PROMETHEUS_URL` and the
//! directory of its file-based scrape targets in `PEGASUS_TEST_PROMETHEUS_TARGETS`; the
//! test adds its exporter there.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pegasus_events::consumer::{
    ConsumerSettings, EventConsumer, EventContext, EventHandler, HandlerError, OffsetReset,
};
use pegasus_events::{Event, EventProducer, TopicAdmin, TopicSpec};
use pegasus_events_tests::{config, unique, TEST_DEADLINE};
use serde::{Deserialize, Serialize};

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: run the tests with `scripts/test`, which starts a real \
             Prometheus server with `scripts/prometheus`, or start one with \
             `scripts/prometheus start --name dev` and export PEGASUS_TEST_PROMETHEUS_URL (what \
             it prints) and PEGASUS_TEST_PROMETHEUS_TARGETS (`scripts/prometheus targets --name dev`)"
        ),
    }
}

/// `%XX` for every byte but unreserved ones: the query goes into a URL.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The values of the series a PromQL `query` returns now, through `/api/v1/query`.
fn query(base: &str, query: &str) -> Vec<f64> {
    let address = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(address).expect("Prometheus answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/query?query={} HTTP/1.0\r\nHost: {address}\r\n\r\n",
        url_encode(query)
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}\n{body}"
    );
    let json: serde_json::Value = serde_json::from_str(body).expect("the API answers JSON");
    assert_eq!(json["status"], "success", "{json}");
    json["data"]["result"]
        .as_array()
        .expect("a vector result")
        .iter()
        .map(|series| {
            series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("a sample value")
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(topic = "tests.prometheus.backlog")]
struct Order {
    run: String,
    #[event(key)]
    key: u32,
    seq: i64,
}

#[derive(Default)]
struct Slow {
    run: String,
    probes: AtomicUsize,
    release: tokio::sync::Notify,
    released: AtomicBool,
}

const PUBLISHED: i64 = 20;
const STUCK_AT: i64 = 2;

impl EventHandler<Order> for Arc<Slow> {
    async fn handle(&self, order: Order, _: &EventContext<'_>) -> Result<(), HandlerError> {
        if order.run != self.run {
            return Ok(());
        }
        if order.seq < 0 {
            self.probes.fetch_add(1, Ordering::SeqCst);
        } else if order.seq == STUCK_AT && !self.released.load(Ordering::SeqCst) {
            self.release.notified().await;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_the_published_count_and_a_nonzero_lag_while_a_backlog_exists() {
    let prometheus = env("PEGASUS_TEST_PROMETHEUS_URL");
    let targets = std::path::PathBuf::from(env("PEGASUS_TEST_PROMETHEUS_TARGETS"));
    // A free loopback port for the exporter, as the example serves it.
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exporter = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    observability::install_prometheus(exporter).expect("the exporter serves /metrics");
    let target_file = targets.join(format!("{}.json", unique("prometheus-test")));
    std::fs::write(
        &target_file,
        serde_json::json!([{ "targets": [exporter.to_string()] }]).to_string(),
    )
    .unwrap();

    TopicAdmin::new(&config("admin"))
        .await
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Order>().partitions(1)])
        .await
        .unwrap();
    let run = unique("run");
    let service = unique("prometheus-publisher");
    let group = unique("prometheus-lag");
    let handler = Arc::new(Slow {
        run: run.clone(),
        ..Slow::default()
    });
    let mut consumer_config = config("prometheus-consumer");
    consumer_config.statistics_interval = Duration::from_millis(200);
    let consumer = EventConsumer::builder(consumer_config)
        .group_id(&group)
        .settings(ConsumerSettings {
            // Records left by earlier runs are not this test's backlog.
            offset_reset: OffsetReset::Latest,
            commit_interval: Duration::from_millis(200),
            shutdown_timeout: Duration::from_secs(10),
            dead_letter_topic: unique("prometheus-dlq"),
            ..ConsumerSettings::default()
        })
        .handler::<Order, _>(Arc::clone(&handler))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consuming = tokio::spawn(consumer.run_until(async {
        let _ = stopped.await;
    }));

    // Probes, from a producer of their own (another `service`), until the group has joined.
    let prober = EventProducer::new(&config("prometheus-prober"))
        .await
        .unwrap();
    let order = |seq: i64| Order {
        run: run.clone(),
        key: 0,
        seq,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while handler.probes.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no probe reached the consumer");
        prober.publish(&order(-1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let producer = EventProducer::new(&config(&service)).await.unwrap();
    for result in producer
        .publish_all(&(0..PUBLISHED).map(order).collect::<Vec<_>>())
        .await
    {
        result.expect("published");
    }

    let published_query =
        format!("kafka_events_published_total{{service=\"{service}\",instance=\"{exporter}\"}}");
    let lag_query =
        format!("kafka_consumer_lag_records{{group=\"{group}\",instance=\"{exporter}\"}}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (published, lag) = loop {
        let published = query(&prometheus, &published_query);
        let lag = query(&prometheus, &lag_query);
        // The group commits the records before the stuck one within a commit interval;
        // until then the lag reads higher.
        if published == [PUBLISHED as f64] && lag == [(PUBLISHED - STUCK_AT) as f64] {
            break (published, lag);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not read the count and the backlog's lag within 60 s: published {published:?}, lag {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(published, [PUBLISHED as f64]);
    // The group committed the records before the stuck one: the rest is the backlog.
    assert_eq!(
        lag,
        [(PUBLISHED - STUCK_AT) as f64],
        "one partition, its lag"
    );

    handler.released.store(true, Ordering::SeqCst);
    handler.release.notify_one();
    let _ = stop.send(());
    tokio::time::timeout(TEST_DEADLINE, consuming)
        .await
        .expect("the consumer stopped")
        .expect("the consumer task")
        .expect("the consumer ran");
    let _ = std::fs::remove_file(&target_file);
}

//! A real Prometheus server scrapes `examples/observability` run as its two processes
//! against the test broker: `publish --count 30`, and a `consume` whose handler takes a
//! second per order, so a backlog stays behind it. Prometheus's HTTP query API, not a
//! parser of ours, says what it read from the two `/metrics` endpoints.
//!
//! `scripts/test` starts the server (`scripts/prometheus`, Debian's package, a scrape
//! interval of a second) and exports its URL in `PEGASUS_TEST_PROMETHEUS_URL` and the
//! directory of its file-based scrape targets in `PEGASUS_TEST_PROMETHEUS_TARGETS`; the
//! test adds the example's two endpoints there. The example's binary is built with
//! `cargo build -p observability` (by `scripts/test` before the brokers start, so here it
//! is only checked to be fresh).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pegasus_events_tests::{bootstrap, unique};

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

/// A child process that is killed and reaped when this is dropped: on success, on a failed
/// assertion, on a panic anywhere in the test.
struct Running {
    what: String,
    child: Child,
    /// Where its stderr goes, shown when it fails.
    log: PathBuf,
}

impl Running {
    fn start(what: &str, command: &mut Command) -> Self {
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", unique(what)));
        let stderr = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Running {
            what: what.to_owned(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics, with its stderr, when the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.what, self.log());
        }
    }

    /// Waits for the process to exit within `deadline`; its exit status.
    fn wait(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "{} did not finish within {deadline:?}:\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A file_sd target file, removed when dropped so Prometheus stops scraping its targets.
struct Targets(PathBuf);

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The longest `cargo build -p observability` may take: a cold build of the example on two
/// cores. `scripts/test` builds it before the brokers start, so here it is a freshness check.
const BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// The path of the example's binary, built (or found fresh) by the cargo running this test.
fn observability_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let messages =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.json", unique("cargo-build")));
    let mut build = Running::start(
        "cargo build -p observability",
        Command::new(cargo)
            .args([
                "build",
                "-p",
                "observability",
                "--bin",
                "observability",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::fs::File::create(&messages).unwrap()),
    );
    let status = build.wait(BUILD_DEADLINE);
    assert!(status.success(), "{}", build.log());
    let messages_text = std::fs::read_to_string(&messages).unwrap();
    let _ = std::fs::remove_file(&messages);
    // Cargo names the executable it built (or found fresh) in its artifact message, wherever
    // the target directory is.
    messages_text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "observability")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reports the observability executable")
}

/// Two free loopback addresses, for the two processes' `/metrics`.
fn two_free_addresses() -> [SocketAddr; 2] {
    // Both bound at once, so they differ; freed just before the examples bind them.
    let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let second = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    [first.local_addr().unwrap(), second.local_addr().unwrap()]
}

/// The example in `role`, against the test broker, serving `/metrics` at `metrics`.
fn example(binary: &Path, role: &str, metrics: SocketAddr, args: &[&str]) -> Running {
    Running::start(
        &format!("observability {role}"),
        Command::new(binary)
            .arg(role)
            .args(["--metrics-port", &metrics.port().to_string()])
            .args(args)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
            // The lag gauge comes from librdkafka's statistics: every 200 ms, not 5 s.
            .env("KAFKA_STATISTICS_INTERVAL_MS", "200")
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // The finished spans it prints are not this test's business.
            .stdout(Stdio::null()),
    )
}

const PUBLISHED: u32 = 30;
/// Each order's handling in the consuming process: 30 orders take 30 s, the backlog.
const HANDLER_DELAY_MS: &str = "1000";
/// How long Prometheus may take to read the count and the lag once both processes run.
const READ_DEADLINE: Duration = Duration::from_secs(90);

#[test]
fn prometheus_reads_the_examples_published_count_and_a_nonzero_lag_while_a_backlog_exists() {
    let prometheus = env("PEGASUS_TEST_PROMETHEUS_URL");
    let targets = PathBuf::from(env("PEGASUS_TEST_PROMETHEUS_TARGETS"));
    let binary = observability_binary();

    let [consumer_metrics, publisher_metrics] = two_free_addresses();
    // The group is this run's own: it starts at the topic's earliest record, behind this
    // run's orders and those of earlier runs, and its lag is reported once it committed.
    let group = unique("prometheus-lag");
    let mut consumer = example(
        &binary,
        "consume",
        consumer_metrics,
        &["--handler-delay-ms", HANDLER_DELAY_MS, "--group", &group],
    );
    let mut publisher = example(
        &binary,
        "publish",
        publisher_metrics,
        &["--count", &PUBLISHED.to_string()],
    );
    let target_file = Targets(targets.join(format!("{}.json", unique("prometheus-test"))));
    std::fs::write(
        &target_file.0,
        serde_json::json!([{
            "targets": [consumer_metrics.to_string(), publisher_metrics.to_string()]
        }])
        .to_string(),
    )
    .unwrap();

    // Each process is one scrape target: its `instance` label picks this run's series.
    let published_query =
        format!("kafka_events_published_total{{instance=\"{publisher_metrics}\"}}");
    let lag_query =
        format!("kafka_consumer_lag_records{{instance=\"{consumer_metrics}\",group=\"{group}\"}}");
    let deadline = Instant::now() + READ_DEADLINE;
    let (mut published, mut lag) = (Vec::new(), Vec::new());
    // Until both hold at once: the count is complete while the consumer is still behind.
    while published != [f64::from(PUBLISHED)] || !(lag.len() == 1 && lag[0] > 0.0) {
        consumer.assert_running();
        publisher.assert_running();
        assert!(
            Instant::now() < deadline,
            "Prometheus did not read the count and a backlog's lag within {READ_DEADLINE:?}: \
             published {published:?}, lag {lag:?}\npublisher:\n{}\nconsumer:\n{}",
            publisher.log(),
            consumer.log()
        );
        std::thread::sleep(Duration::from_millis(500));
        published = query(&prometheus, &published_query);
        lag = query(&prometheus, &lag_query);
    }
    assert_eq!(published, [f64::from(PUBLISHED)], "every order, once");
    assert_eq!(lag.len(), 1, "one partition, its lag");
    assert!(lag[0] > 0.0, "the consumer is behind: lag {lag:?}");
    // The guards kill both processes and remove the target file.
}

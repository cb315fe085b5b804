//! The three-broker cluster that `scripts/kafka start --brokers 3` runs: topics are created
//! with replication factor 3 and `min.insync.replicas=2`, an `acks=all` publish keeps
//! succeeding with one broker down, the broker refuses a publish with fewer replicas in
//! sync than a topic's `min.insync.replicas`, and nothing is acknowledged with two brokers
//! down. The later fault tests stand on this.
//!
//! `scripts/test` starts the cluster and passes its address in
//! `PEGASUS_TEST_CLUSTER_BOOTSTRAP` and its name in `PEGASUS_TEST_CLUSTER_NAME`; without
//! them this test fails, it does not skip. It leaves the cluster whole (every node running,
//! every replica in sync again), whatever happened, because other tests use it.

use std::time::{Duration, Instant};

use pegasus_events::{Event, EventProducer, KafkaConfig, TopicAdmin, TopicSpec};
use pegasus_events_tests::kafka_script;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.cluster.replicated")]
struct Replicated {
    #[event(key)]
    n: u32,
}

/// An event of a topic that asks for three in-sync replicas.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.cluster.strict")]
struct Strict {
    #[event(key)]
    n: u32,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the three-broker cluster")
    })
}

/// Restarts the nodes it was given, even when an assertion failed, and waits until every
/// partition of the cluster has all its replicas in sync again, so later tests find the
/// whole cluster.
struct RestartOnDrop {
    cluster: String,
    bootstrap: String,
    nodes: Vec<&'static str>,
}

impl RestartOnDrop {
    fn killed(&mut self, node: &'static str) {
        kafka_script(&[
            "kill-node",
            node,
            "--name",
            &self.cluster,
            "--signal",
            "KILL",
        ]);
        self.nodes.push(node);
    }
}

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        // No panic here: this may run while a failed assertion unwinds.
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka");
        for node in self.nodes.iter().rev() {
            let status = std::process::Command::new(script)
                .args(["start-node", node, "--name", &self.cluster])
                .stdout(std::process::Stdio::null())
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!(
                    "restarting node {node} of {} failed: {status:?}",
                    self.cluster
                );
            }
        }
        let whole = wait_until_whole(&self.bootstrap, Duration::from_secs(120));
        if !whole && !std::thread::panicking() {
            panic!("the cluster's replicas were not all in sync again within 120 s");
        }
    }
}

/// Waits until the cluster lists three brokers and every replica of every partition is in
/// sync; `false` if that takes longer than `timeout`.
fn wait_until_whole(bootstrap: &str, timeout: Duration) -> bool {
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(metadata) = client.fetch_metadata(None, Duration::from_secs(5)) {
            let in_sync = metadata.topics().iter().all(|topic| {
                topic
                    .partitions()
                    .iter()
                    .all(|p| p.isr().len() == p.replicas().len())
            });
            if metadata.brokers().len() == 3 && in_sync {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

/// The number of in-sync replicas of each partition of `topic`, as the cluster reports it.
fn in_sync_replicas(client: &BaseConsumer, topic: &str) -> Vec<usize> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.isr().len())
        .collect()
}

/// Waits until every partition of `topic` has `count` replicas in sync.
async fn wait_for_in_sync_replicas(client: &BaseConsumer, topic: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let isr = in_sync_replicas(client, topic);
        if isr.iter().all(|n| *n == count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: in-sync replicas per partition {isr:?}, expected {count} each"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The error code of a failed publish; fails the test if it is not a delivery error.
fn code_of(error: &pegasus_events::PublishError) -> RDKafkaErrorCode {
    match &error.error {
        pegasus_events::Error::Delivery {
            source: KafkaError::MessageProduction(code),
            ..
        } => *code,
        other => panic!("expected a delivery error, got {other:?}"),
    }
}

/// `min.insync.replicas=2` as the broker applies it. With one broker of three down, two
/// replicas stay in sync and an `acks=all` publish is acknowledged. A topic that asks for
/// three in-sync replicas is refused with `NotEnoughReplicas` at that moment: the broker
/// checks the bound against the replicas actually in sync. With a second broker down, an
/// `acks=all` publish is not acknowledged (it fails within its delivery timeout).
///
/// Why not `NotEnoughReplicas` with two brokers down: the cluster's nodes are also its
/// three KRaft controllers, so with two down the controller quorum is gone, the in-sync
/// set cannot shrink to the one replica left, and the leader waits for a follower that
/// never answers; the publish times out (`MessageTimedOut`). The refusal is therefore
/// checked with one broker down and a bound of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_with_replication_three_and_min_isr_two_survives_one_broker_down_is_refused_below_min_isr_and_fails_with_two_down(
) {
    let bootstrap = env("PEGASUS_TEST_CLUSTER_BOOTSTRAP");
    let cluster = env("PEGASUS_TEST_CLUSTER_NAME");
    let mut config = KafkaConfig::new(&bootstrap).with_client_id("cluster-test");
    config.producer.delivery_timeout = Duration::from_secs(60);

    TopicAdmin::new(&config)
        .await
        .unwrap()
        .ensure_topics(&[
            TopicSpec::for_event::<Replicated>()
                .partitions(3)
                .replication_factor(3)
                .config("min.insync.replicas", "2"),
            TopicSpec::for_event::<Strict>()
                .partitions(3)
                .replication_factor(3)
                .config("min.insync.replicas", "3"),
        ])
        .await
        .expect("replicated topics");

    let metadata_client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let metadata = metadata_client
        .fetch_metadata(Some(Replicated::TOPIC), Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.brokers().len(), 3, "three brokers in the cluster");
    for partition in metadata.topics()[0].partitions() {
        assert_eq!(partition.replicas().len(), 3, "replication factor 3");
    }
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let described = admin
        .describe_configs(
            [
                &ResourceSpecifier::Topic(Replicated::TOPIC),
                &ResourceSpecifier::Topic(Strict::TOPIC),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let min_isr: Vec<Option<String>> = described
        .iter()
        .map(|topic| {
            let topic = topic.as_ref().expect("a topic's configuration");
            topic
                .get("min.insync.replicas")
                .and_then(|entry| entry.value.clone())
        })
        .collect();
    assert_eq!(
        min_isr,
        [Some("2".to_owned()), Some("3".to_owned())],
        "min.insync.replicas of the topic under test and of the strict one"
    );

    let producer = EventProducer::new(&config).await.unwrap();
    let before: Vec<_> = (0..100).map(|n| Replicated { n }).collect();
    for result in producer.publish_all(&before).await {
        result.expect("acknowledged by all in-sync replicas");
    }

    // One broker down: two replicas in sync, as many as min.insync.replicas asks.
    let mut restart = RestartOnDrop {
        cluster: cluster.clone(),
        bootstrap: bootstrap.clone(),
        nodes: Vec::new(),
    };
    restart.killed("3");
    let after: Vec<_> = (100..200).map(|n| Replicated { n }).collect();
    for result in producer.publish_all(&after).await {
        result.expect("two in-sync replicas are enough with min.insync.replicas=2");
    }
    wait_for_in_sync_replicas(&metadata_client, Replicated::TOPIC, 2).await;

    // The same two in sync are fewer than the strict topic's bound: the broker refuses.
    // librdkafka retries that refusal until its delivery timeout and then reports only
    // the timeout; one retry lets its answer through.
    wait_for_in_sync_replicas(&metadata_client, Strict::TOPIC, 2).await;
    let mut strict = config
        .clone()
        .with_property("message.send.max.retries", "1");
    strict.producer.delivery_timeout = Duration::from_secs(10);
    let refused = EventProducer::new(&strict)
        .await
        .unwrap()
        .publish(&Strict { n: 1 })
        .await
        .expect_err("fewer in-sync replicas than min.insync.replicas");
    assert_eq!(
        code_of(&refused),
        RDKafkaErrorCode::NotEnoughReplicas,
        "{refused:?}"
    );

    // A second broker down: one replica left. Nothing is acknowledged; each publish fails
    // within its delivery timeout.
    restart.killed("2");
    let mut short = config.clone();
    short.producer.delivery_timeout = Duration::from_secs(10);
    let asked = Instant::now();
    let results = EventProducer::new(&short)
        .await
        .unwrap()
        .publish_all(&(200..210).map(|n| Replicated { n }).collect::<Vec<_>>())
        .await;
    let took = asked.elapsed();
    for result in &results {
        let error = result
            .as_ref()
            .expect_err("not acknowledged with one replica of three");
        assert!(
            matches!(
                code_of(error),
                RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::NotEnoughReplicas
            ),
            "{error:?}"
        );
    }
    assert!(
        took < Duration::from_secs(10 + 10),
        "failed {took:.1?} after the publish, within the 10 s delivery timeout and a margin"
    );

    // Both nodes back, every replica in sync again (the guard fails the test otherwise).
    drop(restart);
}

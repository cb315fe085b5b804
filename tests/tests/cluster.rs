//! The three-broker cluster that `scripts/kafka start --brokers 3` runs: topics are created
//! with replication factor 3 and `min.insync.replicas=2`, and an `acks=all` publish keeps
//! succeeding with one broker down. The later fault tests stand on this.
//!
//! `scripts/test` starts the cluster and passes its address in
//! `PEGASUS_TEST_CLUSTER_BOOTSTRAP` and its name in `PEGASUS_TEST_CLUSTER_NAME`; without
//! them this test fails, it does not skip.

use std::time::Duration;

use pegasus_events::{Event, EventProducer, KafkaConfig, TopicAdmin, TopicSpec};
use pegasus_events_tests::kafka_script;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "tests.cluster.replicated")]
struct Replicated {
    #[event(key)]
    n: u32,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the three-broker cluster")
    })
}

/// Restarts the node even when an assertion fails, so later tests find the whole cluster.
struct RestartOnDrop<'a> {
    cluster: &'a str,
    node: &'a str,
}

impl Drop for RestartOnDrop<'_> {
    fn drop(&mut self) {
        kafka_script(&["start-node", self.node, "--name", self.cluster]);
    }
}

#[tokio::test]
async fn acks_all_publishing_survives_one_broker_down_with_replication_three_and_min_isr_two() {
    let bootstrap = env("PEGASUS_TEST_CLUSTER_BOOTSTRAP");
    let cluster = env("PEGASUS_TEST_CLUSTER_NAME");
    let mut config = KafkaConfig::new(&bootstrap).with_client_id("cluster-test");
    config.producer.delivery_timeout = Duration::from_secs(60);

    TopicAdmin::new(&config)
        .unwrap()
        .ensure_topics(&[TopicSpec::for_event::<Replicated>()
            .partitions(3)
            .replication_factor(3)
            .config("min.insync.replicas", "2")])
        .await
        .expect("replicated topic");

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

    let producer = EventProducer::new(&config).unwrap();
    let before: Vec<_> = (0..100).map(|n| Replicated { n }).collect();
    for result in producer.publish_all(&before).await {
        result.expect("acknowledged by all in-sync replicas");
    }

    kafka_script(&["kill-node", "3", "--name", &cluster, "--signal", "KILL"]);
    let _restart = RestartOnDrop {
        cluster: &cluster,
        node: "3",
    };
    let after: Vec<_> = (100..200).map(|n| Replicated { n }).collect();
    for result in producer.publish_all(&after).await {
        result.expect("two in-sync replicas are enough with min.insync.replicas=2");
    }
}

//! The README's sample configuration, `appsettings.sample.json` at the repository root,
//! stays valid and explained: it loads with `KafkaConfig::from_appsettings`, and every key
//! of its `Kafka` section has a row in the README's configuration table. No broker needed.

use std::path::{Path, PathBuf};

use pegasus_events::config::DEFAULT_BOOTSTRAP_SERVERS;
use pegasus_events::{Acks, Compression, KafkaConfig, SecurityProtocol};

fn repository_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .join(name)
}

#[test]
fn the_sample_appsettings_loads_with_the_documented_values() {
    let config = KafkaConfig::from_appsettings(repository_file("appsettings.sample.json"))
        .unwrap_or_else(|e| panic!("appsettings.sample.json does not load: {e}"));
    let defaults = KafkaConfig::default();
    assert_eq!(config.bootstrap_servers, DEFAULT_BOOTSTRAP_SERVERS);
    assert_eq!(config.client_id, "identity-api");
    assert_eq!(config.source(), "identity-api");
    assert_eq!(config.security_protocol, SecurityProtocol::Plaintext);
    assert_eq!(config.producer.acks, Acks::All);
    assert!(config.producer.idempotence);
    assert_eq!(config.producer.compression, Compression::None);
    assert_eq!(config.connect_timeout, defaults.connect_timeout);
    assert_eq!(
        config.producer.delivery_timeout,
        defaults.producer.delivery_timeout
    );
    assert_eq!(config.producer.linger, defaults.producer.linger);
    assert!(!config.producer.base_event_fields);
    assert_eq!(config.properties["socket.keepalive.enable"], "true");
}

#[test]
fn every_key_of_the_sample_is_explained_in_the_readme() {
    let sample = std::fs::read_to_string(repository_file("appsettings.sample.json")).unwrap();
    let sample: serde_json::Value = serde_json::from_str(&sample).unwrap();
    let sections: Vec<&String> = sample.as_object().unwrap().keys().collect();
    assert_eq!(sections, ["Kafka"], "the sample has only the Kafka section");

    let readme = std::fs::read_to_string(repository_file("README.md")).unwrap();
    let start = readme
        .find("\n## Configuration\n")
        .expect("README has a Configuration section");
    let end = readme[start + 1..]
        .find("\n## ")
        .map_or(readme.len(), |i| start + 1 + i);
    let section = &readme[start..end];
    assert!(
        section.contains("appsettings.sample.json"),
        "the Configuration section shows the sample"
    );
    // The first column of the table's rows: `Key`, or `Key`, `Other`, or "e.g. `name`".
    let first_cells: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .collect();
    for key in sample["Kafka"].as_object().unwrap().keys() {
        let quoted = format!("`{key}`");
        assert!(
            first_cells.iter().any(|cell| cell.contains(&quoted)),
            "README's configuration table has no row for the sample's key {quoted}"
        );
    }
}

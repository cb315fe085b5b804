//! Both services on the secured broker (`scripts/kafka start --security`, whose
//! `security.json` path is in `PEGASUS_TEST_SECURE`), each allowed exactly the ACLs it
//! prints with `--print-acls`: Identity over SASL_SSL with SCRAM-SHA-512 and its password
//! in a file, Shipping over mutual TLS with its client certificate. The design's flow
//! (a user registered in Identity reaches Shipping's cache, Shipping's shipment reaches
//! Identity's activity log) runs through both outbox relays and both consumers, so each
//! service's topic creation, publishing and consuming work within its own list, and
//! nothing more is granted.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use services_e2e::{activity, first_shipment, register, until_ready, Service, Stage, CATCH_UP};
use test_support::{required, until, STEP};

/// The secured broker's description.
fn security() -> Value {
    let path = required("PEGASUS_TEST_SECURE");
    let text = std::fs::read_to_string(&path).expect("security.json is readable");
    serde_json::from_str(&text).expect("security.json parses")
}

/// Applies `rules` (the lines `--print-acls` printed) to the secured cluster.
fn apply_acls(cluster: &str, rules: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kafka");
    let mut child = Command::new(script)
        .args(["acl", "--name", cluster])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/kafka runs");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rules.as_bytes())
        .expect("rules written");
    let output = child.wait_with_output().expect("scripts/kafka acl ends");
    assert!(
        output.status.success(),
        "scripts/kafka acl refused\n{rules}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn text(value: &Value, path: &[&str]) -> String {
    let mut at = value;
    for key in path {
        at = &at[*key];
    }
    at.as_str()
        .unwrap_or_else(|| panic!("security.json has {path:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_run_the_designs_flow_on_a_secured_cluster_within_the_acls_they_print() {
    let security = security();
    let secure_path = PathBuf::from(required("PEGASUS_TEST_SECURE"));
    let cluster = secure_path
        .parent()
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .expect("security.json sits in the cluster's directory")
        .to_owned();
    let ca = text(&security, &["ca"]);
    let sasl_ssl = text(&security, &["listeners", "sasl_ssl"]);
    let ssl = text(&security, &["listeners", "ssl"]);

    let stage = Stage::with_servers(
        env!("CARGO_BIN_EXE_identity"),
        env!("CARGO_BIN_EXE_shipping"),
        sasl_ssl.clone(),
        required("PEGASUS_TEST_POSTGRES_URL"),
    );
    let password_file = stage.dir().join("identity-kafka-password");
    std::fs::write(
        &password_file,
        format!("{}\n", text(&security, &["users", "identity-api"])),
    )
    .expect("password file written");
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let stage = stage
        .with_kafka_env(
            Service::Identity,
            vec![
                pair("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                pair("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
                pair("KAFKA_SASL_USERNAME", "identity-api"),
                pair(
                    "KAFKA_SASL_PASSWORD_FILE",
                    password_file.to_str().expect("UTF-8 path"),
                ),
                pair("KAFKA_SSL_CA_LOCATION", &ca),
            ],
        )
        .with_kafka_env(
            Service::Shipping,
            vec![
                pair("KAFKA_BOOTSTRAP_SERVERS", &ssl),
                pair("KAFKA_SECURITY_PROTOCOL", "ssl"),
                pair("KAFKA_SSL_CA_LOCATION", &ca),
                pair(
                    "KAFKA_SSL_CERTIFICATE_LOCATION",
                    &text(
                        &security,
                        &["client_certificates", "shipping-api", "certificate"],
                    ),
                ),
                pair(
                    "KAFKA_SSL_KEY_LOCATION",
                    &text(&security, &["client_certificates", "shipping-api", "key"]),
                ),
            ],
        );
    let identity_instance = stage.instance(Service::Identity, "secured").await;
    let shipping_instance = stage.instance(Service::Shipping, "secured").await;

    // What each prints is all each is granted.
    let identity_acls = stage.print_acls(&identity_instance, &[]);
    // Shipping's principal is its certificate's subject, which the broker maps to
    // `User:shipping-api`.
    let shipping_acls = stage.print_acls(&shipping_instance, &["--principal", "shipping-api"]);
    let rules = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for (listing, principal) in [
        (&identity_acls, "User:identity-api"),
        (&shipping_acls, "User:shipping-api"),
    ] {
        let rules = rules(listing);
        assert!(!rules.is_empty(), "{listing}");
        assert!(
            rules
                .iter()
                .all(|rule| rule.starts_with(&format!("allow {principal} "))),
            "{listing}"
        );
    }
    assert!(
        rules(&identity_acls).contains(&format!(
            "allow User:identity-api READ GROUP LITERAL {}-shipmentcreated-consumer",
            identity_instance.client_id
        )),
        "{identity_acls}"
    );
    apply_acls(&cluster, &identity_acls);
    apply_acls(&cluster, &shipping_acls);

    let identity = stage.start(&identity_instance, 0).await;
    let shipping = stage.start(&shipping_instance, 0).await;
    until_ready(&identity, STEP).await;
    until_ready(&shipping, STEP).await;

    // Identity's relay publishes UserCreatedEvent; Shipping's consumer fills its cache
    // (until then Shipping refuses the shipment); Shipping's relay publishes the shipment;
    // Identity's consumer logs it.
    let user = register(identity.address(), stage.run(), "secured").await;
    let tracking = format!("S{}", stage.run().simple());
    let shipment = first_shipment(shipping.address(), &user, &tracking).await;
    let entries = until(
        CATCH_UP,
        "the shipment in Identity's activity log",
        || activity(identity.address(), &user),
        |entries| !entries.is_empty(),
    )
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].shipment_id, shipment);
}

//! `--print-acls [--principal NAME]`: the ACLs a service needs, as `scripts/kafka acl`
//! reads them and as `kafka-acls.sh` commands, for a cluster whose authorizer denies what
//! no ACL allows.

use pegasus_events::acl::ServiceAcls;
use pegasus_events::KafkaConfig;

/// The principal the service's ACLs are for: the one given after `--principal` (with
/// mutual TLS, the name the broker's mapping rules make of the client certificate's
/// subject), else its SASL user name, else its client id.
pub fn principal(kafka: &KafkaConfig) -> String {
    let mut args = std::env::args()
        .skip_while(|arg| arg != "--principal")
        .skip(1);
    args.next()
        .or_else(|| kafka.sasl_username.clone())
        .unwrap_or_else(|| kafka.client_id.clone())
}

/// The text `--print-acls` prints: one rule per line, which `scripts/kafka acl` applies as
/// it is, then the same rules as `kafka-acls.sh` commands, commented out (`#`), for a
/// cluster run with Kafka's own tools.
pub fn listing(service: &str, acls: &ServiceAcls, bootstrap: &str) -> String {
    let mut text = format!(
        "# The ACLs {service} needs, for {}: pipe into `scripts/kafka acl`, or run the\n\
         # kafka-acls.sh commands below.\n",
        acls.principal()
    );
    text.push_str(&acls.to_string());
    for rule in acls.rules() {
        text.push_str("# ");
        text.push_str(&rule.kafka_acls_command(bootstrap));
        text.push('\n');
    }
    text
}

/// What a service's `run_process` does on `--print-acls`: prints the [`listing`] of what
/// `acls` resolves to, or the error, and returns the exit code.
pub async fn print<E: std::error::Error + 'static>(
    service: &str,
    bootstrap: &str,
    acls: impl std::future::Future<Output = Result<ServiceAcls, E>>,
) -> std::process::ExitCode {
    match acls.await {
        Ok(acls) => {
            print!("{}", listing(service, &acls, bootstrap));
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", pegasus_events::error::Report::new(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether the process was started with `--print-acls`.
pub fn requested() -> bool {
    std::env::args().skip(1).any(|arg| arg == "--print-acls")
}

#[cfg(test)]
mod tests {
    use pegasus_events::acl::ServiceAcls;

    use super::*;

    #[test]
    fn the_listing_has_the_rules_for_scripts_kafka_and_the_commands_commented_out() {
        let acls = ServiceAcls::new("shipping-api").topic_write("shipping.shipment.created");
        let text = listing("shipping-service", &acls, "broker:9093");
        let rules: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rules,
            ["allow User:shipping-api WRITE TOPIC LITERAL shipping.shipment.created"]
        );
        assert!(text.contains(
            "# kafka-acls.sh --bootstrap-server broker:9093 --add --allow-principal \
             User:shipping-api --operation WRITE --topic shipping.shipment.created \
             --resource-pattern-type literal"
        ));
    }
}

//! The demo's binary: [`pegasus_demo::run_process`], the Identity and Shipping services and
//! a Kafka-protocol broker in one process, with nothing to install.
//!
//! ```sh
//! cargo run -p pegasus-demo                  # Shipping on 5100, Identity on 5101; curl lines
//! cargo run -p pegasus-demo -- --scenario    # the Create Shipment flow, step by step; exit 0
//! ```

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pegasus_demo::run_process().await
}

//! The shipping service's process: settings from `appsettings.json` (if present) and the
//! environment, logs to stdout, runs until SIGTERM or Ctrl-C.
//!
//! ```sh
//! export JWT_SECRET=$(head -c 32 /dev/urandom | base64)   # the same for Identity
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! cargo run -p shipping-service            # http://127.0.0.1:5100, sqlite://shipping.db
//! ```

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shipping_service::run_process().await
}

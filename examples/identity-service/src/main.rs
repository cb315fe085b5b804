//! The identity service's process: settings from `appsettings.json` (if present) and the
//! environment, logs to stdout, runs until SIGTERM or Ctrl-C.
//!
//! ```sh
//! export JWT_SECRET=$(head -c 32 /dev/urandom | base64)   # the same for Shipping
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! cargo run -p identity-service            # http://127.0.0.1:5101, sqlite://identity.db
//! ```

#[tokio::main]
async fn main() -> std::process::ExitCode {
    identity_service::run_process().await
}

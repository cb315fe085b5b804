//! The identity service's process: settings from `appsettings.json` (if present) and the
//! environment, logs to stdout, runs until SIGTERM or Ctrl-C.
//!
//! ```sh
//! export JWT_SECRET=$(head -c 32 /dev/urandom | base64)   # the same for Shipping
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! cargo run -p identity-service            # http://127.0.0.1:5101, sqlite://identity.db
//! ```

use std::process::ExitCode;

use identity_service::IdentitySettings;
use pegasus_events::error::Report;
use service_kit::logging::{self, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    logging::init(LogFormat::from_env());
    let settings = match IdentitySettings::load("appsettings.json") {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {}", Report::new(&error));
            return ExitCode::FAILURE;
        }
    };
    let shutdown = service_kit::shutdown::on_signal();
    match identity_service::run(settings, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", Report::new(&error));
            ExitCode::FAILURE
        }
    }
}

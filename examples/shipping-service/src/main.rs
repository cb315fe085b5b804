//! The shipping service's process: settings from `appsettings.json` (if present) and the
//! environment, logs to stdout, runs until SIGTERM or Ctrl-C.
//!
//! ```sh
//! export JWT_SECRET=$(head -c 32 /dev/urandom | base64)   # the same for Identity
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! cargo run -p shipping-service            # http://127.0.0.1:5100, sqlite://shipping.db
//! ```

use std::process::ExitCode;

use pegasus_events::error::Report;
use service_kit::logging::{self, LogFormat};
use shipping_service::ShippingSettings;

#[tokio::main]
async fn main() -> ExitCode {
    logging::init(LogFormat::from_env());
    let settings = match ShippingSettings::load("appsettings.json") {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {}", Report::new(&error));
            return ExitCode::FAILURE;
        }
    };
    let shutdown = service_kit::shutdown::on_signal();
    match shipping_service::run(settings, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", Report::new(&error));
            ExitCode::FAILURE
        }
    }
}

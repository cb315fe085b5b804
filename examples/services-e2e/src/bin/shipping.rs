//! The Shipping service as a process for the end-to-end tests of this crate: exactly what
//! `examples/shipping-service/src/main.rs` does (settings from `appsettings.json` if
//! present and the environment, logs to stdout, runs until SIGTERM or Ctrl-C), built here
//! so that the tests can start it as a child with `env!("CARGO_BIN_EXE_shipping")`.

use std::process::ExitCode;

use pegasus_events::error::Report;
use service_kit::logging::{self, LogFormat};
use service_kit::ServiceSettings;

#[tokio::main]
async fn main() -> ExitCode {
    logging::init(LogFormat::from_env());
    let settings = match ServiceSettings::load("appsettings.json", &shipping_service::DEFAULTS) {
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

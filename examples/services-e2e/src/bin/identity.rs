//! The Identity service as a process for the end-to-end tests of this crate: exactly what
//! `examples/identity-service/src/main.rs` does (settings from `appsettings.json` if
//! present and the environment, logs to stdout, runs until SIGTERM or Ctrl-C), built here
//! so that the tests can start it as a child with `env!("CARGO_BIN_EXE_identity")`.

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

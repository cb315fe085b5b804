//! The Identity service as a process for the end-to-end tests of this crate:
//! `identity_service::run_process`, as the service's own binary runs it, built here so that the
//! tests can start it as a child with `env!("CARGO_BIN_EXE_identity")`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    identity_service::run_process().await
}

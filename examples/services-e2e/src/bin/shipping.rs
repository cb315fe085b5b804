//! The Shipping service as a process for the end-to-end tests of this crate:
//! `shipping_service::run_process`, as the service's own binary runs it, built here so that the
//! tests can start it as a child with `env!("CARGO_BIN_EXE_shipping")`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shipping_service::run_process().await
}

//! The demo as a process for the load bench of this crate: `pegasus_demo::run_process`, as
//! the demo's own binary runs it (both services and the embedded broker in one process,
//! SQLite), built here so that the bench can start it as a child with
//! `env!("CARGO_BIN_EXE_demo")`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pegasus_demo::run_process().await
}

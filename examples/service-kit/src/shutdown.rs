//! Graceful shutdown within a bound: on SIGTERM or Ctrl-C a [`CancellationToken`] is
//! cancelled; the HTTP server stops accepting connections and finishes the requests in
//! flight ([`serve`]); the service then waits for its relay and consumers, each at most a
//! given time ([`drain`]), so the process ends even when a dependency hangs.
//!
//! One token per process is enough: the demo that runs both services in one process hands
//! them the same token (or child tokens) and cancels it once.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use axum::Router;
pub use tokio_util::sync::CancellationToken;

use crate::Error;

/// How long a service waits for each of its workers (relay, consumer) after the signal,
/// unless it chooses otherwise: enough for a relay to see its batch in flight
/// acknowledged, short of the 30 s a container runtime usually waits before SIGKILL.
pub const DEFAULT_DRAIN_BOUND: Duration = Duration::from_secs(10);

/// A token cancelled at the first SIGTERM or Ctrl-C (SIGINT). The task that waits for the
/// signal ends when the token is cancelled by someone else.
///
/// # Panics
///
/// Outside a Tokio runtime (it spawns the task that waits).
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = pegasus_events::consumer::shutdown_signal() => {
                tracing::info!("shutdown signal received: stopping");
                cancel.cancel();
            }
            () = cancel.cancelled() => {}
        }
    });
    token
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and
/// returns once the requests in flight are answered.
///
/// # Errors
///
/// [`Error::Http`] when the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .into_future()
        .await
        .map_err(|source| Error::Http { address, source })
}

/// Waits for `work` at most `bound`; `None` (and a WARN line naming `what`) when the bound
/// ran out, and `work` is dropped (which cancels a future, not a spawned task: see
/// [`drain_task`]).
pub async fn drain<F: Future>(what: &str, bound: Duration, work: F) -> Option<F::Output> {
    match tokio::time::timeout(bound, work).await {
        Ok(output) => Some(output),
        Err(_) => {
            tracing::warn!(
                worker = what,
                bound_ms = bound.as_millis() as u64,
                "did not stop within its bound; abandoning it"
            );
            None
        }
    }
}

/// [`drain`] for a spawned task: a task still running at the bound is aborted (dropping a
/// `JoinHandle` would leave it running); a task that panicked is logged. `Some` with the
/// task's output when it finished in time.
pub async fn drain_task<T>(
    what: &str,
    bound: Duration,
    mut task: tokio::task::JoinHandle<T>,
) -> Option<T> {
    match drain(what, bound, &mut task).await {
        Some(Ok(output)) => Some(output),
        Some(Err(error)) => {
            tracing::error!(worker = what, %error, "ended abnormally");
            None
        }
        None => {
            task.abort();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_bound() {
        let stopped = drain("quick", Duration::from_secs(1), async { 7 }).await;
        assert_eq!(stopped, Some(7));
        let hung = drain("hung", Duration::from_secs(1), std::future::pending::<()>()).await;
        assert_eq!(hung, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_still_running_at_the_bound_is_aborted() {
        let hung = tokio::spawn(std::future::pending::<()>());
        let aborted = hung.abort_handle();
        assert_eq!(drain_task("hung", Duration::from_secs(1), hung).await, None);
        tokio::task::yield_now().await;
        assert!(aborted.is_finished());
        let quick = tokio::spawn(async { 7 });
        assert_eq!(
            drain_task("quick", Duration::from_secs(1), quick).await,
            Some(7)
        );
    }

    #[tokio::test]
    async fn serve_returns_after_cancellation() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Router::new(), token.clone()));
        token.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("stopped in time")
            .expect("not panicked");
        assert!(result.is_ok());
    }
}

//! `/metrics`: the process's metrics in the Prometheus text format, pegasus-events' own
//! (published, consumed, outbox, inbox) included.
//!
//! The recorder is process-wide: [`install_prometheus`] installs it once and hands every
//! later caller the same handle, so two services in one process (the demo) share one
//! registry, each series labelled with its service.

use std::sync::{Mutex, OnceLock};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Error;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Held while the recorder is installed, so that a second caller (the demo starts both
/// services at once) waits for the first one's handle instead of failing to install its
/// own: the global recorder can be set once, and `HANDLE` is set only after that.
static INSTALLING: Mutex<()> = Mutex::new(());

/// Installs the Prometheus recorder with pegasus-events' histogram buckets, once per
/// process, and returns the handle that renders it.
///
/// Install it before creating producers, consumers and relays: what they register before a
/// recorder exists stays a no-op (see pegasus-events' README, "Metrics").
///
/// # Errors
///
/// [`Error::Metrics`] when another recorder was installed first.
pub fn install_prometheus() -> Result<PrometheusHandle, Error> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in pegasus_events::metrics::histogram_buckets() {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .map_err(|e| Error::Metrics(e.to_string()))?;
    }
    // Fails only when a recorder other than ours was installed first.
    let handle = builder
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))?;
    pegasus_events::metrics::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// `GET /metrics`, rendering `handle`.
pub fn routes<S>(handle: PrometheusHandle) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new().route("/metrics", get(render).with_state(handle))
}

async fn render(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn metrics_are_rendered_as_prometheus_text() {
        let handle = install_prometheus().expect("installed");
        let again = install_prometheus().expect("the same recorder");
        metrics_facade_counter();
        let app: Router = routes(again);
        let response = app
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("service_kit_test_total"), "{text}");
        assert!(handle.render().contains("service_kit_test_total"));
    }

    #[test]
    fn callers_racing_to_install_all_get_the_recorder() {
        let racers: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(install_prometheus))
            .collect();
        for racer in racers {
            racer.join().expect("not panicked").expect("installed");
        }
    }

    /// Moves a counter through the `metrics` facade pegasus-events reports to.
    fn metrics_facade_counter() {
        metrics::counter!("service_kit_test_total").increment(1);
    }
}

//! Liveness and readiness: `/health/live` answers 200 while the process serves HTTP;
//! `/health/ready` answers 200 only when every registered check passes at the time of the
//! request, else 503, both with a JSON body listing each check.
//!
//! A check is either an async probe (the database answers `SELECT 1`) or a flag the
//! service raises and lowers itself (the relay is running). Each probe gets
//! [`CHECK_TIMEOUT`]: a hanging dependency makes the answer 503, not a hanging request.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use serde::Serialize;

/// How long one readiness probe may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The registry of named readiness checks; cheap to clone, clones share the checks.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(String, Probe)>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().iter().map(|(name, _)| name.clone()).collect();
        f.debug_struct("Readiness").field("checks", &names).finish()
    }
}

/// A readiness flag, registered by [`Readiness::flag`]: the check passes while it is
/// raised. Cheap to clone; clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// Marks the component ready, or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the component is ready.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One check's result in the `/health/ready` body.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name (`database`, `relay`).
    pub name: String,
    /// `"up"` or `"down"`.
    pub status: &'static str,
    /// Why it is down, in words safe to show (no connection strings, no secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The `/health/ready` body.
#[derive(Clone, Debug, Serialize)]
pub struct ReadinessReport {
    /// `"ready"` or `"not_ready"`.
    pub status: &'static str,
    /// Each check, in registration order.
    pub checks: Vec<CheckResult>,
}

impl ReadinessReport {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

impl Readiness {
    /// An empty registry: ready until a check is added.
    pub fn new() -> Self {
        Readiness::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Probe)>> {
        // A poisoned lock only means a registration panicked; the list is still whole.
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a probe: `probe()` returns `Err(detail)` while the dependency is not usable.
    /// The detail is shown in the response body, so it must not hold secrets.
    pub fn add_check<F, Fut>(&self, name: impl Into<String>, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let probe: Probe = Arc::new(move || Box::pin(probe()));
        self.lock().push((name.into(), probe));
    }

    /// Adds a check that passes while the returned flag is raised (it starts lowered).
    pub fn flag(&self, name: impl Into<String>) -> ReadyFlag {
        let flag = ReadyFlag::default();
        let watched = flag.clone();
        self.add_check(name, move || {
            let up = watched.is_set();
            async move {
                if up {
                    Ok(())
                } else {
                    Err("not running".to_owned())
                }
            }
        });
        flag
    }

    /// Runs every check, concurrently, each within [`CHECK_TIMEOUT`].
    pub async fn evaluate(&self) -> ReadinessReport {
        let checks: Vec<(String, Probe)> = self.lock().clone();
        let results =
            futures_util::future::join_all(checks.into_iter().map(|(name, probe)| async move {
                let outcome = tokio::time::timeout(CHECK_TIMEOUT, probe()).await;
                let detail = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(detail)) => Some(detail),
                    Err(_) => Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
                };
                CheckResult {
                    name,
                    status: if detail.is_none() { "up" } else { "down" },
                    detail,
                }
            }))
            .await;
        let ready = results.iter().all(|check| check.detail.is_none());
        ReadinessReport {
            status: if ready { "ready" } else { "not_ready" },
            checks: results,
        }
    }

    /// `/health/live` and `/health/ready`, for merging into a service's router.
    pub fn routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready).with_state(self.clone()))
    }
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, Json<ReadinessReport>) {
    let report = readiness.evaluate().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get_json(app: Router, path: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[tokio::test]
    async fn ready_only_when_every_check_passes() {
        let readiness = Readiness::new();
        readiness.add_check("database", || async { Ok(()) });
        let relay = readiness.flag("relay");
        let app: Router = readiness.routes();

        let (status, body) = get_json(app.clone(), "/health/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["checks"][0]["name"], "database");
        assert_eq!(body["checks"][0]["status"], "up");
        assert_eq!(body["checks"][1]["name"], "relay");
        assert_eq!(body["checks"][1]["status"], "down");
        assert_eq!(body["checks"][1]["detail"], "not running");

        relay.set(true);
        let (status, body) = get_json(app.clone(), "/health/ready").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");

        let (status, body) = get_json(app, "/health/live").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "alive");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_is_down_not_a_hanging_request() {
        let readiness = Readiness::new();
        readiness.add_check("broker", std::future::pending);
        readiness.add_check("database", || async {
            Err("connection refused".to_owned())
        });
        let report = readiness.evaluate().await;
        assert!(!report.is_ready());
        assert_eq!(report.checks[0].status, "down");
        assert_eq!(
            report.checks[1].detail.as_deref(),
            Some("connection refused")
        );
    }
}

//! The admin HTTP server: `/metrics`, `/healthz` (the process is up) and `/readyz` (the
//! replica can do its job: it either runs the controller with synced caches, or stands by for
//! the Lease).
//!
//! A standby reports ready on purpose: a Deployment rollout waits for new pods to turn ready,
//! and a new pod stays a standby until the old leader exits — which it only does once the
//! rollout proceeds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::telemetry::metrics::Metrics;

/// State shared by the admin routes.
#[derive(Clone)]
pub struct AdminState {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

impl AdminState {
    /// Not ready until [`AdminState::set_ready`] says so.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Flip `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The admin routes.
pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Bind the admin address; done before anything else so a taken port fails at start.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::AdminServer { addr, source })
}

/// Serve the admin routes until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::AdminServer { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_status(state: &AdminState, path: &str) -> (StatusCode, String) {
        let response = app(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_the_flag_and_healthz_is_always_ok() {
        let state = AdminState::new(Metrics::new());
        assert_eq!(
            get_status(&state, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_status(&state, "/healthz").await.0, StatusCode::OK);
        state.set_ready(true);
        assert_eq!(get_status(&state, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_in_text_format() {
        let metrics = Metrics::new();
        metrics.reconciled(
            std::time::Duration::from_millis(3),
            std::time::Duration::ZERO,
        );
        let (status, body) = get_status(&AdminState::new(metrics), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("sandbox_operator_reconciliations_total 1"),
            "{body}"
        );
    }
}

//! The admin HTTP server, plain HTTP for the kubelet's probes: `/healthz` (the process is up)
//! and `/readyz` (the replica can do its job: it either runs the controller with synced caches,
//! or stands by for the Lease). The metrics are served apart, behind a token (see `metrics`).
//!
//! A standby reports ready on purpose: a Deployment rollout waits for new pods to turn ready,
//! and a new pod stays a standby until the old leader exits — which it only does once the
//! rollout proceeds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

/// State shared by the admin routes.
#[derive(Clone, Default)]
pub struct AdminState {
    ready: Arc<AtomicBool>,
}

impl AdminState {
    /// Not ready until [`AdminState::set_ready`] says so.
    pub fn new() -> Self {
        Self::default()
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
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
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
pub(super) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_status(state: &AdminState, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        respond(app(state.clone()), request).await
    }

    /// What `router` answers `request`: the status and the body as text.
    pub(in crate::process) async fn respond(
        router: Router,
        request: Request<Body>,
    ) -> (StatusCode, String) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_the_flag_and_healthz_is_always_ok() {
        let state = AdminState::new();
        assert_eq!(
            get_status(&state, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_status(&state, "/healthz").await.0, StatusCode::OK);
        state.set_ready(true);
        assert_eq!(get_status(&state, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_not_served_here() {
        let (status, _) = get_status(&AdminState::new(), "/metrics").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

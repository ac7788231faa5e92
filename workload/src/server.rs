//! Serving and draining.
//!
//! On shutdown the service first leaves (for `SHUTDOWN_LEAVE_MS`): it still admits, but closes every
//! connection after its next answer, so kept-alive clients reconnect to other pods. Then it keeps
//! listening while it drains, so Kubernetes sees `/readiness` answer 503 and
//! new `/expensive-op` requests are refused with 503 instead of a connection error. Once every accepted
//! operation has answered, the listener closes and open connections finish; if that takes longer than the
//! grace period, the service stops anyway.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::{Config, ShutdownTiming};
use crate::connections::{self, ConnectionLimits};
use crate::metrics::Metrics;
use crate::routes::{AppState, app};

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every accepted operation completed and was answered.
    Drained,
    /// The grace period ran out with operations still queued or running.
    GraceExpired {
        /// Operations that were cut off.
        abandoned: usize,
    },
}

/// The state for a configuration: an empty queue and fresh metrics.
pub fn state_for(config: &Config) -> prometheus::Result<AppState> {
    Ok(AppState::new(
        config.queue_limits(),
        Metrics::new()?,
        config.operation_duration(),
        config.connection_close,
        config.occupancy_window(),
    ))
}

/// Serves `state` on `listener` within `limits` until `shutdown_signal` resolves, then leaves and
/// drains as `shutdown` says.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown_signal: impl Future<Output = ()> + Send + 'static,
    shutdown: ShutdownTiming,
    limits: ConnectionLimits,
) -> std::io::Result<Shutdown> {
    let ShutdownTiming { leave, grace } = shutdown;
    let admission = Arc::clone(&state.admission);
    let metrics = state.metrics.clone();
    let (close_listener, listener_closed) = oneshot::channel::<()>();
    let accepting = tokio::spawn(connections::accept(
        listener,
        app(state),
        metrics,
        limits,
        async move {
            // Either a send or a dropped sender means "stop".
            let _ = listener_closed.await;
        },
    ));

    shutdown_signal.await;
    if !leave.is_zero() {
        // The Service sends no new connection here any more, but kept-alive ones stay: a client whose
        // idle connection the drain closed as it sent a request would see that request fail. While
        // leaving, each client's next answer closes its connection, and it reconnects elsewhere.
        admission.start_leaving();
        tracing::info!(
            leave_ms = leave.as_millis() as u64,
            "shutdown requested: closing every connection after its next answer"
        );
        tokio::time::sleep(leave).await;
    }
    admission.start_draining();
    let waiting = admission.snapshot();
    tracing::info!(
        waiting = waiting.waiting,
        in_flight = waiting.in_flight,
        grace_ms = grace.as_millis() as u64,
        "shutdown requested: draining accepted operations"
    );

    let deadline = tokio::time::Instant::now() + grace;
    let outcome = match tokio::time::timeout_at(deadline, admission.drained()).await {
        Ok(()) => Shutdown::Drained,
        Err(_) => {
            let left = admission.snapshot();
            Shutdown::GraceExpired {
                abandoned: left.waiting + left.in_flight,
            }
        }
    };
    drop(close_listener);
    if outcome == Shutdown::Drained {
        // Let the last responses reach their clients, still within the grace period; idle
        // kept-alive connections are closed at once.
        let connections = accepting.await.map_err(std::io::Error::other)?;
        if tokio::time::timeout_at(deadline, connections.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open when the grace period ended");
        }
    }
    Ok(outcome)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

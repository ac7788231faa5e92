//! Accepting connections with bounds, so slow or idle clients cannot hold the pod's memory or file
//! descriptors:
//!
//! - hyper's header read timeout: a request's head (request line and headers) must arrive within
//!   `header_read_timeout` of the server starting to wait for it. hyper starts waiting right after
//!   the previous response, so the same timeout closes a kept-alive connection that sends nothing.
//!   A request whose head has arrived is not idle: one waiting in the queue keeps its connection
//!   until it is answered.
//! - Request heads over [`MAX_REQUEST_HEAD_BYTES`] get 431; malformed ones 400 (hyper's parser).
//! - At most `max_connections` connections are served in full. Past that the server still accepts,
//!   but such a connection gets the overflow lane: one request, whose head must arrive within
//!   [`OVERFLOW_HEADER_READ_TIMEOUT`], and only the probes and `/metrics` are served (anything else
//!   answers 503 and closes). The kubelet and Prometheus send their heads at once, so probes keep
//!   their answers while slow clients hold every regular place, and an overflow connection lives
//!   about a second, so what it holds is bounded by the accept rate. Not accepting at all would
//!   have let the backlog push back, but the probes would wait in that backlog too, and the
//!   kubelet would restart a pod that is only being held open.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::contract::{LIVENESS_PATH, METRICS_PATH, READINESS_PATH};
use crate::metrics::Metrics;

/// Largest request head, request line and headers together (hyper's smallest buffer is 8 KiB).
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;

/// How long a connection past the bound has to send its one request's head.
pub const OVERFLOW_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Paths an overflow connection is served: what the kubelet and Prometheus ask for.
const OVERFLOW_PATHS: [&str; 3] = [LIVENESS_PATH, READINESS_PATH, METRICS_PATH];

/// How many connections are served in full, and how long a request's head may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served in full; later ones get the overflow lane.
    pub max_connections: usize,
    /// Time for a request's head to arrive, which is also the most a kept-alive connection may
    /// stay idle.
    pub header_read_timeout: Duration,
}

/// One open connection, counted while it lives.
struct OpenConnection {
    open: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl OpenConnection {
    /// Counts a new connection; also returns how many are open with it.
    fn new(open: &Arc<AtomicUsize>, metrics: &Metrics) -> (Self, usize) {
        let count = open.fetch_add(1, Ordering::Relaxed) + 1;
        metrics.connection_opened();
        let connection = Self {
            open: Arc::clone(open),
            metrics: metrics.clone(),
        };
        (connection, count)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connection_closed();
    }
}

/// Accepts connections on `listener` and serves `app` on them within `limits`, until `stop`
/// resolves; returns the handle that waits for the open connections to finish.
pub async fn accept(
    listener: TcpListener,
    app: Router,
    metrics: Metrics,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) -> GracefulShutdown {
    let overflow = app.clone().layer(middleware::from_fn(overflow_paths_only));
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors (EMFILE) or memory: the pending connections stay in the
                    // backlog; try again shortly instead of spinning.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let (counted, open_now) = OpenConnection::new(&open, &metrics);
        let over_limit = open_now > limits.max_connections;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .max_buf_size(MAX_REQUEST_HEAD_BYTES);
        let service = if over_limit {
            metrics.connection_over_limit();
            builder
                .header_read_timeout(OVERFLOW_HEADER_READ_TIMEOUT)
                .keep_alive(false);
            overflow.clone()
        } else {
            builder.header_read_timeout(limits.header_read_timeout);
            app.clone()
        };
        let service = TowerToHyperService::new(
            service.map_request(|request: Request<hyper::body::Incoming>| request.map(Body::new)),
        );
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that goes away mid-request ends here too; its handler future is dropped,
            // and with it any queue place it held.
            let _ = connection.await;
            drop(counted);
        });
    }
    graceful
}

/// The overflow lane: the probes and `/metrics`, and 503 with `Connection: close` for the rest.
async fn overflow_paths_only(request: Request, next: Next) -> Response {
    if OVERFLOW_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONNECTION, "close")],
        "too many connections\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::QueueSnapshot;

    #[test]
    fn the_open_gauge_ends_at_the_open_count_under_concurrent_churn() {
        // Setting the gauge from a count read a moment earlier let a slower thread write a stale
        // value last; moving it with each open and close cannot.
        let metrics = Metrics::new().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let kept: Vec<_> = (0..3)
            .map(|_| OpenConnection::new(&open, &metrics).0)
            .collect();
        let churners: Vec<_> = (0..4)
            .map(|_| {
                let (open, metrics) = (Arc::clone(&open), metrics.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        drop(OpenConnection::new(&open, &metrics));
                    }
                })
            })
            .collect();
        churners.into_iter().for_each(|t| t.join().unwrap());
        let queue = QueueSnapshot {
            waiting: 0,
            in_flight: 0,
            concurrency: 1,
        };
        let text = metrics.render(queue, 0.0).unwrap();
        assert!(text.contains("\nhttp_connections_open 3\n"), "{text}");
        assert_eq!(open.load(Ordering::Relaxed), kept.len());
    }
}

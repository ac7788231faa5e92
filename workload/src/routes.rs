//! The HTTP routes: `/expensive-op` behind the shared queue, the two probes and `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get};
use axum::{Json, Router};
use serde_json::json;

use crate::admission::{Admission, QueueLimits, Readiness, Rejection};
use crate::contract::{
    ConnectionClose, EXPENSIVE_OP_PATH, LIVENESS_PATH, METRICS_PATH, READINESS_PATH,
};
use crate::metrics::Metrics;
use crate::request_metrics::RecordDurationLayer;
use crate::retry_after::{
    MAX_RETRY_AFTER_SECONDS, MIN_RETRY_AFTER_SECONDS, OperationTimes, retry_after_seconds,
};

/// Everything the handlers share. One `Arc` around all of it: axum clones the state for every extractor,
/// and reference counts touched by both worker threads on every request are a measurable cost.
#[derive(Debug, Clone)]
pub struct AppState(Arc<SharedState>);

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct SharedState {
    /// The one queue every `/expensive-op` request goes through.
    pub admission: Arc<Admission>,
    /// Registry behind `/metrics`.
    pub metrics: Metrics,
    /// How long the simulated operation takes.
    pub operation_duration: Duration,
    /// When an answered connection is closed so that the client reconnects.
    pub connection_close: ConnectionClose,
    /// How long operations took lately, for `Retry-After`.
    pub operation_times: OperationTimes,
    rejections: RejectionResponses,
}

impl AppState {
    /// State for a fresh queue with the given limits, its occupancy averaged over `occupancy_window`.
    pub fn new(
        limits: QueueLimits,
        metrics: Metrics,
        operation_duration: Duration,
        connection_close: ConnectionClose,
        occupancy_window: Duration,
    ) -> Self {
        let close_after_rejection = connection_close != ConnectionClose::Never;
        Self(Arc::new(SharedState {
            admission: Arc::new(Admission::new(limits, occupancy_window)),
            metrics,
            operation_duration,
            connection_close,
            operation_times: OperationTimes::new(operation_duration),
            rejections: RejectionResponses::new(close_after_rejection),
        }))
    }
}

impl SharedState {
    /// Seconds until `places` operations are likely to have finished.
    fn retry_after(&self, places: usize) -> u64 {
        let concurrency = self.admission.limits().concurrency;
        retry_after_seconds(places, concurrency, self.operation_times.recent())
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The 503 answers, rendered once per `Retry-After` value: under overload nearly every request takes
/// this path, which stays a lookup.
#[derive(Debug)]
struct RejectionResponses {
    close: bool,
    /// Index `s - MIN_RETRY_AFTER_SECONDS`: the header and the circuit-open body for `s` seconds.
    circuit_open: Vec<(HeaderValue, Bytes)>,
    /// A draining pod is gone soon; its Service's other pods can serve the retry at once.
    shutting_down: (HeaderValue, Bytes),
}

impl RejectionResponses {
    fn new(close: bool) -> Self {
        let render = |reason: Rejection, seconds: u64| {
            let body = json!({
                "error": "Service Unavailable",
                "reason": reason.as_str(),
                "retryAfterSeconds": seconds,
            });
            (HeaderValue::from(seconds), Bytes::from(body.to_string()))
        };
        Self {
            close,
            circuit_open: (MIN_RETRY_AFTER_SECONDS..=MAX_RETRY_AFTER_SECONDS)
                .map(|seconds| render(Rejection::CircuitOpen, seconds))
                .collect(),
            shutting_down: render(Rejection::ShuttingDown, MIN_RETRY_AFTER_SECONDS),
        }
    }

    /// The answer to a request turned away for `reason`; `retry_after` (seconds, within the
    /// bounds of [`crate::retry_after`]) is used for an open circuit.
    fn response(&self, reason: Rejection, retry_after: u64) -> Response {
        let (retry_after, body) = match reason {
            Rejection::CircuitOpen => {
                &self.circuit_open[(retry_after - MIN_RETRY_AFTER_SECONDS) as usize]
            }
            Rejection::ShuttingDown => &self.shutting_down,
        };
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::RETRY_AFTER, retry_after.clone()),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
            ],
            body.clone(),
        )
            .into_response();
        if self.close {
            close_connection(&mut response);
        }
        response
    }
}

/// Route label for requests that matched no route, so unknown paths cannot blow up label cardinality.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Builds the service's router.
pub fn app(state: AppState) -> Router {
    let histogram = state.metrics.request_duration();
    let timed = |route: &'static str, handler: MethodRouter<AppState>| {
        handler.layer(RecordDurationLayer::new(histogram.clone(), route))
    };
    Router::new()
        .route(
            EXPENSIVE_OP_PATH,
            timed(EXPENSIVE_OP_PATH, get(expensive_op)),
        )
        .route(READINESS_PATH, timed(READINESS_PATH, get(readiness)))
        .route(LIVENESS_PATH, timed(LIVENESS_PATH, get(liveness)))
        .route(METRICS_PATH, timed(METRICS_PATH, get(metrics)))
        .fallback(timed(UNMATCHED_ROUTE, any(not_found)))
        .with_state(state)
}

async fn expensive_op(State(state): State<AppState>) -> Response {
    let ticket = match state.admission.try_admit() {
        Ok(ticket) => ticket,
        Err(reason) => {
            state.metrics.operation_rejected(reason);
            tracing::debug!(reason = reason.as_str(), "expensive operation rejected");
            let places = state.admission.places_until_admitted();
            return state.rejections.response(reason, state.retry_after(places));
        }
    };
    // If the client goes away, hyper drops this future: the ticket and the slot go with it.
    let started = Instant::now();
    let _slot = ticket.run_slot().await;
    let queued_ms = started.elapsed().as_millis() as u64;
    let operation_started = Instant::now();
    tokio::time::sleep(state.operation_duration).await;
    state.operation_times.record(operation_started.elapsed());
    state.metrics.operation_completed();
    tracing::debug!(queued_ms, "expensive operation completed");
    let mut response = Json(json!({
        "status": "done",
        "queuedMs": queued_ms,
        "durationMs": state.operation_duration.as_millis() as u64,
    }))
    .into_response();
    // Asked while this request still holds its place, so "a task waits" means one behind it.
    if state.admission.close_after_answer(state.connection_close) {
        close_connection(&mut response);
        state.metrics.connection_closed_after_answer();
    }
    response
}

/// Makes hyper close the connection once `response` is written: the client's next request comes on a
/// new connection, which its Service balances anew.
fn close_connection(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

async fn readiness(State(state): State<AppState>) -> Response {
    match state.admission.readiness() {
        Readiness::Ready => (StatusCode::OK, "OK").into_response(),
        // The kubelet ignores Retry-After; a person or a script polling readiness can use it.
        Readiness::Overloaded => {
            let places = state.admission.places_until_ready();
            let retry_after = HeaderValue::from(state.retry_after(places));
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after)],
                "Too Many Requests",
            )
                .into_response()
        }
        Readiness::ShuttingDown => {
            (StatusCode::SERVICE_UNAVAILABLE, "Shutting Down").into_response()
        }
    }
}

async fn liveness() -> &'static str {
    "OK"
}

async fn metrics(State(state): State<AppState>) -> Response {
    let admission = &state.admission;
    match state
        .metrics
        .render(admission.snapshot(), admission.occupancy())
    {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(prometheus::TEXT_FORMAT),
            )],
            body,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics").into_response()
        }
    }
}

async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

//! The performance-sandbox workload: an HTTP service whose expensive operation sits behind a bounded queue.
//!
//! - [`admission`]: the queue and its rules (circuit breaker, backpressure), as pure functions.
//! - [`config`]: environment and flags.
//! - [`connections`]: accepting connections within bounds (header timeout, connection limit).
//! - [`routes`]: `fn app(state) -> Router`.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`request_metrics`]: the per-route request-duration layer.
//! - [`server`]: serving and draining on shutdown.

pub mod admission;
pub mod config;
pub mod connections;
pub mod metrics;
pub mod request_metrics;
pub mod routes;
pub mod server;

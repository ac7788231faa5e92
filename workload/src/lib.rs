//! The performance-sandbox workload: an HTTP service whose expensive operation sits behind a bounded queue.
//!
//! - [`contract`]: names and defaults the operator relies on; the only module without the
//!   `server` feature.
//! - [`admission`]: the queue and its rules (circuit breaker, backpressure), as pure functions.
//! - [`occupancy`]: the admitted count averaged over time, behind `queue_occupancy`.
//! - [`config`]: environment and flags.
//! - [`connections`]: accepting connections within bounds (header timeout, connection limit).
//! - [`routes`]: `fn app(state) -> Router`.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`request_metrics`]: the per-route request-duration layer.
//! - [`retry_after`]: the `Retry-After` of a turned-away request, estimated from the queue.
//! - [`server`]: serving and draining on shutdown.

pub mod contract;

#[cfg(feature = "server")]
pub mod admission;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod connections;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod occupancy;
#[cfg(feature = "server")]
pub mod request_metrics;
#[cfg(feature = "server")]
pub mod retry_after;
#[cfg(feature = "server")]
pub mod routes;
#[cfg(feature = "server")]
pub mod server;

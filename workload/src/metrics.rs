//! Prometheus metrics: the queue gauges the autoscaler reads, operation counters, request durations and
//! process metrics.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::admission::{QueueSnapshot, Rejection};

/// The service's metrics, registered in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    queue_ratio: Gauge,
    waiting: IntGauge,
    in_flight: IntGauge,
    concurrency: IntGauge,
    completed: IntCounter,
    rejected: IntCounterVec,
    request_duration: HistogramVec,
}

impl Metrics {
    /// Creates and registers every metric, including the process collector where the platform has one.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let metrics = Self {
            queue_ratio: Gauge::new(
                "queue_ratio",
                "Tasks waiting for a slot divided by CONCURRENCY; the HPA scales on this",
            )?,
            waiting: IntGauge::new("queue_waiting_tasks", "Accepted tasks waiting for a slot")?,
            in_flight: IntGauge::new("queue_in_flight_tasks", "Tasks running now")?,
            concurrency: IntGauge::new("queue_concurrency", "Tasks that may run at once")?,
            completed: IntCounter::new(
                "expensive_operations_completed_total",
                "Expensive operations that ran to completion",
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "expensive_operations_rejected_total",
                    "Expensive operation requests answered 503 without entering the queue",
                ),
                &["reason"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "HTTP request duration by matched route",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["method", "route", "status_code"],
            )?,
            registry,
        };
        for collector in [
            Box::new(metrics.queue_ratio.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.waiting.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.concurrency.clone()),
            Box::new(metrics.completed.clone()),
            Box::new(metrics.rejected.clone()),
            Box::new(metrics.request_duration.clone()),
        ] {
            metrics.registry.register(collector)?;
        }
        // Both reasons appear from the start, so rate() works before the first rejection.
        for reason in [Rejection::CircuitOpen, Rejection::ShuttingDown] {
            metrics.rejected.with_label_values(&[reason.as_str()]);
        }
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(metrics)
    }

    /// Counts a finished operation.
    pub fn operation_completed(&self) {
        self.completed.inc();
    }

    /// Counts a request the queue turned away.
    pub fn operation_rejected(&self, reason: Rejection) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Records one HTTP request. `route` is the matched route template, never the raw path.
    pub fn observe_request(&self, method: &str, route: &str, status_code: &str, seconds: f64) {
        self.request_duration
            .with_label_values(&[method, route, status_code])
            .observe(seconds);
    }

    /// Renders the text exposition format, with the queue gauges taken from `queue` at this moment.
    pub fn render(&self, queue: QueueSnapshot) -> Result<String, prometheus::Error> {
        self.queue_ratio.set(queue.queue_ratio());
        self.waiting.set(queue.waiting as i64);
        self.in_flight.set(queue.in_flight as i64);
        self.concurrency.set(queue.concurrency as i64);
        let mut buffer = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|err| prometheus::Error::Msg(err.to_string()))
    }
}

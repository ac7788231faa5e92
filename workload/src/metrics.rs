//! Prometheus metrics: the queue gauges the autoscaler reads, operation counters, request durations and
//! process metrics.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::admission::{QueueSnapshot, Rejection};
use crate::contract::{QUEUE_OCCUPANCY_METRIC, QUEUE_RATIO_METRIC};

/// How often process metrics are re-read from `/proc`. Reading them costs more than the rest of a scrape
/// together, and a second's resolution is far finer than any scrape interval.
const PROCESS_REFRESH: Duration = Duration::from_secs(1);

/// The service's metrics, registered in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    queue_ratio: Gauge,
    queue_occupancy: Gauge,
    waiting: IntGauge,
    in_flight: IntGauge,
    concurrency: IntGauge,
    completed: IntCounter,
    // The two reasons' children, resolved once: the rejection path is the hot path under overload.
    rejected_circuit_open: IntCounter,
    rejected_shutting_down: IntCounter,
    request_duration: HistogramVec,
    connections_open: IntGauge,
    connections_over_limit: IntCounter,
    connections_closed_after_answer: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric, including the process collector where the platform has one.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let rejected = IntCounterVec::new(
            Opts::new(
                "expensive_operations_rejected_total",
                "Expensive operation requests answered 503 without entering the queue",
            ),
            &["reason"],
        )?;
        let metrics = Self {
            queue_ratio: Gauge::new(
                QUEUE_RATIO_METRIC,
                "Tasks waiting for a slot divided by CONCURRENCY; the HPA scales on this",
            )?,
            queue_occupancy: Gauge::new(
                QUEUE_OCCUPANCY_METRIC,
                "Tasks running or waiting divided by CONCURRENCY, time-averaged over OCCUPANCY_WINDOW_MS",
            )?,
            waiting: IntGauge::new("queue_waiting_tasks", "Accepted tasks waiting for a slot")?,
            in_flight: IntGauge::new("queue_in_flight_tasks", "Tasks running now")?,
            concurrency: IntGauge::new("queue_concurrency", "Tasks that may run at once")?,
            completed: IntCounter::new(
                "expensive_operations_completed_total",
                "Expensive operations that ran to completion",
            )?,
            // Both reasons appear from the start, so rate() works before the first rejection.
            rejected_circuit_open: rejected.with_label_values(&[Rejection::CircuitOpen.as_str()]),
            rejected_shutting_down: rejected.with_label_values(&[Rejection::ShuttingDown.as_str()]),
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
            connections_open: IntGauge::new("http_connections_open", "Open HTTP connections")?,
            connections_over_limit: IntCounter::new(
                "http_connections_over_limit_total",
                "Connections accepted past MAX_CONNECTIONS, served one probe or /metrics request only",
            )?,
            connections_closed_after_answer: IntCounter::new(
                "http_connections_closed_after_answer_total",
                "Kept-alive connections closed after a 200 by CONNECTION_CLOSE, so the client reconnects",
            )?,
            registry,
        };
        for collector in [
            Box::new(metrics.queue_ratio.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.queue_occupancy.clone()),
            Box::new(metrics.waiting.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.concurrency.clone()),
            Box::new(metrics.completed.clone()),
            Box::new(rejected),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.connections_open.clone()),
            Box::new(metrics.connections_over_limit.clone()),
            Box::new(metrics.connections_closed_after_answer.clone()),
        ] {
            metrics.registry.register(collector)?;
        }
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(RefreshLimited::new(
            prometheus::process_collector::ProcessCollector::for_self(),
            PROCESS_REFRESH,
        )))?;
        Ok(metrics)
    }

    /// Counts a finished operation.
    pub fn operation_completed(&self) {
        self.completed.inc();
    }

    /// Counts a request the queue turned away.
    pub fn operation_rejected(&self, reason: Rejection) {
        match reason {
            Rejection::CircuitOpen => self.rejected_circuit_open.inc(),
            Rejection::ShuttingDown => self.rejected_shutting_down.inc(),
        }
    }

    /// Counts a connection opened. The gauge is moved, never set, so concurrent opens and closes
    /// cannot leave it at a stale count.
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// Counts a connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Counts a connection accepted past `MAX_CONNECTIONS`.
    pub fn connection_over_limit(&self) {
        self.connections_over_limit.inc();
    }

    /// Counts a connection closed after its `200` so that the client reconnects.
    pub fn connection_closed_after_answer(&self) {
        self.connections_closed_after_answer.inc();
    }

    /// The request-duration histogram, for [`crate::request_metrics::RecordDurationLayer`].
    pub fn request_duration(&self) -> HistogramVec {
        self.request_duration.clone()
    }

    /// Renders the text exposition format, with the queue gauges taken from `queue` at this moment and
    /// `queue_occupancy` from `occupancy` (see [`crate::admission::Admission::occupancy`]).
    pub fn render(
        &self,
        queue: QueueSnapshot,
        occupancy: f64,
    ) -> Result<String, prometheus::Error> {
        self.queue_ratio.set(queue.queue_ratio());
        self.queue_occupancy.set(occupancy);
        self.waiting.set(queue.waiting as i64);
        self.in_flight.set(queue.in_flight as i64);
        self.concurrency.set(queue.concurrency as i64);
        // Room for a typical scrape (about 9 KiB), so the buffer is not regrown while encoding.
        let mut text = String::with_capacity(16 * 1024);
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text)?;
        Ok(text)
    }
}

/// A collector whose samples are re-collected at most once per `refresh`; scrapes in between get the last.
struct RefreshLimited<C> {
    inner: C,
    refresh: Duration,
    last: Mutex<Option<(Instant, Vec<MetricFamily>)>>,
}

impl<C: Collector> RefreshLimited<C> {
    fn new(inner: C, refresh: Duration) -> Self {
        Self {
            inner,
            refresh,
            last: Mutex::new(None),
        }
    }
}

impl<C: Collector> Collector for RefreshLimited<C> {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*last {
            Some((at, families)) if at.elapsed() < self.refresh => families.clone(),
            _ => {
                let families = self.inner.collect();
                *last = Some((Instant::now(), families.clone()));
                families
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A collector that counts how often it is asked.
    struct Counting {
        calls: AtomicU64,
        gauge: IntGauge,
    }

    impl Collector for Counting {
        fn desc(&self) -> Vec<&Desc> {
            self.gauge.desc()
        }
        fn collect(&self) -> Vec<MetricFamily> {
            let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.gauge.set(calls as i64);
            self.gauge.collect()
        }
    }

    fn value(families: &[MetricFamily]) -> f64 {
        families[0].get_metric()[0].get_gauge().value()
    }

    #[test]
    fn refresh_limited_collects_again_only_after_the_interval() {
        let counting = Counting {
            calls: AtomicU64::new(0),
            gauge: IntGauge::new("calls", "collect calls").unwrap(),
        };
        let limited = RefreshLimited::new(counting, Duration::from_millis(50));
        assert_eq!(value(&limited.collect()), 1.0);
        assert_eq!(
            value(&limited.collect()),
            1.0,
            "served from the last collection"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(value(&limited.collect()), 2.0);
    }

    #[test]
    fn render_reports_the_queue_at_scrape_time() {
        let metrics = Metrics::new().unwrap();
        let queue = |waiting| QueueSnapshot {
            waiting,
            in_flight: 2,
            concurrency: 2,
        };
        let busy = metrics.render(queue(3), 2.25).unwrap();
        assert!(busy.contains("\nqueue_ratio 1.5\n"), "{busy}");
        assert!(busy.contains("\nqueue_occupancy 2.25\n"), "{busy}");
        let idle = metrics.render(queue(0), 0.0).unwrap();
        assert!(idle.contains("\nqueue_ratio 0\n"), "{idle}");
        assert!(idle.contains("\nqueue_occupancy 0\n"), "{idle}");
    }
}

//! Prometheus metrics of the operator, served on the admin server's `/metrics`.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The operator's metrics and the registry that holds them.
#[derive(Clone)]
pub struct Metrics {
    /// Registry rendered on `/metrics`.
    pub registry: Registry,
    reconciliations: IntCounter,
    failures: IntCounterVec,
    duration: Histogram,
    busy: Histogram,
}

impl Metrics {
    /// Create and register every metric, plus the process collector (RSS, CPU, open fds).
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounter::with_opts(Opts::new(
            "sandbox_operator_reconciliations_total",
            "Reconciliations of SandboxService objects started",
        ))
        .expect("valid metric definition");
        let failures = IntCounterVec::new(
            Opts::new(
                "sandbox_operator_reconcile_failures_total",
                "Reconciliations that failed, by bounded error category",
            ),
            &["category"],
        )
        .expect("valid metric definition");
        // From 0.1 ms, so that a p99 under 5 ms can be told from one under 10 ms.
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "sandbox_operator_reconcile_duration_seconds",
                "Duration of one reconciliation",
            )
            .buckets(buckets.clone()),
        )
        .expect("valid metric definition");
        let busy = Histogram::with_opts(
            HistogramOpts::new(
                "sandbox_operator_reconcile_busy_seconds",
                "Duration of one reconciliation less the time its API requests waited for answers: the operator's own work",
            )
            .buckets(buckets),
        )
        .expect("valid metric definition");
        // Registering distinct, freshly created collectors into a new registry cannot clash.
        registry
            .register(Box::new(reconciliations.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(failures.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(busy.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Self {
            registry,
            reconciliations,
            failures,
            duration,
            busy,
        }
    }

    /// Count a reconciliation that took `duration`, `api_wait` of it waiting for answers.
    pub fn reconciled(&self, duration: Duration, api_wait: Duration) {
        self.reconciliations.inc();
        self.duration.observe(duration.as_secs_f64());
        self.busy
            .observe(duration.saturating_sub(api_wait).as_secs_f64());
    }

    /// Count a failed reconciliation under its bounded category.
    pub fn reconcile_failed(&self, category: &'static str) {
        self.failures.with_label_values(&[category]).inc();
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# failed to encode metrics: {error}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times_reconciliations() {
        let metrics = Metrics::new();
        metrics.reconciled(Duration::from_millis(30), Duration::from_millis(28));
        metrics.reconcile_failed("ApplyFailed");
        let text = metrics.render();
        assert!(
            text.contains("sandbox_operator_reconciliations_total 1"),
            "{text}"
        );
        assert!(
            text.contains("sandbox_operator_reconcile_failures_total{category=\"ApplyFailed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sandbox_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
